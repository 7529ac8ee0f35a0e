//! Delivery workers: lease a due message, run one SMTP transaction per pending
//! recipient, record each outcome durably, and put the message back for a retry when
//! some recipient was deferred.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use super::outgoing;
use super::pool::{Outgoing, Upstreams};
use super::retry::RetryPolicy;
use super::transport::TransportJob;
use crate::bounces::verp;
use crate::domain::message::{DeliveryOutcome, Message};
use crate::domain::status::RecipientStatus;
use crate::store::writer::StoreWriter;
use crate::store::{Lease, Store, StoreError};

/// Tries of one store write before a worker step gives up (about 3 s in all).
const PERSIST_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the store failed")]
    Store(#[from] StoreError),
}

/// What one call of [`Worker::try_execute_task`] did; tests call it to drain the queue
/// deterministically.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecutionOutcome {
    TaskCompleted,
    EmptyQueue,
}

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    /// Leases and attempt records go through the writer thread (see there why).
    pub writer: StoreWriter,
    pub upstreams: Arc<Upstreams>,
    pub policy: RetryPolicy,
    pub return_path_domain: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sender domains: which keys sign a message and where its bounces go.
    pub domains: crate::domains::Domains,
    /// Each recipient's one-click unsubscribe link.
    pub unsubscribe: Arc<crate::unsubscribe::UnsubscribeLinks>,
}

impl Worker {
    /// Leases the earliest due message, if any, and makes one delivery attempt for it.
    pub async fn try_execute_task(&self) -> Result<ExecutionOutcome, DeliveryError> {
        // Suppressions added since acceptance (a bounce, a complaint, by hand) still
        // stop a scheduled or retried recipient before any SMTP attempt: read them with
        // the lease, in the same trip to the writer thread.
        let leased = self
            .writer
            .lease(Box::new(|reads, lease| reads.suppressed(&lease.message)))
            .await?;
        // Held for the whole attempt: the lease counts against its tenant meanwhile.
        let Some((lease, suppressed, _counted)) = leased else {
            return Ok(ExecutionOutcome::EmptyQueue);
        };
        let suppressed = match suppressed {
            Ok(suppressed) => suppressed,
            Err(err) => {
                tracing::warn!(message_id = %lease.message.id, error = %crate::telemetry::ErrorChain(&err), "could not read suppressions; the message goes back on the queue");
                let mut message = lease.message;
                message.finish_attempt(Some(Utc::now() + chrono::Duration::seconds(1)));
                self.persist(message, true).await?;
                return Ok(ExecutionOutcome::TaskCompleted);
            }
        };
        let span = tracing::info_span!("delivery", message_id = %lease.message.id, tenant = %lease.message.tenant);
        self.attempt(lease, &suppressed).instrument(span).await?;
        Ok(ExecutionOutcome::TaskCompleted)
    }

    async fn attempt(&self, lease: Lease, suppressed: &[String]) -> Result<(), DeliveryError> {
        let Lease { mut message, mime } = lease;
        let started = Utc::now();
        let first_due = message.first_due();
        let give_up = self.policy.gives_up(first_due, started);
        message.begin_attempt();
        for index in message.pending_recipients() {
            if suppressed.contains(&message.recipients[index].email) {
                message.suppress(index, Utc::now());
            }
        }
        let pending = message.pending_recipients();
        let signing = self.signing_of(&message).await;
        let return_path_domain = signing
            .as_ref()
            .map_or(self.return_path_domain.as_str(), |s| s.return_path_domain.as_str());
        for (n, index) in pending.iter().copied().enumerate() {
            if !self.store.may_deliver() {
                // The lease may soon go to another node: leave the rest to it rather
                // than risk two live nodes sending the same message.
                tracing::warn!(
                    "lost touch with the shared database: opening no SMTP transaction; the lease will be taken back"
                );
                return Ok(());
            }
            let job = TransportJob {
                tenant: message.tenant.as_str().to_owned(),
                sender: verp::return_path(&message.id, index, return_path_domain),
                recipient: message.recipients[index].email.clone(),
                label: format!("{}-{index}", message.id),
            };
            let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
            let headers = if message.list_unsubscribe {
                self.unsubscribe.headers(&message.tenant, &message.id, index)
            } else {
                Vec::new()
            };
            let prepared = outgoing::prepare(&mime, &headers, signing.as_deref(), now);
            let bytes = Outgoing {
                plain: &prepared.plain,
                signed: prepared.signed.as_deref(),
            };
            let (outcome, upstream) = self.upstreams.send(&job, bytes).await;
            log_outcome(&job, &outcome, message.attempts, &upstream);
            self.count(&outcome, message.created_at, &upstream, message.tenant.as_str());
            message.record_outcome(index, outcome, &upstream, give_up, Utc::now());
            if message.recipients[index].status == RecipientStatus::Failed {
                self.metrics
                    .recipient_outcome(&upstream, message.tenant.as_str(), "failed", None);
            }
            if n + 1 < pending.len() {
                self.persist(message.clone(), false).await?;
            }
        }
        let retry_at = self.policy.retry_at(message.attempts, first_due, Utc::now());
        message.finish_attempt(Some(retry_at));
        tracing::info!(status = ?message.status, attempts = message.attempts, next_attempt_at = ?message.next_attempt_at, "delivery attempt finished");
        self.persist(message, true).await
    }

    /// The verified domain that signs `message` (its From domain or a parent), if any;
    /// a failure to read it sends the message unsigned rather than not at all.
    async fn signing_of(&self, message: &Message) -> Option<Arc<crate::domains::DomainSigning>> {
        let from = crate::domain::address::Mailbox::parse(&message.from).ok()?;
        let domain = crate::domain::sender_domain::DomainName::parse(from.email().domain()).ok()?;
        match self.domains.signing(&message.tenant, &domain).await {
            Ok(signing) => signing,
            Err(err) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&err), "could not read the sender domain's keys; sending unsigned");
                None
            }
        }
    }

    /// Counts an outcome for /metrics.
    fn count(&self, outcome: &DeliveryOutcome, accepted_at: chrono::DateTime<Utc>, upstream: &str, tenant: &str) {
        let (kind, latency) = match outcome {
            DeliveryOutcome::Sent(_) => ("sent", (Utc::now() - accepted_at).to_std().ok()),
            DeliveryOutcome::Deferred(_) => ("deferred", None),
            DeliveryOutcome::Bounced(_) => ("bounced", None),
        };
        self.metrics.recipient_outcome(upstream, tenant, kind, latency);
    }

    /// Runs a store write on the writer thread until it is durable, retrying a failure
    /// a few times: giving up leaves the message leased (and its outcomes unrecorded)
    /// until the next start, so it is worth waiting out a short disk hiccup.
    async fn persist(&self, message: Message, release: bool) -> Result<(), DeliveryError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.writer.save(message.clone(), release).await {
                Ok(()) => return Ok(()),
                Err(err) if attempt >= PERSIST_ATTEMPTS => return Err(err.into()),
                Err(err) => {
                    tracing::warn!(attempt, error = %crate::telemetry::ErrorChain(&err), "store write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

fn log_outcome(job: &TransportJob, outcome: &DeliveryOutcome, attempt: u32, upstream: &str) {
    let (kind, reply) = match outcome {
        DeliveryOutcome::Sent(r) => ("sent", r),
        DeliveryOutcome::Deferred(r) => ("deferred", r),
        DeliveryOutcome::Bounced(r) => ("bounced", r),
    };
    tracing::info!(recipient = %job.recipient, attempt, upstream, outcome = kind, smtp_code = reply.code, diagnostic = %reply.diagnostic, "recipient outcome");
}

/// Runs `worker` until `shutdown` turns true, sleeping until the next due message or
/// until `wake` is notified by a new acceptance.
pub async fn run_worker_until_stopped(worker: Worker, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        let pause = match worker.try_execute_task().await {
            Ok(ExecutionOutcome::TaskCompleted) => continue,
            Ok(ExecutionOutcome::EmptyQueue) => idle_pause(&worker).await,
            Err(err) => {
                tracing::error!(error = %crate::telemetry::ErrorChain(&err), "delivery worker step failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How long to sleep with nothing due: until the next due entry, at most one second.
async fn idle_pause(worker: &Worker) -> Duration {
    let store = Arc::clone(&worker.store);
    let next = tokio::task::spawn_blocking(move || store.next_due()).await;
    let until_next = match next {
        Ok(Ok(Some(due))) => (due - Utc::now()).to_std().unwrap_or(Duration::ZERO),
        _ => Duration::from_secs(1),
    };
    until_next.clamp(Duration::from_millis(5), Duration::from_secs(1))
}
