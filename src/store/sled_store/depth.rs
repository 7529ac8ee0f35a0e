//! Queue depth by state as counters in the `counters` tree, changed in the same sled
//! transaction as the queue and lease entries they count. Reading the depth is four
//! key lookups whatever the queue holds, so `/metrics` and back-pressure cost the same
//! with ten messages queued or ten million, and an idle node does no work. The
//! `counters` tree's read-modify-write ([`add`], [`value`]) lives here too, and also
//! keeps the MIME log's live count per segment.

use std::cell::Cell;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Tree;

use crate::store::{QueueDepth, StoreError};

/// The counter keys, in `DepthDelta` slot order.
const KEYS: [&[u8]; 4] = [b"queued", b"scheduled", b"deferred", b"sending"];
const SENDING: usize = 3;
/// Present once the counters hold the depth (a store from before counters has none and
/// is counted once when opened).
const COUNTED: &[u8] = b"counted";

/// The slot a queue entry counts in, by the status it was queued in.
fn slot_of(queue_value: &[u8]) -> usize {
    match super::queued_status(queue_value) {
        b"scheduled" => 1,
        b"deferred" => 2,
        _ => 0,
    }
}

/// Changes to the counters made by one transaction, applied at its end.
#[derive(Default)]
pub(super) struct DepthDelta(Cell<[i64; 4]>);

impl DepthDelta {
    fn add(&self, slot: usize, by: i64) {
        let mut counts = self.0.get();
        counts[slot] += by;
        self.0.set(counts);
    }

    /// A queue entry with `value` was added (`1`) or removed (`-1`).
    pub(super) fn queue_entry(&self, value: &[u8], by: i64) {
        self.add(slot_of(value), by);
    }

    /// A lease was taken (`1`) or ended (`-1`).
    pub(super) fn lease(&self, by: i64) {
        self.add(SENDING, by);
    }

    /// Adds the changes to the counters, inside the caller's transaction.
    pub(super) fn apply(&self, counters: &TransactionalTree) -> Result<(), ConflictableTransactionError<StoreError>> {
        for (key, change) in KEYS.iter().zip(self.0.get()) {
            if change != 0 {
                add(counters, key, change)?;
            }
        }
        Ok(())
    }
}

/// Adds `by` to the counter at `key` (a big-endian `i64`, zero when absent) inside the
/// caller's transaction; the new value. The `counters` tree's one read-modify-write.
pub(super) fn add(
    counters: &TransactionalTree,
    key: &[u8],
    by: i64,
) -> Result<i64, ConflictableTransactionError<StoreError>> {
    let now = counters.get(key)?.map_or(0, |v| decode(&v)) + by;
    counters.insert(key, &now.to_be_bytes())?;
    Ok(now)
}

/// The counter at `key` as committed (zero when absent).
pub(super) fn value(counters: &Tree, key: &[u8]) -> Result<i64, StoreError> {
    Ok(counters.get(key)?.map_or(0, |v| decode(&v)))
}

fn decode(bytes: &[u8]) -> i64 {
    bytes.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

/// The depth the counters hold (never below zero: a queue entry written by hand, say,
/// and then parked would otherwise count negative).
pub(super) fn read(counters: &Tree) -> Result<QueueDepth, StoreError> {
    let mut counts = [0usize; 4];
    for (count, key) in counts.iter_mut().zip(KEYS) {
        *count = usize::try_from(value(counters, key)?.max(0)).unwrap_or(0);
    }
    let [queued, scheduled, deferred, sending] = counts;
    Ok(QueueDepth {
        queued,
        scheduled,
        deferred,
        sending,
    })
}

/// The depth counted entry by entry: what the counters must always equal.
pub(super) fn count(queue: &Tree, leases: &Tree) -> Result<QueueDepth, StoreError> {
    let mut counts = [0usize; 4];
    for entry in queue.iter() {
        let (_, value) = entry?;
        counts[slot_of(&value)] += 1;
    }
    let [queued, scheduled, deferred, _] = counts;
    Ok(QueueDepth {
        queued,
        scheduled,
        deferred,
        sending: leases.len(),
    })
}

/// Counts a store opened for the first time since counters exist, once.
pub(super) fn initialise(counters: &Tree, queue: &Tree, leases: &Tree) -> Result<(), StoreError> {
    if counters.contains_key(COUNTED)? {
        return Ok(());
    }
    let depth = count(queue, leases)?;
    let values = [depth.queued, depth.scheduled, depth.deferred, depth.sending];
    for (key, value) in KEYS.iter().zip(values) {
        counters.insert(*key, &i64::try_from(value).unwrap_or(i64::MAX).to_be_bytes())?;
    }
    counters.insert(COUNTED, &[])?;
    Ok(())
}
