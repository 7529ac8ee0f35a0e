//! Turning reports into events: find the message and recipient a report is about
//! (VERP return path first, the returned Message-ID as a fallback), record the
//! outcome, and keep every raw report, matched or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::providers::ProviderKeys;
use super::report::{self, Action, RecipientReport};
use super::verp::parse_return_path;
use crate::domain::auth::TenantId;
use crate::domain::bounce::{classify, Bounce};
use crate::domain::ids::{EventId, MessageId};
use crate::domain::message::{ExternalReport, SmtpReply};
use crate::domain::status::EventType;
use crate::store::{ReportTarget, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A matched message is being sent right now: the reporter should retry.
    #[error("the message is being delivered right now; retry shortly")]
    Busy,
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// What happened to one report.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Ingested {
    /// The stored raw report (`rpt_…`).
    pub report_id: String,
    /// Recipients matched to a message of this tenant and recorded.
    pub matched: usize,
    /// Recipients (or whole reports) that matched nothing; kept, not acted on.
    pub unmatched: usize,
}

/// One normalised statement about one recipient, whatever its source format.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The message, when the source names it (JSON reports, VERP).
    pub message_id: Option<MessageId>,
    /// The recipient index, when a VERP address gave it.
    pub index: Option<usize>,
    pub recipient: String,
    pub report: ExternalReport,
}

impl Statement {
    /// What a provider webhook says about one recipient of a message it names (no VERP
    /// index); the address is lowercased as every stored recipient is.
    pub fn reported(
        message_id: Option<MessageId>,
        recipient: &str,
        event_type: EventType,
        smtp: Option<SmtpReply>,
        bounce: Option<Bounce>,
    ) -> Self {
        Self {
            message_id,
            index: None,
            recipient: recipient.to_ascii_lowercase(),
            report: ExternalReport {
                event_type,
                smtp,
                bounce,
            },
        }
    }
}

#[derive(Clone)]
pub struct Bounces {
    pub store: Arc<dyn Store>,
    /// Each tenant's provider webhook credentials, by tenant name.
    pub providers: Arc<HashMap<String, ProviderKeys>>,
    pub max_signature_age: Duration,
    /// The pinned SNS certificate, or certificates fetched from SNS hosts, by URL.
    pub sns_certificates: Arc<SnsCertificates>,
    /// Mailgun tokens seen within the signature window (Mailgun does not sign the
    /// body, so a signature must not be usable twice).
    pub seen_tokens: Arc<std::sync::Mutex<HashMap<String, i64>>>,
}

/// SNS signing certificates: one pinned in configuration, or fetched once per URL
/// (only from `sns.<region>.amazonaws.com`) and kept.
#[derive(Default)]
pub struct SnsCertificates {
    pub pinned: Option<Vec<u8>>,
    pub fetched: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl SnsCertificates {
    /// The certificate for `url`, fetching it when allowed and not yet known.
    pub async fn get(&self, url: &str) -> Option<Vec<u8>> {
        if let Some(pinned) = &self.pinned {
            return Some(pinned.clone());
        }
        if !super::providers::ses::cert_url_allowed(url) {
            return None;
        }
        if let Some(known) = self.lock().get(url) {
            return Some(known.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let response = client.get(url).send().await.ok()?.error_for_status().ok()?;
        let pem = response.bytes().await.ok()?.to_vec();
        self.lock().insert(url.to_owned(), pem.clone());
        Some(pem)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.fetched.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn statement_of(recipient: &RecipientReport, message_id: Option<MessageId>, index: Option<usize>) -> Statement {
    let smtp = SmtpReply {
        code: recipient.smtp_code,
        enhanced: recipient.status.clone(),
        diagnostic: recipient.diagnostic.clone().unwrap_or_default(),
    };
    let (event_type, bounce) = match recipient.action {
        Action::Failed => (
            EventType::Bounced,
            Some(classify(smtp.code, smtp.enhanced.as_deref(), &smtp.diagnostic, "dsn")),
        ),
        Action::Delayed => (EventType::Deferred, None),
        Action::Delivered => (EventType::Delivered, None),
        Action::Complained => (EventType::Complained, Some(Bounce::complaint("arf"))),
    };
    Statement {
        message_id,
        index,
        recipient: recipient.recipient.clone(),
        report: ExternalReport {
            event_type,
            smtp: (recipient.action != Action::Complained).then_some(smtp),
            bounce,
        },
    }
}

impl Bounces {
    /// `true` the first time `token` (signed at `timestamp`) is seen in the window.
    pub fn first_use(&self, token: &str, timestamp: i64) -> bool {
        let mut seen = self
            .seen_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = Utc::now().timestamp() - i64::try_from(self.max_signature_age.as_secs()).unwrap_or(i64::MAX);
        seen.retain(|_, at| *at >= oldest);
        seen.insert(token.to_owned(), timestamp).is_none()
    }

    /// The tenant a provider webhook names, with its credentials, when it has any.
    pub fn provider_tenant(&self, tenant: &str) -> Option<(TenantId, &ProviderKeys)> {
        let keys = self.providers.get(tenant)?;
        Some((TenantId::parse(tenant).ok()?, keys))
    }

    /// Ingests a raw DSN or ARF report. Never fails on content: what cannot be parsed
    /// or matched is stored and counted as unmatched.
    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn ingest_report(&self, tenant: &TenantId, raw: Vec<u8>) -> Result<Ingested, IngestError> {
        let parsed = report::parse(&raw);
        let statements = match &parsed {
            Ok(report) => {
                let verp = report.envelope_to.iter().find_map(|a| parse_return_path(a));
                let by_message_id = report
                    .original_message_id
                    .as_deref()
                    .and_then(|id| MessageId::parse(id.split('@').next().unwrap_or_default()).ok());
                report
                    .recipients
                    .iter()
                    .map(|r| match &verp {
                        Some((id, index)) => statement_of(r, Some(id.clone()), Some(*index)),
                        None => statement_of(r, by_message_id.clone(), None),
                    })
                    .collect()
            }
            Err(err) => {
                tracing::info!(error = %err, "unparseable report stored");
                Vec::new()
            }
        };
        let source = if parsed
            .as_ref()
            .is_ok_and(|r| r.recipients.iter().any(|x| x.action == Action::Complained))
        {
            "arf"
        } else {
            "dsn"
        };
        self.ingest(tenant, source, raw, statements).await
    }

    /// Records `statements` and keeps `raw` under `source`.
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        source: &'static str,
        raw: Vec<u8>,
        statements: Vec<Statement>,
    ) -> Result<Ingested, IngestError> {
        let store = Arc::clone(&self.store);
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || {
            let mut matched = 0;
            for (position, statement) in statements.iter().enumerate() {
                if apply(store.as_ref(), &tenant, statement, event_id_for(source, &raw, position))? {
                    matched += 1;
                }
            }
            let unmatched = statements
                .len()
                .saturating_sub(matched)
                .max(usize::from(statements.is_empty()));
            let report_id = store.save_report(&tenant, source, unmatched == 0, &raw)?;
            tracing::info!(matched, unmatched, report_id, "report ingested");
            Ok(Ingested {
                report_id,
                matched,
                unmatched,
            })
        })
        .await?
    }
}

/// The event id of statement `position` of a report: the same report always gives
/// the same ids, so a redelivered report is recorded once.
fn event_id_for(source: &str, raw: &[u8], position: usize) -> EventId {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(source.as_bytes())
        .chain_update(raw)
        .chain_update(position.to_be_bytes())
        .finalize();
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    EventId::derived(&short)
}

/// Records one statement on its message; `false` when nothing matched.
fn apply(store: &dyn Store, tenant: &TenantId, statement: &Statement, event_id: EventId) -> Result<bool, IngestError> {
    let Some(id) = &statement.message_id else {
        return Ok(false);
    };
    let mut matched = false;
    let target = store.apply_report(tenant, id, &mut |message| {
        let index = statement.index.filter(|i| {
            message
                .recipients
                .get(*i)
                .is_some_and(|r| r.email.eq_ignore_ascii_case(&statement.recipient))
        });
        let index = index.or_else(|| {
            message
                .recipients
                .iter()
                .position(|r| r.email.eq_ignore_ascii_case(&statement.recipient))
        });
        if let Some(index) = index {
            message.record_report(index, statement.report.clone(), event_id.clone(), Utc::now());
            matched = true;
        }
    })?;
    match target {
        ReportTarget::Busy => Err(IngestError::Busy),
        ReportTarget::NotFound => Ok(false),
        ReportTarget::Applied => Ok(matched),
    }
}
