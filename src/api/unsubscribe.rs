//! `/u/{token}`: the one-click unsubscribe link of a delivered message (RFC 8058).
//! `POST` is what a mailbox provider's unsubscribe button sends: no authentication (the
//! token is the proof), no redirect, and the recipient is suppressed (reason
//! `unsubscribe`, a `message.unsubscribed` event, its webhook and its count) before
//! the answer. `GET` — a person clicking the link — only shows a page with a button.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use chrono::Utc;
use maud::{html, Markup, DOCTYPE};

use super::AppState;
use crate::domain::ids::EventId;
use crate::domain::message::ExternalReport;
use crate::domain::status::EventType;
use crate::store::ReportTarget;
use crate::unsubscribe::Target;

/// How long a POST waits for a worker that holds the message to let it go.
const BUSY_RETRIES: usize = 50;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// Registers `/u/{token}` (outside `/v1`: it is for mail clients, not API clients).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/u/{token}")
            .route(web::get().to(confirm))
            .route(web::post().to(unsubscribe))
            .default_service(web::to(|| async { HttpResponse::MethodNotAllowed().finish() })),
    );
}

fn page(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1"; title { (title) } }
            body { main { (body) } }
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(markup.into_string())
}

fn unknown() -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        "Unknown link",
        html! { h1 { "This unsubscribe link is not valid" } p { "It may have been copied incompletely." } },
    )
}

/// `GET /u/{token}`: a confirmation page; changes nothing (link scanners fetch links).
async fn confirm(token: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    if state.unsubscribe.check(&token).is_none() {
        return unknown();
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        html! {
            h1 { "Unsubscribe?" }
            p { "You will no longer receive these emails." }
            form method="post" action={ "/u/" (token.as_str()) } {
                input type="hidden" name="List-Unsubscribe" value="One-Click";
                button type="submit" { "Unsubscribe" }
            }
        },
    )
}

/// What a POST found.
enum Outcome {
    Unsubscribed,
    AlreadySuppressed,
    Gone,
    Busy,
}

fn record(store: &dyn crate::store::Store, target: &Target) -> Result<Outcome, crate::store::StoreError> {
    let Some(message) = store.message(&target.tenant, &target.message)? else {
        return Ok(Outcome::Gone);
    };
    let Some(recipient) = message.recipients.get(target.index) else {
        return Ok(Outcome::Gone);
    };
    if store
        .suppression(&target.tenant, &recipient.email.to_ascii_lowercase())?
        .is_some()
    {
        return Ok(Outcome::AlreadySuppressed);
    }
    let report = ExternalReport {
        event_type: EventType::Unsubscribed,
        smtp: None,
        bounce: None,
    };
    let applied = store.apply_report(&target.tenant, &target.message, &mut |m| {
        m.record_report(target.index, report.clone(), EventId::generate(), Utc::now());
    })?;
    Ok(match applied {
        ReportTarget::Applied => Outcome::Unsubscribed,
        ReportTarget::NotFound => Outcome::Gone,
        ReportTarget::Busy => Outcome::Busy,
    })
}

/// `POST /u/{token}`: suppresses the recipient, durably, then answers.
async fn unsubscribe(token: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let Some(target) = state.unsubscribe.check(&token) else {
        return unknown();
    };
    for _ in 0..BUSY_RETRIES {
        let attempt = target.clone();
        let outcome = state
            .store_call(&target.tenant, move |store, _| record(store, &attempt))
            .await;
        match outcome {
            Ok(Outcome::Unsubscribed | Outcome::AlreadySuppressed) => {
                tracing::info!(tenant = %target.tenant, message_id = %target.message, recipient = target.index, "one-click unsubscribe");
                return page(
                    StatusCode::OK,
                    "Unsubscribed",
                    html! { h1 { "You are unsubscribed" } p { "You will no longer receive these emails." } },
                );
            }
            Ok(Outcome::Gone) => return unknown(),
            Ok(Outcome::Busy) => tokio::time::sleep(BUSY_PAUSE).await,
            Err(err) => {
                tracing::error!(error = %crate::telemetry::ErrorChain(&err), "an unsubscribe could not be recorded");
                break;
            }
        }
    }
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        html! { h1 { "Please try again in a moment" } },
    )
}
