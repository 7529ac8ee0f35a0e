//! Bearer tokens: HS256 JWTs that name a tenant and its scopes. Verification accepts
//! exactly the configured algorithm, so `alg: none` and algorithm confusion fail.

mod jwks;
mod reload;

pub use reload::run_key_reloader_until_stopped;

use crate::limits::ClaimLimits;
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
    /// Lower send limits for this token (see `limits`); never higher ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<ClaimLimits>,
    /// Set only on tokens the console mints (`console-link`, `console-session`): the
    /// API refuses them, so a sign-in link or a session cookie is never an API key.
    #[serde(default, rename = "mg_use", skip_serializing_if = "Option::is_none")]
    purpose: Option<String>,
}

/// What a token may be used for. API tokens (no `mg_use` claim) work everywhere;
/// console tokens only where the console accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    Api,
    /// A one-time sign-in link from `mailgate console-link`.
    ConsoleLink,
    /// The cookie of a console session started from a link.
    ConsoleSession,
    /// A claim value this version does not know: accepted nowhere.
    Unknown,
}

impl TokenPurpose {
    fn claim(self) -> Option<String> {
        match self {
            Self::Api | Self::Unknown => None,
            Self::ConsoleLink => Some("console-link".into()),
            Self::ConsoleSession => Some("console-session".into()),
        }
    }

    fn of_claim(claim: Option<&str>) -> Self {
        match claim {
            None => Self::Api,
            Some("console-link") => Self::ConsoleLink,
            Some("console-session") => Self::ConsoleSession,
            Some(_) => Self::Unknown,
        }
    }
}

/// The verified caller of one request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub subject: String,
    pub scopes: Scopes,
    /// The token's id, when it has one: what revocation names.
    pub jti: Option<String>,
    /// Send limits the token lowers for itself.
    pub limits: ClaimLimits,
    pub purpose: TokenPurpose,
    /// Unix seconds when the token expires.
    pub expires: u64,
}

/// Revoked token ids, each until its token's `exp`: kept in memory for the request
/// path and persisted by the store so revocations survive restarts.
#[derive(Default)]
pub struct Revocations {
    until: std::sync::RwLock<std::collections::HashMap<String, u64>>,
}

impl Revocations {
    /// The map for writing, without the entries whose tokens have expired anyway.
    fn pruned(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<String, u64>> {
        let mut map = self.until.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = jsonwebtoken::get_current_timestamp();
        map.retain(|_, exp| *exp >= now);
        map
    }

    pub fn revoke(&self, jti: &str, until: u64) {
        self.pruned().insert(jti.to_owned(), until);
    }

    /// Revokes `jti` unless it already was: `true` for the one caller that revoked it,
    /// so two requests racing with the same one-time link cannot both use it.
    pub fn revoke_once(&self, jti: &str, until: u64) -> bool {
        let mut map = self.pruned();
        if map.contains_key(jti) {
            return false;
        }
        map.insert(jti.to_owned(), until);
        true
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let map = self.until.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(jti)
            .is_some_and(|exp| *exp >= jsonwebtoken::get_current_timestamp())
    }
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

/// One key that verifies tokens: the algorithm it accepts is fixed, so a token cannot
/// choose how it is checked (no `none`, no HS256 signed with a public key).
struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct SigningKey {
    kid: Option<String>,
    alg: Algorithm,
    key: EncodingKey,
}

pub struct TokenKeys {
    /// The HS256 key, fixed for the life of the process.
    verifying: Vec<VerifyingKey>,
    /// Keys from PEM files and the JWKS file, replaced whole by `reload_public_keys`.
    public: std::sync::RwLock<std::sync::Arc<Vec<VerifyingKey>>>,
    auth: crate::config::AuthSettings,
    signing: Option<SigningKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    pub source: KeySource,
}

const DEV_KEY_FILE: &str = "dev-hs256.key";
/// Longer tokens are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => anyhow::bail!("unsupported key algorithm `{other}` (RS256, ES256 or EdDSA)"),
    }
}

fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("Failed to read the key file {}", path.display()))
}

fn decoding_key(alg: Algorithm, pem: &[u8]) -> jsonwebtoken::errors::Result<DecodingKey> {
    match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    }
}

fn encoding_key(alg: Algorithm, pem: &[u8]) -> jsonwebtoken::errors::Result<EncodingKey> {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
}

impl TokenKeys {
    /// Loads the configured HS256 secret and public keys; with neither, creates or
    /// reuses the dev key in the data dir (and only then).
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        Self::load_with(settings, dev_key)
    }

    /// `load` without creating the dev key (a placeholder stands in when there is none
    /// yet): for `check-config`, which must refuse what `serve` refuses and change nothing.
    pub fn check(settings: &Settings) -> anyhow::Result<Self> {
        Self::load_with(settings, |path| match path.exists() {
            true => dev_key(path),
            false => Ok(vec![0; 32]),
        })
    }

    fn load_with(settings: &Settings, dev_key: impl FnOnce(&Path) -> anyhow::Result<Vec<u8>>) -> anyhow::Result<Self> {
        let auth = &settings.auth;
        let configured = read_secret(auth.hs256_secret_file.as_deref(), auth.hs256_secret_env.as_deref())
            .context("auth: the HS256 secret")?;
        let (secret, source) = match configured {
            Some(secret) => (Some(secret.into_bytes()), KeySource::Configured),
            None if !auth.public_keys.is_empty() || auth.jwks_file.is_some() => (None, KeySource::Configured),
            None => {
                let path = settings.storage.path.join(DEV_KEY_FILE);
                (Some(dev_key(&path)?), KeySource::DevKey(path))
            }
        };
        let mut verifying = Vec::new();
        let mut signing = None;
        if let Some(secret) = &secret {
            if secret.len() < 32 {
                anyhow::bail!("auth: the HS256 secret must be at least 32 bytes");
            }
            verifying.push(VerifyingKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret).context("HS256 verification key")?,
            });
            signing = Some(SigningKey {
                kid: None,
                alg: Algorithm::HS256,
                key: EncodingKey::from_secret(secret).context("HS256 signing key")?,
            });
        }
        let public = public_keys(auth)?;
        if let Some(private) = &auth.signing_key {
            let alg = algorithm(&private.alg).context("auth.signing_key")?;
            let key = encoding_key(alg, &read_pem(&private.pem_file)?)
                .with_context(|| format!("auth.signing_key: not a {} private key", private.alg))?;
            signing = Some(SigningKey {
                kid: Some(private.kid.clone()),
                alg,
                key,
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = auth.leeway.0.as_secs();
        match &auth.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            verifying,
            public: std::sync::RwLock::new(std::sync::Arc::new(public)),
            auth: auth.clone(),
            signing,
            validation,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            source,
        })
    }

    /// Re-reads the public keys (PEM files and the JWKS file) and swaps them in whole;
    /// on any error the keys in use stay as they were. Returns how many are loaded.
    pub fn reload_public_keys(&self) -> anyhow::Result<usize> {
        let fresh = public_keys(&self.auth)?;
        let count = fresh.len();
        *self.public.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(fresh);
        Ok(count)
    }

    /// The files public keys are read from, for the reloader to watch.
    pub fn public_key_files(&self) -> Vec<PathBuf> {
        let pem = self.auth.public_keys.iter().map(|k| k.pem_file.clone());
        pem.chain(self.auth.jwks_file.clone()).collect()
    }

    /// The key a token names (`kid`), or the only key for its algorithm when it names
    /// none; and that key's algorithm must be the token's.
    fn key_for<'k>(&'k self, token: &str, public: &'k [VerifyingKey]) -> Result<&'k VerifyingKey, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError("the token is too large"));
        }
        let raw_header = token
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h.trim_end_matches('='))
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .ok_or(TokenError("the token is malformed"))?;
        if raw_header.get("crit").is_some() {
            return Err(TokenError("tokens with critical header parameters are not accepted"));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError("the token algorithm is not accepted"))?;
        let key = match &header.kid {
            Some(kid) => self
                .verifying
                .iter()
                .chain(public)
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(TokenError("the token's key id is not known"))?,
            None => {
                let mut candidates = self.verifying.iter().chain(public).filter(|k| k.alg == header.alg);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    (Some(_), Some(_)) => return Err(TokenError("the token must name its key (`kid`)")),
                    (None, _) => return Err(TokenError("the token algorithm is not accepted")),
                }
            }
        };
        if key.alg != header.alg {
            return Err(TokenError("the token algorithm is not accepted for its key"));
        }
        Ok(key)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let public = std::sync::Arc::clone(&self.public.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        let key = self.key_for(token, &public)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.alg];
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|err| {
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
            jti: claims.jti,
            limits: claims.limits.unwrap_or_default(),
            purpose: TokenPurpose::of_claim(claims.purpose.as_deref()),
            expires: claims.exp,
        })
    }

    /// Signs an API token for `tenant` with `scopes`, valid for `ttl`.
    pub fn issue(&self, tenant: &TenantId, scopes: &Scopes, ttl: Duration, subject: &str) -> anyhow::Result<String> {
        self.issue_for(TokenPurpose::Api, tenant, scopes, ttl, subject)
    }

    /// Signs a token that only the console accepts (a sign-in link or a session).
    pub fn issue_for(
        &self,
        purpose: TokenPurpose,
        tenant: &TenantId,
        scopes: &Scopes,
        ttl: Duration,
        subject: &str,
    ) -> anyhow::Result<String> {
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
            limits: None,
            purpose: purpose.claim(),
        };
        let signing = self
            .signing
            .as_ref()
            .context("no signing key: configure auth.signing_key (or an HS256 secret)")?;
        let mut header = Header::new(signing.alg);
        header.kid = signing.kid.clone();
        jsonwebtoken::encode(&header, &claims, &signing.key).context("Failed to sign the token")
    }
}

/// The configured public keys: each PEM file, then every key of the JWKS file.
fn public_keys(auth: &crate::config::AuthSettings) -> anyhow::Result<Vec<VerifyingKey>> {
    let mut keys = Vec::new();
    for public in &auth.public_keys {
        let alg = algorithm(&public.alg).with_context(|| format!("auth.public_keys kid {}", public.kid))?;
        let key = decoding_key(alg, &read_pem(&public.pem_file)?)
            .with_context(|| format!("auth.public_keys kid {}: not a {} public key", public.kid, public.alg))?;
        keys.push(VerifyingKey {
            kid: Some(public.kid.clone()),
            alg,
            key,
        });
    }
    if let Some(path) = &auth.jwks_file {
        keys.extend(jwks::load(path)?);
    }
    Ok(keys)
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
    use std::path::PathBuf;

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

    /// Makes a key pair with the openssl CLI: (private PEM path, public PEM path).
    fn keypair(dir: &Path, name: &str, genpkey: &[&str]) -> (PathBuf, PathBuf) {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub"));
        let ok = std::process::Command::new("openssl")
            .args(["genpkey"])
            .args(genpkey)
            .arg("-out")
            .arg(&private)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl genpkey {name}");
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl pkey {name}");
        (private, public)
    }

    fn key(kid: &str, alg: &str, pem_file: PathBuf) -> crate::config::KeySettings {
        crate::config::KeySettings {
            kid: kid.into(),
            alg: alg.into(),
            pem_file,
        }
    }

    #[test]
    fn asymmetric_keys_verify_by_kid_and_refuse_confusion_crit_and_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let (rsa_private, rsa_public) = keypair(
            dir.path(),
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let (ec_private, ec_public) = keypair(
            dir.path(),
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let (ed_private, ed_public) = keypair(dir.path(), "ed", &["-algorithm", "ed25519"]);
        let tenant = TenantId::parse("acme").unwrap();
        let scopes = Scopes::parse_strict("messages:send").unwrap();
        let ttl = Duration::from_secs(60);

        let mut verifier = Settings::default();
        verifier.storage.path = dir.path().join("verifier");
        verifier.auth.public_keys = vec![
            key("r1", "RS256", rsa_public.clone()),
            key("e1", "ES256", ec_public),
            key("d1", "EdDSA", ed_public),
        ];
        let verifier = TokenKeys::load(&verifier).unwrap();
        assert_eq!(
            verifier.source,
            KeySource::Configured,
            "no dev key once public keys are configured"
        );

        for (kid, alg, private) in [
            ("r1", "RS256", &rsa_private),
            ("e1", "ES256", &ec_private),
            ("d1", "EdDSA", &ed_private),
        ] {
            let mut signer = Settings::default();
            signer.storage.path = dir.path().join(format!("signer-{kid}"));
            signer.auth.signing_key = Some(key(kid, alg, private.clone()));
            let signer = TokenKeys::load(&signer).unwrap();
            let token = signer.issue(&tenant, &scopes, ttl, "t").unwrap();
            assert_eq!(verifier.verify(&token).unwrap().tenant.as_str(), "acme", "{alg}");
        }

        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = r#"{"sub":"x","tenant":"acme","scope":"admin","exp":99999999999}"#;
        // HS256 "signed" with the RSA public key, naming the RSA key: algorithm confusion.
        let confused = jsonwebtoken::encode(
            &Header {
                kid: Some("r1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &serde_json::from_str::<serde_json::Value>(claims).unwrap(),
            &EncodingKey::from_secret(&std::fs::read(&rsa_public).unwrap()).unwrap(),
        )
        .unwrap();
        assert!(verifier.verify(&confused).is_err());
        let unknown_kid = format!("{}.{}.sig", b64(r#"{"alg":"EdDSA","kid":"zz"}"#), b64(claims));
        assert_eq!(
            verifier.verify(&unknown_kid).unwrap_err().0,
            "the token's key id is not known"
        );
        let crit = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"EdDSA","kid":"d1","crit":["exp"]}"#),
            b64(claims)
        );
        assert!(verifier.verify(&crit).unwrap_err().0.contains("critical"));
        assert_eq!(
            verifier.verify(&"a".repeat(10_000)).unwrap_err().0,
            "the token is too large"
        );
        let hs = format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(claims));
        assert!(verifier.verify(&hs).is_err(), "no HS256 without a configured secret");
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

    /// A JWKS file holding the public half of each Ed25519 private key in `privates`.
    fn write_jwks(path: &Path, privates: &[(&str, &Path)]) {
        let keys: Vec<_> = privates
            .iter()
            .map(|(kid, private)| {
                let encoding = EncodingKey::from_ed_pem(&std::fs::read(private).unwrap()).unwrap();
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        std::fs::write(path, serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys }).unwrap()).unwrap();
    }

    fn signer(dir: &Path, kid: &str, private: &Path) -> TokenKeys {
        let mut settings = Settings::default();
        settings.storage.path = dir.join(format!("signer-{kid}"));
        settings.auth.signing_key = Some(key(kid, "EdDSA", private.to_path_buf()));
        TokenKeys::load(&settings).unwrap()
    }

    #[test]
    fn jwks_keys_verify_and_reload_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (old_private, _) = keypair(dir.path(), "old", &["-algorithm", "ed25519"]);
        let (new_private, _) = keypair(dir.path(), "new", &["-algorithm", "ed25519"]);
        let jwks = dir.path().join("jwks.json");
        write_jwks(&jwks, &[("old", &old_private)]);
        let mut settings = Settings::default();
        settings.storage.path = dir.path().join("verifier");
        settings.auth.jwks_file = Some(jwks.clone());
        let verifier = TokenKeys::load(&settings).unwrap();
        assert_eq!(verifier.source, KeySource::Configured);
        assert_eq!(verifier.public_key_files(), std::slice::from_ref(&jwks));
        let tenant = TenantId::parse("acme").unwrap();
        let issue = |kid: &str, private: &Path| {
            signer(dir.path(), kid, private)
                .issue(&tenant, &Scopes::all(), Duration::from_secs(60), "t")
                .unwrap()
        };
        assert!(verifier.verify(&issue("old", &old_private)).is_ok());
        assert!(verifier.verify(&issue("new", &new_private)).is_err());

        write_jwks(&jwks, &[("old", &old_private), ("new", &new_private)]);
        assert_eq!(verifier.reload_public_keys().unwrap(), 2);
        assert!(verifier.verify(&issue("new", &new_private)).is_ok(), "rotated in");

        std::fs::write(
            &jwks,
            "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"x\", \"k\": \"c2VjcmV0\"}]}",
        )
        .unwrap();
        assert!(verifier.reload_public_keys().is_err());
        assert!(
            verifier.verify(&issue("old", &old_private)).is_ok(),
            "a bad file keeps the keys in use"
        );
    }

    #[test]
    fn time_issuer_audience_and_key_algorithm_claims_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keypair(dir.path(), "ed", &["-algorithm", "ed25519"]);
        let mut settings = Settings::default();
        settings.storage.path = dir.path().join("verifier");
        settings.auth.public_keys = vec![key("d1", "EdDSA", public)];
        settings.auth.issuer = Some("https://auth.example".into());
        settings.auth.audience = Some("mailgate".into());
        settings.auth.leeway = crate::config::ConfigDuration(Duration::from_secs(10));
        let verifier = TokenKeys::load(&settings).unwrap();
        let signing = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let token = |changes: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "t", "tenant": "acme", "scope": "admin",
                "exp": now + 60, "iss": "https://auth.example", "aud": "mailgate"});
            for (name, value) in changes.as_object().unwrap() {
                claims[name] = value.clone();
            }
            let header = Header {
                kid: Some("d1".into()),
                ..Header::new(Algorithm::EdDSA)
            };
            jsonwebtoken::encode(&header, &claims, &signing).unwrap()
        };
        assert!(verifier.verify(&token(serde_json::json!({}))).is_ok());
        let within_leeway = serde_json::json!({"exp": now - 5, "nbf": now + 5});
        assert!(verifier.verify(&token(within_leeway)).is_ok());
        let refused = [
            (serde_json::json!({"exp": now - 60}), "the token has expired"),
            (serde_json::json!({"nbf": now + 60}), "the token is not valid yet"),
            (
                serde_json::json!({"iss": "https://evil.example"}),
                "the token issuer is not accepted",
            ),
            (
                serde_json::json!({"aud": "someone-else"}),
                "the token audience is not accepted",
            ),
            (
                serde_json::json!({"tenant": "Not A Tenant"}),
                "the token's tenant claim is invalid",
            ),
        ];
        for (changes, why) in refused {
            assert_eq!(
                verifier.verify(&token(changes.clone())).unwrap_err().0,
                why,
                "{changes}"
            );
        }
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let other_alg = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256","kid":"d1"}"#),
            b64(r#"{"sub":"x","tenant":"acme","scope":"admin","exp":99999999999}"#)
        );
        assert_eq!(
            verifier.verify(&other_alg).unwrap_err().0,
            "the token algorithm is not accepted for its key"
        );
    }
}
