//! The PostgreSQL implementation of [`Store`]: several mailgate nodes share one
//! database that the team already runs (replicated, backed up, monitored).
//!
//! # How nodes share the work
//!
//! - Every node accepts. A batch of the writer thread is one transaction and one commit
//!   (`synchronous_commit` makes it durable), whatever its size: the `202` waits for it.
//! - Every node delivers. [`Store::lease_due`] claims due queue rows with
//!   `FOR UPDATE SKIP LOCKED` in one statement per batch and stamps each with this node
//!   and a fencing token from a sequence; the end of the attempt is written only while
//!   the row still carries that token (`messages`).
//! - A node heartbeats every [`nodes::HEARTBEAT_EVERY`] with the database's clock. When a
//!   node has been silent for [`nodes::LEASE_EXPIRY`], any other node puts its leases
//!   back on the queue (logging each message id: the dead node may have sent it). A node
//!   whose own heartbeat has not reached the database for [`nodes::STOP_SENDING_AFTER`]
//!   opens no new SMTP transaction ([`Store::may_deliver`]), so its leases expire only
//!   after what it had started is over.
//! - New work wakes idle nodes through `LISTEN`/`NOTIFY` (one `NOTIFY` per committed
//!   batch that queued due work, at most every [`nodes::NOTIFY_EVERY`] per node); the
//!   workers' one-second poll is the fallback.
//! - The event stream's positions are `transaction id × 2^20 + order in the
//!   transaction`, and a read returns only events of transactions older than every
//!   writing transaction of this deployment still running (writers take a shared
//!   advisory lock before their first write; `stream::HORIZON`): a cursor never passes
//!   an event that commits later with a smaller position, and another application's
//!   long transaction on the same database holds nothing back.
//!
//! # Layout
//!
//! `schema` (migrations, partitions), `pool`, `nodes` (heartbeats, lease reclaim,
//! LISTEN), and one file per concern of the contract: `messages` (writes, the queue,
//! leases), `stream` (events, webhooks and their outbox), `catalog` (templates,
//! suppressions, domains, secrets, revocations, reports), `stats`, `retention`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

mod catalog;
mod messages;
mod nodes;
mod pool;
mod retention;
mod schema;
mod stats;
mod stream;

use super::{
    CancelOutcome, Lease, MessageWrite, PurgeCutoffs, PurgeReport, QueueDepth, ReportTarget, Store, StoreError,
    StoreHealth, StoredMime,
};
use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::ids::{DomainId, MessageId, TemplateId, WebhookId};
use crate::domain::message::{IdempotencyRecord, Message};
use crate::domain::sender_domain::SenderDomain;
use crate::domain::status::EventType;
use crate::domain::suppression::Suppression;
use crate::domain::template::{Template, TemplateKey, TemplateVersion};
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};
use nodes::Node;
use pool::Pool;

/// The driver's errors in the store's terms: a lost connection is an I/O error, what
/// the server refused is the engine's (both answer 503, never 500).
impl From<postgres::Error> for StoreError {
    fn from(err: postgres::Error) -> Self {
        if err.as_db_error().is_none() && err.is_closed() {
            return StoreError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, err));
        }
        match err.as_db_error() {
            Some(db) => StoreError::Engine(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::Io(std::io::Error::other(err)),
        }
    }
}

/// Decodes a record stored as JSON.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Encodes a record as JSON.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

/// Runs `call` where the blocking driver may block: the driver drives each connection
/// with a runtime of its own, which cannot start on a thread that is running an async
/// runtime (start-up runs inside one; tests call the store from async tests). Calls
/// from the writer thread and from `spawn_blocking` run as they are.
fn off_runtime<T: Send>(call: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return call();
    }
    std::thread::scope(|scope| match scope.spawn(call).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

pub struct PgStore {
    pool: Arc<Pool>,
    node: Arc<Node>,
    /// Each writing thread's batch transaction until its `sync` (see `messages`).
    open: messages::OpenBatches,
}

impl PgStore {
    /// Connects to the database at `url`, applies the migrations it lacks, creates the
    /// coming days' partitions and registers this process as a node (heartbeats and the
    /// `LISTEN` connection run on threads of their own until the store is dropped).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        off_runtime(|| Self::open_here(url))
    }

    fn open_here(url: &str) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Engine(format!("the database URL is not valid: {e}")))?;
        config
            .application_name("mailgate")
            .connect_timeout(std::time::Duration::from_secs(5));
        let pool = Arc::new(Pool::new(config));
        {
            let mut client = pool.get()?;
            schema::migrate(&mut client)?;
            schema::ensure_partitions(&mut client, Utc::now(), 3)?;
        }
        let node = Node::register(Arc::clone(&pool))?;
        Ok(Self {
            pool,
            node,
            open: messages::OpenBatches::default(),
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        off_runtime(|| self.node.leave(&self.pool));
    }
}

impl Store for PgStore {
    fn write_messages(&self, writes: &[MessageWrite<'_>]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // On a thread of its own (see `off_runtime`), the batch cannot wait for a `sync`
        // from the caller's thread: it commits at once.
        let commit = tokio::runtime::Handle::try_current().is_ok();
        off_runtime(|| messages::write_batch(&self.pool, &self.node, &self.open, writes, commit))
    }

    /// Commits this thread's batch transaction: the writes (and the leases taken
    /// after them) are in the WAL, flushed, when it returns.
    fn sync(&self) -> Result<(), StoreError> {
        off_runtime(|| messages::commit_batch(&self.pool, &self.node, &self.open))
    }

    fn idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        off_runtime(|| messages::idempotency(&self.pool, tenant, key))
    }

    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
        off_runtime(|| messages::message(&self.pool, tenant, id))
    }

    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
        off_runtime(|| messages::mime(&self.pool, tenant, id))
    }

    fn lease_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Lease>, StoreError> {
        messages::lease_due(&self.pool, &self.node, &self.open, now, max, admit)
    }

    fn recover_leases(&self) -> Result<usize, StoreError> {
        off_runtime(|| nodes::reclaim_expired(&self.pool, &self.node))
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        off_runtime(|| messages::next_due(&self.pool))
    }

    fn create_template(&self, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError> {
        off_runtime(|| catalog::create_template(&self.pool, template, version))
    }

    fn add_template_version(&self, template: &Template, version: &TemplateVersion) -> Result<(), StoreError> {
        off_runtime(|| catalog::add_template_version(&self.pool, template, version))
    }

    fn template(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError> {
        off_runtime(|| catalog::template(&self.pool, tenant, key))
    }

    fn template_version(&self, id: &TemplateId, version: u32) -> Result<Option<TemplateVersion>, StoreError> {
        off_runtime(|| catalog::template_version(&self.pool, id, version))
    }

    fn template_versions(&self, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
        off_runtime(|| catalog::template_versions(&self.pool, id))
    }

    fn list_templates(
        &self,
        tenant: &TenantId,
        before: Option<&TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, StoreError> {
        off_runtime(|| catalog::list_templates(&self.pool, tenant, before, limit))
    }

    fn delete_template(&self, template: &Template) -> Result<(), StoreError> {
        off_runtime(|| catalog::delete_template(&self.pool, template))
    }

    fn events(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        types: &[EventType],
        limit: usize,
    ) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
        off_runtime(|| stream::events(&self.pool, tenant, after, types, limit, stream::HELD_BACK_WAITS))
    }

    fn suppressed(&self, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
        off_runtime(|| catalog::suppressed(&self.pool, tenant, emails))
    }

    fn suppressed_among(
        &self,
        asked: &[(TenantId, String)],
    ) -> Result<std::collections::HashSet<(TenantId, String)>, StoreError> {
        off_runtime(|| catalog::suppressed_among(&self.pool, asked))
    }

    fn suppression(&self, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError> {
        off_runtime(|| catalog::suppression(&self.pool, tenant, email))
    }

    fn list_suppressions(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        off_runtime(|| catalog::list_suppressions(&self.pool, tenant, after, limit))
    }

    fn put_suppression(&self, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError> {
        off_runtime(|| catalog::put_suppression(&self.pool, tenant, suppression))
    }

    fn delete_suppression(&self, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
        off_runtime(|| catalog::delete_suppression(&self.pool, tenant, email))
    }

    fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        off_runtime(|| stream::put_webhook(&self.pool, webhook))
    }

    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        off_runtime(|| stream::webhook(&self.pool, tenant, id))
    }

    fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        off_runtime(|| {
            let mut conn = self.pool.get()?;
            let (client, st) = conn.parts();
            stream::webhooks(client, st, &[tenant.as_str()])
        })
    }

    fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        off_runtime(|| stream::delete_webhook(&self.pool, tenant, id))
    }

    fn put_domain(&self, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
        off_runtime(|| catalog::put_domain(&self.pool, domain, create))
    }

    fn domain(&self, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError> {
        off_runtime(|| catalog::domain(&self.pool, tenant, id_or_name))
    }

    fn domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
        off_runtime(|| catalog::domains(&self.pool, tenant))
    }

    fn delete_domain(&self, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
        off_runtime(|| catalog::delete_domain(&self.pool, tenant, id))
    }

    fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        off_runtime(|| catalog::secret(&self.pool, name))
    }

    fn enqueue_deliveries(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        off_runtime(|| {
            let mut conn = self.pool.get()?;
            let (client, st) = conn.parts();
            stream::enqueue_deliveries(client, st, entries)
        })
    }

    fn lease_delivery(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<OutboxEntry>, StoreError> {
        off_runtime(|| stream::lease_delivery(&self.pool, now, lease))
    }

    fn finish_delivery(
        &self,
        leased: &OutboxEntry,
        next: Option<&OutboxEntry>,
        attempt: &DeliveryAttempt,
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        off_runtime(|| stream::finish_delivery(&self.pool, leased, next, attempt, webhook))
    }

    fn deliveries(&self, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        off_runtime(|| stream::deliveries(&self.pool, id, limit))
    }

    fn event(&self, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
        off_runtime(|| stream::event(&self.pool, tenant, id))
    }

    fn apply_report(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        apply: &mut dyn FnMut(&mut Message),
    ) -> Result<ReportTarget, StoreError> {
        messages::apply_report(&self.pool, &self.node, tenant, id, apply)
    }

    fn save_report(&self, tenant: &TenantId, source: &str, matched: bool, raw: &[u8]) -> Result<String, StoreError> {
        off_runtime(|| catalog::save_report(&self.pool, tenant, source, matched, raw))
    }

    fn list_messages(
        &self,
        tenant: &TenantId,
        before: Option<&MessageId>,
        limit: usize,
        budget: usize,
        wanted: &dyn Fn(&Message) -> bool,
    ) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
        messages::list(&self.pool, tenant, before, limit, budget, wanted)
    }

    fn cancel(&self, tenant: &TenantId, id: &MessageId, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        off_runtime(|| messages::cancel(&self.pool, &self.node, tenant, id, now))
    }

    fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        off_runtime(|| messages::queue_depth(&self.pool))
    }

    fn stats(
        &self,
        tenant: &TenantId,
        series: &crate::stats::Series,
        slots: std::ops::Range<u32>,
    ) -> Result<Vec<crate::stats::StatsRow>, StoreError> {
        off_runtime(|| stats::read(&self.pool, tenant, series, slots))
    }

    fn fold_stats(&self, max: usize) -> Result<usize, StoreError> {
        off_runtime(|| stats::fold(&self.pool, max))
    }

    fn revoke_token(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        off_runtime(|| catalog::revoke_token(&self.pool, jti, until))
    }

    fn revoked_tokens(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        off_runtime(|| catalog::revoked_tokens(&self.pool, now))
    }

    fn count_messages(&self) -> Result<usize, StoreError> {
        off_runtime(|| messages::count(&self.pool))
    }

    fn purge(&self, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError> {
        off_runtime(|| retention::purge(&self.pool, cutoffs, budget))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        off_runtime(|| self.node.beat(&self.pool))
    }

    fn health(&self) -> StoreHealth {
        self.node.health()
    }

    fn may_deliver(&self) -> bool {
        self.node.may_deliver()
    }

    fn on_new_work(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.node.on_new_work(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::Backend;

    /// A schema of its own in the test database (`MAILGATE_TEST_PG_URL`, started by
    /// `tests/support/postgres.sh`), so tests run at once never meet.
    pub(crate) struct PgBackend {
        url: String,
    }

    impl PgBackend {
        pub fn new() -> Self {
            let base = std::env::var("MAILGATE_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/postgres".into());
            let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            let mut client = postgres::Client::connect(&base, postgres::NoTls)
                .expect("the test PostgreSQL (tests/support/postgres.sh start) answers");
            client.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            Self {
                url: format!("{base}{sep}options=-csearch_path%3D{schema}"),
            }
        }
    }

    impl Backend for PgBackend {
        fn open(&self) -> Box<dyn Store> {
            Box::new(PgStore::open(&self.url).unwrap())
        }
    }

    crate::store_contract_tests!(PgBackend::new());

    use crate::domain::message::{DeliveryOutcome, SmtpReply};
    use crate::store::test_support::message;

    fn sent(mut message: Message) -> Message {
        message.begin_attempt();
        let reply = SmtpReply {
            code: Some(250),
            enhanced: None,
            diagnostic: "ok".into(),
        };
        message.record_outcome(0, DeliveryOutcome::Sent(reply), "relay", false, Utc::now());
        message.finish_attempt(None);
        message
    }

    #[test]
    fn a_cursor_never_passes_an_event_whose_transaction_commits_later_with_a_smaller_position() {
        let backend = PgBackend::new();
        let store: Arc<dyn Store> = Arc::from(backend.open());
        let (mut early, mut late) = (message(), message());
        early.suppress(0, Utc::now());
        late.suppress(0, Utc::now());
        // `early`'s batch takes its transaction id first and stays open (no sync yet)…
        let holder = Arc::clone(&store);
        let (opened, open) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            holder
                .write_messages(&[MessageWrite::Accept {
                    message: &early,
                    mime: b"m",
                    key: None,
                }])
                .unwrap();
            opened.send(()).unwrap();
            finished.recv().unwrap();
            holder.sync().unwrap();
        });
        open.recv().unwrap();
        // …while `late` commits with a larger position.
        store.accept(&late, b"m", None).unwrap();
        // Read without the reader's wait for `early` (up to 3 s for a writer that is
        // about to commit): this one commits only when told to.
        let reader = PgStore::open(&backend.url).unwrap();
        let (seen, cursor) = stream::events(&reader.pool, &late.tenant, None, &[], 10, 0).unwrap();
        assert!(seen.is_empty(), "nothing is handed out past an event still to commit");
        finish.send(()).unwrap();
        writer.join().unwrap();
        let (seen, _) = store.events(&late.tenant, cursor, &[], 10).unwrap();
        assert_eq!(seen.len(), 2, "both, in order, once the earlier one committed");
        assert_eq!(seen[1].data.message_id, late.id.as_str());
    }

    #[test]
    fn another_applications_long_transaction_holds_no_event_back() {
        let backend = PgBackend::new();
        let store = backend.open();
        // Another application on the same database: a transaction with an id, open
        // throughout (a pg_dump, a long report).
        let mut other = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
        let mut long = other.transaction().unwrap();
        long.batch_execute("SELECT pg_current_xact_id()").unwrap();
        let mut msg = message();
        msg.suppress(0, Utc::now());
        store.accept(&msg, b"m", None).unwrap();
        let (seen, _) = store.events(&msg.tenant, None, &[], 10).unwrap();
        assert_eq!(seen.len(), 1, "only this deployment's writers hold the stream back");
        long.rollback().unwrap();
    }

    #[test]
    fn a_node_that_lost_its_lease_cannot_record_the_attempt_and_the_new_holder_can() {
        let backend = PgBackend::new();
        let (first, second) = (backend.open(), backend.open());
        let msg = message();
        first.accept(&msg, b"m", None).unwrap();
        let lease = first.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        // As if `first` went silent: its node row is gone, `second` takes the lease back.
        let mut client = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
        client
            .execute("UPDATE nodes SET heartbeat_at = now() - interval '1 hour'", &[])
            .unwrap();
        assert_eq!(second.recover_leases().unwrap(), 1);
        let again = second.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        assert!(matches!(first.release(&sent(lease.message)), Err(StoreError::Conflict)));
        second.release(&sent(again.message)).unwrap();
        let stored = second.message(&msg.tenant, &msg.id).unwrap().unwrap();
        assert_eq!(stored.attempts, 1, "only the holder's attempt is recorded");
    }

    #[test]
    fn retention_drops_a_day_of_history_as_a_partition_unless_a_message_of_it_still_waits() {
        let backend = PgBackend::new();
        let store = backend.open();
        let (finished, waiting) = (message(), message());
        store.accept(&finished, b"m", None).unwrap();
        let lease = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        store.release(&sent(lease.message)).unwrap();
        let mut later = waiting.clone();
        later.next_attempt_at = Some(Utc::now() + chrono::Duration::days(30));
        store.accept(&later, b"m", None).unwrap();
        let day_after_tomorrow = Utc::now() + chrono::Duration::days(2);
        let cutoffs = PurgeCutoffs {
            history: day_after_tomorrow,
            mime: day_after_tomorrow,
            stats: day_after_tomorrow,
        };
        store.purge(cutoffs, 1000).unwrap();
        assert!(store.message(&finished.tenant, &finished.id).unwrap().is_none());
        assert!(
            store.message(&later.tenant, &later.id).unwrap().is_some(),
            "still queued"
        );
        let mut client = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
        let today = format!("events_p{}", Utc::now().format("%Y%m%d"));
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = $1 AND relnamespace = to_regnamespace(current_schema())::oid",
                &[&today],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "today's events went as a partition");
        assert!(store.events(&finished.tenant, None, &[], 10).unwrap().0.is_empty());
    }
}
