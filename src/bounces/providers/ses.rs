//! Amazon SES notifications delivered through SNS. The SNS envelope is signed with
//! RSA (SHA1 for `SignatureVersion` 1, SHA256 for 2) by the certificate at
//! `SigningCertURL`, which must be on an `sns.<region>.amazonaws.com` host (or be
//! pinned in configuration). The SES event inside (`Message`) is a JSON string.

use std::time::Duration;

use base64::Engine as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use serde_json::Value;

use super::{message_id_of, Parsed, ProviderError};
use crate::bounces::ingest::Statement;
use crate::domain::bounce::{classify, Bounce, BounceKind};
use crate::domain::message::SmtpReply;
use crate::domain::status::EventType;

/// The fields SNS signs, in order, for each message type.
fn signed_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Notification" => Some(&["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]),
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => Some(&[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]),
        _ => None,
    }
}

/// The canonical string SNS signs: `Name\nvalue\n` for each present field.
pub fn string_to_sign(envelope: &Value) -> Option<String> {
    let fields = signed_fields(envelope["Type"].as_str()?)?;
    let mut out = String::new();
    for name in fields {
        if let Some(value) = envelope[*name].as_str() {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
    }
    Some(out)
}

/// An AWS region name such as `us-east-1` or `us-gov-west-1` (and not, say, `s3`:
/// `sns.s3.amazonaws.com` is an S3 bucket anyone could own).
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    (3..=4).contains(&parts.len())
        && first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Whether a `SigningCertURL` may be fetched: https on an SNS host of AWS.
pub fn cert_url_allowed(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    parsed.scheme() == "https"
        && parsed.query().is_none()
        && parsed.port().is_none()
        && parsed.path().ends_with(".pem")
        && labels.len() == 4
        && labels[0] == "sns"
        && is_region(labels[1])
        && labels[2..] == ["amazonaws", "com"]
}

/// Verifies the envelope's signature with the PEM certificate `cert_pem`, and that
/// its `Timestamp` is within `max_age`.
pub fn verify(envelope: &Value, cert_pem: &[u8], max_age: Duration) -> Result<(), ProviderError> {
    let canonical = string_to_sign(envelope).ok_or(ProviderError::BadSignature)?;
    let signature = envelope["Signature"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or(ProviderError::BadSignature)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|_| ProviderError::BadSignature)?;
    let cert = pem.parse_x509().map_err(|_| ProviderError::BadSignature)?;
    let spki = cert.public_key().raw;
    let signature =
        rsa::pkcs1v15::Signature::try_from(signature.as_slice()).map_err(|_| ProviderError::BadSignature)?;
    let verified = match envelope["SignatureVersion"].as_str() {
        Some("1") => rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::from_public_key_der(spki)
            .map_err(|_| ProviderError::BadSignature)?
            .verify(canonical.as_bytes(), &signature),
        Some("2") => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::from_public_key_der(spki)
            .map_err(|_| ProviderError::BadSignature)?
            .verify(canonical.as_bytes(), &signature),
        _ => return Err(ProviderError::BadSignature),
    };
    verified.map_err(|_| ProviderError::BadSignature)?;
    let timestamp = envelope["Timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or(ProviderError::BadSignature)?;
    super::check_fresh(timestamp.timestamp(), max_age)
}

/// The statements inside an SES notification (`Message` of an SNS `Notification`).
pub fn parse(envelope: &Value) -> Parsed {
    let message: Value = envelope["Message"]
        .as_str()
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or(ProviderError::Malformed("SES"))?;
    let kind = message["notificationType"]
        .as_str()
        .or(message["eventType"].as_str())
        .unwrap_or_default();
    let message_id = message["mail"]["commonHeaders"]["messageId"]
        .as_str()
        .and_then(message_id_of);
    let statement = |recipient: &str, event_type, smtp: Option<SmtpReply>, bounce| {
        Statement::reported(message_id.clone(), recipient, event_type, smtp, bounce)
    };
    let statements = match kind {
        "Bounce" => {
            let bounce = &message["bounce"];
            let permanent = bounce["bounceType"].as_str() == Some("Permanent");
            bounce["bouncedRecipients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let diagnostic = r["diagnosticCode"].as_str().unwrap_or_default();
                    let diagnostic = diagnostic
                        .split_once(';')
                        .map_or(diagnostic, |(_, d)| d)
                        .trim()
                        .to_owned();
                    let smtp = SmtpReply {
                        code: diagnostic.get(..3).and_then(|c| c.parse().ok()),
                        enhanced: r["status"].as_str().map(str::to_owned),
                        diagnostic,
                    };
                    let mut classified = classify(
                        smtp.code.or(Some(if permanent { 550 } else { 450 })),
                        smtp.enhanced.as_deref(),
                        &smtp.diagnostic,
                        "ses",
                    );
                    classified.kind = if permanent { BounceKind::Hard } else { BounceKind::Soft };
                    Some(statement(
                        r["emailAddress"].as_str()?,
                        EventType::Bounced,
                        Some(smtp),
                        Some(classified),
                    ))
                })
                .collect()
        }
        "Complaint" => message["complaint"]["complainedRecipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let bounce = Bounce::complaint("ses");
                Some(statement(
                    r["emailAddress"].as_str()?,
                    EventType::Complained,
                    None,
                    Some(bounce),
                ))
            })
            .collect(),
        "Delivery" => message["delivery"]["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let smtp = SmtpReply {
                    code: Some(250),
                    enhanced: None,
                    diagnostic: message["delivery"]["smtpResponse"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                };
                Some(statement(r.as_str()?, EventType::Delivered, Some(smtp), None))
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_of_aws_may_serve_signing_certificates() {
        assert!(cert_url_allowed(
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
        ));
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.test/x.pem",
            "https://evil.test/sns.us-east-1.amazonaws.com/x.pem",
            "https://s3.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.s3-external-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem?n=1",
        ] {
            assert!(!cert_url_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn the_canonical_string_follows_the_sns_field_order() {
        let envelope = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t",
                                          "Message": "{}", "Timestamp": "2026-01-01T00:00:00.000Z"});
        assert_eq!(
            string_to_sign(&envelope).unwrap(),
            "Message\n{}\nMessageId\nm\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\nt\nType\nNotification\n"
        );
    }
}
