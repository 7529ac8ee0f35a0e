//! Postmark webhooks: authenticated with HTTP Basic credentials configured in the
//! webhook URL; `RecordType` is `Bounce`, `SpamComplaint` or `Delivery`. Postmark does
//! not echo the Message-ID header, so reports match through the message metadata key
//! `mailgate_message_id` when the sender set it, and are otherwise kept unmatched.

use base64::Engine as _;
use serde_json::Value;

use super::{message_id_of, same, Parsed, ProviderError};
use crate::bounces::ingest::Statement;
use crate::domain::bounce::{Bounce, BounceKind, BounceType};
use crate::domain::message::SmtpReply;
use crate::domain::status::EventType;

/// Checks `Authorization: Basic …` against the configured `user:password`.
pub fn verify(authorization: Option<&str>, expected: &str) -> Result<(), ProviderError> {
    let given = authorization
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .ok_or(ProviderError::BadSignature)?;
    if same(&given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ProviderError::BadSignature)
    }
}

fn bounce_of(kind: &str) -> Option<(BounceKind, BounceType)> {
    Some(match kind {
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" => (BounceKind::Hard, BounceType::MailboxUnknown),
        "DnsError" => (BounceKind::Hard, BounceType::Dns),
        "SoftBounce" | "Transient" | "Unknown" => (BounceKind::Soft, BounceType::Transient),
        "Blocked" | "DMARCPolicy" => (BounceKind::Soft, BounceType::Policy),
        "SpamNotification" | "VirusNotification" => (BounceKind::Soft, BounceType::Spam),
        _ => return None,
    })
}

pub fn parse(body: &Value) -> Parsed {
    let recipient = body["Email"]
        .as_str()
        .or(body["Recipient"].as_str())
        .ok_or(ProviderError::Malformed("Postmark"))?;
    let message_id = body["Metadata"]["mailgate_message_id"].as_str().and_then(message_id_of);
    let smtp = SmtpReply {
        code: None,
        enhanced: None,
        diagnostic: body["Details"]
            .as_str()
            .or(body["Description"].as_str())
            .or(body["Details"].as_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let (event_type, bounce) = match body["RecordType"].as_str() {
        Some("Bounce") => match body["Type"].as_str().and_then(bounce_of) {
            Some((kind, bounce_type)) => (
                EventType::Bounced,
                Some(Bounce {
                    kind,
                    bounce_type,
                    source: "postmark".into(),
                }),
            ),
            None => return Ok(Vec::new()),
        },
        Some("SpamComplaint") => (EventType::Complained, Some(Bounce::complaint("postmark"))),
        Some("Delivery") => (EventType::Delivered, None),
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
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_documented_bounce_maps_to_a_hard_bounce_and_basic_auth_is_checked() {
        let body = json!({"RecordType": "Bounce", "ID": 4323372036854775807u64, "Type": "HardBounce", "TypeCode": 1,
            "Name": "Hard bounce", "Tag": "Test", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Metadata": {"mailgate_message_id": "msg_01a2239f5e3276febeab035967b70001"},
            "ServerID": 23, "MessageStream": "outbound", "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
            "Details": "Test bounce details", "Email": "john@example.com", "From": "sender@example.com",
            "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": true, "Inactive": true, "CanActivate": true,
            "Subject": "Test subject", "Content": "<Full dump of bounce>"});
        let statements = parse(&body).unwrap();
        assert_eq!(statements[0].report.bounce.as_ref().unwrap().kind, BounceKind::Hard);
        assert!(statements[0].message_id.is_some());
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("pm:secret")
        );
        assert!(verify(Some(&good), "pm:secret").is_ok());
        assert!(verify(Some(&good), "pm:other").is_err());
        assert!(verify(None, "pm:secret").is_err());
    }
}
