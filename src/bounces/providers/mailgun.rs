//! Mailgun webhooks (JSON): `signature.signature` is the hex HMAC-SHA256 of
//! `timestamp + token` under the account's HTTP webhook signing key; the event is in
//! `event-data`.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{check_fresh, message_id_of, same, Parsed, ProviderError};
use crate::bounces::ingest::Statement;
use crate::domain::bounce::{classify, Bounce};
use crate::domain::message::SmtpReply;
use crate::domain::status::EventType;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn verify(body: &Value, signing_key: &str, max_age: Duration) -> Result<(), ProviderError> {
    let signature = &body["signature"];
    let (Some(timestamp), Some(token), Some(given)) = (
        signature["timestamp"].as_str(),
        signature["token"].as_str(),
        signature["signature"].as_str(),
    ) else {
        return Err(ProviderError::BadSignature);
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).map_err(|_| ProviderError::BadSignature)?;
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    if !same(
        hex(&mac.finalize().into_bytes()).as_bytes(),
        given.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(ProviderError::BadSignature);
    }
    check_fresh(timestamp.parse().map_err(|_| ProviderError::BadSignature)?, max_age)
}

pub fn parse(body: &Value) -> Parsed {
    let data = body.get("event-data").ok_or(ProviderError::Malformed("Mailgun"))?;
    let recipient = data["recipient"].as_str().ok_or(ProviderError::Malformed("Mailgun"))?;
    let message_id = data["message"]["headers"]["message-id"]
        .as_str()
        .and_then(message_id_of);
    let status = &data["delivery-status"];
    let smtp = SmtpReply {
        code: status["code"].as_u64().and_then(|c| u16::try_from(c).ok()),
        enhanced: status["enhanced-code"].as_str().map(str::to_owned),
        diagnostic: status["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .or(status["description"].as_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let (event_type, bounce) = match (data["event"].as_str(), data["severity"].as_str()) {
        (Some("failed"), Some("permanent")) => (
            EventType::Bounced,
            Some(classify(
                smtp.code,
                smtp.enhanced.as_deref(),
                &smtp.diagnostic,
                "mailgun",
            )),
        ),
        (Some("failed"), _) => (EventType::Deferred, None),
        (Some("delivered"), _) => (EventType::Delivered, None),
        (Some("complained"), _) => (EventType::Complained, Some(Bounce::complaint("mailgun"))),
        _ => return Ok(Vec::new()),
    };
    Ok(vec![Statement::reported(
        message_id,
        recipient,
        event_type,
        Some(smtp),
        bounce,
    )])
}

#[cfg(test)]
pub fn sign_for_tests(key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    hex(&mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::bounce::BounceKind;

    #[test]
    fn a_documented_permanent_failure_is_a_hard_bounce_and_signatures_are_checked() {
        let now = chrono::Utc::now().timestamp().to_string();
        let key = "key-test";
        let body = json!({
            "signature": {"timestamp": now, "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
                          "signature": sign_for_tests(key, &now, "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0")},
            "event-data": {"event": "failed", "severity": "permanent", "recipient": "Alice@Example.com",
                           "message": {"headers": {"message-id": "msg_01a2239f5e3276febeab035967b70001@mail.test"}},
                           "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"}}
        });
        assert!(verify(&body, key, Duration::from_secs(600)).is_ok());
        assert!(matches!(
            verify(&body, "other-key", Duration::from_secs(600)),
            Err(ProviderError::BadSignature)
        ));
        let statements = parse(&body).unwrap();
        assert_eq!(statements[0].recipient, "alice@example.com");
        assert_eq!(statements[0].report.bounce.as_ref().unwrap().kind, BounceKind::Hard);
        assert!(statements[0].message_id.is_some());

        let old = "1529006854";
        let mut stale = body.clone();
        stale["signature"]["timestamp"] = json!(old);
        stale["signature"]["signature"] = json!(sign_for_tests(
            key,
            old,
            "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
        ));
        assert!(matches!(
            verify(&stale, key, Duration::from_secs(600)),
            Err(ProviderError::Stale)
        ));
    }
}
