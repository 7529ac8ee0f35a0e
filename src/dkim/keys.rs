//! DKIM keys: made here (RSA-2048 by the `rsa` crate, Ed25519 by ring), stored as
//! PKCS#8, published as the `p=` of a `v=DKIM1` TXT record, and loaded into ring for
//! signing — ring is the process's one crypto provider for private-key operations.

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde::{Deserialize, Serialize};

/// The signature algorithms mailgate signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// `rsa-sha256` with a 2048-bit key: what every verifier accepts.
    Rsa,
    /// `ed25519-sha256` (RFC 8463), as a second signature.
    Ed25519,
}

impl Algorithm {
    /// The `a=` tag of a signature.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Rsa => "rsa-sha256",
            Self::Ed25519 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key could not be generated: {0}")]
    Generate(String),
    #[error("the stored key is not a usable {0:?} key")]
    Unusable(Algorithm),
}

/// A new key: its private half as PKCS#8 DER, and the base64 public key for `p=`.
pub struct GeneratedKey {
    pub pkcs8: Vec<u8>,
    pub public: String,
}

/// ring's system randomness behind rand_core 0.10's traits, for `rsa`.
struct SystemRng(ring::rand::SystemRandom);

#[derive(Debug)]
struct RandomnessFailed;

impl std::fmt::Display for RandomnessFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random source failed")
    }
}

impl std::error::Error for RandomnessFailed {}

impl rand_core_010::TryRng for SystemRng {
    type Error = RandomnessFailed;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst).map_err(|_| RandomnessFailed)
    }
}

impl rand_core_010::TryCryptoRng for SystemRng {}

/// Makes a key pair (RSA keys are 2048 bits: 1024 is refused by Gmail's checks, 4096
/// does not fit one TXT string and costs four times as much to sign with).
pub fn generate(algorithm: Algorithm) -> Result<GeneratedKey, KeyError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match algorithm {
        Algorithm::Rsa => {
            use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
            let mut rng = SystemRng(ring::rand::SystemRandom::new());
            let key = rsa::PrivateKey::new(&mut rng, 2048).map_err(|e| KeyError::Generate(e.to_string()))?;
            let pkcs8 = key.to_pkcs8_der().map_err(|e| KeyError::Generate(e.to_string()))?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(GeneratedKey {
                pkcs8: pkcs8.as_bytes().to_vec(),
                public: b64.encode(public.as_bytes()),
            })
        }
        Algorithm::Ed25519 => {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(GeneratedKey {
                pkcs8: pkcs8.as_ref().to_vec(),
                public: b64.encode(pair.public_key().as_ref()),
            })
        }
    }
}

/// The TXT record value that publishes `public`.
pub fn record_value(algorithm: Algorithm, public: &str) -> String {
    format!("v=DKIM1; k={}; p={public}", algorithm.key_type())
}

/// A private key loaded into ring, ready to sign.
pub enum LoadedKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl LoadedKey {
    pub fn load(algorithm: Algorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Rsa => RsaKeyPair::from_pkcs8(pkcs8).map(Self::Rsa),
            Algorithm::Ed25519 => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map(Self::Ed25519),
        }
        .map_err(|_| KeyError::Unusable(algorithm))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Rsa(_) => Algorithm::Rsa,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }
}
