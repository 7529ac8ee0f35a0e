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

use crate::store::{QueueDepth, Store};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why sends are refused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    QueueFull { depth: usize, max: usize },
    StoreUnavailable,
}

/// The last sample of the queue.
#[derive(Default)]
pub struct QueueGauge {
    depth: Mutex<QueueDepth>,
    store_failing: AtomicBool,
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

    fn sample(&self, store: &dyn Store) {
        match store.queue_depth() {
            Ok(depth) => {
                *self.depth.lock().unwrap_or_else(PoisonError::into_inner) = depth;
                self.store_failing.store(false, Ordering::Relaxed);
            }
            Err(err) => {
                if !self.store_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %crate::telemetry::ErrorChain(&err), "the store failed; refusing new sends");
                }
            }
        }
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
