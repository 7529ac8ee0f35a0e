//! Back-pressure: when the queue is deeper than `delivery.max_queue_depth`, or the store
//! stopped answering, new sends get 503 + `Retry-After` instead of growing the queue
//! without bound. Accepted messages are never dropped; only new ones wait.
//!
//! The depth is sampled once a second by a background task (reading the store's depth
//! counters, a few key lookups) rather than on every request: the bound can be
//! overshot by at most one second of accepts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{QueueDepth, Store, StoreHealth};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why sends are refused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    QueueFull { depth: usize, max: usize },
    StoreUnavailable,
}

/// The last sample of the queue and of the store's health.
#[derive(Default)]
pub struct QueueGauge {
    depth: Mutex<QueueDepth>,
    store_failing: AtomicBool,
    /// Why the store refuses writes, for `/readyz`.
    store_problem: Mutex<Option<String>>,
    /// Told when the store refuses writes but could take them after a reopen.
    reopen: tokio::sync::Notify,
}

impl QueueGauge {
    /// The queue by state at the last sample.
    pub fn depth(&self) -> QueueDepth {
        *self.depth.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a new send must wait; `max` 0 means no depth bound.
    pub fn pressure(&self, max: usize) -> Option<Pressure> {
        if self.store_failing.load(Ordering::Relaxed) {
            return Some(Pressure::StoreUnavailable);
        }
        let depth = self.depth().total();
        (max > 0 && depth >= max).then_some(Pressure::QueueFull { depth, max })
    }

    /// Why the store refuses writes at the last sample, if it does.
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves once the store refuses writes and a reopen would bring them back.
    pub async fn reopen_requested(&self) {
        self.reopen.notified().await;
    }

    /// Reads the depth and the store's health: sends are refused while it refuses
    /// writes, and a store that could write again after a reopen asks for one.
    fn sample(&self, store: &dyn Store) {
        let problem = match store.health() {
            StoreHealth::Writable => None,
            StoreHealth::Failing(reason) => Some(reason),
            StoreHealth::Recoverable(reason) => {
                self.reopen.notify_one();
                Some(format!("{reason}; the disk has room again: reopening the store"))
            }
        };
        let depth = store.queue_depth();
        if let Ok(depth) = &depth {
            *self.depth.lock().unwrap_or_else(PoisonError::into_inner) = *depth;
        }
        let problem = problem.or_else(|| depth.err().map(|err| crate::telemetry::ErrorChain(&err).to_string()));
        let failing = problem.is_some();
        if failing && !self.store_failing.load(Ordering::Relaxed) {
            tracing::error!(
                problem = problem.as_deref().unwrap_or_default(),
                "the store refuses writes; refusing new sends"
            );
        }
        self.store_failing.store(failing, Ordering::Relaxed);
        *self.store_problem.lock().unwrap_or_else(PoisonError::into_inner) = problem;
    }
}

/// Samples the queue every second until `stopped` turns true.
pub async fn run_queue_sampler_until_stopped(
    gauge: Arc<QueueGauge>,
    store: Arc<dyn Store>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (gauge_now, store_now) = (Arc::clone(&gauge), Arc::clone(&store));
        let _ = tokio::task::spawn_blocking(move || gauge_now.sample(store_now.as_ref())).await;
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_queue_or_a_failing_store_refuses_sends() {
        let gauge = QueueGauge::default();
        assert_eq!(gauge.pressure(10), None);
        *gauge.depth.lock().unwrap() = QueueDepth {
            queued: 5,
            scheduled: 2,
            deferred: 1,
            sending: 2,
        };
        assert_eq!(gauge.pressure(10), Some(Pressure::QueueFull { depth: 10, max: 10 }));
        assert_eq!(gauge.pressure(0), None, "0 = unbounded");
        gauge.store_failing.store(true, Ordering::Relaxed);
        assert_eq!(gauge.pressure(0), Some(Pressure::StoreUnavailable));
    }
}
