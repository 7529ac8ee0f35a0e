//! Events as the world sees them: the items of `GET /v1/events` and, byte for byte,
//! the bodies of webhook deliveries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bounce::Bounce;
use super::message::{Event, Message, SmtpReply};
use super::status::EventType;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventData {
    pub message_id: String,
    pub recipient: String,
    /// Position in the message's own timeline, from 1: order events of one message
    /// even when they arrive out of order.
    pub seq: u64,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub smtp: Option<SmtpReply>,
    pub bounce: Option<Bounce>,
}

/// One event of a tenant's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "evt_01a2239f633276febeab035967b70277", "type": "message.bounced",
    "created_at": "2026-11-28T10:00:03Z",
    "data": {"message_id": "msg_01a2239f5e3276febeab035967b70001", "recipient": "ana@example.test", "seq": 1,
             "tags": ["onboarding"], "metadata": {"user_id": "42"},
             "smtp": {"code": 550, "enhanced": "5.1.1", "diagnostic": "5.1.1 <ana@example.test>: User unknown"},
             "bounce": {"kind": "hard", "type": "mailbox_unknown", "source": "smtp"}}
}))]
pub struct PublishedEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub created_at: DateTime<Utc>,
    pub data: EventData,
}

impl PublishedEvent {
    pub fn of(message: &Message, event: &Event) -> Self {
        Self {
            id: event.id.to_string(),
            event_type: event.event_type,
            created_at: event.created_at,
            data: EventData {
                message_id: message.id.to_string(),
                recipient: event.recipient.clone(),
                seq: event.seq,
                tags: message.tags.clone(),
                metadata: message.metadata.clone(),
                smtp: event.smtp.clone(),
                bounce: event.bounce.clone(),
            },
        }
    }
}
