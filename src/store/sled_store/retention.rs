//! Retention for the sled store: deleting what `storage.retention` and
//! `storage.mime_retention` have outlived, a bounded number of rows at a time.
//!
//! Every tree purged here is ordered oldest first — by key (`msg_…` ids are UUIDv7,
//! so the messages and MIME trees sort by creation time) or within each group of keys
//! (a tenant's events and reports, a webhook's attempts). So a walk stops at the first
//! row that is still young and the cost of a round is what it deletes, plus the few
//! old rows it must keep (a message still queued), plus one row per group: nothing
//! that grows with the queue. Each walk has its own budget and resume point, so a walk
//! that ran out carries on where it stopped instead of reading the same kept rows
//! again, and no walk starves the others. Events stay while their message does: a
//! message that is still alive would otherwise publish them again at its next write.

use chrono::{DateTime, TimeZone, Utc};
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};
use sled::{IVec, Tree};

use super::{decode, flatten, MimeRef, SledStore};
use crate::domain::event::PublishedEvent;
use crate::domain::message::{IdempotencyRecord, Message};
use crate::domain::status::MessageStatus;
use crate::domain::webhook::DeliveryAttempt;
use crate::store::{PurgeCutoffs, PurgeReport, StoreError};

/// Where each walk stopped last time (`None`: from the start).
#[derive(Debug, Default)]
pub(super) struct ResumePoints {
    messages: Option<IVec>,
    mime: Option<IVec>,
    idempotency: Option<IVec>,
    events: Option<Vec<u8>>,
    attempts: Option<Vec<u8>>,
    reports: Option<Vec<u8>>,
    stats: Option<Vec<u8>>,
}

/// The budget of one round, spent one examined row at a time.
struct Round {
    left: usize,
    report: PurgeReport,
}

impl Round {
    /// Takes one row from the budget; `false` when it is spent.
    fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.report.examined += 1;
        true
    }
}

/// The creation time a `msg_…` (or any prefixed UUIDv7) key carries.
fn time_of_id(key: &[u8]) -> Option<DateTime<Utc>> {
    let hex = std::str::from_utf8(key.get(4..16)?).ok()?;
    let millis = i64::from_str_radix(hex, 16).ok()?;
    Utc.timestamp_millis_opt(millis).single()
}

/// A message no worker holds and nothing waits for: only these are purged.
fn is_finished(message: &Message) -> bool {
    matches!(
        message.status,
        MessageStatus::Sent | MessageStatus::Failed | MessageStatus::Cancelled
    ) && !message.recipients.iter().any(|r| r.status.is_pending())
}

/// The smallest key after every key that starts with `prefix`.
fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

/// The group a `tenant \0 …` key belongs to: `tenant \0`.
fn tenant_group(key: &[u8]) -> usize {
    key.iter().position(|b| *b == 0).map_or(key.len(), |at| at + 1)
}

/// The group a webhook attempt key belongs to: the webhook id (`whk_` + 32 hex).
fn webhook_group(key: &[u8]) -> usize {
    key.len().min(36)
}

impl SledStore {
    /// Each walk examines at most `budget` rows; the report adds them up.
    pub(super) fn purge_rows(&self, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport::default();
        let mut walk = |purge: &mut dyn FnMut(&mut Round) -> Result<(), StoreError>| {
            let mut round = Round {
                left: budget,
                report: PurgeReport::default(),
            };
            purge(&mut round)?;
            report.examined += round.report.examined;
            report.deleted += round.report.deleted;
            Ok::<_, StoreError>(())
        };
        let history = cutoffs.history;
        walk(&mut |round| self.purge_messages(history, round))?;
        walk(&mut |round| self.purge_mime(cutoffs.mime, round))?;
        walk(&mut |round| {
            let resume = &mut self.resume().events;
            purge_groups(&self.events, tenant_group, resume, round, |_, value| {
                let event: PublishedEvent = decode(value)?;
                let message_gone = !self.messages.contains_key(event.data.message_id.as_bytes())?;
                if event.created_at >= history || !message_gone {
                    return Ok(false);
                }
                self.event_ids.remove(event.id.as_bytes())?;
                Ok(true)
            })
        })?;
        walk(&mut |round| {
            let resume = &mut self.resume().attempts;
            purge_groups(&self.webhook_deliveries, webhook_group, resume, round, |_, value| {
                Ok(decode::<DeliveryAttempt>(value)?.attempted_at < history)
            })
        })?;
        walk(&mut |round| {
            let resume = &mut self.resume().reports;
            purge_groups(&self.reports, tenant_group, resume, round, |_, value| {
                let record: serde_json::Value = decode(value)?;
                let received = record["received_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok());
                Ok(received.is_some_and(|at| at < history))
            })
        })?;
        walk(&mut |round| self.purge_idempotency(round))?;
        let stats_cutoff = crate::stats::record::slot_of(cutoffs.stats);
        walk(&mut |round| {
            let resume = &mut self.resume().stats;
            // A key that is not a row is its own group, and kept.
            let series = |key: &[u8]| crate::stats::record::slot_at(key).map_or(key.len(), |(at, _)| at);
            purge_groups(&self.stats, series, resume, round, |key, _| {
                Ok(crate::stats::record::slot_at(key).is_some_and(|(_, slot)| slot < stats_cutoff))
            })
        })?;
        Ok(report)
    }

    /// Finished messages created before `cutoff`, with their MIME and listing entry.
    fn purge_messages(&self, cutoff: DateTime<Utc>, round: &mut Round) -> Result<(), StoreError> {
        let resume = &mut self.resume().messages;
        walk_oldest_first(&self.messages, resume, round, younger_than(cutoff), |key, value| {
            let Ok(message) = decode::<Message>(value) else {
                return Ok(false);
            };
            if !is_finished(&message) {
                return Ok(false);
            }
            let listed = super::tenant_key(&message.tenant, message.id.as_str());
            let (deleted, dead) = (
                &self.messages,
                &self.mime,
                &self.tenant_messages,
                &self.leases,
                &self.counters,
            )
                .transaction(|(messages, mime, listing, leases, counters)| {
                    // Leased, or changed by a report since the read: kept for a later round.
                    if leases.get(key)?.is_some() || messages.get(key)?.as_ref() != Some(value) {
                        return Ok((false, None));
                    }
                    messages.remove(key)?;
                    let dead = remove_mime(mime, counters, key)?;
                    listing.remove(listed.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>((true, dead))
                })
                .map_err(flatten)?;
            self.delete_dead_segments(dead.as_slice())?;
            Ok(deleted)
        })
    }

    /// The MIME of finished messages created before `cutoff`.
    fn purge_mime(&self, cutoff: DateTime<Utc>, round: &mut Round) -> Result<(), StoreError> {
        let resume = &mut self.resume().mime;
        walk_oldest_first(&self.mime, resume, round, younger_than(cutoff), |key, _| {
            let (deleted, dead) = (&self.messages, &self.mime, &self.leases, &self.counters)
                .transaction(|(messages, mime, leases, counters)| {
                    let finished = match messages.get(key)? {
                        Some(value) => decode::<Message>(&value).is_ok_and(|m| is_finished(&m)),
                        // Its message is gone (purged with it, or never written): nothing needs it.
                        None => true,
                    };
                    if !finished || leases.get(key)?.is_some() {
                        return Ok((false, None));
                    }
                    let dead = remove_mime(mime, counters, key)?;
                    Ok::<_, ConflictableTransactionError<StoreError>>((true, dead))
                })
                .map_err(flatten)?;
            self.delete_dead_segments(dead.as_slice())?;
            Ok(deleted)
        })
    }

    /// Idempotency records past their window. Their keys are the callers' own, in no
    /// time order, so this walk goes round the whole tree a budget at a time.
    fn purge_idempotency(&self, round: &mut Round) -> Result<(), StoreError> {
        let now = Utc::now();
        let resume = &mut self.resume().idempotency;
        walk_oldest_first(
            &self.idempotency,
            resume,
            round,
            |_| false,
            |key, value| {
                if decode::<IdempotencyRecord>(value).is_ok_and(|r| !r.is_fresh(now)) {
                    self.idempotency.remove(key)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )
    }

    fn resume(&self) -> std::sync::MutexGuard<'_, ResumePoints> {
        self.resume_points
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a `msg_…` key was created at or after `cutoff` (or carries no time): where a
/// walk of a tree ordered by creation time can stop.
fn younger_than(cutoff: DateTime<Utc>) -> impl Fn(&[u8]) -> bool {
    move |key| time_of_id(key).is_none_or(|at| at >= cutoff)
}

/// Removes a message's MIME inside the caller's transaction, counting it out of its
/// segment; the segment when nothing points into it any more (to delete once committed).
fn remove_mime(
    mime: &TransactionalTree,
    counters: &TransactionalTree,
    key: &[u8],
) -> Result<Option<u32>, ConflictableTransactionError<StoreError>> {
    let Some(at) = mime.remove(key)?.as_deref().and_then(MimeRef::decode) else {
        return Ok(None);
    };
    let live = super::count_segment(counters, at.segment, -1)?;
    Ok((live <= 0).then_some(at.segment))
}

/// Walks `tree` from `resume` on until `young(key)` says the rest is too recent, giving
/// each row to `delete` (which deletes what it may and says whether it did); when the
/// budget runs out first, `resume` is where the next round carries on.
fn walk_oldest_first(
    tree: &Tree,
    resume: &mut Option<IVec>,
    round: &mut Round,
    young: impl Fn(&[u8]) -> bool,
    mut delete: impl FnMut(&IVec, &IVec) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let start = resume.take().unwrap_or_default();
    for entry in tree.range(start..) {
        let (key, value) = entry?;
        if young(&key) {
            return Ok(());
        }
        if !round.take() {
            *resume = Some(key);
            return Ok(());
        }
        round.report.deleted += usize::from(delete(&key, &value)?);
    }
    Ok(())
}

/// In each group of `tree` (keys sharing their first `group_len(key)` bytes, oldest
/// first), from `resume` on, deletes rows from the oldest while `expired` (given the key
/// and value) says so (it may
/// delete what hangs off the row), then moves to the next group. When the budget runs
/// out, `resume` is where the next round carries on.
fn purge_groups(
    tree: &Tree,
    group_len: impl Fn(&[u8]) -> usize,
    resume: &mut Option<Vec<u8>>,
    round: &mut Round,
    mut expired: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut from = resume.take().unwrap_or_default();
    while let Some(entry) = tree.range(from.as_slice()..).next() {
        let (key, value) = entry?;
        if !round.take() {
            *resume = Some(key.to_vec());
            return Ok(());
        }
        // A row that does not decode is kept (and its group skipped), never deleted.
        if expired(&key, &value).or_else(|err| match err {
            StoreError::Corrupt(_) => Ok(false),
            other => Err(other),
        })? {
            tree.remove(&key)?;
            round.report.deleted += 1;
            from = key.to_vec();
        } else {
            match after_prefix(&key[..group_len(&key)]) {
                Some(next) => from = next,
                None => return Ok(()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::message;
    use crate::store::Store as _;

    #[test]
    fn a_purge_spends_at_most_its_budget_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for _ in 0..5 {
            let mut waiting = message();
            waiting.status = MessageStatus::Scheduled;
            waiting.next_attempt_at = Some(Utc::now() + chrono::Duration::hours(1));
            store.accept(&waiting, b"mime", None).unwrap();
        }
        let later = Utc::now() + chrono::Duration::hours(2);
        let cutoffs = PurgeCutoffs {
            history: later,
            mime: later,
            stats: later,
        };
        let round = store.purge(cutoffs, 2).unwrap();
        assert!(round.examined <= 2 * 6, "at most the budget per kind: {round:?}");
        assert!(
            store.resume().messages.is_some(),
            "the next round starts after what it kept"
        );
    }

    #[test]
    fn a_message_id_carries_its_creation_time() {
        let before = Utc::now() - chrono::Duration::milliseconds(1);
        let id = crate::domain::ids::MessageId::generate();
        let at = time_of_id(id.as_str().as_bytes()).unwrap();
        assert!(at >= before && at <= Utc::now(), "{at}");
    }

    #[test]
    fn the_key_after_a_prefix_skips_the_whole_group() {
        assert_eq!(after_prefix(b"acme\0").unwrap(), b"acme\x01");
        assert_eq!(after_prefix(b"a\xff").unwrap(), b"b");
        assert!(after_prefix(b"\xff\xff").is_none());
    }
}
