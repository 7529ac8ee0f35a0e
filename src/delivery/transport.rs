//! The two ways a message leaves: an authenticated upstream SMTP submission server
//! (pooled connections, see `smtp_client`; STARTTLS or implicit TLS), or the sandbox that writes `.eml`
//! files for development. Both answer in the same [`DeliveryOutcome`] vocabulary.

use std::path::PathBuf;
use std::time::Duration;

use super::smtp_client::{Credentials, SmtpClient, SmtpFailure, SmtpTarget};
use super::tls::{Encryption, Trust};
use anyhow::Context;

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
                Some(Credentials {
                    username: username.clone(),
                    password,
                })
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
    // Addresses are checked at acceptance; one with a byte that would break the command
    // line cannot reach here, but is refused rather than sent if it ever does.
    let unsafe_address = |a: &str| a.contains(['<', '>', '\r', '\n', ' ']);
    if unsafe_address(&job.sender) || unsafe_address(&job.recipient) {
        return DeliveryOutcome::Bounced(local_failure(format!("invalid envelope address {}", job.recipient)));
    }
    match client.send(&job.sender, &[job.recipient.as_str()], mime).await {
        Ok(done) => DeliveryOutcome::Sent(reply(Some(done.code), done.text)),
        Err(SmtpFailure::Connect(text)) => DeliveryOutcome::Deferred(local_failure(text)),
        Err(SmtpFailure::Rejected(refused)) => {
            let permanent = refused.code / 100 == 5 && !GATEWAY_PROBLEM_CODES.contains(&refused.code);
            let outcome = reply(Some(refused.code), refused.text);
            if permanent {
                DeliveryOutcome::Bounced(outcome)
            } else {
                DeliveryOutcome::Deferred(outcome)
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
