//! Messages and the queue on sled: a batch of writes in one transaction (with what
//! each write implies: MIME, queue entry, lease, events, suppressions, webhook
//! deliveries, counters), leases, cancellation and later reports, reads.

use super::*;

/// Which write of a message [`SledStore::commit`] performs.
enum Commit<'a> {
    /// First write: with the MIME, queued when due, claiming the idempotency key.
    Accept {
        mime: &'a [u8],
        key: Option<&'a IdempotencyKey>,
    },
    /// Mid-attempt: the lease stays.
    Progress,
    /// End of an attempt: the lease ends, queued again when a retry is due.
    Release,
    /// Compare-and-swap (later reports, cancellation): only if nobody leased or
    /// changed the message since `read`; with `dequeue`, its queue entry goes too.
    Swap { read: &'a [u8], dequeue: bool },
}

/// A due queue entry read for leasing: its key, the message record as read, the lease.
pub(super) struct Candidate {
    key: sled::IVec,
    read: sled::IVec,
    lease: Lease,
}

/// Due entries a lease scan may pass over (tenants the caller does not admit now)
/// before it gives up: the scan reads queue entries only, so this is cheap.
const LEASE_SKIP_BUDGET: usize = 10_000;

/// What a write of a message adds besides the message, with the stream position of
/// each of its fresh events (see `SledStore::consequences`).
struct Positioned {
    positions: Vec<u64>,
    planned: Consequences,
}

/// The trees a message write touches, inside one transaction.
struct Staging<'t> {
    messages: &'t TransactionalTree,
    mimes: &'t TransactionalTree,
    queue: &'t TransactionalTree,
    leases: &'t TransactionalTree,
    events: &'t TransactionalTree,
    event_ids: &'t TransactionalTree,
    suppressions: &'t TransactionalTree,
    outbox: &'t TransactionalTree,
    by_tenant: &'t TransactionalTree,
    keys: &'t TransactionalTree,
    /// What this transaction changes in the depth counters.
    depth: DepthDelta,
    /// What it adds to the report counters.
    stats: RefCell<StatsDelta>,
    /// What it adds to each MIME segment's live count.
    segments: RefCell<std::collections::BTreeMap<u32, i64>>,
}

impl Staging<'_> {
    /// Stages one write; `false` when it must write nothing (see `commit_all`).
    fn write(
        &self,
        message: &Message,
        change: &Commit<'_>,
        positioned: &Positioned,
        stored: Option<&MimeRef>,
    ) -> Staged<bool> {
        let tenant = &message.tenant;
        let requeue = match *change {
            Commit::Accept { key, .. } => {
                let stored = stored.ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::Missing(format!("MIME of {}", message.id)))
                })?;
                if let Some(key) = key {
                    if !self.claim(message, key)? {
                        return Ok(false);
                    }
                }
                self.mimes.insert(message.id.as_str(), &stored.encode())?;
                *self.segments.borrow_mut().entry(stored.segment).or_default() += 1;
                self.by_tenant.insert(tenant_key(tenant, message.id.as_str()), &[])?;
                true
            }
            Commit::Progress => false,
            Commit::Release => {
                if self.leases.remove(message.id.as_str())?.is_some() {
                    self.depth.lease(-1);
                }
                true
            }
            Commit::Swap { read, dequeue } => {
                let unchanged = self
                    .messages
                    .get(message.id.as_str())?
                    .is_some_and(|now| now.as_ref() == read);
                if self.leases.get(message.id.as_str())?.is_some() || !unchanged {
                    return Ok(false);
                }
                if dequeue {
                    let stored: Message = serde_json::from_slice(read)
                        .map_err(|e| ConflictableTransactionError::Abort(StoreError::from(e)))?;
                    if let Some(due) = stored.next_attempt_at {
                        if let Some(entry) = self.queue.remove(queue_key(due, &message.id))? {
                            self.depth.queue_entry(&entry, -1);
                        }
                    }
                }
                false
            }
        };
        self.messages.insert(message.id.as_str(), encode(message)?)?;
        if let (true, Some(due)) = (requeue, message.next_attempt_at) {
            let value = queue_value(message);
            if let Some(replaced) = self.queue.insert(queue_key(due, &message.id), value.as_slice())? {
                self.depth.queue_entry(&replaced, -1);
            }
            self.depth.queue_entry(&value, 1);
        }
        let planned = &positioned.planned;
        for (position, event) in positioned.positions.iter().zip(&planned.fresh) {
            self.events.insert(stream_key(tenant, *position), encode_json(event)?)?;
            self.event_ids.insert(event.id.as_str(), &position.to_be_bytes())?;
        }
        for suppression in &planned.implied {
            let key = tenant_key(tenant, &suppression.email);
            if self.suppressions.get(&key)?.is_none() {
                self.suppressions.insert(key, encode_json(suppression)?)?;
            }
        }
        for entry in &planned.deliveries {
            self.outbox.insert(outbox_key(entry), encode_json(entry)?)?;
        }
        self.stats.borrow_mut().merge(&planned.stats);
        Ok(true)
    }

    /// Claims the idempotency key for `message`; `false` when another request holds it.
    fn claim(&self, message: &Message, key: &IdempotencyKey) -> Staged<bool> {
        let slot = tenant_key(&message.tenant, &key.key);
        let held = match self.keys.get(&slot)? {
            Some(raw) => serde_json::from_slice::<IdempotencyRecord>(&raw)
                .map(|r| r.is_fresh(message.created_at))
                .unwrap_or(false),
            None => false,
        };
        if held {
            return Ok(false);
        }
        let record = IdempotencyRecord {
            request_hash: key.request_hash.clone(),
            created_at: message.created_at,
            accepted: message.clone(),
        };
        self.keys.insert(slot, encode_json(&record)?)?;
        Ok(true)
    }
}

impl SledStore {
    /// Writes messages and everything that follows from each in one transaction: its
    /// MIME and queue entry (accept), its lease (release), its new events in the
    /// tenant's stream, and the suppressions those events imply. Durable after the next
    /// flush. Per write, `false` when it wrote nothing: an accept whose idempotency key
    /// another request holds, or a swap that lost to a concurrent change; or the error
    /// that kept that one write out (its webhooks could not be read, say).
    ///
    /// One transaction for many writes matters: sled writes its log buffer out twice
    /// for every transaction, whatever its size.
    ///
    /// Stream positions come from one counter, and the commit holds `stream_order`
    /// from taking positions until the transaction is applied, so a reader never sees
    /// a position before a smaller one that is still to come.
    fn commit_all(&self, writes: &[(&Message, Commit<'_>)]) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let order = self
            .stream_order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut planned_ids = HashSet::new();
        let read_hooks = |tenant: &TenantId| self.webhooks(tenant);
        let mut hooks = HookCache::new(&read_hooks);
        let planned: Vec<Result<Positioned, StoreError>> = writes
            .iter()
            .map(|(message, change)| {
                let accepted = matches!(change, Commit::Accept { .. });
                self.consequences(message, accepted, &mut planned_ids, &mut hooks)
            })
            .collect();
        // The batch's MIME goes to the log and to disk before any reference to it
        // commits (see `mime_log`).
        let stored = self.append_mime(writes)?;
        // The counter changes of the whole batch go in as one journal entry: one key
        // written instead of a dozen counter rows read and rewritten (see `stats`).
        let journal_entry = self.db.generate_id()?;
        let written = (
            &self.messages,
            &self.mime,
            &self.queue,
            &self.leases,
            &self.events,
            &self.event_ids,
            &self.suppressions,
            &self.outbox,
            &self.tenant_messages,
            &self.idempotency,
            &self.counters,
            &self.stats_journal,
        )
            .transaction(
                |(
                    messages,
                    mimes,
                    queue,
                    leases,
                    events,
                    event_ids,
                    suppressions,
                    outbox,
                    by_tenant,
                    keys,
                    counters,
                    journal,
                )| {
                    let trees = Staging {
                        messages,
                        mimes,
                        queue,
                        leases,
                        events,
                        event_ids,
                        suppressions,
                        outbox,
                        by_tenant,
                        keys,
                        depth: DepthDelta::default(),
                        stats: RefCell::default(),
                        segments: RefCell::default(),
                    };
                    let written = writes
                        .iter()
                        .zip(&planned)
                        .zip(&stored)
                        .map(|(((message, change), planned), stored)| match planned {
                            Ok(planned) => trees.write(message, change, planned, stored.as_ref()).map(Some),
                            Err(_) => Ok(None),
                        })
                        .collect::<Result<Vec<Option<bool>>, _>>()?;
                    trees.depth.apply(counters)?;
                    for (segment, added) in trees.segments.borrow().iter() {
                        count_segment(counters, *segment, *added)?;
                    }
                    let counted = trees.stats.borrow();
                    if !counted.is_empty() {
                        journal.insert(&journal_entry.to_be_bytes(), counted.encode())?;
                    }
                    Ok(written)
                },
            )
            .map_err(flatten)?;
        drop(order);
        Ok(written
            .into_iter()
            .zip(planned)
            .map(|(written, planned)| match (written, planned) {
                (Some(written), _) => Ok(written),
                (None, Err(err)) => Err(err),
                (None, Ok(_)) => Err(StoreError::Conflict),
            })
            .collect())
    }

    /// Appends the MIME of each accept in `writes` to the log and syncs it; a reference
    /// per write (`None` for the other kinds of write).
    fn append_mime(&self, writes: &[(&Message, Commit<'_>)]) -> Result<Vec<Option<MimeRef>>, StoreError> {
        let mimes: Vec<&[u8]> = writes
            .iter()
            .filter_map(|(_, change)| match change {
                Commit::Accept { mime, .. } => Some(*mime),
                _ => None,
            })
            .collect();
        if mimes.is_empty() {
            return Ok(vec![None; writes.len()]);
        }
        let mut refs = self.mime_log.append(&mimes).map_err(StoreError::Io)?.into_iter();
        self.mime_log.sync().map_err(StoreError::Io)?;
        Ok(writes
            .iter()
            .map(|(_, change)| match change {
                Commit::Accept { .. } => refs.next(),
                _ => None,
            })
            .collect())
    }

    /// The MIME a `mime` value stands for; `None` when its bytes are gone.
    fn resolve_mime(&self, id: &MessageId, value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(at) = MimeRef::decode(value) else {
            return Ok(Some(value.to_vec()));
        };
        let mime = self.mime_log.read(&at).map_err(StoreError::Io)?;
        if mime.is_none() {
            tracing::error!(message_id = %id, segment = at.segment, "the MIME log does not hold this message's MIME");
        }
        Ok(mime)
    }

    /// Deletes the MIME segments whose live count a purge brought to zero and that are
    /// still at zero: under `stream_order`, which `commit_all` holds from appending a
    /// batch's MIME until its references commit, so no batch can be between the two.
    pub(super) fn delete_dead_segments(&self, dead: &[u32]) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        let _order = self
            .stream_order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for segment in dead {
            if live_count(&self.counters, *segment)? <= 0 {
                self.mime_log.delete(*segment).map_err(StoreError::Io)?;
            }
        }
        Ok(())
    }

    /// One write of [`Self::commit_all`]; [`StoreError::Conflict`] when it wrote nothing.
    fn commit(&self, message: &Message, change: Commit<'_>) -> Result<(), StoreError> {
        self.commit_all(&[(message, change)])?
            .pop()
            .map_or(Err(StoreError::Conflict), wrote)
    }

    /// What writing `message` adds besides itself (see `consequences`), with a stream
    /// position for each new event: its events not yet in the stream (nor in `planned`,
    /// the events of earlier writes of the same batch).
    fn consequences(
        &self,
        message: &Message,
        accepted: bool,
        planned: &mut HashSet<String>,
        hooks: &mut HookCache<'_>,
    ) -> Result<Positioned, StoreError> {
        let mut fresh = Vec::new();
        for event in &message.events {
            if !self.event_ids.contains_key(event.id.as_str())? && planned.insert(event.id.as_str().to_owned()) {
                fresh.push(event);
            }
        }
        let planned = consequences::plan(message, fresh.into_iter(), accepted, hooks)?;
        let positions = planned
            .fresh
            .iter()
            .map(|_| self.db.generate_id())
            .collect::<Result<_, _>>()?;
        Ok(Positioned { positions, planned })
    }

    /// [`Self::commit`], then durable.
    fn commit_durably(&self, message: &Message, change: Commit<'_>) -> Result<(), StoreError> {
        self.commit(message, change)?;
        self.flush()
    }

    /// Keys of `tenant_messages` in `range`, newest first.
    fn by_tenant_range(
        &self,
        range: std::ops::Range<Vec<u8>>,
    ) -> impl Iterator<Item = Result<sled::IVec, sled::Error>> {
        self.tenant_messages
            .range(range)
            .rev()
            .map(|entry| entry.map(|(key, _)| key))
    }

    /// The message and MIME behind one queue entry, checked to be leasable.
    pub(super) fn lease_candidate(&self, key: &[u8]) -> Result<Candidate, StoreError> {
        let id = id_of_queue_key(key)?;
        let mime = self
            .mime
            .get(id.as_str())?
            .map(|value| self.resolve_mime(&id, &value))
            .transpose()
            // One segment that cannot be read parks its messages instead of stopping
            // every lease scan at them.
            .map_err(|err| match err {
                StoreError::Io(io) => StoreError::Missing(format!("the MIME of {id} (unreadable: {io})")),
                other => other,
            })?
            .flatten()
            .ok_or_else(|| StoreError::Missing(format!("mime of {id}")))?;
        let bytes = self
            .messages
            .get(id.as_str())?
            .ok_or_else(|| StoreError::Missing(id.to_string()))?;
        let mut message: Message = decode(&bytes)?;
        message.status = MessageStatus::Sending;
        Ok(Candidate {
            key: sled::IVec::from(key),
            read: bytes,
            lease: Lease { message, mime },
        })
    }

    /// Moves a queue entry that cannot be delivered (undecodable, or its message is
    /// gone) to `parked`, with the reason, so that it cannot block the queue.
    fn park(&self, key: &[u8], reason: &StoreError) -> Result<(), StoreError> {
        tracing::error!(key = ?String::from_utf8_lossy(key.get(8..).unwrap_or_default()), error = %reason, "parked an unusable queue entry");
        let reason = reason.to_string();
        (&self.queue, &self.parked, &self.counters)
            .transaction(|(queue, parked, counters)| {
                parked.insert(key, reason.as_bytes())?;
                if let Some(entry) = queue.remove(key)? {
                    let depth = DepthDelta::default();
                    depth.queue_entry(&entry, -1);
                    depth.apply(counters)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)
    }

    /// Moves the queue entries still there into `leases`, in one transaction; `false`
    /// for an entry another caller took meanwhile, or whose message changed since it
    /// was read (a report applied in between: the next scan reads it afresh).
    pub(super) fn try_lease(&self, candidates: &[Candidate]) -> Result<Vec<bool>, StoreError> {
        (&self.queue, &self.leases, &self.messages, &self.counters)
            .transaction(|(queue, leases, messages, counters)| {
                let depth = DepthDelta::default();
                let mut taken = Vec::with_capacity(candidates.len());
                for candidate in candidates {
                    let id = candidate.lease.message.id.as_str();
                    let unchanged = messages.get(id)?.is_some_and(|now| now == candidate.read);
                    let removed = if unchanged { queue.remove(&candidate.key)? } else { None };
                    if let Some(entry) = &removed {
                        depth.queue_entry(entry, -1);
                        if leases.insert(id, &[])?.is_none() {
                            depth.lease(1);
                        }
                    }
                    taken.push(removed.is_some());
                }
                depth.apply(counters)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(taken)
            })
            .map_err(flatten)
    }
}

pub(super) fn write_messages(
    store: &SledStore,
    writes: &[MessageWrite<'_>],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let changes: Vec<(&Message, Commit<'_>)> = writes
        .iter()
        .map(|write| match *write {
            MessageWrite::Accept { message, mime, key } => (message, Commit::Accept { mime, key }),
            MessageWrite::Progress(message) => (message, Commit::Progress),
            MessageWrite::Release(message) => (message, Commit::Release),
        })
        .collect();
    Ok(store.commit_all(&changes)?.into_iter().map(wrote).collect())
}

pub(super) fn idempotency(
    store: &SledStore,
    tenant: &TenantId,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let Some(raw) = store.idempotency.get(tenant_key(tenant, key))? else {
        return Ok(None);
    };
    let record: IdempotencyRecord = decode(&raw)?;
    Ok(record.is_fresh(Utc::now()).then_some(record))
}

pub(super) fn message(store: &SledStore, tenant: &TenantId, id: &MessageId) -> Result<Option<Message>, StoreError> {
    Ok(store.load(id)?.filter(|m| &m.tenant == tenant))
}

pub(super) fn mime(store: &SledStore, tenant: &TenantId, id: &MessageId) -> Result<Option<StoredMime>, StoreError> {
    if store.message(tenant, id)?.is_none() {
        return Ok(None);
    }
    let stored = match store.mime.get(id.as_str())? {
        Some(value) => store.resolve_mime(id, &value)?,
        None => None,
    };
    Ok(Some(stored.map_or(StoredMime::Expired, StoredMime::Bytes)))
}

pub(super) fn lease_due(
    store: &SledStore,
    now: DateTime<Utc>,
    max: usize,
    admit: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<Lease>, StoreError> {
    let end = u64::try_from(now.timestamp_millis())
        .unwrap_or(0)
        .saturating_add(1)
        .to_be_bytes();
    let mut candidates = Vec::new();
    for entry in store
        .queue
        .range(..end.as_slice())
        .take(max.saturating_add(LEASE_SKIP_BUDGET))
    {
        if candidates.len() >= max {
            break;
        }
        let (key, value) = entry?;
        if !admit(queued_as(&value).1) {
            continue;
        }
        match store.lease_candidate(&key) {
            Ok(candidate) => candidates.push(candidate),
            Err(err @ (StoreError::Io(_) | StoreError::Engine(_))) => return Err(err),
            Err(unusable) => store.park(&key, &unusable)?,
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let taken = store.try_lease(&candidates)?;
    Ok(candidates
        .into_iter()
        .zip(taken)
        .filter_map(|(candidate, won)| won.then_some(candidate.lease))
        .collect())
}

pub(super) fn recover_leases(store: &SledStore) -> Result<usize, StoreError> {
    let now = Utc::now();
    let mut recovered = 0;
    for entry in store.leases.iter() {
        let (key, _) = entry?;
        let id = MessageId::parse(&String::from_utf8_lossy(&key))
            .map_err(|_| StoreError::Missing(format!("lease {key:?}")))?;
        if let Some(mut message) = store.load(&id)? {
            message.status = message.settled_status();
            message.next_attempt_at = Some(now);
            store.release(&message)?;
            recovered += 1;
        } else {
            (&store.leases, &store.counters)
                .transaction(|(leases, counters)| {
                    if leases.remove(&key)?.is_some() {
                        let depth = DepthDelta::default();
                        depth.lease(-1);
                        depth.apply(counters)?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(flatten)?;
        }
    }
    Ok(recovered)
}

pub(super) fn next_due(store: &SledStore) -> Result<Option<DateTime<Utc>>, StoreError> {
    let Some((key, _)) = store.queue.first()? else {
        return Ok(None);
    };
    let millis: [u8; 8] = key.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default();
    let millis = i64::try_from(u64::from_be_bytes(millis)).unwrap_or(i64::MAX);
    Ok(Utc.timestamp_millis_opt(millis).single())
}

pub(super) fn apply_report(
    store: &SledStore,
    tenant: &TenantId,
    id: &MessageId,
    apply: &mut dyn FnMut(&mut Message),
) -> Result<ReportTarget, StoreError> {
    let Some(read) = store.messages.get(id.as_str())? else {
        return Ok(ReportTarget::NotFound);
    };
    let mut message: Message = decode(&read)?;
    if &message.tenant != tenant {
        return Ok(ReportTarget::NotFound);
    }
    apply(&mut message);
    // Compare-and-swap: a worker that leased the message, or another report that
    // changed it, since `read` makes this a retry instead of a lost update.
    match store.commit_durably(
        &message,
        Commit::Swap {
            read: &read,
            dequeue: false,
        },
    ) {
        Err(StoreError::Conflict) => Ok(ReportTarget::Busy),
        other => other.map(|()| ReportTarget::Applied),
    }
}

pub(super) fn list_messages(
    store: &SledStore,
    tenant: &TenantId,
    before: Option<&MessageId>,
    limit: usize,
    budget: usize,
    wanted: &dyn Fn(&Message) -> bool,
) -> Result<(Vec<Message>, Option<MessageId>), StoreError> {
    let range = tenant_range_before(tenant, before.map(|id| id.as_str()));
    let mut found = Vec::new();
    let mut last = None;
    let mut examined = 0;
    for entry in store.by_tenant_range(range).take(budget) {
        examined += 1;
        let key = entry?;
        let raw = key.get(tenant.as_str().len() + 1..).unwrap_or_default();
        let Ok(id) = MessageId::parse(&String::from_utf8_lossy(raw)) else {
            continue;
        };
        if let Some(message) = store.load(&id)? {
            if wanted(&message) {
                found.push(message);
            }
        }
        last = Some(id);
        if found.len() == limit {
            break;
        }
    }
    let stopped_early = found.len() == limit || examined == budget;
    Ok((found, last.filter(|_| stopped_early)))
}

pub(super) fn cancel(
    store: &SledStore,
    tenant: &TenantId,
    id: &MessageId,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, StoreError> {
    let Some(read) = store.messages.get(id.as_str())? else {
        return Ok(CancelOutcome::NotFound);
    };
    let mut message: Message = decode(&read)?;
    if &message.tenant != tenant {
        return Ok(CancelOutcome::NotFound);
    }
    if !message.cancel(now) {
        return Ok(CancelOutcome::TooLate(message.status));
    }
    match store.commit_durably(
        &message,
        Commit::Swap {
            read: &read,
            dequeue: true,
        },
    ) {
        Err(StoreError::Conflict) => Ok(CancelOutcome::TooLate(MessageStatus::Sending)),
        other => other.map(|()| CancelOutcome::Cancelled(Box::new(message))),
    }
}

pub(super) fn queue_depth(store: &SledStore) -> Result<QueueDepth, StoreError> {
    depth::read(&store.counters)
}

pub(super) fn count_messages(store: &SledStore) -> Result<usize, StoreError> {
    Ok(store.messages.len())
}
