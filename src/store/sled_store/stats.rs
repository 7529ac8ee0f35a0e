//! Counter rows of `/v1/stats` in the `stats` tree, keyed as
//! `crate::stats::record` lays them out, and the journal they are folded
//! from.
//!
//! A message write does not touch the rows: the counter changes of its whole batch go
//! into `stats_journal` as one entry, in the same transaction as the events. Read and
//! rewrite a dozen rows in every transaction of the writer thread and the end-to-end
//! rate dropped 15 %; one more key costs next to nothing. [`fold`] moves entries into
//! the rows in the background, atomically, and [`read`] adds what is still in the
//! journal, so a report is exact at any moment and after any crash.
//! A series (tenant, filter, grouping) is one contiguous key range ordered by slot,
//! so a report reads exactly the rows of its slots — with a grouping, one row per
//! group value active in each slot — and never a message. Retention deletes the old
//! end of each series and jumps to the next one at the first young row.

use std::ops::Range;

use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};
use sled::Tree;

use crate::domain::auth::TenantId;
use crate::stats::record::SeriesRows;
use crate::stats::{Series, StatsDelta, StatsRow, Tally};
use crate::store::StoreError;

/// Adds the delta to its rows, inside the caller's transaction.
fn apply(delta: &StatsDelta, tree: &TransactionalTree) -> Result<(), ConflictableTransactionError<StoreError>> {
    for (key, tally) in delta.rows() {
        let mut row = tree
            .get(key)?
            .and_then(|bytes| Tally::decode(&bytes))
            .unwrap_or_default();
        row.add(tally);
        tree.insert(key, row.encode())?;
    }
    Ok(())
}

/// Moves up to `max` journal entries (each the counter changes of one message write,
/// written in its transaction) into the rows, in one transaction that also removes
/// them: a crash before it leaves them in the journal, after it in the rows, never in
/// both. The caller holds the fold lock.
pub(super) fn fold(rows: &Tree, journal: &Tree, max: usize) -> Result<usize, StoreError> {
    let mut keys = Vec::new();
    let mut delta = StatsDelta::default();
    for entry in journal.iter().take(max) {
        let (key, value) = entry?;
        // An entry that does not decode is dropped with the others: kept, it would
        // stop every fold after it.
        if let Some(batch) = StatsDelta::decode(&value) {
            delta.merge(&batch);
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    (journal, rows)
        .transaction(|(journal, rows)| {
            for key in &keys {
                journal.remove(key)?;
            }
            apply(&delta, rows)
        })
        .map_err(super::flatten)?;
    Ok(keys.len())
}

/// The rows of one series in `slots`, in key order: the counter rows plus what the
/// journal holds for them. The caller holds the fold lock.
pub(super) fn read(
    tree: &Tree,
    journal: &Tree,
    tenant: &TenantId,
    series: &Series,
    slots: Range<u32>,
) -> Result<Vec<StatsRow>, StoreError> {
    let mut read = SeriesRows::new(tenant.as_str(), series, slots);
    for entry in tree.range(read.start.clone()..read.end.clone()) {
        let (key, value) = entry?;
        read.row(&key, &value);
    }
    for entry in journal.iter() {
        read.journal(&entry?.1);
    }
    Ok(read.finish())
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;
    use crate::domain::message::{DeliveryOutcome, ExternalReport, SmtpReply};
    use crate::domain::status::EventType;
    use crate::stats::record::slot_of;
    use crate::stats::Dimension;
    use crate::store::sled_store::SledStore;
    use crate::store::test_support::message;
    use crate::store::{PurgeCutoffs, Store as _};

    fn all() -> Series {
        Series {
            filter: None,
            group: None,
        }
    }

    fn whole_day(store: &SledStore, series: &Series) -> Vec<StatsRow> {
        let now = Utc::now();
        let tenant = TenantId::parse("acme").unwrap();
        store
            .stats(
                &tenant,
                series,
                slot_of(now - Duration::days(1))..slot_of(now + Duration::days(2)),
            )
            .unwrap()
    }

    fn sum(rows: &[StatsRow]) -> Tally {
        let mut total = Tally::default();
        for row in rows {
            total.add(&row.tally);
        }
        total
    }

    fn reply(code: u16) -> SmtpReply {
        SmtpReply {
            code: Some(code),
            enhanced: Some("5.1.1".into()),
            diagnostic: "user unknown".into(),
        }
    }

    #[test]
    fn counters_move_with_the_writes_and_a_late_report_counts_when_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut msg = message();
        msg.tags = vec!["welcome".into()];
        store.accept(&msg, b"mime", None).unwrap();
        let mut leased = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0).message;
        leased.record_outcome(0, DeliveryOutcome::Sent(reply(250)), "relay-a", false, Utc::now());
        leased.finish_attempt(None);
        store.release(&leased).unwrap();
        store.release(&leased).unwrap();

        let tomorrow = Utc::now() + Duration::days(1);
        let tenant = msg.tenant.clone();
        store
            .apply_report(&tenant, &msg.id, &mut |m| {
                let report = ExternalReport {
                    event_type: EventType::Bounced,
                    smtp: Some(reply(550)),
                    bounce: Some(crate::domain::bounce::classify(Some(550), Some("5.1.1"), "", "dsn")),
                };
                m.record_report(0, report, crate::domain::ids::EventId::generate(), tomorrow);
            })
            .unwrap();

        let rows = whole_day(&store, &all());
        let total = sum(&rows);
        assert_eq!(
            (total.counts.accepted, total.counts.sent, total.counts.bounced_hard),
            (1, 1, 1),
            "a write repeated counts once"
        );
        let late = rows.iter().find(|r| r.tally.counts.bounced_hard == 1).unwrap();
        assert_eq!(late.slot, slot_of(tomorrow), "the bounce counts when it was reported");

        let by_relay = whole_day(
            &store,
            &Series {
                filter: None,
                group: Some(Dimension::Upstream),
            },
        );
        let at_a: Vec<&StatsRow> = by_relay.iter().filter(|r| r.group == "relay-a").collect();
        assert_eq!(
            at_a.iter()
                .map(|r| r.tally.counts.sent + r.tally.counts.bounced_hard)
                .sum::<u64>(),
            2,
            "the DSN counts at the relay that sent"
        );
        let by_tag = Series {
            filter: None,
            group: Some(Dimension::Tag),
        };
        let welcome: Vec<StatsRow> = whole_day(&store, &by_tag)
            .into_iter()
            .filter(|r| r.group == "welcome")
            .collect();
        assert_eq!(sum(&welcome).counts.accepted, 1);
        let other_tenant = TenantId::parse("other").unwrap();
        assert!(store.stats(&other_tenant, &all(), 0..u32::MAX).unwrap().is_empty());
    }

    #[test]
    fn a_report_reads_the_same_rows_with_ten_messages_or_a_thousand() {
        let read = |messages: usize| {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            let first = message();
            for _ in 0..messages {
                let mut msg = message();
                msg.created_at = first.created_at;
                store
                    .write_messages(&[crate::store::MessageWrite::Accept {
                        message: &msg,
                        mime: b"m",
                        key: None,
                    }])
                    .unwrap();
            }
            let thirty_days = slot_of(first.created_at - Duration::days(30))..slot_of(first.created_at) + 1;
            let unfolded = store.stats(&first.tenant, &all(), thirty_days.clone()).unwrap();
            assert_eq!(
                store.fold_stats(usize::MAX).unwrap(),
                messages,
                "one journal entry per write"
            );
            let rows = store.stats(&first.tenant, &all(), thirty_days).unwrap();
            assert_eq!(rows, unfolded, "the same counts from the journal and from the rows");
            assert_eq!(sum(&rows).counts.accepted, messages as u64);
            assert!(store.stats_journal.is_empty(), "a report after a fold reads rows alone");
            assert_eq!(store.fold_stats(10).unwrap(), 0);
            rows.len()
        };
        assert_eq!(read(10), 1);
        assert_eq!(
            read(1_000),
            1,
            "one counter row per slot, whatever the number of messages"
        );
    }

    #[test]
    fn retention_drops_old_slots_and_keeps_young_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut old = message();
        old.created_at = Utc::now() - Duration::days(500);
        old.next_attempt_at = None;
        store.accept(&old, b"m", None).unwrap();
        let young = message();
        store.accept(&young, b"m", None).unwrap();
        let keep_history = Utc::now() - Duration::days(1_000);
        let cutoffs = PurgeCutoffs {
            history: keep_history,
            mime: keep_history,
            stats: Utc::now() - Duration::days(400),
        };
        store.fold_stats(usize::MAX).unwrap();
        let report = store.purge(cutoffs, 1_000).unwrap();
        assert!(report.deleted >= 4, "every series of the old slot: {report:?}");
        let rows = store.stats(&young.tenant, &all(), 0..u32::MAX).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].slot, slot_of(young.created_at));
    }
}
