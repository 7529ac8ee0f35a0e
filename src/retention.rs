//! The background purge that keeps one node's disk from growing forever: finished
//! messages, events, webhook attempts and raw reports past `storage.retention`, MIME
//! past `storage.mime_retention` and report counters past `storage.stats_retention`,
//! deleted a small batch at a time so that sends never wait behind it (see
//! [`Store::purge`] for what is and is never deleted).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::store::{PurgeCutoffs, Store};

/// Rows of each kind one purge round examines: small enough to never hold the store
/// for long.
const BATCH: usize = 500;
/// Between rounds while the last one deleted something.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(20);

/// How long things are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub history: Duration,
    pub mime: Duration,
    pub stats: Duration,
}

impl Retention {
    /// How often to look for work when there was none: a quarter of the shortest
    /// retention, between a quarter of a second and a minute.
    fn idle_interval(&self) -> Duration {
        (self.history.min(self.mime).min(self.stats) / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
    }

    fn cutoffs(&self) -> PurgeCutoffs {
        let now = Utc::now();
        let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        PurgeCutoffs {
            history: ago(self.history),
            mime: ago(self.mime),
            stats: ago(self.stats),
        }
    }
}

/// Purges until `stopped` turns true.
pub async fn run_purger_until_stopped(store: Arc<dyn Store>, retention: Retention, mut stopped: watch::Receiver<bool>) {
    loop {
        let cutoffs = retention.cutoffs();
        let round = {
            let store = Arc::clone(&store);
            // Counter changes wait in the journal until folded into rows; folding first
            // means a change past stats_retention is purged in this round, not the
            // next one an idle interval later (the folder may not have run yet).
            tokio::task::spawn_blocking(move || {
                store.fold_stats(BATCH)?;
                store.purge(cutoffs, BATCH)
            })
            .await
        };
        let more = match round {
            Ok(Ok(report)) => {
                if report.deleted > 0 {
                    tracing::info!(
                        deleted = report.deleted,
                        examined = report.examined,
                        "purged rows past retention"
                    );
                }
                // Kept rows alone are no reason to hurry: the walks resume where they stopped.
                report.deleted > 0
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&err), "a retention round failed; it is tried again later");
                false
            }
            Err(_) => false,
        };
        let pause = if more {
            CATCH_UP_PAUSE
        } else {
            retention.idle_interval()
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_looks_often_for_short_retention_and_rarely_for_long() {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        let default = Retention {
            history: days(30),
            mime: days(7),
            stats: days(400),
        };
        assert_eq!(default.idle_interval(), Duration::from_secs(60));
        let short = Retention {
            history: Duration::from_secs(2),
            mime: Duration::from_secs(1),
            stats: Duration::from_secs(3),
        };
        assert_eq!(short.idle_interval(), Duration::from_millis(250));
        let cutoffs = short.cutoffs();
        assert!(cutoffs.mime > cutoffs.history);
    }
}
