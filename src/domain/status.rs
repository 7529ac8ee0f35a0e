//! Lifecycle states of messages and recipients, and the event types that record each
//! transition. Their serialized names are part of the public API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Complained,
        EventType::Failed,
        EventType::Suppressed,
        EventType::Cancelled,
    ];

    /// Reads a wire name such as `message.bounced`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
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
        }
    }
}
