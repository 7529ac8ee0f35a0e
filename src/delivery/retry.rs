//! When to try again: capped exponential backoff with jitter, bounded by `max_age`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_age: Duration,
}

impl RetryPolicy {
    /// After this instant a deferral is final (`failed`).
    pub fn deadline(&self, first_due: DateTime<Utc>) -> DateTime<Utc> {
        first_due + chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX)
    }

    pub fn gives_up(&self, first_due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now >= self.deadline(first_due)
    }

    /// The next try after `attempts` tries: `base · 2^(attempts-1)` capped at `max`,
    /// with "equal jitter" (half fixed, half random) so that a burst deferred together
    /// does not come back together; never later than the deadline, so the last try
    /// happens at `max_age`.
    pub fn retry_at(&self, attempts: u32, first_due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let exp = attempts.saturating_sub(1).min(30);
        let backoff = self.base.saturating_mul(1 << exp).min(self.max);
        let half = backoff / 2;
        let jitter = half.mul_f64(rand::rng().random::<f64>());
        let delay = chrono::Duration::from_std(half + jitter).unwrap_or(chrono::Duration::MAX);
        (now + delay).min(self.deadline(first_due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_stops_at_the_deadline() {
        let policy = RetryPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        let t0 = Utc::now();
        for (attempts, max_secs) in [(1, 10), (2, 20), (3, 40), (4, 60), (20, 60)] {
            let delay = (policy.retry_at(attempts, t0, t0) - t0).num_milliseconds();
            assert!(
                delay >= max_secs * 500 && delay <= max_secs * 1000,
                "attempt {attempts}: {delay}"
            );
        }
        let late = t0 + chrono::Duration::seconds(3590);
        assert_eq!(policy.retry_at(9, t0, late), policy.deadline(t0));
        assert!(policy.gives_up(t0, policy.deadline(t0)));
    }
}
