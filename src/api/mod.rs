//! The HTTP adapter: extractors, handlers, problem+json and the OpenAPI document. No
//! storage, templating or SMTP types appear here; handlers call one service function.

pub mod auth;
pub mod body;
pub mod bounces;
pub mod compat;
pub mod domains;
pub mod events;
pub mod fallback;
pub mod health;
pub mod limits;
pub mod messages;
pub mod pagination;
pub mod problem;
pub mod query;
pub mod request_span;
mod shared_responses;
pub mod stats;
pub mod suppressions;
pub mod templates;
pub mod tokens;
pub mod unsubscribe;
pub mod upstreams;
pub mod webhooks;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::AppExt as _;

use crate::auth::TokenKeys;
use crate::bounces::ingest::Bounces;
use crate::config::Settings;
use crate::sending::Sender;
use crate::store::Store;
use crate::templates::Templates;
use crate::webhooks::Webhooks;
use fallback::KnownPaths;
use problem::ApiError;

impl AppState {
    /// Runs a store call for `tenant` on the blocking pool (store calls may wait on
    /// disk); a storage failure is a 500 that is logged, never detailed to the caller.
    pub async fn store_call<T: Send + 'static>(
        &self,
        tenant: &crate::domain::auth::TenantId,
        call: impl FnOnce(&dyn Store, &crate::domain::auth::TenantId) -> Result<T, crate::store::StoreError>
            + Send
            + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        let tenant = tenant.clone();
        web::block(move || call(store.as_ref(), &tenant))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }
}

/// Everything handlers share.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenKeys>,
    pub upstreams: Arc<crate::delivery::Upstreams>,
    pub queue: Arc<crate::backpressure::QueueGauge>,
    pub sender: Sender,
    pub templates: Templates,
    pub webhooks: Webhooks,
    pub domains: crate::domains::Domains,
    pub unsubscribe: Arc<crate::unsubscribe::UnsubscribeLinks>,
    pub bounces: Bounces,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub revocations: Arc<crate::auth::Revocations>,
    pub limiter: Arc<crate::limits::Limiter>,
    pub settings: Arc<Settings>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with claims `sub`, `tenant`, `scope` (space-separated scopes) and `exp`. \
                         Mint one with `mailgate token issue`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Declares what mailgate POSTs to webhook endpoints (OpenAPI 3.1 `webhooks`), one
/// entry per event type, so generated clients get typed events.
struct EventWebhooks;

impl Modify for EventWebhooks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::content::ContentBuilder;
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
        use utoipa::openapi::request_body::RequestBodyBuilder;
        use utoipa::openapi::response::ResponseBuilder;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{PathItem, PathsBuilder, Ref, Required};

        let header = |name: &str, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build()
        };
        let mut paths = PathsBuilder::new();
        for event_type in crate::domain::status::EventType::ALL {
            let name = event_type.as_str();
            let operation = OperationBuilder::new()
                .operation_id(Some(format!("on_{}", name.replace('.', "_"))))
                .summary(Some(format!("`{name}`, pushed to your endpoint")))
                .description(Some(
                    "Signed per Standard Webhooks: verify `webhook-signature` (`v1,` + base64 \
                     HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` keyed with the \
                     base64 part of your `whsec_` secret). `webhook-id` is the event id, stable \
                     across retries. The body is exactly an item of `GET /v1/events`.",
                ))
                .tag("webhooks")
                .parameter(header("webhook-id", "The event id (`evt_…`), the same on every retry"))
                .parameter(header("webhook-timestamp", "Unix seconds when this attempt was signed"))
                .parameter(header("webhook-signature", "Space-separated `v1,<base64>` signatures"))
                .request_body(Some(
                    RequestBodyBuilder::new()
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("PublishedEvent")))
                                .build(),
                        )
                        .required(Some(Required::True))
                        .build(),
                ))
                .response(
                    "200",
                    ResponseBuilder::new().description("Any 2xx acknowledges the event"),
                )
                .response("410", ResponseBuilder::new().description("Disables the endpoint"));
            paths = paths.path(name, PathItem::new(HttpMethod::Post, operation));
        }
        openapi.webhooks = Some(paths.build());
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailgate",
        description = "Transactional email gateway: send through one REST call; mailgate renders, \
                       stores durably, delivers through authenticated SMTP upstreams and records \
                       every outcome. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth, &EventWebhooks),
    tags(
        (name = "messages", description = "Send messages and follow their delivery"),
        (name = "templates", description = "Versioned handlebars templates, strict rendering and previews"),
        (name = "events", description = "The ordered event stream that webhooks also push"),
        (name = "stats", description = "Delivery and bounce reports, counted as it happens"),
        (name = "suppressions", description = "Addresses that are never sent to"),
        (name = "webhooks", description = "Signed, durable, replayable event delivery to your endpoints"),
        (name = "domains", description = "Sender domains: DNS records, checks, DKIM signing and key rotation"),
        (name = "tokens", description = "Token administration"),
        (name = "bounces", description = "Reports that arrive after delivery: DSNs, complaints, generic JSON"),
        (name = "operations", description = "Health and readiness"),
        (name = "compatibility", description = "Drop-in routes for the Resend and SendGrid SDKs: change the base \
                                                URL and use a mailgate token as the API key. They speak the \
                                                provider's request, answer and error shapes (`application/json`, \
                                                not problem+json) over mailgate's own send path."),
    )
)]
struct ApiDoc;

/// Registers every documented route; the OpenAPI paths are collected from exactly
/// these registrations, so the document cannot drift from the routes.
fn routes(cfg: &mut ServiceConfig) {
    cfg.service(messages::send_message)
        .service(messages::get_message)
        .service(messages::get_message_mime)
        .service(messages::list_messages)
        .service(messages::send_batch)
        .service(messages::cancel_message)
        .service(templates::create_template)
        .service(templates::list_templates)
        .service(templates::get_template)
        .service(templates::update_template)
        .service(templates::delete_template)
        .service(templates::list_template_versions)
        .service(templates::get_template_version)
        .service(templates::render_template)
        .service(events::list_events)
        .service(stats::get_stats)
        .service(suppressions::list_suppressions)
        .service(suppressions::get_suppression)
        .service(suppressions::put_suppression)
        .service(suppressions::delete_suppression)
        .service(webhooks::create_webhook)
        .service(webhooks::list_webhooks)
        .service(webhooks::get_webhook)
        .service(webhooks::update_webhook)
        .service(webhooks::delete_webhook)
        .service(webhooks::rotate_webhook_secret)
        .service(webhooks::list_webhook_deliveries)
        .service(webhooks::replay_webhook)
        .service(domains::create_domain)
        .service(domains::list_domains)
        .service(domains::get_domain)
        .service(domains::delete_domain)
        .service(domains::verify_domain)
        .service(domains::rotate_domain_dkim)
        .service(bounces::ingest_dsn)
        .service(bounces::ingest_event)
        .service(bounces::ingest_mailgun)
        .service(bounces::ingest_postmark)
        .service(bounces::ingest_sendgrid)
        .service(bounces::ingest_ses)
        .service(health::healthz)
        .service(tokens::revoke_token)
        .service(upstreams::list_upstreams)
        .service(health::readyz)
        .service(health::metrics)
        .service(compat::resend::send_email)
        .service(compat::resend::send_batch)
        .service(compat::resend::get_email)
        .service(compat::resend::cancel_email)
        .service(compat::sendgrid::mail_send);
}

/// The OpenAPI document, as served at `/openapi.json` and printed by `mailgate openapi`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts()
        .1;
    shared_responses::add(&mut document);
    compat::document_shared_responses(&mut document);
    messages::document_batch_message(&mut document);
    document
}

/// Configures an App with every route, `/openapi.json`, `/docs` and problem+json 404/405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let document = openapi_document();
    let known = Arc::new(KnownPaths::from_document(&document));
    // `/docs/`: the interactive reference, its assets compiled into the binary (no
    // CDN), reading the same document that `/openapi.json` serves.
    cfg.service(utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document));
    cfg.service(web::resource("/docs").route(web::get().to(|| async {
        HttpResponse::PermanentRedirect()
            .insert_header((actix_web::http::header::LOCATION, "/docs/"))
            .finish()
    })));
    routes(&mut ServiceConfig::new(cfg));
    unsubscribe::configure(cfg);
    cfg.default_service(web::to(move |req: HttpRequest| {
        let known = Arc::clone(&known);
        async move { Ok::<_, actix_web::Error>(compat::unrouted(&req, known.refusal(&req))) }
    }));
}

#[cfg(test)]
mod tests {
    /// Generated clients name their methods after operation ids: two operations with
    /// one id (a compatibility route named like a native one) break them.
    #[test]
    fn every_operation_id_is_unique() {
        let document = serde_json::to_value(super::openapi_document()).unwrap();
        let mut ids: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate operation ids among {ids:?}");
    }
}
