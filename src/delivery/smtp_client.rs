//! The SMTP connections to one relay: opened on demand up to `max_connections`, kept
//! idle for `idle_timeout`, and closed after any transaction that broke. Each
//! connection is a [`Session`] of ours: `TCP_NODELAY` (lettre's pool left Nagle on and
//! wrote the body's terminator separately, which cost a delayed ACK — ~40 ms — per
//! message), and RFC 2920 PIPELINING when the relay offers it, so a reused connection's
//! `RSET` rides with the next `MAIL` instead of costing its own round trip.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::smtp_session::{Reply, Session, SessionError, Stream};
use super::starttls;
use super::tls::{Encryption, TlsSocket};

/// Why a transaction did not happen.
#[derive(Debug)]
pub enum SmtpFailure {
    /// The relay refused: its reply is the recipient's outcome.
    Rejected(Reply),
    /// No connection, or it broke: refused, unreachable, timed out, not SMTP.
    Connect(String),
}

/// Failure replies after which a connection is closed rather than reused: a pipelined
/// transaction whose recipient is refused collects two (`RCPT`, then `DATA`), and
/// Postfix's `smtpd_soft_error_limit` (10) starts a one-second sleep per reply.
const MAX_ERRORS_PER_CONNECTION: usize = 6;

/// A relay login. `Debug` never shows the password.
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

pub struct SmtpClient {
    host: String,
    port: u16,
    encryption: Encryption,
    credentials: Option<Credentials>,
    hello: String,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(Session, Instant)>>,
    permits: Semaphore,
}

/// Where a relay is and how to talk to it.
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub encryption: Encryption,
    pub credentials: Option<Credentials>,
    pub max_connections: u32,
    /// Per SMTP exchange: connecting (with greeting, TLS and AUTH), and one transaction.
    pub timeout: Duration,
    pub idle_timeout: Duration,
}

/// Our `EHLO` name: the host's name (`localhost` when it has none usable).
fn hello_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .unwrap_or_else(|| "localhost".to_owned())
}

impl SmtpClient {
    pub fn new(target: SmtpTarget) -> Self {
        Self {
            host: target.host,
            port: target.port,
            encryption: target.encryption,
            credentials: target.credentials,
            hello: hello_name(),
            timeout: target.timeout,
            idle_timeout: target.idle_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(target.max_connections.max(1) as usize),
        }
    }

    /// One transaction: `MAIL`, `RCPT` per envelope recipient, `DATA` with `mime`.
    pub async fn send(&self, sender: &str, recipients: &[&str], mime: &[u8]) -> Result<Reply, SmtpFailure> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(SmtpFailure::Connect("the connection pool is closed".into()));
        };
        // A pooled connection the relay closed meanwhile breaks before any reply: that
        // transaction never reached the relay, so it is tried on the next connection.
        while let Some(session) = self.reusable() {
            match self.transact(session, sender, recipients, mime).await {
                Err(SessionError::Stale(_)) => continue,
                done => return done.map_err(failure),
            }
        }
        let session = self.connect().await?;
        self.transact(session, sender, recipients, mime).await.map_err(failure)
    }

    async fn transact(
        &self,
        mut session: Session,
        sender: &str,
        recipients: &[&str],
        mime: &[u8],
    ) -> Result<Reply, SessionError> {
        let sent = tokio::time::timeout(self.timeout, session.send(sender, recipients, mime)).await;
        match sent {
            Ok(Ok(reply)) => {
                self.lock().push((session, Instant::now()));
                Ok(reply)
            }
            Ok(Err(SessionError::Rejected(reply))) => {
                // A refusal leaves the connection usable (the next transaction resets it),
                // until the relay's error count on it would start slowing it down.
                if session.errors() < MAX_ERRORS_PER_CONNECTION {
                    self.lock().push((session, Instant::now()));
                } else {
                    tokio::spawn(session.quit());
                }
                Err(SessionError::Rejected(reply))
            }
            Ok(Err(broken)) => Err(broken),
            Err(_) => Err(SessionError::Broken(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Session, Instant)>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still fresh.
    fn reusable(&self) -> Option<Session> {
        let mut idle = self.lock();
        while let Some((session, used)) = idle.pop() {
            if used.elapsed() <= self.idle_timeout {
                return Some(session);
            }
        }
        None
    }

    /// A new connection, greeted, encrypted as configured and authenticated.
    async fn connect(&self) -> Result<Session, SmtpFailure> {
        let opened = tokio::time::timeout(self.timeout, self.open()).await;
        let mut session = opened
            .map_err(|_| SmtpFailure::Connect(format!("no connection within {} s", self.timeout.as_secs())))??;
        if let Some(credentials) = &self.credentials {
            tokio::time::timeout(
                self.timeout,
                session.authenticate(&credentials.username, &credentials.password),
            )
            .await
            .map_err(|_| SmtpFailure::Connect("AUTH timed out".into()))?
            .map_err(failure)?;
        }
        Ok(session)
    }

    /// A greeted session over a socket with `TCP_NODELAY`, encrypted as configured.
    async fn open(&self) -> Result<Session, SmtpFailure> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| SmtpFailure::Connect(format!("connect to {}:{}: {err}", self.host, self.port)))?;
        tcp.set_nodelay(true)
            .map_err(|err| SmtpFailure::Connect(format!("TCP_NODELAY: {err}")))?;
        let stream: Box<dyn Stream> = match &self.encryption {
            Encryption::Implicit(setup) => Box::new(
                TlsSocket::connect(setup, tcp)
                    .await
                    .map_err(|err| SmtpFailure::Connect(format!("TLS with {}:{}: {err}", self.host, self.port)))?,
            ),
            Encryption::Starttls(setup) => Box::new(
                starttls::upgrade(tcp, &self.hello, setup)
                    .await
                    .map_err(|err| SmtpFailure::Connect(format!("STARTTLS with {}:{}: {err}", self.host, self.port)))?,
            ),
            Encryption::None => Box::new(tcp),
        };
        Session::open(stream, &self.hello).await.map_err(failure)
    }
}

fn failure(err: SessionError) -> SmtpFailure {
    match err {
        SessionError::Rejected(reply) => SmtpFailure::Rejected(reply),
        SessionError::Broken(text) | SessionError::Stale(text) => SmtpFailure::Connect(text),
    }
}
