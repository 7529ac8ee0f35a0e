//! Retention on PostgreSQL: a day of history whose every row is past
//! `storage.retention` goes as a partition (`DROP TABLE`, no dead rows for vacuum).
//! A messages partition that still holds a message waiting in the queue is kept, and
//! only its finished messages are deleted; so are old rows of the default partitions.
//! MIME is dropped from finished messages row by row (`storage.mime_retention` is
//! shorter than the partitions it would have to wait for).

use chrono::{Duration, Utc};
use postgres::Client;

use super::pool::Pool;
use super::schema::{self, message_id_at, message_ids_of};
use crate::domain::message::IdempotencyRecord;
use crate::stats::record::slot_of;
use crate::store::{PurgeCutoffs, PurgeReport, StoreError};

/// How many days of partitions are made ahead.
const DAYS_AHEAD: i64 = 3;

pub(super) fn purge(pool: &Pool, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError> {
    let mut client = pool.get()?;
    schema::ensure_partitions(&mut client, Utc::now(), DAYS_AHEAD)?;
    let limit = i64::try_from(budget).unwrap_or(i64::MAX);
    let mut report = PurgeReport::default();
    let history_day = cutoffs.history.date_naive();
    for table in ["events", "webhook_attempts", "reports"] {
        for partition in schema::partitions(&mut client, table)? {
            if partition.day + Duration::days(1) <= history_day {
                schema::drop_partition(&mut client, &partition.name)?;
                report.deleted += 1;
            }
        }
        let deleted = client.execute(
            &format!(
                "DELETE FROM {table}_default WHERE ctid IN (SELECT ctid FROM {table}_default WHERE day < $1 LIMIT $2)"
            ),
            &[&history_day, &limit],
        )?;
        report.deleted += usize::try_from(deleted).unwrap_or(0);
    }
    for partition in schema::partitions(&mut client, "messages")? {
        if partition.day + Duration::days(1) > history_day {
            continue;
        }
        let (low, high) = message_ids_of(partition.day);
        report.examined += 1;
        let waiting: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM queue WHERE id >= $1 AND id < $2)",
                &[&low, &high],
            )?
            .get(0);
        if waiting {
            report.deleted += delete_finished(&mut client, &partition.name, &message_id_at(cutoffs.history), limit)?;
        } else {
            schema::drop_partition(&mut client, &partition.name)?;
            report.deleted += 1;
        }
    }
    report.deleted += delete_finished(&mut client, "messages_default", &message_id_at(cutoffs.history), limit)?;
    let expired = client.execute(
        "UPDATE messages SET mime = NULL WHERE id IN (
            SELECT m.id FROM messages m WHERE m.mime IS NOT NULL AND m.id < $1
               AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.id = m.id)
             ORDER BY m.id LIMIT $2)",
        &[&message_id_at(cutoffs.mime), &limit],
    )?;
    report.deleted += usize::try_from(expired).unwrap_or(0);
    let slot = i32::try_from(slot_of(cutoffs.stats)).unwrap_or(i32::MAX);
    report.deleted += usize::try_from(client.execute("DELETE FROM stats_rows WHERE slot < $1", &[&slot])?).unwrap_or(0);
    let stale = Utc::now() - IdempotencyRecord::TTL;
    report.deleted +=
        usize::try_from(client.execute("DELETE FROM idempotency WHERE created_at < $1", &[&stale])?).unwrap_or(0);
    Ok(report)
}

/// Deletes up to `limit` finished messages (not in the queue) of `table` made before
/// the id `before`.
fn delete_finished(client: &mut Client, table: &str, before: &str, limit: i64) -> Result<usize, StoreError> {
    let deleted = client.execute(
        &format!(
            "DELETE FROM {table} WHERE id IN (
                SELECT m.id FROM {table} m WHERE m.id < $1
                   AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.id = m.id) LIMIT $2)"
        ),
        &[&before, &limit],
    )?;
    Ok(usize::try_from(deleted).unwrap_or(0))
}
