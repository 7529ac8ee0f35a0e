//! How a connection to a relay is encrypted, built once per relay from its `tls` mode
//! and optional extra CA file.
//!
//! STARTTLS is lettre's: it upgrades the plain socket we opened (with `TCP_NODELAY`)
//! after the greeting. Implicit TLS (port 465) is ours: lettre's implicit-TLS connector
//! opens its own socket with Nagle's algorithm on, and then every `<CRLF>.<CRLF>` waits
//! for the relay's delayed ACK (~40 ms, ~25 messages/s per connection). So we open the
//! socket, handshake with rustls over it, and hand lettre the encrypted stream. Both
//! trust the same roots: the bundled Web PKI roots plus the CA file.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use lettre::transport::smtp::client::{AsyncTokioStream, Certificate, TlsParameters};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsMode;

/// How to encrypt connections to one relay.
pub enum Encryption {
    None,
    /// `STARTTLS` after the greeting.
    Starttls(TlsParameters),
    /// TLS from the first byte.
    Implicit {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
}

impl Encryption {
    /// For `mode` to `host`, trusting `ca_pem` (PEM certificates) besides the Web PKI.
    pub fn new(mode: TlsMode, host: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let extra_roots = ca_pem.map(ca_certificates).transpose()?.unwrap_or_default();
        Ok(match mode {
            TlsMode::None => Encryption::None,
            TlsMode::Starttls => {
                let mut builder = TlsParameters::builder(host.to_owned());
                for cert in extra_roots {
                    let cert =
                        Certificate::from_der(cert.to_vec()).context("The CA file holds an unusable certificate")?;
                    builder = builder.add_root_certificate(cert);
                }
                Encryption::Starttls(
                    builder
                        .build_rustls()
                        .context("Failed to set up TLS for the upstream")?,
                )
            }
            TlsMode::Tls => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                for cert in extra_roots {
                    roots.add(cert).context("The CA file holds an unusable certificate")?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("Failed to set up TLS for the upstream")?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Encryption::Implicit {
                    connector: TlsConnector::from(Arc::new(config)),
                    server_name: ServerName::try_from(host.to_owned())
                        .with_context(|| format!("`{host}` is not a valid TLS server name"))?,
                }
            }
        })
    }
}

/// The certificates of a PEM CA file; an error when it holds none.
fn ca_certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .context("The CA file is not valid PEM")?;
    anyhow::ensure!(!certs.is_empty(), "The CA file holds no PEM certificate");
    Ok(certs)
}

/// An implicit-TLS stream over a socket we opened, in the shape lettre speaks SMTP on.
#[derive(Debug)]
pub struct TlsSocket(TlsStream<TcpStream>);

impl TlsSocket {
    /// Handshakes over `tcp`.
    pub async fn connect(
        connector: &TlsConnector,
        server_name: &ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        connector.connect(server_name.clone(), tcp).await.map(TlsSocket)
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_tls_needs_a_usable_ca_file_and_a_server_name() {
        let implicit = |host: &str, pem: Option<&[u8]>| Encryption::new(TlsMode::Tls, host, pem);
        assert!(matches!(
            implicit("smtp.example.com", None),
            Ok(Encryption::Implicit { .. })
        ));
        assert!(implicit("smtp.example.com", Some(b"not a certificate")).is_err());
        assert!(implicit("bad host name!", None).is_err());
        assert!(Encryption::new(TlsMode::Starttls, "smtp.example.com", Some(b"nope")).is_err());
        assert!(matches!(
            Encryption::new(TlsMode::None, "smtp.example.com", None),
            Ok(Encryption::None)
        ));
    }
}
