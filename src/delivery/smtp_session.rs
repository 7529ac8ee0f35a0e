//! One SMTP connection spoken by us (RFC 5321), so that a transaction can use RFC 2920
//! PIPELINING: when the relay advertises it, `RSET` (on reuse), `MAIL FROM`, every
//! `RCPT TO` and `DATA` go out in one write and their replies are read back in order —
//! one round trip instead of four or five. A refused `RCPT` or a failed `MAIL` never
//! sends the body. A relay that does not advertise it gets the same commands one at a
//! time, each after the last reply.

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest reply line read (RFC 5321 allows 512 octets; relays send more).
const MAX_LINE: usize = 4096;
/// Most lines in one reply (an `EHLO` answer lists one extension per line).
const MAX_LINES: usize = 100;

/// The byte stream under a session: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A relay's reply: its code and the text of every line, joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// Why a session step did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The relay answered with a failure: the transaction's outcome.
    Rejected(Reply),
    /// The conversation broke (I/O, a reply that is not SMTP): the connection is gone.
    Broken(String),
    /// It broke before the relay answered anything of this transaction: a reused
    /// connection the relay had closed. Nothing was delivered; another connection may
    /// try the same transaction.
    Stale(String),
}

fn stale(err: SessionError) -> SessionError {
    match err {
        SessionError::Broken(text) => SessionError::Stale(text),
        other => other,
    }
}

pub struct Session {
    io: BufReader<Box<dyn Stream>>,
    /// The relay advertised PIPELINING in its EHLO answer.
    pipelining: bool,
    auth: Vec<String>,
    /// A transaction ran on this connection: the next one starts with `RSET`.
    used: bool,
    /// Failure replies the relay has given on this connection.
    errors: usize,
}

impl Session {
    /// Reads the greeting and says `EHLO hello` (over TLS when `stream` is, so the
    /// extensions are those offered after STARTTLS).
    pub async fn open(stream: Box<dyn Stream>, hello: &str) -> Result<Self, SessionError> {
        let mut session = Self {
            io: BufReader::new(stream),
            pipelining: false,
            auth: Vec::new(),
            used: false,
            errors: 0,
        };
        let greeting = session.read_reply().await?;
        if greeting.code != 220 {
            return Err(SessionError::Rejected(greeting));
        }
        session.write(format!("EHLO {hello}\r\n").as_bytes()).await?;
        let (ehlo, lines) = session.read_reply_lines().await?;
        if ehlo.code != 250 {
            return Err(SessionError::Rejected(ehlo));
        }
        for line in lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("PIPELINING") => session.pipelining = true,
                Some("AUTH") => session.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        Ok(session)
    }

    /// How many failure replies this connection has had. Relays count them per
    /// connection and slow down or hang up past a limit (Postfix: after 10, a second's
    /// sleep before each reply), so a connection that collected a few is better closed.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Whether the relay takes pipelined commands.
    pub fn pipelines(&self) -> bool {
        self.pipelining
    }

    /// Authenticates with `PLAIN`, or `LOGIN` when that is all the relay offers.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), SessionError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let reply = if self.auth.iter().any(|m| m == "PLAIN") || !self.auth.iter().any(|m| m == "LOGIN") {
            let token = b64.encode(format!("\0{user}\0{password}"));
            self.write(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
            self.read_reply().await?
        } else {
            self.write(b"AUTH LOGIN\r\n").await?;
            self.expect(334).await?;
            self.write(format!("{}\r\n", b64.encode(user)).as_bytes()).await?;
            self.expect(334).await?;
            self.write(format!("{}\r\n", b64.encode(password)).as_bytes()).await?;
            self.read_reply().await?
        };
        if reply.code == 235 {
            Ok(())
        } else {
            Err(SessionError::Rejected(reply))
        }
    }

    /// One transaction for `recipients` from `sender` with `message` (CRLF lines). The
    /// relay's final reply on success; the first refusal otherwise (a refused recipient
    /// among several is the transaction's refusal: mailgate sends one recipient per
    /// transaction).
    pub async fn send(&mut self, sender: &str, recipients: &[&str], message: &[u8]) -> Result<Reply, SessionError> {
        let mut commands: Vec<String> = Vec::with_capacity(recipients.len() + 3);
        let reset = std::mem::replace(&mut self.used, true);
        if reset {
            commands.push("RSET\r\n".to_owned());
        }
        commands.push(format!("MAIL FROM:<{sender}>\r\n"));
        commands.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
        commands.push("DATA\r\n".to_owned());
        let replies = if self.pipelining {
            self.write(commands.concat().as_bytes()).await.map_err(stale)?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in &commands {
                let reply = self.read_reply().await;
                replies.push(if replies.is_empty() {
                    reply.map_err(stale)?
                } else {
                    reply?
                });
            }
            replies
        } else {
            let mut replies = Vec::with_capacity(commands.len());
            for command in &commands {
                let first = replies.is_empty();
                let exchange = async {
                    self.write(command.as_bytes()).await?;
                    self.read_reply().await
                };
                let reply = if first {
                    exchange.await.map_err(stale)?
                } else {
                    exchange.await?
                };
                let failed = !reply.is_positive();
                replies.push(reply);
                if failed {
                    break;
                }
            }
            replies
        };
        self.errors += replies.iter().filter(|r| !r.is_positive()).count();
        // Lock-step stops at the first refusal, so DATA's reply exists only when every
        // command was answered.
        let (data, before_data) = if replies.len() == commands.len() {
            (replies.last(), &replies[..replies.len() - 1])
        } else {
            (None, &replies[..])
        };
        let refusal = before_data.iter().find(|r| !r.is_positive()).cloned();
        match (refusal, data) {
            (None, Some(data)) if data.code == 354 => {
                self.write_body(message).await?;
                let done = self.read_reply().await?;
                if done.code / 100 == 2 {
                    Ok(done)
                } else {
                    Err(SessionError::Rejected(done))
                }
            }
            (Some(refused), Some(data)) if data.code == 354 => {
                // A relay that answered DATA anyway gets an empty message, which it
                // refuses for want of recipients; the refusal that counts came first.
                self.write(b".\r\n").await?;
                self.read_reply().await?;
                Err(SessionError::Rejected(refused))
            }
            (Some(refused), _) => Err(SessionError::Rejected(refused)),
            (None, Some(data)) => Err(SessionError::Rejected(data.clone())),
            (None, None) => Err(SessionError::Broken("the relay stopped answering".into())),
        }
    }

    /// Sends `QUIT` and forgets the connection.
    pub async fn quit(mut self) {
        let _ = self.write(b"QUIT\r\n").await;
    }

    async fn expect(&mut self, code: u16) -> Result<Reply, SessionError> {
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(SessionError::Rejected(reply))
        }
    }

    /// The body, dot-stuffed, every line ending in CRLF, then the `.` line; one write.
    async fn write_body(&mut self, message: &[u8]) -> Result<(), SessionError> {
        self.write(&stuffed(message)).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let stream = self.io.get_mut();
        stream
            .write_all(bytes)
            .await
            .map_err(|err| SessionError::Broken(format!("write to the relay: {err}")))?;
        stream
            .flush()
            .await
            .map_err(|err| SessionError::Broken(format!("write to the relay: {err}")))
    }

    async fn read_reply(&mut self) -> Result<Reply, SessionError> {
        self.read_reply_lines().await.map(|(reply, _)| reply)
    }

    /// A whole (possibly multi-line, `250-…`) reply, and its lines' texts.
    async fn read_reply_lines(&mut self) -> Result<(Reply, Vec<String>), SessionError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let read = (&mut self.io)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|err| SessionError::Broken(format!("read from the relay: {err}")))?;
            if read == 0 {
                return Err(SessionError::Broken("the relay closed the connection".into()));
            }
            if raw.last() != Some(&b'\n') {
                return Err(SessionError::Broken("the relay's reply line is too long".into()));
            }
            let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_owned();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| SessionError::Broken(format!("the relay sent `{line}`, not an SMTP reply")))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if last {
                let text = lines.join(" ");
                return Ok((Reply { code, text }, lines));
            }
            if lines.len() >= MAX_LINES {
                return Err(SessionError::Broken("the relay's reply has too many lines".into()));
            }
        }
    }
}

/// `message` as the DATA section: a `.` starting a line doubled, bare LF made CRLF,
/// then `<CRLF>.<CRLF>`.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut previous = 0u8;
    for &byte in message {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
        previous = byte;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader as Reader;

    /// A scripted peer (unit tests only; integration tests use the Postfix harness):
    /// answers `EHLO` with or without PIPELINING, refuses `RCPT TO:<reject@…>`, and
    /// with `batch` reads MAIL, RCPT and DATA before answering any of them — which only
    /// a pipelining client survives. Returns every line it received.
    async fn peer(io: tokio::io::DuplexStream, pipelining: bool, batch: bool) -> Vec<String> {
        let (read, mut write) = tokio::io::split(io);
        let mut lines = Reader::new(read).lines();
        let mut seen = Vec::new();
        write.write_all(b"220 peer ready\r\n").await.unwrap();
        let mut in_data = false;
        let mut accepted_rcpt = false;
        let mut pending: Vec<String> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if in_data {
                if line == "." {
                    in_data = false;
                    write.write_all(b"250 2.0.0 Ok: queued as X1\r\n").await.unwrap();
                }
                continue;
            }
            let verb = line.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" if pipelining => "250-peer\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n".to_owned(),
                "EHLO" => "250-peer\r\n250 AUTH PLAIN LOGIN\r\n".to_owned(),
                "MAIL" | "RSET" => "250 2.1.0 Ok\r\n".to_owned(),
                "RCPT" if line.contains("reject@") => "550 5.1.1 User unknown\r\n".to_owned(),
                "RCPT" => {
                    accepted_rcpt = true;
                    "250 2.1.5 Ok\r\n".to_owned()
                }
                "DATA" if accepted_rcpt => {
                    in_data = true;
                    "354 go ahead\r\n".to_owned()
                }
                "DATA" => "554 5.5.1 Error: no valid recipients\r\n".to_owned(),
                // The client may be gone already: it does not wait for `221`.
                "QUIT" => break,
                _ => "502 unknown\r\n".to_owned(),
            };
            if batch && matches!(verb.as_str(), "MAIL" | "RCPT" | "DATA" | "RSET") {
                pending.push(reply);
                if verb == "DATA" {
                    write.write_all(pending.concat().as_bytes()).await.unwrap();
                    pending.clear();
                }
            } else {
                write.write_all(reply.as_bytes()).await.unwrap();
            }
            if verb == "DATA" {
                accepted_rcpt = false;
            }
        }
        seen
    }

    async fn run(
        pipelining: bool,
        batch: bool,
        recipients: [&str; 2],
    ) -> (Vec<Result<Reply, SessionError>>, Vec<String>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(peer(server, pipelining, batch));
        let mut session = Session::open(Box::new(client), "test.local").await.unwrap();
        assert_eq!(session.pipelines(), pipelining);
        let mut results = Vec::new();
        for recipient in recipients {
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                session.send("bounce@x.test", &[recipient], b"Subject: hi\r\n\r\n.dot\r\n"),
            )
            .await
            .expect("the exchange finished");
            results.push(sent);
        }
        session.quit().await;
        (results, served.await.unwrap())
    }

    #[tokio::test]
    async fn pipelined_commands_go_in_one_write_and_a_refused_rcpt_never_sends_the_body() {
        // The peer answers nothing until it has MAIL, RCPT and DATA: lock-step would hang.
        let (results, seen) = run(true, true, ["reject@x.test", "ana@x.test"]).await;
        assert!(
            matches!(&results[0], Err(SessionError::Rejected(r)) if r.code == 550),
            "{results:?}"
        );
        assert_eq!(results[1].as_ref().unwrap().code, 250);
        let commands: Vec<&str> = seen.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            commands,
            [
                "EHLO test.local",
                "MAIL FROM",
                "RCPT TO",
                "DATA",
                "RSET",
                "MAIL FROM",
                "RCPT TO",
                "DATA",
                "Subject",
                "",
                "..dot",
                ".",
                "QUIT"
            ],
            "no body after the refusal; the reuse's RSET rides with the next MAIL"
        );
    }

    #[tokio::test]
    async fn a_relay_without_pipelining_gets_one_command_at_a_time() {
        let (results, seen) = run(false, false, ["reject@x.test", "ana@x.test"]).await;
        assert!(matches!(&results[0], Err(SessionError::Rejected(r)) if r.code == 550));
        assert_eq!(results[1].as_ref().unwrap().text, "2.0.0 Ok: queued as X1");
        let commands: Vec<&str> = seen.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            commands,
            [
                "EHLO test.local",
                "MAIL FROM",
                "RCPT TO",
                "RSET",
                "MAIL FROM",
                "RCPT TO",
                "DATA",
                "Subject",
                "",
                "..dot",
                ".",
                "QUIT"
            ],
            "lock-step stops at the refusal: no DATA for it"
        );
    }

    #[test]
    fn the_body_is_dot_stuffed_and_ends_with_the_terminator() {
        assert_eq!(stuffed(b"a\r\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(stuffed(b".\nx\n"), b"..\r\nx\r\n.\r\n");
        assert_eq!(stuffed(b""), b"\r\n.\r\n");
    }
}
