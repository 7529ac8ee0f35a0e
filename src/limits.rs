//! Per-tenant send limits: a token bucket (`messages_per_second` refill, `burst`
//! capacity) and an optional daily quota (UTC days), from `[limits]` with per-tenant
//! overrides. Counted in memory: a restart refills the buckets and the day's quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};

use crate::config::Settings;
use crate::domain::auth::TenantId;

/// Where a tenant stands after a check, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    /// The bucket capacity (0 = unlimited).
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Too fast: retry after the given time.
    RateLimited {
        retry_after: Duration,
        allowance: Allowance,
    },
    /// The day's quota is used up: retry after midnight UTC.
    QuotaExceeded { retry_after: Duration, quota: u64 },
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    day: NaiveDate,
    sent_today: u64,
}

struct Limit {
    per_second: f64,
    burst: f64,
    daily: u64,
}

pub struct Limiter {
    settings: std::sync::Arc<Settings>,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl Limiter {
    pub fn new(settings: std::sync::Arc<Settings>) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limit_for(&self, tenant: &TenantId) -> Limit {
        let defaults = &self.settings.limits;
        let own = self.settings.tenants.get(tenant.as_str());
        let per_second = own
            .and_then(|t| t.messages_per_second)
            .unwrap_or(defaults.messages_per_second);
        let burst = own.and_then(|t| t.burst).unwrap_or(defaults.burst).max(1);
        Limit {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            daily: own.and_then(|t| t.daily_quota).unwrap_or(defaults.daily_quota),
        }
    }

    /// Takes `cost` messages from the tenant's allowance, or says why not (and takes
    /// nothing).
    pub fn take(&self, tenant: &TenantId, cost: u64) -> Result<Allowance, Refusal> {
        let limit = self.limit_for(tenant);
        let now = Instant::now();
        let today = Utc::now().date_naive();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: limit.burst,
            refilled: now,
            day: today,
            sent_today: 0,
        });
        if bucket.day != today {
            bucket.day = today;
            bucket.sent_today = 0;
        }
        if limit.daily > 0 && bucket.sent_today + cost > limit.daily {
            let midnight = today
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc());
            let retry_after = midnight
                .and_then(|m| (m - Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(3600));
            return Err(Refusal::QuotaExceeded {
                retry_after,
                quota: limit.daily,
            });
        }
        if limit.per_second <= 0.0 {
            bucket.sent_today += cost;
            return Ok(Allowance {
                limit: 0,
                remaining: 0,
                reset: 0,
            });
        }
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.refilled = now;
        let cost_f = cost as f64;
        let allowance = |tokens: f64| Allowance {
            limit: limit.burst as u64,
            remaining: tokens.max(0.0).floor() as u64,
            reset: ((limit.burst - tokens) / limit.per_second).ceil().max(0.0) as u64,
        };
        if bucket.tokens < cost_f {
            let wait = (cost_f - bucket.tokens) / limit.per_second;
            return Err(Refusal::RateLimited {
                retry_after: Duration::from_secs_f64(wait.max(0.001)),
                allowance: allowance(bucket.tokens),
            });
        }
        bucket.tokens -= cost_f;
        bucket.sent_today += cost;
        Ok(allowance(bucket.tokens))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_bucket_refuses_past_its_burst_and_refills_over_time() {
        let mut settings = Settings::default();
        settings.limits.messages_per_second = 10;
        settings.limits.burst = 2;
        let limiter = Limiter::new(Arc::new(settings));
        let tenant = TenantId::parse("acme").unwrap();
        assert_eq!(limiter.take(&tenant, 1).unwrap().remaining, 1);
        assert_eq!(limiter.take(&tenant, 1).unwrap().remaining, 0);
        assert!(matches!(limiter.take(&tenant, 1), Err(Refusal::RateLimited { .. })));
        std::thread::sleep(Duration::from_millis(150));
        assert!(limiter.take(&tenant, 1).is_ok());
        assert!(
            limiter.take(&TenantId::parse("other").unwrap(), 2).is_ok(),
            "buckets are per tenant"
        );
    }

    #[test]
    fn a_daily_quota_is_enforced() {
        let mut settings = Settings::default();
        settings.limits.daily_quota = 3;
        let limiter = Limiter::new(Arc::new(settings));
        let tenant = TenantId::parse("acme").unwrap();
        assert!(limiter.take(&tenant, 3).is_ok());
        assert!(matches!(
            limiter.take(&tenant, 1),
            Err(Refusal::QuotaExceeded { quota: 3, .. })
        ));
    }
}
