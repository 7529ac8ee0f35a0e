//! `/v1/upstreams`: what the delivery pool is doing, for operators.

use actix_web::{get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Admin, Authenticated};
use super::AppState;
use crate::delivery::pool::UpstreamStatus;

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamList {
    /// In configuration order.
    pub data: Vec<UpstreamStatus>,
}

/// List the upstream relays with their circuit state, transactions in flight and
/// recipient outcomes since start.
///
/// A relay's circuit opens after 3 upstream failures in a row (no connection, TLS
/// failure, timeout, 421 or refused credentials) and is skipped for
/// `delivery.circuit_cooldown`; then one transaction probes it (`half_open`).
#[utoipa::path(
    tag = "operations",
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "Every upstream", body = UpstreamList))
)]
#[get("/v1/upstreams")]
pub async fn list_upstreams(_auth: Authenticated<Admin>, state: web::Data<AppState>) -> web::Json<UpstreamList> {
    web::Json(UpstreamList {
        data: state.upstreams.statuses(),
    })
}
