//! Overview: the tenant's delivery report over the last day, week or month (the
//! same counters `GET /v1/stats` reads), and for admins the queue and the relays.

use actix_web::{web, HttpResponse};
use chrono::{Duration, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::chart;
use super::failure::Failure;
use super::page::{self, Section};
use super::session::ConsoleUser;
use crate::api::auth::{MessagesRead, RequiredScope as _};
use crate::api::problem::{ApiError, FieldError};
use crate::api::AppState;
use crate::delivery::pool::CircuitState;
use crate::domain::auth::Scope;
use crate::stats::buckets::Interval;
use crate::stats::query::{RawQuery, StatsQuery};
use crate::stats::report::Summary;

/// The ranges the overview offers: (query value, label, span, bucket, x label format).
const RANGES: [(&str, &str, i64, Interval, &str); 3] = [
    ("24h", "Last 24 hours", 1, Interval::Hour, "%H:%M"),
    ("7d", "Last 7 days", 7, Interval::Day, "%b %d"),
    ("30d", "Last 30 days", 30, Interval::Day, "%b %d"),
];

#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    range: String,
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{:.2} %", r * 100.0))
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |ms| format!("{ms} ms"))
}

fn cards(totals: &Summary) -> Markup {
    let c = &totals.counts;
    let cards = [
        ("Accepted", c.accepted.to_string()),
        ("Sent", c.sent.to_string()),
        ("Delivered", c.delivered.to_string()),
        ("Bounced", (c.bounced_hard + c.bounced_soft).to_string()),
        ("Deferred", c.deferred.to_string()),
        ("Complaints", c.complained.to_string()),
        ("Bounce rate", percent(totals.rates.bounce_rate)),
        ("Complaint rate", percent(totals.rates.complaint_rate)),
        ("Latency p50", millis(totals.latency_ms.p50)),
        ("Latency p99", millis(totals.latency_ms.p99)),
    ];
    html! {
        div.cards { @for (k, v) in cards { div.card { div.v { (v) } div.k { (k) } } } }
    }
}

/// A relay's circuit as an operator reads it.
fn circuit(state: CircuitState) -> Markup {
    let (class, label) = match state {
        CircuitState::Closed => ("sent", "healthy"),
        CircuitState::HalfOpen => ("deferred", "probing"),
        CircuitState::Open => ("failed", "failing, skipped"),
    };
    html! { span class={ "status " (class) } { (label) } }
}

fn operations(state: &AppState) -> Markup {
    let depth = state.queue.depth();
    html! {
        h2 { "Queue (all tenants)" }
        div.cards {
            @for (k, v) in [("Queued", depth.queued), ("Scheduled", depth.scheduled), ("Deferred", depth.deferred), ("Sending", depth.sending)] {
                div.card { div.v { (v) } div.k { (k) } }
            }
        }
        h2 { "Relays" }
        table {
            thead { tr { th { "Relay" } th { "State" } th.num { "In flight" } th.num { "Sent" } th.num { "Deferred" } th.num { "Bounced" } th.num { "Connections" } th.num { "Rate /s" } } }
            tbody { @for u in state.upstreams.statuses() {
                tr {
                    td { (u.name) }
                    td { (circuit(u.state)) }
                    td.num { (u.in_flight) } td.num { (u.sent) } td.num { (u.deferred) } td.num { (u.bounced) }
                    td.num { (u.max_connections) }
                    td.num { @if u.rate_per_second == 0 { "∞" } @else { (u.rate_per_second) } }
                }
            } }
        }
    }
}

/// `GET /console`: the overview.
pub async fn show(
    ConsoleUser(user): ConsoleUser,
    query: web::Query<RangeQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    let (key, label, days, interval, x_label) = RANGES.into_iter().find(|r| r.0 == query.range).unwrap_or(RANGES[0]);
    let report = if page::can(&user, MessagesRead::SCOPE) {
        let now = Utc::now();
        let raw = RawQuery {
            from: Some((now - Duration::days(days)).to_rfc3339()),
            interval: Some(interval),
            ..RawQuery::default()
        };
        let stats = StatsQuery::parse(raw, now)
            .map_err(|r| ApiError::unprocessable(vec![FieldError::new(r.parameter, &r.error)]))?;
        Some(
            state
                .store_call(&user.tenant, move |store, tenant| stats.run(store, tenant))
                .await?,
        )
    } else {
        None
    };
    let body = html! {
        h1 { "Overview" }
        nav.tabs {
            @for (k, l, ..) in RANGES {
                a href={ "/console?range=" (k) } aria-current=[(k == key).then_some("page")] { (l) }
            }
        }
        @match &report {
            Some(report) => {
                (cards(&report.totals))
                h2 { "Recipients per " (if interval == Interval::Hour { "hour" } else { "day" }) " · " (label) " (UTC)" }
                (chart::lines(&report.buckets, &chart::DELIVERY, x_label))
            }
            None => (page::read_only(MessagesRead::SCOPE)),
        }
        @if page::can(&user, Scope::Admin) { (operations(&state)) }
    };
    Ok(page::render(&user, Section::Overview, "Overview", body))
}
