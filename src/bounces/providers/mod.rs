//! Provider webhooks (Amazon SES via SNS, Mailgun, Postmark, SendGrid): each proves its origin its own way
//! and speaks its own JSON; all end in the same [`Statement`]s and bounce taxonomy.
//! They carry no bearer token: the tenant is named in the URL (`?tenant=acme`) and the
//! provider's signature, checked with that tenant's configured key, authenticates the
//! request.

pub mod mailgun;
pub mod postmark;
pub mod sendgrid;
pub mod ses;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;

use super::ingest::Statement;
use crate::config::{read_secret, Settings};
use crate::domain::ids::MessageId;

/// Why a provider request was refused (401) or could not be read (422).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the signature is missing or does not verify")]
    BadSignature,
    #[error("the signed timestamp is too old (or in the future); replays are refused")]
    Stale,
    #[error("the body is not a {0} webhook payload")]
    Malformed(&'static str),
}

/// One tenant's provider credentials, read at start-up.
#[derive(Default, Clone)]
pub struct ProviderKeys {
    pub mailgun_signing_key: Option<String>,
    pub postmark_basic_auth: Option<String>,
    pub sendgrid_verification_key: Option<String>,
    pub ses_topic_arns: Vec<String>,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("mailgun", &self.mailgun_signing_key.is_some())
            .field("postmark", &self.postmark_basic_auth.is_some())
            .field("sendgrid", &self.sendgrid_verification_key.is_some())
            .field("ses_topics", &self.ses_topic_arns.len())
            .finish()
    }
}

/// Reads every tenant's provider credentials from their env vars and files.
pub fn load_keys(settings: &Settings) -> anyhow::Result<HashMap<String, ProviderKeys>> {
    settings
        .tenants
        .iter()
        .map(|(tenant, t)| {
            let keys = ProviderKeys {
                mailgun_signing_key: read_secret(
                    t.mailgun_signing_key_file.as_deref(),
                    t.mailgun_signing_key_env.as_deref(),
                )?,
                postmark_basic_auth: read_secret(
                    t.postmark_webhook_auth_file.as_deref(),
                    t.postmark_webhook_auth_env.as_deref(),
                )?,
                sendgrid_verification_key: t.sendgrid_verification_key.clone(),
                ses_topic_arns: t.ses_topic_arns.clone().unwrap_or_default(),
            };
            Ok((tenant.clone(), keys))
        })
        .collect()
}

/// Refuses a signed timestamp (Unix seconds) outside `max_age` of now.
pub fn check_fresh(timestamp: i64, max_age: Duration) -> Result<(), ProviderError> {
    let age = Utc::now().timestamp().abs_diff(timestamp);
    if age > max_age.as_secs() {
        Err(ProviderError::Stale)
    } else {
        Ok(())
    }
}

/// The mailgate message id inside a Message-ID header value (`<msg_…@domain>`).
pub fn message_id_of(header: &str) -> Option<MessageId> {
    let inner = header.trim().trim_start_matches('<').trim_end_matches('>');
    MessageId::parse(inner.split('@').next()?).ok()
}

/// Constant-time equality for secrets.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What every provider parser produces.
pub type Parsed = Result<Vec<Statement>, ProviderError>;
