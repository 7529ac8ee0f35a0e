//! `/v1/webhooks`: endpoints that receive the tenant's events, signed per the
//! Standard Webhooks spec, retried from a durable outbox.

use actix_web::http::header;
use actix_web::{delete, get, patch, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authenticated, WebhooksManage};
use super::body::JsonBody;
use super::problem::{ApiError, FieldError, Kind, Problem, PROBLEM_JSON};
use super::AppState;
use crate::domain::ids::WebhookId;
use crate::domain::status::EventType;
use crate::domain::webhook::{DeliveryAttempt, Webhook, WebhookUrl};
use crate::domain::ValidationError;
use crate::webhooks::{Replay, WebhookPatch, WebhooksError};

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/mailgate", "events": ["message.bounced", "message.complained"],
                          "description": "CRM bounce sync"}))]
pub struct CreateWebhookRequest {
    /// `https://` (or `http://`) URL. Targets on loopback, private or link-local
    /// addresses are refused unless the operator set `webhooks.allow_private_targets`.
    pub url: String,
    /// Event types to receive, or `["*"]` for all.
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A change; fields left out stay as they are. `enabled: true` re-enables an
/// endpoint that was disabled (e.g. after it answered 410).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// `["*"]` when every type is delivered.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook with its signing secret: returned only on create and rotate.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify `webhook-signature` with it. Shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub data: Vec<DeliveryAttempt>,
    pub next_cursor: Option<String>,
}

/// Re-send one event (`event_id`) or every event created in `[from, to]`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"from": "2026-11-28T00:00:00Z", "to": "2026-11-28T12:00:00Z"}))]
pub struct ReplayRequest {
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub from: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResponse {
    /// How many deliveries were queued.
    pub queued: usize,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id.to_string(),
            url: w.url.as_str().to_owned(),
            events: w.event_names(),
            description: w.description,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

fn field_error(field: &str, err: &ValidationError) -> ApiError {
    ApiError::unprocessable(vec![FieldError::new(field, err)])
}

fn url(raw: &str, field: &str) -> Result<WebhookUrl, ApiError> {
    WebhookUrl::parse(raw).map_err(|e| field_error(field, &e))
}

/// `["*"]` → every type (empty list); otherwise each must be a known type.
fn event_types(raw: &[String], field: &str) -> Result<Vec<EventType>, ApiError> {
    if raw.is_empty() {
        return Err(field_error(
            field,
            &ValidationError::new("invalid_event_type", "list event types, or `*` for all"),
        ));
    }
    if raw.iter().any(|t| t == "*") {
        return Ok(Vec::new());
    }
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            EventType::parse(t).map_err(|err| {
                let message = format!("{}, or `*` for all", err.message);
                field_error(&format!("{field}/{i}"), &ValidationError::new(err.code, message))
            })
        })
        .collect()
}

pub(crate) fn id(raw: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(raw).map_err(|_| problem(WebhooksError::NotFound))
}

pub(crate) fn problem(err: WebhooksError) -> ApiError {
    match err {
        WebhooksError::NotFound => ApiError::new(Kind::NotFound, "webhook_not_found", err.to_string()),
        WebhooksError::EventNotFound => {
            ApiError::unprocessable(vec![FieldError::coded("/event_id", "event_not_found", err.to_string())])
        }
        WebhooksError::TargetNotAllowed(_) => ApiError::unprocessable(vec![FieldError::coded(
            "/url",
            "webhook_target_not_allowed",
            err.to_string(),
        )]),
        other @ (WebhooksError::Store(_) | WebhooksError::Join(_)) => ApiError::internal(other),
    }
}

/// Create a webhook endpoint.
///
/// Deliveries follow the Standard Webhooks spec: headers `webhook-id` (the event id,
/// the same on every retry), `webhook-timestamp` and `webhook-signature`
/// (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the base64 part
/// of the secret; several space-separated signatures during a secret rotation). Any
/// 2xx is success; 410 disables the endpoint; anything else, or no answer within
/// 15 s, is retried with exponential backoff and jitter for 3 days. Redirects are
/// not followed.
#[utoipa::path(
    tag = "webhooks",
    request_body = CreateWebhookRequest,
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = WebhookWithSecret),
        (status = 422, description = "Invalid URL or event type, or a private target (`webhook_target_not_allowed`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/webhooks")]
pub async fn create_webhook(
    auth: Authenticated<WebhooksManage>,
    body: JsonBody<CreateWebhookRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    let url = url(&req.url, "/url")?;
    let events = event_types(&req.events, "/events")?;
    let (webhook, secret) = state
        .webhooks
        .create(&auth.principal.tenant, url, events, req.description)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/webhooks/{}", webhook.id)))
        .json(WebhookWithSecret {
            webhook: webhook.into(),
            secret,
        }))
}

/// List webhook endpoints.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 200, description = "Every endpoint", body = WebhookList),
    )
)]
#[get("/v1/webhooks")]
pub async fn list_webhooks(
    auth: Authenticated<WebhooksManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<WebhookList>, ApiError> {
    let hooks = state.webhooks.list(&auth.principal.tenant).await.map_err(problem)?;
    Ok(web::Json(WebhookList {
        data: hooks.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Get a webhook endpoint (without its secret).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 404, description = "No such webhook (`webhook_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/webhooks/{id}")]
pub async fn get_webhook(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<WebhookView>, ApiError> {
    let hook = state
        .webhooks
        .get(&auth.principal.tenant, id(&path)?)
        .await
        .map_err(problem)?;
    Ok(web::Json(hook.into()))
}

/// Change a webhook endpoint.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    request_body = UpdateWebhookRequest,
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 404, description = "No such webhook", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid URL or event type, or a private target", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[patch("/v1/webhooks/{id}")]
pub async fn update_webhook(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    body: JsonBody<UpdateWebhookRequest>,
    state: web::Data<AppState>,
) -> Result<web::Json<WebhookView>, ApiError> {
    let req = body.0;
    let patch = WebhookPatch {
        url: req.url.as_deref().map(|u| url(u, "/url")).transpose()?,
        events: req.events.as_deref().map(|e| event_types(e, "/events")).transpose()?,
        description: req.description.map(Some),
        enabled: req.enabled,
    };
    let hook = state
        .webhooks
        .update(&auth.principal.tenant, id(&path)?, patch)
        .await
        .map_err(problem)?;
    Ok(web::Json(hook.into()))
}

/// Delete a webhook endpoint; its queued deliveries are dropped.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[delete("/v1/webhooks/{id}")]
pub async fn delete_webhook(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .webhooks
        .delete(&auth.principal.tenant, id(&path)?)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Make a new signing secret. The previous one keeps signing (alongside) for 24
/// hours, so receivers can switch without losing a delivery.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 200, description = "The new secret, shown only now", body = WebhookWithSecret),
        (status = 404, description = "No such webhook", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/webhooks/{id}/rotate-secret")]
pub async fn rotate_webhook_secret(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<WebhookWithSecret>, ApiError> {
    let (hook, secret) = state
        .webhooks
        .rotate_secret(&auth.principal.tenant, id(&path)?)
        .await
        .map_err(problem)?;
    Ok(web::Json(WebhookWithSecret {
        webhook: hook.into(),
        secret,
    }))
}

/// The latest delivery attempts (up to 100), with status code and latency.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 200, description = "Attempts, newest first", body = DeliveryList),
        (status = 404, description = "No such webhook", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/webhooks/{id}/deliveries")]
pub async fn list_webhook_deliveries(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<DeliveryList>, ApiError> {
    let data = state
        .webhooks
        .deliveries(&auth.principal.tenant, id(&path)?, 100)
        .await
        .map_err(problem)?;
    Ok(web::Json(DeliveryList {
        data,
        next_cursor: None,
    }))
}

/// Re-send one event or a time range of events to this endpoint (at most 10,000).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "`whk_…`")),
    request_body = ReplayRequest,
    security(("bearer" = ["webhooks:manage"])),
    responses(
        (status = 202, description = "Queued", body = ReplayResponse),
        (status = 404, description = "No such webhook", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Give `event_id`, or `from` and `to`", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/webhooks/{id}/replay")]
pub async fn replay_webhook(
    auth: Authenticated<WebhooksManage>,
    path: web::Path<String>,
    body: JsonBody<ReplayRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    let time = |raw: &str, field: &str| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| field_error(field, &ValidationError::new("invalid_time", "an RFC 3339 time")))
    };
    let selection = match (req.event_id, req.from, req.to) {
        (Some(event_id), None, None) => Replay::Event(event_id),
        (None, Some(from), Some(to)) => Replay::Range {
            from: time(&from, "/from")?,
            to: time(&to, "/to")?,
        },
        _ => {
            return Err(field_error(
                "",
                &ValidationError::new("invalid_replay", "give `event_id`, or `from` and `to`"),
            ))
        }
    };
    let queued = state
        .webhooks
        .replay(&auth.principal.tenant, id(&path)?, selection)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Accepted().json(ReplayResponse { queued }))
}
