//! The background task that folds the counter journal (the changes each message write
//! records with its events) into the per-slot counter rows, so reports read rows and
//! the journal stays short. Reports are exact whether or not it has run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// Journal entries folded per round (one per writer batch).
const BATCH: usize = 1_000;
/// Between rounds once the journal is empty.
const PAUSE: Duration = Duration::from_millis(250);

/// Folds until `stopped` turns true.
pub async fn run_stats_folder_until_stopped(store: Arc<dyn Store>, mut stopped: watch::Receiver<bool>) {
    loop {
        let round = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.fold_stats(BATCH)).await
        };
        let pause = match round {
            Ok(Ok(folded)) if folded == BATCH => Duration::ZERO,
            Ok(Ok(_)) => PAUSE,
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&err), "folding report counters failed; tried again later");
                PAUSE * 4
            }
            Err(_) => PAUSE,
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
