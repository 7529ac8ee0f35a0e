//! Addresses a tenant must not send to, and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    HardBounce,
    Complaint,
    Manual,
    /// The recipient used the message's one-click unsubscribe link.
    Unsubscribe,
}

impl SuppressionReason {
    /// The wire name (what the API's JSON says), for pages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::Complaint => "complaint",
            Self::Manual => "manual",
            Self::Unsubscribe => "unsubscribe",
        }
    }
}

/// One suppressed address (stored lowercased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Suppression {
    pub email: String,
    pub reason: SuppressionReason,
    pub created_at: DateTime<Utc>,
    /// Where it came from: `smtp`, `dsn`, `api`, a provider name…
    pub source: String,
    /// The event that caused it, for bounces and complaints.
    pub event_id: Option<String>,
}

impl Suppression {
    /// The suppression an event implies: a hard bounce, a complaint or an
    /// unsubscribe, else none.
    pub fn caused_by(event: &super::event::PublishedEvent) -> Option<Self> {
        use super::bounce::BounceKind;
        use super::status::EventType;
        let (reason, source) = match (&event.event_type, &event.data.bounce) {
            (EventType::Complained, bounce) => (
                SuppressionReason::Complaint,
                bounce.as_ref().map_or("arf", |b| b.source.as_str()),
            ),
            (EventType::Bounced, Some(b)) if b.kind == BounceKind::Hard => {
                (SuppressionReason::HardBounce, b.source.as_str())
            }
            (EventType::Unsubscribed, _) => (SuppressionReason::Unsubscribe, "list-unsubscribe"),
            _ => return None,
        };
        Some(Self {
            email: event.data.recipient.to_ascii_lowercase(),
            reason,
            created_at: event.created_at,
            source: source.to_owned(),
            event_id: Some(event.id.clone()),
        })
    }
}
