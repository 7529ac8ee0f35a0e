//! Per-tenant send limits: a token bucket (`messages_per_second` refill, `burst`
//! capacity) and an optional daily quota (UTC days), from `[limits]` with per-tenant
//! overrides. A token's `limits` claim may lower them (never raise them) for whoever
//! holds that token: such a caller draws from its own, smaller bucket *and* from the
//! tenant's. Counted in memory: a restart refills the buckets and the day's quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::domain::auth::TenantId;

/// Where a caller stands after a check, for the `RateLimit-*` headers.
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

/// The optional `limits` claim of a token. Each value can only lower the tenant's
/// limit; 0 or a higher value changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
}

impl ClaimLimits {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Who is sending: the tenant, and the token's subject and claim when it lowers limits.
pub struct Caller<'a> {
    pub tenant: &'a TenantId,
    pub subject: &'a str,
    pub claim: &'a ClaimLimits,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    day: NaiveDate,
    sent_today: u64,
}

#[derive(Clone, Copy)]
struct Limit {
    /// 0 = unlimited.
    per_second: f64,
    burst: f64,
    /// 0 = none.
    daily: u64,
}

impl Limit {
    /// This limit, lowered where `claim` asks for less.
    fn lowered(self, claim: &ClaimLimits) -> Self {
        let lower = |own: f64, asked: Option<u32>| match asked {
            Some(asked) if asked > 0 && (own <= 0.0 || f64::from(asked) < own) => f64::from(asked),
            _ => own,
        };
        Self {
            per_second: lower(self.per_second, claim.messages_per_second),
            burst: lower(self.burst, claim.burst),
            daily: match claim.daily_quota {
                Some(asked) if asked > 0 && (self.daily == 0 || asked < self.daily) => asked,
                _ => self.daily,
            },
        }
    }
}

impl Bucket {
    fn full(limit: &Limit, now: Instant, today: NaiveDate) -> Self {
        Self {
            tokens: limit.burst,
            refilled: now,
            day: today,
            sent_today: 0,
        }
    }

    /// Refills for the time since the last call and starts a new day's count.
    fn refresh(&mut self, limit: &Limit, now: Instant, today: NaiveDate) {
        if self.day != today {
            self.day = today;
            self.sent_today = 0;
        }
        if limit.per_second > 0.0 {
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        }
        self.refilled = now;
    }

    fn allowance(&self, limit: &Limit, tokens: f64) -> Allowance {
        if limit.per_second <= 0.0 {
            return Allowance {
                limit: 0,
                remaining: 0,
                reset: 0,
            };
        }
        Allowance {
            limit: limit.burst as u64,
            remaining: tokens.max(0.0).floor() as u64,
            reset: ((limit.burst - tokens) / limit.per_second).ceil().max(0.0) as u64,
        }
    }

    /// The allowance left after taking `cost`, or why `cost` cannot be taken.
    fn check(&self, limit: &Limit, cost: u64, today: NaiveDate) -> Result<Allowance, Refusal> {
        if limit.daily > 0 && self.sent_today + cost > limit.daily {
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
        let cost_f = cost as f64;
        if limit.per_second > 0.0 && self.tokens < cost_f {
            let wait = (cost_f - self.tokens) / limit.per_second;
            return Err(Refusal::RateLimited {
                retry_after: Duration::from_secs_f64(wait.max(0.001)),
                allowance: self.allowance(limit, self.tokens),
            });
        }
        Ok(self.allowance(limit, self.tokens - cost_f))
    }

    fn consume(&mut self, limit: &Limit, cost: u64) {
        if limit.per_second > 0.0 {
            self.tokens -= cost as f64;
        }
        self.sent_today += cost;
    }
}

pub struct Limiter {
    settings: std::sync::Arc<Settings>,
    buckets: Mutex<HashMap<String, Bucket>>,
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

    /// Takes `cost` messages from the caller's allowances (the tenant's, and the token's
    /// own when its claim lowers the limits), or says why not and takes nothing. The
    /// answer describes the tighter of the two.
    pub fn take(&self, caller: &Caller, cost: u64) -> Result<Allowance, Refusal> {
        let tenant_limit = self.limit_for(caller.tenant);
        let mut plan = vec![(caller.tenant.as_str().to_owned(), tenant_limit)];
        if !caller.claim.is_empty() {
            let key = format!("{}\u{0}{}", caller.tenant.as_str(), caller.subject);
            plan.push((key, tenant_limit.lowered(caller.claim)));
        }
        let now = Instant::now();
        let today = Utc::now().date_naive();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tightest: Option<Allowance> = None;
        for (key, limit) in &plan {
            let bucket = buckets
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(limit, now, today));
            bucket.refresh(limit, now, today);
            let allowance = bucket.check(limit, cost, today)?;
            tightest = Some(match tightest {
                Some(t) if t.limit > 0 && (allowance.limit == 0 || t.remaining <= allowance.remaining) => t,
                _ => allowance,
            });
        }
        for (key, limit) in &plan {
            if let Some(bucket) = buckets.get_mut(key) {
                bucket.consume(limit, cost);
            }
        }
        Ok(tightest.unwrap_or(Allowance {
            limit: 0,
            remaining: 0,
            reset: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn take(limiter: &Limiter, tenant: &TenantId, cost: u64) -> Result<Allowance, Refusal> {
        let caller = Caller {
            tenant,
            subject: "s",
            claim: &ClaimLimits::default(),
        };
        limiter.take(&caller, cost)
    }

    #[test]
    fn the_bucket_refuses_past_its_burst_and_refills_over_time() {
        let mut settings = Settings::default();
        settings.limits.messages_per_second = 10;
        settings.limits.burst = 2;
        let limiter = Limiter::new(Arc::new(settings));
        let tenant = TenantId::parse("acme").unwrap();
        assert_eq!(take(&limiter, &tenant, 1).unwrap().remaining, 1);
        assert_eq!(take(&limiter, &tenant, 1).unwrap().remaining, 0);
        assert!(matches!(take(&limiter, &tenant, 1), Err(Refusal::RateLimited { .. })));
        std::thread::sleep(Duration::from_millis(150));
        assert!(take(&limiter, &tenant, 1).is_ok());
        assert!(
            take(&limiter, &TenantId::parse("other").unwrap(), 2).is_ok(),
            "buckets are per tenant"
        );
    }

    #[test]
    fn a_daily_quota_is_enforced() {
        let mut settings = Settings::default();
        settings.limits.daily_quota = 3;
        let limiter = Limiter::new(Arc::new(settings));
        let tenant = TenantId::parse("acme").unwrap();
        assert!(take(&limiter, &tenant, 3).is_ok());
        assert!(matches!(
            take(&limiter, &tenant, 1),
            Err(Refusal::QuotaExceeded { quota: 3, .. })
        ));
    }

    #[test]
    fn a_claim_lowers_limits_for_its_token_and_never_raises_them() {
        let mut settings = Settings::default();
        settings.limits.messages_per_second = 1;
        settings.limits.burst = 3;
        settings.limits.daily_quota = 0;
        let limiter = Limiter::new(Arc::new(settings));
        let tenant = TenantId::parse("acme").unwrap();
        let lowered = ClaimLimits {
            burst: Some(1),
            daily_quota: Some(5),
            ..Default::default()
        };
        let low = Caller {
            tenant: &tenant,
            subject: "batch-job",
            claim: &lowered,
        };
        let first = limiter.take(&low, 1).unwrap();
        assert_eq!((first.limit, first.remaining), (1, 0), "the token's own bucket");
        assert!(matches!(limiter.take(&low, 1), Err(Refusal::RateLimited { .. })));
        assert!(
            take(&limiter, &tenant, 2).is_ok(),
            "the tenant's other callers keep theirs"
        );
        let raised = ClaimLimits {
            messages_per_second: Some(1000),
            burst: Some(1000),
            daily_quota: Some(0),
        };
        let high = Caller {
            tenant: &tenant,
            subject: "greedy",
            claim: &raised,
        };
        assert!(
            matches!(limiter.take(&high, 1), Err(Refusal::RateLimited { .. })),
            "a higher claim still draws from the tenant's (now empty) bucket"
        );
    }
}
