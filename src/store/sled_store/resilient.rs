//! The store as the service uses it: sled, with writes refused at once after one
//! failed with an I/O error, and a health report that says when the disk has room
//! again.
//!
//! sled turns an I/O error (a full disk, typically) into a state in which later
//! writes fail, some of them by blocking forever, and from which it cannot be reopened
//! in the same process: dropping it waits for a flush that never completes, and it
//! keeps its lock on the directory. So after the first write that fails with an I/O
//! error this store stops passing writes to sled — they fail at once with
//! [`StoreError::Unavailable`], and sends get `503 store_unavailable` — while reads go
//! on. [`Store::health`] (asked every second by the queue sampler) reports
//! [`StoreHealth::Recoverable`] once the disk takes a probe file again; the service then
//! drains and re-executes itself (`startup`), which reopens sled exactly as a restart
//! would. Nothing acknowledged is lost, because nothing is acknowledged before its
//! flush succeeded.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use super::SledStore;
use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::ids::{DomainId, MessageId, TemplateId, WebhookId};
use crate::domain::message::{IdempotencyRecord, Message};
use crate::domain::sender_domain::SenderDomain;
use crate::domain::status::EventType;
use crate::domain::suppression::Suppression;
use crate::domain::template::{Template, TemplateKey, TemplateVersion};
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};
use crate::store::{
    CancelOutcome, Lease, MessageWrite, PurgeCutoffs, PurgeReport, QueueDepth, ReportTarget, Store, StoreError,
    StoreHealth, StoredMime,
};

/// Bytes the disk must take before the store is reopened: room for a few large
/// messages, so that a disk with a sliver free does not make it restart in a loop.
const PROBE_BYTES: usize = 4 * 1024 * 1024;

pub struct ResilientStore {
    dir: PathBuf,
    /// Always `Some` but while being dropped (see `Drop`).
    sled: Option<SledStore>,
    /// Why writes are refused (`None` while they are not).
    broken: Mutex<Option<String>>,
}

impl ResilientStore {
    /// Opens sled in `dir` (see [`SledStore::open_with_cache`]).
    pub fn open(dir: PathBuf, cache_bytes: u64) -> Result<Self, StoreError> {
        let sled = SledStore::open_with_cache(&dir, cache_bytes)?;
        Ok(Self {
            dir,
            sled: Some(sled),
            broken: Mutex::new(None),
        })
    }

    fn broken(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.broken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call that reads: served while writes are refused too.
    fn read<T>(&self, call: impl FnOnce(&SledStore) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let sled = self
            .sled
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        self.noted(call(sled))
    }

    /// A call that writes: refused at once while the store is broken.
    fn write<T>(&self, call: impl FnOnce(&SledStore) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(reason) = self.broken().as_ref() {
            return Err(StoreError::Unavailable(reason.clone()));
        }
        self.read(call)
    }

    /// Remembers a write that failed for want of space: from now on writes are
    /// refused. (Other I/O errors are not something free space cures, so they stay the
    /// caller's, and never make the process restart.)
    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(err)) = &result {
            if !out_of_space(err) {
                return result;
            }
            let mut broken = self.broken();
            if broken.is_none() {
                tracing::error!(error = %err, "the store failed to write: refusing writes until the disk has room again");
                *broken = Some(err.to_string());
            }
        }
        result
    }

    /// Whether the disk takes `PROBE_BYTES` now (written, synced, removed).
    fn disk_has_room(&self) -> Result<(), std::io::Error> {
        let probe = self.dir.with_extension("space-probe");
        let written = std::fs::File::create(&probe).and_then(|mut file| {
            file.write_all(&vec![0u8; PROBE_BYTES])?;
            file.sync_all()
        });
        let removed = std::fs::remove_file(&probe);
        written.and(removed)
    }
}

/// `ENOSPC` or `EDQUOT`: the disk (or the quota) is full.
fn out_of_space(err: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl Drop for ResilientStore {
    /// A sled whose write failed blocks forever when dropped (it waits for a flush that
    /// never completes), so a broken one is forgotten, for the process's exit or
    /// re-exec to release; a healthy one is closed (and flushed) as usual.
    fn drop(&mut self) {
        if self.broken().is_some() {
            if let Some(sled) = self.sled.take() {
                std::mem::forget(sled);
            }
        }
    }
}

impl Store for ResilientStore {
    fn health(&self) -> StoreHealth {
        let Some(reason) = self.broken().clone() else {
            return StoreHealth::Writable;
        };
        match self.disk_has_room() {
            Ok(()) => StoreHealth::Recoverable(reason),
            Err(err) => StoreHealth::Failing(format!("{reason}; the disk still refuses writes: {err}")),
        }
    }

    fn write_messages(&self, writes: &[MessageWrite<'_>]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write(|s| s.write_messages(writes))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.write(|s| s.sync())
    }

    fn idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read(|s| s.idempotency(tenant, key))
    }

    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
        self.read(|s| s.message(tenant, id))
    }

    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
        self.read(|s| s.mime(tenant, id))
    }

    fn lease_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Lease>, StoreError> {
        self.write(|s| s.lease_due(now, max, admit))
    }

    fn recover_leases(&self) -> Result<usize, StoreError> {
        self.write(|s| s.recover_leases())
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|s| s.next_due())
    }

    fn create_template(&self, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError> {
        self.write(|s| s.create_template(template, version))
    }

    fn add_template_version(&self, template: &Template, version: &TemplateVersion) -> Result<(), StoreError> {
        self.write(|s| s.add_template_version(template, version))
    }

    fn template(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError> {
        self.read(|s| s.template(tenant, key))
    }

    fn template_version(&self, id: &TemplateId, version: u32) -> Result<Option<TemplateVersion>, StoreError> {
        self.read(|s| s.template_version(id, version))
    }

    fn template_versions(&self, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
        self.read(|s| s.template_versions(id))
    }

    fn list_templates(
        &self,
        tenant: &TenantId,
        before: Option<&TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, StoreError> {
        self.read(|s| s.list_templates(tenant, before, limit))
    }

    fn delete_template(&self, template: &Template) -> Result<(), StoreError> {
        self.write(|s| s.delete_template(template))
    }

    fn events(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        types: &[EventType],
        limit: usize,
    ) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
        self.read(|s| s.events(tenant, after, types, limit))
    }

    fn suppressed(&self, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
        self.read(|s| s.suppressed(tenant, emails))
    }

    fn suppression(&self, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError> {
        self.read(|s| s.suppression(tenant, email))
    }

    fn list_suppressions(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        self.read(|s| s.list_suppressions(tenant, after, limit))
    }

    fn put_suppression(&self, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError> {
        self.write(|s| s.put_suppression(tenant, suppression))
    }

    fn delete_suppression(&self, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
        self.write(|s| s.delete_suppression(tenant, email))
    }

    fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        self.write(|s| s.put_webhook(webhook))
    }

    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.read(|s| s.webhook(tenant, id))
    }

    fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        self.read(|s| s.webhooks(tenant))
    }

    fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        self.write(|s| s.delete_webhook(tenant, id))
    }

    fn put_domain(&self, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
        self.write(|s| s.put_domain(domain, create))
    }

    fn domain(&self, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError> {
        self.read(|s| s.domain(tenant, id_or_name))
    }

    fn domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
        self.read(|s| s.domains(tenant))
    }

    fn delete_domain(&self, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
        self.write(|s| s.delete_domain(tenant, id))
    }

    fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.write(|s| s.secret(name))
    }

    fn enqueue_deliveries(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        self.write(|s| s.enqueue_deliveries(entries))
    }

    fn lease_delivery(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<OutboxEntry>, StoreError> {
        self.write(|s| s.lease_delivery(now, lease))
    }

    fn finish_delivery(
        &self,
        leased: &OutboxEntry,
        next: Option<&OutboxEntry>,
        attempt: &DeliveryAttempt,
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        self.write(|s| s.finish_delivery(leased, next, attempt, webhook))
    }

    fn deliveries(&self, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.read(|s| s.deliveries(id, limit))
    }

    fn event(&self, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
        self.read(|s| s.event(tenant, id))
    }

    fn apply_report(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        apply: &mut dyn FnMut(&mut Message),
    ) -> Result<ReportTarget, StoreError> {
        self.write(|s| s.apply_report(tenant, id, apply))
    }

    fn save_report(&self, tenant: &TenantId, source: &str, matched: bool, raw: &[u8]) -> Result<String, StoreError> {
        self.write(|s| s.save_report(tenant, source, matched, raw))
    }

    fn list_messages(
        &self,
        tenant: &TenantId,
        before: Option<&MessageId>,
        limit: usize,
        budget: usize,
        wanted: &dyn Fn(&Message) -> bool,
    ) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
        self.read(|s| s.list_messages(tenant, before, limit, budget, wanted))
    }

    fn cancel(&self, tenant: &TenantId, id: &MessageId, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        self.write(|s| s.cancel(tenant, id, now))
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.read(|s| s.queue_depth())
    }

    fn fold_stats(&self, max: usize) -> Result<usize, StoreError> {
        self.write(|s| s.fold_stats(max))
    }

    fn stats(
        &self,
        tenant: &TenantId,
        series: &crate::stats::Series,
        slots: std::ops::Range<u32>,
    ) -> Result<Vec<crate::stats::StatsRow>, StoreError> {
        self.read(|s| s.stats(tenant, series, slots.clone()))
    }

    fn revoke_token(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        self.write(|s| s.revoke_token(jti, until))
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.write(|s| s.revoked_tokens(now))
    }

    fn count_messages(&self) -> Result<usize, StoreError> {
        self.read(|s| s.count_messages())
    }

    fn purge(&self, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError> {
        self.write(|s| s.purge(cutoffs, budget))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|s| s.check_writable())
    }
}
