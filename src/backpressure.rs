//! Back-pressure: when the queue is deeper than `delivery.max_queue_depth`, or the store
//! stopped answering, new sends get 503 + `Retry-After` instead of growing the queue
//! without bound. Accepted messages are never dropped; only new ones wait.
//!
//! Counting a sled tree is a full scan, so the depth is sampled once a second by a
//! background task rather than on every request: the bound can be overshot by at most
//! one second of accepts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

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
    waiting: AtomicUsize,
    sending: AtomicUsize,
    store_failing: AtomicBool,
}

impl QueueGauge {
    /// (waiting, being sent) at the last sample.
    pub fn depth(&self) -> (usize, usize) {
        (
            self.waiting.load(Ordering::Relaxed),
            self.sending.load(Ordering::Relaxed),
        )
    }

    /// Whether a new send must wait; `max` 0 means no depth bound.
    pub fn pressure(&self, max: usize) -> Option<Pressure> {
        if self.store_failing.load(Ordering::Relaxed) {
            return Some(Pressure::StoreUnavailable);
        }
        let (waiting, sending) = self.depth();
        let depth = waiting + sending;
        (max > 0 && depth >= max).then_some(Pressure::QueueFull { depth, max })
    }

    fn sample(&self, store: &dyn Store) {
        match store.queue_depth() {
            Ok((waiting, sending)) => {
                self.waiting.store(waiting, Ordering::Relaxed);
                self.sending.store(sending, Ordering::Relaxed);
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
        gauge.waiting.store(8, Ordering::Relaxed);
        gauge.sending.store(2, Ordering::Relaxed);
        assert_eq!(gauge.pressure(10), Some(Pressure::QueueFull { depth: 10, max: 10 }));
        assert_eq!(gauge.pressure(0), None, "0 = unbounded");
        gauge.store_failing.store(true, Ordering::Relaxed);
        assert_eq!(gauge.pressure(0), Some(Pressure::StoreUnavailable));
    }
}
