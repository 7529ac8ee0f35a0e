//! Settings: embedded defaults < TOML file < `MAILGATE_SECTION__KEY` environment
//! variables. Unknown keys are errors that name the key. Secrets are referenced by
//! `*_env`/`*_file` and read here; they never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// A duration written like `30s`, `15m`, `3d` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ConfigDuration(pub Duration);

impl TryFrom<String> for ConfigDuration {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(&value)
            .map(ConfigDuration)
            .map_err(|e| format!("`{value}` is not a duration like `30s` or `3d`: {e}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    /// How long a client has to send the request line and headers (slowloris bound).
    pub header_timeout: ConfigDuration,
    /// How long a client has to send the whole body, however slowly it trickles.
    pub body_timeout: ConfigDuration,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive: ConfigDuration,
    /// Where people reach this service (`https://mail.example.com`), for the links
    /// mailgate prints or sends (console sign-in links). Default: `http://` + `listen`.
    pub public_url: Option<String>,
}

impl HttpSettings {
    /// The base of links to this service, without a trailing `/`.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 25 * 1024 * 1024,
            header_timeout: ConfigDuration(Duration::from_secs(5)),
            body_timeout: ConfigDuration(Duration::from_secs(30)),
            keep_alive: ConfigDuration(Duration::from_secs(30)),
            public_url: None,
        }
    }
}

/// Where mailgate keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded, in `storage.path`: one node.
    Sled,
    /// A PostgreSQL database that several nodes share (`url_env` / `url_file`).
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// sled: the database, the dev key and the sandbox files; postgres: the dev key
    /// and the sandbox files.
    pub path: PathBuf,
    /// postgres: the variable holding the database URL (it holds a password).
    pub url_env: Option<String>,
    /// postgres: the file holding the database URL.
    pub url_file: Option<PathBuf>,
    /// sled's page cache: what bounds memory with a million messages queued.
    pub cache_bytes: u64,
    /// Finished messages, their events, webhook attempts and raw reports older than
    /// this are purged. Queued, scheduled and deferred messages never are.
    pub retention: ConfigDuration,
    /// The stored MIME of finished messages goes after this (status and events stay).
    pub mime_retention: ConfigDuration,
    /// The `/v1/stats` counters go after this: longer than the history they count, so
    /// this month compares with the same month last year.
    pub stats_retention: ConfigDuration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sled,
            path: PathBuf::from("./data"),
            url_env: None,
            url_file: None,
            cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            retention: ConfigDuration(Duration::from_secs(30 * 86_400)),
            mime_retention: ConfigDuration(Duration::from_secs(7 * 86_400)),
            stats_retention: ConfigDuration(Duration::from_secs(400 * 86_400)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub hs256_secret_file: Option<PathBuf>,
    pub hs256_secret_env: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Public keys for RS256 / ES256 / EdDSA tokens, selected by the token's `kid`.
    pub public_keys: Vec<KeySettings>,
    /// A JWKS file (RFC 7517) of more public keys. Public keys are re-read on SIGHUP and
    /// when one of their files changes.
    pub jwks_file: Option<PathBuf>,
    /// The private key `mailgate token issue` signs with, when not HS256.
    pub signing_key: Option<KeySettings>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway: ConfigDuration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            hs256_secret_file: None,
            hs256_secret_env: None,
            issuer: None,
            audience: None,
            public_keys: Vec::new(),
            jwks_file: None,
            signing_key: None,
            leeway: ConfigDuration(Duration::from_secs(30)),
        }
    }
}

/// A PEM key file with its `kid` and algorithm (`RS256`, `ES256` or `EdDSA`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub kid: String,
    pub alg: String,
    pub pem_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust for this relay: the CA that signed its certificate, or
    /// the relay's own (self-signed) certificate, which is then pinned as it is.
    pub ca_file: Option<PathBuf>,
    /// Pins the relay's certificate by the SHA-256 of its DER form (hex, colons
    /// optional), the way `openssl x509 -fingerprint -sha256` prints it.
    pub tls_fingerprint_sha256: Option<crate::delivery::tls::Fingerprint>,
    #[serde(default = "default_connections")]
    pub max_connections: u32,
    #[serde(default)]
    pub rate_per_second: u32,
    /// At most this many of one tenant's transactions on this relay at once (0 = no
    /// cap), so one tenant's burst cannot take every connection of a shared relay.
    #[serde(default)]
    pub tenant_max_connections: u32,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Pooled connections idle longer than this are closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Whether mailgate DKIM-signs what goes through this relay (`off` for relays
    /// that sign themselves and refuse a second signature, as SES can).
    #[serde(default)]
    pub dkim: DkimMode,
}

/// `upstreams.dkim`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DkimMode {
    #[default]
    Sign,
    Off,
}

fn default_port() -> u16 {
    587
}
fn default_tls() -> TlsMode {
    TlsMode::Starttls
}
fn default_connections() -> u32 {
    4
}
fn default_weight() -> u32 {
    1
}
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    pub return_path_domain: String,
    pub message_id_domain: String,
    pub retry_base: ConfigDuration,
    pub retry_max: ConfigDuration,
    pub max_age: ConfigDuration,
    /// SMTP command timeout: a silent upstream defers instead of hanging a worker.
    pub smtp_timeout: ConfigDuration,
    /// How long an upstream whose circuit opened is skipped before it is probed again.
    pub circuit_cooldown: ConfigDuration,
    /// Messages waiting or being sent beyond which new sends get 503 (0 = no bound).
    pub max_queue_depth: usize,
    /// Refuse sends (`422 sender_domain_not_verified`) whose From domain is not a
    /// verified sender domain of the tenant, or under one.
    pub require_verified_domain: bool,
}

const PLACEHOLDER_RETURN_PATH_DOMAIN: &str = "bounces.mailgate.localhost";
const PLACEHOLDER_MESSAGE_ID_DOMAIN: &str = "mailgate.localhost";

impl DeliverySettings {
    /// True while either domain is still the default, which only suits the sandbox.
    pub fn uses_placeholder_domains(&self) -> bool {
        self.return_path_domain == PLACEHOLDER_RETURN_PATH_DOMAIN
            || self.message_id_domain == PLACEHOLDER_MESSAGE_ID_DOMAIN
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            return_path_domain: PLACEHOLDER_RETURN_PATH_DOMAIN.into(),
            message_id_domain: PLACEHOLDER_MESSAGE_ID_DOMAIN.into(),
            retry_base: ConfigDuration(Duration::from_secs(30)),
            retry_max: ConfigDuration(Duration::from_secs(3600)),
            max_age: ConfigDuration(Duration::from_secs(3 * 24 * 3600)),
            smtp_timeout: ConfigDuration(Duration::from_secs(60)),
            circuit_cooldown: ConfigDuration(Duration::from_secs(30)),
            max_queue_depth: 100_000,
            require_verified_domain: false,
        }
    }
}

/// Outbound webhooks: retried with capped exponential backoff and jitter from
/// `retry_base` up to `retry_max` between tries, for `max_age` in all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Allow targets on loopback, private and link-local addresses (tests, on-prem).
    pub allow_private_targets: bool,
    pub retry_base: ConfigDuration,
    pub retry_max: ConfigDuration,
    pub max_age: ConfigDuration,
    pub request_timeout: ConfigDuration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            retry_base: ConfigDuration(Duration::from_secs(5)),
            retry_max: ConfigDuration(Duration::from_secs(12 * 3600)),
            max_age: ConfigDuration(Duration::from_secs(3 * 24 * 3600)),
            request_timeout: ConfigDuration(Duration::from_secs(15)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub messages_per_second: u32,
    pub burst: u32,
    pub daily_quota: u64,
    pub max_recipients: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            messages_per_second: 100,
            burst: 200,
            daily_quota: 0,
            max_recipients: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    pub messages_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub daily_quota: Option<u64>,
    pub max_recipients: Option<usize>,
    /// When set, `from` must use one of these domains (or a subdomain of one).
    pub allowed_sender_domains: Option<Vec<String>>,
    /// Mailgun's HTTP webhook signing key, for `POST /v1/bounces/mailgun?tenant=…`.
    pub mailgun_signing_key_env: Option<String>,
    pub mailgun_signing_key_file: Option<PathBuf>,
    /// `user:password` that Postmark sends as Basic auth to `/v1/bounces/postmark`.
    pub postmark_webhook_auth_env: Option<String>,
    pub postmark_webhook_auth_file: Option<PathBuf>,
    /// SendGrid's Event Webhook verification key (public; base64 DER as SendGrid
    /// shows it), for `/v1/bounces/sendgrid`.
    pub sendgrid_verification_key: Option<String>,
    /// The SNS topics whose SES notifications belong to this tenant, for
    /// `/v1/bounces/ses`; a verified notification from any other topic is refused.
    pub ses_topic_arns: Option<Vec<String>>,
    /// Add one-click unsubscribe headers to this tenant's sends unless a send says
    /// `"list_unsubscribe": false`.
    pub list_unsubscribe: Option<bool>,
}

/// Provider bounce webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BounceSettings {
    /// Signed provider reports older than this (by their own timestamp) are refused,
    /// so a captured request cannot be replayed later.
    pub max_signature_age: ConfigDuration,
    /// A pinned SNS signing certificate (PEM). When set it is used instead of fetching
    /// `SigningCertURL` (which is only ever fetched from `sns.<region>.amazonaws.com`).
    pub sns_certificate_file: Option<PathBuf>,
}

impl Default for BounceSettings {
    fn default() -> Self {
        Self {
            max_signature_age: ConfigDuration(Duration::from_secs(600)),
            sns_certificate_file: None,
        }
    }
}

/// Bounds on one template render, so a hostile template cannot exhaust the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSettings {
    /// Subject, html and text together.
    pub max_output_bytes: usize,
    pub render_timeout: ConfigDuration,
    /// Bound on `#each` iterations, estimated from the template and data before
    /// rendering (loops that write nothing escape the output and time checks).
    pub max_loop_iterations: u64,
}

impl Default for TemplateSettings {
    fn default() -> Self {
        Self {
            max_output_bytes: 5 * 1024 * 1024,
            render_timeout: ConfigDuration(Duration::from_secs(2)),
            max_loop_iterations: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `mailgate=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// What `/metrics` exposes. It has no authentication, so tenant names stay out of it
/// unless the operator asks for them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Label counters with the tenant id (`tenant="acme"`).
    pub tenant_labels: bool,
}

/// DNS lookups of sender domains' records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Name servers to ask (`"127.0.0.1:5353"`, or an address for port 53); empty:
    /// the system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// How often every domain's records are checked again.
    pub recheck: ConfigDuration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            recheck: ConfigDuration(Duration::from_secs(3600)),
        }
    }
}

impl DnsSettings {
    /// The name servers as socket addresses.
    pub fn servers(&self) -> anyhow::Result<Vec<std::net::SocketAddr>> {
        self.nameservers
            .iter()
            .map(|raw| {
                raw.parse::<std::net::SocketAddr>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| anyhow::anyhow!("dns.nameservers: `{raw}` is not an address like 127.0.0.1:53"))
            })
            .collect()
    }
}

/// The whole configuration, as documented in `spec/config.md` and the README.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub upstreams: Vec<UpstreamSettings>,
    pub delivery: DeliverySettings,
    pub webhooks: WebhookSettings,
    pub limits: LimitSettings,
    pub tenants: BTreeMap<String, TenantSettings>,
    pub templates: TemplateSettings,
    pub bounces: BounceSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub dns: DnsSettings,
}

const ENV_PREFIX: &str = "MAILGATE_";

impl Settings {
    /// Loads defaults, then `file` (when given), then `MAILGATE_…__…` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("Failed to read the config file {}", path.display()))?;
                toml::from_str::<toml::Table>(&text).with_context(|| format!("{} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut tree = toml::Value::Table(tree);
        let mut variables: Vec<(Vec<String>, String, String)> = env
            .into_iter()
            .filter_map(|(name, raw)| {
                let path = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__"))?;
                let keys = path.split("__").map(str::to_ascii_lowercase).collect();
                Some((keys, name, raw))
            })
            .collect();
        // Array items are created in index order, so `__1__` may come before `__0__` in
        // the environment and `__10__` still follows `__9__`.
        variables.sort_by(|(a, ..), (b, ..)| env_path_order(a, b));
        for (keys, name, raw) in variables {
            overlay(&mut tree, &keys, env_value(&raw))
                .with_context(|| format!("Invalid environment variable {name}"))?;
        }
        let settings: Settings = serde_path_to_error::deserialize(tree).map_err(|err| {
            let key = err.path().to_string();
            anyhow::anyhow!("configuration key `{key}`: {}", err.into_inner())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.dns.servers()?;
        if let Some(url) = &self.http.public_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            let host = rest.map(|r| r.split('/').next().unwrap_or(""));
            if host.is_none_or(str::is_empty) || url.contains(['?', '#', ' ']) {
                bail!("http.public_url `{url}` must be an http:// or https:// URL with a host, like https://mail.example.com");
            }
        }
        for (i, up) in self.upstreams.iter().enumerate() {
            if up.password_env.is_some() && up.password_file.is_some() {
                bail!(
                    "upstreams[{i}] ({}): set password_env or password_file, not both",
                    up.name
                );
            }
            if up.max_connections == 0 {
                bail!("upstreams[{i}] ({}): max_connections must be at least 1", up.name);
            }
            let slug = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if up.name.is_empty() || up.name.len() > 64 || !up.name.chars().all(slug) {
                bail!(
                    "upstreams[{i}]: name `{}` must be 1 to 64 letters, digits, `-`, `_` or `.` \
                     (it labels metrics and readiness checks)",
                    up.name
                );
            }
            if self.upstreams[..i].iter().any(|earlier| earlier.name == up.name) {
                bail!(
                    "upstreams[{i}]: the name `{}` is used twice; every relay needs its own",
                    up.name
                );
            }
        }
        let delivery = &self.delivery;
        for (key, domain) in [
            ("delivery.return_path_domain", &delivery.return_path_domain),
            ("delivery.message_id_domain", &delivery.message_id_domain),
        ] {
            crate::domain::address::EmailAddress::parse(&format!("probe@{domain}"))
                .map_err(|_| anyhow::anyhow!("{key}: `{domain}` is not a valid domain"))?;
        }
        const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);
        for (key, value) in [
            ("delivery.retry_base", delivery.retry_base.0),
            ("delivery.retry_max", delivery.retry_max.0),
            ("delivery.max_age", delivery.max_age.0),
            ("delivery.smtp_timeout", delivery.smtp_timeout.0),
            ("templates.render_timeout", self.templates.render_timeout.0),
            ("storage.retention", self.storage.retention.0),
            ("storage.mime_retention", self.storage.mime_retention.0),
            ("storage.stats_retention", self.storage.stats_retention.0),
            ("webhooks.retry_base", self.webhooks.retry_base.0),
            ("webhooks.retry_max", self.webhooks.retry_max.0),
            ("webhooks.max_age", self.webhooks.max_age.0),
            ("webhooks.request_timeout", self.webhooks.request_timeout.0),
        ] {
            if value.is_zero() || value > TEN_YEARS {
                bail!("{key} must be more than 0 and at most 10 years");
            }
        }
        let storage = &self.storage;
        match storage.backend {
            StorageBackend::Postgres => match (&storage.url_env, &storage.url_file) {
                (Some(_), Some(_)) => bail!("storage: set url_env or url_file, not both"),
                (None, None) => bail!(
                    "storage.backend = \"postgres\" needs the database URL: set storage.url_env \
                     (a variable holding it) or storage.url_file"
                ),
                _ => {}
            },
            StorageBackend::Sled if storage.url_env.is_some() || storage.url_file.is_some() => {
                bail!("storage.url_env and storage.url_file are for backend = \"postgres\"; the sled backend uses storage.path")
            }
            StorageBackend::Sled => {}
        }
        if self.storage.cache_bytes < 1024 * 1024 {
            bail!("storage.cache_bytes must be at least 1048576 (1 MiB)");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!(
                "log.level: `{}` is not a filter like `info` or `mailgate=debug`: {e}",
                self.log.level
            )
        })?;
        if self.auth.hs256_secret_env.is_some() && self.auth.hs256_secret_file.is_some() {
            bail!("auth: set hs256_secret_file or hs256_secret_env, not both");
        }
        Ok(())
    }

    /// What is allowed but probably a mistake: `serve` logs these at start-up and
    /// `check-config` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.upstreams.is_empty() && self.delivery.uses_placeholder_domains() {
            warnings.push(format!(
                "delivery.return_path_domain (`{}`) or delivery.message_id_domain (`{}`) is still the \
                 placeholder: real mail would carry a Return-Path and Message-ID nobody can answer; \
                 set both to domains you own",
                self.delivery.return_path_domain, self.delivery.message_id_domain
            ));
        }
        for up in &self.upstreams {
            if up.tls == TlsMode::None && up.username.is_some() {
                warnings.push(format!(
                    "upstream {} sends its password without TLS (tls = \"none\")",
                    up.name
                ));
            }
            if up.tls == TlsMode::None && (up.ca_file.is_some() || up.tls_fingerprint_sha256.is_some()) {
                warnings.push(format!(
                    "upstream {}: ca_file and tls_fingerprint_sha256 do nothing with tls = \"none\"",
                    up.name
                ));
            }
        }
        warnings
    }

    /// Limits for `tenant`: its own overrides on top of `[limits]`.
    /// Whether `tenant`'s sends carry one-click unsubscribe headers by default.
    pub fn list_unsubscribe(&self, tenant: &str) -> bool {
        self.tenants
            .get(tenant)
            .and_then(|t| t.list_unsubscribe)
            .unwrap_or(false)
    }

    pub fn max_recipients(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .and_then(|t| t.max_recipients)
            .unwrap_or(self.limits.max_recipients)
    }
}

/// Reads an environment value as TOML when it is one (`25`, `true`, `["a"]`) and as a
/// string otherwise.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Orders variable paths segment by segment, numbers by value (`2` before `10`).
fn env_path_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    let segment = |s: &String| (s.parse::<usize>().ok(), s.clone());
    a.iter().map(segment).cmp(b.iter().map(segment))
}

/// The settings that are lists of tables, which variables address by index
/// (`UPSTREAMS__0__HOST`). Only these become arrays when a variable creates them: a
/// tenant may well be called `42`.
const ARRAY_SECTIONS: &[&[&str]] = &[&["upstreams"], &["auth", "public_keys"]];

/// Sets `keys` (`["http", "listen"]`, `["upstreams", "0", "host"]`) under `root`. A
/// missing array section (`ARRAY_SECTIONS`) is created empty, and the next index past
/// its end appends an item, so `UPSTREAMS__0__HOST` alone makes the first upstream.
fn overlay(root: &mut toml::Value, keys: &[String], value: toml::Value) -> anyhow::Result<()> {
    let mut node = root;
    for (depth, key) in keys.iter().enumerate() {
        let is_array_section = ARRAY_SECTIONS
            .iter()
            .any(|section| section.len() == depth + 1 && section.iter().zip(keys).all(|(s, k)| s == k));
        node = match node {
            toml::Value::Table(table) => table.entry(key.clone()).or_insert_with(|| {
                if is_array_section {
                    toml::Value::Array(Vec::new())
                } else {
                    toml::Value::Table(toml::Table::new())
                }
            }),
            toml::Value::Array(items) => {
                let index: usize = key
                    .parse()
                    .context("an array needs a numeric index, e.g. UPSTREAMS__0__HOST")?;
                if index == items.len() {
                    items.push(toml::Value::Table(toml::Table::new()));
                }
                let len = items.len();
                items.get_mut(index).with_context(|| {
                    format!("there is no item {index}: items are numbered from 0 without gaps (next is {len})")
                })?
            }
            _ => bail!("`{key}` is below a key that is not a section"),
        };
    }
    *node = value;
    Ok(())
}

/// Reads a secret from a file (trimmed) or an environment variable.
pub fn read_secret(file: Option<&Path>, env_name: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Failed to read the secret file {}", path.display()))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
    }
    if let Some(name) = env_name {
        let value = std::env::var(name).with_context(|| format!("The environment variable {name} is not set"))?;
        return Ok(Some(value));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn embedded_defaults_match_the_contract() {
        let s = Settings::load(None, []).unwrap();
        assert_eq!(s.http.listen, "127.0.0.1:8080");
        assert_eq!(s.http.max_body_bytes, 26_214_400);
        assert_eq!(s.storage.path, PathBuf::from("./data"));
        assert!(s.upstreams.is_empty(), "no upstream means the sandbox transport");
        assert_eq!(s.delivery.retry_base.0, Duration::from_secs(30));
        assert_eq!(s.delivery.retry_max.0, Duration::from_secs(3600));
        assert_eq!(s.delivery.max_age.0, Duration::from_secs(3 * 86_400));
        assert_eq!(s.limits.max_recipients, 50);
    }

    #[test]
    fn env_overrides_defaults_and_ignores_plain_mailgate_vars() {
        let s = Settings::load(
            None,
            env(&[
                ("MAILGATE_HTTP__LISTEN", "0.0.0.0:9000"),
                ("MAILGATE_HTTP__MAX_BODY_BYTES", "1024"),
                ("MAILGATE_PRIMARY_PASSWORD", "secret"),
                ("MAILGATE_DELIVERY__MAX_AGE", "2h"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.listen, "0.0.0.0:9000");
        assert_eq!(s.http.max_body_bytes, 1024);
        assert_eq!(s.delivery.max_age.0, Duration::from_secs(7200));
    }

    #[test]
    fn public_url_is_an_http_url_with_a_host_and_links_drop_its_last_slash() {
        for bad in ["mail.example.com", "ftp://x", "https://", "https://x/?a=1"] {
            let err = Settings::load(None, env(&[("MAILGATE_HTTP__PUBLIC_URL", bad)])).unwrap_err();
            assert!(format!("{err:#}").contains("http.public_url"), "{bad}: {err:#}");
        }
        let s = Settings::load(None, env(&[("MAILGATE_HTTP__PUBLIC_URL", "https://mail.example.com/")])).unwrap();
        assert_eq!(s.http.public_base(), "https://mail.example.com");
        assert_eq!(Settings::default().http.public_base(), "http://127.0.0.1:8080");
    }

    #[test]
    fn the_postgres_backend_needs_exactly_one_source_of_its_url_and_sled_takes_none() {
        let postgres = ("MAILGATE_STORAGE__BACKEND", "postgres");
        let err = Settings::load(None, env(&[postgres])).unwrap_err();
        assert!(format!("{err:#}").contains("storage.url_env"), "{err:#}");
        let both = [
            postgres,
            ("MAILGATE_STORAGE__URL_ENV", "DB"),
            ("MAILGATE_STORAGE__URL_FILE", "/run/db"),
        ];
        let err = Settings::load(None, env(&both)).unwrap_err();
        assert!(format!("{err:#}").contains("not both"), "{err:#}");
        let s = Settings::load(None, env(&[postgres, ("MAILGATE_STORAGE__URL_ENV", "DB")])).unwrap();
        assert_eq!(s.storage.backend, StorageBackend::Postgres);
        let err = Settings::load(None, env(&[("MAILGATE_STORAGE__URL_ENV", "DB")])).unwrap_err();
        assert!(format!("{err:#}").contains("backend = \"postgres\""), "{err:#}");
        let err = Settings::load(None, env(&[("MAILGATE_STORAGE__BACKEND", "mysql")])).unwrap_err();
        assert!(format!("{err:#}").contains("storage.backend"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Settings::load(None, env(&[("MAILGATE_HTTP__LISTN", "x")])).unwrap_err();
        assert!(format!("{err:#}").contains("http.listn"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[delivery]\nretry_bse = \"1s\"\n").unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err();
        assert!(format!("{err:#}").contains("delivery.retry_bse"), "{err:#}");
    }

    #[test]
    fn nonsensical_delivery_values_are_refused() {
        for (key, value) in [
            ("MAILGATE_DELIVERY__RETRY_BASE", "0s"),
            ("MAILGATE_DELIVERY__MAX_AGE", "500y"),
            ("MAILGATE_DELIVERY__RETURN_PATH_DOMAIN", "not a domain"),
        ] {
            let err = Settings::load(None, env(&[(key, value)])).unwrap_err();
            let field = key.trim_start_matches("MAILGATE_").replace("__", ".").to_lowercase();
            assert!(format!("{err:#}").contains(&field), "{err:#}");
        }
    }

    #[test]
    fn upstreams_can_be_configured_by_environment_alone() {
        let s = Settings::load(
            None,
            env(&[
                ("MAILGATE_UPSTREAMS__1__NAME", "b"),
                ("MAILGATE_UPSTREAMS__0__NAME", "a"),
                ("MAILGATE_UPSTREAMS__0__HOST", "127.0.0.1"),
                ("MAILGATE_UPSTREAMS__1__HOST", "relay.test"),
                ("MAILGATE_UPSTREAMS__1__WEIGHT", "0"),
            ]),
        )
        .unwrap();
        let names: Vec<_> = s
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.host.as_str(), u.weight))
            .collect();
        assert_eq!(names, [("a", "127.0.0.1", 1), ("b", "relay.test", 0)]);
        let gap = Settings::load(
            None,
            env(&[
                ("MAILGATE_UPSTREAMS__0__NAME", "a"),
                ("MAILGATE_UPSTREAMS__2__NAME", "c"),
            ]),
        )
        .unwrap_err();
        assert!(format!("{gap:#}").contains("MAILGATE_UPSTREAMS__2__NAME"), "{gap:#}");
    }

    #[test]
    fn a_tenant_named_by_a_number_is_a_section_not_an_array() {
        let s = Settings::load(
            None,
            env(&[
                ("MAILGATE_TENANTS__42__DAILY_QUOTA", "100"),
                ("MAILGATE_TENANTS__0__MAX_RECIPIENTS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(s.tenants["42"].daily_quota, Some(100));
        assert_eq!(s.tenants["0"].max_recipients, Some(5));
    }

    #[test]
    fn an_upstream_name_is_a_slug_because_it_labels_metrics() {
        for name in ["a\"b", "", "two words", &"x".repeat(65)] {
            let err = Settings::load(
                None,
                env(&[
                    ("MAILGATE_UPSTREAMS__0__NAME", name),
                    ("MAILGATE_UPSTREAMS__0__HOST", "h.test"),
                ]),
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains("must be 1 to 64"), "{name}: {err:#}");
        }
    }

    #[test]
    fn a_fingerprint_that_is_not_one_is_refused_naming_the_key() {
        let err = Settings::load(
            None,
            env(&[
                ("MAILGATE_UPSTREAMS__0__NAME", "a"),
                ("MAILGATE_UPSTREAMS__0__HOST", "h.test"),
                ("MAILGATE_UPSTREAMS__0__TLS_FINGERPRINT_SHA256", "AB:CD"),
            ]),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("upstreams[0].tls_fingerprint_sha256"),
            "{err:#}"
        );
    }

    #[test]
    fn env_indices_order_by_number() {
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        assert!(env_path_order(&path("upstreams.2.name"), &path("upstreams.10.name")).is_lt());
        assert!(env_path_order(&path("upstreams.0.port"), &path("upstreams.1.host")).is_lt());
    }

    #[test]
    fn several_upstreams_load_and_their_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let relay = |name: &str| format!("[[upstreams]]\nname = \"{name}\"\nhost = \"{name}.test\"\n");
        std::fs::write(&file, format!("{}{}", relay("a"), relay("b"))).unwrap();
        assert_eq!(Settings::load(Some(&file), []).unwrap().upstreams.len(), 2);
        std::fs::write(&file, format!("{}{}", relay("a"), relay("a"))).unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err();
        assert!(format!("{err:#}").contains("used twice"), "{err:#}");
    }

    #[test]
    fn env_reaches_into_upstream_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[[upstreams]]\nname = \"p\"\nhost = \"a.test\"\n").unwrap();
        let s = Settings::load(Some(&file), env(&[("MAILGATE_UPSTREAMS__0__PORT", "2525")])).unwrap();
        assert_eq!(s.upstreams[0].port, 2525);
    }
}
