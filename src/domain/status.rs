//! Lifecycle states of messages and recipients, and the event types that record each
//! transition. Their serialized names are part of the public API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ValidationError;

/// Where a message is in its life. `sent` means every recipient reached a final state
/// and at least one was accepted upstream; `failed` means none was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Scheduled,
    Queued,
    Sending,
    Deferred,
    Sent,
    Failed,
    Cancelled,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Scheduled => "scheduled",
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Deferred => "deferred",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Cancelled => "cancelled",
        }
    }
}

/// Where one recipient's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Queued,
    Deferred,
    Sent,
    Delivered,
    Bounced,
    Complained,
    Failed,
    Suppressed,
}

impl RecipientStatus {
    /// The wire name, as the API's JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deferred => "deferred",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
        }
    }

    /// Still waiting for a (re)try.
    pub fn is_pending(self) -> bool {
        matches!(self, RecipientStatus::Queued | RecipientStatus::Deferred)
    }
}

/// What happened, as published in the event log and webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "message.sent")]
    Sent,
    #[serde(rename = "message.delivered")]
    Delivered,
    #[serde(rename = "message.deferred")]
    Deferred,
    #[serde(rename = "message.bounced")]
    Bounced,
    #[serde(rename = "message.complained")]
    Complained,
    #[serde(rename = "message.failed")]
    Failed,
    #[serde(rename = "message.suppressed")]
    Suppressed,
    #[serde(rename = "message.cancelled")]
    Cancelled,
    #[serde(rename = "message.unsubscribed")]
    Unsubscribed,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Complained,
        EventType::Failed,
        EventType::Suppressed,
        EventType::Cancelled,
        EventType::Unsubscribed,
    ];

    /// Reads a wire name such as `message.bounced`. An unknown name is refused with
    /// every known one, so a caller who guessed (`email.sent`) can fix it from the
    /// answer alone; the name is echoed at most 64 characters long.
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        Self::ALL.into_iter().find(|t| t.as_str() == name).ok_or_else(|| {
            let known: Vec<String> = Self::ALL.iter().map(|t| format!("`{}`", t.as_str())).collect();
            ValidationError::new(
                "invalid_event_type",
                format!(
                    "unknown event type `{}`; the event types are {}",
                    name.chars().take(64).collect::<String>(),
                    known.join(", ")
                ),
            )
        })
    }

    /// The wire name, e.g. `message.bounced`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sent => "message.sent",
            EventType::Delivered => "message.delivered",
            EventType::Deferred => "message.deferred",
            EventType::Bounced => "message.bounced",
            EventType::Complained => "message.complained",
            EventType::Failed => "message.failed",
            EventType::Suppressed => "message.suppressed",
            EventType::Cancelled => "message.cancelled",
            EventType::Unsubscribed => "message.unsubscribed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_event_type_is_refused_with_every_known_one() {
        assert_eq!(EventType::parse("message.bounced"), Ok(EventType::Bounced));
        let err = EventType::parse("email.sent").unwrap_err();
        assert_eq!(err.code, "invalid_event_type");
        assert!(err.message.contains("`email.sent`"), "{err}");
        for known in EventType::ALL {
            assert!(err.message.contains(&format!("`{}`", known.as_str())), "{err}");
        }
    }

    #[test]
    fn recipient_status_names_are_the_json_names() {
        use RecipientStatus::*;
        for status in [
            Queued, Deferred, Sent, Delivered, Bounced, Complained, Failed, Suppressed,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
