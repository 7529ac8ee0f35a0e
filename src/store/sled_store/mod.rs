//! The sled implementation of [`Store`]: this file holds the trees and the
//! trait's dispatch; `messages`, `stream`, `catalog`, `stats` and `retention` hold the
//! work, as in `postgres`; `mime_log`, `depth` (queue depth counters), `group_flush`
//! and `resilient` (a full disk) are sled's own.
//!
//! # Layout
//!
//! Trees written on the hot path, and what each step of a message's life writes:
//!
//! | tree | key → value | accept | lease | outcome (release) |
//! |---|---|---|---|---|
//! | `messages` | id → the record (JSON) | insert | — (compared, not written) | rewrite |
//! | `mime` | id → a 26-byte reference into the MIME log | insert (the only write) | — | — |
//! | `queue` | due millis BE ++ id → status \0 tenant | insert | remove | insert when a retry is due |
//! | `leases` | id → nothing | — | insert | remove |
//! | `tenant_messages` | tenant \0 id → nothing | insert | — | — |
//! | `events` | tenant \0 position → the published event | — | — | one per new event |
//! | `event_ids` | event id → position | — | — | one per new event |
//! | `outbox` | due ++ entry → webhook delivery | — | — | one per subscribed endpoint |
//! | `idempotency` | tenant \0 key → request hash and message | with a key | — | — |
//! | `counters` | queue depth by state; live references per MIME segment | per batch | per batch | per batch |
//! | `stats_journal` | batch id → report counter changes | per batch | — | per batch |
//!
//! So an unsigned one-recipient message costs four keys at acceptance, two at its lease
//! and four at its outcome, plus two keys per writer batch whatever its size. A lease
//! does not rewrite the record (readers see `sending` from `leases`), and the record is
//! rewritten once per attempt.
//!
//! What a write costs is its bytes, not its keys: sled copies a leaf for each insert,
//! writes the whole leaf to its log every tenth change to it and on every split (past 16
//! entries), so a value is written about six times over. `cargo bench --bench
//! store_cycle` measured ~30 KB reaching the disk per message when the 2 KB MIME was a
//! value, 13 KB of them for the MIME; leaving out the `tenant_messages` key (no value)
//! changed nothing measurable. So the MIME is written once, to append-only segment
//! files of its own (`mime_log`), before the transaction that references it commits:
//! ~22 KB per message, and the writer's time per message 106 → 93 µs in that bench.
//! A `mime` value that is not a reference is MIME stored inline by an earlier version,
//! and is read as it is.
//!
//! Everything else (`parked`, templates, suppressions, webhooks, domains, reports,
//! revocations, `stats`, `meta`) is written off the hot path. Multi-tree transactions
//! keep the trees consistent; `flush` makes a write durable.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};
use sled::{Db, Tree};

use super::consequences::{self, Consequences, HookCache};
use super::{
    CancelOutcome, Lease, MessageWrite, PurgeCutoffs, PurgeReport, QueueDepth, ReportTarget, Store, StoreError,
    StoredMime,
};
use depth::DepthDelta;

mod catalog;
mod depth;
mod group_flush;
mod messages;
mod mime_log;
mod resilient;
mod retention;
mod stats;
mod stream;

use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::ids::{DomainId, WebhookId};
use crate::domain::ids::{MessageId, TemplateId};
use crate::domain::message::{IdempotencyKey, IdempotencyRecord, Message};
use crate::domain::sender_domain::SenderDomain;
use crate::domain::status::EventType;
use crate::domain::status::MessageStatus;
use crate::domain::suppression::Suppression;
use crate::domain::template::{Template, TemplateKey, TemplateVersion};
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};
use crate::stats::{Series, StatsDelta, StatsRow};
use mime_log::{MimeLog, MimeRef};
pub use resilient::ResilientStore;

pub struct SledStore {
    db: Db,
    messages: Tree,
    /// id → a [`MimeRef`] into `mime_log` (or, from earlier versions, the MIME itself).
    mime: Tree,
    mime_log: MimeLog,
    queue: Tree,
    leases: Tree,
    parked: Tree,
    templates: Tree,
    template_names: Tree,
    template_versions: Tree,
    events: Tree,
    event_ids: Tree,
    suppressions: Tree,
    webhooks: Tree,
    /// `tenant \0 domain id` → the sender domain with its keys.
    domains: Tree,
    /// `tenant \0 domain name` → its id.
    domain_names: Tree,
    /// Installation-wide values (`secret/<name>`).
    meta: Tree,
    outbox: Tree,
    webhook_deliveries: Tree,
    reports: Tree,
    /// Queue depth by state (see `depth`), changed with the entries it counts.
    counters: Tree,
    /// Report counters (see `stats`).
    stats: Tree,
    /// Counter changes written with the events, not yet folded into `stats`.
    stats_journal: Tree,
    /// Held while folding the journal and while reading counters, so a read never
    /// sees a change both in the journal and in the rows, or in neither.
    stats_fold: std::sync::Mutex<()>,
    /// `tenant \0 message id`: each tenant's messages, newest last.
    tenant_messages: Tree,
    /// `tenant \0 Idempotency-Key` → the request hash and the accepted message.
    idempotency: Tree,
    /// Revoked `jti` → expiry (Unix seconds, big-endian).
    revocations: Tree,
    /// Where retention walks resume (see `retention`).
    resume_points: std::sync::Mutex<retention::ResumePoints>,
    /// Held while stream positions are taken and committed (see `commit`).
    stream_order: std::sync::Mutex<()>,
    group_flush: group_flush::GroupFlush,
}

/// `tenant \0 rest`: keys that group one tenant's rows together in iteration order.
fn tenant_key(tenant: &TenantId, rest: &str) -> Vec<u8> {
    let mut key = tenant.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(rest.as_bytes());
    key
}

/// The key just past every `tenant_key(tenant, …)`: `tenant \x01`.
fn tenant_end(tenant: &TenantId) -> Vec<u8> {
    let mut key = tenant.as_str().as_bytes().to_vec();
    key.push(1);
    key
}

/// The tenant's keys before `before` (all of them when `None`), for newest-first pages.
fn tenant_range_before(tenant: &TenantId, before: Option<&str>) -> std::ops::Range<Vec<u8>> {
    let end = before.map_or_else(|| tenant_end(tenant), |b| tenant_key(tenant, b));
    tenant_key(tenant, "")..end
}

fn version_key(id: &TemplateId, version: u32) -> Vec<u8> {
    let mut key = id.as_str().as_bytes().to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ConflictableTransactionError<StoreError>> {
    serde_json::to_vec(value).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

fn queue_key(due: DateTime<Utc>, id: &MessageId) -> Vec<u8> {
    let millis = u64::try_from(due.timestamp_millis()).unwrap_or(0);
    let mut key = millis.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// A queue entry's value: the status the message was queued in and its tenant, so the
/// depth can be counted by state and a lease scan can pass over a tenant without
/// reading its messages.
fn queue_value(message: &Message) -> Vec<u8> {
    let mut value = message.status.as_str().as_bytes().to_vec();
    value.push(0);
    value.extend_from_slice(message.tenant.as_str().as_bytes());
    value
}

/// The status a queue value was queued in (for the depth counters).
pub(super) fn queued_status(value: &[u8]) -> &[u8] {
    queued_as(value).0
}

/// The status and tenant of a queue value (older entries hold the status alone).
fn queued_as(value: &[u8]) -> (&[u8], &str) {
    let mut parts = value.splitn(2, |b| *b == 0);
    let status = parts.next().unwrap_or_default();
    let tenant = parts
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .unwrap_or_default();
    (status, tenant)
}

/// sled's errors in the store's terms: an I/O error stays one (so a full disk is
/// recognised), anything else is the engine's.
impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// One write's outcome from `SledStore::commit_all`: written, or why not
/// ([`StoreError::Conflict`] when it lost a claim or a compare-and-swap).
fn wrote(outcome: Result<bool, StoreError>) -> Result<(), StoreError> {
    match outcome? {
        true => Ok(()),
        false => Err(StoreError::Conflict),
    }
}

fn id_of_queue_key(key: &[u8]) -> Result<MessageId, StoreError> {
    let raw = key
        .get(8..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or_default();
    MessageId::parse(raw).map_err(|_| StoreError::Missing(format!("queue key {key:?}")))
}

fn flatten<E: Into<StoreError>>(err: TransactionError<E>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e.into(),
        TransactionError::Storage(e) => e.into(),
    }
}

fn encode(message: &Message) -> Result<Vec<u8>, ConflictableTransactionError<StoreError>> {
    encode_json(message)
}

/// `due millis ++ entry id`: deliveries in due order.
fn outbox_key(entry: &OutboxEntry) -> Vec<u8> {
    let millis = u64::try_from(entry.due_at.timestamp_millis()).unwrap_or(0);
    let mut key = millis.to_be_bytes().to_vec();
    key.extend_from_slice(entry.entry_id.as_bytes());
    key
}

/// `tenant \0 position`: the tenant's event stream in position order.
fn stream_key(tenant: &TenantId, position: u64) -> Vec<u8> {
    let mut key = tenant.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The `counters` key of a MIME segment's live count: how many `mime` values point
/// into it (see `mime_log`).
fn segment_key(segment: u32) -> [u8; 17] {
    let mut key = *b"mime-segment/\0\0\0\0";
    key[13..].copy_from_slice(&segment.to_be_bytes());
    key
}

/// Adds `by` to a segment's live count inside the caller's transaction; the new count.
fn count_segment(counters: &TransactionalTree, segment: u32, by: i64) -> Staged<i64> {
    depth::add(counters, &segment_key(segment), by)
}

/// A segment's live count as committed.
fn live_count(counters: &Tree, segment: u32) -> Result<i64, StoreError> {
    depth::value(counters, &segment_key(segment))
}

/// sled's page cache unless configured (`storage.cache_bytes`).
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;

type Staged<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl SledStore {
    /// Opens (or creates) the store in `path`. sled holds a lock on the directory, so a
    /// second process on the same data dir fails here instead of corrupting it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// `open` with sled's page cache bounded to `cache_bytes` (sled's own default is
    /// 1 GiB, and a full queue fills it).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).cache_capacity(cache_bytes).open()?;
        let counters = db.open_tree("counters")?;
        let live = |segment| live_count(&counters, segment).map_or(true, |count| count > 0);
        let mime_log = MimeLog::open(&path.join("mime-log"), live).map_err(StoreError::Io)?;
        let store = Self {
            messages: db.open_tree("messages")?,
            mime: db.open_tree("mime")?,
            mime_log,
            queue: db.open_tree("queue")?,
            leases: db.open_tree("leases")?,
            parked: db.open_tree("parked")?,
            templates: db.open_tree("templates")?,
            template_names: db.open_tree("template_names")?,
            template_versions: db.open_tree("template_versions")?,
            events: db.open_tree("events")?,
            event_ids: db.open_tree("event_ids")?,
            suppressions: db.open_tree("suppressions")?,
            webhooks: db.open_tree("webhooks")?,
            domains: db.open_tree("domains")?,
            domain_names: db.open_tree("domain_names")?,
            meta: db.open_tree("meta")?,
            outbox: db.open_tree("outbox")?,
            webhook_deliveries: db.open_tree("webhook_deliveries")?,
            reports: db.open_tree("reports")?,
            tenant_messages: db.open_tree("tenant_messages")?,
            idempotency: db.open_tree("idempotency")?,
            revocations: db.open_tree("revocations")?,
            counters,
            stats: db.open_tree("stats")?,
            stats_journal: db.open_tree("stats_journal")?,
            stats_fold: std::sync::Mutex::default(),
            resume_points: std::sync::Mutex::default(),
            stream_order: std::sync::Mutex::new(()),
            group_flush: group_flush::GroupFlush::default(),
            db,
        };
        depth::initialise(&store.counters, &store.queue, &store.leases)?;
        Ok(store)
    }

    /// The message as readers see it: `sending` while a worker holds its lease (the
    /// lease does not rewrite the stored record, to keep leasing cheap).
    fn load(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        let Some(bytes) = self.messages.get(id.as_str())? else {
            return Ok(None);
        };
        let mut message: Message = decode(&bytes)?;
        if self.leases.contains_key(id.as_str())? {
            message.status = MessageStatus::Sending;
        }
        Ok(Some(message))
    }

    /// Makes every write so far durable, sharing the fsync with concurrent writers.
    fn flush(&self) -> Result<(), StoreError> {
        self.group_flush.flush(|| self.db.flush().map(drop))?;
        Ok(())
    }
}

impl Store for SledStore {
    fn sync(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn write_messages(&self, writes: &[MessageWrite<'_>]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        messages::write_messages(self, writes)
    }

    fn idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        messages::idempotency(self, tenant, key)
    }

    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
        messages::message(self, tenant, id)
    }

    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
        messages::mime(self, tenant, id)
    }

    fn purge(&self, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError> {
        self.purge_rows(cutoffs, budget)
    }

    fn lease_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Lease>, StoreError> {
        messages::lease_due(self, now, max, admit)
    }

    fn recover_leases(&self) -> Result<usize, StoreError> {
        messages::recover_leases(self)
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        messages::next_due(self)
    }

    fn create_template(&self, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError> {
        catalog::create_template(self, template, version)
    }

    fn add_template_version(&self, template: &Template, version: &TemplateVersion) -> Result<(), StoreError> {
        catalog::add_template_version(self, template, version)
    }

    fn template(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError> {
        catalog::template(self, tenant, key)
    }

    fn template_version(&self, id: &TemplateId, version: u32) -> Result<Option<TemplateVersion>, StoreError> {
        catalog::template_version(self, id, version)
    }

    fn template_versions(&self, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
        catalog::template_versions(self, id)
    }

    fn list_templates(
        &self,
        tenant: &TenantId,
        before: Option<&TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, StoreError> {
        catalog::list_templates(self, tenant, before, limit)
    }

    fn delete_template(&self, template: &Template) -> Result<(), StoreError> {
        catalog::delete_template(self, template)
    }

    fn events(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        types: &[EventType],
        limit: usize,
    ) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
        stream::events(self, tenant, after, types, limit)
    }

    fn suppressed(&self, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
        catalog::suppressed(self, tenant, emails)
    }

    fn suppression(&self, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError> {
        catalog::suppression(self, tenant, email)
    }

    fn list_suppressions(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        catalog::list_suppressions(self, tenant, after, limit)
    }

    fn put_suppression(&self, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError> {
        catalog::put_suppression(self, tenant, suppression)
    }

    fn delete_suppression(&self, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
        catalog::delete_suppression(self, tenant, email)
    }

    fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        stream::put_webhook(self, webhook)
    }

    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        stream::webhook(self, tenant, id)
    }

    fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        stream::webhooks(self, tenant)
    }

    fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        stream::delete_webhook(self, tenant, id)
    }

    fn put_domain(&self, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
        catalog::put_domain(self, domain, create)
    }

    fn domain(&self, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError> {
        catalog::domain(self, tenant, id_or_name)
    }

    fn domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
        catalog::domains(self, tenant)
    }

    fn delete_domain(&self, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
        catalog::delete_domain(self, tenant, id)
    }

    fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        catalog::secret(self, name)
    }

    fn enqueue_deliveries(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        stream::enqueue_deliveries(self, entries)
    }

    fn lease_delivery(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<OutboxEntry>, StoreError> {
        stream::lease_delivery(self, now, lease)
    }

    fn finish_delivery(
        &self,
        leased: &OutboxEntry,
        next: Option<&OutboxEntry>,
        attempt: &DeliveryAttempt,
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        stream::finish_delivery(self, leased, next, attempt, webhook)
    }

    fn deliveries(&self, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        stream::deliveries(self, id, limit)
    }

    fn event(&self, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
        stream::event(self, tenant, id)
    }

    fn apply_report(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        apply: &mut dyn FnMut(&mut Message),
    ) -> Result<ReportTarget, StoreError> {
        messages::apply_report(self, tenant, id, apply)
    }

    fn save_report(&self, tenant: &TenantId, source: &str, matched: bool, raw: &[u8]) -> Result<String, StoreError> {
        catalog::save_report(self, tenant, source, matched, raw)
    }

    fn list_messages(
        &self,
        tenant: &TenantId,
        before: Option<&MessageId>,
        limit: usize,
        budget: usize,
        wanted: &dyn Fn(&Message) -> bool,
    ) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
        messages::list_messages(self, tenant, before, limit, budget, wanted)
    }

    fn cancel(&self, tenant: &TenantId, id: &MessageId, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        messages::cancel(self, tenant, id, now)
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        messages::queue_depth(self)
    }

    fn stats(
        &self,
        tenant: &TenantId,
        series: &Series,
        slots: std::ops::Range<u32>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        let _folding = self
            .stats_fold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stats::read(&self.stats, &self.stats_journal, tenant, series, slots)
    }

    fn fold_stats(&self, max: usize) -> Result<usize, StoreError> {
        let _folding = self
            .stats_fold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stats::fold(&self.stats, &self.stats_journal, max)
    }

    fn revoke_token(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        catalog::revoke_token(self, jti, until)
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        catalog::revoked_tokens(self, now)
    }

    fn count_messages(&self) -> Result<usize, StoreError> {
        messages::count_messages(self)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.db.insert("readyz", Utc::now().to_rfc3339().as_bytes())?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::message;

    /// Reopens a store just dropped in this process: sled's flusher thread may hold
    /// the directory lock for a moment after the drop.
    fn reopen(path: &Path) -> SledStore {
        for _ in 0..200 {
            if let Ok(store) = SledStore::open(path) {
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the store could not be reopened");
    }

    /// A temporary data directory; each store opened over it sees what the last wrote.
    struct SledBackend(tempfile::TempDir);

    impl crate::store::contract::Backend for SledBackend {
        fn open(&self) -> Box<dyn Store> {
            Box::new(reopen(self.0.path()))
        }
    }

    mod contract {
        use super::SledBackend;

        crate::store_contract_tests!(SledBackend(tempfile::tempdir().unwrap()));
    }

    fn assert_counted(store: &SledStore, step: &str) {
        let counted = depth::count(&store.queue, &store.leases).unwrap();
        assert_eq!(store.queue_depth().unwrap(), counted, "after {step}");
    }

    #[test]
    fn the_depth_counters_equal_a_full_count_through_every_change_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (now, later) = (Utc::now(), Utc::now() + chrono::Duration::hours(1));
        let (queued, mut scheduled, cancelled) = (message(), message(), message());
        scheduled.status = MessageStatus::Scheduled;
        scheduled.next_attempt_at = Some(later);
        {
            let store = SledStore::open(dir.path()).unwrap();
            for msg in [&queued, &scheduled, &cancelled] {
                store.accept(msg, b"mime", None).unwrap();
            }
            assert_counted(&store, "accepts");
            assert_eq!(store.queue_depth().unwrap().total(), 3);
            store.cancel(&cancelled.tenant, &cancelled.id, now).unwrap();
            assert_counted(&store, "a cancel");
            let mut leased = store.lease_due(Utc::now(), 10, &mut |_| true).unwrap();
            assert_eq!(leased.len(), 1);
            assert_counted(&store, "a lease");
            assert_eq!(store.queue_depth().unwrap().sending, 1);
            let mut deferred = leased.remove(0).message;
            deferred.status = MessageStatus::Deferred;
            deferred.next_attempt_at = Some(later);
            store.release(&deferred).unwrap();
            assert_counted(&store, "a deferral");
            assert_eq!(
                (
                    store.queue_depth().unwrap().deferred,
                    store.queue_depth().unwrap().sending
                ),
                (1, 0)
            );
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path());
        store.recover_leases().unwrap();
        assert_counted(&store, "a restart");
    }

    /// A leased message as delivery records it once the relay took it.
    fn sent(mut sent: Message) -> Message {
        let reply = crate::domain::message::SmtpReply {
            code: Some(250),
            enhanced: None,
            diagnostic: "ok".into(),
        };
        sent.record_outcome(
            0,
            crate::domain::message::DeliveryOutcome::Sent(reply),
            "relay",
            false,
            Utc::now(),
        );
        sent.finish_attempt(None);
        sent
    }

    /// Leases the next due message and records it sent.
    fn deliver(store: &SledStore) {
        let leased = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        store.release(&sent(leased.message)).unwrap();
    }

    /// A purge of the MIME of finished messages older than `mime` (and of nothing else).
    fn purge_mime(store: &SledStore, mime: DateTime<Utc>) -> PurgeReport {
        let past = Utc::now() - chrono::Duration::hours(1);
        let cutoffs = PurgeCutoffs {
            history: past,
            mime,
            stats: past,
        };
        store.purge(cutoffs, 1000).unwrap()
    }

    fn segments(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path.join("mime-log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn mime_lives_in_the_log_until_the_last_message_pointing_into_a_segment_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (first, second) = (message(), message());
        store.accept(&first, b"Subject: first\r\n\r\nbody", None).unwrap();
        store.accept(&second, b"Subject: second\r\n\r\nbody", None).unwrap();
        assert_eq!(
            store.mime.get(first.id.as_str()).unwrap().unwrap().len(),
            26,
            "sled holds a reference, not the bytes"
        );
        deliver(&store);
        drop(store);

        let store = reopen(dir.path());
        assert_eq!(segments(dir.path()), ["0000000001.seg", "0000000002.seg"]);
        purge_mime(&store, Utc::now() + chrono::Duration::minutes(1));
        assert_eq!(store.mime(&first.tenant, &first.id).unwrap(), Some(StoredMime::Expired));
        assert_eq!(
            segments(dir.path()),
            ["0000000001.seg", "0000000002.seg"],
            "the second message is not finished, so its segment stays"
        );
        let lease = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        assert_eq!(lease.mime, b"Subject: second\r\n\r\nbody", "read back after a restart");
        store.release(&sent(lease.message)).unwrap();
        purge_mime(&store, Utc::now() + chrono::Duration::minutes(1));
        assert_eq!(
            segments(dir.path()),
            ["0000000002.seg"],
            "nothing points into the first segment; the current one stays"
        );
        drop(store);
        reopen(dir.path());
        assert_eq!(
            segments(dir.path()),
            ["0000000003.seg"],
            "an empty segment from an earlier run goes at the next start"
        );
    }

    #[test]
    fn mime_stored_inline_by_an_earlier_version_still_reads_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let msg = message();
        store.accept(&msg, b"x", None).unwrap();
        store
            .mime
            .insert(msg.id.as_str(), b"Subject: inline\r\n\r\nbody")
            .unwrap();
        assert_eq!(
            store.mime(&msg.tenant, &msg.id).unwrap(),
            Some(StoredMime::Bytes(b"Subject: inline\r\n\r\nbody".to_vec()))
        );
        let lease = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        assert_eq!(lease.mime, b"Subject: inline\r\n\r\nbody");
        store.release(&sent(lease.message)).unwrap();
        let purged = purge_mime(&store, Utc::now() + chrono::Duration::minutes(1));
        assert_eq!(purged.deleted, 1);
        assert_eq!(store.mime(&msg.tenant, &msg.id).unwrap(), Some(StoredMime::Expired));
    }

    #[test]
    fn a_purge_deletes_finished_history_and_keeps_what_still_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (done, mut waiting) = (message(), message());
        waiting.status = MessageStatus::Scheduled;
        waiting.next_attempt_at = Some(Utc::now() + chrono::Duration::hours(1));
        for msg in [&done, &waiting] {
            store.accept(msg, b"mime", None).unwrap();
        }
        deliver(&store);
        store.save_report(&done.tenant, "dsn", false, b"raw").unwrap();
        let later = Utc::now() + chrono::Duration::hours(2);
        let soon = Utc::now() + chrono::Duration::minutes(1);

        let mime_only = purge_mime(&store, soon);
        assert_eq!(mime_only.deleted, 1, "only the finished message's MIME: {mime_only:?}");
        assert_eq!(store.mime(&done.tenant, &done.id).unwrap(), Some(StoredMime::Expired));
        assert!(matches!(
            store.mime(&waiting.tenant, &waiting.id).unwrap(),
            Some(StoredMime::Bytes(_))
        ));

        let everything = store
            .purge(
                PurgeCutoffs {
                    history: later,
                    mime: later,
                    stats: later,
                },
                1000,
            )
            .unwrap();
        assert!(
            everything.deleted >= 3,
            "message, its events, the report: {everything:?}"
        );
        assert!(store.message(&done.tenant, &done.id).unwrap().is_none());
        assert!(
            store.message(&waiting.tenant, &waiting.id).unwrap().is_some(),
            "a scheduled message stays"
        );
        assert_eq!(store.reports.len(), 0);
        assert!(store.events.iter().all(|e| {
            let event: PublishedEvent = decode(&e.unwrap().1).unwrap();
            event.data.message_id == waiting.id.as_str()
        }));
        assert_eq!(store.count_messages().unwrap(), 1);
        let idle = store
            .purge(
                PurgeCutoffs {
                    history: later,
                    mime: later,
                    stats: later,
                },
                1000,
            )
            .unwrap();
        assert_eq!(idle.deleted, 0);
        assert!(
            idle.examined <= 3,
            "a round with nothing to do reads only what it keeps: {idle:?}"
        );
    }

    #[test]
    fn a_store_from_before_the_counters_is_counted_once_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.accept(&message(), b"mime", None).unwrap();
            store.counters.clear().unwrap();
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.queue_depth().unwrap().queued, 1);
    }

    #[test]
    fn a_lease_does_not_hand_out_a_copy_older_than_a_report_applied_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let msg = message();
        store.accept(&msg, b"mime", None).unwrap();
        let (key, _) = store.queue.first().unwrap().unwrap();
        let candidate = store.lease_candidate(&key).unwrap();
        let applied = store
            .apply_report(&msg.tenant, &msg.id, &mut |m| m.tags.push("changed".into()))
            .unwrap();
        assert_eq!(applied, ReportTarget::Applied);
        assert_eq!(store.try_lease(&[candidate]).unwrap(), [false]);
        let fresh = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        assert_eq!(fresh.message.tags, ["changed"], "the next scan reads it afresh");
    }

    #[test]
    fn a_write_that_cannot_be_planned_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // An event to publish makes the write read the tenant's webhooks.
        let mut broken = message();
        broken.suppress(0, Utc::now());
        let mut fine = message();
        fine.suppress(0, Utc::now());
        fine.tenant = TenantId::parse("other").unwrap();
        store
            .webhooks
            .insert(tenant_key(&broken.tenant, "wh_garbage"), b"not json".as_slice())
            .unwrap();
        let written = store
            .write_messages(&[
                MessageWrite::Accept {
                    message: &broken,
                    mime: b"m",
                    key: None,
                },
                MessageWrite::Accept {
                    message: &fine,
                    mime: b"m",
                    key: None,
                },
            ])
            .unwrap();
        assert!(matches!(written[0], Err(StoreError::Corrupt(_))), "{written:?}");
        assert!(written[1].is_ok());
        assert!(store.message(&broken.tenant, &broken.id).unwrap().is_none());
        assert!(store.message(&fine.tenant, &fine.id).unwrap().is_some());
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn an_unusable_queue_entry_is_parked_instead_of_blocking_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let ghost = MessageId::generate();
        store
            .queue
            .insert(queue_key(Utc::now() - chrono::Duration::seconds(5), &ghost), &[])
            .unwrap();
        store.queue.insert([&[0u8; 8][..], b"garbage"].concat(), &[]).unwrap();
        assert!(store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().is_empty());
        assert_eq!(store.parked.len(), 2);
        assert!(store.queue.is_empty());
    }
}
