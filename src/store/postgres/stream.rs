//! The event stream, webhook endpoints, their delivery outbox and attempt log.

use chrono::{DateTime, SubsecRound, Utc};
use postgres::GenericClient;

use super::pool::{Pool, Statements};
use super::{decode, encode};
use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::ids::WebhookId;
use crate::domain::status::EventType;
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};
use crate::store::StoreError;

/// The first key of the [`WRITER_LOCK`] ("mail" in ASCII); the second is the schema's
/// hash. Macros, so that every statement using it is a constant spelling it once.
macro_rules! writer_lock_class {
    () => {
        "1835100524"
    };
}

macro_rules! writer_lock {
    () => {
        concat!(
            "SELECT pg_advisory_xact_lock_shared(",
            writer_lock_class!(),
            ", hashtext(current_schema()))"
        )
    };
}

/// Taken (shared) by every transaction that may write events, before its first write:
/// while it holds it, readers do not pass its transaction id (see [`HORIZON`]). Keyed by
/// the schema, so only this deployment's writers count — another application's long
/// transaction on the same database (a `pg_dump`, a report) holds nothing back.
pub(super) const WRITER_LOCK: &str = writer_lock!();

/// A writer batch's start: `BEGIN` and the [`WRITER_LOCK`] in one round trip.
pub(super) const BEGIN_WRITING: &str = concat!("BEGIN; ", writer_lock!());

/// The stream's horizon, a transaction id: the oldest of this deployment's writing
/// transactions still running (found through their [`WRITER_LOCK`] and the lock each
/// transaction holds on its own id), or, with none, the first id not yet assigned when
/// this statement's snapshot was taken. Every writer of an older id has ended by the
/// time this statement reads `pg_locks` (a writer's id is assigned after it takes the
/// lock, and the lock is released only after its commit is visible), so a read in a
/// later statement sees every event below it that will ever exist.
const HORIZON: &str = concat!(
    "
    WITH l AS MATERIALIZED (SELECT locktype, classid, objid, objsubid, transactionid, pid, mode, granted FROM pg_locks),
         writers AS (SELECT t.transactionid::text::bigint % 4294967296 AS xid
                       FROM l a JOIN l t ON t.pid = a.pid
                      WHERE a.locktype = 'advisory' AND a.objsubid = 2 AND a.granted
                        AND a.classid = ",
    writer_lock_class!(),
    "::int8::oid
                        AND a.objid = (hashtext(current_schema())::int8 & 4294967295)::oid
                        AND t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted)
    SELECT least(pg_snapshot_xmax(s)::text::bigint,
                 (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) AS x
                   WHERE x::text::bigint % 4294967296 IN (SELECT xid FROM writers)))
      FROM pg_current_snapshot() AS s"
);

/// How many times (10 ms each) a read waits for committed events held back by the
/// horizon (see [`events`]): a transaction that began earlier usually ends within
/// milliseconds, but a loaded machine can stretch that to seconds.
pub(super) const HELD_BACK_WAITS: u32 = 300;

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The tenant's events after `after`, only of transactions older than the [`HORIZON`]:
/// a later commit never lands behind a cursor already handed out. Waits up to `waits`
/// times 10 ms for committed events held back by an older writer ([`HELD_BACK_WAITS`]
/// for readers).
pub(super) fn events(
    pool: &Pool,
    tenant: &TenantId,
    after: Option<u64>,
    types: &[EventType],
    limit: usize,
    waits: u32,
) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
    let after_pos = after.map_or(-1, |p| i64::try_from(p).unwrap_or(i64::MAX));
    let types: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    let mut client = pool.get()?;
    let mut waited = 0;
    let rows = loop {
        // Its own statement, before the read: the read's snapshot must be taken after
        // the horizon's look at `pg_locks` (see `HORIZON`).
        let below = client
            .query_one(HORIZON, &[])?
            .get::<_, i64>(0)
            .saturating_mul(1_048_576);
        let rows = client.query(
            "SELECT pos, body FROM events
              WHERE tenant = $1 AND pos > $2 AND (cardinality($3::text[]) = 0 OR event_type = ANY($3))
                AND pos < $5
              ORDER BY pos LIMIT $4",
            &[&tenant.as_str(), &after_pos, &types, &limit_of(limit), &below],
        )?;
        if rows.len() >= limit || waited >= waits {
            break rows;
        }
        // Events already committed but above the horizon wait for an older writing
        // transaction to end, which takes milliseconds: wait for it rather than answer
        // a reader that just wrote with an empty page.
        let last = rows.last().map_or(after_pos, |row| row.get::<_, i64>(0));
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM events WHERE tenant = $1 AND pos > $2 AND pos >= $3)",
                &[&tenant.as_str(), &last, &below],
            )?
            .get(0);
        if !held {
            break rows;
        }
        waited += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut last = after;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        last = u64::try_from(row.get::<_, i64>(0)).ok();
        found.push(decode(row.get(1))?);
    }
    Ok((found, last))
}

pub(super) fn event(pool: &Pool, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
    pool.get()?
        .query_opt(
            "SELECT body FROM events WHERE tenant = $1 AND id = $2 LIMIT 1",
            &[&tenant.as_str(), &id],
        )?
        .map(|row| decode(row.get(0)))
        .transpose()
}

pub(super) fn put_webhook(pool: &Pool, webhook: &Webhook) -> Result<(), StoreError> {
    pool.get()?.execute(
        "INSERT INTO webhooks (tenant, id, record) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, id) DO UPDATE SET record = excluded.record",
        &[&webhook.tenant.as_str(), &webhook.id.as_str(), &encode(webhook)?],
    )?;
    Ok(())
}

pub(super) fn webhook(pool: &Pool, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
    pool.get()?
        .query_opt(
            "SELECT record FROM webhooks WHERE tenant = $1 AND id = $2",
            &[&tenant.as_str(), &id.as_str()],
        )?
        .map(|row| decode(row.get(0)))
        .transpose()
}

/// The webhooks of `tenants`, each tenant's oldest first.
pub(super) fn webhooks(
    client: &mut impl GenericClient,
    st: &mut Statements,
    tenants: &[&str],
) -> Result<Vec<Webhook>, StoreError> {
    st.query(
        client,
        "SELECT record FROM webhooks WHERE tenant = ANY($1) ORDER BY tenant, id",
        &[&tenants],
    )?
    .iter()
    .map(|row| decode(row.get(0)))
    .collect()
}

pub(super) fn delete_webhook(pool: &Pool, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
    Ok(pool.get()?.execute(
        "DELETE FROM webhooks WHERE tenant = $1 AND id = $2",
        &[&tenant.as_str(), &id.as_str()],
    )? > 0)
}

pub(super) fn enqueue_deliveries(
    client: &mut impl GenericClient,
    st: &mut Statements,
    entries: &[OutboxEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = entries.iter().map(|e| e.entry_id.as_str()).collect();
    let dues: Vec<DateTime<Utc>> = entries.iter().map(|e| e.due_at).collect();
    let bodies = entries.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
    st.execute(
        client,
        "INSERT INTO outbox (entry_id, due_at, body)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bytea[])
         ON CONFLICT (entry_id) DO UPDATE SET due_at = excluded.due_at, body = excluded.body",
        &[&ids, &dues, &bodies],
    )?;
    Ok(())
}

/// Takes the earliest due delivery, hidden for `lease` (its due time moves there).
pub(super) fn lease_delivery(
    pool: &Pool,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<Option<OutboxEntry>, StoreError> {
    let mut client = pool.get()?;
    let mut tx = client.transaction()?;
    loop {
        let Some(row) = tx.query_opt(
            "SELECT entry_id, body FROM outbox WHERE due_at <= $1 ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&now],
        )?
        else {
            return Ok(None);
        };
        let id: String = row.get(0);
        let mut entry: OutboxEntry = match decode(row.get(1)) {
            Ok(entry) => entry,
            Err(reason) => {
                tracing::error!(error = %reason, entry = id, "parked an undecodable webhook delivery");
                tx.execute(
                    "INSERT INTO parked (id, reason) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    &[&format!("outbox:{id}"), &reason.to_string()],
                )?;
                tx.execute("DELETE FROM outbox WHERE entry_id = $1", &[&id])?;
                continue;
            }
        };
        // To the microsecond PostgreSQL keeps, so `finish_delivery` finds it by it.
        entry.due_at = (now + lease).trunc_subsecs(6);
        tx.execute(
            "UPDATE outbox SET due_at = $2, body = $3 WHERE entry_id = $1",
            &[&id, &entry.due_at, &encode(&entry)?],
        )?;
        tx.commit()?;
        return Ok(Some(entry));
    }
}

/// Ends a leased delivery (see [`crate::store::Store::finish_delivery`]): only the
/// holder of the lease still in place (same due time) re-queues.
pub(super) fn finish_delivery(
    pool: &Pool,
    leased: &OutboxEntry,
    next: Option<&OutboxEntry>,
    attempt: &DeliveryAttempt,
    webhook: Option<&Webhook>,
) -> Result<(), StoreError> {
    let mut conn = pool.get()?;
    let (client, st) = conn.parts();
    let mut tx = client.transaction()?;
    let still_ours = tx.execute(
        "DELETE FROM outbox WHERE entry_id = $1 AND due_at = $2",
        &[&leased.entry_id, &leased.due_at],
    )? > 0;
    if let (true, Some(next)) = (still_ours, next) {
        enqueue_deliveries(&mut tx, st, std::slice::from_ref(next))?;
    }
    tx.execute(
        "INSERT INTO webhook_attempts (webhook_id, day, body) VALUES ($1, $2, $3)",
        &[
            &leased.webhook_id.as_str(),
            &attempt.attempted_at.date_naive(),
            &encode(attempt)?,
        ],
    )?;
    if let Some(disabled) = webhook {
        let row = tx.query_opt(
            "SELECT record FROM webhooks WHERE tenant = $1 AND id = $2 FOR UPDATE",
            &[&disabled.tenant.as_str(), &disabled.id.as_str()],
        )?;
        if let Some(row) = row {
            let mut current: Webhook = decode(row.get(0))?;
            current.enabled = disabled.enabled;
            current.disabled_reason = disabled.disabled_reason.clone();
            current.updated_at = disabled.updated_at;
            tx.execute(
                "UPDATE webhooks SET record = $3 WHERE tenant = $1 AND id = $2",
                &[&disabled.tenant.as_str(), &disabled.id.as_str(), &encode(&current)?],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn deliveries(pool: &Pool, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
    pool.get()?
        .query(
            "SELECT body FROM webhook_attempts WHERE webhook_id = $1 ORDER BY seq DESC LIMIT $2",
            &[&id.as_str(), &limit_of(limit)],
        )?
        .iter()
        .map(|row| decode(row.get(0)))
        .collect()
}
