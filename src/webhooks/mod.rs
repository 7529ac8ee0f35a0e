//! Outbound webhooks: endpoints a tenant manages, Standard Webhooks signatures, the
//! egress guard, and the dispatcher that drains the durable outbox.

pub mod dispatcher;
pub mod egress;
pub mod signing;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::auth::TenantId;
use crate::domain::ids::WebhookId;
use crate::domain::status::EventType;
use crate::domain::webhook::{DeliveryAttempt, OutboxEntry, SigningSecret, Webhook, WebhookUrl};
use crate::store::{Store, StoreError};

/// How long a rotated-out secret keeps signing, so receivers can switch over.
const ROTATION_GRACE: chrono::Duration = chrono::Duration::hours(24);
/// The most events one time-range replay queues.
const MAX_REPLAY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("the webhook was not found")]
    NotFound,
    #[error("the event was not found")]
    EventNotFound,
    #[error("the target is not allowed: {0}")]
    TargetNotAllowed(#[from] egress::EgressError),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// A change to a webhook; absent fields stay as they are.
#[derive(Debug, Default)]
pub struct WebhookPatch {
    pub url: Option<WebhookUrl>,
    pub events: Option<Vec<EventType>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// What to re-send.
#[derive(Debug, Clone)]
pub enum Replay {
    Event(String),
    Range { from: DateTime<Utc>, to: DateTime<Utc> },
}

#[derive(Clone)]
pub struct Webhooks {
    pub store: Arc<dyn Store>,
    pub allow_private_targets: bool,
}

impl Webhooks {
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, WebhooksError> + Send + 'static,
    ) -> Result<T, WebhooksError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(store.as_ref())).await?
    }

    async fn check_target(&self, url: &WebhookUrl) -> Result<(), WebhooksError> {
        egress::resolve(url, self.allow_private_targets).await?;
        Ok(())
    }

    /// Creates an endpoint; returns it with its secret, which is never shown again.
    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        url: WebhookUrl,
        events: Vec<EventType>,
        description: Option<String>,
    ) -> Result<(Webhook, String), WebhooksError> {
        self.check_target(&url).await?;
        let now = Utc::now();
        let secret = signing::new_secret();
        let webhook = Webhook {
            id: WebhookId::generate(),
            tenant: tenant.clone(),
            url,
            events,
            description,
            enabled: true,
            disabled_reason: None,
            secrets: vec![SigningSecret {
                secret: secret.clone(),
                created_at: now,
                expires_at: None,
            }],
            created_at: now,
            updated_at: now,
        };
        let stored = webhook.clone();
        self.blocking(move |store| Ok(store.put_webhook(&stored)?)).await?;
        tracing::info!(webhook_id = %webhook.id, "webhook created");
        Ok((webhook, secret))
    }

    pub async fn get(&self, tenant: &TenantId, id: WebhookId) -> Result<Webhook, WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| store.webhook(&tenant, &id)?.ok_or(WebhooksError::NotFound))
            .await
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Webhook>, WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| Ok(store.webhooks(&tenant)?)).await
    }

    pub async fn update(
        &self,
        tenant: &TenantId,
        id: WebhookId,
        patch: WebhookPatch,
    ) -> Result<Webhook, WebhooksError> {
        if let Some(url) = &patch.url {
            self.check_target(url).await?;
        }
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let mut webhook = store.webhook(&tenant, &id)?.ok_or(WebhooksError::NotFound)?;
            if let Some(url) = patch.url {
                webhook.url = url;
            }
            if let Some(events) = patch.events {
                webhook.events = events;
            }
            if let Some(description) = patch.description {
                webhook.description = description;
            }
            if let Some(enabled) = patch.enabled {
                webhook.enabled = enabled;
                if enabled {
                    webhook.disabled_reason = None;
                }
            }
            webhook.updated_at = Utc::now();
            store.put_webhook(&webhook)?;
            Ok(webhook)
        })
        .await
    }

    pub async fn delete(&self, tenant: &TenantId, id: WebhookId) -> Result<(), WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            if store.delete_webhook(&tenant, &id)? {
                Ok(())
            } else {
                Err(WebhooksError::NotFound)
            }
        })
        .await
    }

    /// A new secret; the previous ones keep signing for 24 hours.
    pub async fn rotate_secret(&self, tenant: &TenantId, id: WebhookId) -> Result<(Webhook, String), WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let mut webhook = store.webhook(&tenant, &id)?.ok_or(WebhooksError::NotFound)?;
            let now = Utc::now();
            webhook.secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
            for old in &mut webhook.secrets {
                old.expires_at.get_or_insert(now + ROTATION_GRACE);
            }
            let secret = signing::new_secret();
            webhook.secrets.insert(
                0,
                SigningSecret {
                    secret: secret.clone(),
                    created_at: now,
                    expires_at: None,
                },
            );
            webhook.updated_at = now;
            store.put_webhook(&webhook)?;
            Ok((webhook, secret))
        })
        .await
    }

    pub async fn deliveries(
        &self,
        tenant: &TenantId,
        id: WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            store.webhook(&tenant, &id)?.ok_or(WebhooksError::NotFound)?;
            Ok(store.deliveries(&id, limit)?)
        })
        .await
    }

    /// Queues the selected events again for this webhook (whatever happened to them
    /// before); returns how many.
    pub async fn replay(&self, tenant: &TenantId, id: WebhookId, selection: Replay) -> Result<usize, WebhooksError> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let webhook = store.webhook(&tenant, &id)?.ok_or(WebhooksError::NotFound)?;
            let events = match selection {
                Replay::Event(event_id) => {
                    vec![store.event(&tenant, &event_id)?.ok_or(WebhooksError::EventNotFound)?]
                }
                Replay::Range { from, to } => {
                    let mut found = Vec::new();
                    let mut after = None;
                    loop {
                        let (page, last) = store.events(&tenant, after, &[], 500)?;
                        if page.is_empty() {
                            break;
                        }
                        found.extend(page.into_iter().filter(|e| e.created_at >= from && e.created_at <= to));
                        if found.len() >= MAX_REPLAY || last == after {
                            break;
                        }
                        after = last;
                    }
                    found.truncate(MAX_REPLAY);
                    found
                }
            };
            let now = Utc::now();
            let entries: Vec<OutboxEntry> = events
                .into_iter()
                .filter(|e| webhook.events.is_empty() || webhook.events.contains(&e.event_type))
                .map(|event| OutboxEntry {
                    entry_id: uuid::Uuid::now_v7().simple().to_string(),
                    webhook_id: webhook.id.clone(),
                    tenant: tenant.clone(),
                    event,
                    attempts: 0,
                    first_queued_at: now,
                    due_at: now,
                })
                .collect();
            store.enqueue_deliveries(&entries)?;
            Ok(entries.len())
        })
        .await
    }
}
