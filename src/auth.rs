//! Bearer tokens: HS256 JWTs that name a tenant and its scopes. Verification accepts
//! exactly the configured algorithm, so `alg: none` and algorithm confusion fail.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::config::{read_secret, Settings};
use crate::domain::auth::{Scopes, TenantId};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    scope: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    /// A string or an array of strings (RFC 7519); jsonwebtoken checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
}

/// The verified caller of one request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub subject: String,
    pub scopes: Scopes,
}

/// Why a token was refused. The text is safe to return: it never echoes the token.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub &'static str);

/// Where the signing key came from: an operator secret, or the dev key that `serve`
/// creates under the data directory when none is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    DevKey(PathBuf),
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    pub source: KeySource,
}

const DEV_KEY_FILE: &str = "dev-hs256.key";

impl TokenKeys {
    /// Loads the configured HS256 secret, or creates/reuses the dev key in the data dir.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let auth = &settings.auth;
        let (secret, source) = match read_secret(auth.hs256_secret_file.as_deref(), auth.hs256_secret_env.as_deref())? {
            Some(secret) => (secret.into_bytes(), KeySource::Configured),
            None => {
                let path = settings.storage.path.join(DEV_KEY_FILE);
                (dev_key(&path)?, KeySource::DevKey(path))
            }
        };
        if secret.len() < 32 {
            anyhow::bail!("the HS256 secret must be at least 32 bytes");
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        match &auth.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(&secret).context("HS256 signing key")?,
            decoding: DecodingKey::from_secret(&secret).context("HS256 verification key")?,
            validation,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            source,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|err| {
            TokenError(match err.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidSignature => "the token signature is invalid",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "the token algorithm is not accepted",
                ErrorKind::InvalidIssuer => "the token issuer is not accepted",
                ErrorKind::InvalidAudience => "the token audience is not accepted",
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                    "the token lacks a required claim (exp, sub, tenant, scope)"
                }
                _ => "the token is malformed",
            })
        })?;
        let claims = data.claims;
        let tenant = TenantId::parse(&claims.tenant).map_err(|_| TokenError("the token's tenant claim is invalid"))?;
        Ok(Principal {
            tenant,
            subject: claims.sub,
            scopes: Scopes::parse_lenient(&claims.scope),
        })
    }

    /// Signs a token for `tenant` with `scopes`, valid for `ttl`.
    pub fn issue(&self, tenant: &TenantId, scopes: &Scopes, ttl: Duration, subject: &str) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            tenant: tenant.to_string(),
            scope: scopes.to_claim(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
            jti: Some(uuid::Uuid::now_v7().to_string()),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("Failed to sign the token")
    }
}

/// Reads the dev key, creating it (32 random bytes, mode 0600) on first use.
fn dev_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            file.write_all(encoded.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("Failed to write the dev key {}", path.display()))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("Failed to create the dev key {}", path.display())),
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("Failed to read the dev key {}", path.display()))?;
    Ok(text.trim().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::auth::Scope;

    fn keys(dir: &Path) -> TokenKeys {
        let mut settings = Settings::default();
        settings.storage.path = dir.to_path_buf();
        TokenKeys::load(&settings).unwrap()
    }

    #[test]
    fn dev_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = keys(dir.path());
        let token = first
            .issue(
                &TenantId::parse("acme").unwrap(),
                &Scopes::parse_strict("messages:send").unwrap(),
                Duration::from_secs(60),
                "t",
            )
            .unwrap();
        let principal = keys(dir.path()).verify(&token).unwrap();
        assert_eq!(principal.tenant.as_str(), "acme");
        assert!(principal.scopes.grants(Scope::MessagesSend));
        let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn unsigned_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let token = keys(other.path())
            .issue(
                &TenantId::parse("acme").unwrap(),
                &Scopes::all(),
                Duration::from_secs(60),
                "t",
            )
            .unwrap();
        assert!(keys(dir.path()).verify(&token).is_err());
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"x","tenant":"acme","scope":"admin","exp":99999999999}"#)
        );
        assert!(keys(dir.path()).verify(&none).is_err());
    }
}
