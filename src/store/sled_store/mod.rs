//! The sled implementation of [`Store`].
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
use super::depth::{self, DepthDelta};
use super::{
    CancelOutcome, Lease, MessageWrite, PurgeCutoffs, PurgeReport, QueueDepth, ReportTarget, Store, StoreError,
    StoredMime,
};

mod mime_log;
mod retention;
mod stats;
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
    group_flush: super::group_flush::GroupFlush,
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

/// Which write of a message [`SledStore::commit`] performs.
enum Commit<'a> {
    /// First write: with the MIME, queued when due, claiming the idempotency key.
    Accept {
        mime: &'a [u8],
        key: Option<&'a IdempotencyKey>,
    },
    /// Mid-attempt: the lease stays.
    Progress,
    /// End of an attempt: the lease ends, queued again when a retry is due.
    Release,
    /// Compare-and-swap (later reports, cancellation): only if nobody leased or
    /// changed the message since `read`; with `dequeue`, its queue entry goes too.
    Swap { read: &'a [u8], dequeue: bool },
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

/// Due entries a lease scan may pass over (tenants the caller does not admit now)
/// before it gives up: the scan reads queue entries only, so this is cheap.
const LEASE_SKIP_BUDGET: usize = 10_000;

/// A due queue entry read for leasing: its key, the message record as read, the lease.
struct Candidate {
    key: sled::IVec,
    read: sled::IVec,
    lease: Lease,
}

/// What a write of a message adds besides the message, with the stream position of
/// each of its fresh events (see `SledStore::consequences`).
struct Positioned {
    positions: Vec<u64>,
    planned: Consequences,
}

/// The trees a message write touches, inside one transaction.
struct Staging<'t> {
    messages: &'t TransactionalTree,
    mimes: &'t TransactionalTree,
    queue: &'t TransactionalTree,
    leases: &'t TransactionalTree,
    events: &'t TransactionalTree,
    event_ids: &'t TransactionalTree,
    suppressions: &'t TransactionalTree,
    outbox: &'t TransactionalTree,
    by_tenant: &'t TransactionalTree,
    keys: &'t TransactionalTree,
    /// What this transaction changes in the depth counters.
    depth: DepthDelta,
    /// What it adds to the report counters.
    stats: RefCell<StatsDelta>,
    /// What it adds to each MIME segment's live count.
    segments: RefCell<std::collections::BTreeMap<u32, i64>>,
}

type Staged<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Staging<'_> {
    /// Stages one write; `false` when it must write nothing (see `commit_all`).
    fn write(
        &self,
        message: &Message,
        change: &Commit<'_>,
        positioned: &Positioned,
        stored: Option<&MimeRef>,
    ) -> Staged<bool> {
        let tenant = &message.tenant;
        let requeue = match *change {
            Commit::Accept { key, .. } => {
                let stored = stored.ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::Missing(format!("MIME of {}", message.id)))
                })?;
                if let Some(key) = key {
                    if !self.claim(message, key)? {
                        return Ok(false);
                    }
                }
                self.mimes.insert(message.id.as_str(), &stored.encode())?;
                *self.segments.borrow_mut().entry(stored.segment).or_default() += 1;
                self.by_tenant.insert(tenant_key(tenant, message.id.as_str()), &[])?;
                true
            }
            Commit::Progress => false,
            Commit::Release => {
                if self.leases.remove(message.id.as_str())?.is_some() {
                    self.depth.lease(-1);
                }
                true
            }
            Commit::Swap { read, dequeue } => {
                let unchanged = self
                    .messages
                    .get(message.id.as_str())?
                    .is_some_and(|now| now.as_ref() == read);
                if self.leases.get(message.id.as_str())?.is_some() || !unchanged {
                    return Ok(false);
                }
                if dequeue {
                    let stored: Message = serde_json::from_slice(read)
                        .map_err(|e| ConflictableTransactionError::Abort(StoreError::from(e)))?;
                    if let Some(due) = stored.next_attempt_at {
                        if let Some(entry) = self.queue.remove(queue_key(due, &message.id))? {
                            self.depth.queue_entry(&entry, -1);
                        }
                    }
                }
                false
            }
        };
        self.messages.insert(message.id.as_str(), encode(message)?)?;
        if let (true, Some(due)) = (requeue, message.next_attempt_at) {
            let value = queue_value(message);
            if let Some(replaced) = self.queue.insert(queue_key(due, &message.id), value.as_slice())? {
                self.depth.queue_entry(&replaced, -1);
            }
            self.depth.queue_entry(&value, 1);
        }
        let planned = &positioned.planned;
        for (position, event) in positioned.positions.iter().zip(&planned.fresh) {
            self.events.insert(stream_key(tenant, *position), encode_json(event)?)?;
            self.event_ids.insert(event.id.as_str(), &position.to_be_bytes())?;
        }
        for suppression in &planned.implied {
            let key = tenant_key(tenant, &suppression.email);
            if self.suppressions.get(&key)?.is_none() {
                self.suppressions.insert(key, encode_json(suppression)?)?;
            }
        }
        for entry in &planned.deliveries {
            self.outbox.insert(outbox_key(entry), encode_json(entry)?)?;
        }
        self.stats.borrow_mut().merge(&planned.stats);
        Ok(true)
    }

    /// Claims the idempotency key for `message`; `false` when another request holds it.
    fn claim(&self, message: &Message, key: &IdempotencyKey) -> Staged<bool> {
        let slot = tenant_key(&message.tenant, &key.key);
        let held = match self.keys.get(&slot)? {
            Some(raw) => serde_json::from_slice::<IdempotencyRecord>(&raw)
                .map(|r| r.is_fresh(message.created_at))
                .unwrap_or(false),
            None => false,
        };
        if held {
            return Ok(false);
        }
        let record = IdempotencyRecord {
            request_hash: key.request_hash.clone(),
            created_at: message.created_at,
            accepted: message.clone(),
        };
        self.keys.insert(slot, encode_json(&record)?)?;
        Ok(true)
    }
}

impl SledStore {
    /// Writes messages and everything that follows from each in one transaction: its
    /// MIME and queue entry (accept), its lease (release), its new events in the
    /// tenant's stream, and the suppressions those events imply. Durable after the next
    /// flush. Per write, `false` when it wrote nothing: an accept whose idempotency key
    /// another request holds, or a swap that lost to a concurrent change; or the error
    /// that kept that one write out (its webhooks could not be read, say).
    ///
    /// One transaction for many writes matters: sled writes its log buffer out twice
    /// for every transaction, whatever its size.
    ///
    /// Stream positions come from one counter, and the commit holds `stream_order`
    /// from taking positions until the transaction is applied, so a reader never sees
    /// a position before a smaller one that is still to come.
    fn commit_all(&self, writes: &[(&Message, Commit<'_>)]) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let order = self
            .stream_order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut planned_ids = HashSet::new();
        let read_hooks = |tenant: &TenantId| self.webhooks(tenant);
        let mut hooks = HookCache::new(&read_hooks);
        let planned: Vec<Result<Positioned, StoreError>> = writes
            .iter()
            .map(|(message, change)| {
                let accepted = matches!(change, Commit::Accept { .. });
                self.consequences(message, accepted, &mut planned_ids, &mut hooks)
            })
            .collect();
        // The batch's MIME goes to the log and to disk before any reference to it
        // commits (see `mime_log`).
        let stored = self.append_mime(writes)?;
        // The counter changes of the whole batch go in as one journal entry: one key
        // written instead of a dozen counter rows read and rewritten (see `stats`).
        let journal_entry = self.db.generate_id()?;
        let written = (
            &self.messages,
            &self.mime,
            &self.queue,
            &self.leases,
            &self.events,
            &self.event_ids,
            &self.suppressions,
            &self.outbox,
            &self.tenant_messages,
            &self.idempotency,
            &self.counters,
            &self.stats_journal,
        )
            .transaction(
                |(
                    messages,
                    mimes,
                    queue,
                    leases,
                    events,
                    event_ids,
                    suppressions,
                    outbox,
                    by_tenant,
                    keys,
                    counters,
                    journal,
                )| {
                    let trees = Staging {
                        messages,
                        mimes,
                        queue,
                        leases,
                        events,
                        event_ids,
                        suppressions,
                        outbox,
                        by_tenant,
                        keys,
                        depth: DepthDelta::default(),
                        stats: RefCell::default(),
                        segments: RefCell::default(),
                    };
                    let written = writes
                        .iter()
                        .zip(&planned)
                        .zip(&stored)
                        .map(|(((message, change), planned), stored)| match planned {
                            Ok(planned) => trees.write(message, change, planned, stored.as_ref()).map(Some),
                            Err(_) => Ok(None),
                        })
                        .collect::<Result<Vec<Option<bool>>, _>>()?;
                    trees.depth.apply(counters)?;
                    for (segment, added) in trees.segments.borrow().iter() {
                        count_segment(counters, *segment, *added)?;
                    }
                    let counted = trees.stats.borrow();
                    if !counted.is_empty() {
                        journal.insert(&journal_entry.to_be_bytes(), counted.encode())?;
                    }
                    Ok(written)
                },
            )
            .map_err(flatten)?;
        drop(order);
        Ok(written
            .into_iter()
            .zip(planned)
            .map(|(written, planned)| match (written, planned) {
                (Some(written), _) => Ok(written),
                (None, Err(err)) => Err(err),
                (None, Ok(_)) => Err(StoreError::Conflict),
            })
            .collect())
    }

    /// Appends the MIME of each accept in `writes` to the log and syncs it; a reference
    /// per write (`None` for the other kinds of write).
    fn append_mime(&self, writes: &[(&Message, Commit<'_>)]) -> Result<Vec<Option<MimeRef>>, StoreError> {
        let mimes: Vec<&[u8]> = writes
            .iter()
            .filter_map(|(_, change)| match change {
                Commit::Accept { mime, .. } => Some(*mime),
                _ => None,
            })
            .collect();
        if mimes.is_empty() {
            return Ok(vec![None; writes.len()]);
        }
        let mut refs = self.mime_log.append(&mimes).map_err(StoreError::Io)?.into_iter();
        self.mime_log.sync().map_err(StoreError::Io)?;
        Ok(writes
            .iter()
            .map(|(_, change)| match change {
                Commit::Accept { .. } => refs.next(),
                _ => None,
            })
            .collect())
    }

    /// The MIME a `mime` value stands for; `None` when its bytes are gone.
    fn resolve_mime(&self, id: &MessageId, value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(at) = MimeRef::decode(value) else {
            return Ok(Some(value.to_vec()));
        };
        let mime = self.mime_log.read(&at).map_err(StoreError::Io)?;
        if mime.is_none() {
            tracing::error!(message_id = %id, segment = at.segment, "the MIME log does not hold this message's MIME");
        }
        Ok(mime)
    }

    /// Deletes the MIME segments whose live count a purge brought to zero and that are
    /// still at zero: under `stream_order`, which `commit_all` holds from appending a
    /// batch's MIME until its references commit, so no batch can be between the two.
    fn delete_dead_segments(&self, dead: &[u32]) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        let _order = self
            .stream_order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for segment in dead {
            if live_count(&self.counters, *segment)? <= 0 {
                self.mime_log.delete(*segment).map_err(StoreError::Io)?;
            }
        }
        Ok(())
    }

    /// One write of [`Self::commit_all`]; [`StoreError::Conflict`] when it wrote nothing.
    fn commit(&self, message: &Message, change: Commit<'_>) -> Result<(), StoreError> {
        self.commit_all(&[(message, change)])?
            .pop()
            .map_or(Err(StoreError::Conflict), wrote)
    }

    /// What writing `message` adds besides itself (see `consequences`), with a stream
    /// position for each new event: its events not yet in the stream (nor in `planned`,
    /// the events of earlier writes of the same batch).
    fn consequences(
        &self,
        message: &Message,
        accepted: bool,
        planned: &mut HashSet<String>,
        hooks: &mut HookCache<'_>,
    ) -> Result<Positioned, StoreError> {
        let mut fresh = Vec::new();
        for event in &message.events {
            if !self.event_ids.contains_key(event.id.as_str())? && planned.insert(event.id.as_str().to_owned()) {
                fresh.push(event);
            }
        }
        let planned = consequences::plan(message, fresh.into_iter(), accepted, hooks)?;
        let positions = planned
            .fresh
            .iter()
            .map(|_| self.db.generate_id())
            .collect::<Result<_, _>>()?;
        Ok(Positioned { positions, planned })
    }

    /// [`Self::commit`], then durable.
    fn commit_durably(&self, message: &Message, change: Commit<'_>) -> Result<(), StoreError> {
        self.commit(message, change)?;
        self.flush()
    }

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
            group_flush: super::group_flush::GroupFlush::default(),
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

    /// Keys of `tenant_messages` in `range`, newest first.
    fn by_tenant_range(
        &self,
        range: std::ops::Range<Vec<u8>>,
    ) -> impl Iterator<Item = Result<sled::IVec, sled::Error>> {
        self.tenant_messages
            .range(range)
            .rev()
            .map(|entry| entry.map(|(key, _)| key))
    }

    /// The message and MIME behind one queue entry, checked to be leasable.
    fn lease_candidate(&self, key: &[u8]) -> Result<Candidate, StoreError> {
        let id = id_of_queue_key(key)?;
        let mime = self
            .mime
            .get(id.as_str())?
            .map(|value| self.resolve_mime(&id, &value))
            .transpose()
            // One segment that cannot be read parks its messages instead of stopping
            // every lease scan at them.
            .map_err(|err| match err {
                StoreError::Io(io) => StoreError::Missing(format!("the MIME of {id} (unreadable: {io})")),
                other => other,
            })?
            .flatten()
            .ok_or_else(|| StoreError::Missing(format!("mime of {id}")))?;
        let bytes = self
            .messages
            .get(id.as_str())?
            .ok_or_else(|| StoreError::Missing(id.to_string()))?;
        let mut message: Message = decode(&bytes)?;
        message.status = MessageStatus::Sending;
        Ok(Candidate {
            key: sled::IVec::from(key),
            read: bytes,
            lease: Lease { message, mime },
        })
    }

    /// Moves a queue entry that cannot be delivered (undecodable, or its message is
    /// gone) to `parked`, with the reason, so that it cannot block the queue.
    fn park(&self, key: &[u8], reason: &StoreError) -> Result<(), StoreError> {
        tracing::error!(key = ?String::from_utf8_lossy(key.get(8..).unwrap_or_default()), error = %reason, "parked an unusable queue entry");
        let reason = reason.to_string();
        (&self.queue, &self.parked, &self.counters)
            .transaction(|(queue, parked, counters)| {
                parked.insert(key, reason.as_bytes())?;
                if let Some(entry) = queue.remove(key)? {
                    let depth = DepthDelta::default();
                    depth.queue_entry(&entry, -1);
                    depth.apply(counters)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)
    }

    /// Moves the queue entries still there into `leases`, in one transaction; `false`
    /// for an entry another caller took meanwhile, or whose message changed since it
    /// was read (a report applied in between: the next scan reads it afresh).
    fn try_lease(&self, candidates: &[Candidate]) -> Result<Vec<bool>, StoreError> {
        (&self.queue, &self.leases, &self.messages, &self.counters)
            .transaction(|(queue, leases, messages, counters)| {
                let depth = DepthDelta::default();
                let mut taken = Vec::with_capacity(candidates.len());
                for candidate in candidates {
                    let id = candidate.lease.message.id.as_str();
                    let unchanged = messages.get(id)?.is_some_and(|now| now == candidate.read);
                    let removed = if unchanged { queue.remove(&candidate.key)? } else { None };
                    if let Some(entry) = &removed {
                        depth.queue_entry(entry, -1);
                        if leases.insert(id, &[])?.is_none() {
                            depth.lease(1);
                        }
                    }
                    taken.push(removed.is_some());
                }
                depth.apply(counters)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(taken)
            })
            .map_err(flatten)
    }
}

impl Store for SledStore {
    fn sync(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn write_messages(&self, writes: &[MessageWrite<'_>]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let changes: Vec<(&Message, Commit<'_>)> = writes
            .iter()
            .map(|write| match *write {
                MessageWrite::Accept { message, mime, key } => (message, Commit::Accept { mime, key }),
                MessageWrite::Progress(message) => (message, Commit::Progress),
                MessageWrite::Release(message) => (message, Commit::Release),
            })
            .collect();
        Ok(self.commit_all(&changes)?.into_iter().map(wrote).collect())
    }

    fn idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let Some(raw) = self.idempotency.get(tenant_key(tenant, key))? else {
            return Ok(None);
        };
        let record: IdempotencyRecord = decode(&raw)?;
        Ok(record.is_fresh(Utc::now()).then_some(record))
    }

    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
        Ok(self.load(id)?.filter(|m| &m.tenant == tenant))
    }

    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
        if self.message(tenant, id)?.is_none() {
            return Ok(None);
        }
        let stored = match self.mime.get(id.as_str())? {
            Some(value) => self.resolve_mime(id, &value)?,
            None => None,
        };
        Ok(Some(stored.map_or(StoredMime::Expired, StoredMime::Bytes)))
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
        let end = u64::try_from(now.timestamp_millis())
            .unwrap_or(0)
            .saturating_add(1)
            .to_be_bytes();
        let mut candidates = Vec::new();
        for entry in self
            .queue
            .range(..end.as_slice())
            .take(max.saturating_add(LEASE_SKIP_BUDGET))
        {
            if candidates.len() >= max {
                break;
            }
            let (key, value) = entry?;
            if !admit(queued_as(&value).1) {
                continue;
            }
            match self.lease_candidate(&key) {
                Ok(candidate) => candidates.push(candidate),
                Err(err @ (StoreError::Io(_) | StoreError::Engine(_))) => return Err(err),
                Err(unusable) => self.park(&key, &unusable)?,
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let taken = self.try_lease(&candidates)?;
        Ok(candidates
            .into_iter()
            .zip(taken)
            .filter_map(|(candidate, won)| won.then_some(candidate.lease))
            .collect())
    }

    fn recover_leases(&self) -> Result<usize, StoreError> {
        let now = Utc::now();
        let mut recovered = 0;
        for entry in self.leases.iter() {
            let (key, _) = entry?;
            let id = MessageId::parse(&String::from_utf8_lossy(&key))
                .map_err(|_| StoreError::Missing(format!("lease {key:?}")))?;
            if let Some(mut message) = self.load(&id)? {
                message.status = message.settled_status();
                message.next_attempt_at = Some(now);
                self.release(&message)?;
                recovered += 1;
            } else {
                (&self.leases, &self.counters)
                    .transaction(|(leases, counters)| {
                        if leases.remove(&key)?.is_some() {
                            let depth = DepthDelta::default();
                            depth.lease(-1);
                            depth.apply(counters)?;
                        }
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(flatten)?;
            }
        }
        Ok(recovered)
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let Some((key, _)) = self.queue.first()? else {
            return Ok(None);
        };
        let millis: [u8; 8] = key.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default();
        let millis = i64::try_from(u64::from_be_bytes(millis)).unwrap_or(i64::MAX);
        Ok(Utc.timestamp_millis_opt(millis).single())
    }

    fn create_template(&self, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError> {
        let name_key = tenant_key(&template.tenant, template.name.as_str());
        let created = (&self.templates, &self.template_names, &self.template_versions)
            .transaction(|(templates, names, versions)| {
                if names.get(&name_key)?.is_some() {
                    return Ok(false);
                }
                names.insert(name_key.as_slice(), template.id.as_str().as_bytes())?;
                templates.insert(
                    tenant_key(&template.tenant, template.id.as_str()),
                    encode_json(template)?,
                )?;
                versions.insert(version_key(&template.id, version.version), encode_json(version)?)?;
                Ok(true)
            })
            .map_err(flatten)?;
        if created {
            self.flush()?;
        }
        Ok(created)
    }

    fn add_template_version(&self, template: &Template, version: &TemplateVersion) -> Result<(), StoreError> {
        (&self.templates, &self.template_versions)
            .transaction(|(templates, versions)| {
                templates.insert(
                    tenant_key(&template.tenant, template.id.as_str()),
                    encode_json(template)?,
                )?;
                versions.insert(version_key(&template.id, version.version), encode_json(version)?)?;
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    fn template(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError> {
        let id = match key {
            TemplateKey::Id(id) => id.clone(),
            TemplateKey::Name(name) => match self.template_names.get(tenant_key(tenant, name.as_str()))? {
                Some(raw) => TemplateId::parse(&String::from_utf8_lossy(&raw))
                    .map_err(|_| StoreError::Missing(format!("template name {}", name.as_str())))?,
                None => return Ok(None),
            },
        };
        self.templates
            .get(tenant_key(tenant, id.as_str()))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn template_version(&self, id: &TemplateId, version: u32) -> Result<Option<TemplateVersion>, StoreError> {
        self.template_versions
            .get(version_key(id, version))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn template_versions(&self, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
        self.template_versions
            .scan_prefix(id.as_str().as_bytes())
            .rev()
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn list_templates(
        &self,
        tenant: &TenantId,
        before: Option<&TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, StoreError> {
        let range = tenant_range_before(tenant, before.map(|id| id.as_str()));
        self.templates
            .range(range)
            .rev()
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn delete_template(&self, template: &Template) -> Result<(), StoreError> {
        let version_keys: Vec<_> = self
            .template_versions
            .scan_prefix(template.id.as_str().as_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        (&self.templates, &self.template_names, &self.template_versions)
            .transaction(|(templates, names, versions)| {
                templates.remove(tenant_key(&template.tenant, template.id.as_str()))?;
                names.remove(tenant_key(&template.tenant, template.name.as_str()))?;
                for key in &version_keys {
                    versions.remove(key)?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    fn events(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        types: &[EventType],
        limit: usize,
    ) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
        let start = match after {
            Some(position) => stream_key(tenant, position.saturating_add(1)),
            None => stream_key(tenant, 0),
        };
        let end = stream_key(tenant, u64::MAX);
        let mut found = Vec::new();
        let mut last = after;
        for entry in self.events.range(start..=end) {
            let (key, value) = entry?;
            last = key
                .get(key.len() - 8..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let event: PublishedEvent = decode(&value)?;
            if types.is_empty() || types.contains(&event.event_type) {
                found.push(event);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok((found, last))
    }

    fn suppressed(&self, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
        let mut hits = Vec::new();
        for email in emails {
            if self
                .suppressions
                .contains_key(tenant_key(tenant, &email.to_ascii_lowercase()))?
            {
                hits.push(email.clone());
            }
        }
        Ok(hits)
    }

    fn suppression(&self, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError> {
        self.suppressions
            .get(tenant_key(tenant, &email.to_ascii_lowercase()))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn list_suppressions(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        let mut start = tenant_key(tenant, after.unwrap_or(""));
        if after.is_some() {
            start.push(0);
        }
        self.suppressions
            .range(start..tenant_end(tenant))
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn put_suppression(&self, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError> {
        self.suppressions
            .insert(tenant_key(tenant, &suppression.email), serde_json::to_vec(suppression)?)?;
        self.flush()
    }

    fn delete_suppression(&self, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
        let removed = self
            .suppressions
            .remove(tenant_key(tenant, &email.to_ascii_lowercase()))?
            .is_some();
        self.flush()?;
        Ok(removed)
    }

    fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        self.webhooks.insert(
            tenant_key(&webhook.tenant, webhook.id.as_str()),
            serde_json::to_vec(webhook)?,
        )?;
        self.flush()
    }

    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.webhooks
            .get(tenant_key(tenant, id.as_str()))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        self.webhooks
            .scan_prefix(tenant_key(tenant, ""))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        let removed = self.webhooks.remove(tenant_key(tenant, id.as_str()))?.is_some();
        self.flush()?;
        Ok(removed)
    }

    fn put_domain(&self, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
        let key = tenant_key(&domain.tenant, domain.id.as_str());
        let name = tenant_key(&domain.tenant, domain.name.as_str());
        let value = serde_json::to_vec(domain)?;
        let written = (&self.domains, &self.domain_names)
            .transaction(|(domains, names)| {
                match names.get(name.as_slice())? {
                    Some(holder) if holder.as_ref() != domain.id.as_str().as_bytes() => return Ok(false),
                    Some(_) if create => return Ok(false),
                    // An update of a domain deleted meanwhile does not bring it back.
                    None if !create => return Ok(false),
                    _ => {}
                }
                names.insert(name.as_slice(), domain.id.as_str().as_bytes())?;
                domains.insert(key.as_slice(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(written)
    }

    fn domain(&self, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError> {
        let id = match self
            .domain_names
            .get(tenant_key(tenant, &id_or_name.to_ascii_lowercase()))?
        {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => id_or_name.to_owned(),
        };
        self.domains
            .get(tenant_key(tenant, &id))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
        let prefix = tenant.map(|t| tenant_key(t, "")).unwrap_or_default();
        self.domains
            .scan_prefix(prefix)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn delete_domain(&self, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
        let Some(domain) = self.domain(tenant, id.as_str())? else {
            return Ok(false);
        };
        let key = tenant_key(tenant, id.as_str());
        let name = tenant_key(tenant, domain.name.as_str());
        (&self.domains, &self.domain_names)
            .transaction(|(domains, names)| {
                domains.remove(key.as_slice())?;
                names.remove(name.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(true)
    }

    fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut fresh);
        // Compare-and-swap from nothing: two nodes (or threads) asking at once agree
        // on whichever was written first.
        let key = format!("secret/{name}");
        match self
            .meta
            .compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(&fresh[..]))?
        {
            Ok(()) => {
                self.flush()?;
                Ok(fresh.to_vec())
            }
            Err(existing) => Ok(existing.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    fn enqueue_deliveries(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(outbox_key(entry), serde_json::to_vec(entry)?);
        }
        self.outbox.apply_batch(batch)?;
        self.flush()
    }

    fn lease_delivery(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<OutboxEntry>, StoreError> {
        let end = u64::try_from(now.timestamp_millis())
            .unwrap_or(0)
            .saturating_add(1)
            .to_be_bytes();
        for item in self.outbox.range(..end.as_slice()) {
            let (key, value) = item?;
            let mut entry = match decode::<OutboxEntry>(&value) {
                Ok(entry) => entry,
                Err(reason) => {
                    // Keep it for inspection, out of the way of the deliveries behind it.
                    tracing::error!(error = %reason, "parked an undecodable webhook delivery");
                    self.parked.insert([b"outbox:".as_slice(), &key].concat(), value)?;
                    self.outbox.remove(&key)?;
                    continue;
                }
            };
            entry.due_at = now + lease;
            let moved = self.outbox.transaction(|outbox| {
                if outbox.remove(&key)?.is_none() {
                    return Ok(false);
                }
                outbox.insert(outbox_key(&entry), encode_json(&entry)?)?;
                Ok(true)
            });
            if moved.map_err(flatten)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn finish_delivery(
        &self,
        leased: &OutboxEntry,
        next: Option<&OutboxEntry>,
        attempt: &DeliveryAttempt,
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        let mut attempt_key = leased.webhook_id.as_str().as_bytes().to_vec();
        attempt_key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        (&self.outbox, &self.webhook_deliveries, &self.webhooks)
            .transaction(|(outbox, log, webhooks)| {
                // Only the holder of a live lease re-queues: if the lease ran out and
                // another dispatcher took the entry, this attempt is only logged.
                let still_ours = outbox.remove(outbox_key(leased))?.is_some();
                if let (true, Some(next)) = (still_ours, next) {
                    outbox.insert(outbox_key(next), encode_json(next)?)?;
                }
                log.insert(attempt_key.as_slice(), encode_json(attempt)?)?;
                if let Some(disabled) = webhook {
                    // Re-read: only the enabled flag changes, and only if the webhook
                    // still exists (it may have been deleted or rotated meanwhile).
                    let key = tenant_key(&disabled.tenant, disabled.id.as_str());
                    if let Some(raw) = webhooks.get(&key)? {
                        let mut current: Webhook = serde_json::from_slice(&raw)
                            .map_err(|e| ConflictableTransactionError::Abort(StoreError::from(e)))?;
                        current.enabled = disabled.enabled;
                        current.disabled_reason = disabled.disabled_reason.clone();
                        current.updated_at = disabled.updated_at;
                        webhooks.insert(key, encode_json(&current)?)?;
                    }
                }
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    fn deliveries(&self, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.webhook_deliveries
            .scan_prefix(id.as_str().as_bytes())
            .rev()
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn event(&self, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
        let Some(position) = self.event_ids.get(id)? else {
            return Ok(None);
        };
        let position: [u8; 8] = position
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Missing(id.to_owned()))?;
        self.events
            .get(stream_key(tenant, u64::from_be_bytes(position)))?
            .map(|raw| decode(&raw))
            .transpose()
    }

    fn apply_report(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        apply: &mut dyn FnMut(&mut Message),
    ) -> Result<ReportTarget, StoreError> {
        let Some(read) = self.messages.get(id.as_str())? else {
            return Ok(ReportTarget::NotFound);
        };
        let mut message: Message = decode(&read)?;
        if &message.tenant != tenant {
            return Ok(ReportTarget::NotFound);
        }
        apply(&mut message);
        // Compare-and-swap: a worker that leased the message, or another report that
        // changed it, since `read` makes this a retry instead of a lost update.
        match self.commit_durably(
            &message,
            Commit::Swap {
                read: &read,
                dequeue: false,
            },
        ) {
            Err(StoreError::Conflict) => Ok(ReportTarget::Busy),
            other => other.map(|()| ReportTarget::Applied),
        }
    }

    fn save_report(&self, tenant: &TenantId, source: &str, matched: bool, raw: &[u8]) -> Result<String, StoreError> {
        let id = format!("rpt_{}", uuid::Uuid::now_v7().simple());
        let record = serde_json::json!({
            "id": id, "source": source, "matched": matched, "received_at": Utc::now(),
            "raw": String::from_utf8_lossy(raw),
        });
        self.reports
            .insert(tenant_key(tenant, &id), serde_json::to_vec(&record)?)?;
        self.flush()?;
        Ok(id)
    }

    fn list_messages(
        &self,
        tenant: &TenantId,
        before: Option<&MessageId>,
        limit: usize,
        budget: usize,
        wanted: &dyn Fn(&Message) -> bool,
    ) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
        let range = tenant_range_before(tenant, before.map(|id| id.as_str()));
        let mut found = Vec::new();
        let mut last = None;
        let mut examined = 0;
        for entry in self.by_tenant_range(range).take(budget) {
            examined += 1;
            let key = entry?;
            let raw = key.get(tenant.as_str().len() + 1..).unwrap_or_default();
            let Ok(id) = MessageId::parse(&String::from_utf8_lossy(raw)) else {
                continue;
            };
            if let Some(message) = self.load(&id)? {
                if wanted(&message) {
                    found.push(message);
                }
            }
            last = Some(id);
            if found.len() == limit {
                break;
            }
        }
        let stopped_early = found.len() == limit || examined == budget;
        Ok((found, last.filter(|_| stopped_early)))
    }

    fn cancel(&self, tenant: &TenantId, id: &MessageId, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        let Some(read) = self.messages.get(id.as_str())? else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut message: Message = decode(&read)?;
        if &message.tenant != tenant {
            return Ok(CancelOutcome::NotFound);
        }
        if !message.cancel(now) {
            return Ok(CancelOutcome::TooLate(message.status));
        }
        match self.commit_durably(
            &message,
            Commit::Swap {
                read: &read,
                dequeue: true,
            },
        ) {
            Err(StoreError::Conflict) => Ok(CancelOutcome::TooLate(MessageStatus::Sending)),
            other => other.map(|()| CancelOutcome::Cancelled(Box::new(message))),
        }
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        depth::read(&self.counters)
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
        self.revocations.insert(jti.as_bytes(), &until.to_be_bytes())?;
        self.flush()
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let mut live = Vec::new();
        for entry in self.revocations.iter() {
            let (jti, until) = entry?;
            let until = until.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if until >= now {
                live.push((String::from_utf8_lossy(&jti).into_owned(), until));
            } else {
                self.revocations.remove(&jti)?;
            }
        }
        Ok(live)
    }

    fn count_messages(&self) -> Result<usize, StoreError> {
        Ok(self.messages.len())
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
