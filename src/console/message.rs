//! The message page: recipients and their last SMTP reply, the event timeline (one
//! row per attempt's outcome, with the relay's reply), headers, text, attachments,
//! the HTML part in a sandboxed frame, the exact `.eml`, and cancel.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use mail_parser::{MessageParser, MimeHeaders as _};
use maud::{html, Markup};

use super::failure::Failure;
use super::page::{self, Section};
use super::session::{ConsoleAction, ConsoleUser};
use crate::api::auth::{MessagesRead, MessagesSend, RequiredScope as _};
use crate::api::AppState;
use crate::auth::Principal;
use crate::domain::ids::MessageId;
use crate::domain::message::Message;
use crate::domain::status::MessageStatus;
use crate::store::StoredMime;

/// The email's own policy, inside a frame that is itself `sandbox`ed without
/// scripts: no script, no remote content (a remote image would tell the sender the
/// message was opened), inline styles allowed because email HTML depends on them.
const EMAIL_CSP: &str = "sandbox; default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; \
                         font-src data:; frame-ancestors 'self'";

/// The message and its MIME, when the tenant has that message; another tenant's id,
/// a malformed id and a missing one are the same 404.
async fn load(state: &AppState, user: &Principal, id: &str) -> Result<(Message, StoredMime), Failure> {
    page::require(user, MessagesRead::SCOPE)?;
    let id = MessageId::parse(id).map_err(|_| Failure::not_found("the message"))?;
    let found = state
        .store_call(&user.tenant, move |store, tenant| {
            let Some(message) = store.message(tenant, &id)? else {
                return Ok(None);
            };
            let mime = store.mime(tenant, &id)?.unwrap_or(StoredMime::Expired);
            Ok(Some((message, mime)))
        })
        .await?;
    found.ok_or_else(|| Failure::not_found("the message"))
}

fn cancellable(status: MessageStatus) -> bool {
    matches!(
        status,
        MessageStatus::Scheduled | MessageStatus::Queued | MessageStatus::Deferred
    )
}

fn content(mime: &[u8], id: &MessageId) -> Markup {
    let header_end = mime.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(mime.len());
    let headers = String::from_utf8_lossy(&mime[..header_end]);
    let parsed = MessageParser::default().parse(mime);
    let text = parsed.as_ref().and_then(|p| p.body_text(0).map(|t| t.into_owned()));
    let has_html = parsed.as_ref().is_some_and(|p| p.html_body_count() > 0);
    let attachments: Vec<(String, String, usize)> = parsed
        .as_ref()
        .map(|p| {
            p.attachments()
                .map(|a| {
                    let kind = a
                        .content_type()
                        .map(|c| format!("{}/{}", c.c_type, c.c_subtype.as_deref().unwrap_or("")))
                        .unwrap_or_else(|| "application/octet-stream".into());
                    (
                        a.attachment_name().unwrap_or("(unnamed)").to_owned(),
                        kind,
                        a.contents().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if has_html {
            h2 { "HTML" }
            iframe.email sandbox="" referrerpolicy="no-referrer" title="The message's HTML part"
                src={ "/console/messages/" (id) "/html" } {}
        }
        @if let Some(text) = text {
            h2 { "Text" }
            pre.text { (text) }
        }
        @if !attachments.is_empty() {
            h2 { "Attachments" }
            table { thead { tr { th { "Name" } th { "Type" } th.num { "Bytes" } } }
                tbody { @for (name, kind, size) in &attachments { tr { td { (name) } td { code { (kind) } } td.num { (size) } } } } }
        }
        h2 { "Headers" }
        pre.headers { (headers) }
    }
}

pub async fn show(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    let (m, mime) = load(&state, &user, &path).await?;
    let body = html! {
        h1 { (m.subject) }
        div.panel {
            p { span class={ "status " (m.status.as_str()) } { (m.status.as_str()) } " · " code { (m.id) }
                " · created " (page::when(&m.created_at))
                @if let Some(at) = &m.send_at { " · scheduled for " (page::when(at)) }
                @if let Some(at) = &m.next_attempt_at { " · next attempt " (page::when(at)) }
                " · " (m.attempts) " attempt(s)" }
            p { "From " code { (m.from) } }
            @if let Some(t) = &m.template { p { "Template " a href={ "/console/templates/" (t.name) } { (t.name) } " v" (t.version) } }
            @if !m.tags.is_empty() { p { "Tags: " (m.tags.join(", ")) } }
            div.inline {
                a href={ "/console/messages/" (m.id) "/eml" } download={ (m.id) ".eml" } { "Download .eml" }
                @if cancellable(m.status) && page::can(&user, MessagesSend::SCOPE) {
                    form.inline method="post" action={ "/console/messages/" (m.id) "/cancel" } {
                        button.danger type="submit" { "Cancel delivery" }
                    }
                }
            }
        }
        h2 { "Recipients" }
        table.recipients {
            thead { tr { th { "Recipient" } th { "Status" } th { "Last reply" } th { "Relay" } th { "Updated" } } }
            tbody { @for r in &m.recipients {
                tr {
                    td { (r.email) }
                    td { span class={ "status " (r.status.as_str()) } { (r.status.as_str()) } }
                    td { @if let Some(s) = &r.smtp { code { (s.code.map(|c| c.to_string()).unwrap_or_default()) " " (s.enhanced.as_deref().unwrap_or("")) } " " (s.diagnostic) } }
                    td { (r.upstream.as_deref().unwrap_or("")) }
                    td { (page::when(&r.updated_at)) }
                }
            } }
        }
        h2 { "Events" }
        table.events {
            thead { tr { th { "#" } th { "When" } th { "Event" } th { "Recipient" } th { "SMTP reply" } th { "Relay" } } }
            tbody { @for e in &m.events {
                tr {
                    td.num { (e.seq) }
                    td { (page::when(&e.created_at)) }
                    td { code { (e.event_type.as_str()) } }
                    td { (e.recipient) }
                    td { @if let Some(s) = &e.smtp { code { (s.code.map(|c| c.to_string()).unwrap_or_default()) " " (s.enhanced.as_deref().unwrap_or("")) } " " (s.diagnostic) } }
                    td { (e.upstream.as_deref().unwrap_or("")) }
                }
            } }
        }
        @match &mime {
            StoredMime::Bytes(bytes) => (content(bytes, &m.id)),
            StoredMime::Expired => p.muted { "The content is past storage.mime_retention and no longer kept; status and events are." },
        }
    };
    Ok(page::render(&user, Section::Activity, &m.subject, body))
}

/// The HTML part alone, for the sandboxed frame of the message page.
pub async fn html(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    let (_, mime) = load(&state, &user, &path).await?;
    let StoredMime::Bytes(bytes) = mime else {
        return Err(Failure::not_found("the message's content"));
    };
    let html = MessageParser::default()
        .parse(&bytes)
        .and_then(|p| p.body_html(0).map(|h| h.into_owned()))
        .ok_or_else(|| Failure::not_found("an HTML part"))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, EMAIL_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(html))
}

/// The exact bytes that are (or were) sent.
pub async fn eml(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    let (m, mime) = load(&state, &user, &path).await?;
    let StoredMime::Bytes(bytes) = mime else {
        return Err(Failure::not_found("the message's content"));
    };
    Ok(HttpResponse::Ok()
        .content_type("message/rfc822")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.eml\"", m.id),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(bytes))
}

pub async fn cancel(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, MessagesSend::SCOPE)?;
    let message = crate::api::messages::cancel(&state, &user.tenant, &path).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/console/messages/{}", message.id)))
        .finish())
}
