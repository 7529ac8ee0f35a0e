//! Liveness and readiness for orchestrators and load balancers.

use std::collections::BTreeMap;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: &'static str,
    /// Each readiness check and whether it passed: `store`, and `upstream:<name>` for
    /// each upstream (reachable and its circuit not open).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, bool>,
    /// Why the store check failed, when it did (e.g. the disk is full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_problem: Option<String>,
}

/// The process is alive and answering.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health {
        status: "ok",
        checks: BTreeMap::new(),
        store_problem: None,
    })
}

/// The store accepts writes and at least one upstream (or the sandbox) can take mail;
/// `checks` shows each upstream.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "A check failed", body = Health),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    let written = web::block(move || store.check_writable()).await;
    let store_problem = match written {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(state.queue.store_problem().unwrap_or_else(|| err.to_string())),
        Err(err) => Some(err.to_string()),
    };
    let store_ok = store_problem.is_none();
    let mut checks = BTreeMap::from([("store".to_owned(), store_ok)]);
    let statuses = state.upstreams.statuses();
    for ((name, reachable), status) in state.upstreams.reachability().await.into_iter().zip(statuses) {
        let usable = reachable && status.state != crate::delivery::pool::CircuitState::Open;
        checks.insert(format!("upstream:{name}"), usable);
    }
    let upstream_ok = checks.iter().any(|(name, ok)| name.starts_with("upstream:") && *ok);
    if store_ok && upstream_ok {
        HttpResponse::Ok().json(Health {
            status: "ready",
            checks,
            store_problem,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "unavailable",
            checks,
            store_problem,
        })
    }
}

/// Prometheus metrics (text exposition format): messages accepted by tenant, recipient
/// outcomes by upstream and tenant, queue depth, delivery latency (acceptance → 2xx),
/// SMTP pool gauges per upstream and HTTP requests by route. Unauthenticated like most
/// exporters and labelled with tenant ids: keep it on the operator's network.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(state.queue.depth(), &state.upstreams.statuses()))
}
