//! How a connection to a relay is encrypted, built once per relay from its `tls` mode,
//! its optional `ca_file` and its optional `tls_fingerprint_sha256`.
//!
//! Both STARTTLS and implicit TLS are handshaken by us with rustls over a socket we
//! opened (with `TCP_NODELAY`, or every `<CRLF>.<CRLF>` waits for the relay's delayed
//! ACK), then `smtp_session` speaks SMTP on the encrypted stream. Doing STARTTLS
//! ourselves is also what lets one verifier serve both modes: a library's STARTTLS
//! usually only takes trust roots, and a self-signed relay
//! certificate made by `openssl req -x509` is marked `CA:TRUE`, which Web PKI refuses as
//! a server certificate (`CaUsedAsEndEntity`) even when it is a trusted root. So a
//! certificate found as it is in `ca_file` is *pinned*: that exact certificate is
//! accepted while it is within its validity period, whatever its basic constraints or
//! names. Anything else must chain to the Web PKI roots or to a CA in `ca_file`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsMode;

/// How to encrypt connections to one relay.
pub enum Encryption {
    None,
    /// `STARTTLS` after the greeting.
    Starttls(TlsSetup),
    /// TLS from the first byte.
    Implicit(TlsSetup),
}

/// A TLS client for one relay: its verifier and the name it is reached by.
pub struct TlsSetup {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

/// What the relay's certificate is checked against.
#[derive(Default)]
pub struct Trust<'a> {
    /// PEM certificates from `ca_file`: CAs, or the relay's own certificate (pinned).
    pub ca_pem: Option<&'a [u8]>,
    /// `tls_fingerprint_sha256`: only the certificate with this fingerprint is accepted.
    pub fingerprint: Option<Fingerprint>,
}

impl Encryption {
    /// For `mode` to `host`, with `trust` on top of the Web PKI roots.
    pub fn new(mode: TlsMode, host: &str, trust: Trust<'_>) -> anyhow::Result<Self> {
        let setup = || -> anyhow::Result<TlsSetup> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = RelayVerifier::new(trust, Arc::clone(&provider))?;
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("Failed to set up TLS for the upstream")?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok(TlsSetup {
                connector: TlsConnector::from(Arc::new(config)),
                server_name: ServerName::try_from(host.to_owned())
                    .with_context(|| format!("`{host}` is not a valid TLS server name"))?,
            })
        };
        Ok(match mode {
            TlsMode::None => Encryption::None,
            TlsMode::Starttls => Encryption::Starttls(setup()?),
            TlsMode::Tls => Encryption::Implicit(setup()?),
        })
    }
}

/// The SHA-256 of a certificate's DER form; read from the config as text (`parse`).
#[derive(Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Fingerprint([u8; 32]);

impl TryFrom<String> for Fingerprint {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl Fingerprint {
    /// Hex, upper or lower case, with or without colons, or the whole line `openssl x509
    /// -noout -fingerprint -sha256` prints (`sha256 Fingerprint=AB:CD:…`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits = text.rsplit('=').next().unwrap_or(text).trim();
        let hex: String = digits.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return Err(format!("`{text}` is not 32 bytes (64 hex digits) long"));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = hex
                .get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("`{text}` is not hexadecimal"))?;
        }
        Ok(Self(bytes))
    }

    pub fn of(certificate: &[u8]) -> Self {
        Self(Sha256::digest(certificate).into())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&hex.join(":"))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Accepts a pinned certificate as it is, and otherwise a chain to a trusted root.
#[derive(Debug)]
struct RelayVerifier {
    pinned: Vec<CertificateDer<'static>>,
    fingerprint: Option<Fingerprint>,
    chain: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl RelayVerifier {
    fn new(trust: Trust<'_>, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let pinned = trust.ca_pem.map(ca_certificates).transpose()?.unwrap_or_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &pinned {
            roots
                .add(cert.clone())
                .context("The CA file holds an unusable certificate")?;
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .context("Failed to set up TLS verification for the upstream")?;
        Ok(Self {
            pinned,
            fingerprint: trust.fingerprint,
            chain,
            provider,
        })
    }

    fn is_pinned(&self, certificate: &CertificateDer<'_>) -> bool {
        match self.fingerprint {
            Some(fingerprint) => Fingerprint::of(certificate) == fingerprint,
            None => self.pinned.iter().any(|pin| pin.as_ref() == certificate.as_ref()),
        }
    }
}

impl ServerCertVerifier for RelayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.is_pinned(end_entity) {
            return within_validity(end_entity, now).map(|()| ServerCertVerified::assertion());
        }
        let refused = match self.fingerprint {
            Some(_) => rustls::Error::General("its fingerprint is not tls_fingerprint_sha256".into()),
            None => match self
                .chain
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            {
                Ok(verified) => return Ok(verified),
                Err(err) => err,
            },
        };
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(
            UntrustedCertificate {
                cause: refused,
                fingerprint: Fingerprint::of(end_entity),
            },
        ))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A pinned certificate still has to be within its validity period.
fn within_validity(certificate: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
    }
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet));
    }
    Ok(())
}

/// A relay certificate that nothing configured trusts, with what to configure: this
/// text becomes the recipient's diagnostic and the log line.
#[derive(Debug)]
struct UntrustedCertificate {
    cause: rustls::Error,
    fingerprint: Fingerprint,
}

impl std::fmt::Display for UntrustedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the relay's certificate is not trusted ({}); its SHA-256 fingerprint is {}. \
             If it is your relay's own certificate, set `ca_file` in its [[upstreams]] entry to \
             that certificate (or to the CA that signed it), or `tls_fingerprint_sha256 = \"{}\"`",
            self.cause, self.fingerprint, self.fingerprint
        )
    }
}

impl std::error::Error for UntrustedCertificate {}

/// The certificates of a PEM CA file; an error when it holds none.
fn ca_certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .context("The CA file is not valid PEM")?;
    anyhow::ensure!(!certs.is_empty(), "The CA file holds no PEM certificate");
    Ok(certs)
}

/// A TLS stream over a socket we opened, for `smtp_session` to speak SMTP on.
///
/// After our own STARTTLS the relay does not greet again, but a session starts every
/// connection by reading a greeting: `greeting` holds a `220` line for it to read before
/// the relay's bytes, and the session then sends the `EHLO` that RFC 3207 requires
/// after TLS.
#[derive(Debug)]
pub struct TlsSocket {
    stream: TlsStream<TcpStream>,
    greeting: Vec<u8>,
}

impl TlsSocket {
    /// Handshakes over `tcp`; the relay's greeting is still to come.
    pub async fn connect(setup: &TlsSetup, tcp: TcpStream) -> io::Result<Self> {
        Self::handshake(setup, tcp, Vec::new()).await
    }

    /// Handshakes over `tcp` after the relay greeted and answered `STARTTLS`.
    pub async fn after_starttls(setup: &TlsSetup, tcp: TcpStream, greeting: &str) -> io::Result<Self> {
        Self::handshake(setup, tcp, format!("220 {greeting}\r\n").into_bytes()).await
    }

    async fn handshake(setup: &TlsSetup, tcp: TcpStream, greeting: Vec<u8>) -> io::Result<Self> {
        let stream = setup
            .connector
            .connect(setup.server_name.clone(), tcp)
            .await
            .map_err(readable_tls_error)?;
        Ok(Self { stream, greeting })
    }
}

/// Our verifier's explanation without rustls's `other error:` prefix.
fn readable_tls_error(err: io::Error) -> io::Error {
    let explained = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::Other(other) => Some(other.0.to_string()),
            _ => None,
        });
    match explained {
        Some(text) => io::Error::new(err.kind(), text),
        None => err,
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.greeting.is_empty() {
            let n = this.greeting.len().min(buf.remaining());
            buf.put_slice(&this.greeting[..n]);
            this.greeting.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_tls_needs_a_usable_ca_file_and_a_server_name() {
        let implicit = |host: &str, pem: Option<&[u8]>| {
            Encryption::new(
                TlsMode::Tls,
                host,
                Trust {
                    ca_pem: pem,
                    fingerprint: None,
                },
            )
        };
        assert!(matches!(
            implicit("smtp.example.com", None),
            Ok(Encryption::Implicit { .. })
        ));
        assert!(implicit("smtp.example.com", Some(b"not a certificate")).is_err());
        assert!(implicit("bad host name!", None).is_err());
        assert!(matches!(
            Encryption::new(TlsMode::None, "smtp.example.com", Trust::default()),
            Ok(Encryption::None)
        ));
    }

    #[test]
    fn fingerprints_parse_as_openssl_prints_them() {
        let colons = "AB:".repeat(31) + "AB";
        assert_eq!(Fingerprint::parse(&colons).unwrap(), Fingerprint([0xAB; 32]));
        assert_eq!(Fingerprint::parse(&"ab".repeat(32)).unwrap().to_string(), colons);
        let printed = format!("sha256 Fingerprint={colons}\n");
        assert_eq!(Fingerprint::parse(&printed).unwrap(), Fingerprint([0xAB; 32]));
        assert!(Fingerprint::parse("AB:CD").unwrap_err().contains("32 bytes"));
        assert!(Fingerprint::parse(&"zz".repeat(32))
            .unwrap_err()
            .contains("hexadecimal"));
    }

    /// A self-signed `CA:TRUE` certificate made the way most people make one.
    fn self_signed(dir: &std::path::Path, name: &str) -> Vec<u8> {
        let pem = dir.join(format!("{name}.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-days", "2", "-subj", "/CN=localhost", "-keyout"])
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(&pem)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(pem).unwrap()
    }

    fn verify(verifier: &RelayVerifier, pem: &[u8], now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        let der = ca_certificates(pem).unwrap().remove(0);
        let name = ServerName::try_from("localhost").unwrap();
        verifier.verify_server_cert(&der, &[], &name, &[], now)
    }

    fn verifier(trust: Trust<'_>) -> RelayVerifier {
        RelayVerifier::new(trust, Arc::new(rustls::crypto::ring::default_provider())).unwrap()
    }

    #[test]
    fn the_pinned_certificate_is_accepted_until_it_expires_and_no_other_is() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, other) = (self_signed(dir.path(), "relay"), self_signed(dir.path(), "other"));
        let pinned = verifier(Trust {
            ca_pem: Some(&relay),
            fingerprint: None,
        });
        assert!(verify(&pinned, &relay, UnixTime::now()).is_ok());
        let refused = verify(&pinned, &other, UnixTime::now()).unwrap_err().to_string();
        assert!(
            refused.contains("ca_file") && refused.contains("tls_fingerprint_sha256"),
            "{refused}"
        );
        let in_a_week =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(UnixTime::now().as_secs() + 7 * 86_400));
        assert!(matches!(
            verify(&pinned, &relay, in_a_week),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired))
        ));
    }

    #[test]
    fn a_fingerprint_pins_exactly_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, other) = (self_signed(dir.path(), "relay"), self_signed(dir.path(), "other"));
        let der = ca_certificates(&relay).unwrap().remove(0);
        let pinned = verifier(Trust {
            ca_pem: Some(&other),
            fingerprint: Some(Fingerprint::of(&der)),
        });
        assert!(verify(&pinned, &relay, UnixTime::now()).is_ok());
        assert!(
            verify(&pinned, &other, UnixTime::now()).is_err(),
            "with a fingerprint only that certificate is accepted"
        );
    }
}
