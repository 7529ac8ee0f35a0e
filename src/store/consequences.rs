//! What a write of a message adds besides the message, decided once for every backend:
//! its new events as published to the tenant's stream, the report counter changes they
//! make, the suppressions they imply and the webhook deliveries they queue. A backend
//! only says which events are new (sled by their ids, PostgreSQL by how many the stored
//! record had) and stores the result in the write's transaction.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use chrono::Utc;

use super::StoreError;
use crate::domain::auth::TenantId;
use crate::domain::event::PublishedEvent;
use crate::domain::message::{Event, Message};
use crate::domain::suppression::Suppression;
use crate::domain::webhook::{OutboxEntry, Webhook};
use crate::stats::StatsDelta;

/// What writing one message adds besides itself.
pub(super) struct Consequences {
    /// Its events not yet in the stream, in the message's order.
    pub fresh: Vec<PublishedEvent>,
    /// What the fresh events (and an acceptance) add to the report counters.
    pub stats: StatsDelta,
    pub implied: Vec<Suppression>,
    pub deliveries: Vec<OutboxEntry>,
}

/// Each tenant's webhooks, read at most once per batch of writes.
pub(super) struct HookCache<'a> {
    read: &'a dyn Fn(&TenantId) -> Result<Vec<Webhook>, StoreError>,
    seen: HashMap<TenantId, Vec<Webhook>>,
}

impl<'a> HookCache<'a> {
    pub fn new(read: &'a dyn Fn(&TenantId) -> Result<Vec<Webhook>, StoreError>) -> Self {
        Self {
            read,
            seen: HashMap::new(),
        }
    }

    fn of(&mut self, tenant: &TenantId) -> Result<&[Webhook], StoreError> {
        Ok(match self.seen.entry(tenant.clone()) {
            Entry::Occupied(read) => read.into_mut(),
            Entry::Vacant(slot) => slot.insert((self.read)(tenant)?),
        })
    }
}

/// The consequences of writing `message` whose new events are `fresh`; `accepted` when
/// this write is its acceptance (counted once in the reports).
pub(super) fn plan<'m>(
    message: &'m Message,
    fresh: impl Iterator<Item = &'m Event>,
    accepted: bool,
    hooks: &mut HookCache<'_>,
) -> Result<Consequences, StoreError> {
    let mut stats = StatsDelta::default();
    if accepted {
        stats.accepted(message);
    }
    let fresh: Vec<PublishedEvent> = fresh
        .map(|event| {
            stats.event(message, event);
            PublishedEvent::of(message, event)
        })
        .collect();
    let implied = fresh.iter().filter_map(Suppression::caused_by).collect();
    let deliveries = if fresh.is_empty() {
        Vec::new()
    } else {
        let now = Utc::now();
        let tenant = &message.tenant;
        let hooks = hooks.of(tenant)?;
        fresh
            .iter()
            .flat_map(|event| hooks.iter().filter(|h| h.wants(event)).map(move |h| (h, event)))
            .map(|(hook, event)| OutboxEntry {
                entry_id: uuid::Uuid::now_v7().simple().to_string(),
                webhook_id: hook.id.clone(),
                tenant: tenant.clone(),
                event: event.clone(),
                attempts: 0,
                first_queued_at: now,
                due_at: now,
            })
            .collect()
    };
    Ok(Consequences {
        fresh,
        stats,
        implied,
        deliveries,
    })
}
