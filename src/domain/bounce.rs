//! One bounce taxonomy for every source (SMTP replies, DSNs, provider webhooks):
//! hard or soft, plus a sub-type a sender can act on. Only hard bounces (and
//! complaints) suppress the address.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BounceKind {
    /// Permanent: retrying will not help; the address is suppressed.
    Hard,
    /// Temporary or policy-related: later mail may get through.
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    /// The mailbox does not exist or is disabled (5.1.1, 5.1.10, 5.2.1).
    MailboxUnknown,
    /// Over quota (x.2.2).
    MailboxFull,
    /// The recipient domain does not resolve or accepts no mail (5.1.2, 5.4.4).
    Dns,
    /// Refused as spam (x.7.x mentioning spam).
    Spam,
    /// Refused by policy: blocklists, authentication, content (x.7.x).
    Policy,
    /// A temporary failure that outlived the retries.
    Transient,
    /// A permanent failure without a more specific cause.
    Undeliverable,
}

/// How a recipient bounced and where the report came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Bounce {
    pub kind: BounceKind,
    #[serde(rename = "type")]
    pub bounce_type: BounceType,
    /// `smtp` (the upstream refused during delivery), `dsn`, `arf`, `api`, `ses`,
    /// `sendgrid`, `mailgun` or `postmark`.
    pub source: String,
}

impl Bounce {
    /// A spam complaint reported by `source`: hard, so the address is suppressed.
    pub fn complaint(source: &str) -> Self {
        Self {
            kind: BounceKind::Hard,
            bounce_type: BounceType::Spam,
            source: source.to_owned(),
        }
    }
}

/// Classifies a failure from its reply code, RFC 3463 enhanced code and text.
pub fn classify(code: Option<u16>, enhanced: Option<&str>, diagnostic: &str, source: &str) -> Bounce {
    let text = diagnostic.to_ascii_lowercase();
    let enhanced = enhanced.unwrap_or_default();
    let (class, rest) = enhanced.split_once('.').unwrap_or(("", ""));
    let permanent = class == "5" || (class.is_empty() && code.is_some_and(|c| (500..600).contains(&c)));
    let (kind, bounce_type) = match rest {
        "1.1" | "1.0" | "1.10" | "1.6" | "2.1" if permanent => (BounceKind::Hard, BounceType::MailboxUnknown),
        "1.2" | "4.4" if permanent => (BounceKind::Hard, BounceType::Dns),
        "2.2" => (BounceKind::Soft, BounceType::MailboxFull),
        r if r.starts_with("7.") && text.contains("spam") => (BounceKind::Soft, BounceType::Spam),
        r if r.starts_with("7.") => (BounceKind::Soft, BounceType::Policy),
        _ if !permanent => (BounceKind::Soft, BounceType::Transient),
        _ if [
            "unknown",
            "no such user",
            "does not exist",
            "invalid recipient",
            "not found",
        ]
        .iter()
        .any(|hint| text.contains(hint)) =>
        {
            (BounceKind::Hard, BounceType::MailboxUnknown)
        }
        _ if text.contains("spam") => (BounceKind::Soft, BounceType::Spam),
        _ => (BounceKind::Hard, BounceType::Undeliverable),
    };
    Bounce {
        kind,
        bounce_type,
        source: source.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_replies_land_in_the_expected_buckets() {
        let c = |code, enhanced, text| {
            let b = classify(Some(code), enhanced, text, "smtp");
            (b.kind, b.bounce_type)
        };
        assert_eq!(
            c(550, Some("5.1.1"), "User unknown"),
            (BounceKind::Hard, BounceType::MailboxUnknown)
        );
        assert_eq!(
            c(552, Some("5.2.2"), "Mailbox full"),
            (BounceKind::Soft, BounceType::MailboxFull)
        );
        assert_eq!(
            c(550, Some("5.7.1"), "Message rejected as spam"),
            (BounceKind::Soft, BounceType::Spam)
        );
        assert_eq!(
            c(550, Some("5.7.26"), "DMARC policy"),
            (BounceKind::Soft, BounceType::Policy)
        );
        assert_eq!(
            c(550, Some("5.4.4"), "Host not found"),
            (BounceKind::Hard, BounceType::Dns)
        );
        assert_eq!(
            c(550, None, "no such user here"),
            (BounceKind::Hard, BounceType::MailboxUnknown)
        );
        assert_eq!(c(554, None, "rejected"), (BounceKind::Hard, BounceType::Undeliverable));
        assert_eq!(
            c(451, Some("4.2.0"), "try later"),
            (BounceKind::Soft, BounceType::Transient)
        );
    }
}
