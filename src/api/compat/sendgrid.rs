//! SendGrid's v3 Mail Send (`POST /v3/mail/send`) over mailgate's send path: point a
//! SendGrid SDK at mailgate (its host / `baseUrl`) with a mailgate token as the API
//! key. Each personalization becomes one mailgate message; a request is accepted whole
//! or not at all.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{error_response, item_key, joined, mailbox, media_type_for, Origins};
use crate::api::auth::{Authenticated, MessagesSend};
use crate::api::body::JsonBody;
use crate::api::messages::{
    idempotency_key, to_new_message, AddressList, AttachmentRequest, SendMessageRequest, TemplateRequest,
};
use crate::api::problem::{ApiError, FieldError, Kind};
use crate::api::AppState;
use crate::domain::ids::TemplateId;

/// A v3 Mail Send request. Fields for SendGrid features mailgate does not have are
/// refused naming the field when they ask for something (`tracking_settings` with
/// `enable: true`, `asm`, `ip_pool_name`, `batch_id`, legacy `substitutions` and
/// `sections`); unknown fields are refused too.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "personalizations": [{"to": [{"email": "ana@example.test", "name": "Ana"}]}],
    "from": {"email": "no-reply@acme.test", "name": "Acme"},
    "subject": "Hello",
    "content": [{"type": "text/plain", "value": "plain part"}, {"type": "text/html", "value": "<p>html part</p>"}],
    "categories": ["onboarding"]
}))]
pub struct SendGridMail {
    /// 1 to 1,000; each is sent as its own message.
    #[schema(min_items = 1, max_items = 1000)]
    pub personalizations: Vec<Personalization>,
    pub from: SendGridAddress,
    #[serde(default)]
    pub reply_to: Option<SendGridAddress>,
    #[serde(default)]
    pub reply_to_list: Option<Vec<SendGridAddress>>,
    /// The default subject; a personalization's own wins. Leave out with `template_id`.
    #[serde(default)]
    pub subject: Option<String>,
    /// `text/plain` and/or `text/html`; other types are refused.
    #[serde(default)]
    pub content: Option<Vec<SendGridContent>>,
    #[serde(default)]
    pub attachments: Option<Vec<SendGridAttachment>>,
    /// A mailgate template (its name or `tpl_…` id), rendered strictly with each
    /// personalization's `dynamic_template_data`.
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Become mailgate tags.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// Become mailgate metadata, echoed in events and webhooks.
    #[serde(default)]
    pub custom_args: Option<BTreeMap<String, String>>,
    /// Unix seconds; at most 30 days ahead.
    #[serde(default)]
    pub send_at: Option<i64>,
    /// Refused: mailgate has no send batches to pause or cancel.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub batch_id: Option<serde_json::Value>,
    /// Refused: use mailgate's suppressions and one-click unsubscribe.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub asm: Option<serde_json::Value>,
    /// Refused: mailgate's upstream pool picks the relay.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub ip_pool_name: Option<serde_json::Value>,
    /// Refused (legacy templates): use `template_id` with `dynamic_template_data`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub sections: Option<serde_json::Value>,
    /// Accepted only with every setting off (`enable: false`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub mail_settings: Option<serde_json::Value>,
    /// Accepted only with every setting off: mailgate does not track opens or clicks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tracking_settings: Option<serde_json::Value>,
}

/// One message: its recipients and what it overrides.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Personalization {
    pub to: Vec<SendGridAddress>,
    #[serde(default)]
    pub cc: Option<Vec<SendGridAddress>>,
    #[serde(default)]
    pub bcc: Option<Vec<SendGridAddress>>,
    #[serde(default)]
    pub from: Option<SendGridAddress>,
    #[serde(default)]
    pub subject: Option<String>,
    /// Merged over the request's `headers`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    pub dynamic_template_data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Merged over the request's `custom_args`.
    #[serde(default)]
    pub custom_args: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub send_at: Option<i64>,
    /// Refused (legacy templates).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub substitutions: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendGridAddress {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendGridContent {
    #[serde(rename = "type")]
    pub content_type: String,
    pub value: String,
}

/// An attachment, its `content` base64. `disposition: inline` with a `content_id`
/// is referenced from the html as `cid:<content_id>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendGridAttachment {
    pub content: String,
    pub filename: String,
    /// Guessed from the file name when absent.
    #[serde(default, rename = "type")]
    pub content_type: Option<String>,
    /// `attachment` (default) or `inline`.
    #[serde(default)]
    pub disposition: Option<String>,
    /// `contentId` is read too: SendGrid's Node SDK sends attachments unconverted.
    #[serde(default, alias = "contentId")]
    pub content_id: Option<String>,
}

/// SendGrid's error body.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"errors": [{"message": "`bob` has no `@`", "field": "personalizations.0.to.0", "help": null}]}))]
pub struct SendGridErrors {
    pub errors: Vec<SendGridError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendGridError {
    pub message: String,
    /// The offending field, dotted (`personalizations.0.to.0`); null when the error is
    /// about the whole request.
    pub field: Option<String>,
    pub help: Option<String>,
}

/// A refusal in SendGrid's shape; the status picks the SDK's error class (the Python
/// SDK's `BadRequestsError` for 400, …).
#[derive(Debug, thiserror::Error)]
#[error("{status}")]
pub struct SendGridFailure {
    status: StatusCode,
    cause: Box<ApiError>,
}

impl From<ApiError> for SendGridFailure {
    fn from(cause: ApiError) -> Self {
        let status = match cause.kind() {
            // SendGrid answers every invalid request 400.
            Kind::Unprocessable => StatusCode::BAD_REQUEST,
            kind => kind.status(),
        };
        Self {
            status,
            cause: Box::new(cause),
        }
    }
}

impl ResponseError for SendGridFailure {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let errors = match self.cause.field_errors() {
            [] => vec![SendGridError {
                message: self.cause.detail().to_owned(),
                field: None,
                help: None,
            }],
            errors => errors
                .iter()
                .map(|e| SendGridError {
                    message: e.message.clone(),
                    field: Some(e.field.trim_start_matches('/').replace('/', ".")).filter(|f| !f.is_empty()),
                    help: None,
                })
                .collect(),
        };
        error_response(&self.cause, self.status, &SendGridErrors { errors })
    }
}

/// Personalizations whose message ids `X-Mailgate-Message-Ids` lists, at most.
const MAX_LISTED_IDS: usize = 100;

/// How far ahead `send_at` may be, as for mailgate's own.
const MAX_SCHEDULE_DAYS: i64 = 30;

fn unsupported(field: impl Into<String>, message: &str) -> FieldError {
    FieldError::coded(field, "unsupported_field", message)
}

/// The refusals within a settings object (`mail_settings`, `tracking_settings`) at
/// `at`: each `enable: true` names a feature mailgate would otherwise drop silently,
/// and an `enable` that is not a boolean, or a setting that is not an object, is not
/// read as off.
fn settings_refusals(at: &str, value: &serde_json::Value, errors: &mut Vec<FieldError>) {
    let serde_json::Value::Object(map) = value else {
        errors.push(FieldError::coded(at, "invalid_type", "a settings object"));
        return;
    };
    for (key, inner) in map {
        let pointer = format!("{at}/{}", crate::api::body::escape_token(key));
        match (key.as_str(), inner) {
            ("enable", serde_json::Value::Bool(false)) => {}
            ("enable", serde_json::Value::Bool(true)) => errors.push(unsupported(
                pointer,
                "mailgate does not have this setting (no open or click tracking, footers or sandbox mode per \
                 request); leave it out or set `enable: false`",
            )),
            ("enable", _) => errors.push(FieldError::coded(pointer, "invalid_type", "`enable` is true or false")),
            (_, serde_json::Value::Object(_)) => settings_refusals(&pointer, inner, errors),
            // A setting's own values (a footer's text, a tag): unused while it is off.
            _ => {}
        }
    }
}

/// The refusals of attachment `index`: a disposition other than `attachment` or
/// `inline`, and an inline one without a Content-ID or a Content-ID on a plain one
/// (either would be dropped).
fn attachment_refusals(index: usize, attachment: &SendGridAttachment, errors: &mut Vec<FieldError>) {
    let at = format!("/attachments/{index}");
    let inline = match attachment
        .disposition
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("attachment") => false,
        Some("inline") => true,
        Some(_) => {
            errors.push(FieldError::coded(
                format!("{at}/disposition"),
                "invalid_disposition",
                "`disposition` is `attachment` or `inline`",
            ));
            return;
        }
    };
    match (inline, attachment.content_id.is_some()) {
        (true, false) => errors.push(FieldError::coded(
            format!("{at}/content_id"),
            "missing_field",
            "an inline attachment needs the `content_id` its html refers to",
        )),
        (false, true) => errors.push(FieldError::coded(
            format!("{at}/disposition"),
            "invalid_disposition",
            "an attachment with a `content_id` is `disposition: inline`",
        )),
        _ => {}
    }
}

/// The request's refusals that no personalization changes: features mailgate does not
/// have, content types it does not send, fields it would otherwise drop, and a request
/// whose personalizations would multiply its content past `max_bytes` (each is a message
/// with its own copy).
fn refusals(mail: &SendGridMail, max_bytes: usize) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let absent = [
        (
            "/batch_id",
            mail.batch_id.is_some(),
            "mailgate has no send batches; cancel a message with POST /v1/messages/{id}/cancel",
        ),
        (
            "/asm",
            mail.asm.is_some(),
            "unsubscribe groups are not supported; mailgate has suppressions and one-click unsubscribe",
        ),
        (
            "/ip_pool_name",
            mail.ip_pool_name.is_some(),
            "IP pools are not supported; mailgate's upstream pool picks the relay",
        ),
        (
            "/sections",
            mail.sections.is_some(),
            "legacy templates are not supported; use template_id with dynamic_template_data",
        ),
    ];
    for (field, present, message) in absent {
        if present {
            errors.push(unsupported(field, message));
        }
    }
    for (at, settings) in [
        ("/mail_settings", &mail.mail_settings),
        ("/tracking_settings", &mail.tracking_settings),
    ] {
        if let Some(settings) = settings {
            settings_refusals(at, settings, &mut errors);
        }
    }
    if mail.reply_to.is_some() && mail.reply_to_list.is_some() {
        errors.push(FieldError::coded(
            "/reply_to",
            "conflicting_fields",
            "give `reply_to` or `reply_to_list`, not both",
        ));
    }
    let mut seen = Vec::new();
    for (index, content) in mail.content.iter().flatten().enumerate() {
        let essence = content
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "text/plain" && essence != "text/html" {
            errors.push(unsupported(
                format!("/content/{index}/type"),
                "mailgate sends `text/plain` and `text/html` content",
            ));
        } else if seen.contains(&essence) {
            errors.push(FieldError::coded(
                format!("/content/{index}/type"),
                "duplicate_content",
                format!("one `{essence}` content at most"),
            ));
        } else {
            seen.push(essence);
        }
    }
    for (index, attachment) in mail.attachments.iter().flatten().enumerate() {
        attachment_refusals(index, attachment, &mut errors);
    }
    let each: usize = mail.content.iter().flatten().map(|c| c.value.len()).sum::<usize>()
        + mail
            .attachments
            .iter()
            .flatten()
            .map(|a| a.content.len())
            .sum::<usize>();
    if mail.personalizations.len().saturating_mul(each) > max_bytes {
        errors.push(FieldError::coded(
            "/personalizations",
            "too_large",
            format!(
                "{} personalizations each carry the content and attachments ({each} bytes): more than \
                 http.max_body_bytes ({max_bytes}) in all; send fewer at once",
                mail.personalizations.len()
            ),
        ));
    }
    for (index, p) in mail.personalizations.iter().enumerate() {
        if p.substitutions.is_some() {
            errors.push(unsupported(
                format!("/personalizations/{index}/substitutions"),
                "legacy substitutions are not supported; use template_id with dynamic_template_data",
            ));
        }
        if p.dynamic_template_data.is_some() && mail.template_id.is_none() {
            errors.push(FieldError::coded(
                format!("/personalizations/{index}/dynamic_template_data"),
                "missing_template",
                "`dynamic_template_data` is rendered with `template_id`, which is missing",
            ));
        }
    }
    if mail.personalizations.is_empty() || mail.personalizations.len() > 1000 {
        errors.push(FieldError::coded(
            "/personalizations",
            "missing_recipients",
            "give 1 to 1000 personalizations",
        ));
    }
    errors
}

/// Reads Unix seconds at `field`, at most 30 days ahead.
fn send_at(seconds: i64, field: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    let at = DateTime::from_timestamp(seconds, 0)
        .filter(|_| seconds >= 0)
        .ok_or_else(|| FieldError::coded(field, "invalid_send_at", "`send_at` is a Unix time in seconds"))?;
    if at > now + chrono::Duration::days(MAX_SCHEDULE_DAYS) {
        return Err(FieldError::coded(
            field,
            "invalid_send_at",
            "`send_at` is at most 30 days ahead",
        ));
    }
    Ok(at)
}

fn addresses(list: Option<&[SendGridAddress]>) -> AddressList {
    AddressList::Many(
        list.unwrap_or_default()
            .iter()
            .map(|a| mailbox(&a.email, a.name.as_deref()))
            .collect(),
    )
}

/// Personalization `index` as mailgate's send request, and where its fields came from.
fn to_send_request(
    mail: &SendGridMail,
    index: usize,
    p: Personalization,
    now: DateTime<Utc>,
) -> Result<(SendMessageRequest, Origins), FieldError> {
    let at = format!("/personalizations/{index}");
    let mut origins = Origins::default();
    for list in ["to", "cc", "bcc"] {
        origins.map(format!("/{list}"), format!("{at}/{list}"));
    }
    origins.map(
        "/from",
        if p.from.is_some() {
            format!("{at}/from/email")
        } else {
            "/from/email".to_owned()
        },
    );
    if mail.reply_to_list.is_some() {
        origins.map("/reply_to", "/reply_to_list");
    } else {
        origins.map("/reply_to/0", "/reply_to/email");
    }
    origins.map(
        "/subject",
        if p.subject.is_some() {
            format!("{at}/subject")
        } else {
            "/subject".to_owned()
        },
    );
    origins.map("/text", "/content");
    origins.map("/html", "/content");
    for ours in ["/template", "/template/name", "/template/id"] {
        origins.map(ours, "/template_id");
    }
    origins.map("/template/data", format!("{at}/dynamic_template_data"));
    origins.map("/tags", "/categories");
    origins.map("/metadata", "/custom_args");
    origins.map(
        "/send_at",
        if p.send_at.is_some() {
            format!("{at}/send_at")
        } else {
            "/send_at".to_owned()
        },
    );
    for (i, a) in mail.attachments.iter().flatten().enumerate() {
        origins.map(
            format!("/attachments/{i}/content_type"),
            format!("/attachments/{i}/type"),
        );
        if a.content_id.is_some() {
            origins.map(
                format!("/attachments/{i}/content_id"),
                format!("/attachments/{i}/content_id"),
            );
        }
    }
    let escape = crate::api::body::escape_token;
    let mut headers = mail.headers.clone().unwrap_or_default();
    for (name, value) in p.headers.iter().flatten() {
        origins.map(
            format!("/headers/{}", escape(name)),
            format!("{at}/headers/{}", escape(name)),
        );
        headers.insert(name.clone(), value.clone());
    }
    let mut metadata = mail.custom_args.clone().unwrap_or_default();
    for (key, value) in p.custom_args.iter().flatten() {
        origins.map(
            format!("/metadata/{}", escape(key)),
            format!("{at}/custom_args/{}", escape(key)),
        );
        metadata.insert(key.clone(), value.clone());
    }
    let send_at = match p.send_at.or(mail.send_at) {
        Some(seconds) => Some(send_at(seconds, &origins.theirs("/send_at"), now)?),
        None => None,
    };
    let part = |wanted: &str| {
        mail.content
            .iter()
            .flatten()
            .find(|c| c.content_type.to_ascii_lowercase().starts_with(wanted))
            .map(|c| c.value.clone())
    };
    let template = mail.template_id.as_ref().map(|id| {
        let by_id = TemplateId::parse(id).is_ok();
        TemplateRequest {
            name: (!by_id).then(|| id.clone()),
            id: by_id.then(|| id.clone()),
            version: None,
            data: p.dynamic_template_data.clone().unwrap_or_default(),
        }
    });
    let reply_to = match (&mail.reply_to_list, &mail.reply_to) {
        (Some(list), _) => addresses(Some(list)),
        (None, Some(one)) => addresses(Some(std::slice::from_ref(one))),
        (None, None) => AddressList::default(),
    };
    let from = p.from.as_ref().unwrap_or(&mail.from);
    let request = SendMessageRequest {
        from: mailbox(&from.email, from.name.as_deref()),
        to: addresses(Some(&p.to)),
        cc: addresses(p.cc.as_deref()),
        bcc: addresses(p.bcc.as_deref()),
        reply_to,
        subject: p.subject.clone().or_else(|| mail.subject.clone()),
        template,
        text: part("text/plain"),
        html: part("text/html"),
        headers,
        attachments: mail
            .attachments
            .iter()
            .flatten()
            .map(|a| AttachmentRequest {
                filename: a.filename.clone(),
                content_type: a
                    .content_type
                    .clone()
                    .unwrap_or_else(|| media_type_for(&a.filename).to_owned()),
                content: a.content.clone(),
                content_id: a.content_id.clone().filter(|_| {
                    a.disposition
                        .as_deref()
                        .is_some_and(|d| d.eq_ignore_ascii_case("inline"))
                }),
            })
            .collect(),
        tags: mail.categories.clone().unwrap_or_default(),
        metadata,
        send_at,
        list_unsubscribe: None,
        // SendGrid sends what it is given: html alone stays html alone.
        auto_text: Some(false),
    };
    Ok((request, origins))
}

/// Send mail (SendGrid's `POST /v3/mail/send`).
///
/// Each personalization becomes one mailgate message — its own `to`, `cc`, `bcc`,
/// `subject`, `headers`, `custom_args` and `send_at` over the request's, and with
/// `template_id` (a mailgate template's name or id) its `dynamic_template_data`
/// rendered strictly. `categories` become tags, `custom_args` metadata. Every
/// personalization is checked and rendered before any is stored: the request is
/// accepted whole (202, empty body, `X-Message-Id` the first message's id and, for up
/// to 100 personalizations, `X-Mailgate-Message-Ids` every id in order) or refused
/// whole. Personalizations × (content + attachments) may not exceed
/// `http.max_body_bytes`: each is a message with its own copy. An `Idempotency-Key`
/// header (a mailgate addition) makes retries replay instead of sending again.
#[utoipa::path(
    tag = "compatibility",
    operation_id = "sendgrid_mail_send",
    request_body = SendGridMail,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "The same key and body within 24 h replay the first answer instead of sending again")),
    security(("bearer" = ["messages:send"])),
    responses(
        (status = 202, description = "Every personalization stored durably",
            headers(("X-Message-Id" = String, description = "The first message's id"),
                    ("X-Mailgate-Message-Ids" = String, description = "Every message's id, comma-separated, in personalization order (up to 100 personalizations)"))),
        (status = 400, description = "Invalid: `errors` names each field, dotted", body = SendGridErrors),
        (status = 409, description = "The Idempotency-Key was used with another body", body = SendGridErrors),
    )
)]
#[post("/v3/mail/send")]
pub async fn mail_send(
    req: HttpRequest,
    auth: Result<Authenticated<MessagesSend>, ApiError>,
    body: Result<JsonBody<SendGridMail>, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, SendGridFailure> {
    let auth = auth?;
    let JsonBody(mut mail, raw) = body?;
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|value| idempotency_key(value.to_str().unwrap_or("\u{0}"), &raw, "Idempotency-Key"))
        .transpose()?;
    let refused = refusals(&mail, state.settings.http.max_body_bytes);
    if !refused.is_empty() {
        return Err(ApiError::unprocessable(refused).into());
    }
    let tenant = &auth.principal.tenant;
    let max_recipients = state.settings.max_recipients(tenant.as_str());
    let now = Utc::now();
    let personalizations = std::mem::take(&mut mail.personalizations);
    let mut items = Vec::with_capacity(personalizations.len());
    let mut origins = Vec::with_capacity(personalizations.len());
    let mut refused = Vec::new();
    for (index, p) in personalizations.into_iter().enumerate() {
        let converted = to_send_request(&mail, index, p, now)
            .map_err(|e| ApiError::unprocessable(vec![e]))
            .and_then(|(request, from)| {
                to_new_message(request, max_recipients)
                    .map(|new| (new, from.clone()))
                    .map_err(|err| from.relabel(err, ""))
            });
        match converted {
            Ok((new, from)) => {
                items.push((new, key.as_ref().map(|key| item_key(key, index))));
                origins.push(from);
            }
            Err(err) => refused.push(err),
        }
    }
    if !refused.is_empty() {
        return Err(joined(refused).into());
    }
    let allowance = crate::api::limits::take(&state, &auth.principal, items.len() as u64)?;
    let accepted = state.sender.accept_all(tenant, items).await.map_err(|failures| {
        joined(
            failures
                .into_iter()
                .map(|(index, err)| origins[index].relabel(err.into(), "")),
        )
    })?;
    let ids: Vec<String> = accepted.iter().map(|a| a.message().id.to_string()).collect();
    let mut answer = HttpResponse::Accepted();
    crate::api::limits::annotate(&mut answer, &allowance);
    if let Some(first) = ids.first() {
        answer.insert_header(("X-Message-Id", first.as_str()));
    }
    // Every id fits a header up to this many (3.7 KB): more would overflow what clients
    // and proxies take (Node's 16 KB for all headers), after everything was stored.
    if ids.len() <= MAX_LISTED_IDS {
        answer.insert_header(("X-Mailgate-Message-Ids", ids.join(",")));
    }
    Ok(answer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(json: serde_json::Value) -> SendGridMail {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_personalization_overrides_the_request_and_errors_point_at_its_fields() {
        let mut m = mail(serde_json::json!({
            "personalizations": [
                {"to": [{"email": "a@example.test", "name": "A, Inc."}], "subject": "own",
                 "headers": {"X-P": "1"}, "custom_args": {"k": "p"}},
                {"to": [{"email": "b@example.test"}]}
            ],
            "from": {"email": "no-reply@acme.test"}, "subject": "default",
            "content": [{"type": "text/plain", "value": "t"}],
            "headers": {"X-R": "r"}, "custom_args": {"k": "r", "j": "r"}, "categories": ["c1"]
        }));
        let mut ps = std::mem::take(&mut m.personalizations).into_iter();
        let now = Utc::now();
        let (first, origins) = to_send_request(&m, 0, ps.next().unwrap(), now).unwrap();
        assert_eq!(first.subject.as_deref(), Some("own"));
        assert_eq!(first.headers.len(), 2);
        assert_eq!(first.metadata["k"], "p");
        assert_eq!(first.metadata["j"], "r");
        assert_eq!(first.tags, ["c1"]);
        assert_eq!(origins.theirs("/to/0"), "/personalizations/0/to/0");
        assert_eq!(origins.theirs("/subject"), "/personalizations/0/subject");
        let (second, origins) = to_send_request(&m, 1, ps.next().unwrap(), now).unwrap();
        assert_eq!(second.subject.as_deref(), Some("default"));
        assert_eq!(origins.theirs("/subject"), "/subject");
        assert_eq!(origins.theirs("/tags/0"), "/categories/0");
    }

    #[test]
    fn features_mailgate_lacks_are_refused_by_name_and_disabled_ones_pass() {
        let m = mail(serde_json::json!({
            "personalizations": [{"to": [{"email": "a@example.test"}], "substitutions": {"-n-": "x"}}],
            "from": {"email": "no-reply@acme.test"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "t"}, {"type": "text/x-amp-html", "value": "a"}],
            "ip_pool_name": "pool",
            "tracking_settings": {"open_tracking": {"enable": true}, "click_tracking": {"enable": false}},
            "mail_settings": {"sandbox_mode": {"enable": false}}
        }));
        let fields: Vec<String> = refusals(&m, 25 * 1024 * 1024).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "/ip_pool_name",
                "/tracking_settings/open_tracking/enable",
                "/content/1/type",
                "/personalizations/0/substitutions"
            ]
        );
    }

    #[test]
    fn fields_that_would_be_dropped_are_refused_by_name() {
        let m = mail(serde_json::json!({
            "personalizations": [{"to": [{"email": "a@example.test"}], "dynamic_template_data": {"n": 1}}],
            "from": {"email": "no-reply@acme.test"}, "subject": "s",
            "reply_to": {"email": "r@acme.test"}, "reply_to_list": [{"email": "r@acme.test"}],
            "content": [{"type": "text/plain", "value": "t"}, {"type": "text/plain", "value": "u"}],
            "attachments": [
                {"content": "AA==", "filename": "a.png", "content_id": "a"},
                {"content": "AA==", "filename": "b.png", "disposition": "inline"},
                {"content": "AA==", "filename": "c.png", "disposition": "sideways"}
            ],
            "tracking_settings": {"click_tracking": {"enable": "yes"}},
            "mail_settings": []
        }));
        let fields: Vec<String> = refusals(&m, 25 * 1024 * 1024).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "/mail_settings",
                "/tracking_settings/click_tracking/enable",
                "/reply_to",
                "/content/1/type",
                "/attachments/0/disposition",
                "/attachments/1/content_id",
                "/attachments/2/disposition",
                "/personalizations/0/dynamic_template_data"
            ]
        );
    }

    #[test]
    fn personalizations_that_would_multiply_a_body_past_the_limit_are_refused() {
        let to = serde_json::json!({"to": [{"email": "a@example.test"}]});
        let m = mail(serde_json::json!({
            "personalizations": vec![to; 10],
            "from": {"email": "no-reply@acme.test"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "x".repeat(1000)}]
        }));
        assert!(refusals(&m, 10_000).is_empty());
        let refused = refusals(&m, 9_999);
        assert_eq!(refused[0].field, "/personalizations");
        assert_eq!(refused[0].code, "too_large");
    }

    #[test]
    fn errors_are_sendgrids_with_dotted_fields_and_400_for_invalid_input() {
        let err = ApiError::unprocessable(vec![FieldError::coded(
            "/personalizations/0/to/0",
            "invalid_address",
            "no @",
        )]);
        let failure = SendGridFailure::from(err);
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);
        let response = failure.error_response();
        assert_eq!(response.headers().get("content-type").unwrap(), "application/json");
    }
}
