//! `/v1/suppressions`: addresses the tenant will not send to. Hard bounces and
//! complaints add themselves; operators add and remove addresses here.

use actix_web::{delete, get, put, web, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authenticated, SuppressionsManage};
use super::pagination::{page_size, split_page};
use super::problem::{ApiError, FieldError, Kind, Problem, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::domain::address::EmailAddress;
use crate::domain::auth::TenantId;
use crate::domain::suppression::{Suppression, SuppressionReason};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionList {
    /// Ordered by address.
    pub data: Vec<Suppression>,
    pub next_cursor: Option<String>,
}

/// The address in the path, lowercased, or a 422.
fn address(raw: &str) -> Result<String, ApiError> {
    EmailAddress::parse(raw)
        .map(|a| a.to_string().to_ascii_lowercase())
        .map_err(|e| ApiError::unprocessable(vec![FieldError::new("email", &e)]))
}

fn not_found() -> ApiError {
    ApiError::new(
        Kind::NotFound,
        "suppression_not_found",
        "this address is not suppressed",
    )
}

/// List suppressed addresses.
#[utoipa::path(
    tag = "suppressions",
    params(SuppressionQuery),
    security(("bearer" = ["suppressions:manage"])),
    responses(
        (status = 200, description = "A page of suppressions", body = SuppressionList),
        (status = 422, description = "Invalid `limit`", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/suppressions")]
pub async fn list_suppressions(
    auth: Authenticated<SuppressionsManage>,
    query: Query<SuppressionQuery>,
    state: web::Data<AppState>,
) -> Result<web::Json<SuppressionList>, ApiError> {
    let size = page_size(query.limit)?;
    let after = query.cursor.clone();
    let fetched = state
        .store_call(&auth.principal.tenant, move |store, tenant| {
            store.list_suppressions(tenant, after.as_deref(), size + 1)
        })
        .await?;
    let (page, next_cursor) = split_page(fetched, size, |s| s.email.clone());
    Ok(web::Json(SuppressionList {
        next_cursor,
        data: page,
    }))
}

/// Get one suppressed address.
#[utoipa::path(
    tag = "suppressions",
    params(("email" = String, Path, description = "The address")),
    security(("bearer" = ["suppressions:manage"])),
    responses(
        (status = 200, description = "The address is suppressed", body = Suppression),
        (status = 404, description = "Not suppressed, or not an address (`suppression_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/suppressions/{email}")]
pub async fn get_suppression(
    auth: Authenticated<SuppressionsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<Suppression>, ApiError> {
    let email = address(&path).map_err(|_| not_found())?;
    state
        .store_call(&auth.principal.tenant, move |store, tenant| {
            store.suppression(tenant, &email)
        })
        .await?
        .map(web::Json)
        .ok_or_else(not_found)
}

/// Suppress an address by hand (`reason: manual`). Takes no body; an address already
/// suppressed keeps its original reason.
#[utoipa::path(
    tag = "suppressions",
    params(("email" = String, Path, description = "The address")),
    security(("bearer" = ["suppressions:manage"])),
    responses(
        (status = 200, description = "The address is suppressed", body = Suppression),
        (status = 422, description = "Not an email address", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[put("/v1/suppressions/{email}")]
pub async fn put_suppression(
    auth: Authenticated<SuppressionsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<Suppression>, ApiError> {
    Ok(web::Json(suppress(&state, &auth.principal.tenant, &path, "api").await?))
}

/// Suppresses `raw` by hand for `tenant` (reason `manual`, noting where it came from);
/// an address already suppressed keeps its entry. What the API's PUT and the console's
/// form both call.
pub(crate) async fn suppress(
    state: &AppState,
    tenant: &TenantId,
    raw: &str,
    source: &'static str,
) -> Result<Suppression, ApiError> {
    let email = address(raw)?;
    state
        .store_call(tenant, move |store, tenant| {
            if let Some(existing) = store.suppression(tenant, &email)? {
                return Ok(existing);
            }
            let suppression = Suppression {
                email,
                reason: SuppressionReason::Manual,
                created_at: Utc::now(),
                source: source.into(),
                event_id: None,
            };
            store.put_suppression(tenant, &suppression).map(|()| suppression)
        })
        .await
}

/// Remove an address from the suppression list: mail to it is sent again.
#[utoipa::path(
    tag = "suppressions",
    params(("email" = String, Path, description = "The address")),
    security(("bearer" = ["suppressions:manage"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "Not suppressed, or not an address (`suppression_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[delete("/v1/suppressions/{email}")]
pub async fn delete_suppression(
    auth: Authenticated<SuppressionsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    unsuppress(&state, &auth.principal.tenant, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Takes `raw` off `tenant`'s suppression list, or says it was not on it.
pub(crate) async fn unsuppress(state: &AppState, tenant: &TenantId, raw: &str) -> Result<(), ApiError> {
    let email = address(raw).map_err(|_| not_found())?;
    let removed = state
        .store_call(tenant, move |store, tenant| store.delete_suppression(tenant, &email))
        .await?;
    if removed {
        Ok(())
    } else {
        Err(not_found())
    }
}
