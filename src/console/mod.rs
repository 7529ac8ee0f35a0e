//! The web console under `/console`: server-rendered HTML (maud) over the same
//! services, store calls and scopes as the API, for a person who wants to see why a
//! message did not arrive without reading JSON.
//!
//! Security model, in one place: the session is a token in an HttpOnly,
//! SameSite=Strict cookie scoped to `/console` ([`session`]); every state-changing
//! request must come from this origin ([`session::same_origin`]); every page carries a
//! strict Content-Security-Policy with no inline script ([`page`]); email HTML is only
//! ever shown in a sandboxed frame served from its own URL with its own CSP
//! ([`message`]).

mod activity;
mod assets;
mod chart;
mod diff;
mod domains;
mod failure;
mod message;
mod overview;
mod page;
mod session;
mod suppressions;
mod templates;
mod webhooks;

use actix_web::web;

pub use failure::Failure;
pub use session::SESSION_COOKIE;

/// Registers every console route (all under `/console`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .route("", web::get().to(overview::show))
            .route("/", web::get().to(overview::show))
            .route("/assets/{name}", web::get().to(assets::serve))
            .route("/login", web::get().to(session::login_form))
            .route("/login", web::post().to(session::login))
            .route("/logout", web::post().to(session::logout))
            .route("/messages", web::get().to(activity::list))
            .route("/messages/{id}", web::get().to(message::show))
            .route("/messages/{id}/html", web::get().to(message::html))
            .route("/messages/{id}/eml", web::get().to(message::eml))
            .route("/messages/{id}/cancel", web::post().to(message::cancel))
            .route("/templates", web::get().to(templates::list))
            .route("/templates/new", web::get().to(templates::new_form))
            .route("/templates", web::post().to(templates::create))
            .route("/templates/preview", web::post().to(templates::preview))
            .route("/templates/{name}", web::get().to(templates::edit))
            .route("/templates/{name}", web::post().to(templates::save))
            .route("/templates/{name}/diff", web::get().to(templates::diff))
            .route("/templates/{name}/test", web::post().to(templates::send_test))
            .route("/suppressions", web::get().to(suppressions::list))
            .route("/suppressions", web::post().to(suppressions::add))
            .route("/suppressions/remove", web::post().to(suppressions::remove))
            .route("/domains", web::get().to(domains::list))
            .route("/domains/{id}/verify", web::post().to(domains::verify))
            .route("/webhooks", web::get().to(webhooks::list))
            .route("/webhooks/{id}", web::get().to(webhooks::show))
            .route("/webhooks/{id}/replay", web::post().to(webhooks::replay))
            .route("/webhooks/{id}/rotate", web::post().to(webhooks::rotate))
            .default_service(web::to(failure::not_found)),
    );
}
