//! The event stream, webhook endpoints, their delivery outbox and attempt log on sled.

use super::*;

pub(super) fn events(
    store: &SledStore,
    tenant: &TenantId,
    after: Option<u64>,
    types: &[EventType],
    limit: usize,
) -> Result<(Vec<PublishedEvent>, Option<u64>), StoreError> {
    let start = match after {
        Some(position) => stream_key(tenant, position.saturating_add(1)),
        None => stream_key(tenant, 0),
    };
    let end = stream_key(tenant, u64::MAX);
    let mut found = Vec::new();
    let mut last = after;
    for entry in store.events.range(start..=end) {
        let (key, value) = entry?;
        last = key
            .get(key.len() - 8..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        let event: PublishedEvent = decode(&value)?;
        if types.is_empty() || types.contains(&event.event_type) {
            found.push(event);
            if found.len() == limit {
                break;
            }
        }
    }
    Ok((found, last))
}

pub(super) fn put_webhook(store: &SledStore, webhook: &Webhook) -> Result<(), StoreError> {
    store.webhooks.insert(
        tenant_key(&webhook.tenant, webhook.id.as_str()),
        serde_json::to_vec(webhook)?,
    )?;
    store.flush()
}

pub(super) fn webhook(store: &SledStore, tenant: &TenantId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
    store
        .webhooks
        .get(tenant_key(tenant, id.as_str()))?
        .map(|raw| decode(&raw))
        .transpose()
}

pub(super) fn webhooks(store: &SledStore, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
    store
        .webhooks
        .scan_prefix(tenant_key(tenant, ""))
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn delete_webhook(store: &SledStore, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
    let removed = store.webhooks.remove(tenant_key(tenant, id.as_str()))?.is_some();
    store.flush()?;
    Ok(removed)
}

pub(super) fn enqueue_deliveries(store: &SledStore, entries: &[OutboxEntry]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for entry in entries {
        batch.insert(outbox_key(entry), serde_json::to_vec(entry)?);
    }
    store.outbox.apply_batch(batch)?;
    store.flush()
}

pub(super) fn lease_delivery(
    store: &SledStore,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<Option<OutboxEntry>, StoreError> {
    let end = u64::try_from(now.timestamp_millis())
        .unwrap_or(0)
        .saturating_add(1)
        .to_be_bytes();
    for item in store.outbox.range(..end.as_slice()) {
        let (key, value) = item?;
        let mut entry = match decode::<OutboxEntry>(&value) {
            Ok(entry) => entry,
            Err(reason) => {
                // Keep it for inspection, out of the way of the deliveries behind it.
                tracing::error!(error = %reason, "parked an undecodable webhook delivery");
                store.parked.insert([b"outbox:".as_slice(), &key].concat(), value)?;
                store.outbox.remove(&key)?;
                continue;
            }
        };
        entry.due_at = now + lease;
        let moved = store.outbox.transaction(|outbox| {
            if outbox.remove(&key)?.is_none() {
                return Ok(false);
            }
            outbox.insert(outbox_key(&entry), encode_json(&entry)?)?;
            Ok(true)
        });
        if moved.map_err(flatten)? {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

pub(super) fn finish_delivery(
    store: &SledStore,
    leased: &OutboxEntry,
    next: Option<&OutboxEntry>,
    attempt: &DeliveryAttempt,
    webhook: Option<&Webhook>,
) -> Result<(), StoreError> {
    let mut attempt_key = leased.webhook_id.as_str().as_bytes().to_vec();
    attempt_key.extend_from_slice(&store.db.generate_id()?.to_be_bytes());
    (&store.outbox, &store.webhook_deliveries, &store.webhooks)
        .transaction(|(outbox, log, webhooks)| {
            // Only the holder of a live lease re-queues: if the lease ran out and
            // another dispatcher took the entry, this attempt is only logged.
            let still_ours = outbox.remove(outbox_key(leased))?.is_some();
            if let (true, Some(next)) = (still_ours, next) {
                outbox.insert(outbox_key(next), encode_json(next)?)?;
            }
            log.insert(attempt_key.as_slice(), encode_json(attempt)?)?;
            if let Some(disabled) = webhook {
                // Re-read: only the enabled flag changes, and only if the webhook
                // still exists (it may have been deleted or rotated meanwhile).
                let key = tenant_key(&disabled.tenant, disabled.id.as_str());
                if let Some(raw) = webhooks.get(&key)? {
                    let mut current: Webhook = serde_json::from_slice(&raw)
                        .map_err(|e| ConflictableTransactionError::Abort(StoreError::from(e)))?;
                    current.enabled = disabled.enabled;
                    current.disabled_reason = disabled.disabled_reason.clone();
                    current.updated_at = disabled.updated_at;
                    webhooks.insert(key, encode_json(&current)?)?;
                }
            }
            Ok(())
        })
        .map_err(flatten)?;
    store.flush()
}

pub(super) fn deliveries(store: &SledStore, id: &WebhookId, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
    store
        .webhook_deliveries
        .scan_prefix(id.as_str().as_bytes())
        .rev()
        .take(limit)
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn event(store: &SledStore, tenant: &TenantId, id: &str) -> Result<Option<PublishedEvent>, StoreError> {
    let Some(position) = store.event_ids.get(id)? else {
        return Ok(None);
    };
    let position: [u8; 8] = position
        .as_ref()
        .try_into()
        .map_err(|_| StoreError::Missing(id.to_owned()))?;
    store
        .events
        .get(stream_key(tenant, u64::from_be_bytes(position)))?
        .map(|raw| decode(&raw))
        .transpose()
}
