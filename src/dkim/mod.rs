//! DKIM signatures (RFC 6376; `ed25519-sha256` per RFC 8463), made when a message is
//! delivered rather than when it is accepted, so mail scheduled for next month carries
//! the key that is live then. Relaxed/relaxed canonicalization, because relays refold
//! headers; From and Subject are over-signed so none can be added after signing.

pub mod canon;
pub mod keys;

use base64::Engine as _;
use ring::digest::{digest, SHA256};

pub use keys::{Algorithm, GeneratedKey, KeyError, LoadedKey};

/// Headers signed when present, in this order.
const SIGNED: [&str; 12] = [
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Signed once more than they occur: a verifier then fails a message where one was
/// added after signing.
const OVER_SIGNED: [&str; 2] = ["from", "subject"];

/// One key to sign with and the selector that publishes it.
pub struct SigningKey {
    pub selector: String,
    pub key: LoadedKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the message has no From header to sign")]
    NoFrom,
    #[error("the signature could not be computed")]
    Crypto,
}

/// The `h=` list for `fields`, and the fields it selects in signing order (each name's
/// occurrences from the bottom up, as verifiers pick them).
fn selected<'m>(fields: &[&'m [u8]]) -> (Vec<&'static str>, Vec<&'m [u8]>) {
    let mut names = Vec::new();
    let mut picked = Vec::new();
    for name in SIGNED {
        let present: Vec<&[u8]> = fields
            .iter()
            .rev()
            .filter(|f| canon::name(f).eq_ignore_ascii_case(name.as_bytes()))
            .copied()
            .collect();
        for field in &present {
            names.push(name);
            picked.push(*field);
        }
        if OVER_SIGNED.contains(&name) {
            names.push(name);
        }
    }
    (names, picked)
}

/// Folds a long base64 value for a header (continuation lines start with a tab).
fn folded(value: &str) -> String {
    let chunks: Vec<&str> = value
        .as_bytes()
        .chunks(72)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    chunks.join("\r\n\t")
}

/// The `DKIM-Signature` header fields (each ending in CRLF) to put in front of
/// `message`, one per key, signed for `domain` at Unix time `now`.
pub fn sign(message: &[u8], domain: &str, keys: &[SigningKey], now: u64) -> Result<Vec<u8>, SignError> {
    let (fields, body) = canon::split(message);
    if !fields.iter().any(|f| canon::name(f).eq_ignore_ascii_case(b"from")) {
        return Err(SignError::NoFrom);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let body_hash = b64.encode(digest(&SHA256, &canon::body(body)));
    let (names, picked) = selected(&fields);
    let mut signed_headers = Vec::new();
    for field in &picked {
        signed_headers.extend_from_slice(&canon::header(field));
        signed_headers.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::new();
    for key in keys {
        let unsigned = format!(
            "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d={domain}; s={}; t={now};\r\n\th={};\r\n\tbh={body_hash};\r\n\tb=",
            key.key.algorithm().tag(),
            key.selector,
            names.join(":"),
        );
        let mut data = signed_headers.clone();
        data.extend_from_slice(&canon::header(unsigned.as_bytes()));
        let signature = match &key.key {
            LoadedKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    &data,
                    &mut signature,
                )
                .map_err(|_| SignError::Crypto)?;
                signature
            }
            LoadedKey::Ed25519(pair) => pair.sign(digest(&SHA256, &data).as_ref()).as_ref().to_vec(),
        };
        out.extend_from_slice(unsigned.as_bytes());
        out.extend_from_slice(folded(&b64.encode(signature)).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_and_subject_are_over_signed_and_absent_headers_left_out() {
        let message = b"From: a@acme.test\r\nTo: b@x.test\r\nSubject: Hi\r\nTo: c@x.test\r\n\r\nbody\r\n";
        let (fields, _) = canon::split(message);
        let (names, picked) = selected(&fields);
        assert_eq!(names, ["from", "from", "to", "to", "subject", "subject"]);
        assert_eq!(
            picked[1], b"To: c@x.test",
            "the last To first, as a verifier reads them"
        );
    }

    #[test]
    fn both_algorithms_sign_and_the_header_names_each_selector() {
        let rsa = keys::generate(Algorithm::Rsa).unwrap();
        let ed = keys::generate(Algorithm::Ed25519).unwrap();
        let keys = [
            SigningKey {
                selector: "mg1".into(),
                key: LoadedKey::load(Algorithm::Rsa, &rsa.pkcs8).unwrap(),
            },
            SigningKey {
                selector: "mg2".into(),
                key: LoadedKey::load(Algorithm::Ed25519, &ed.pkcs8).unwrap(),
            },
        ];
        let headers = sign(
            b"From: a@acme.test\r\nSubject: Hi\r\n\r\nbody\r\n",
            "acme.test",
            &keys,
            1,
        )
        .unwrap();
        let text = String::from_utf8(headers).unwrap();
        assert_eq!(text.matches("DKIM-Signature: v=1; a=rsa-sha256;").count(), 1);
        assert_eq!(text.matches("a=ed25519-sha256;").count(), 1);
        assert!(text.contains("s=mg1;") && text.contains("s=mg2;"), "{text}");
        assert!(sign(b"Subject: no sender\r\n\r\n", "acme.test", &keys, 1).is_err());
    }
}
