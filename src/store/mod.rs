//! Durable state behind one trait, so that sled today and PostgreSQL later share one
//! contract (and one contract test suite).
//!
//! Every method is synchronous and may block on disk: call it from a blocking
//! context (`web::block`, `spawn_blocking`), never directly on an async executor.

mod sled_store;

pub use sled_store::SledStore;

use chrono::{DateTime, Utc};

use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::message::Message;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed")]
    Io(#[from] sled::Error),
    #[error("a stored record could not be decoded")]
    Corrupt(#[from] serde_json::Error),
    #[error("the record {0} is missing")]
    Missing(String),
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
    fn accept(&self, message: &Message, mime: &[u8]) -> Result<(), StoreError>;

    /// The tenant's message, or `None` when it does not exist *or belongs to another
    /// tenant* (callers cannot tell the two apart, by design).
    fn message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError>;

    /// The stored MIME of the tenant's message, under the same rule as [`Store::message`].
    fn mime(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Takes the earliest message due at `now` off the queue and marks it leased (status
    /// `sending`), or returns `None`. Two callers never receive the same message. The
    /// lease is not durable: after a crash [`Store::recover_leases`] puts it back.
    fn lease_due(&self, now: DateTime<Utc>) -> Result<Option<Lease>, StoreError>;

    /// Durably saves progress on a leased message (one recipient done) without ending
    /// the lease, so a crash repeats at most the transaction that was in flight.
    fn save_progress(&self, message: &Message) -> Result<(), StoreError>;

    /// Durably saves the message and ends its lease; it is queued again for
    /// `message.next_attempt_at` when that is set.
    fn release(&self, message: &Message) -> Result<(), StoreError>;

    /// Puts every leased message back on the queue, due now. Called once at start-up,
    /// when no worker can hold a lease, so a worker that died loses nothing.
    fn recover_leases(&self) -> Result<usize, StoreError>;

    /// The earliest time anything on the queue becomes due, to sleep until then.
    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// How many messages are stored, for every tenant (operations and tests).
    fn count_messages(&self) -> Result<usize, StoreError>;

    /// Proves the store accepts writes (for `/readyz`).
    fn check_writable(&self) -> Result<(), StoreError>;
}
