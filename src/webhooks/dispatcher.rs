//! The dispatcher: drains the durable outbox, POSTs each event to its endpoint,
//! signed, and records every attempt. At least once: an entry leaves the outbox only
//! in the transaction that records its final outcome, and a leased entry whose
//! dispatcher died comes back when the lease runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument;

use super::egress;
use super::signing::signature_header;
use crate::delivery::RetryPolicy;
use crate::domain::event::PublishedEvent;
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("a blocking store call was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Clone)]
pub struct Dispatcher {
    pub store: Arc<dyn Store>,
    pub policy: RetryPolicy,
    pub allow_private_targets: bool,
    pub timeout: Duration,
}

impl Dispatcher {
    /// Delivers the earliest due entry, if any; `false` when nothing was due.
    pub async fn try_dispatch(&self) -> Result<bool, DispatchError> {
        // A leased delivery stays hidden from other dispatchers (and from the next
        // start, if this one dies) for twice the request timeout.
        let lease = chrono::Duration::from_std(self.timeout * 2).unwrap_or(chrono::Duration::seconds(60));
        let store = Arc::clone(&self.store);
        let Some(leased) = tokio::task::spawn_blocking(move || store.lease_delivery(Utc::now(), lease)).await?? else {
            return Ok(false);
        };
        let span = tracing::info_span!("webhook", webhook_id = %leased.webhook_id, event_id = %leased.event.id, tenant = %leased.tenant);
        self.deliver(leased).instrument(span).await?;
        Ok(true)
    }

    async fn deliver(&self, leased: OutboxEntry) -> Result<(), DispatchError> {
        let store = Arc::clone(&self.store);
        let (tenant, id) = (leased.tenant.clone(), leased.webhook_id.clone());
        let webhook = tokio::task::spawn_blocking(move || store.webhook(&tenant, &id)).await??;
        let attempt = leased.attempts + 1;
        let started = Instant::now();
        let result = match &webhook {
            // Bounded as a whole (DNS included) so the lease cannot run out mid-call.
            Some(hook) if hook.enabled => tokio::time::timeout(self.timeout, self.post(hook, &leased.event))
                .await
                .unwrap_or_else(|_| Err("no response within the request timeout".to_owned())),
            _ => Err("the webhook was deleted or disabled".to_owned()),
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = Utc::now();
        let mut next = None;
        let mut update = None;
        let (outcome, status_code, error) = match (&webhook, result) {
            (Some(hook), _) if !hook.enabled => ("dropped", None, Some("the webhook is disabled".to_owned())),
            (None, _) => ("dropped", None, Some("the webhook was deleted".to_owned())),
            (_, Ok(code)) if (200..300).contains(&code) => ("delivered", Some(code), None),
            (Some(hook), Ok(410)) => {
                let mut disabled = hook.clone();
                disabled.enabled = false;
                disabled.disabled_reason = Some("the endpoint answered 410 Gone".into());
                disabled.updated_at = now;
                update = Some(disabled);
                ("disabled", Some(410), None)
            }
            (_, result) => {
                let (code, error) = match result {
                    Ok(code) => (Some(code), None),
                    Err(error) => (None, Some(error)),
                };
                if self.policy.gives_up(leased.first_queued_at, now) {
                    ("failed", code, error)
                } else {
                    let mut retry = leased.clone();
                    retry.attempts = attempt;
                    retry.due_at = self.policy.retry_at(attempt, leased.first_queued_at, now);
                    next = Some(retry);
                    ("retrying", code, error)
                }
            }
        };
        let record = DeliveryAttempt {
            event_id: leased.event.id.clone(),
            event_type: leased.event.event_type,
            attempt,
            attempted_at: now,
            status_code,
            latency_ms,
            outcome: outcome.to_owned(),
            error,
            next_attempt_at: next.as_ref().map(|n| n.due_at),
        };
        tracing::info!(attempt, outcome, status_code, latency_ms, "webhook delivery attempt");
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.finish_delivery(&leased, next.as_ref(), &record, update.as_ref()))
            .await??;
        Ok(())
    }

    /// One signed POST; the HTTP status, or why there was none.
    async fn post(&self, hook: &Webhook, event: &PublishedEvent) -> Result<u16, String> {
        let target = egress::resolve(&hook.url, self.allow_private_targets)
            .await
            .map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(
            hook.signing_secrets(Utc::now()).map(|s| s.secret.as_str()),
            &event.id,
            timestamp,
            &body,
        );
        // Connect to the address the guard checked, not to a fresh lookup.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the host again, bypassing the checked address.
            .no_proxy()
            .timeout(self.timeout)
            .resolve(&target.host, target.address)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .post(hook.url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", concat!("mailgate-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| crate::telemetry::ErrorChain(&e).to_string())?;
        Ok(response.status().as_u16())
    }
}

/// Runs `dispatcher` until `shutdown` turns true, polling the outbox when idle.
pub async fn run_dispatcher_until_stopped(dispatcher: Dispatcher, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        let pause = match dispatcher.try_dispatch().await {
            Ok(true) => continue,
            Ok(false) => Duration::from_millis(200),
            Err(err) => {
                tracing::error!(error = %crate::telemetry::ErrorChain(&err), "webhook dispatcher step failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}
