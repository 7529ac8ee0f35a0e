//! `/v1/messages`: send, read status and timeline, read the sent MIME.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authenticated, MessagesRead, MessagesSend};
use super::body::{escape_token, JsonBody};
use super::pagination::{invalid_cursor, page_size};
use super::problem::{ApiError, FieldError, Kind, Problem, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::domain::address::Mailbox;
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::ids::TemplateId;
use crate::domain::message::{
    decode_base64, Attachment, Body, ContentId, Filename, MediaType, Message, NewMessage, SmtpReply,
};
use crate::domain::message::{Content, IdempotencyKey, MessageFilter, ReadyContent, TemplateCall, TemplateUse};
use crate::domain::status::{EventType, MessageStatus, RecipientStatus};
use crate::domain::template::{TemplateKey, TemplateName};
use crate::domain::text::{CustomHeader, Subject, Tag};
use crate::domain::ValidationError;
use crate::sending::Accepted;
use crate::store::{CancelOutcome, Store, StoreError, StoredMime};

/// One address or a list of addresses.
// `expecting` replaces serde's "data did not match any variant of untagged enum", which
// tells a caller nothing, with what the field takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged, expecting = "expected an address string or an array of address strings")]
pub enum AddressList {
    One(String),
    Many(Vec<String>),
}

impl Default for AddressList {
    fn default() -> Self {
        AddressList::Many(Vec::new())
    }
}

/// An attachment. With `content_id` it is inline (`multipart/related`) and the html
/// refers to it as `cid:<content_id>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    #[schema(example = "invoice.pdf")]
    pub filename: String,
    #[schema(example = "application/pdf")]
    pub content_type: String,
    /// The file, base64-encoded.
    pub content: String,
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A message to send. Addresses are RFC 5322 mailboxes (`Name <local@domain>`);
/// internationalised domains are accepted and sent in punycode. Unknown fields are
/// rejected (422 `unknown_field`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "from": "Acme <no-reply@acme.test>",
    "to": ["ana@example.test", "Bob Li <bob@example.test>"],
    "subject": "Hello",
    "text": "plain part",
    "html": "<p>html part</p>",
    "headers": {"X-Entity-Ref-ID": "42"},
    "tags": ["onboarding"],
    "metadata": {"user_id": "42"}
}))]
pub struct SendMessageRequest {
    pub from: String,
    #[serde(default)]
    pub to: AddressList,
    #[serde(default)]
    pub cc: AddressList,
    /// Delivered to, never shown in the headers.
    #[serde(default)]
    pub bcc: AddressList,
    #[serde(default)]
    pub reply_to: AddressList,
    /// Required unless `template` is given (then it must be absent).
    #[serde(default)]
    pub subject: Option<String>,
    /// Render subject, html and text from a stored template instead.
    #[serde(default, deserialize_with = "super::body::object::optional")]
    pub template: Option<TemplateRequest>,
    /// Plain-text part. Without `template`, at least one of `text` and `html` is required.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    /// Extra headers. Structural ones (From, To, Cc, Bcc, Reply-To, Subject, Date,
    /// Message-ID, MIME-Version, Return-Path, Sender, Content-*) cannot be set.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "super::body::object::list")]
    pub attachments: Vec<AttachmentRequest>,
    /// Up to 10 labels (ASCII letters, digits, `-_.:`) for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Up to 50 string pairs echoed back in events; never sent to recipients.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 time to send at, at most 30 days ahead; absent or past means now.
    #[serde(default, deserialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub send_at: Option<DateTime<Utc>>,
    /// One-click unsubscribe (RFC 8058): each recipient's copy gets `List-Unsubscribe:
    /// <https://…/u/{token}>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`,
    /// both DKIM-signed. A POST to that URL (what Gmail's and Yahoo's unsubscribe button
    /// does) suppresses the recipient with reason `unsubscribe` and records a
    /// `message.unsubscribed` event. Default: the tenant's setting
    /// (`tenants.<t>.list_unsubscribe`), off unless set.
    #[serde(default)]
    pub list_unsubscribe: Option<bool>,
    /// With `html` and no `text`, a text part is made from the HTML (links kept as
    /// text), because multipart/alternative fares better with spam filters. `false`
    /// sends the HTML alone. Default `true`.
    #[serde(default)]
    pub auto_text: Option<bool>,
}

/// Reads an optional RFC 3339 time (`invalid_send_at` otherwise).
fn rfc3339<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<String>::deserialize(de)?
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    super::body::coded_error(
                        "invalid_send_at",
                        "`send_at` must be an RFC 3339 time like 2026-12-01T09:00:00Z",
                    )
                })
        })
        .transpose()
}

/// A stored template to render: by `name` or by `id` (one of them), at a pinned
/// `version` or the latest. Rendering is strict: every variable the template uses
/// must be in `data` (a 422 lists each missing one, e.g. `/template/data/order/total`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "welcome", "data": {
    "first_name": "Ana", "email": "ana@example.com", "product_name": "Acme Cloud",
    "get_started_url": "https://app.acme.example/onboarding",
    "steps": [{"title": "Verify your domain", "description": "Add the DNS records from Settings."}],
    "support_email": "support@acme.example", "company_name": "Acme Cloud, Inc.",
    "company_address": "548 Market St, San Francisco, CA 94104", "logo_url": ""
}}))]
pub struct TemplateRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "super::templates::version_number")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub version: Option<u32>,
    /// The variables, a JSON object.
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Reads the template reference and data of a send request.
fn template_call(f: &mut Fields, req: TemplateRequest) -> Option<TemplateCall> {
    let key = match (&req.name, &req.id) {
        (Some(name), None) => f.check("/template/name", TemplateName::parse(name).map(TemplateKey::Name)),
        (None, Some(id)) => f.check("/template/id", TemplateId::parse(id).map(TemplateKey::Id)),
        _ => f.check(
            "/template",
            Err(ValidationError::new(
                "invalid_template",
                "give the template's `name` or its `id`, not both",
            )),
        ),
    };
    let data = serde_json::Value::Object(req.data);
    if data_too_deep(&data) {
        f.check::<()>(
            "/template/data",
            Err(ValidationError::new(
                "invalid_template_data",
                format!("`data` nests at most {MAX_DATA_DEPTH} levels"),
            )),
        );
        return None;
    }
    Some(TemplateCall {
        key: key?,
        version: req.version,
        data,
    })
}

/// Collects field errors with their JSON Pointers while building domain values.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn check<T>(&mut self, pointer: impl Into<String>, result: Result<T, ValidationError>) -> Option<T> {
        result.map_err(|err| self.0.push(FieldError::new(pointer, &err))).ok()
    }

    fn mailboxes(&mut self, name: &str, list: &AddressList) -> Vec<Mailbox> {
        match list {
            AddressList::One(one) => self
                .check(format!("/{name}"), Mailbox::parse(one))
                .into_iter()
                .collect(),
            AddressList::Many(many) => many
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.check(format!("/{name}/{i}"), Mailbox::parse(m)))
                .collect(),
        }
    }
}

const MAX_TAGS: usize = 10;
const MAX_METADATA: usize = 50;
const MAX_HEADERS: usize = 50;
/// How far ahead a message may be scheduled.
const MAX_SCHEDULE: chrono::Duration = chrono::Duration::days(30);
const MAX_ATTACHMENTS: usize = 100;
/// Template data deeper than this is refused: no real template needs it, and depth is
/// what makes hostile JSON expensive to walk.
const MAX_DATA_DEPTH: usize = 32;

/// Whether template data nests deeper than any template needs.
pub(super) fn data_too_deep(value: &serde_json::Value) -> bool {
    depth(value) > MAX_DATA_DEPTH
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Turns the wire request into a [`NewMessage`], or every field error at once. Public
/// so the fuzz target `send_mime` drives exactly the path a request takes.
pub fn to_new_message(req: SendMessageRequest, max_recipients: usize) -> Result<NewMessage, ApiError> {
    let mut f = Fields::default();
    let from = f.check("/from", Mailbox::parse(&req.from));
    let to = f.mailboxes("to", &req.to);
    let cc = f.mailboxes("cc", &req.cc);
    let bcc = f.mailboxes("bcc", &req.bcc);
    let reply_to = f.mailboxes("reply_to", &req.reply_to);
    let content = match req.template {
        Some(template) => {
            for (field, present) in [
                ("subject", req.subject.is_some()),
                ("text", req.text.is_some()),
                ("html", req.html.is_some()),
            ] {
                if present {
                    f.check::<()>(
                        format!("/{field}"),
                        Err(ValidationError::new(
                            "template_conflict",
                            "the template supplies subject, html and text; leave them out",
                        )),
                    );
                }
            }
            template_call(&mut f, template).map(Content::Template)
        }
        None => {
            let subject = match &req.subject {
                Some(subject) => f.check("/subject", Subject::parse(subject)),
                None => f.check(
                    "/subject",
                    Err(ValidationError::new(
                        "missing_field",
                        "`subject` is required without `template`",
                    )),
                ),
            };
            let body = f.check("/text", Body::parse(req.text, req.html));
            subject.zip(body).map(|(subject, body)| {
                Content::Ready(ReadyContent {
                    subject,
                    body,
                    template: None,
                })
            })
        }
    };
    if req.headers.len() > MAX_HEADERS {
        f.check::<()>(
            "/headers",
            Err(ValidationError::new(
                "too_many_headers",
                format!("at most {MAX_HEADERS} custom headers"),
            )),
        );
    }
    if req.attachments.len() > MAX_ATTACHMENTS {
        f.check::<()>(
            "/attachments",
            Err(ValidationError::new(
                "too_many_attachments",
                format!("at most {MAX_ATTACHMENTS} attachments (their total size is bounded by the body limit)"),
            )),
        );
    }
    let headers: Vec<CustomHeader> = req
        .headers
        .iter()
        .filter_map(|(name, value)| {
            f.check(
                format!("/headers/{}", escape_token(name)),
                CustomHeader::parse(name, value),
            )
        })
        .collect();
    let attachments: Vec<Attachment> = req
        .attachments
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let filename = f.check(format!("/attachments/{i}/filename"), Filename::parse(&a.filename));
            let media_type = f.check(
                format!("/attachments/{i}/content_type"),
                MediaType::parse(&a.content_type),
            );
            let content = f.check(format!("/attachments/{i}/content"), decode_base64(&a.content));
            let content_id = match &a.content_id {
                Some(cid) => Some(f.check(format!("/attachments/{i}/content_id"), ContentId::parse(cid))?),
                None => None,
            };
            Some(Attachment {
                filename: filename?,
                media_type: media_type?,
                content: content?,
                content_id,
            })
        })
        .collect();
    if req.tags.len() > MAX_TAGS {
        f.check::<()>(
            "/tags",
            Err(ValidationError::new("invalid_tag", format!("at most {MAX_TAGS} tags"))),
        );
    }
    let tags: Vec<Tag> = req
        .tags
        .iter()
        .enumerate()
        .filter_map(|(i, t)| f.check(format!("/tags/{i}"), Tag::parse(t)))
        .collect();
    check_metadata(&mut f, &req.metadata);
    let send_at = req.send_at.and_then(|at| {
        let too_far = at > Utc::now() + MAX_SCHEDULE;
        f.check(
            "/send_at",
            if too_far {
                Err(ValidationError::new(
                    "invalid_send_at",
                    "`send_at` is at most 30 days ahead",
                ))
            } else {
                Ok(at)
            },
        )
    });
    let (Some(from), Some(content), true) = (from, content, f.0.is_empty()) else {
        return Err(ApiError::unprocessable(f.0));
    };
    let message = NewMessage {
        from,
        to,
        cc,
        bcc,
        reply_to,
        content,
        headers,
        attachments,
        tags,
        metadata: req.metadata,
        send_at,
        list_unsubscribe: req.list_unsubscribe,
        auto_text: req.auto_text.unwrap_or(true),
    };
    let count = message.envelope_recipients().len();
    if count == 0 {
        f.check::<()>(
            "/to",
            Err(ValidationError::new(
                "missing_recipients",
                "add at least one recipient in `to`, `cc` or `bcc`",
            )),
        );
    } else if count > max_recipients {
        f.check::<()>(
            "/to",
            Err(ValidationError::new(
                "too_many_recipients",
                format!("{count} recipients; the limit is {max_recipients} per message"),
            )),
        );
    }
    if f.0.is_empty() {
        Ok(message)
    } else {
        Err(ApiError::unprocessable(f.0))
    }
}

fn check_metadata(f: &mut Fields, metadata: &BTreeMap<String, String>) {
    if metadata.len() > MAX_METADATA {
        f.check::<()>(
            "/metadata",
            Err(ValidationError::new(
                "invalid_metadata",
                format!("at most {MAX_METADATA} keys"),
            )),
        );
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > 64 || value.len() > 1024 {
            f.check::<()>(
                format!("/metadata/{}", escape_token(key)),
                Err(ValidationError::new(
                    "invalid_metadata",
                    "keys are 1 to 64 bytes and values at most 1024 bytes",
                )),
            );
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedRecipient {
    pub email: String,
    pub status: RecipientStatus,
}

/// The message was stored durably and will be delivered.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendMessageResponse {
    #[schema(example = "msg_0192f8a0c3e47d10b5a1c2d3e4f5a6b7")]
    pub id: String,
    /// `queued`, or `scheduled` when `send_at` is in the future.
    pub status: MessageStatus,
    pub created_at: DateTime<Utc>,
    pub recipients: Vec<AcceptedRecipient>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientView {
    pub email: String,
    pub status: RecipientStatus,
    /// The last SMTP reply code for this recipient, e.g. 250 or 550.
    pub smtp_code: Option<u16>,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`.
    pub enhanced_code: Option<String>,
    /// The upstream's reply text (for `sent`, often its queue id) or the error.
    pub diagnostic: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// The relay (its configured `name`) of the last attempt, once attempted.
    pub upstream: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Position in this message's timeline, from 1.
    pub seq: u64,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
    pub smtp: Option<SmtpReply>,
    /// The relay it happened at; for a later report (a DSN, a complaint), the relay
    /// that sent the recipient. How `/v1/stats` groups it by `upstream`.
    pub upstream: Option<String>,
}

/// A message with per-recipient status and its event timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    pub status: MessageStatus,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    /// The template version the content was rendered from, when sent with one.
    pub template: Option<TemplateUse>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub send_at: Option<DateTime<Utc>>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, while some recipient is queued or deferred.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub recipients: Vec<RecipientView>,
    pub events: Vec<EventView>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            id: m.id.to_string(),
            status: m.status,
            from: m.from,
            to: m.to,
            cc: m.cc,
            subject: m.subject,
            template: m.template,
            tags: m.tags,
            metadata: m.metadata,
            created_at: m.created_at,
            send_at: m.send_at,
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at,
            recipients: m
                .recipients
                .into_iter()
                .map(|r| RecipientView {
                    email: r.email,
                    status: r.status,
                    smtp_code: r.smtp.as_ref().and_then(|s| s.code),
                    enhanced_code: r.smtp.as_ref().and_then(|s| s.enhanced.clone()),
                    diagnostic: r.smtp.map(|s| s.diagnostic),
                    updated_at: r.updated_at,
                    upstream: r.upstream,
                })
                .collect(),
            events: m
                .events
                .into_iter()
                .map(|e| EventView {
                    id: e.id.to_string(),
                    event_type: e.event_type,
                    seq: e.seq,
                    recipient: e.recipient,
                    created_at: e.created_at,
                    smtp: e.smtp,
                    upstream: e.upstream,
                })
                .collect(),
        }
    }
}

/// Send a message.
///
/// The message is validated, rendered to MIME and written durably before the `202` is
/// returned: once you have the `202`, a crash of mailgate loses nothing. Delivery
/// happens in the background; follow it with `get_message` or webhooks.
#[utoipa::path(
    tag = "messages",
    request_body = SendMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: the same key and body within 24 h replay the first answer \
                       (`Idempotent-Replayed: true`) instead of sending again; the same key with another \
                       body is 409 `idempotency_key_reused`. 1 to 255 visible ASCII characters.")),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 202, description = "Accepted and stored durably (or replayed for a repeated Idempotency-Key)", body = SendMessageResponse,
            headers(("Location" = String, description = "URL of the message"),
                    ("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request"),
                    ("RateLimit-Limit" = String, description = "Bucket capacity (burst)"),
                    ("RateLimit-Remaining" = String, description = "Sends left right now"),
                    ("RateLimit-Reset" = String, description = "Seconds until the bucket is full"))),
        (status = 409, description = "The Idempotency-Key was used with a different body (`idempotency_key_reused`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Over the tenant's rate (`rate_limited`) or daily quota (`daily_quota_exceeded`); see `Retry-After` and `RateLimit-*`", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = String, description = "Seconds to wait"),
                    ("RateLimit-Limit" = String, description = "Bucket capacity (burst)"),
                    ("RateLimit-Remaining" = String, description = "Sends left right now"),
                    ("RateLimit-Reset" = String, description = "Seconds until the bucket is full"))),
        (status = 503, description = "Back-pressure: the queue is over `delivery.max_queue_depth` (`queue_full`) or the store is failing (`store_unavailable`); retry after `Retry-After`", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 400, description = "The body is not valid JSON (`malformed_json`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is over the configured limit (`payload_too_large`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "The body is not JSON (`unsupported_media_type`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "A field is invalid; `errors` points at each one", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/messages")]
pub async fn send_message(
    auth: Authenticated<MessagesSend>,
    req: actix_web::HttpRequest,
    body: JsonBody<SendMessageRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = match req.headers().get("idempotency-key") {
        Some(value) => Some(idempotency_key(
            value.to_str().unwrap_or("\u{0}"),
            &body.1,
            "Idempotency-Key",
        )?),
        None => None,
    };
    let allowance = super::limits::take(&state, &auth.principal, 1)?;
    let (response, replayed) = send_one(&state, &auth.principal.tenant, body.0, key).await?;
    let mut answer = HttpResponse::Accepted();
    super::limits::annotate(&mut answer, &allowance);
    answer.insert_header((header::LOCATION, format!("/v1/messages/{}", response.id)));
    if replayed {
        answer.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(answer.json(response))
}

/// Validates, accepts (or replays) one message; the answer and whether it replays.
pub(crate) async fn send_one(
    state: &AppState,
    tenant: &TenantId,
    request: SendMessageRequest,
    key: Option<IdempotencyKey>,
) -> Result<(SendMessageResponse, bool), ApiError> {
    let new = to_new_message(request, state.settings.max_recipients(tenant.as_str()))?;
    let (message, replayed) = match state.sender.accept(tenant, new, key).await? {
        Accepted::New(message) => (message, false),
        Accepted::Replayed(message) => (message, true),
    };
    let response = SendMessageResponse {
        id: message.id.to_string(),
        status: message.status,
        created_at: message.created_at,
        recipients: message
            .recipients
            .iter()
            .map(|r| AcceptedRecipient {
                email: r.email.clone(),
                status: r.status,
            })
            .collect(),
    };
    Ok((response, replayed))
}

/// An idempotency key (from the header, or a batch item's `idempotency_key` at
/// `field`) with the hash of the body it came with.
pub(crate) fn idempotency_key(key: &str, body: &[u8], field: &str) -> Result<IdempotencyKey, ApiError> {
    use sha2::Digest as _;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            field,
            "invalid_idempotency_key",
            "an idempotency key is 1 to 255 visible ASCII characters",
        )]));
    }
    let hash = sha2::Sha256::digest(body);
    Ok(IdempotencyKey {
        key: key.to_owned(),
        request_hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Up to 500 messages, each exactly as `POST /v1/messages` takes it, plus an optional
/// `idempotency_key` per item so a half-failed batch can be retried safely.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBatchRequest {
    #[schema(schema_with = batch_items)]
    pub messages: Vec<serde_json::Value>,
}

fn batch_items() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("BatchMessage"))
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH))
        .build()
}

/// Adds the `BatchMessage` schema: `SendMessageRequest` plus `idempotency_key`, derived
/// from it so the two cannot drift (the batch parser takes exactly that shape).
pub fn document_batch_message(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    let Some(components) = document.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(mut item))) = components.schemas.get("SendMessageRequest").cloned() else {
        return;
    };
    item.properties.insert(
        "idempotency_key".to_owned(),
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .description(Some(
                "This item's idempotency key (as the `Idempotency-Key` header of a single send): \
                 retrying the batch replays accepted items instead of sending them again.",
            ))
            .into(),
    );
    item.description = Some("One message of a batch: a send request plus its own `idempotency_key`.".to_owned());
    components
        .schemas
        .insert("BatchMessage".to_owned(), RefOr::T(Schema::Object(item)));
}

/// One item's outcome: the accepted message, or the problem that refused it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(SendMessageResponse),
    Refused(BatchRefusal),
}

/// A batch item that was refused, with the same problem a single send would get.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchRefusal {
    pub error: Problem,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendBatchResponse {
    /// In request order.
    pub data: Vec<BatchResult>,
}

const MAX_BATCH: usize = 500;

/// Send up to 500 messages in one call.
///
/// Each item is validated and accepted on its own, exactly like `send_message`: valid
/// items are stored durably (before this answer) even when others fail, and each
/// result — `{"id", …}` or `{"error": <problem>}` with pointers like
/// `/messages/3/to/0` — is in request order.
///
/// The items are accepted concurrently (their writes share one fsync, which makes a
/// batch of 100 about twice as fast per message as single sends), so two items with the
/// same `idempotency_key` meet as two concurrent requests would: with the same body
/// both answer the one message's id; with different bodies one is accepted and the
/// other refused `idempotency_key_reused` — which one is not defined.
#[utoipa::path(
    tag = "messages",
    request_body = SendBatchRequest,
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 200, description = "Per-item results in request order", body = SendBatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Not a batch, or more than 500 messages (`too_many_messages`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "The batch exceeds the tenant's rate or daily quota (each message counts)", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "Back-pressure: the queue is over `delivery.max_queue_depth` (`queue_full`) or the store is failing (`store_unavailable`); retry after `Retry-After`", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/messages/batch")]
pub async fn send_batch(
    auth: Authenticated<MessagesSend>,
    body: JsonBody<SendBatchRequest>,
    state: web::Data<AppState>,
) -> Result<web::Json<SendBatchResponse>, ApiError> {
    let items = body.0.messages;
    if items.len() > MAX_BATCH || items.is_empty() {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            "/messages",
            "too_many_messages",
            "a batch holds 1 to 500 messages",
        )]));
    }
    let items = parse_batch_items(items)?;
    let tenant = &auth.principal.tenant;
    super::limits::take(&state, &auth.principal, items.len() as u64)?;
    // Every item at once: their durable writes reach the store writer together and
    // share one transaction and one fsync, instead of one each in turn.
    let outcomes = futures_util::future::join_all(
        items
            .into_iter()
            .map(|(request, key)| send_one(&state, tenant, request, key)),
    )
    .await;
    let data = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok((response, _)) => BatchResult::Accepted(response),
            Err(err) => {
                if err.kind() == Kind::Internal {
                    tracing::error!(error = %crate::telemetry::ErrorChain(&err), item = index, "batch item failed");
                }
                BatchResult::Refused(BatchRefusal {
                    error: err.nested_under(&format!("/messages/{index}")).problem(),
                })
            }
        })
        .collect();
    Ok(web::Json(SendBatchResponse { data }))
}

/// Parses every batch item into a send request and its optional idempotency key. An
/// item of the wrong shape (unknown field, wrong type) refuses the whole batch with
/// every such error, as a malformed single send would be refused: only items that are
/// well-formed get per-item outcomes.
fn parse_batch_items(
    items: Vec<serde_json::Value>,
) -> Result<Vec<(SendMessageRequest, Option<IdempotencyKey>)>, ApiError> {
    let mut parsed = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, mut item) in items.into_iter().enumerate() {
        let prefix = format!("/messages/{index}");
        let key = match item.as_object_mut().and_then(|o| o.remove("idempotency_key")) {
            Some(serde_json::Value::String(raw)) => Some(raw),
            Some(_) => Some(String::new()),
            None => None,
        };
        let one = serde_json::to_vec(&item).map_err(ApiError::internal).and_then(|raw| {
            let key = key.map(|k| idempotency_key(&k, &raw, "/idempotency_key")).transpose()?;
            Ok((super::body::parse::<SendMessageRequest>(&raw)?, key))
        });
        match one {
            Ok(item) => parsed.push(item),
            Err(err) if err.kind() == Kind::Internal => return Err(err),
            Err(err) => errors.extend(err.into_field_errors().into_iter().map(|mut e| {
                e.field = format!("{prefix}{}", e.field);
                e
            })),
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ApiError::unprocessable(errors))
    }
}

/// A store read of one message of the caller's tenant.
type TenantRead<T> = fn(&dyn Store, &TenantId, &MessageId) -> Result<Option<T>, StoreError>;

/// Runs `read` for message `id` of the caller's tenant. A malformed id, a missing
/// message and another tenant's message all end in the same 404.
async fn read_message<T: Send + 'static>(
    state: &AppState,
    auth: &Authenticated<MessagesRead>,
    id: &str,
    read: TenantRead<T>,
) -> Result<T, ApiError> {
    let id = MessageId::parse(id).map_err(|_| ApiError::not_found("the message"))?;
    state
        .store_call(&auth.principal.tenant, move |store, tenant| read(store, tenant, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("the message"))
}

/// Get a message: status, per-recipient outcome and event timeline.
///
/// A message of another tenant is answered 404, exactly like one that does not exist.
#[utoipa::path(
    tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "The message", body = MessageView),
        (status = 404, description = "No such message for this tenant (`not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/messages/{id}")]
pub async fn get_message(
    auth: Authenticated<MessagesRead>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<MessageView>, ApiError> {
    let message = read_message(&state, &auth, &path, |store, tenant, id| store.message(tenant, id)).await?;
    Ok(web::Json(message.into()))
}

/// Get the exact MIME bytes (`message/rfc822`) that are sent for this message.
#[utoipa::path(
    tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "The rendered message", content_type = "message/rfc822", body = String),
        (status = 404, description = "No such message for this tenant (`not_found`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 410, description = "The message is finished and older than `storage.mime_retention` (default 7 days): its MIME is no longer kept, while its status and events are (`mime_expired`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/messages/{id}/mime")]
pub async fn get_message_mime(
    auth: Authenticated<MessagesRead>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match read_message(&state, &auth, &path, |store, tenant, id| store.mime(tenant, id)).await? {
        StoredMime::Bytes(mime) => Ok(HttpResponse::Ok().content_type("message/rfc822").body(mime)),
        StoredMime::Expired => Err(ApiError::new(
            Kind::Gone,
            "mime_expired",
            "the MIME of this message is past storage.mime_retention and no longer kept; its status and events are",
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// Only messages in this status.
    pub status: Option<MessageStatus>,
    /// Only messages carrying this tag.
    pub tag: Option<String>,
    /// Only messages to this address (to, cc or bcc).
    pub recipient: Option<String>,
    /// Only messages rendered from the template of this name.
    pub template: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A message in a list, without recipients' details and events.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageSummary {
    pub id: String,
    pub status: MessageStatus,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub send_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    /// Newest first.
    pub data: Vec<MessageSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page. A page may hold
    /// fewer items than `limit` (filters are applied to at most 1,000 messages per
    /// call) and still have a `next_cursor`.
    pub next_cursor: Option<String>,
}

/// Messages examined per list call at most, so filters cannot turn a request into a
/// scan of everything.
pub(crate) const LIST_BUDGET: usize = 1_000;

/// List messages, newest first, optionally by status, tag, recipient or template.
#[utoipa::path(
    tag = "messages",
    params(MessageQuery),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 422, description = "Invalid `limit`, `cursor` or filter", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/messages")]
pub async fn list_messages(
    auth: Authenticated<MessagesRead>,
    query: Query<MessageQuery>,
    state: web::Data<AppState>,
) -> Result<web::Json<MessageList>, ApiError> {
    let size = page_size(query.limit)?;
    let cursor = match &query.cursor {
        Some(raw) => Some(MessageId::parse(raw).map_err(|_| invalid_cursor("cursor"))?),
        None => None,
    };
    let filter = MessageFilter {
        status: query.status,
        tag: query.tag.clone(),
        recipient: query.recipient.clone(),
        template: query.template.clone(),
    };
    let (found, next) = state
        .store_call(&auth.principal.tenant, move |store, tenant| {
            store.list_messages(tenant, cursor.as_ref(), size, LIST_BUDGET, &|m| filter.matches(m))
        })
        .await?;
    Ok(web::Json(MessageList {
        next_cursor: next.map(|id| id.to_string()),
        data: found
            .into_iter()
            .map(|m| MessageSummary {
                id: m.id.to_string(),
                status: m.status,
                from: m.from,
                to: m.to,
                subject: m.subject,
                tags: m.tags,
                created_at: m.created_at,
                send_at: m.send_at,
            })
            .collect(),
    }))
}

/// Cancel a scheduled, queued or deferred message: nothing more is sent, and each
/// recipient still waiting gets a `message.cancelled` event. 409 once it is being sent
/// or done.
#[utoipa::path(
    tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 200, description = "Cancelled", body = MessageView),
        (status = 404, description = "No such message (`not_found`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Being sent or already done (`message_not_cancellable`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/messages/{id}/cancel")]
pub async fn cancel_message(
    auth: Authenticated<MessagesSend>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<MessageView>, ApiError> {
    Ok(web::Json(cancel(&state, &auth.principal.tenant, &path).await?.into()))
}

/// Cancels message `id` of `tenant`, or says why not: what the API and the console's
/// cancel button both answer.
pub(crate) async fn cancel(state: &AppState, tenant: &TenantId, id: &str) -> Result<Message, ApiError> {
    let id = MessageId::parse(id).map_err(|_| ApiError::not_found("the message"))?;
    match state
        .store_call(tenant, move |store, tenant| store.cancel(tenant, &id, Utc::now()))
        .await?
    {
        CancelOutcome::Cancelled(message) => Ok(*message),
        CancelOutcome::NotFound => Err(ApiError::not_found("the message")),
        CancelOutcome::TooLate(status) => Err(ApiError::new(
            Kind::Conflict,
            "message_not_cancellable",
            format!(
                "the message is {}; only scheduled, queued or deferred messages can be cancelled",
                status.as_str()
            ),
        )),
    }
}
