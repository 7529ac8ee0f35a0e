//! The two ways a message leaves: an authenticated upstream SMTP submission server
//! (pooled connections, see `smtp_client`; STARTTLS or implicit TLS), or the sandbox that writes `.eml`
//! files for development. Both answer in the same [`DeliveryOutcome`] vocabulary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::Address;

use super::smtp_client::{SmtpClient, SmtpFailure, SmtpTarget};
use super::tls::{Encryption, Trust};

use crate::config::{read_secret, UpstreamSettings};
use crate::domain::message::{DeliveryOutcome, SmtpReply};

/// One SMTP transaction to do: one envelope recipient, so that each recipient gets its
/// own outcome and its own VERP return path.
#[derive(Debug, Clone)]
pub struct TransportJob {
    /// Whose message it is (for the relay's per-tenant cap).
    pub tenant: String,
    pub sender: String,
    pub recipient: String,
    /// Names the sandbox file; unique per message and recipient.
    pub label: String,
}

pub enum Transport {
    Smtp {
        name: String,
        address: String,
        client: Box<SmtpClient>,
    },
    Sandbox {
        dir: PathBuf,
    },
}

/// Reply codes that say the *gateway* is misconfigured (authentication), not that the
/// recipient is bad: deferring keeps mail queued until the operator fixes the config.
pub(super) const GATEWAY_PROBLEM_CODES: [u16; 4] = [530, 534, 535, 538];

impl Transport {
    /// Builds the pooled SMTP client for `upstream`, reading its password and CA file.
    pub fn smtp(upstream: &UpstreamSettings, timeout: Duration) -> anyhow::Result<Self> {
        let ca_pem = match &upstream.ca_file {
            Some(ca_file) => Some(
                std::fs::read(ca_file).with_context(|| format!("Failed to read the CA file {}", ca_file.display()))?,
            ),
            None => None,
        };
        let trust = Trust {
            ca_pem: ca_pem.as_deref(),
            fingerprint: upstream.tls_fingerprint_sha256,
        };
        let encryption = Encryption::new(upstream.tls, &upstream.host, trust)
            .with_context(|| format!("upstream {}: TLS", upstream.name))?;
        let credentials = match &upstream.username {
            Some(username) => {
                let password = read_secret(upstream.password_file.as_deref(), upstream.password_env.as_deref())
                    .with_context(|| format!("upstream {}: password", upstream.name))?
                    .unwrap_or_default();
                Some(Credentials::new(username.clone(), password))
            }
            None => None,
        };
        let client = Box::new(SmtpClient::new(SmtpTarget {
            host: upstream.host.clone(),
            port: upstream.port,
            encryption,
            credentials,
            max_connections: upstream.max_connections,
            timeout,
            idle_timeout: upstream.idle_timeout.0,
        }));
        Ok(Transport::Smtp {
            name: upstream.name.clone(),
            address: format!("{}:{}", upstream.host, upstream.port),
            client,
        })
    }

    pub fn sandbox(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create the sandbox directory {}", dir.display()))?;
        Ok(Transport::Sandbox { dir })
    }

    /// A short name for logs and readiness: the upstream name, or `sandbox`.
    pub fn name(&self) -> &str {
        match self {
            Transport::Smtp { name, .. } => name,
            Transport::Sandbox { .. } => "sandbox",
        }
    }

    /// Whether mail can leave right now: a TCP connect to the upstream, or a writable
    /// sandbox directory.
    pub async fn is_reachable(&self) -> bool {
        match self {
            Transport::Smtp { address, .. } => {
                let connect = tokio::net::TcpStream::connect(address.as_str());
                matches!(tokio::time::timeout(Duration::from_secs(2), connect).await, Ok(Ok(_)))
            }
            Transport::Sandbox { dir } => tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()),
        }
    }

    /// Sends `mime` unchanged to one recipient and classifies the result.
    pub async fn send(&self, job: &TransportJob, mime: &[u8]) -> DeliveryOutcome {
        match self {
            Transport::Smtp { client, .. } => send_smtp(client, job, mime).await,
            Transport::Sandbox { dir } => {
                let path = dir.join(format!("{}.eml", job.label));
                match tokio::fs::write(&path, mime).await {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), recipient = %job.recipient, "sandbox: wrote message instead of sending it");
                        DeliveryOutcome::Sent(SmtpReply {
                            code: Some(250),
                            enhanced: Some("2.0.0".into()),
                            diagnostic: format!("sandbox: written to {}", path.display()),
                        })
                    }
                    Err(err) => DeliveryOutcome::Deferred(local_failure(format!("sandbox write failed: {err}"))),
                }
            }
        }
    }
}

fn local_failure(diagnostic: String) -> SmtpReply {
    SmtpReply {
        code: None,
        enhanced: None,
        diagnostic,
    }
}

async fn send_smtp(client: &SmtpClient, job: &TransportJob, mime: &[u8]) -> DeliveryOutcome {
    let envelope = match (job.sender.parse::<Address>(), job.recipient.parse::<Address>()) {
        (Ok(from), Ok(to)) => Envelope::new(Some(from), vec![to]),
        _ => return DeliveryOutcome::Bounced(local_failure(format!("invalid envelope address {}", job.recipient))),
    };
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(err) => return DeliveryOutcome::Bounced(local_failure(format!("invalid envelope: {err}"))),
    };
    match client.send(&envelope, mime).await {
        Ok(response) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            DeliveryOutcome::Sent(reply(response.code().to_string().parse().ok(), text))
        }
        Err(SmtpFailure::Connect(text)) => DeliveryOutcome::Deferred(local_failure(text)),
        Err(SmtpFailure::Smtp(err)) => {
            let code: Option<u16> = err.status().and_then(|c| c.to_string().parse().ok());
            let text = std::error::Error::source(&err).map_or_else(|| err.to_string(), ToString::to_string);
            match code {
                Some(code) if err.is_permanent() && !GATEWAY_PROBLEM_CODES.contains(&code) => {
                    DeliveryOutcome::Bounced(reply(Some(code), text))
                }
                Some(code) => DeliveryOutcome::Deferred(reply(Some(code), text)),
                None => DeliveryOutcome::Deferred(local_failure(error_chain(&err))),
            }
        }
    }
}

/// Splits `5.1.1 <x@y>: User unknown` into the enhanced code and the full text.
fn reply(code: Option<u16>, text: String) -> SmtpReply {
    let enhanced = text
        .split_whitespace()
        .next()
        .filter(|word| is_enhanced_code(word))
        .map(str::to_owned);
    SmtpReply {
        code,
        enhanced,
        diagnostic: text,
    }
}

fn is_enhanced_code(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_code_is_taken_from_the_reply_text() {
        let r = reply(Some(550), "5.1.1 <reject@x.test>: User unknown".into());
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(reply(Some(250), "Ok: queued as ABC".into()).enhanced, None);
    }
}
