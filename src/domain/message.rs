//! A message as accepted (`NewMessage`) and as it lives on (`Message`): recipients,
//! their outcomes and the event timeline. The state transitions are here so that the
//! worker only decides *what happened* and this module decides *what it means*.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::address::Mailbox;
use super::auth::TenantId;
use super::bounce::{classify, Bounce};
use super::ids::{EventId, MessageId, TemplateId};
use super::status::{EventType, MessageStatus, RecipientStatus};
use super::template::TemplateKey;
use super::text::{CustomHeader, Subject, Tag};
use super::{reject_line_breaks, ValidationError};

/// The content parts: at least one of text and html.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(String),
    Html(String),
    Both { text: String, html: String },
}

impl Body {
    pub fn parse(text: Option<String>, html: Option<String>) -> Result<Self, ValidationError> {
        match (text, html) {
            (Some(text), Some(html)) => Ok(Body::Both { text, html }),
            (Some(text), None) => Ok(Body::Text(text)),
            (None, Some(html)) => Ok(Body::Html(html)),
            (None, None) => Err(ValidationError::new(
                "missing_content",
                "a message needs `text`, `html` or both",
            )),
        }
    }
}

/// An attachment file name: one line, no path separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filename(String);

impl Filename {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        reject_line_breaks(input, "invalid_attachment", "a file name")?;
        if input.is_empty() || input.len() > 255 || input.contains(['/', '\\']) {
            return Err(ValidationError::new(
                "invalid_attachment",
                "a file name is 1 to 255 bytes without `/` or `\\`",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A MIME type such as `application/pdf` (parameters are not accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType(String);

impl MediaType {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        match input.split_once('/') {
            Some((kind, _)) if ["multipart", "message"].contains(&kind.to_ascii_lowercase().as_str()) => {
                Err(ValidationError::new(
                    "invalid_content_type",
                    "multipart/* and message/* cannot be attachment types; send them as application/octet-stream",
                ))
            }
            Some((kind, sub)) if token(kind) && token(sub) && input.len() <= 127 => {
                Ok(Self(input.to_ascii_lowercase()))
            }
            _ => Err(ValidationError::new(
                "invalid_content_type",
                format!("`{}` is not a MIME type like `application/pdf`", input.escape_debug()),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Content-ID of an inline attachment, referenced from html as `cid:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentId(String);

impl ContentId {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok = !input.is_empty()
            && input.len() <= 128
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@".contains(&b));
        if ok {
            Ok(Self(input.to_owned()))
        } else {
            Err(ValidationError::new(
                "invalid_content_id",
                "a content_id is 1 to 128 ASCII characters without spaces, `<` or `>`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored).
pub fn decode_base64(input: &str) -> Result<Vec<u8>, ValidationError> {
    let compact: String = input.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|_| ValidationError::new("invalid_base64", "`content` is not valid base64"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: Filename,
    pub media_type: MediaType,
    pub content: Vec<u8>,
    /// Set for inline parts (`multipart/related`).
    pub content_id: Option<ContentId>,
}

/// Which template version a message was rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateUse {
    #[schema(value_type = String)]
    pub id: TemplateId,
    pub name: String,
    pub version: u32,
}

/// Subject and body ready for MIME, and the template they came from, if any.
#[derive(Debug, Clone)]
pub struct ReadyContent {
    pub subject: Subject,
    pub body: Body,
    pub template: Option<TemplateUse>,
}

/// A request to render a stored template with data.
#[derive(Debug, Clone)]
pub struct TemplateCall {
    pub key: TemplateKey,
    /// Pinned version; the latest when `None`.
    pub version: Option<u32>,
    pub data: serde_json::Value,
}

/// Where a message's subject and body come from.
#[derive(Debug, Clone)]
pub enum Content {
    Ready(ReadyContent),
    Template(TemplateCall),
}

/// A validated send request: every part is already a checked domain value.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub content: Content,
    pub headers: Vec<CustomHeader>,
    pub attachments: Vec<Attachment>,
    pub tags: Vec<Tag>,
    pub metadata: BTreeMap<String, String>,
    pub send_at: Option<DateTime<Utc>>,
    /// One-click unsubscribe headers (RFC 8058); `None`: the tenant's default.
    pub list_unsubscribe: Option<bool>,
    /// Make a text part from an HTML-only body.
    pub auto_text: bool,
}

impl NewMessage {
    /// Every envelope recipient (to, cc, bcc), each address once, in request order.
    pub fn envelope_recipients(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for mbox in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            let email = mbox.email().to_string();
            if !seen.iter().any(|s: &String| s.eq_ignore_ascii_case(&email)) {
                seen.push(email);
            }
        }
        seen
    }
}

/// An SMTP reply (or a local failure described like one) kept as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SmtpReply {
    /// Basic reply code, e.g. 550. Absent when no reply was received (connection error).
    pub code: Option<u16>,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`.
    pub enhanced: Option<String>,
    /// The reply text, or what went wrong when there was no reply.
    pub diagnostic: String,
}

/// What one SMTP transaction for one recipient ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// 2xx: the upstream took responsibility.
    Sent(SmtpReply),
    /// 4xx, or no usable reply (connection, TLS, timeout): try again later.
    Deferred(SmtpReply),
    /// 5xx: the upstream refused for good.
    Bounced(SmtpReply),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub email: String,
    pub status: RecipientStatus,
    pub smtp: Option<SmtpReply>,
    pub updated_at: DateTime<Utc>,
    /// The relay of the last attempt: a later report (a DSN, a complaint) about this
    /// recipient is counted against it in `/v1/stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    /// Position in this message's timeline, from 1.
    pub seq: u64,
    pub event_type: EventType,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
    pub smtp: Option<SmtpReply>,
    #[serde(default)]
    pub bounce: Option<Bounce>,
    /// The relay the event happened at (for a later report, the relay that sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// A report about a recipient that arrives after the SMTP transaction.
#[derive(Debug, Clone)]
pub struct ExternalReport {
    pub event_type: EventType,
    pub smtp: Option<SmtpReply>,
    pub bounce: Option<Bounce>,
}

/// An accepted message and everything that has happened to it since.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub tenant: TenantId,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    /// The template version the content was rendered from.
    #[serde(default)]
    pub template: Option<TemplateUse>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub send_at: Option<DateTime<Utc>>,
    pub status: MessageStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub recipients: Vec<Recipient>,
    pub events: Vec<Event>,
    /// Each recipient's delivery carries its own one-click unsubscribe link.
    #[serde(default)]
    pub list_unsubscribe: bool,
}

impl Message {
    /// The state of a message at the moment it is accepted.
    pub fn accepted(
        id: MessageId,
        tenant: TenantId,
        new: &NewMessage,
        content: &ReadyContent,
        now: DateTime<Utc>,
    ) -> Self {
        let scheduled = new.send_at.is_some_and(|at| at > now);
        Self {
            id,
            tenant,
            from: new.from.to_string(),
            to: new.to.iter().map(ToString::to_string).collect(),
            cc: new.cc.iter().map(ToString::to_string).collect(),
            subject: content.subject.as_str().to_owned(),
            template: content.template.clone(),
            tags: new.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            metadata: new.metadata.clone(),
            created_at: now,
            send_at: new.send_at,
            status: if scheduled {
                MessageStatus::Scheduled
            } else {
                MessageStatus::Queued
            },
            attempts: 0,
            next_attempt_at: Some(new.send_at.filter(|_| scheduled).unwrap_or(now)),
            recipients: new
                .envelope_recipients()
                .into_iter()
                .map(|email| Recipient {
                    email,
                    status: RecipientStatus::Queued,
                    smtp: None,
                    updated_at: now,
                    upstream: None,
                })
                .collect(),
            events: Vec::new(),
            list_unsubscribe: new.list_unsubscribe.unwrap_or(false),
        }
    }

    /// When delivery may first be tried: the schedule, or acceptance.
    pub fn first_due(&self) -> DateTime<Utc> {
        self.send_at.map_or(self.created_at, |at| at.max(self.created_at))
    }

    /// Indexes of recipients still waiting for a try.
    pub fn pending_recipients(&self) -> Vec<usize> {
        (0..self.recipients.len())
            .filter(|&i| self.recipients[i].status.is_pending())
            .collect()
    }

    pub fn begin_attempt(&mut self) {
        self.attempts += 1;
        self.status = MessageStatus::Sending;
        self.next_attempt_at = None;
    }

    /// Applies one recipient's outcome at `upstream`. A deferral after `give_up`
    /// becomes a failure.
    pub fn record_outcome(
        &mut self,
        index: usize,
        outcome: DeliveryOutcome,
        upstream: &str,
        give_up: bool,
        now: DateTime<Utc>,
    ) {
        let (status, event_type, reply) = match outcome {
            DeliveryOutcome::Sent(r) => (RecipientStatus::Sent, EventType::Sent, r),
            DeliveryOutcome::Bounced(r) => (RecipientStatus::Bounced, EventType::Bounced, r),
            DeliveryOutcome::Deferred(r) if give_up => (RecipientStatus::Failed, EventType::Failed, r),
            DeliveryOutcome::Deferred(r) => (RecipientStatus::Deferred, EventType::Deferred, r),
        };
        let bounce = (event_type == EventType::Bounced)
            .then(|| classify(reply.code, reply.enhanced.as_deref(), &reply.diagnostic, "smtp"));
        let Some(recipient) = self.recipients.get_mut(index) else {
            return;
        };
        recipient.status = status;
        recipient.smtp = Some(reply.clone());
        recipient.updated_at = now;
        recipient.upstream = Some(upstream.to_owned());
        let email = recipient.email.clone();
        self.push_event(event_type, email, Some(reply), bounce, now);
        self.stamp_upstream(Some(upstream.to_owned()));
    }

    /// Applies what a later report (DSN, ARF, provider webhook) says about recipient
    /// `index`: bounced, delivered or complained change its status; a delay is only
    /// an event.
    ///
    /// `event_id` is derived from the report, so a report delivered twice (provider
    /// retries, a resent DSN) is recorded once.
    pub fn record_report(&mut self, index: usize, report: ExternalReport, event_id: EventId, now: DateTime<Utc>) {
        if self.events.iter().any(|e| e.id == event_id) {
            return;
        }
        let status = match report.event_type {
            EventType::Bounced => Some(RecipientStatus::Bounced),
            EventType::Delivered => Some(RecipientStatus::Delivered),
            EventType::Complained => Some(RecipientStatus::Complained),
            _ => None,
        };
        let Some(recipient) = self.recipients.get_mut(index) else {
            return;
        };
        if let Some(status) = status {
            recipient.status = status;
            recipient.updated_at = now;
            if report.smtp.is_some() {
                recipient.smtp = report.smtp.clone();
            }
        }
        let email = recipient.email.clone();
        let upstream = recipient.upstream.clone();
        self.push_event(report.event_type, email, report.smtp, report.bounce, now);
        self.stamp_upstream(upstream);
        if let Some(last) = self.events.last_mut() {
            last.id = event_id;
        }
        if !matches!(self.status, MessageStatus::Sending | MessageStatus::Cancelled) {
            self.status = self.settled_status();
        }
    }

    /// Cancels a message that has not started sending: every pending recipient gets a
    /// `message.cancelled` event. `false` (and no change) once it is sending or done.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> bool {
        if !matches!(
            self.status,
            MessageStatus::Scheduled | MessageStatus::Queued | MessageStatus::Deferred
        ) {
            return false;
        }
        for index in self.pending_recipients() {
            let email = self.recipients[index].email.clone();
            self.push_event(EventType::Cancelled, email, None, None, now);
        }
        self.status = MessageStatus::Cancelled;
        self.next_attempt_at = None;
        true
    }

    /// Marks recipient `index` as suppressed at acceptance: it gets an event and is
    /// never attempted.
    pub fn suppress(&mut self, index: usize, now: DateTime<Utc>) {
        let Some(recipient) = self.recipients.get_mut(index) else {
            return;
        };
        recipient.status = RecipientStatus::Suppressed;
        recipient.updated_at = now;
        let email = recipient.email.clone();
        self.push_event(EventType::Suppressed, email, None, None, now);
        self.status = self.settled_status();
        if self.pending_recipients().is_empty() {
            self.next_attempt_at = None;
        }
    }

    fn push_event(
        &mut self,
        event_type: EventType,
        recipient: String,
        smtp: Option<SmtpReply>,
        bounce: Option<Bounce>,
        now: DateTime<Utc>,
    ) {
        let seq = self.events.last().map_or(1, |e| e.seq + 1);
        self.events.push(Event {
            id: EventId::generate(),
            seq,
            event_type,
            recipient,
            created_at: now,
            smtp,
            bounce,
            upstream: None,
        });
    }

    /// Records where the event just pushed happened.
    fn stamp_upstream(&mut self, upstream: Option<String>) {
        if let Some(last) = self.events.last_mut() {
            last.upstream = upstream;
        }
    }

    /// Ends an attempt: the status follows from the recipients, and `retry_at` is kept
    /// only while some recipient is still pending.
    pub fn finish_attempt(&mut self, retry_at: Option<DateTime<Utc>>) {
        self.status = self.settled_status();
        self.next_attempt_at = if self.pending_recipients().is_empty() {
            None
        } else {
            retry_at
        };
    }

    /// The message status implied by its recipients.
    pub fn settled_status(&self) -> MessageStatus {
        let has = |s: RecipientStatus| self.recipients.iter().any(|r| r.status == s);
        if has(RecipientStatus::Deferred) {
            MessageStatus::Deferred
        } else if has(RecipientStatus::Queued) {
            if self.send_at.is_some_and(|at| at > self.created_at) && self.attempts == 0 {
                MessageStatus::Scheduled
            } else {
                MessageStatus::Queued
            }
        } else if has(RecipientStatus::Sent) || has(RecipientStatus::Delivered) || has(RecipientStatus::Complained) {
            MessageStatus::Sent
        } else {
            MessageStatus::Failed
        }
    }
}

/// What a list of messages is narrowed to: one definition for `GET /v1/messages` and
/// the console's Activity page, so both find the same messages.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<MessageStatus>,
    pub tag: Option<String>,
    /// Any of to, cc or bcc, compared without case.
    pub recipient: Option<String>,
    /// The name of the template the message was rendered from.
    pub template: Option<String>,
}

impl MessageFilter {
    pub fn matches(&self, m: &Message) -> bool {
        self.status.is_none_or(|s| m.status == s)
            && self.tag.as_ref().is_none_or(|t| m.tags.contains(t))
            && self
                .recipient
                .as_ref()
                .is_none_or(|r| m.recipients.iter().any(|x| x.email.eq_ignore_ascii_case(r)))
            && self
                .template
                .as_ref()
                .is_none_or(|t| m.template.as_ref().is_some_and(|used| &used.name == t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_message(to: &[&str]) -> NewMessage {
        NewMessage {
            from: Mailbox::parse("a@example.test").unwrap(),
            to: to.iter().map(|t| Mailbox::parse(t).unwrap()).collect(),
            cc: vec![],
            bcc: vec![Mailbox::parse("B@example.test").unwrap()],
            reply_to: vec![],
            content: Content::Ready(ready()),
            headers: vec![],
            attachments: vec![],
            tags: vec![],
            metadata: BTreeMap::new(),
            send_at: None,
            list_unsubscribe: None,
            auto_text: true,
        }
    }

    fn ready() -> ReadyContent {
        ReadyContent {
            subject: Subject::parse("s").unwrap(),
            body: Body::Text("t".into()),
            template: None,
        }
    }

    fn reply(code: u16) -> SmtpReply {
        SmtpReply {
            code: Some(code),
            enhanced: None,
            diagnostic: String::new(),
        }
    }

    #[test]
    fn envelope_recipients_are_unique_regardless_of_case() {
        let msg = new_message(&["b@example.test", "c@example.test"]);
        assert_eq!(msg.envelope_recipients(), ["b@example.test", "c@example.test"]);
    }

    #[test]
    fn a_deferral_keeps_the_message_deferred_until_give_up_fails_it() {
        let now = Utc::now();
        let mut msg = Message::accepted(
            MessageId::generate(),
            TenantId::parse("t").unwrap(),
            &new_message(&["x@example.test"]),
            &ready(),
            now,
        );
        msg.begin_attempt();
        msg.record_outcome(0, DeliveryOutcome::Sent(reply(250)), "relay", false, now);
        msg.record_outcome(1, DeliveryOutcome::Deferred(reply(451)), "relay", false, now);
        msg.finish_attempt(Some(now));
        assert_eq!(msg.status, MessageStatus::Deferred);
        assert_eq!(msg.pending_recipients(), [1]);
        msg.begin_attempt();
        msg.record_outcome(1, DeliveryOutcome::Deferred(reply(451)), "relay", true, now);
        msg.finish_attempt(Some(now));
        assert_eq!(msg.status, MessageStatus::Sent);
        assert_eq!(msg.recipients[1].status, RecipientStatus::Failed);
        assert_eq!(msg.next_attempt_at, None);
        let seqs: Vec<u64> = msg.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn container_types_are_not_attachment_types() {
        assert!(MediaType::parse("application/pdf").is_ok());
        for bad in [
            "multipart/mixed",
            "Message/rfc822",
            "text",
            "text/plain; charset=x",
            "a/b\r\n",
        ] {
            assert!(MediaType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn all_bounced_means_failed() {
        let now = Utc::now();
        let mut msg = Message::accepted(
            MessageId::generate(),
            TenantId::parse("t").unwrap(),
            &new_message(&[]),
            &ready(),
            now,
        );
        msg.begin_attempt();
        msg.record_outcome(0, DeliveryOutcome::Bounced(reply(550)), "relay", false, now);
        msg.finish_attempt(None);
        assert_eq!(msg.status, MessageStatus::Failed);
    }
}

/// An `Idempotency-Key` with the hash of the request it first came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// What a key maps to for 24 hours: the request and the message as first accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub created_at: DateTime<Utc>,
    /// The message as it was when first accepted, to replay the same answer.
    pub accepted: Message,
}

impl IdempotencyRecord {
    /// How long a key is remembered.
    pub const TTL: chrono::Duration = chrono::Duration::hours(24);

    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        now - self.created_at < Self::TTL
    }
}
