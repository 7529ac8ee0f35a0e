//! Prometheus metrics without a global recorder: counters and histograms owned by the
//! application (so every test app has its own), rendered in the text exposition
//! format at `/metrics`. `/metrics` has no authentication, so counters carry no tenant
//! id unless `[metrics] tenant_labels = true` (then an operator sees who sends what, and
//! must keep `/metrics` on their own network).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::delivery::pool::{CircuitState, UpstreamStatus};
use crate::store::QueueDepth;

/// A cumulative histogram with fixed bucket bounds in seconds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(u64::try_from(value.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

const DELIVERY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
const HTTP_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

pub struct Metrics {
    /// Whether counters are split by tenant; otherwise the tenant key is empty.
    tenant_labels: bool,
    /// tenant → messages accepted.
    accepted: Mutex<BTreeMap<String, u64>>,
    /// (upstream, tenant, outcome) → recipients.
    outcomes: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    delivery_latency: Histogram,
    /// (method, route, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    request_duration: Histogram,
}

impl Metrics {
    /// Counters split by tenant only when `tenant_labels` is on.
    pub fn new(tenant_labels: bool) -> Self {
        Self {
            tenant_labels,
            accepted: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(BTreeMap::new()),
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
            requests: Mutex::new(BTreeMap::new()),
            request_duration: Histogram::new(HTTP_BUCKETS),
        }
    }
}

/// `tenant="…"` after `separator`, or nothing for the shared key.
fn tenant_label(tenant: &str, separator: &str) -> String {
    if tenant.is_empty() {
        String::new()
    } else {
        format!("{separator}tenant=\"{tenant}\"")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// The key a tenant's counts go under: its id, or one shared empty key.
    fn tenant_key(&self, tenant: &str) -> String {
        if self.tenant_labels {
            tenant.to_owned()
        } else {
            String::new()
        }
    }

    pub fn message_accepted(&self, tenant: &str) {
        *lock(&self.accepted).entry(self.tenant_key(tenant)).or_default() += 1;
    }

    /// One recipient's outcome (`sent`, `deferred`, `bounced`, `failed`) at `upstream`
    /// for `tenant`; `latency` (acceptance → 2xx) for sends.
    pub fn recipient_outcome(&self, upstream: &str, tenant: &str, outcome: &'static str, latency: Option<Duration>) {
        *lock(&self.outcomes)
            .entry((upstream.to_owned(), self.tenant_key(tenant), outcome))
            .or_default() += 1;
        if let Some(latency) = latency {
            self.delivery_latency.observe(latency);
        }
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, duration: Duration) {
        *lock(&self.requests)
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        self.request_duration.observe(duration);
    }

    /// The text exposition, with the sampled queue depth and the upstream pool's state
    /// passed in by the caller.
    pub fn render(&self, depth: QueueDepth, upstreams: &[UpstreamStatus]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mailgate_messages_accepted_total Messages accepted (202) (by tenant with [metrics] tenant_labels)."
        );
        let _ = writeln!(out, "# TYPE mailgate_messages_accepted_total counter");
        for (tenant, count) in lock(&self.accepted).iter() {
            let labels = tenant_label(tenant, "");
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "mailgate_messages_accepted_total{braces} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP mailgate_recipients_total Recipient outcomes by upstream (and tenant with [metrics] tenant_labels)."
        );
        let _ = writeln!(out, "# TYPE mailgate_recipients_total counter");
        for ((upstream, tenant, outcome), count) in lock(&self.outcomes).iter() {
            let tenant = tenant_label(tenant, ",");
            let _ = writeln!(
                out,
                "mailgate_recipients_total{{upstream=\"{upstream}\"{tenant},outcome=\"{outcome}\"}} {count}"
            );
        }
        render_pool(&mut out, upstreams);
        let _ = writeln!(
            out,
            "# HELP mailgate_queue_depth Messages not yet done, by the state they were queued in (a scheduled message counts as scheduled until leased), and being sent; sampled once a second."
        );
        let _ = writeln!(out, "# TYPE mailgate_queue_depth gauge");
        for (state, count) in [
            ("queued", depth.queued),
            ("scheduled", depth.scheduled),
            ("deferred", depth.deferred),
            ("sending", depth.sending),
        ] {
            let _ = writeln!(out, "mailgate_queue_depth{{state=\"{state}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP mailgate_delivery_latency_seconds From acceptance to the upstream's 2xx."
        );
        let _ = writeln!(out, "# TYPE mailgate_delivery_latency_seconds histogram");
        self.delivery_latency
            .render(&mut out, "mailgate_delivery_latency_seconds", "");
        let _ = writeln!(
            out,
            "# HELP mailgate_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE mailgate_http_requests_total counter");
        for ((method, route, status), count) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "mailgate_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mailgate_http_request_duration_seconds HTTP request duration."
        );
        let _ = writeln!(out, "# TYPE mailgate_http_request_duration_seconds histogram");
        self.request_duration
            .render(&mut out, "mailgate_http_request_duration_seconds", "");
        out
    }
}

/// A gauge per upstream: name, help text, and how to read it from a status.
type PoolGauge = (&'static str, &'static str, fn(&UpstreamStatus) -> u64);

/// SMTP pool gauges: transactions in flight, connection capacity and circuit state.
fn render_pool(out: &mut String, upstreams: &[UpstreamStatus]) {
    let gauges: [PoolGauge; 3] = [
        ("mailgate_upstream_in_flight", "SMTP transactions running now.", |u| {
            u.in_flight
        }),
        (
            "mailgate_upstream_max_connections",
            "Pooled connections allowed.",
            |u| u64::from(u.max_connections),
        ),
        (
            "mailgate_upstream_circuit_open",
            "1 while the circuit is open (the relay is skipped).",
            |u| u64::from(u.state == CircuitState::Open),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for upstream in upstreams {
            let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", upstream.name, value(upstream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_no_tenant_unless_asked() {
        let quiet = Metrics::new(false);
        quiet.message_accepted("acme");
        quiet.message_accepted("globex");
        quiet.recipient_outcome("primary", "acme", "sent", None);
        let text = quiet.render(QueueDepth::default(), &[]);
        assert!(!text.contains("acme") && !text.contains("globex"), "{text}");
        assert!(text.contains("mailgate_messages_accepted_total 2"), "{text}");
        assert!(text.contains("mailgate_recipients_total{upstream=\"primary\",outcome=\"sent\"} 1"));
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new(true);
        m.message_accepted("acme");
        m.recipient_outcome("primary", "acme", "sent", Some(Duration::from_millis(300)));
        m.http_request("POST", "/v1/messages", 202, Duration::from_millis(3));
        let pool = [UpstreamStatus {
            name: "primary".into(),
            state: CircuitState::Open,
            in_flight: 3,
            sent: 0,
            deferred: 0,
            bounced: 0,
            weight: 1,
            max_connections: 8,
            rate_per_second: 0,
            tenant_max_connections: 0,
        }];
        let depth = QueueDepth {
            queued: 2,
            scheduled: 3,
            deferred: 4,
            sending: 1,
        };
        let text = m.render(depth, &pool);
        assert!(text.contains("mailgate_messages_accepted_total{tenant=\"acme\"} 1"));
        assert!(text.contains("mailgate_recipients_total{upstream=\"primary\",tenant=\"acme\",outcome=\"sent\"} 1"));
        assert!(text.contains("mailgate_upstream_in_flight{upstream=\"primary\"} 3"));
        assert!(text.contains("mailgate_upstream_circuit_open{upstream=\"primary\"} 1"));
        assert!(text.contains("mailgate_delivery_latency_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("mailgate_delivery_latency_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("mailgate_queue_depth{state=\"queued\"} 2"));
        assert!(text.contains("mailgate_queue_depth{state=\"scheduled\"} 3"));
        assert!(text.contains("mailgate_queue_depth{state=\"deferred\"} 4"));
        assert!(text.contains("mailgate_queue_depth{state=\"sending\"} 1"));
        assert!(text.contains("route=\"/v1/messages\",status=\"202\"} 1"));
    }
}
