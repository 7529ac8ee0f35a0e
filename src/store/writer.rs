//! The writer thread: the hot-path store calls (accepting a message, leasing one,
//! recording an attempt) run on one thread, which takes everything queued at that
//! moment, writes it in one [`Store::write_messages`] call, takes the leases asked for
//! in one [`Store::lease_due`], makes both durable with one [`Store::sync`] (one commit
//! on PostgreSQL), and answers: the writes, then the leases.
//!
//! Why a thread of its own: with a blocking-pool task per write and a shared flush,
//! every write cost several thread hand-offs (to the pool, into the flush wait, back
//! to the executor) plus sled's own per-transaction log writes, and on two cores those
//! were most of the cost of a send. Here a burst of writes costs one wake-up of this
//! thread, one transaction, one fsync, and one wake-up of each waiting executor
//! thread. A caller still gets its answer only after its own write is on disk, and a
//! lease is only ever of a message whose acceptance is on disk.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::oneshot;

use super::{Lease, MessageWrite, Store, StoreError};
use crate::domain::auth::TenantId;
use crate::domain::message::{IdempotencyKey, Message};

/// Calls taken into one batch, at most: bounds the wait of the first of them.
const MAX_BATCH: usize = 512;

/// Adjusts a message on the writer thread just before it is accepted, with what the
/// writer read for the batch at that moment (to apply suppressions, say).
pub type Prepare = Box<dyn FnOnce(&BatchReads, &mut Message) -> Result<(), StoreError> + Send>;

/// Reads what a worker needs with its lease, on the writer thread.
pub type WithLease<T> = Box<dyn FnOnce(&BatchReads, &Lease) -> Result<T, StoreError> + Send>;

/// What the writer thread reads once for a whole batch of acceptances or leases rather
/// than once per message: the suppressed addresses among their recipients.
pub struct BatchReads {
    suppressed: Result<HashSet<(TenantId, String)>, String>,
}

impl BatchReads {
    fn of<'m>(store: &dyn Store, messages: impl Iterator<Item = &'m Message>) -> Self {
        let asked: Vec<(TenantId, String)> = messages
            .flat_map(|m| {
                m.recipients
                    .iter()
                    .map(|r| (m.tenant.clone(), r.email.to_ascii_lowercase()))
            })
            .collect();
        let suppressed = if asked.is_empty() {
            Ok(HashSet::new())
        } else {
            store
                .suppressed_among(&asked)
                .map_err(|err| crate::telemetry::ErrorChain(&err).to_string())
        };
        Self { suppressed }
    }

    /// Which of `message`'s recipients (as written) its tenant has suppressed.
    pub fn suppressed(&self, message: &Message) -> Result<Vec<String>, StoreError> {
        let found = self
            .suppressed
            .as_ref()
            .map_err(|reason| StoreError::Batch(reason.clone()))?;
        Ok(message
            .recipients
            .iter()
            .filter(|r| found.contains(&(message.tenant.clone(), r.email.to_ascii_lowercase())))
            .map(|r| r.email.clone())
            .collect())
    }
}

/// Which due messages may be leased now. Delivery uses it to keep a tenant that is at
/// its cap on every relay from filling the workers while other tenants' mail waits.
pub trait LeasePolicy: Send + Sync {
    /// Whether one more of `tenant`'s messages may be leased, with `admitted` of them
    /// already admitted by this scan.
    fn admits(&self, tenant: &str, admitted: u32) -> bool;

    /// Counts a leased message of `tenant` against it until the guard is dropped.
    fn lease_taken(&self, tenant: &str) -> LeaseGuard;
}

/// Held while a leased message counts against its tenant (see [`LeasePolicy`]).
pub type LeaseGuard = Box<dyn std::any::Any + Send>;

/// A lease with its guard, or `None` when nothing is due.
type Leased = Option<(Lease, LeaseGuard)>;

/// Called with a lease, or `None` when nothing is due.
type LeaseAnswer = Box<dyn FnOnce(&BatchReads, Result<Leased, StoreError>) + Send>;

enum Call {
    Accept {
        message: Message,
        mime: Vec<u8>,
        key: Option<IdempotencyKey>,
        prepare: Prepare,
        answer: oneshot::Sender<Result<Message, StoreError>>,
    },
    Save {
        message: Message,
        release: bool,
        answer: oneshot::Sender<Result<(), StoreError>>,
    },
    Lease(LeaseAnswer),
}

/// A handle to the writer thread; cheap to clone. The thread ends when the last
/// handle is dropped, after finishing what was sent to it.
#[derive(Clone)]
pub struct StoreWriter {
    calls: mpsc::Sender<Call>,
}

impl StoreWriter {
    /// Starts the thread over `store`, leasing as `policy` admits.
    pub fn start(store: Arc<dyn Store>, policy: Arc<dyn LeasePolicy>) -> std::io::Result<Self> {
        let (calls, queue) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), policy.as_ref(), &queue))?;
        Ok(Self { calls })
    }

    /// [`Store::accept`] of `message` after `prepare` adjusted it; returns the message
    /// as stored, once it is on disk.
    pub async fn accept(
        &self,
        message: Message,
        mime: Vec<u8>,
        key: Option<IdempotencyKey>,
        prepare: Prepare,
    ) -> Result<Message, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.send(Call::Accept {
            message,
            mime,
            key,
            prepare,
            answer,
        })?;
        answered.await.map_err(|_| stopped())?
    }

    /// [`MessageWrite::Progress`], or [`Store::release`] with `release`; returns once on
    /// disk.
    pub async fn save(&self, message: Message, release: bool) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        self.send(Call::Save {
            message,
            release,
            answer,
        })?;
        answered.await.map_err(|_| stopped())?
    }

    /// Leases the earliest due message the policy admits, if any, with what `with`
    /// reads for it and the guard that counts it against its tenant until dropped.
    /// When `with` fails the lease is still the caller's, to put back.
    pub async fn lease<T: Send + 'static>(
        &self,
        with: WithLease<T>,
    ) -> Result<Option<(Lease, Result<T, StoreError>, LeaseGuard)>, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.send(Call::Lease(Box::new(move |reads, leased| {
            let result = leased.map(|lease| {
                lease.map(|(lease, guard)| {
                    let extra = with(reads, &lease);
                    (lease, extra, guard)
                })
            });
            let _ = answer.send(result);
        })))?;
        answered.await.map_err(|_| stopped())?
    }

    fn send(&self, call: Call) -> Result<(), StoreError> {
        self.calls.send(call).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Batch("the store writer has stopped".to_owned())
}

/// Takes whatever is queued (up to [`MAX_BATCH`]) and serves it, until every handle
/// is gone.
fn run(store: &dyn Store, policy: &dyn LeasePolicy, queue: &mpsc::Receiver<Call>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        // A panic must not take every later write down with it: the calls of this
        // batch lose their answers (their callers see the writer as stopped) and the
        // thread goes on with the next batch.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(store, policy, batch))).is_err() {
            tracing::error!("a store write panicked; its batch was not answered");
        }
    }
}

/// A write waiting for the batch's transaction and sync.
enum Pending {
    Accept(
        Message,
        Vec<u8>,
        Option<IdempotencyKey>,
        oneshot::Sender<Result<Message, StoreError>>,
    ),
    Save(Message, bool, oneshot::Sender<Result<(), StoreError>>),
}

impl Pending {
    fn write(&self) -> MessageWrite<'_> {
        match self {
            Pending::Accept(message, mime, key, _) => MessageWrite::Accept {
                message,
                mime,
                key: key.as_ref(),
            },
            Pending::Save(message, false, _) => MessageWrite::Progress(message),
            Pending::Save(message, true, _) => MessageWrite::Release(message),
        }
    }

    fn answer(self, outcome: Result<(), StoreError>) {
        match self {
            Pending::Accept(message, _, _, answer) => {
                let _ = answer.send(outcome.map(|()| message));
            }
            Pending::Save(_, _, answer) => {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// Writes, syncs and answers the batch's writes, then hands out its leases.
fn serve(store: &dyn Store, policy: &dyn LeasePolicy, batch: Vec<Call>) {
    let mut pending = Vec::new();
    let mut leases = Vec::new();
    let mut accepts = Vec::new();
    for call in batch {
        match call {
            Call::Accept {
                message,
                mime,
                key,
                prepare,
                answer,
            } => accepts.push((message, mime, key, prepare, answer)),
            Call::Save {
                message,
                release,
                answer,
            } => pending.push(Pending::Save(message, release, answer)),
            Call::Lease(answer) => leases.push(answer),
        }
    }
    if !accepts.is_empty() {
        let reads = BatchReads::of(store, accepts.iter().map(|(message, ..)| message));
        for (mut message, mime, key, prepare, answer) in accepts {
            match prepare(&reads, &mut message) {
                Ok(()) => pending.push(Pending::Accept(message, mime, key, answer)),
                Err(err) => {
                    let _ = answer.send(Err(err));
                }
            }
        }
    }
    // Leases are taken after the writes and before the sync, so that a backend that
    // commits at the sync commits them with the writes (one commit per batch on
    // PostgreSQL); they are handed out only once the sync made the writes durable.
    let had_writes = !pending.is_empty();
    let written = write(store, pending);
    let leased = match (&written, leases.is_empty()) {
        (Some(_), false) => Some(take_leases(store, policy, leases.len())),
        _ => None,
    };
    let synced = match (had_writes, &written) {
        (false, _) => Ok(()),
        (true, None) => Err("the store write failed".to_owned()),
        (true, Some(_)) => store
            .sync()
            .map_err(|err| crate::telemetry::ErrorChain(&err).to_string()),
    };
    if let (true, Err(reason)) = (had_writes, &synced) {
        tracing::error!(error = %reason, "store sync failed");
    }
    for (pending, outcome) in written.unwrap_or_default() {
        let outcome = match (&synced, outcome) {
            (_, Err(err)) => Err(err),
            (Err(reason), Ok(())) => Err(StoreError::Batch(reason.clone())),
            (Ok(()), Ok(())) => Ok(()),
        };
        pending.answer(outcome);
    }
    if leases.is_empty() {
        return;
    }
    let leased = match (synced, leased) {
        (Ok(()), Some(leased)) => leased,
        // What this batch wrote may not be on disk: lease nothing that could rest on it.
        _ => Err(StoreError::Batch("the store could not sync".to_owned())),
    };
    hand_out(store, policy, leases, leased);
}

/// Writes the batch; each write with its outcome, or `None` when the whole write
/// failed (every write is answered then).
fn write(store: &dyn Store, pending: Vec<Pending>) -> Option<Vec<(Pending, Result<(), StoreError>)>> {
    if pending.is_empty() {
        return Some(Vec::new());
    }
    let writes: Vec<MessageWrite<'_>> = pending.iter().map(Pending::write).collect();
    let written = store.write_messages(&writes);
    drop(writes);
    match written {
        Ok(outcomes) => Some(pending.into_iter().zip(outcomes).collect()),
        Err(err) => {
            let reason = crate::telemetry::ErrorChain(&err).to_string();
            tracing::error!(error = %reason, writes = pending.len(), "store write failed");
            pending
                .into_iter()
                .for_each(|p| p.answer(Err(StoreError::Batch(reason.clone()))));
            None
        }
    }
}

/// Leases up to `max` due messages that `policy` admits.
fn take_leases(store: &dyn Store, policy: &dyn LeasePolicy, max: usize) -> Result<Vec<Lease>, StoreError> {
    let mut admitted: HashMap<String, u32> = HashMap::new();
    let mut admit = |tenant: &str| {
        let count = admitted.get(tenant).copied().unwrap_or(0);
        let admits = policy.admits(tenant, count);
        if admits {
            admitted.insert(tenant.to_owned(), count + 1);
        }
        admits
    };
    store.lease_due(Utc::now(), max, &mut admit)
}

/// Answers the workers waiting for a lease, each with one of `leased` (or `None`).
fn hand_out(
    store: &dyn Store,
    policy: &dyn LeasePolicy,
    waiting: Vec<LeaseAnswer>,
    leased: Result<Vec<Lease>, StoreError>,
) {
    match leased {
        Ok(leases) => {
            let reads = BatchReads::of(store, leases.iter().map(|lease| &lease.message));
            let mut leases = leases.into_iter();
            for answer in waiting {
                let leased = leases.next().map(|lease| {
                    let guard = policy.lease_taken(lease.message.tenant.as_str());
                    (lease, guard)
                });
                answer(&reads, Ok(leased));
            }
        }
        Err(err) => {
            let reason = crate::telemetry::ErrorChain(&err).to_string();
            let nothing = BatchReads::of(store, std::iter::empty());
            for answer in waiting {
                answer(&nothing, Err(StoreError::Batch(reason.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::test_support::message;
    use crate::store::SledStore;

    /// Admits the tenants its function accepts, counting nothing.
    struct Admit(fn(&str) -> bool);

    impl LeasePolicy for Admit {
        fn admits(&self, tenant: &str, _admitted: u32) -> bool {
            (self.0)(tenant)
        }

        fn lease_taken(&self, _tenant: &str) -> LeaseGuard {
            Box::new(())
        }
    }

    fn nothing() -> Prepare {
        Box::new(|_, _| Ok(()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_accepts_are_stored_and_each_due_message_is_leased_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let writer = StoreWriter::start(Arc::clone(&store), Arc::new(Admit(|_| true))).unwrap();
        let accepts: Vec<_> = (0..40)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.accept(message(), b"mime".to_vec(), None, nothing()).await })
            })
            .collect();
        let mut accepted = HashSet::new();
        for accept in accepts {
            accepted.insert(accept.await.unwrap().unwrap().id);
        }
        assert_eq!(store.count_messages().unwrap(), 40);
        let leases: Vec<_> = (0..50)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.lease(Box::new(|_, _| Ok(()))).await })
            })
            .collect();
        let mut leased = HashSet::new();
        for lease in leases {
            if let Some((lease, _, _)) = lease.await.unwrap().unwrap() {
                assert!(leased.insert(lease.message.id), "a message was leased twice");
            }
        }
        assert_eq!(leased, accepted);
    }

    #[tokio::test]
    async fn a_lease_passes_over_tenants_the_policy_does_not_admit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let writer = StoreWriter::start(Arc::clone(&store), Arc::new(Admit(|tenant| tenant == "other"))).unwrap();
        let mut first = message();
        first.next_attempt_at = Some(Utc::now() - chrono::Duration::seconds(2));
        let mut second = message();
        second.tenant = crate::domain::auth::TenantId::parse("other").unwrap();
        second.next_attempt_at = Some(Utc::now() - chrono::Duration::seconds(1));
        writer.accept(first, b"m".to_vec(), None, nothing()).await.unwrap();
        writer
            .accept(second.clone(), b"m".to_vec(), None, nothing())
            .await
            .unwrap();
        let (lease, _, _) = writer.lease(Box::new(|_, _| Ok(()))).await.unwrap().unwrap();
        assert_eq!(
            lease.message.id, second.id,
            "the earlier message's tenant is not admitted"
        );
        assert!(writer.lease(Box::new(|_, _| Ok(()))).await.unwrap().is_none());
        assert_eq!(
            store.queue_depth().unwrap().queued,
            1,
            "the passed-over message stays queued"
        );
    }

    #[tokio::test]
    async fn a_held_key_fails_only_its_own_accept_and_prepare_sees_the_suppressions_read_for_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let suppression = crate::domain::suppression::Suppression {
            email: "b@example.test".into(),
            reason: crate::domain::suppression::SuppressionReason::Manual,
            created_at: Utc::now(),
            source: "api".into(),
            event_id: None,
        };
        store.put_suppression(&message().tenant, &suppression).unwrap();
        let writer = StoreWriter::start(Arc::clone(&store), Arc::new(Admit(|_| true))).unwrap();
        let key = IdempotencyKey {
            key: "k".into(),
            request_hash: "h".into(),
        };
        let first = writer.accept(message(), b"m".to_vec(), Some(key.clone()), nothing());
        let second = writer.accept(message(), b"m".to_vec(), Some(key), nothing());
        let other = writer.accept(
            message(),
            b"m".to_vec(),
            None,
            Box::new(|reads, message| {
                message.tags = reads.suppressed(message)?;
                Ok(())
            }),
        );
        let (first, second, other) = tokio::join!(first, second, other);
        assert!(first.is_ok());
        assert!(matches!(second, Err(StoreError::Conflict)));
        assert_eq!(other.unwrap().tags, ["b@example.test"]);
        assert_eq!(store.count_messages().unwrap(), 2);
    }
}
