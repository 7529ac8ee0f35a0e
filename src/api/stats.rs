//! `/v1/stats`: delivery and bounce reports, as JSON or CSV.

use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};

use super::auth::{Authenticated, MessagesRead};
use super::problem::{ApiError, FieldError, Problem, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::stats::query::{RawQuery, StatsQuery};
use crate::stats::StatsReport;

/// Delivery and bounce report.
///
/// Per-recipient counts (`"unit": "recipient"`) in buckets of the caller's time zone,
/// each event counted at the time it happened: a DSN that arrives tomorrow for
/// today's send adds a bounce to tomorrow. Counters move in the same store write as
/// the events they count, so they hold through crashes and restarts; a report reads
/// counters only (15-minute slots), never messages, so it costs the same with ten or
/// ten million messages stored. Rates: `bounce_rate` = (bounced_hard + bounced_soft)
/// / (sent + bounced_hard + bounced_soft + failed); `complaint_rate` = complained /
/// sent; `null` when the denominator is 0. Latency: acceptance (or `send_at`) →
/// upstream 2xx, p50/p90/p99 within 3 %. With `group_by=upstream`, acceptance,
/// suppression and cancellation fall under the `null` key (they happen at no relay).
/// `Accept: text/csv` returns the bucket rows as CSV (with `group_by`, one row per
/// group and bucket). Counters are kept for `storage.stats_retention` (400 days).
#[utoipa::path(
    tag = "stats",
    params(RawQuery),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "The report", content(
            (StatsReport = "application/json", example = json!({
                "unit": "recipient", "from": "2026-12-01T00:00:00+01:00", "to": "2026-12-02T00:00:00+01:00",
                "interval": "day", "timezone": "Europe/Paris", "group_by": "recipient_domain", "filter": {"tag": "welcome"},
                "totals": {
                    "counts": {"accepted": 4, "sent": 3, "delivered": 0, "deferred": 1, "bounced_hard": 1, "bounced_soft": 0,
                               "complained": 1, "failed": 0, "suppressed": 1, "unsubscribed": 0, "cancelled": 0},
                    "rates": {"bounce_rate": 0.25, "complaint_rate": 0.3333333333333333},
                    "latency_ms": {"p50": 212, "p90": 1350, "p99": 1350}
                },
                "buckets": [{
                    "start": "2026-12-01T00:00:00+01:00", "end": "2026-12-02T00:00:00+01:00",
                    "counts": {"accepted": 4, "sent": 3, "delivered": 0, "deferred": 1, "bounced_hard": 1, "bounced_soft": 0,
                               "complained": 1, "failed": 0, "suppressed": 1, "unsubscribed": 0, "cancelled": 0},
                    "rates": {"bounce_rate": 0.25, "complaint_rate": 0.3333333333333333},
                    "latency_ms": {"p50": 212, "p90": 1350, "p99": 1350}
                }],
                "groups": [{
                    "key": "gmail.com", "other": false,
                    "totals": {
                        "counts": {"accepted": 4, "sent": 3, "delivered": 0, "deferred": 1, "bounced_hard": 1, "bounced_soft": 0,
                                   "complained": 1, "failed": 0, "suppressed": 1, "unsubscribed": 0, "cancelled": 0},
                        "rates": {"bounce_rate": 0.25, "complaint_rate": 0.3333333333333333},
                        "latency_ms": {"p50": 212, "p90": 1350, "p99": 1350}
                    },
                    "buckets": []
                }]
            })),
            (String = "text/csv"),
        )),
        (status = 422, description = "A bad parameter, named in `errors`: `invalid_query` (`from`, `to`, `interval`, `group_by`), `invalid_timezone`, `invalid_range` (`from` not before `to`), `range_too_large` (over 1000 buckets), `too_many_filters`, `invalid_group_by` (grouped by the filtered dimension)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/stats")]
pub async fn get_stats(
    auth: Authenticated<MessagesRead>,
    query: Query<RawQuery>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Query(raw) = query;
    let query = StatsQuery::parse(raw, chrono::Utc::now())
        .map_err(|r| ApiError::unprocessable(vec![FieldError::new(r.parameter, &r.error)]))?;
    let report = state
        .store_call(&auth.principal.tenant, move |store, tenant| query.run(store, tenant))
        .await?;
    Ok(respond(&request, &report))
}

/// JSON, or CSV when the caller prefers `text/csv`.
fn respond(request: &HttpRequest, report: &StatsReport) -> HttpResponse {
    if prefers_csv(request) {
        return HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"mailgate-stats.csv\"",
            ))
            .body(report.to_csv());
    }
    HttpResponse::Ok().json(report)
}

/// Whether `text/csv` has a higher quality in `Accept` than JSON (`application/json`,
/// `application/*` or `*/*`); ties go to the one listed first.
fn prefers_csv(request: &HttpRequest) -> bool {
    let Some(accept) = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut csv: Option<(f32, usize)> = None;
    let mut json: Option<(f32, usize)> = None;
    for (position, range) in accept.split(',').enumerate() {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "text/csv" => &mut csv,
            "application/json" | "application/*" | "*/*" => &mut json,
            _ => continue,
        };
        if slot.is_none_or(|(q, _)| quality > q) {
            *slot = Some((quality, position));
        }
    }
    match (csv, json) {
        (Some((q, _)), None) => q > 0.0,
        (Some((cq, cp)), Some((jq, jp))) => cq > 0.0 && (cq > jq || (cq == jq && cp < jp)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_for(accept: &str) -> bool {
        prefers_csv(
            &actix_web::test::TestRequest::default()
                .insert_header((header::ACCEPT, accept))
                .to_http_request(),
        )
    }

    #[test]
    fn csv_only_when_preferred_over_json() {
        assert!(csv_for("text/csv"));
        assert!(csv_for("text/csv, application/json;q=0.5"));
        assert!(csv_for("text/csv, */*"));
        assert!(!csv_for("*/*, text/csv"));
        assert!(!csv_for("application/json"));
        assert!(!csv_for("text/csv;q=0"));
        assert!(!csv_for("text/html"));
        assert!(!prefers_csv(&actix_web::test::TestRequest::default().to_http_request()));
    }
}
