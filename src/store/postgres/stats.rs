//! Report counters: rows keyed as `crate::stats::record` lays them out, and the journal
//! every message write appends its batch's changes to (one row per batch, so nodes
//! writing at once never wait on a hot counter row). [`fold`] moves the journal into
//! the rows under an advisory lock (one folder at a time across nodes); [`read`] reads
//! rows and journal in one snapshot, so a report is exact whether or not a fold ran.

use std::collections::BTreeMap;
use std::ops::Range;

use postgres::{IsolationLevel, Row};

use super::pool::Pool;
use crate::domain::auth::TenantId;
use crate::stats::record::{slot_at, SeriesRows};
use crate::stats::{Series, StatsDelta, StatsRow, Tally};
use crate::store::StoreError;

/// Held by the node folding the journal.
const FOLD_LOCK: i64 = 0x6d67_7374_6174_7331;

pub(super) fn read(
    pool: &Pool,
    tenant: &TenantId,
    series: &Series,
    slots: Range<u32>,
) -> Result<Vec<StatsRow>, StoreError> {
    let mut read = SeriesRows::new(tenant.as_str(), series, slots);
    let mut client = pool.get()?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    for row in tx.query(
        "SELECT key, tally FROM stats_rows WHERE key >= $1 AND key < $2",
        &[&read.start, &read.end],
    )? {
        read.row(row.get(0), row.get(1));
    }
    for row in tx.query("SELECT delta FROM stats_journal", &[])? {
        read.journal(row.get(0));
    }
    tx.commit()?;
    Ok(read.finish())
}

/// Moves up to `max` journal rows into the counter rows in one transaction.
pub(super) fn fold(pool: &Pool, max: usize) -> Result<usize, StoreError> {
    let mut client = pool.get()?;
    let mut tx = client.transaction()?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&FOLD_LOCK])?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let taken = tx.query(
        "DELETE FROM stats_journal WHERE id IN (SELECT id FROM stats_journal ORDER BY id LIMIT $1) RETURNING delta",
        &[&max],
    )?;
    if taken.is_empty() {
        return Ok(0);
    }
    let mut delta = StatsDelta::default();
    for row in &taken {
        // A row that does not decode is dropped with the others: kept, it would stop
        // every fold after it.
        if let Some(batch) = StatsDelta::decode(row.get(0)) {
            delta.merge(&batch);
        }
    }
    let keys: Vec<&[u8]> = delta.rows().map(|(key, _)| key).collect();
    let current: BTreeMap<Vec<u8>, Tally> = tx
        .query(
            "SELECT key, tally FROM stats_rows WHERE key = ANY($1) FOR UPDATE",
            &[&keys],
        )?
        .iter()
        .filter_map(|row: &Row| Some((row.get::<_, Vec<u8>>(0), Tally::decode(row.get(1))?)))
        .collect();
    let (mut keys, mut slots, mut tallies) = (vec![], vec![], vec![]);
    for (key, change) in delta.rows() {
        let mut tally = current.get(key).cloned().unwrap_or_default();
        tally.add(change);
        let slot = slot_at(key).map_or(0, |(_, slot)| i32::try_from(slot).unwrap_or(i32::MAX));
        keys.push(key.to_vec());
        slots.push(slot);
        tallies.push(tally.encode());
    }
    tx.execute(
        "INSERT INTO stats_rows (key, slot, tally) SELECT * FROM unnest($1::bytea[], $2::int4[], $3::bytea[])
         ON CONFLICT (key) DO UPDATE SET tally = excluded.tally",
        &[&keys, &slots, &tallies],
    )?;
    tx.commit()?;
    Ok(taken.len())
}
