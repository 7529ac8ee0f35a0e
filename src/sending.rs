//! Accepting a message: tenant policy, MIME rendering, durable storage, waking a
//! worker. The one service function behind `POST /v1/messages`.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::Utc;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::message::{Message, NewMessage};
use crate::render::{render_mime, RenderError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the sender domain `{0}` is not allowed for this tenant")]
    SenderDomainNotAllowed(String),
    #[error("rendering the MIME message failed")]
    Render(#[from] RenderError),
    #[error("storing the message failed")]
    Store(#[from] StoreError),
    #[error("the storage task was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

/// What accepting needs from the running service.
#[derive(Clone)]
pub struct Sender {
    pub store: Arc<dyn Store>,
    pub wake: Arc<Notify>,
    pub settings: Arc<Settings>,
}

impl Sender {
    /// Renders and durably stores `new` for `tenant`; when this returns `Ok`, the
    /// message survives a crash and will be delivered.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, message_id))]
    pub async fn accept(&self, tenant: &TenantId, new: NewMessage) -> Result<Message, SendError> {
        self.check_sender_domain(tenant, &new)?;
        let id = MessageId::generate();
        tracing::Span::current().record("message_id", tracing::field::display(&id));
        let mime = render_mime(&new, &id, &self.settings.delivery.message_id_domain, SystemTime::now())?;
        let message = Message::accepted(id, tenant.clone(), &new, Utc::now());
        let store = Arc::clone(&self.store);
        let stored = message.clone();
        tokio::task::spawn_blocking(move || store.accept(&stored, &mime)).await??;
        self.wake.notify_one();
        tracing::info!(recipients = message.recipients.len(), status = ?message.status, "message accepted");
        Ok(message)
    }

    fn check_sender_domain(&self, tenant: &TenantId, new: &NewMessage) -> Result<(), SendError> {
        let Some(allowed) = self
            .settings
            .tenants
            .get(tenant.as_str())
            .and_then(|t| t.allowed_sender_domains.as_ref())
        else {
            return Ok(());
        };
        let domain = new.from.email().domain();
        let ok = allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            domain.eq_ignore_ascii_case(&a) || domain.to_ascii_lowercase().ends_with(&format!(".{a}"))
        });
        if ok {
            Ok(())
        } else {
            Err(SendError::SenderDomainNotAllowed(domain.to_owned()))
        }
    }
}
