//! Keeps the public keys current without a restart: re-reads them on SIGHUP, and when a
//! key file's modification time or size changes (checked every two seconds, which also
//! covers editors and config managers that replace a file by renaming over it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::TokenKeys;

const POLL: Duration = Duration::from_secs(2);

/// What identifies a version of each watched file (absent files included).
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

fn reload(keys: &TokenKeys, why: &str) {
    match keys.reload_public_keys() {
        Ok(count) => tracing::info!(keys = count, trigger = why, "public keys reloaded"),
        Err(err) => tracing::error!(
            error = %crate::telemetry::ErrorChain(err.as_ref()),
            trigger = why,
            "public keys not reloaded; the previous keys stay in use"
        ),
    }
}

/// Runs until `stopped` turns true.
pub async fn run_key_reloader_until_stopped(keys: Arc<TokenKeys>, mut stopped: watch::Receiver<bool>) {
    let files = keys.public_key_files();
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; key files are still watched");
            None
        }
    };
    let mut seen = fingerprint(&files);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => reload(&keys, "SIGHUP"),
            _ = tick.tick(), if !files.is_empty() => {
                let now = fingerprint(&files);
                if now != seen {
                    seen = now;
                    reload(&keys, "file change");
                }
            }
        }
    }
}
