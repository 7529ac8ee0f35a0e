//! `/v1/tokens`: token administration.

use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Admin, Authenticated};
use super::body::JsonBody;
use super::problem::{ApiError, FieldError, Problem, PROBLEM_JSON};
use super::AppState;

/// The token to deny: its `jti` claim, and optionally its `exp` (Unix seconds), until
/// which the revocation is kept (default: 90 days from now).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"jti": "01a2239f-5e32-76fe-beab-035967b70001", "exp": 1798483910}))]
pub struct RevokeRequest {
    pub jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until then. Absent: 90 days.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub exp: Option<i64>,
}

/// How long a revocation is kept when the token's `exp` is not given.
const DEFAULT_REVOCATION_SECS: u64 = 90 * 24 * 3600;

/// Revoke a token by its `jti`: it is refused (401) from now until its expiry, across
/// restarts.
#[utoipa::path(
    tag = "tokens",
    request_body = RevokeRequest,
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 422, description = "Invalid `jti` (`invalid_jti`) or `exp` (`invalid_exp`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/tokens/revoke")]
pub async fn revoke_token(
    auth: Authenticated<Admin>,
    body: JsonBody<RevokeRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    if req.jti.is_empty() || req.jti.len() > 256 {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            "/jti",
            "invalid_jti",
            "`jti` is 1 to 256 characters",
        )]));
    }
    let until = match req.exp.map(u64::try_from) {
        None => jsonwebtoken::get_current_timestamp() + DEFAULT_REVOCATION_SECS,
        Some(Ok(exp)) => exp,
        Some(Err(_)) => {
            return Err(ApiError::unprocessable(vec![FieldError::coded(
                "/exp",
                "invalid_exp",
                "`exp` is Unix seconds, not negative",
            )]))
        }
    };
    let jti = req.jti.clone();
    state
        .store_call(&auth.principal.tenant, move |store, _| store.revoke_token(&jti, until))
        .await?;
    state.revocations.revoke(&req.jti, until);
    tracing::info!("token revoked");
    Ok(HttpResponse::NoContent().finish())
}
