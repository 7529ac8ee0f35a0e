//! Messages and the queue: batched writes (one transaction per writer batch), leases
//! with fencing tokens, cancellation and later reports, reads.
//!
//! A write that ends or continues an attempt (`Progress`, `Release`) is applied only if
//! the queue row still carries this node's fencing token for the message: a node whose
//! lease was taken back (it was silent too long) cannot overwrite what the node that
//! took it over records.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Mutex;
use std::thread::ThreadId;

use postgres::{Client, GenericClient, Transaction};

use super::nodes::Node;
use super::pool::{Pool, Statements};
use super::{decode, encode, stream};
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::message::{IdempotencyKey, IdempotencyRecord, Message};
use crate::domain::status::MessageStatus;
use crate::store::consequences::{self, Consequences, HookCache};
use crate::store::{CancelOutcome, Lease, MessageWrite, QueueDepth, ReportTarget, StoreError, StoredMime};

/// Rows a lease scan may lock and pass over (tenants the caller does not admit now)
/// beyond the number asked for.
const LEASE_SKIP: usize = 256;

/// One write of a message in a batch.
#[derive(Clone, Copy)]
enum Write<'a> {
    Accept {
        mime: &'a [u8],
        key: Option<&'a IdempotencyKey>,
    },
    /// By the lease holder; `end` ends the lease (release), else it continues (progress).
    Attempt { end: bool },
    /// A change the caller made under the row lock it holds in the same transaction
    /// (cancellation, a later report); `dequeue` removes the queue row.
    Locked { dequeue: bool },
}

/// A message row: tenant, record, MIME (accepts only), how many events are published.
type MessageRow = (String, Vec<u8>, Option<Vec<u8>>, i32);
/// An event row: tenant, order in the transaction, id, type, day, body.
type EventRow = (String, i32, String, String, NaiveDate, Vec<u8>);

/// The rows of a batch, gathered to be written with one statement per table.
#[derive(Default)]
struct Rows {
    /// By id: the last write of a message in the batch wins.
    messages: HashMap<String, MessageRow>,
    /// id → `Some((tenant, due, state))` to queue, `None` to dequeue.
    queue: HashMap<String, Option<(String, DateTime<Utc>, String)>>,
    events: Vec<EventRow>,
    suppressions: Vec<(String, String, Vec<u8>)>,
    planned: Vec<Consequences>,
    due_now: bool,
}

fn status_of(message: &Message) -> String {
    message.status.as_str().to_owned()
}

/// A writer batch's transaction, left open by [`write_batch`] so that the leases the
/// writer takes next ([`lease_due`]) commit with it: one commit per writer batch.
/// [`commit_batch`] (`Store::sync`) commits it. Open batches are kept per thread, so a
/// thread's `sync` commits its own writes only.
pub(super) struct OpenBatch {
    client: Client,
    st: Statements,
    /// Leases this batch ended, let go once it commits.
    released: Vec<String>,
}

#[derive(Default)]
pub(super) struct OpenBatches(Mutex<HashMap<ThreadId, OpenBatch>>);

impl OpenBatches {
    fn take(&self) -> Option<OpenBatch> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&std::thread::current().id())
    }

    fn keep(&self, batch: OpenBatch) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(std::thread::current().id(), batch);
    }
}

/// Stages a batch of the writer thread in this thread's open transaction (begun here
/// when there is none); visible to everyone once [`commit_batch`] commits it. With
/// `commit`, commits it at once (a caller that cannot count on calling `sync` from the
/// same thread).
pub(super) fn write_batch(
    pool: &Pool,
    node: &Node,
    open: &OpenBatches,
    writes: &[MessageWrite<'_>],
    commit: bool,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let writes: Vec<(&Message, Write<'_>)> = writes
        .iter()
        .map(|write| match *write {
            MessageWrite::Accept { message, mime, key } => (message, Write::Accept { mime, key }),
            MessageWrite::Progress(message) => (message, Write::Attempt { end: false }),
            MessageWrite::Release(message) => (message, Write::Attempt { end: true }),
        })
        .collect();
    let mut batch = match open.take() {
        Some(batch) => batch,
        None => {
            let (mut client, st) = pool.take()?;
            client.batch_execute(super::stream::BEGIN_WRITING)?;
            OpenBatch {
                client,
                st,
                released: Vec::new(),
            }
        }
    };
    let written = match write_in(&mut batch.client, &mut batch.st, node, &writes) {
        Ok(written) => written,
        Err(err) => {
            if batch.client.batch_execute("ROLLBACK").is_ok() {
                pool.give((batch.client, batch.st));
            }
            return Err(err);
        }
    };
    for ((message, write), done) in writes.iter().zip(&written) {
        if matches!((write, done), (Write::Attempt { end: true }, Ok(true))) {
            batch.released.push(message.id.as_str().to_owned());
        }
    }
    open.keep(batch);
    if commit {
        commit_batch(pool, node, open)?;
    }
    Ok(written
        .into_iter()
        .map(|done| done.and_then(|written| if written { Ok(()) } else { Err(StoreError::Conflict) }))
        .collect())
}

/// Commits this thread's open batch, if any: from here on its writes and leases are
/// durable and visible.
pub(super) fn commit_batch(pool: &Pool, node: &Node, open: &OpenBatches) -> Result<(), StoreError> {
    let Some(mut batch) = open.take() else {
        return Ok(());
    };
    batch.client.batch_execute("COMMIT")?;
    for id in &batch.released {
        node.let_go(id);
    }
    pool.give((batch.client, batch.st));
    Ok(())
}

/// Stages `writes` in `tx`: per write, `true` when written, `false` when it must write
/// nothing (a held idempotency key, a lease this node no longer holds).
fn write_in(
    tx: &mut impl GenericClient,
    st: &mut Statements,
    node: &Node,
    writes: &[(&Message, Write<'_>)],
) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    let attempts: Vec<&str> = writes
        .iter()
        .filter(|(_, w)| matches!(w, Write::Attempt { .. }))
        .map(|(m, _)| m.id.as_str())
        .collect();
    let tokens: HashMap<String, Option<i64>> = if attempts.is_empty() {
        HashMap::new()
    } else {
        st.query(
            tx,
            "SELECT id, token FROM queue WHERE id = ANY($1) FOR UPDATE",
            &[&attempts],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
    };
    let existing: Vec<&str> = writes
        .iter()
        .filter(|(_, w)| !matches!(w, Write::Accept { .. }))
        .map(|(m, _)| m.id.as_str())
        .collect();
    let mut published: HashMap<String, usize> = if existing.is_empty() {
        HashMap::new()
    } else {
        st.query(
            tx,
            "SELECT id, published FROM messages WHERE id = ANY($1)",
            &[&existing],
        )?
        .iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                usize::try_from(row.get::<_, i32>(1)).unwrap_or(0),
            )
        })
        .collect()
    };
    let mut allowed = Vec::with_capacity(writes.len());
    for (message, write) in writes {
        let ok = match write {
            Write::Accept { key: Some(key), .. } => claim(tx, st, message, key)?,
            Write::Accept { key: None, .. } | Write::Locked { .. } => true,
            Write::Attempt { .. } => {
                // The lease in the row must be the one this node holds, if it holds
                // one; a write by a process holding no lease (none in the row either)
                // goes through, as on sled.
                let in_row = tokens.get(message.id.as_str()).copied().flatten();
                let ours = in_row == node.token(message.id.as_str());
                if !ours {
                    tracing::warn!(message_id = %message.id, node = %node.id, "not recording an attempt: this node no longer holds the lease");
                    node.let_go(message.id.as_str());
                }
                ours
            }
        };
        allowed.push(ok);
    }
    let tenants: Vec<&str> = writes
        .iter()
        .map(|(m, _)| m.tenant.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let hooks_read = stream::webhooks(tx, st, &tenants)?;
    let read_hooks = |tenant: &crate::domain::auth::TenantId| {
        Ok(hooks_read.iter().filter(|h| &h.tenant == tenant).cloned().collect())
    };
    let mut hooks = HookCache::new(&read_hooks);
    let mut rows = Rows::default();
    let now = Utc::now();
    let mut results = Vec::with_capacity(writes.len());
    for ((message, write), ok) in writes.iter().zip(allowed) {
        if !ok {
            results.push(Ok(false));
            continue;
        }
        let id = message.id.as_str().to_owned();
        let accepted = matches!(write, Write::Accept { .. });
        let seen = if accepted {
            0
        } else {
            published.get(&id).copied().unwrap_or(0)
        };
        let planned = match consequences::plan(message, message.events.iter().skip(seen), accepted, &mut hooks) {
            Ok(planned) => planned,
            Err(err) => {
                results.push(Err(err));
                continue;
            }
        };
        published.insert(id.clone(), message.events.len());
        let mime = match write {
            Write::Accept { mime, .. } => Some(mime.to_vec()),
            _ => None,
        };
        let count = i32::try_from(message.events.len()).unwrap_or(i32::MAX);
        // An accept of a message already written in this batch keeps its MIME.
        let mime = mime.or_else(|| rows.messages.get(&id).and_then(|row| row.2.clone()));
        rows.messages.insert(
            id.clone(),
            (message.tenant.as_str().to_owned(), encode(*message)?, mime, count),
        );
        match write {
            Write::Accept { .. } | Write::Attempt { end: true } => {
                let entry = message
                    .next_attempt_at
                    .map(|due| (message.tenant.as_str().to_owned(), due, status_of(message)));
                rows.due_now |= message.next_attempt_at.is_some_and(|due| due <= now);
                rows.queue.insert(id.clone(), entry);
            }
            Write::Locked { dequeue: true } => {
                rows.queue.insert(id.clone(), None);
            }
            Write::Attempt { end: false } | Write::Locked { dequeue: false } => {}
        }
        for event in &planned.fresh {
            let ord = i32::try_from(rows.events.len()).unwrap_or(i32::MAX);
            rows.events.push((
                message.tenant.as_str().to_owned(),
                ord,
                event.id.clone(),
                event.event_type.as_str().to_owned(),
                event.created_at.date_naive(),
                encode(event)?,
            ));
        }
        for suppression in &planned.implied {
            rows.suppressions.push((
                message.tenant.as_str().to_owned(),
                suppression.email.clone(),
                encode(suppression)?,
            ));
        }
        rows.planned.push(planned);
        results.push(Ok(true));
    }
    store_rows(tx, st, node, rows)?;
    Ok(results)
}

/// Claims the idempotency key for `message` in `tx`; `false` when another request holds
/// it (fresh). A concurrent claim waits for this transaction, then sees the key held.
fn claim(
    tx: &mut impl GenericClient,
    st: &mut Statements,
    message: &Message,
    key: &IdempotencyKey,
) -> Result<bool, StoreError> {
    let record = IdempotencyRecord {
        request_hash: key.request_hash.clone(),
        created_at: message.created_at,
        accepted: message.clone(),
    };
    let stale = message.created_at - IdempotencyRecord::TTL;
    let claimed = st.query_opt(
        tx,
        "INSERT INTO idempotency (tenant, key, created_at, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, key) DO UPDATE
            SET created_at = excluded.created_at, record = excluded.record
          WHERE idempotency.created_at <= $5
         RETURNING 1",
        &[
            &message.tenant.as_str(),
            &key.key,
            &message.created_at,
            &encode(&record)?,
            &stale,
        ],
    )?;
    Ok(claimed.is_some())
}

/// Writes the gathered rows, one statement per table.
fn store_rows(tx: &mut impl GenericClient, st: &mut Statements, node: &Node, rows: Rows) -> Result<(), StoreError> {
    if !rows.messages.is_empty() {
        let (mut ids, mut tenants, mut records, mut mimes, mut counts) = (vec![], vec![], vec![], vec![], vec![]);
        for (id, (tenant, record, mime, count)) in rows.messages {
            ids.push(id);
            tenants.push(tenant);
            records.push(record);
            mimes.push(mime);
            counts.push(count);
        }
        st.execute(
            tx,
            "INSERT INTO messages (id, tenant, record, mime, published)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::int4[])
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, published = excluded.published,
                mime = coalesce(excluded.mime, messages.mime)",
            &[&ids, &tenants, &records, &mimes, &counts],
        )?;
    }
    let (mut queued, mut tenants, mut dues, mut states, mut dequeued) = (vec![], vec![], vec![], vec![], vec![]);
    for (id, entry) in rows.queue {
        match entry {
            Some((tenant, due, state)) => {
                queued.push(id);
                tenants.push(tenant);
                dues.push(due);
                states.push(state);
            }
            None => dequeued.push(id),
        }
    }
    if !dequeued.is_empty() {
        st.execute(tx, "DELETE FROM queue WHERE id = ANY($1)", &[&dequeued])?;
    }
    if !queued.is_empty() {
        st.execute(
            tx,
            "INSERT INTO queue (id, tenant, due_at, state)
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
             ON CONFLICT (id) DO UPDATE SET due_at = excluded.due_at, state = excluded.state,
                node = NULL, token = NULL",
            &[&queued, &tenants, &dues, &states],
        )?;
    }
    if !rows.events.is_empty() {
        let (mut tenants, mut ords, mut ids, mut types, mut days, mut bodies) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (tenant, ord, id, kind, day, body) in rows.events {
            tenants.push(tenant);
            ords.push(ord);
            ids.push(id);
            types.push(kind);
            days.push(day);
            bodies.push(body);
        }
        st.execute(
            tx,
            "INSERT INTO events (tenant, pos, id, event_type, day, body)
             SELECT t, pg_current_xact_id()::text::bigint * 1048576 + o, i, k, d, b
               FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::date[], $6::bytea[])
                    AS u(t, o, i, k, d, b)",
            &[&tenants, &ords, &ids, &types, &days, &bodies],
        )?;
    }
    if !rows.suppressions.is_empty() {
        let (mut tenants, mut emails, mut records) = (vec![], vec![], vec![]);
        for (tenant, email, record) in rows.suppressions {
            tenants.push(tenant);
            emails.push(email);
            records.push(record);
        }
        st.execute(
            tx,
            "INSERT INTO suppressions (tenant, email, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING",
            &[&tenants, &emails, &records],
        )?;
    }
    let mut deliveries = Vec::new();
    let mut counted = crate::stats::StatsDelta::default();
    for planned in rows.planned {
        deliveries.extend(planned.deliveries);
        counted.merge(&planned.stats);
    }
    stream::enqueue_deliveries(tx, st, &deliveries)?;
    if !counted.is_empty() {
        st.execute(
            tx,
            "INSERT INTO stats_journal (delta) VALUES ($1)",
            &[&counted.encode()],
        )?;
    }
    if rows.due_now && node.should_notify() {
        st.execute(tx, "SELECT pg_notify($1, '')", &[&super::nodes::CHANNEL])?;
    }
    Ok(())
}

pub(super) fn idempotency(pool: &Pool, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row = pool.get()?.query_opt(
        "SELECT record FROM idempotency WHERE tenant = $1 AND key = $2",
        &[&tenant.as_str(), &key],
    )?;
    let Some(row) = row else { return Ok(None) };
    let record: IdempotencyRecord = decode(row.get(0))?;
    Ok(record.is_fresh(Utc::now()).then_some(record))
}

/// The message as readers see it: `sending` while a node holds its lease.
fn as_read(record: &[u8], leased: bool) -> Result<Message, StoreError> {
    let mut message: Message = decode(record)?;
    if leased {
        message.status = MessageStatus::Sending;
    }
    Ok(message)
}

pub(super) fn message(pool: &Pool, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
    let row = pool.get()?.query_opt(
        "SELECT m.record, q.node IS NOT NULL FROM messages m LEFT JOIN queue q ON q.id = m.id
          WHERE m.id = $1 AND m.tenant = $2",
        &[&id.as_str(), &tenant.as_str()],
    )?;
    row.map(|row| as_read(row.get(0), row.get::<_, Option<bool>>(1).unwrap_or(false)))
        .transpose()
}

pub(super) fn mime(pool: &Pool, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
    let row = pool.get()?.query_opt(
        "SELECT mime FROM messages WHERE id = $1 AND tenant = $2",
        &[&id.as_str(), &tenant.as_str()],
    )?;
    Ok(row.map(|row| match row.get::<_, Option<Vec<u8>>>(0) {
        Some(bytes) => StoredMime::Bytes(bytes),
        None => StoredMime::Expired,
    }))
}

/// Claims up to `max` due messages in one transaction (see the module comment of
/// `postgres`). A row whose message cannot be read is parked, out of the queue's way.
pub(super) fn lease_due(
    pool: &Pool,
    node: &Node,
    open: &OpenBatches,
    now: DateTime<Utc>,
    max: usize,
    admit: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<Lease>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    // After a batch of writes, in its transaction: the claims commit with it.
    let (leases, tokens) = match open.take() {
        Some(mut batch) => {
            let claimed = claim_due(&mut batch.client, &mut batch.st, node, now, max, admit);
            open.keep(batch);
            claimed?
        }
        None => {
            let mut conn = pool.get()?;
            let (client, st) = conn.parts();
            let mut tx = client.transaction()?;
            // A lease is not durable (a crash puts it back: `recover_leases`), so a
            // transaction that only leases does not wait for its WAL to reach the disk.
            st.execute(&mut tx, "SET LOCAL synchronous_commit = off", &[])?;
            let claimed = claim_due(&mut tx, st, node, now, max, admit)?;
            tx.commit()?;
            claimed
        }
    };
    node.hold(
        leases
            .iter()
            .filter_map(|l| Some((l.message.id.as_str().to_owned(), *tokens.get(l.message.id.as_str())?))),
    );
    Ok(leases)
}

/// Claims up to `max` due messages in `tx`; the leases and their fencing tokens.
fn claim_due(
    tx: &mut impl GenericClient,
    st: &mut Statements,
    node: &Node,
    now: DateTime<Utc>,
    max: usize,
    admit: &mut dyn FnMut(&str) -> bool,
) -> Result<(Vec<Lease>, HashMap<String, i64>), StoreError> {
    let scan = i64::try_from(max.saturating_add(LEASE_SKIP)).unwrap_or(i64::MAX);
    let floor = node.scan_floor();
    let due = st.query(
        tx,
        "SELECT id, tenant, due_at FROM queue WHERE node IS NULL AND due_at >= $3 AND due_at <= $1
          ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        &[&now, &scan, &floor],
    )?;
    node.scanned_to(due.first().map_or(now, |row| row.get(2)));
    let mut admitted: Vec<String> = Vec::new();
    for row in &due {
        if admitted.len() >= max {
            break;
        }
        if admit(row.get::<_, &str>(1)) {
            admitted.push(row.get(0));
        }
    }
    if admitted.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let tokens: HashMap<String, i64> = st
        .query(
            tx,
            "UPDATE queue SET node = $1, token = nextval('lease_tokens') WHERE id = ANY($2) RETURNING id, token",
            &[&node.id, &admitted],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut found: HashMap<String, Result<Lease, StoreError>> = st
        .query(
            tx,
            "SELECT id, record, mime FROM messages WHERE id = ANY($1)",
            &[&admitted],
        )?
        .iter()
        .map(|row| {
            let id: String = row.get(0);
            let lease = as_read(row.get(1), true).and_then(|message| {
                let mime: Option<Vec<u8>> = row.get(2);
                let mime = mime.ok_or_else(|| StoreError::Missing(format!("the MIME of {id}")))?;
                Ok(Lease { message, mime })
            });
            (id, lease)
        })
        .collect();
    let mut leases = Vec::with_capacity(admitted.len());
    let mut unusable: Vec<(String, String)> = Vec::new();
    for id in &admitted {
        match found.remove(id) {
            Some(Ok(lease)) => leases.push(lease),
            Some(Err(err)) => unusable.push((id.clone(), err.to_string())),
            None => unusable.push((id.clone(), "the message is missing".into())),
        }
    }
    for (id, reason) in &unusable {
        tracing::error!(message_id = %id, reason, "parked an unusable queue entry");
        st.execute(
            tx,
            "INSERT INTO parked (id, reason) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET reason = excluded.reason",
            &[id, reason],
        )?;
        st.execute(tx, "DELETE FROM queue WHERE id = $1", &[id])?;
    }
    Ok((leases, tokens))
}

pub(super) fn next_due(pool: &Pool) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(pool
        .get()?
        .query_one("SELECT min(due_at) FROM queue WHERE node IS NULL", &[])?
        .get(0))
}

/// Reads the tenant's message under a row lock for a change made outside any lease;
/// `None` when it does not exist for the tenant. Also whether a node holds it.
fn lock_message(
    tx: &mut Transaction<'_>,
    tenant: &TenantId,
    id: &MessageId,
) -> Result<Option<(Message, bool)>, StoreError> {
    let leased = tx
        .query_opt(
            "SELECT node IS NOT NULL FROM queue WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        )?
        .is_some_and(|row| row.get::<_, bool>(0));
    let row = tx.query_opt(
        "SELECT record FROM messages WHERE id = $1 AND tenant = $2 FOR UPDATE",
        &[&id.as_str(), &tenant.as_str()],
    )?;
    row.map(|row| Ok((decode::<Message>(row.get(0))?, leased))).transpose()
}

pub(super) fn cancel(
    pool: &Pool,
    node: &Node,
    tenant: &TenantId,
    id: &MessageId,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, StoreError> {
    let mut conn = pool.get()?;
    let (client, st) = conn.parts();
    let mut tx = client.transaction()?;
    tx.batch_execute(super::stream::WRITER_LOCK)?;
    let Some((mut message, leased)) = lock_message(&mut tx, tenant, id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if leased {
        return Ok(CancelOutcome::TooLate(MessageStatus::Sending));
    }
    if !message.cancel(now) {
        return Ok(CancelOutcome::TooLate(message.status));
    }
    write_in(&mut tx, st, node, &[(&message, Write::Locked { dequeue: true })])?
        .pop()
        .unwrap_or(Ok(false))?;
    tx.commit()?;
    Ok(CancelOutcome::Cancelled(Box::new(message)))
}

pub(super) fn apply_report(
    pool: &Pool,
    node: &Node,
    tenant: &TenantId,
    id: &MessageId,
    apply: &mut dyn FnMut(&mut Message),
) -> Result<ReportTarget, StoreError> {
    let mut conn = pool.get()?;
    let (client, st) = conn.parts();
    let mut tx = client.transaction()?;
    tx.batch_execute(super::stream::WRITER_LOCK)?;
    let Some((mut message, leased)) = lock_message(&mut tx, tenant, id)? else {
        return Ok(ReportTarget::NotFound);
    };
    if leased {
        return Ok(ReportTarget::Busy);
    }
    apply(&mut message);
    write_in(&mut tx, st, node, &[(&message, Write::Locked { dequeue: false })])?
        .pop()
        .unwrap_or(Ok(false))?;
    tx.commit()?;
    Ok(ReportTarget::Applied)
}

pub(super) fn list(
    pool: &Pool,
    tenant: &TenantId,
    before: Option<&MessageId>,
    limit: usize,
    budget: usize,
    wanted: &dyn Fn(&Message) -> bool,
) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
    let before = before.map_or_else(|| "msg_g".to_owned(), |id| id.as_str().to_owned());
    let budget_rows = i64::try_from(budget).unwrap_or(i64::MAX);
    let rows = pool.get()?.query(
        "SELECT m.id, m.record, q.node IS NOT NULL FROM messages m LEFT JOIN queue q ON q.id = m.id
          WHERE m.tenant = $1 AND m.id < $2 ORDER BY m.id DESC LIMIT $3",
        &[&tenant.as_str(), &before, &budget_rows],
    )?;
    let mut found = Vec::new();
    let mut last = None;
    let mut examined = 0;
    for row in &rows {
        examined += 1;
        let message = as_read(row.get(1), row.get::<_, Option<bool>>(2).unwrap_or(false))?;
        last = MessageId::parse(row.get(0)).ok();
        if wanted(&message) {
            found.push(message);
            if found.len() == limit {
                break;
            }
        }
    }
    let stopped_early = found.len() == limit || examined == budget;
    Ok((found, last.filter(|_| stopped_early)))
}

pub(super) fn queue_depth(pool: &Pool) -> Result<QueueDepth, StoreError> {
    let mut depth = QueueDepth::default();
    for row in pool
        .get()?
        .query("SELECT state, node IS NOT NULL, count(*) FROM queue GROUP BY 1, 2", &[])?
    {
        let count = usize::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        let slot = if row.get::<_, bool>(1) {
            &mut depth.sending
        } else {
            match row.get::<_, &str>(0) {
                "scheduled" => &mut depth.scheduled,
                "deferred" => &mut depth.deferred,
                _ => &mut depth.queued,
            }
        };
        *slot += count;
    }
    Ok(depth)
}

pub(super) fn count(pool: &Pool) -> Result<usize, StoreError> {
    let count: i64 = pool.get()?.query_one("SELECT count(*) FROM messages", &[])?.get(0);
    Ok(usize::try_from(count).unwrap_or(0))
}
