//! Outbound webhook endpoints: where a tenant's events are pushed, which ones, and the
//! secrets that sign them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::TenantId;
use super::event::PublishedEvent;
use super::ids::WebhookId;
use super::status::EventType;
use super::{reject_line_breaks, ValidationError};

/// An `http(s)://` URL with a host, at most 2048 bytes. Whether its host may be
/// reached is the egress guard's decision, at create time and at every send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        reject_line_breaks(input, "invalid_url", "a webhook URL")?;
        let invalid = || ValidationError::new("invalid_url", "a webhook URL is http:// or https:// with a host");
        let rest = input
            .strip_prefix("https://")
            .or_else(|| input.strip_prefix("http://"))
            .ok_or_else(invalid)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') || input.len() > 2048 || input.contains(' ') {
            return Err(invalid());
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<WebhookUrl> for String {
    fn from(value: WebhookUrl) -> String {
        value.0
    }
}

/// A signing secret, `whsec_` + base64 of 32 random bytes (Standard Webhooks).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecret {
    pub secret: String,
    pub created_at: DateTime<Utc>,
    /// After a rotation the old secret keeps signing until then.
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSecret")
            .field("secret", &"whsec_…")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub tenant: TenantId,
    pub url: WebhookUrl,
    /// The event types delivered; empty means every type (`["*"]` on the wire).
    pub events: Vec<EventType>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why it was disabled, e.g. the endpoint answered 410.
    pub disabled_reason: Option<String>,
    /// Newest first; every one not expired signs each delivery.
    pub secrets: Vec<SigningSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    /// The event types it receives as the API names them: `["*"]` for every type.
    pub fn event_names(&self) -> Vec<String> {
        if self.events.is_empty() {
            vec!["*".into()]
        } else {
            self.events.iter().map(|e| e.as_str().to_owned()).collect()
        }
    }

    pub fn wants(&self, event: &PublishedEvent) -> bool {
        self.enabled && (self.events.is_empty() || self.events.contains(&event.event_type))
    }

    /// The secrets that sign at `now`.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|at| at > now))
    }
}

/// One pending delivery of one event to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Stable internal id of this delivery (the `webhook-id` header is the event id).
    pub entry_id: String,
    pub webhook_id: WebhookId,
    pub tenant: TenantId,
    pub event: PublishedEvent,
    pub attempts: u32,
    pub first_queued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// The record of one delivery attempt, for `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub event_id: String,
    pub event_type: EventType,
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    /// The endpoint's HTTP status, absent when no response arrived.
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// `delivered`, `retrying`, `failed` (gave up), `disabled` (410) or `dropped`.
    pub outcome: String,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_and_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://hooks.example.test/mailgate?x=1").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "ftp://x",
            "https://",
            "https://user:pw@host/",
            "https://a b/",
            "https://h/\r\n",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
