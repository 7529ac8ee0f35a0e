//! Durable state behind one trait, with two backends that share one contract and one
//! contract test suite (`contract`, in test builds): `sled_store` (embedded, one node)
//! and `postgres` (several nodes on one database). Both are laid out alike, one file
//! per concern: `messages` (writes and the queue), `stream` (events, webhooks and their
//! outbox), `catalog` (templates, suppressions, domains, secrets, revocations, reports),
//! `stats`, `retention`; what a write of a message implies besides itself is decided
//! once for both (`consequences`).
//!
//! Every method is synchronous and may block on disk: call it from a blocking
//! context (`web::block`, `spawn_blocking`), never directly on an async executor. The
//! hot path (accepting, leasing, recording attempts) goes through [`writer`] instead,
//! which batches those calls on one thread.

mod consequences;
#[cfg(test)]
pub(crate) mod contract;
mod postgres;
mod sled_store;
pub mod writer;

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use crate::domain::address::Mailbox;
    use crate::domain::auth::TenantId;
    use crate::domain::ids::MessageId;
    use crate::domain::message::{Body, Content, Message, NewMessage, ReadyContent};
    use crate::domain::text::Subject;

    /// A message to `b@example.test` from tenant `acme`, due now.
    pub fn message() -> Message {
        let ready = ReadyContent {
            subject: Subject::parse("s").unwrap(),
            body: Body::Text("t".into()),
            template: None,
        };
        let new = NewMessage {
            from: Mailbox::parse("a@example.test").unwrap(),
            to: vec![Mailbox::parse("b@example.test").unwrap()],
            cc: vec![],
            bcc: vec![],
            reply_to: vec![],
            content: Content::Ready(ready.clone()),
            headers: vec![],
            attachments: vec![],
            tags: vec![],
            metadata: BTreeMap::new(),
            send_at: None,
            list_unsubscribe: None,
            auto_text: true,
        };
        Message::accepted(
            MessageId::generate(),
            TenantId::parse("acme").unwrap(),
            &new,
            &ready,
            Utc::now(),
        )
    }
}

pub use postgres::PgStore;
pub use sled_store::ResilientStore;
pub use sled_store::{SledStore, DEFAULT_CACHE_BYTES};

use chrono::{DateTime, Utc};

use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::ids::{DomainId, WebhookId};
use crate::domain::ids::{MessageId, TemplateId};
use crate::domain::message::{IdempotencyKey, IdempotencyRecord, Message};
use crate::domain::sender_domain::SenderDomain;
use crate::domain::status::EventType;
use crate::domain::suppression::Suppression;
use crate::domain::template::{Template, TemplateKey, TemplateVersion};
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, Webhook};

/// What went wrong in a store, in terms every backend shares: callers tell a full or
/// failing disk (`Io`) from a damaged record, a lost race or a refused write, never
/// the engine underneath.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed")]
    Io(#[source] std::io::Error),
    /// The storage engine failed in a way that is not an I/O error (it reports itself
    /// corrupt, say); the engine's own words.
    #[error("the storage engine failed: {0}")]
    Engine(String),
    #[error("a stored record could not be decoded")]
    Corrupt(#[from] serde_json::Error),
    #[error("the record {0} is missing")]
    Missing(String),
    /// A compare-and-swap lost to a concurrent writer; retry.
    #[error("the record changed concurrently")]
    Conflict,
    /// A call served in a batch failed with the batch (a write whose sync failed may
    /// not be on disk), or the writer thread is gone. The reason is kept as text
    /// because every call of the batch gets the same answer.
    #[error("a batched store call failed: {0}")]
    Batch(String),
    /// Writes are refused until the store can write again (a full disk, say): see
    /// [`Store::health`]. Retryable.
    #[error("the store cannot write right now: {0}")]
    Unavailable(String),
}

/// What [`Store::health`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Writable,
    /// Writes are refused, and would fail again now: why.
    Failing(String),
    /// Writes are refused, but the disk has room again: reopening the store (a
    /// restart of the process, for sled) brings them back.
    Recoverable(String),
}

impl StoreError {
    /// A failure of the disk or the store itself, which a retry later may not meet,
    /// as opposed to a bad record: the caller should hear 503, not 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Io(_) | StoreError::Engine(_) | StoreError::Unavailable(_) | StoreError::Batch(_)
        )
    }
}

/// What [`Store::apply_report`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportTarget {
    Applied,
    /// No such message for this tenant.
    NotFound,
    /// A worker holds the message right now; try again shortly.
    Busy,
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Cancelled(Box<Message>),
    NotFound,
    /// Being sent or already done: the status it is in.
    TooLate(crate::domain::status::MessageStatus),
}

/// How many messages wait in each state (for `/metrics` and back-pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Due now or overdue, not yet tried.
    pub queued: usize,
    /// Waiting for `send_at`.
    pub scheduled: usize,
    /// Waiting for a retry.
    pub deferred: usize,
    /// Leased by a worker right now.
    pub sending: usize,
}

impl QueueDepth {
    pub fn total(&self) -> usize {
        self.queued + self.scheduled + self.deferred + self.sending
    }
}

/// A message's stored MIME, or the fact that retention dropped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredMime {
    Bytes(Vec<u8>),
    Expired,
}

/// What [`Store::purge`] deletes: history from before `history`, MIME from before
/// `mime`, report counters from before `stats`.
#[derive(Debug, Clone, Copy)]
pub struct PurgeCutoffs {
    pub history: DateTime<Utc>,
    pub mime: DateTime<Utc>,
    pub stats: DateTime<Utc>,
}

/// One purge round: rows looked at, rows deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub examined: usize,
    pub deleted: usize,
}

/// One write of a message, for [`Store::write_messages`].
#[derive(Debug, Clone, Copy)]
pub enum MessageWrite<'a> {
    /// As [`Store::accept`].
    Accept {
        message: &'a Message,
        mime: &'a [u8],
        key: Option<&'a IdempotencyKey>,
    },
    /// Progress on a leased message (one recipient done) without ending the lease, so
    /// a crash repeats at most the transaction that was in flight.
    Progress(&'a Message),
    /// As [`Store::release`].
    Release(&'a Message),
}

/// A message handed to exactly one worker, with the bytes to send.
#[derive(Debug, Clone)]
pub struct Lease {
    pub message: Message,
    pub mime: Vec<u8>,
}

/// The contract every backend honours.
pub trait Store: Send + Sync {
    /// Stores the message, its MIME and its queue entry atomically, and returns only
    /// once all of it is on disk (fsync). This is what makes a `202` a promise.
    ///
    /// Every write of a message (this, [`Store::release`], [`Store::write_messages`])
    /// also appends the message's new events to the tenant's event stream, and adds the
    /// suppressions they imply (hard bounces, complaints), in the same transaction.
    ///
    /// With an idempotency key, the key is claimed in the same transaction; if another
    /// request holds it (fresh), nothing is written and [`StoreError::Conflict`] is
    /// returned: read the holder with [`Store::idempotency`].
    fn accept(&self, message: &Message, mime: &[u8], key: Option<&IdempotencyKey>) -> Result<(), StoreError> {
        let written = self.write_messages(&[MessageWrite::Accept { message, mime, key }])?;
        // Synced whatever the outcome: a backend that holds the batch's transaction
        // open until the sync (PostgreSQL) must not keep it, and its locks, after a
        // refusal.
        self.sync()?;
        written.into_iter().next().unwrap_or(Err(StoreError::Conflict))
    }

    /// Applies several writes of messages at once, each as [`Store::accept`],
    /// [`MessageWrite::Progress`] or [`Store::release`] would, but not yet durably:
    /// they are durable once a later [`Store::sync`] on the same thread returns. sled
    /// shows them to every reader at once; PostgreSQL keeps them (and the leases the
    /// same thread takes meanwhile) in one open transaction until that `sync` commits.
    /// One result per write, in order ([`StoreError::Conflict`] for an accept whose
    /// key is held). For [`writer::StoreWriter`], which shares one sync (and, in sled,
    /// one transaction) among everything that arrived together.
    fn write_messages(&self, writes: &[MessageWrite<'_>]) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// Returns once every write made before the call is on disk. Concurrent callers
    /// share one fsync (group commit).
    fn sync(&self) -> Result<(), StoreError>;

    /// What the tenant's `key` maps to, when it is still fresh (24 h).
    fn idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// The tenant's message, or `None` when it does not exist *or belongs to another
    /// tenant* (callers cannot tell the two apart, by design).
    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError>;

    /// The stored MIME of the tenant's message, under the same rule as [`Store::message`];
    /// [`StoredMime::Expired`] once `storage.mime_retention` dropped it.
    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError>;

    /// Takes up to `max` of the earliest messages due at `now` off the queue and marks
    /// them leased (status `sending`), passing over those whose tenant `admit` refuses
    /// (it is asked once per message, in due order). Two callers never receive the same
    /// message. A lease is not durable: after a crash [`Store::recover_leases`] puts it
    /// back.
    fn lease_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        admit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Durably saves the message and ends its lease; it is queued again for
    /// `message.next_attempt_at` when that is set.
    fn release(&self, message: &Message) -> Result<(), StoreError> {
        let written = self.write_messages(&[MessageWrite::Release(message)])?;
        self.sync()?;
        written.into_iter().collect::<Result<(), _>>()
    }

    /// Puts every leased message back on the queue, due now. Called once at start-up,
    /// when no worker can hold a lease, so a worker that died loses nothing.
    fn recover_leases(&self) -> Result<usize, StoreError>;

    /// The earliest time anything on the queue becomes due, to sleep until then.
    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Creates a template and its first version atomically and durably. Returns
    /// `false`, writing nothing, when the tenant already has a template of that name.
    fn create_template(&self, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError>;

    /// Stores a new version and the template record pointing at it, atomically and
    /// durably. Versions are immutable once written.
    fn add_template_version(&self, template: &Template, version: &TemplateVersion) -> Result<(), StoreError>;

    /// The tenant's template by id or name; `None` for another tenant's, as for messages.
    fn template(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError>;

    /// One version of a template the caller already resolved for its tenant.
    fn template_version(&self, id: &TemplateId, version: u32) -> Result<Option<TemplateVersion>, StoreError>;

    /// Every version of a template, newest first.
    fn template_versions(&self, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError>;

    /// The tenant's templates, newest first, created before `before` when given.
    fn list_templates(
        &self,
        tenant: &TenantId,
        before: Option<&TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, StoreError>;

    /// Removes a template, its name and its versions, durably. Messages keep the id
    /// and version they were rendered from.
    fn delete_template(&self, template: &Template) -> Result<(), StoreError>;

    /// The tenant's events after stream position `after`, oldest first, of the given
    /// types (all when empty), at most `limit`; with the position of the last entry
    /// examined, to continue from. Positions only grow, and an event becomes visible
    /// only after every event with a lower position has.
    fn events(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        types: &[EventType],
        limit: usize,
    ) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError>;

    /// Which of `emails` (lowercase) the tenant has suppressed.
    fn suppressed(&self, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError>;

    /// Which of many (tenant, lowercase address) pairs are suppressed, in one read: the
    /// writer thread asks once for a whole batch of acceptances or leases (a backend
    /// across a network answers in one round trip instead of one per message).
    fn suppressed_among(
        &self,
        asked: &[(TenantId, String)],
    ) -> Result<std::collections::HashSet<(TenantId, String)>, StoreError> {
        let mut by_tenant: std::collections::HashMap<&TenantId, Vec<String>> = std::collections::HashMap::new();
        for (tenant, email) in asked {
            by_tenant.entry(tenant).or_default().push(email.clone());
        }
        let mut found = std::collections::HashSet::new();
        for (tenant, emails) in by_tenant {
            for email in self.suppressed(tenant, &emails)? {
                found.insert((tenant.clone(), email));
            }
        }
        Ok(found)
    }

    fn suppression(&self, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError>;

    /// The tenant's suppressions ordered by address, after `after` when given.
    fn list_suppressions(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError>;

    /// Adds or replaces a suppression, durably.
    fn put_suppression(&self, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError>;

    /// Removes a suppression, durably; `false` when there was none.
    fn delete_suppression(&self, tenant: &TenantId, email: &str) -> Result<bool, StoreError>;

    /// Creates or replaces a webhook endpoint, durably. New events are queued for it
    /// from the next message write on.
    fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;

    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError>;

    /// The tenant's webhooks, oldest first.
    fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError>;

    /// Removes a webhook; its queued deliveries are dropped when they come due.
    fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError>;

    /// Creates (`create`) or replaces a sender domain (with its private keys), durably.
    /// Returns `false`, writing nothing, when creating a name the tenant already has,
    /// or replacing a domain that no longer exists.
    fn put_domain(&self, domain: &SenderDomain, create: bool) -> Result<bool, StoreError>;

    /// The tenant's domain by id or name; `None` for another tenant's.
    fn domain(&self, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError>;

    /// The tenant's domains, oldest first; every tenant's with `None` (the scheduled
    /// re-check and the signing cache).
    fn domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError>;

    /// Removes a domain and its keys, durably; `false` when there was none.
    fn delete_domain(&self, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError>;

    /// A named random secret of this installation (32 bytes), made on first use and
    /// the same on every node afterwards: what keys unsubscribe tokens.
    fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError>;

    /// Queues deliveries (replays), durably.
    fn enqueue_deliveries(&self, entries: &[OutboxEntry]) -> Result<(), StoreError>;

    /// Takes the earliest due delivery and hides it for `lease`; a dispatcher that
    /// dies leaves it to come back after that, so nothing is lost (at least once).
    fn lease_delivery(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<OutboxEntry>, StoreError>;

    /// Ends a leased delivery in one durable transaction: removes `leased` (as
    /// returned by [`Store::lease_delivery`]) and queues `next` (the retry) when the
    /// lease was still held, records the attempt, and applies the enabled flag of
    /// `webhook` (disabled after a 410) to the stored webhook if it still exists.
    fn finish_delivery(
        &self,
        leased: &OutboxEntry,
        next: Option<&OutboxEntry>,
        attempt: &DeliveryAttempt,
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError>;

    /// The latest delivery attempts to a webhook, newest first.
    fn deliveries(&self, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError>;

    /// One event of the tenant's stream by id.
    fn event(&self, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError>;

    /// Applies a later report to the tenant's message and writes it like any other
    /// change (events, suppressions, webhooks in the same transaction), unless a
    /// worker holds the message: then nothing is written and the caller should retry.
    fn apply_report(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        apply: &mut dyn FnMut(&mut Message),
    ) -> Result<ReportTarget, StoreError>;

    /// Keeps the raw report (matched or not) for inspection; returns its key.
    fn save_report(&self, tenant: &TenantId, source: &str, matched: bool, raw: &[u8]) -> Result<String, StoreError>;

    /// The tenant's messages, newest first, created before `before` when given, that
    /// satisfy `wanted`: at most `limit`, examining at most `budget` messages. Also
    /// returns, when the scan stopped before the end, the last message examined, to
    /// continue from.
    fn list_messages(
        &self,
        tenant: &TenantId,
        before: Option<&MessageId>,
        limit: usize,
        budget: usize,
        wanted: &dyn Fn(&Message) -> bool,
    ) -> Result<(Vec<Message>, Option<MessageId>), StoreError>;

    /// Cancels a scheduled, queued or deferred message atomically (no worker can take
    /// it afterwards); a message being sent or done is left as it is.
    fn cancel(&self, tenant: &TenantId, id: &MessageId, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError>;

    /// Messages on the queue by state, and messages leased right now.
    fn queue_depth(&self) -> Result<QueueDepth, StoreError>;

    /// The tenant's report counter rows of `series` in `slots` (15-minute slots, see
    /// [`crate::stats::record::slot_of`]). Every message write records its counter
    /// changes (accepted recipients, every new event) in its own transaction, so the
    /// counters agree with the event stream at all times, SIGKILL or not; reading them
    /// reads no message.
    fn stats(
        &self,
        tenant: &TenantId,
        series: &crate::stats::Series,
        slots: std::ops::Range<u32>,
    ) -> Result<Vec<crate::stats::StatsRow>, StoreError>;

    /// Records a revoked token id until `until` (Unix seconds), durably.
    fn revoke_token(&self, jti: &str, until: u64) -> Result<(), StoreError>;

    /// Every revocation still in force at `now` (Unix seconds), to load at start.
    fn revoked_tokens(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError>;

    /// How many messages are stored, for every tenant (operations and tests).
    fn count_messages(&self) -> Result<usize, StoreError>;

    /// Deletes what `cutoffs` has outlived, examining at most `budget` rows of each kind:
    /// finished messages created before `cutoffs.history` (with their MIME and listing
    /// entry, atomically), the events from before it whose message is gone, webhook
    /// attempts and raw reports from before it, the MIME of finished messages created
    /// before `cutoffs.mime`, report counters of slots before `cutoffs.stats`, and
    /// idempotency records past their window. A queued,
    /// scheduled, deferred or leased message is never touched. Nothing is flushed (a
    /// purge lost in a crash is redone). Each kind resumes where its last round stopped.
    fn purge(&self, cutoffs: PurgeCutoffs, budget: usize) -> Result<PurgeReport, StoreError>;

    /// Moves up to `max` batches of counter changes recorded with message writes into
    /// the counter rows, atomically (a backend may record them apart to keep its write
    /// path short; reads see them either way). Returns how many it moved.
    fn fold_stats(&self, _max: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Proves the store accepts writes (for `/readyz`).
    fn check_writable(&self) -> Result<(), StoreError>;

    /// Whether the store takes writes; asked every second by the queue sampler.
    fn health(&self) -> StoreHealth {
        StoreHealth::Writable
    }

    /// Whether this process may open an SMTP transaction for a message it leased now.
    /// A node sharing a database with others says no once it has lost touch with it
    /// long enough that its leases may soon be handed to another node: what it starts
    /// must end before then, so that no message is sent by two live nodes.
    fn may_deliver(&self) -> bool {
        true
    }

    /// Registers what to call when another process queued work that is due now (a
    /// shared database announces it), so idle workers wake before their next poll.
    fn on_new_work(&self, _wake: std::sync::Arc<dyn Fn() + Send + Sync>) {}
}
