//! Applying the send gates to a request: back-pressure (503 + `Retry-After` while the
//! queue is too deep or the store failing), then the tenant's limits (429 with
//! `Retry-After` and `RateLimit-*` headers; the same headers on accepted sends).

use actix_web::HttpResponseBuilder;

use super::problem::{ApiError, Kind};
use super::AppState;
use crate::auth::Principal;
use crate::backpressure::Pressure;
use crate::limits::{Allowance, Caller, Refusal};

fn with_headers(mut err: ApiError, allowance: &Allowance) -> ApiError {
    for (name, value) in headers(allowance) {
        err = err.with_header(actix_web::http::header::HeaderName::from_static(name), value);
    }
    err
}

fn headers(allowance: &Allowance) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", allowance.limit.to_string()),
        ("ratelimit-remaining", allowance.remaining.to_string()),
        ("ratelimit-reset", allowance.reset.to_string()),
    ]
}

/// Seconds a sender is asked to wait while the queue drains.
pub const BACKPRESSURE_RETRY_SECS: u64 = 5;

/// Takes `cost` sends from the caller's allowance, or refuses with 503 (back-pressure)
/// or 429 (limits).
pub fn take(state: &AppState, principal: &Principal, cost: u64) -> Result<Allowance, ApiError> {
    let retry = |d: std::time::Duration| d.as_secs().max(1).to_string();
    let caller = Caller {
        tenant: &principal.tenant,
        subject: &principal.subject,
        claim: &principal.limits,
    };
    if let Some(pressure) = state.queue.pressure(state.settings.delivery.max_queue_depth) {
        let (code, detail) = match pressure {
            Pressure::QueueFull { depth, max } => (
                "queue_full",
                format!("{depth} messages are queued (the bound is {max}); retry shortly"),
            ),
            Pressure::StoreUnavailable => (
                "store_unavailable",
                "the message store is not answering; retry shortly".to_owned(),
            ),
        };
        return Err(ApiError::unavailable(code, detail));
    }
    state.limiter.take(&caller, cost).map_err(|refusal| match refusal {
        Refusal::RateLimited { retry_after, allowance } => with_headers(
            ApiError::new(
                Kind::TooManyRequests,
                "rate_limited",
                "this tenant is sending faster than its limit; retry later",
            )
            .with_header(actix_web::http::header::RETRY_AFTER, retry(retry_after)),
            &allowance,
        ),
        Refusal::QuotaExceeded { retry_after, quota } => ApiError::new(
            Kind::TooManyRequests,
            "daily_quota_exceeded",
            format!("this tenant's daily quota of {quota} messages is used up (resets at 00:00 UTC)"),
        )
        .with_header(actix_web::http::header::RETRY_AFTER, retry(retry_after)),
    })
}

/// Adds the `RateLimit-*` headers to a successful answer (none when unlimited).
pub fn annotate(response: &mut HttpResponseBuilder, allowance: &Allowance) {
    if allowance.limit > 0 {
        for (name, value) in headers(allowance) {
            response.insert_header((name, value));
        }
    }
}
