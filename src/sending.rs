//! Accepting a message: tenant policy, MIME rendering, durable storage, waking a
//! worker. The one service function behind `POST /v1/messages`.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::Utc;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::address::Mailbox;
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::message::{
    Body, Content, IdempotencyKey, Message, NewMessage, ReadyContent, TemplateCall, TemplateUse,
};
use crate::domain::template::TemplateKey;
use crate::domain::text::Subject;
use crate::domain::ValidationError;
use crate::render::{render_mime, RenderError};
use crate::store::writer::{Prepare, StoreWriter};
use crate::store::{Store, StoreError};
use crate::templates::{Templates, TemplatesError};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the sender domain `{0}` is not allowed for this tenant")]
    SenderDomainNotAllowed(String),
    /// `delivery.require_verified_domain` is on and no verified domain covers `from`.
    #[error("the sender domain `{0}` is not a verified domain of this tenant")]
    SenderDomainNotVerified(String),
    #[error("the sender domains could not be read")]
    Domains(#[from] crate::domains::DomainsError),
    #[error("the template could not be used")]
    Template(#[from] TemplatesError),
    /// The template rendered, but not into a sendable subject and body.
    #[error("{0}")]
    TemplateContent(ValidationError),
    /// A preview's `from` or `to` is not a mailbox.
    #[error("{error}")]
    PreviewAddress {
        field: &'static str,
        error: ValidationError,
    },
    #[error("rendering the MIME message failed")]
    Render(#[from] RenderError),
    #[error("storing the message failed")]
    Store(#[from] StoreError),
    #[error("the storage task was cancelled")]
    Join(#[from] tokio::task::JoinError),
    /// The `Idempotency-Key` was used within 24 hours for a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
}

/// How a send was answered.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Stored now.
    New(Message),
    /// The same request came before with the same `Idempotency-Key`: the message as
    /// it was first accepted, nothing new stored.
    Replayed(Message),
}

/// A message checked and rendered, before its durable write.
enum Prepared {
    /// Its idempotency key was used before for the same request: nothing to store.
    Replay(Box<Message>),
    Ready(Box<ReadyToStore>),
}

struct ReadyToStore {
    message: Message,
    mime: Vec<u8>,
}

impl Accepted {
    /// The message, stored now or earlier.
    pub fn message(&self) -> &Message {
        match self {
            Accepted::New(message) | Accepted::Replayed(message) => message,
        }
    }
}

/// What accepting needs from the running service.
#[derive(Clone)]
pub struct Sender {
    pub store: Arc<dyn Store>,
    /// Where the message is written, sharing one fsync with concurrent sends.
    pub writer: StoreWriter,
    pub wake: Arc<Notify>,
    pub settings: Arc<Settings>,
    pub templates: Templates,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// For `delivery.require_verified_domain`.
    pub domains: crate::domains::Domains,
}

impl Sender {
    /// The earlier answer for `key`, if the tenant used it within 24 hours: a replay
    /// for the same request, [`SendError::KeyReused`] for another.
    async fn earlier(&self, tenant: &TenantId, key: &IdempotencyKey) -> Result<Option<Accepted>, SendError> {
        let store = Arc::clone(&self.store);
        let (tenant, name) = (tenant.clone(), key.key.clone());
        match tokio::task::spawn_blocking(move || store.idempotency(&tenant, &name)).await?? {
            Some(record) if record.request_hash == key.request_hash => Ok(Some(Accepted::Replayed(record.accepted))),
            Some(_) => Err(SendError::KeyReused),
            None => Ok(None),
        }
    }

    /// Renders and durably stores `new` for `tenant`; when this returns `Ok`, the
    /// message survives a crash and will be delivered. With an idempotency key, a
    /// repeat of the same request within 24 hours replays the first answer and two
    /// concurrent ones store one message.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, message_id))]
    pub async fn accept(
        &self,
        tenant: &TenantId,
        new: NewMessage,
        key: Option<IdempotencyKey>,
    ) -> Result<Accepted, SendError> {
        match self.prepare(tenant, &new, key.as_ref()).await? {
            Prepared::Replay(message) => Ok(Accepted::Replayed(*message)),
            Prepared::Ready(ready) => self.store(tenant, *ready, key).await,
        }
    }

    /// Accepts every message or none: each is checked and rendered first, and only
    /// when all of them can be sent is any stored (concurrently, sharing the writer's
    /// fsync). What a provider's all-or-nothing request (a SendGrid send with several
    /// personalizations, a strict Resend batch) needs. A refusal lists each failing
    /// item with its index.
    pub async fn accept_all(
        &self,
        tenant: &TenantId,
        items: Vec<(NewMessage, Option<IdempotencyKey>)>,
    ) -> Result<Vec<Accepted>, Vec<(usize, SendError)>> {
        let prepared =
            futures_util::future::join_all(items.iter().map(|(new, key)| self.prepare(tenant, new, key.as_ref())))
                .await;
        let mut ready = Vec::with_capacity(prepared.len());
        let mut refused = Vec::new();
        for (index, (outcome, (_, key))) in prepared.into_iter().zip(items).enumerate() {
            match outcome {
                Ok(prepared) => ready.push((prepared, key)),
                Err(err) => refused.push((index, err)),
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let stored = futures_util::future::join_all(ready.into_iter().map(|(prepared, key)| async move {
            match prepared {
                Prepared::Replay(message) => Ok(Accepted::Replayed(*message)),
                Prepared::Ready(ready) => self.store(tenant, *ready, key).await,
            }
        }))
        .await;
        let mut accepted = Vec::with_capacity(stored.len());
        for (index, outcome) in stored.into_iter().enumerate() {
            match outcome {
                Ok(one) => accepted.push(one),
                Err(err) => refused.push((index, err)),
            }
        }
        if refused.is_empty() {
            Ok(accepted)
        } else {
            Err(refused)
        }
    }

    /// Everything before the durable write: the earlier answer for a repeated key, the
    /// sender-domain checks, rendering and the MIME. Stores nothing.
    async fn prepare(
        &self,
        tenant: &TenantId,
        new: &NewMessage,
        key: Option<&IdempotencyKey>,
    ) -> Result<Prepared, SendError> {
        if let Some(key) = key {
            if let Some(earlier) = self.earlier(tenant, key).await? {
                let (Accepted::Replayed(message) | Accepted::New(message)) = earlier;
                return Ok(Prepared::Replay(Box::new(message)));
            }
        }
        self.check_sender_domain(tenant, new)?;
        if self.settings.delivery.require_verified_domain {
            let from = new.from.email().domain();
            let verified = match crate::domain::sender_domain::DomainName::parse(from) {
                Ok(name) => self.domains.signing(tenant, &name).await?.is_some(),
                Err(_) => false,
            };
            if !verified {
                return Err(SendError::SenderDomainNotVerified(from.to_owned()));
            }
        }
        let id = MessageId::generate();
        tracing::Span::current().record("message_id", tracing::field::display(&id));
        let mut content = match &new.content {
            Content::Ready(ready) => ready.clone(),
            Content::Template(call) => self.render_template(tenant, call).await?,
        };
        if let (true, Body::Html(html)) = (new.auto_text, &content.body) {
            content.body = Body::Both {
                text: crate::render::text::from_html(html),
                html: html.clone(),
            };
        }
        let mime = render_mime(
            new,
            &content,
            &id,
            &self.settings.delivery.message_id_domain,
            SystemTime::now(),
        )?;
        let mut message = Message::accepted(id, tenant.clone(), new, &content, Utc::now());
        message.list_unsubscribe = new
            .list_unsubscribe
            .unwrap_or_else(|| self.settings.list_unsubscribe(tenant.as_str()));
        Ok(Prepared::Ready(Box::new(ReadyToStore { message, mime })))
    }

    /// The durable write of a prepared message, and waking a worker for it.
    async fn store(
        &self,
        tenant: &TenantId,
        ready: ReadyToStore,
        key: Option<IdempotencyKey>,
    ) -> Result<Accepted, SendError> {
        // Suppressions are read on the writer thread just before the write; one added
        // after that still stops the send, because the worker reads them again with
        // the lease.
        let prepare: Prepare = Box::new(|reads, message| {
            let suppressed = reads.suppressed(message)?;
            let now = Utc::now();
            for index in 0..message.recipients.len() {
                if suppressed.contains(&message.recipients[index].email) {
                    message.suppress(index, now);
                }
            }
            Ok(())
        });
        let stored = self
            .writer
            .accept(ready.message, ready.mime, key.clone(), prepare)
            .await;
        let message = match (stored, &key) {
            (Ok(message), _) => message,
            // A concurrent request with the same key won the claim: answer as it did.
            (Err(StoreError::Conflict), Some(key)) => {
                return self.earlier(tenant, key).await?.ok_or(SendError::KeyReused);
            }
            (Err(err), _) => return Err(err.into()),
        };
        if message.next_attempt_at.is_some() {
            self.wake.notify_one();
        }
        tracing::info!(message_id = %message.id, recipients = message.recipients.len(), status = ?message.status, "message accepted");
        self.metrics.message_accepted(tenant.as_str());
        Ok(Accepted::New(message))
    }

    /// The exact MIME a send of this template would produce (its own Message-ID and
    /// Date aside), without storing anything.
    pub async fn preview(
        &self,
        tenant: &TenantId,
        key: TemplateKey,
        version: Option<u32>,
        data: serde_json::Value,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<Vec<u8>, SendError> {
        let domain = &self.settings.delivery.message_id_domain;
        let mailbox = |field: &'static str, raw: String| {
            Mailbox::parse(&raw).map_err(|error| SendError::PreviewAddress { field, error })
        };
        let call = TemplateCall { key, version, data };
        let content = self.render_template(tenant, &call).await?;
        let new = NewMessage {
            from: mailbox("/from", from.unwrap_or_else(|| format!("preview@{domain}")))?,
            to: vec![mailbox(
                "/to",
                to.unwrap_or_else(|| "recipient@example.com".to_owned()),
            )?],
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: Vec::new(),
            content: Content::Template(call),
            headers: Vec::new(),
            attachments: Vec::new(),
            tags: Vec::new(),
            metadata: Default::default(),
            send_at: None,
            list_unsubscribe: None,
            auto_text: true,
        };
        Ok(render_mime(
            &new,
            &content,
            &MessageId::generate(),
            domain,
            SystemTime::now(),
        )?)
    }

    /// Renders the template into a subject and body, remembering which version it was.
    async fn render_template(&self, tenant: &TenantId, call: &TemplateCall) -> Result<ReadyContent, SendError> {
        let rendering = self
            .templates
            .render(tenant, call.key.clone(), call.version, call.data.clone())
            .await?;
        let parts = rendering.parts;
        let subject = parts.subject.ok_or_else(|| {
            SendError::TemplateContent(ValidationError::new(
                "missing_content",
                "the template has no subject part",
            ))
        })?;
        Ok(ReadyContent {
            subject: Subject::parse(&subject).map_err(SendError::TemplateContent)?,
            body: Body::parse(parts.text, parts.html).map_err(SendError::TemplateContent)?,
            template: Some(TemplateUse {
                id: rendering.template.id,
                name: rendering.template.name.as_str().to_owned(),
                version: rendering.version,
            }),
        })
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
