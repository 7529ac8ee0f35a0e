//! The plain-text start of a STARTTLS connection (RFC 3207): greeting, `EHLO`,
//! `STARTTLS`, then our TLS handshake (see `tls` for why it is ours and not lettre's).
//! Replies are read a byte at a time so nothing the relay sends after `220` is taken
//! away from the TLS handshake.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::{TlsSetup, TlsSocket};

/// Longest reply line we read (RFC 5321 allows 512 octets; relays send more).
const MAX_LINE: usize = 4096;
/// Most lines in one reply (an `EHLO` answer lists one extension per line).
const MAX_LINES: usize = 100;

/// One relay reply: its code and every line's text.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// Greets, asks for TLS and handshakes; `hello` is our `EHLO` name.
pub async fn upgrade(mut tcp: TcpStream, hello: &str, setup: &TlsSetup) -> Result<TlsSocket, String> {
    let greeting = read_reply(&mut tcp).await?;
    expect(&greeting, 220, "greeting")?;
    send(&mut tcp, &format!("EHLO {hello}\r\n")).await?;
    let ehlo = read_reply(&mut tcp).await?;
    expect(&ehlo, 250, "EHLO")?;
    let offers_tls = ehlo.lines.iter().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
    });
    if !offers_tls {
        return Err("the relay does not offer STARTTLS (set `tls = \"tls\"` for port 465, or check the port)".into());
    }
    send(&mut tcp, "STARTTLS\r\n").await?;
    let ready = read_reply(&mut tcp).await?;
    expect(&ready, 220, "STARTTLS")?;
    let greeted_as = greeting.lines.first().cloned().unwrap_or_default();
    TlsSocket::after_starttls(setup, tcp, &greeted_as)
        .await
        .map_err(|err| format!("TLS: {err}"))
}

fn expect(reply: &Reply, code: u16, what: &str) -> Result<(), String> {
    if reply.code == code {
        return Ok(());
    }
    Err(format!(
        "the relay answered {what} with {} {}",
        reply.code,
        reply.text()
    ))
}

async fn send(tcp: &mut TcpStream, line: &str) -> Result<(), String> {
    tcp.write_all(line.as_bytes())
        .await
        .map_err(|err| format!("write to the relay: {err}"))
}

/// A whole (possibly multi-line, `250-…`) reply.
async fn read_reply(tcp: &mut TcpStream) -> Result<Reply, String> {
    let mut lines = Vec::new();
    loop {
        let line = read_line(tcp).await?;
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("the relay sent `{line}`, not an SMTP reply"))?;
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.get(4..).unwrap_or_default().to_owned());
        if last {
            return Ok(Reply { code, lines });
        }
        if lines.len() >= MAX_LINES {
            return Err("the relay's reply has too many lines".into());
        }
    }
}

async fn read_line(tcp: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let byte = tcp
            .read_u8()
            .await
            .map_err(|err| format!("read from the relay: {err}"))?;
        if byte == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte);
        if line.len() > MAX_LINE {
            return Err("the relay's reply line is too long".into());
        }
    }
}
