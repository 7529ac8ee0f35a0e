//! The SMTP connections to one relay: opened on demand up to `max_connections`, kept
//! idle for `idle_timeout`, reset with `RSET` before each reuse (which also proves the
//! connection still works), and closed after any failed transaction.
//!
//! Why not lettre's own pool: its connections leave Nagle's algorithm on, and lettre
//! writes a message body and the final `<CRLF>.<CRLF>` as two writes, so the terminator
//! waits for the relay's delayed ACK — about 40 ms per message, which capped delivery at
//! ~25 messages/s per connection. Every connection is opened by us with `TCP_NODELAY`
//! (TLS handshaken over it by `tls`, after `starttls` for STARTTLS); lettre still speaks
//! SMTP on them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::Rset;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::sync::Semaphore;

use super::starttls;
use super::tls::{Encryption, TlsSocket};

/// Why a transaction did not happen.
#[derive(Debug)]
pub enum SmtpFailure {
    /// The relay answered (or the SMTP conversation broke): lettre's error, with the
    /// reply code when there was one.
    Smtp(lettre::transport::smtp::Error),
    /// No connection: refused, unreachable, timed out.
    Connect(String),
}

pub struct SmtpClient {
    host: String,
    port: u16,
    encryption: Encryption,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
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

impl SmtpClient {
    pub fn new(target: SmtpTarget) -> Self {
        Self {
            host: target.host,
            port: target.port,
            encryption: target.encryption,
            credentials: target.credentials,
            hello: ClientId::default(),
            timeout: target.timeout,
            idle_timeout: target.idle_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(target.max_connections.max(1) as usize),
        }
    }

    /// One transaction: `MAIL`, `RCPT` per envelope recipient, `DATA` with `mime`.
    pub async fn send(&self, envelope: &Envelope, mime: &[u8]) -> Result<Response, SmtpFailure> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(SmtpFailure::Connect("the connection pool is closed".into()));
        };
        let mut connection = match self.reusable().await {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let sent = tokio::time::timeout(self.timeout, connection.send(envelope, mime)).await;
        match sent {
            Ok(Ok(response)) => {
                self.lock().push((connection, Instant::now()));
                Ok(response)
            }
            Ok(Err(err)) => Err(SmtpFailure::Smtp(err)),
            Err(_) => Err(SmtpFailure::Connect(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still fresh and answers `RSET`.
    async fn reusable(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut connection, used) = self.lock().pop()?;
            if used.elapsed() > self.idle_timeout || connection.has_broken() {
                continue;
            }
            let reset = tokio::time::timeout(self.timeout, connection.command(Rset)).await;
            if matches!(reset, Ok(Ok(_))) {
                return Some(connection);
            }
        }
    }

    /// A new connection, greeted, encrypted as configured and authenticated.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpFailure> {
        let opened = tokio::time::timeout(self.timeout, self.open()).await;
        let mut connection = opened
            .map_err(|_| SmtpFailure::Connect(format!("no connection within {} s", self.timeout.as_secs())))??;
        if let Some(credentials) = &self.credentials {
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            tokio::time::timeout(self.timeout, connection.auth(&mechanisms, credentials))
                .await
                .map_err(|_| SmtpFailure::Connect("AUTH timed out".into()))?
                .map_err(SmtpFailure::Smtp)?;
        }
        Ok(connection)
    }

    /// A greeted connection over a socket with `TCP_NODELAY`, encrypted as configured.
    async fn open(&self) -> Result<AsyncSmtpConnection, SmtpFailure> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| SmtpFailure::Connect(format!("connect to {}:{}: {err}", self.host, self.port)))?;
        tcp.set_nodelay(true)
            .map_err(|err| SmtpFailure::Connect(format!("TCP_NODELAY: {err}")))?;
        let stream: Box<dyn lettre::transport::smtp::client::AsyncTokioStream> = match &self.encryption {
            Encryption::Implicit(setup) => Box::new(
                TlsSocket::connect(setup, tcp)
                    .await
                    .map_err(|err| SmtpFailure::Connect(format!("TLS with {}:{}: {err}", self.host, self.port)))?,
            ),
            Encryption::Starttls(setup) => Box::new(
                starttls::upgrade(tcp, &self.hello.to_string(), setup)
                    .await
                    .map_err(|err| SmtpFailure::Connect(format!("STARTTLS with {}:{}: {err}", self.host, self.port)))?,
            ),
            Encryption::None => Box::new(tcp),
        };
        let connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(SmtpFailure::Smtp)?;
        Ok(connection)
    }
}
