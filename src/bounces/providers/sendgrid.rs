//! SendGrid Event Webhook: a JSON array of events, signed with ECDSA P-256 over
//! `timestamp + body` (headers `X-Twilio-Email-Event-Webhook-Signature`, base64 DER,
//! and `…-Timestamp`), verified with the account's public verification key.

use std::time::Duration;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::Value;

use super::{check_fresh, message_id_of, Parsed, ProviderError};
use crate::bounces::ingest::Statement;
use crate::domain::bounce::{classify, Bounce, BounceKind, BounceType};
use crate::domain::message::SmtpReply;
use crate::domain::status::EventType;

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

pub fn verify(
    public_key_b64: &str,
    signature_b64: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    max_age: Duration,
) -> Result<(), ProviderError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some(signature), Some(timestamp)) = (signature_b64, timestamp) else {
        return Err(ProviderError::BadSignature);
    };
    let key = b64
        .decode(public_key_b64.trim())
        .ok()
        .and_then(|der| VerifyingKey::from_public_key_der(&der).ok())
        .ok_or(ProviderError::BadSignature)?;
    let signature = b64
        .decode(signature.trim())
        .ok()
        .and_then(|der| Signature::from_der(&der).ok())
        .ok_or(ProviderError::BadSignature)?;
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    key.verify(&signed, &signature)
        .map_err(|_| ProviderError::BadSignature)?;
    check_fresh(
        timestamp.trim().parse().map_err(|_| ProviderError::BadSignature)?,
        max_age,
    )
}

pub fn parse(body: &Value) -> Parsed {
    let events = body.as_array().ok_or(ProviderError::Malformed("SendGrid"))?;
    Ok(events
        .iter()
        .filter_map(|event| {
            let recipient = event["email"].as_str()?;
            let diagnostic = event["reason"]
                .as_str()
                .or(event["response"].as_str())
                .unwrap_or_default()
                .to_owned();
            let smtp = SmtpReply {
                code: diagnostic.get(..3).and_then(|c| c.parse().ok()),
                enhanced: event["status"].as_str().map(str::to_owned),
                diagnostic,
            };
            let (event_type, bounce) = match event["event"].as_str()? {
                "bounce" | "dropped" => {
                    let mut bounce = classify(
                        smtp.code.or(Some(550)),
                        smtp.enhanced.as_deref(),
                        &smtp.diagnostic,
                        "sendgrid",
                    );
                    if event["type"].as_str() == Some("blocked") {
                        bounce.kind = BounceKind::Soft;
                        bounce.bounce_type = BounceType::Policy;
                    }
                    (EventType::Bounced, Some(bounce))
                }
                "deferred" => (EventType::Deferred, None),
                "delivered" => (EventType::Delivered, None),
                "spamreport" => (EventType::Complained, Some(Bounce::complaint("sendgrid"))),
                _ => return None,
            };
            Some(Statement::reported(
                event["smtp-id"].as_str().and_then(message_id_of),
                recipient,
                event_type,
                Some(smtp),
                bounce,
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey as _;
    use serde_json::json;

    use super::*;

    #[test]
    fn documented_events_verify_and_map_and_tampering_or_age_is_refused() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = b64.encode(signing.verifying_key().to_public_key_der().unwrap().as_bytes());
        let body = json!([
            {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<msg_01a2239f5e3276febeab035967b70001@mail.test>",
             "event": "bounce", "category": "cat facts", "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
             "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
             "reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"},
            {"email": "example@test.com", "timestamp": 1513299569, "event": "spamreport", "smtp-id": "<x@y>"},
            {"email": "example@test.com", "timestamp": 1513299569, "event": "open"}
        ])
        .to_string();
        let now = chrono::Utc::now().timestamp().to_string();
        let sign = |ts: &str, body: &str| {
            let signature: Signature = signing.sign(format!("{ts}{body}").as_bytes());
            b64.encode(signature.to_der().as_bytes())
        };
        let max = Duration::from_secs(600);
        assert!(verify(&public, Some(&sign(&now, &body)), Some(&now), body.as_bytes(), max).is_ok());
        let tampered = body.replace("bounce", "delivered");
        assert!(verify(&public, Some(&sign(&now, &body)), Some(&now), tampered.as_bytes(), max).is_err());
        assert!(matches!(
            verify(
                &public,
                Some(&sign("1513299569", &body)),
                Some("1513299569"),
                body.as_bytes(),
                max
            ),
            Err(ProviderError::Stale)
        ));
        let statements = parse(&serde_json::from_str(&body).unwrap()).unwrap();
        assert_eq!(statements.len(), 2, "opens are ignored");
        assert_eq!(statements[0].report.event_type, EventType::Bounced);
        assert!(statements[0].message_id.is_some());
        assert_eq!(statements[1].report.event_type, EventType::Complained);
    }
}
