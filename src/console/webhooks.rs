//! Webhooks: each endpoint, every delivery attempt with its status and latency,
//! replay of one event or a time range, and secret rotation. The same service
//! (`Webhooks`) and error mapping as `/v1/webhooks`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::failure::Failure;
use super::page::{self, Section};
use super::session::{ConsoleAction, ConsoleUser};
use crate::api::auth::{RequiredScope as _, WebhooksManage};
use crate::api::problem::{ApiError, FieldError};
use crate::api::webhooks::{id, problem};
use crate::api::AppState;
use crate::auth::Principal;
use crate::domain::webhook::Webhook;
use crate::webhooks::Replay;

/// Delivery attempts shown on an endpoint's page, newest first.
const ATTEMPTS: usize = 100;

fn events_of(hook: &Webhook) -> String {
    hook.event_names().join(", ")
}

/// `GET /console/webhooks`.
pub async fn list(ConsoleUser(user): ConsoleUser, state: web::Data<AppState>) -> Result<HttpResponse, Failure> {
    page::require(&user, WebhooksManage::SCOPE)?;
    let hooks = state.webhooks.list(&user.tenant).await.map_err(problem)?;
    let body = html! {
        h1 { "Webhooks" }
        p.hint { "Endpoints are created with " code { "POST /v1/webhooks" } " (the secret is shown once, there). Open one to see its deliveries, replay events or rotate its secret." }
        table.webhooks {
            thead { tr { th { "Endpoint" } th { "Events" } th { "State" } th { "Created" } } }
            tbody {
                @for h in &hooks {
                    tr {
                        td { a href={ "/console/webhooks/" (h.id) } { (h.url.as_str()) } @if let Some(d) = &h.description { div.muted { (d) } } }
                        td { code { (events_of(h)) } }
                        td { @if h.enabled { span.status.sent { "enabled" } } @else { span.status.failed { "disabled" } } }
                        td { (page::when(&h.created_at)) }
                    }
                }
                @if hooks.is_empty() { tr { td colspan="4" .muted { "No webhook endpoints yet." } } }
            }
        }
    };
    Ok(page::render(&user, Section::Webhooks, "Webhooks", body))
}

#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    /// How many events the last replay queued (shown once after the redirect).
    replayed: Option<usize>,
}

async fn endpoint_page(
    state: &AppState,
    user: &Principal,
    raw_id: &str,
    notice: Option<Markup>,
) -> Result<HttpResponse, Failure> {
    page::require(user, WebhooksManage::SCOPE)?;
    let hook_id = id(raw_id)?;
    let hook = state
        .webhooks
        .get(&user.tenant, hook_id.clone())
        .await
        .map_err(problem)?;
    let attempts = state
        .webhooks
        .deliveries(&user.tenant, hook_id, ATTEMPTS)
        .await
        .map_err(problem)?;
    let base = format!("/console/webhooks/{}", hook.id);
    let body = html! {
        h1 { "Webhook " code { (hook.id) } }
        @if let Some(notice) = notice { (notice) }
        div.panel {
            p { "Endpoint " code { (hook.url.as_str()) } }
            p { "Events " code { (events_of(&hook)) } }
            @if let Some(reason) = &hook.disabled_reason { p.error { "Disabled: " (reason) } }
            p { (hook.secrets.len()) " signing secret(s) in use; created " (page::when(&hook.created_at)) }
            form.inline method="post" action={ (base) "/rotate" } {
                button.secondary type="submit" { "Rotate secret" }
                span.hint { "The old secret keeps signing for 24 hours beside the new one." }
            }
        }
        h2 { "Replay a time range" }
        form.filters method="post" action={ (base) "/replay" } {
            div { label for="from" { "From (UTC)" } input #from type="datetime-local" name="from" required; }
            div { label for="to" { "To (UTC)" } input #to type="datetime-local" name="to" required; }
            button type="submit" { "Replay range" }
        }
        h2 { "Delivery attempts" }
        table.deliveries {
            thead { tr { th { "When" } th { "Event" } th { "Type" } th.num { "Attempt" } th.num { "HTTP" } th.num { "Latency" } th { "Outcome" } th {} } }
            tbody {
                @for a in &attempts {
                    tr {
                        td { (page::when(&a.attempted_at)) }
                        td { code { (a.event_id) } }
                        td { code { (a.event_type.as_str()) } }
                        td.num { (a.attempt) }
                        td.num { (a.status_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                        td.num { (a.latency_ms) " ms" }
                        td { span class={ "status " (a.outcome) } { (a.outcome) } @if let Some(e) = &a.error { div.muted { (e) } } }
                        td { form.inline method="post" action={ (base) "/replay" } {
                            input type="hidden" name="event_id" value=(a.event_id);
                            button.secondary type="submit" { "Replay" }
                        } }
                    }
                }
                @if attempts.is_empty() { tr { td colspan="8" .muted { "No delivery attempts yet." } } }
            }
        }
    };
    Ok(page::render(user, Section::Webhooks, "Webhook", body))
}

/// `GET /console/webhooks/{id}`.
pub async fn show(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    query: web::Query<ShowQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    let notice = query
        .replayed
        .map(|n| html! { p.notice role="status" { "Replay queued " (n) " event(s); new attempts appear below as they are made." } });
    endpoint_page(&state, &user, &path, notice).await
}

#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// A `datetime-local` value, read as UTC.
fn utc(raw: &str, field: &str) -> Result<DateTime<Utc>, ApiError> {
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(raw, format).ok())
        .map(|at| at.and_utc())
        .ok_or_else(|| ApiError::unprocessable(vec![FieldError::coded(field, "invalid_time", "a date and time")]))
}

/// `POST /console/webhooks/{id}/replay`: one event (`event_id`) or a range.
pub async fn replay(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    form: web::Form<ReplayForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, WebhooksManage::SCOPE)?;
    let selection = match form.event_id.trim() {
        "" => Replay::Range {
            from: utc(form.from.trim(), "/from")?,
            to: utc(form.to.trim(), "/to")?,
        },
        event => Replay::Event(event.to_owned()),
    };
    let hook_id = id(&path)?;
    let queued = state
        .webhooks
        .replay(&user.tenant, hook_id.clone(), selection)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/console/webhooks/{hook_id}?replayed={queued}"),
        ))
        .finish())
}

/// `POST /console/webhooks/{id}/rotate`: the new secret is on this answer only.
pub async fn rotate(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, WebhooksManage::SCOPE)?;
    let (hook, secret) = state
        .webhooks
        .rotate_secret(&user.tenant, id(&path)?)
        .await
        .map_err(problem)?;
    let notice = html! {
        div.panel role="status" {
            p { "New signing secret — copy it now, it is not shown again:" }
            p { code.secret { (secret) } }
        }
    };
    endpoint_page(&state, &user, hook.id.as_str(), Some(notice)).await
}
