//! Resend's API (`POST /emails`, `POST /emails/batch`, `GET /emails/{id}`,
//! `POST /emails/{id}/cancel`) over mailgate's send path: point a Resend SDK at
//! mailgate (`RESEND_BASE_URL`, or `resend.api_url` in Python) with a mailgate token as
//! the API key, and keep calling `emails.send`, `batch.send`, `emails.get`.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{get, post, web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{error_response, item_key, joined, media_type_for, Origins};
use crate::api::auth::{Authenticated, MessagesRead, MessagesSend};
use crate::api::body::JsonBody;
use crate::api::messages::{
    idempotency_key, to_new_message, AddressList, AttachmentRequest, SendMessageRequest, TemplateRequest,
};
use crate::api::problem::{ApiError, FieldError, Kind};
use crate::api::AppState;
use crate::domain::auth::TenantId;
use crate::domain::ids::{MessageId, TemplateId};
use crate::domain::message::{IdempotencyKey, Message, NewMessage};
use crate::domain::status::{EventType, MessageStatus};
use crate::sending::Accepted;
use crate::store::StoredMime;
use mail_parser::PartType;

/// An email as Resend's `POST /emails` takes it. Unknown fields are refused (422
/// `validation_error` naming the field) rather than ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "from": "Acme <no-reply@acme.test>",
    "to": ["ana@example.test"],
    "subject": "Hello",
    "html": "<p>Welcome</p>",
    "tags": [{"name": "category", "value": "welcome"}]
}))]
pub struct ResendEmail {
    pub from: String,
    /// One address or up to 50 (mailgate's per-tenant recipient limit applies).
    pub to: AddressList,
    #[serde(default)]
    pub cc: Option<AddressList>,
    #[serde(default)]
    pub bcc: Option<AddressList>,
    #[serde(default)]
    pub reply_to: Option<AddressList>,
    /// Required unless `template` is given (then it comes from the template).
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub attachments: Option<Vec<ResendAttachment>>,
    /// Each tag becomes the mailgate tag `name:value` (filter with `?tag=name:value`).
    #[serde(default)]
    pub tags: Option<Vec<ResendTag>>,
    /// RFC 3339 time, or `in N minutes` (also seconds, hours, days); at most 30 days
    /// ahead.
    #[serde(default)]
    pub scheduled_at: Option<String>,
    /// A mailgate template, by name or id, rendered strictly with `variables`.
    #[serde(default)]
    pub template: Option<ResendTemplate>,
}

/// An attachment: `content` as base64 (or as an array of bytes, as Resend's Python SDK
/// may send it). `path` (a URL for Resend to fetch) is refused: mailgate does not fetch
/// remote files.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendAttachment {
    #[serde(default)]
    pub content: Option<AttachmentContent>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Guessed from the file name when absent.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Makes the attachment inline, referenced from the html as `cid:<content_id>`.
    #[serde(default)]
    pub content_id: Option<String>,
    /// Resend's newer name for `content_id`.
    #[serde(default)]
    pub inline_content_id: Option<String>,
}

/// Attachment bytes as base64 text or as an array of byte values.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged, expecting = "expected base64 text or an array of byte values")]
pub enum AttachmentContent {
    Base64(String),
    Bytes(Vec<u8>),
}

/// A tag; `value` may be left out.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendTag {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// A stored mailgate template (its name or `tpl_…` id) and its variables.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendTemplate {
    pub id: String,
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub variables: serde_json::Map<String, serde_json::Value>,
}

/// Resend's error body; its SDKs raise their own typed errors from `name`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"statusCode": 422, "name": "validation_error", "message": "Invalid `to/0` field: `bob` has no `@`"}))]
pub struct ResendError {
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    pub name: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResendId {
    #[schema(example = "msg_0192f8a0c3e47d10b5a1c2d3e4f5a6b7")]
    pub id: String,
}

/// The answer to a batch: one id per email, in request order. In `permissive` mode,
/// `errors` lists the refused emails by index.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResendBatchResponse {
    pub data: Vec<ResendId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ResendBatchError>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResendBatchError {
    pub index: usize,
    pub message: String,
}

/// An email as Resend's `GET /emails/{id}` answers it. `html` and `text` are read from
/// the stored MIME (null once it is past `storage.mime_retention`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResendEmailView {
    /// Always `email`.
    pub object: String,
    pub id: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub created_at: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `scheduled`, `queued`, `sent`, `delivered`, `delivery_delayed`, `bounced`,
    /// `complained`, `failed`, `suppressed` or `canceled`.
    pub last_event: String,
    pub tags: Vec<ResendTag>,
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResendCancelled {
    /// Always `email`.
    pub object: String,
    pub id: String,
}

/// A refusal in Resend's shape: the status and `name` its SDKs map to error types.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ResendFailure {
    status: StatusCode,
    name: String,
    message: String,
    cause: Box<ApiError>,
}

impl From<ApiError> for ResendFailure {
    fn from(cause: ApiError) -> Self {
        let first_code = cause.field_errors().first().map(|e| e.code.as_str());
        // The names Resend's SDKs turn into their own error types (the Python SDK's
        // `ValidationError`, `MissingRequiredFieldsError`, `MissingApiKeyError`, …).
        let (status, name) = match (cause.kind(), cause.code(), first_code) {
            (Kind::Unprocessable, "invalid_idempotency_key", _) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            (Kind::Unprocessable, _, Some("missing_field" | "missing_recipients" | "missing_content")) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "missing_required_field")
            }
            (Kind::Unprocessable, _, _) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            (Kind::BadRequest, _, _) => (StatusCode::BAD_REQUEST, "validation_error"),
            (Kind::Unauthorized, _, _) => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            (Kind::Forbidden, _, _) => (StatusCode::UNAUTHORIZED, "restricted_api_key"),
            (Kind::NotFound, _, _) => (StatusCode::NOT_FOUND, "not_found"),
            (Kind::MethodNotAllowed, _, _) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (Kind::Conflict, "idempotency_key_reused", _) => (StatusCode::CONFLICT, "invalid_idempotent_request"),
            (Kind::TooManyRequests, "daily_quota_exceeded", _) => {
                (StatusCode::TOO_MANY_REQUESTS, "daily_quota_exceeded")
            }
            (Kind::TooManyRequests, _, _) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
            (Kind::Internal, _, _) => (StatusCode::INTERNAL_SERVER_ERROR, "application_error"),
            // Statuses Resend has no name for keep mailgate's stable code as the name.
            (kind, code, _) => (kind.status(), code),
        };
        let message = match cause.field_errors() {
            [] => cause.detail().to_owned(),
            errors => errors
                .iter()
                .map(|e| match e.field.trim_start_matches('/') {
                    "" => e.message.clone(),
                    field => format!("Invalid `{field}` field: {}", e.message),
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        Self {
            status,
            name: name.to_owned(),
            message,
            cause: Box::new(cause),
        }
    }
}

impl ResponseError for ResendFailure {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        error_response(
            &self.cause,
            self.status,
            &ResendError {
                status_code: self.status.as_u16(),
                name: self.name.clone(),
                message: self.message.clone(),
            },
        )
    }
}

/// The caller's token, with Resend's names for its refusals: no key at all is
/// `missing_api_key`, a key mailgate does not accept is `invalid_api_key` (403).
fn authorized<S: crate::api::auth::RequiredScope>(
    req: &HttpRequest,
    auth: Result<Authenticated<S>, ApiError>,
) -> Result<Authenticated<S>, ResendFailure> {
    auth.map_err(|err| {
        let present = req.headers().contains_key(header::AUTHORIZATION);
        let mut failure = ResendFailure::from(err);
        if present && failure.status == StatusCode::UNAUTHORIZED && failure.name == "missing_api_key" {
            failure.status = StatusCode::FORBIDDEN;
            failure.name = "invalid_api_key".to_owned();
        }
        failure
    })
}

const MAX_BATCH: usize = 100;
/// How far ahead `scheduled_at` may be, as for `send_at`.
const MAX_SCHEDULE_DAYS: i64 = 30;

/// Reads `scheduled_at`: RFC 3339, or Resend's natural form `in N <unit>`.
fn scheduled_at(raw: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw.trim()) {
        return Some(at.with_timezone(&Utc));
    }
    let lower = raw.trim().to_ascii_lowercase();
    let mut words = lower.strip_prefix("in ")?.split_whitespace();
    let count: i64 = words.next()?.parse().ok().filter(|n| *n >= 0)?;
    let unit = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let seconds = match unit.trim_end_matches('s') {
        "sec" | "second" => 1,
        "min" | "minute" => 60,
        "hr" | "hour" => 3_600,
        "day" => 86_400,
        _ => return None,
    };
    // Checked: a count of any size is refused later as too far ahead, never a panic.
    now.checked_add_signed(chrono::TimeDelta::try_seconds(count.checked_mul(seconds)?)?)
}

/// Turns a Resend email into mailgate's send request, and records where each of its
/// fields came from.
fn to_send_request(email: ResendEmail, now: DateTime<Utc>) -> Result<(SendMessageRequest, Origins), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut origins = Origins::default();
    origins.map("/send_at", "/scheduled_at");
    origins.map("/template/name", "/template/id");
    origins.map("/template/data", "/template/variables");
    let send_at = match email.scheduled_at.as_deref() {
        None => None,
        Some(raw) => {
            let at = scheduled_at(raw, now);
            if at.is_none() {
                errors.push(FieldError::coded(
                    "/scheduled_at",
                    "invalid_send_at",
                    "`scheduled_at` is an RFC 3339 time like 2026-12-01T09:00:00Z or `in 10 minutes`",
                ));
            }
            at.filter(|at| *at <= now + chrono::Duration::days(MAX_SCHEDULE_DAYS))
                .or_else(|| {
                    if at.is_some() {
                        errors.push(FieldError::coded(
                            "/scheduled_at",
                            "invalid_send_at",
                            "`scheduled_at` is at most 30 days ahead",
                        ));
                    }
                    None
                })
        }
    };
    let mut attachments = Vec::new();
    for (index, attachment) in email.attachments.into_iter().flatten().enumerate() {
        let at = format!("/attachments/{index}");
        if attachment.path.is_some() {
            errors.push(FieldError::coded(
                format!("{at}/path"),
                "unsupported_field",
                "mailgate does not fetch remote attachments; send the file itself as base64 `content`",
            ));
            continue;
        }
        let content = match attachment.content {
            Some(AttachmentContent::Base64(text)) => text,
            Some(AttachmentContent::Bytes(bytes)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
            None => {
                errors.push(FieldError::coded(
                    format!("{at}/content"),
                    "missing_field",
                    "an attachment needs its `content` (base64)",
                ));
                continue;
            }
        };
        let Some(filename) = attachment.filename else {
            errors.push(FieldError::coded(
                format!("{at}/filename"),
                "missing_field",
                "an attachment needs a `filename`",
            ));
            continue;
        };
        let content_id = match (attachment.content_id, attachment.inline_content_id) {
            (Some(plain), Some(inline)) if plain != inline => {
                errors.push(FieldError::coded(
                    format!("{at}/inline_content_id"),
                    "invalid_content_id",
                    "`content_id` and `inline_content_id` name the same thing; give one",
                ));
                continue;
            }
            (plain, Some(inline)) => {
                if plain.is_none() {
                    origins.map(format!("{at}/content_id"), format!("{at}/inline_content_id"));
                }
                Some(inline)
            }
            (plain, None) => plain,
        };
        attachments.push(AttachmentRequest {
            content_type: attachment
                .content_type
                .unwrap_or_else(|| media_type_for(&filename).to_owned()),
            filename,
            content,
            content_id,
        });
    }
    let template = email.template.map(|t| {
        let by_id = TemplateId::parse(&t.id).is_ok();
        TemplateRequest {
            name: (!by_id).then(|| t.id.clone()),
            id: by_id.then_some(t.id),
            version: None,
            data: t.variables,
        }
    });
    let tags = email
        .tags
        .into_iter()
        .flatten()
        .map(|tag| match tag.value {
            Some(value) => format!("{}:{value}", tag.name),
            None => tag.name,
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let request = SendMessageRequest {
        from: email.from,
        to: email.to,
        cc: email.cc.unwrap_or_default(),
        bcc: email.bcc.unwrap_or_default(),
        reply_to: email.reply_to.unwrap_or_default(),
        subject: email.subject,
        template,
        text: email.text,
        html: email.html,
        headers: email.headers.unwrap_or_default(),
        attachments,
        tags,
        metadata: BTreeMap::new(),
        send_at,
        list_unsubscribe: None,
        // Resend sends what it is given: html alone stays html alone.
        auto_text: Some(false),
    };
    Ok((request, origins))
}

/// The `Idempotency-Key` header, hashed with the body it came with.
fn header_key(req: &HttpRequest, raw: &[u8]) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|value| idempotency_key(value.to_str().unwrap_or("\u{0}"), raw, "Idempotency-Key"))
        .transpose()
}

/// Send an email (Resend's `POST /emails`).
///
/// Resend's request and answer over mailgate's `POST /v1/messages`: the same
/// validation, strict templates, `Idempotency-Key`, durable write (before the answer)
/// and events. Errors are Resend's `{"statusCode", "name", "message"}` as
/// `application/json`, so the SDK raises its own error types.
#[utoipa::path(
    tag = "compatibility",
    operation_id = "resend_send_email",
    request_body = ResendEmail,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "The same key and body within 24 h return the first answer instead of sending again; \
                       the same key with another body is 409 `invalid_idempotent_request`.")),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 200, description = "Accepted and stored durably", body = ResendId),
        (status = 409, description = "The Idempotency-Key was used with another body (`invalid_idempotent_request`)", body = ResendError),
        (status = 422, description = "A field is invalid; `message` names it", body = ResendError),
    )
)]
#[post("/emails")]
pub async fn send_email(
    req: HttpRequest,
    auth: Result<Authenticated<MessagesSend>, ApiError>,
    body: Result<JsonBody<ResendEmail>, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ResendFailure> {
    let auth = authorized(&req, auth)?;
    let JsonBody(email, raw) = body?;
    let key = header_key(&req, &raw)?;
    let tenant = &auth.principal.tenant;
    let (new, origins) = to_new(&state, tenant, email, "")?;
    let allowance = crate::api::limits::take(&state, &auth.principal, 1)?;
    let accepted = state
        .sender
        .accept(tenant, new, key)
        .await
        .map_err(|err| origins.relabel(err.into(), ""))?;
    let mut answer = HttpResponse::Ok();
    crate::api::limits::annotate(&mut answer, &allowance);
    Ok(answer.json(ResendId {
        id: accepted.message().id.to_string(),
    }))
}

/// A Resend email as a validated mailgate message, field errors under `prefix` in the
/// caller's terms.
fn to_new(
    state: &AppState,
    tenant: &TenantId,
    email: ResendEmail,
    prefix: &str,
) -> Result<(NewMessage, Origins), ApiError> {
    let (request, origins) =
        to_send_request(email, Utc::now()).map_err(|errors| ApiError::unprocessable(errors).nested_under(prefix))?;
    let new = to_new_message(request, state.settings.max_recipients(tenant.as_str()))
        .map_err(|err| origins.relabel(err, prefix))?;
    Ok((new, origins))
}

/// How a batch treats invalid emails (`x-batch-validation`): `strict` (the default)
/// refuses the whole batch, `permissive` sends the valid ones and lists the others.
fn permissive(req: &HttpRequest) -> Result<bool, ApiError> {
    match req.headers().get("x-batch-validation").map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(mode)) if mode.eq_ignore_ascii_case("strict") => Ok(false),
        Some(Ok(mode)) if mode.eq_ignore_ascii_case("permissive") => Ok(true),
        Some(_) => Err(ApiError::unprocessable(vec![FieldError::coded(
            "x-batch-validation",
            "invalid_batch_validation",
            "`x-batch-validation` is `strict` or `permissive`",
        )])),
    }
}

/// Send up to 100 emails at once (Resend's `POST /emails/batch`).
///
/// The body is an array of emails as `POST /emails` takes them. With
/// `x-batch-validation: strict` (the default) every email is checked and rendered
/// first and nothing is stored unless all of them can be sent; with `permissive`, the
/// valid ones are sent and `errors` lists the others by index. An `Idempotency-Key`
/// covers the whole batch: retrying it replays every email instead of sending again.
#[utoipa::path(
    tag = "compatibility",
    operation_id = "resend_send_batch",
    request_body(content = Vec<ResendEmail>, description = "1 to 100 emails"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retrying the whole batch safe"),
        ("x-batch-validation" = Option<String>, Header, description = "`strict` (default) or `permissive`"),
    ),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 200, description = "Every email (strict) or the valid ones (permissive) stored durably", body = ResendBatchResponse),
        (status = 409, description = "The Idempotency-Key was used with another body (`invalid_idempotent_request`)", body = ResendError),
        (status = 422, description = "Not 1 to 100 emails, or (strict) an email is invalid; `message` names each field as `<index>/<field>`", body = ResendError),
    )
)]
#[post("/emails/batch")]
pub async fn send_batch(
    req: HttpRequest,
    auth: Result<Authenticated<MessagesSend>, ApiError>,
    body: Result<JsonBody<Vec<ResendEmail>>, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ResendFailure> {
    let auth = authorized(&req, auth)?;
    let JsonBody(emails, raw) = body?;
    let key = header_key(&req, &raw)?;
    let permissive = permissive(&req)?;
    if emails.is_empty() || emails.len() > MAX_BATCH {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            "",
            "too_many_messages",
            format!("a batch holds 1 to {MAX_BATCH} emails"),
        )])
        .into());
    }
    let tenant = &auth.principal.tenant;
    let mut items = Vec::with_capacity(emails.len());
    let mut refused = Vec::new();
    // Strict refusals name each field under its email's index; permissive ones carry
    // the index beside the message.
    let prefix = |index: usize| if permissive { String::new() } else { format!("/{index}") };
    for (index, email) in emails.into_iter().enumerate() {
        match to_new(&state, tenant, email, &prefix(index)) {
            Ok((new, origins)) => items.push((index, new, origins)),
            Err(err) => refused.push((index, err)),
        }
    }
    if !permissive && !refused.is_empty() {
        return Err(joined(refused.into_iter().map(|(_, err)| err)).into());
    }
    let allowance = crate::api::limits::take(&state, &auth.principal, items.len() as u64)?;
    let mut data = Vec::with_capacity(items.len());
    if permissive {
        let outcomes = futures_util::future::join_all(items.into_iter().map(|(index, new, origins)| {
            let key = key.as_ref().map(|key| item_key(key, index));
            let sender = &state.sender;
            async move {
                let accepted = sender.accept(tenant, new, key).await;
                (index, accepted.map_err(|err| origins.relabel(err.into(), "")))
            }
        }))
        .await;
        for (index, outcome) in outcomes {
            match outcome {
                Ok(accepted) => data.push(id_of(&accepted)),
                Err(err) => refused.push((index, err)),
            }
        }
    } else {
        let (origins, news): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|(index, new, origins)| ((index, origins), (new, key.as_ref().map(|key| item_key(key, index)))))
            .unzip();
        let accepted = state.sender.accept_all(tenant, news).await.map_err(|failures| {
            joined(failures.into_iter().map(|(at, err)| {
                let (index, origins) = &origins[at];
                origins.relabel(err.into(), &format!("/{index}"))
            }))
        })?;
        data.extend(accepted.iter().map(id_of));
    }
    let errors = permissive.then(|| {
        refused.sort_by_key(|(index, _)| *index);
        refused
            .into_iter()
            .map(|(index, err)| ResendBatchError {
                index,
                message: ResendFailure::from(err).message,
            })
            .collect()
    });
    let mut answer = HttpResponse::Ok();
    crate::api::limits::annotate(&mut answer, &allowance);
    Ok(answer.json(ResendBatchResponse { data, errors }))
}

fn id_of(accepted: &Accepted) -> ResendId {
    ResendId {
        id: accepted.message().id.to_string(),
    }
}

/// What Resend calls the last thing that happened to a message.
fn last_event(message: &Message) -> &'static str {
    // An unsubscribe is not a delivery event (Resend has none): the one before it counts.
    let last = message
        .events
        .iter()
        .rev()
        .map(|e| e.event_type)
        .find(|t| *t != EventType::Unsubscribed);
    match last {
        Some(EventType::Sent) => "sent",
        Some(EventType::Delivered) => "delivered",
        Some(EventType::Deferred) => "delivery_delayed",
        Some(EventType::Bounced) => "bounced",
        Some(EventType::Complained) => "complained",
        Some(EventType::Failed) => "failed",
        Some(EventType::Suppressed) => "suppressed",
        Some(EventType::Cancelled) => "canceled",
        Some(EventType::Unsubscribed) => "sent",
        None if message.status == MessageStatus::Scheduled => "scheduled",
        None => "queued",
    }
}

/// A mailgate message as Resend's email object, its html and text from `mime`.
fn email_view(message: Message, mime: Option<&[u8]>) -> ResendEmailView {
    let parsed = mime.and_then(|bytes| mail_parser::MessageParser::default().parse(bytes));
    // mail-parser offers a converted copy of a part the message lacks (the html of a
    // text-only message); only a part of that type really in the message counts.
    let part = |html: bool| {
        let parsed = parsed.as_ref()?;
        let found = if html { parsed.html_part(0) } else { parsed.text_part(0) }?;
        match (&found.body, html) {
            (PartType::Html(body), true) | (PartType::Text(body), false) => Some(body.to_string()),
            _ => None,
        }
    };
    let (html, text) = (part(true), part(false));
    let reply_to = parsed
        .as_ref()
        .and_then(|p| p.reply_to())
        .map(|list| list.iter().filter_map(|a| a.address().map(str::to_owned)).collect())
        .unwrap_or_default();
    let shown: Vec<String> = message.to.iter().chain(&message.cc).map(|m| address_of(m)).collect();
    let bcc = message
        .recipients
        .iter()
        .filter(|r| !shown.iter().any(|s| s.eq_ignore_ascii_case(&r.email)))
        .map(|r| r.email.clone())
        .collect();
    let tags = message
        .tags
        .iter()
        .map(|tag| match tag.split_once(':') {
            Some((name, value)) => ResendTag {
                name: name.to_owned(),
                value: Some(value.to_owned()),
            },
            None => ResendTag {
                name: tag.clone(),
                value: None,
            },
        })
        .collect();
    ResendEmailView {
        object: "email".to_owned(),
        id: message.id.to_string(),
        last_event: last_event(&message).to_owned(),
        from: message.from,
        to: message.to,
        cc: message.cc,
        bcc,
        reply_to,
        subject: message.subject,
        html,
        text,
        created_at: message.created_at,
        scheduled_at: message.send_at,
        tags,
    }
}

/// The bare address of a mailbox as mailgate shows it (`Name <a@b>` or `a@b`).
fn address_of(mailbox: &str) -> String {
    crate::domain::address::Mailbox::parse(mailbox)
        .map(|m| m.email().to_string())
        .unwrap_or_else(|_| mailbox.to_owned())
}

/// Get an email (Resend's `GET /emails/{id}`).
///
/// `last_event` follows the message's event timeline. `html` and `text` come from the
/// stored MIME and are null once it is past `storage.mime_retention`. A message of
/// another tenant is 404, like one that does not exist.
#[utoipa::path(
    tag = "compatibility",
    operation_id = "resend_get_email",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "The email", body = ResendEmailView),
        (status = 404, description = "No such email for this tenant (`not_found`)", body = ResendError),
    )
)]
#[get("/emails/{id}")]
pub async fn get_email(
    req: HttpRequest,
    auth: Result<Authenticated<MessagesRead>, ApiError>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<ResendEmailView>, ResendFailure> {
    let auth = authorized(&req, auth)?;
    let id = MessageId::parse(&path).map_err(|_| ApiError::not_found("the email"))?;
    let found = state
        .store_call(&auth.principal.tenant, move |store, tenant| {
            let Some(message) = store.message(tenant, &id)? else {
                return Ok(None);
            };
            let mime = match store.mime(tenant, &id)? {
                Some(StoredMime::Bytes(bytes)) => Some(bytes),
                Some(StoredMime::Expired) | None => None,
            };
            Ok(Some((message, mime)))
        })
        .await?;
    let (message, mime) = found.ok_or_else(|| ApiError::not_found("the email"))?;
    Ok(web::Json(email_view(message, mime.as_deref())))
}

/// Cancel a scheduled email (Resend's `POST /emails/{id}/cancel`).
///
/// As `POST /v1/messages/{id}/cancel`: a scheduled, queued or deferred message is not
/// sent; one already being sent or done is 409 `message_not_cancellable`.
#[utoipa::path(
    tag = "compatibility",
    operation_id = "resend_cancel_email",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 200, description = "Cancelled", body = ResendCancelled),
        (status = 404, description = "No such email for this tenant (`not_found`)", body = ResendError),
        (status = 409, description = "Being sent or already done (`message_not_cancellable`)", body = ResendError),
    )
)]
#[post("/emails/{id}/cancel")]
pub async fn cancel_email(
    req: HttpRequest,
    auth: Result<Authenticated<MessagesSend>, ApiError>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<ResendCancelled>, ResendFailure> {
    let auth = authorized(&req, auth)?;
    let message = crate::api::messages::cancel(&state, &auth.principal.tenant, &path).await?;
    Ok(web::Json(ResendCancelled {
        object: "email".to_owned(),
        id: message.id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_at_reads_rfc_3339_and_resends_natural_form() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |raw: &str| scheduled_at(raw, now).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2026-12-06T09:00:00+01:00").as_deref(),
            Some("2026-12-06T08:00:00+00:00")
        );
        assert_eq!(at("in 1 min").as_deref(), Some("2026-12-05T10:01:00+00:00"));
        assert_eq!(at("in 2 hours").as_deref(), Some("2026-12-05T12:00:00+00:00"));
        assert_eq!(at("In 3 days").as_deref(), Some("2026-12-08T10:00:00+00:00"));
        assert_eq!(at("tomorrow"), None);
        assert_eq!(at("in 1 fortnight"), None);
        assert_eq!(at("in -1 min"), None);
        assert_eq!(
            at("in 100000000 days"),
            None,
            "past chrono's range: refused, not a panic"
        );
        assert_eq!(at("in 9223372036854775807 days"), None);
    }

    #[test]
    fn errors_carry_the_names_resends_sdks_raise_typed_errors_for() {
        let missing = ApiError::unprocessable(vec![FieldError::coded("/subject", "missing_field", "needed")]);
        let failure = ResendFailure::from(missing);
        assert_eq!(
            (failure.status.as_u16(), failure.name.as_str()),
            (422, "missing_required_field")
        );
        assert_eq!(failure.message, "Invalid `subject` field: needed");
        let invalid = ApiError::unprocessable(vec![FieldError::coded("/to/0", "invalid_address", "no @")]);
        assert_eq!(ResendFailure::from(invalid).name, "validation_error");
        let reused = ApiError::new(Kind::Conflict, "idempotency_key_reused", "reused");
        assert_eq!(ResendFailure::from(reused).name, "invalid_idempotent_request");
        let limited = ApiError::new(Kind::TooManyRequests, "rate_limited", "slow down");
        assert_eq!(ResendFailure::from(limited).name, "rate_limit_exceeded");
    }

    #[test]
    fn an_email_shows_only_the_parts_its_mime_has() {
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": "msg_0192f8a0c3e47d10b5a1c2d3e4f5a6b7", "tenant": "acme", "from": "a@acme.test",
            "to": ["Ana <ana@example.test>"], "cc": [], "subject": "s", "tags": ["category:welcome", "plain"],
            "metadata": {}, "created_at": "2026-12-05T10:00:00Z", "send_at": null, "status": "queued",
            "attempts": 0, "next_attempt_at": null, "events": [],
            "recipients": [
                {"email": "ana@example.test", "status": "queued", "smtp": null, "updated_at": "2026-12-05T10:00:00Z", "upstream": null},
                {"email": "hidden@example.test", "status": "queued", "smtp": null, "updated_at": "2026-12-05T10:00:00Z", "upstream": null}
            ]
        }))
        .unwrap();
        let text_only = b"From: a@acme.test\r\nReply-To: r@acme.test\r\nContent-Type: text/plain\r\n\r\nhello\r\n";
        let view = email_view(message, Some(text_only));
        assert_eq!(view.text.as_deref().map(str::trim), Some("hello"));
        assert_eq!(view.html, None, "no html is made up from the text");
        assert_eq!(view.bcc, ["hidden@example.test"]);
        assert_eq!(view.reply_to, ["r@acme.test"]);
        assert_eq!(view.last_event, "queued");
        assert_eq!(view.tags[0].value.as_deref(), Some("welcome"));
        assert_eq!(view.tags[1].value, None);
    }

    #[test]
    fn a_remote_attachment_is_refused_naming_its_path() {
        let email: ResendEmail = serde_json::from_value(serde_json::json!({
            "from": "a@acme.test", "to": "b@example.test", "subject": "s", "text": "t",
            "attachments": [{"filename": "x.png", "path": "https://example.com/x.png"}]
        }))
        .unwrap();
        let errors = to_send_request(email, Utc::now()).unwrap_err();
        assert_eq!(errors[0].field, "/attachments/0/path");
        assert_eq!(errors[0].code, "unsupported_field");
    }
}
