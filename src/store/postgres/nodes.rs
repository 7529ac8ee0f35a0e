//! This process as one node among several: its heartbeat (with the database's clock),
//! the reclaim of leases whose node went silent, the `LISTEN` that wakes idle workers,
//! and the fencing tokens of the leases this node holds.

use std::collections::HashMap;

use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::store::{StoreError, StoreHealth};

use super::pool::Pool;

/// How often a node tells the database it is alive.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a node may stay silent before other nodes take its leases back (by the
/// database's clock).
pub(super) const LEASE_EXPIRY: Duration = Duration::from_secs(10);
/// How long after its last heartbeat that reached the database a node stops opening
/// SMTP transactions: well before [`LEASE_EXPIRY`], so whatever it started ends
/// before another node can take the message.
pub(super) const STOP_SENDING_AFTER: Duration = Duration::from_secs(5);
/// At most one `NOTIFY` per node in this time: a burst of batches wakes the other
/// nodes once, and their poll catches the rest. (Every `NOTIFY` wakes every idle
/// worker of every other node into a lease transaction: at 50 ms, four busy nodes on
/// two cores spent a tenth of their transactions on leases that found nothing.)
pub(super) const NOTIFY_EVERY: Duration = Duration::from_millis(200);
/// How often a lease scan starts from the oldest due row rather than from where the
/// last scan found the oldest live one (see [`Node::scan_floor`]).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);
/// How far below what the last scan found the next one starts: more than a message
/// takes from being given its due time to being committed, under load.
const FLOOR_LAG: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// The channel new work is announced on.
pub(super) const CHANNEL: &str = "mailgate_queue";

type Waker = Arc<dyn Fn() + Send + Sync>;

pub(super) struct Node {
    pub id: String,
    /// When the last heartbeat that the database answered was sent.
    last_beat: Mutex<Instant>,
    /// Lease token of each message this node holds (see `messages`).
    fences: Mutex<HashMap<String, i64>>,
    waker: Mutex<Option<Waker>>,
    last_notify: Mutex<Option<Instant>>,
    /// Where lease scans start, and when the last one started from the beginning.
    floor: Mutex<(Option<DateTime<Utc>>, Option<Instant>)>,
    stop: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl Node {
    /// Registers a new node and starts its heartbeat and `LISTEN` threads.
    pub fn register(pool: Arc<Pool>) -> Result<Arc<Self>, StoreError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let id = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        pool.get()?.execute("INSERT INTO nodes (node) VALUES ($1)", &[&id])?;
        let node = Arc::new(Self {
            id,
            last_beat: Mutex::new(Instant::now()),
            fences: Mutex::new(HashMap::new()),
            waker: Mutex::new(None),
            last_notify: Mutex::new(None),
            floor: Mutex::new((None, None)),
            stop: AtomicBool::new(false),
        });
        tracing::info!(node = %node.id, "joined the database as a node");
        let (beating, listening) = (Arc::clone(&node), Arc::clone(&node));
        let listen_pool = Arc::clone(&pool);
        std::thread::Builder::new()
            .name("pg-heartbeat".into())
            .spawn(move || beating.heartbeat_loop(&pool))
            .map_err(StoreError::Io)?;
        std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listening.listen_loop(&listen_pool))
            .map_err(StoreError::Io)?;
        Ok(node)
    }

    /// Stops the threads and removes the node, so its leases are taken back at once
    /// rather than after [`LEASE_EXPIRY`].
    pub fn leave(&self, pool: &Pool) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut client) = pool.get() {
            let _ = client.execute("DELETE FROM nodes WHERE node = $1", &[&self.id]);
        }
    }

    /// One heartbeat; the node row comes back if another node removed it.
    pub fn beat(&self, pool: &Pool) -> Result<(), StoreError> {
        let sent = Instant::now();
        pool.get()?.execute(
            "INSERT INTO nodes (node) VALUES ($1) ON CONFLICT (node) DO UPDATE SET heartbeat_at = now()",
            &[&self.id],
        )?;
        *lock(&self.last_beat) = sent;
        Ok(())
    }

    fn heartbeat_loop(&self, pool: &Pool) {
        // Registering was the first beat, and start-up reclaims (`recover_leases`).
        std::thread::sleep(HEARTBEAT_EVERY);
        while !self.stop.load(Ordering::Relaxed) {
            match self.beat(pool) {
                Ok(()) => {
                    if let Err(err) = reclaim_expired(pool, self) {
                        tracing::warn!(error = %err, "could not reclaim the leases of silent nodes");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "the heartbeat did not reach the database"),
            }
            std::thread::sleep(HEARTBEAT_EVERY);
        }
    }

    /// Whether this node may open an SMTP transaction now (see [`STOP_SENDING_AFTER`]).
    pub fn may_deliver(&self) -> bool {
        lock(&self.last_beat).elapsed() < STOP_SENDING_AFTER
    }

    pub fn health(&self) -> StoreHealth {
        let silent = lock(&self.last_beat).elapsed();
        if silent < STOP_SENDING_AFTER {
            StoreHealth::Writable
        } else {
            StoreHealth::Failing(format!("the database has not answered for {}s", silent.as_secs()))
        }
    }

    pub fn hold(&self, leases: impl IntoIterator<Item = (String, i64)>) {
        lock(&self.fences).extend(leases);
    }

    /// The token of the lease this node holds on `id`, if any.
    pub fn token(&self, id: &str) -> Option<i64> {
        lock(&self.fences).get(id).copied()
    }

    /// The lease on `id` ended (released, or lost to another node).
    pub fn let_go(&self, id: &str) {
        lock(&self.fences).remove(id);
    }

    /// Whether a batch that queued due work should `NOTIFY` (see [`NOTIFY_EVERY`]).
    pub fn should_notify(&self) -> bool {
        let mut last = lock(&self.last_notify);
        if last.is_some_and(|at| at.elapsed() < NOTIFY_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// The due time a lease scan starts from. The queue's index keeps an entry for
    /// every row deleted or leased until vacuum removes it, and a transaction left open
    /// anywhere keeps vacuum from removing it: a scan from the oldest due time would
    /// walk every message delivered since. So a scan starts where the last one found the
    /// oldest live row, and once every [`FULL_SCAN_EVERY`] from the beginning, for a
    /// row that arrived below the floor (due in the past, or put back by a reclaim).
    pub fn scan_floor(&self) -> DateTime<Utc> {
        let mut floor = lock(&self.floor);
        match *floor {
            (Some(at), Some(full)) if full.elapsed() < FULL_SCAN_EVERY => at,
            _ => {
                floor.1 = Some(Instant::now());
                DateTime::<Utc>::UNIX_EPOCH
            }
        }
    }

    /// What a scan found: the due time of the oldest live row it could take, or (none
    /// left) the time it scanned up to. The next floor lies [`FLOOR_LAG`] before it: a
    /// message is queued with the due time it was given before its batch committed.
    pub fn scanned_to(&self, oldest: DateTime<Utc>) {
        lock(&self.floor).0 = Some(oldest - FLOOR_LAG);
    }

    pub fn on_new_work(&self, wake: Waker) {
        *lock(&self.waker) = Some(wake);
    }

    fn listen_loop(&self, pool: &Pool) {
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(err) = self.listen(pool) {
                tracing::warn!(error = %err, "LISTEN lost its connection; polling until it is back");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    fn listen(&self, pool: &Pool) -> Result<(), StoreError> {
        let mut client = pool.connect()?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        while !self.stop.load(Ordering::Relaxed) {
            let mut woken = false;
            {
                let mut notifications = client.notifications();
                let mut pending = notifications.timeout_iter(Duration::from_secs(1));
                while pending.next()?.is_some() {
                    woken = true;
                }
            }
            if woken {
                if let Some(wake) = lock(&self.waker).clone() {
                    wake();
                }
            }
            if client.is_closed() {
                return Err(StoreError::Io(std::io::Error::other("the LISTEN connection closed")));
            }
        }
        Ok(())
    }
}

/// Puts back on the queue, due now, every lease held by a node that has not beaten for
/// [`LEASE_EXPIRY`] or is gone, and logs each message: its node may have sent it before
/// it died, so a second delivery of it is possible, and this is where it is counted.
pub(super) fn reclaim_expired(pool: &Pool, node: &Node) -> Result<usize, StoreError> {
    let rows = pool.get()?.query(
        "WITH silent AS (
            SELECT id, node FROM queue q
             WHERE q.node IS NOT NULL AND q.node <> $1
               AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = q.node
                                AND n.heartbeat_at > now() - make_interval(secs => $2))
             FOR UPDATE SKIP LOCKED)
         UPDATE queue q SET node = NULL, token = NULL, due_at = now()
           FROM silent WHERE q.id = silent.id
         RETURNING q.id, silent.node",
        &[&node.id, &seconds(LEASE_EXPIRY)],
    )?;
    for row in &rows {
        let (id, holder): (String, String) = (row.get(0), row.get(1));
        tracing::warn!(message_id = %id, node = %holder, "took back the lease of a silent node: it may have sent this message already (a possible duplicate)");
    }
    Ok(rows.len())
}
