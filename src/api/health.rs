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
    /// Each readiness check and whether it passed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<&'static str, bool>,
}

/// The process is alive and answering.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health {
        status: "ok",
        checks: BTreeMap::new(),
    })
}

/// The store accepts writes and the upstream (or sandbox) can take mail.
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
    let store_ok = matches!(web::block(move || store.check_writable()).await, Ok(Ok(())));
    let upstream_ok = state.transport.is_reachable().await;
    let checks = BTreeMap::from([("store", store_ok), ("upstream", upstream_ok)]);
    if store_ok && upstream_ok {
        HttpResponse::Ok().json(Health {
            status: "ready",
            checks,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "unavailable",
            checks,
        })
    }
}

/// Prometheus metrics (text exposition format): messages accepted, recipient outcomes
/// by upstream, queue depth, delivery latency (acceptance → 2xx) and HTTP requests by
/// route. Unauthenticated like most exporters, and free of tenant names; keep it on an
/// internal network.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    let (queued, leased) = match web::block(move || store.queue_depth()).await {
        Ok(Ok(depth)) => depth,
        _ => (0, 0),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(queued, leased))
}
