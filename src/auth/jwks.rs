//! Public keys from a JWKS file (RFC 7517), such as the set an identity provider
//! publishes: RS256, ES256 (P-256) and EdDSA (Ed25519) keys, each named by its `kid`.
//! Symmetric (`oct`) keys are refused: a shared secret has no place in a key *set* that
//! is meant to be public, and accepting one would reopen algorithm confusion.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::VerifyingKey;

/// Reads every key of the JWKS file at `path`; one bad key refuses the whole file, so a
/// half-understood rotation never goes live.
pub(super) fn load(path: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
    let raw = std::fs::read(path).with_context(|| format!("Failed to read the JWKS file {}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a JWKS document ({{\"keys\": [...]}})", path.display()))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| key(jwk).with_context(|| format!("{}: key {i}", path.display())))
        .collect()
}

fn key(jwk: &Jwk) -> anyhow::Result<VerifyingKey> {
    let kid = jwk.common.key_id.clone().context("every key needs a `kid`")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        anyhow::bail!("kid {kid} is an encryption key (`use: enc`)");
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256)) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        _ => anyhow::bail!("kid {kid}: only RS256, ES256 (P-256) and EdDSA (Ed25519) public keys are accepted"),
    };
    let key = DecodingKey::from_jwk(jwk).with_context(|| format!("kid {kid}: not a usable public key"))?;
    Ok(VerifyingKey {
        kid: Some(kid),
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Vec<VerifyingKey>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    const ED25519: &str = r#"{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    #[test]
    fn public_keys_load_with_their_kid_and_algorithm() {
        let keys = load_text(&format!(r#"{{"keys": [{ED25519}]}}"#)).unwrap();
        assert_eq!((keys[0].kid.as_deref(), keys[0].alg), (Some("ed-1"), Algorithm::EdDSA));
    }

    #[test]
    fn symmetric_keys_keys_without_kid_and_other_algorithms_refuse_the_file() {
        let refused = [
            r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#.to_owned(),
            format!(r#"{{"keys": [{}]}}"#, ED25519.replace(r#""kid": "ed-1","#, "")),
            format!(
                r#"{{"keys": [{}]}}"#,
                ED25519.replace(r#""kid""#, r#""alg": "RS256", "kid""#)
            ),
            format!(
                r#"{{"keys": [{ED25519}, {{"kty": "RSA", "kid": "r", "alg": "PS256", "n": "AQAB", "e": "AQAB"}}]}}"#
            ),
            r#"{"keys": "none"}"#.to_owned(),
        ];
        for text in refused {
            assert!(load_text(&text).is_err(), "{text}");
        }
    }
}
