//! Spawning the app, minting tokens, and reading what Postfix delivered.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate::auth::TokenKeys;
use mailgate::config::{ConfigDuration, Settings, TlsMode, UpstreamSettings};
use mailgate::domain::auth::{Scopes, TenantId};
use mailgate::startup::Application;
use mailgate::store::Store;
use serde_json::Value;
use tempfile::TempDir;

pub const SMTP_USER: &str = "mailgate";
pub const SMTP_PASSWORD: &str = "mailgate-test-password";
pub const RETURN_PATH_DOMAIN: &str = "bounces.mailgate.test";
pub const MESSAGE_ID_DOMAIN: &str = "mail.mailgate.test";

/// The Postfix instance the harness script runs.
#[derive(Clone, Debug)]
pub struct Postfix {
    pub dir: PathBuf,
    /// Submission port (STARTTLS); `port + 1` is implicit TLS.
    pub port: u16,
}

impl Postfix {
    /// The shared instance started by the test command.
    pub fn shared() -> Self {
        let dir = PathBuf::from(
            std::env::var("MAILGATE_TEST_POSTFIX_DIR").unwrap_or_else(|_| "/tmp/mailgate-postfix".into()),
        );
        let port = std::env::var("MAILGATE_TEST_POSTFIX_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(10587);
        assert!(
            dir.join("sink/new").is_dir(),
            "no Postfix test upstream in {}: run the suite with ./scripts/test.sh (it starts one)",
            dir.display()
        );
        Self { dir, port }
    }

    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/postfix.sh")
    }

    /// Runs `postfix.sh <command>` for this instance.
    pub fn control(&self, command: &str) {
        let status = Command::new(Self::script())
            .args([command, &self.dir.to_string_lossy(), &self.port.to_string()])
            .status()
            .expect("run postfix.sh");
        assert!(status.success(), "postfix.sh {command} failed");
    }

    /// Has Postfix POST the DSNs of message `id` to `url` with `token` (see postfix.sh):
    /// until this is written, they wait in Postfix's queue.
    pub fn route_dsns(&self, id: &str, url: &str, token: &str) {
        let routes = self.dir.join("dsnhook.d");
        std::fs::create_dir_all(&routes).expect("dsnhook.d");
        std::fs::write(routes.join(format!("{id}.token")), token).expect("write the DSN token");
        std::fs::write(routes.join(format!("{id}.url")), url).expect("write the DSN url");
    }

    /// A `[[upstreams]]` entry for this Postfix's `port` (or a forwarder to it), with
    /// AUTH (the password file is `data/smtp-password`) and its CA; `extra` (TOML keys)
    /// is merged into it and wins.
    pub fn relay(&self, data: &Path, name: &str, port: u16, tls: &str, extra: &str) -> String {
        let password = data.join("smtp-password");
        std::fs::write(&password, SMTP_PASSWORD).expect("write password file");
        let mut relay = toml::Table::new();
        for (key, value) in [
            ("name", name.to_owned()),
            ("host", "127.0.0.1".into()),
            ("tls", tls.into()),
            ("username", SMTP_USER.into()),
            ("password_file", password.display().to_string()),
            ("ca_file", self.dir.join("tls/ca.pem").display().to_string()),
        ] {
            relay.insert(key.into(), toml::Value::String(value));
        }
        relay.insert("port".into(), toml::Value::Integer(port.into()));
        merge(&mut relay, extra.parse().expect("relay keys are TOML"));
        if relay.contains_key("password_env") {
            relay.remove("password_file");
        }
        let mut entry = toml::Table::new();
        entry.insert("upstreams".into(), toml::Value::Array(vec![toml::Value::Table(relay)]));
        toml::to_string(&entry).expect("relay TOML")
    }

    pub fn upstream(&self, tls: TlsMode, password_file: &Path) -> UpstreamSettings {
        UpstreamSettings {
            name: "postfix".into(),
            host: "127.0.0.1".into(),
            port: if tls == TlsMode::Tls { self.port + 1 } else { self.port },
            tls,
            username: Some(SMTP_USER.into()),
            password_env: None,
            password_file: Some(password_file.to_path_buf()),
            ca_file: Some(self.dir.join("tls/ca.pem")),
            tls_fingerprint_sha256: None,
            max_connections: 4,
            rate_per_second: 0,
            tenant_max_connections: 0,
            weight: 1,
            idle_timeout: mailgate::config::ConfigDuration(Duration::from_secs(60)),
            dkim: mailgate::config::DkimMode::Sign,
        }
    }

    /// Every delivered message whose Message-ID carries `message_id`.
    pub fn delivered(&self, message_id: &str) -> Vec<Vec<u8>> {
        let needle = format!("<{message_id}@");
        let Ok(entries) = std::fs::read_dir(self.dir.join("sink/new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter(|bytes| String::from_utf8_lossy(bytes).contains(&needle))
            .collect()
    }

    /// How many copies of each message were delivered, reading the Maildir once (for
    /// a test that watches many messages while they arrive).
    pub fn delivered_counts(&self, message_ids: &[String]) -> Vec<usize> {
        let mut counts = vec![0; message_ids.len()];
        let Ok(entries) = std::fs::read_dir(self.dir.join("sink/new")) else {
            return counts;
        };
        for bytes in entries.filter_map(|e| std::fs::read(e.ok()?.path()).ok()) {
            let text = String::from_utf8_lossy(&bytes);
            for (count, id) in counts.iter_mut().zip(message_ids) {
                if text.contains(&format!("<{id}@")) {
                    *count += 1;
                }
            }
        }
        counts
    }

    /// Waits until at least `count` copies of the message were delivered.
    pub async fn wait_delivered(&self, message_id: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.delivered(message_id);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{message_id}: {} of {count} delivered after {timeout:?}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub token: String,
    pub keys: TokenKeys,
    process: Process,
    pub data: TempDir,
    pub postfix: Postfix,
}

/// Where the app under test runs.
enum Process {
    /// In this test process, with its store at hand.
    InProcess(Arc<dyn Store>),
    /// The real binary started with a config file, as a user starts it.
    Binary(Binary),
}

/// Settings for a test app: temp data dir, random port, the shared Postfix over
/// STARTTLS, and short retry timings.
pub fn test_settings(data: &Path, postfix: &Postfix) -> Settings {
    let password_file = data.join("smtp-password");
    std::fs::write(&password_file, SMTP_PASSWORD).expect("write password file");
    let mut settings = Settings::default();
    settings.http.listen = "127.0.0.1:0".into();
    settings.storage.path = data.to_path_buf();
    settings.upstreams = vec![postfix.upstream(TlsMode::Starttls, &password_file)];
    settings.delivery.return_path_domain = RETURN_PATH_DOMAIN.into();
    settings.delivery.message_id_domain = MESSAGE_ID_DOMAIN.into();
    settings.delivery.retry_base = ConfigDuration(Duration::from_millis(300));
    settings.delivery.retry_max = ConfigDuration(Duration::from_secs(1));
    settings.delivery.max_age = ConfigDuration(Duration::from_secs(60));
    settings.delivery.smtp_timeout = ConfigDuration(Duration::from_secs(10));
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Runs the test `body` (an `async fn(Backend)`) twice, as `body::sled` and
/// `body::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($body:ident) => {
        mod $body {
            #[tokio::test]
            async fn sled() {
                super::$body($crate::helpers::Backend::Sled).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$body($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}

/// Which store a test app runs on: the tests that matter run on both.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sled,
    /// A schema of its own in the test PostgreSQL (see [`pg_url`]).
    Postgres,
}

impl Backend {
    /// Points `settings` at this backend (a PostgreSQL URL goes in a file in the data dir).
    pub fn apply(self, settings: &mut Settings) {
        if let Backend::Postgres = self {
            let file = settings.storage.path.join("database-url");
            std::fs::write(&file, pg_url()).expect("write the database URL");
            settings.storage.backend = mailgate::config::StorageBackend::Postgres;
            settings.storage.url_file = Some(file);
        }
    }

    /// The same as TOML for a config file (the URL's file is a temporary one).
    pub fn toml(self) -> String {
        match self {
            Backend::Sled => String::new(),
            Backend::Postgres => {
                let file = std::env::temp_dir().join(format!("mailgate-test-db-{}", uuid::Uuid::now_v7().simple()));
                std::fs::write(&file, pg_url()).expect("write the database URL");
                format!("[storage]\nbackend = \"postgres\"\nurl_file = \"{}\"\n", file.display())
            }
        }
    }
}

/// The URL of a fresh schema in the test PostgreSQL (`MAILGATE_TEST_PG_URL`, which the
/// test command starts with `tests/support/postgres.sh`): tests running at once never
/// meet, and several nodes of one test share it.
pub fn pg_url() -> String {
    let base =
        std::env::var("MAILGATE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/postgres".into());
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let create = format!("CREATE SCHEMA {schema}");
    let at = base.clone();
    // On a thread of its own: the blocking driver cannot run inside the test's runtime.
    std::thread::spawn(move || {
        postgres::Client::connect(&at, postgres::NoTls)
            .expect("the test PostgreSQL answers (tests/support/postgres.sh start)")
            .batch_execute(&create)
            .expect("create a schema");
    })
    .join()
    .expect("the schema is made");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// [`spawn_app`] on `backend`.
pub async fn spawn_app_on(backend: Backend) -> TestApp {
    spawn_app_with(|s| backend.apply(s)).await
}

/// Spawns the app in-process on a random port after `customize` adjusts its settings.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        mailgate::telemetry::init(&Default::default());
    }
    let postfix = Postfix::shared();
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data.path(), &postfix);
    customize(&mut settings);
    let keys = TokenKeys::load(&settings).expect("token keys");
    let app = Application::build(settings).expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store();
    tokio::spawn(app.run_until_stopped());
    let token = mint(&keys, "acme", "messages:send messages:read");
    TestApp {
        address,
        client: http(),
        token,
        keys,
        process: Process::InProcess(store),
        data,
        postfix,
    }
}

/// A config file for the real binary: data in `data`, delivering to `postfix` over
/// STARTTLS with AUTH and fast retries, with `extra` (TOML) merged on top: its keys win,
/// and an array such as `[[upstreams]]` replaces the base one.
pub fn write_config(data: &Path, postfix: &Postfix, extra: &str) -> PathBuf {
    let base = format!(
        r#"
[storage]
path = "{data}"

{relay}

[delivery]
return_path_domain = "{RETURN_PATH_DOMAIN}"
message_id_domain = "{MESSAGE_ID_DOMAIN}"
retry_base = "300ms"
retry_max = "1s"
"#,
        data = data.display(),
        relay = postfix.relay(data, "postfix", postfix.port, "starttls", "max_connections = 4"),
    );
    let mut config: toml::Table = base.parse().expect("base config");
    merge(&mut config, extra.parse().expect("extra config is TOML"));
    let path = data.join("mailgate.toml");
    std::fs::write(&path, toml::to_string(&config).expect("config TOML")).expect("write config");
    path
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Starts the real binary with `write_config(…, extra)`; the app's token (tenant
/// `acme`) is signed with the keys that file configures.
pub async fn spawn_binary(extra: &str) -> TestApp {
    spawn_binary_with_env(extra, &[]).await
}

/// `spawn_binary` with environment variables for the binary (and for reading its keys).
pub async fn spawn_binary_with_env(extra: &str, envs: &[(&str, &str)]) -> TestApp {
    spawn_binary_on(tempfile::tempdir().expect("temp dir"), extra, envs).await
}

/// `spawn_binary_with_env` on a data dir the test prepared (a store written in advance).
pub async fn spawn_binary_on(data: TempDir, extra: &str, envs: &[(&str, &str)]) -> TestApp {
    let postfix = Postfix::shared();
    let config = write_config(data.path(), &postfix, extra);
    let env: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut settings = Settings::load(Some(&config), env).expect("the test config loads");
    // The binary reads `hs256_secret_env` from its own environment; the test mints with
    // the same secret from a file.
    if let Some((_, secret)) = envs
        .iter()
        .find(|(name, _)| settings.auth.hs256_secret_env.as_deref() == Some(*name))
    {
        let file = data.path().join("test-hs256");
        std::fs::write(&file, secret).expect("write the secret");
        settings.auth.hs256_secret_env = None;
        settings.auth.hs256_secret_file = Some(file);
    }
    let keys = TokenKeys::load(&settings).expect("token keys");
    let mut binary = Binary::spawn(
        &["serve", "--config", &config.to_string_lossy()],
        data.path(),
        free_port(),
        envs,
    );
    binary.wait_healthy().await;
    let token = mint(&keys, "acme", "messages:send messages:read");
    TestApp {
        address: binary.address.clone(),
        client: http(),
        token,
        keys,
        process: Process::Binary(binary),
        data,
        postfix,
    }
}

pub fn mint(keys: &TokenKeys, tenant: &str, scopes: &str) -> String {
    keys.issue(
        &TenantId::parse(tenant).expect("tenant"),
        &Scopes::parse_strict(scopes).expect("scopes"),
        Duration::from_secs(600),
        "test",
    )
    .expect("token")
}

/// `POST /v1/messages` to the service at `address`.
async fn post_message(client: &reqwest::Client, address: &str, token: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{address}/v1/messages"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("POST /v1/messages")
}

impl TestApp {
    pub async fn send_as(&self, token: &str, body: &Value) -> reqwest::Response {
        post_message(&self.client, &self.address, token, body).await
    }

    /// Sends and expects a 202; returns the message id.
    pub async fn send_ok(&self, body: &Value) -> String {
        let response = self.send_as(&self.token, body).await;
        let status = response.status();
        let json: Value = response.json().await.expect("json body");
        assert_eq!(status, 202, "{json}");
        json["id"].as_str().expect("id").to_owned()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    pub async fn message(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/messages/{id}"), &self.token).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Polls `GET /v1/messages/{id}` until `done` holds.
    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let message = self.message(id).await;
            if done(&message) {
                return message;
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached after {timeout:?}: {message:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages stored: counted in the store in process, or listed by the binary's API
    /// (tenant `acme`, up to 100).
    pub async fn stored_messages(&self) -> usize {
        match &self.process {
            Process::InProcess(store) => store.count_messages().expect("count"),
            Process::Binary(_) => {
                let list: Value = self
                    .get("/v1/messages?limit=100", &self.token)
                    .await
                    .json()
                    .await
                    .expect("list");
                list["data"].as_array().expect("data").len()
            }
        }
    }

    /// The binary's process, for tests that signal or kill it.
    pub fn binary(&mut self) -> &mut Binary {
        match &mut self.process {
            Process::Binary(binary) => binary,
            Process::InProcess(_) => panic!("this app runs in the test process"),
        }
    }

    /// What the binary wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data.path().join("stderr.log")).unwrap_or_default()
    }
}

/// `GET address + path` with `token`, as JSON.
pub async fn get_json(address: &str, path: &str, token: &str) -> Value {
    http()
        .get(format!("{address}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

/// `GET address/metrics` as text.
pub async fn metrics_text(address: &str) -> String {
    http()
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("a text body")
}

/// An HTTP client; installs the process-wide rustls provider first, as `main` does.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A message body with the given recipient(s) and a unique subject.
pub fn simple_message(to: &str) -> Value {
    serde_json::json!({
        "from": "Mailgate Tests <tests@sender.mailgate.test>",
        "to": [to],
        "subject": "Hello from the tests",
        "text": "plain body",
    })
}

/// Delivered bytes with Postfix's CRLF→LF conversion undone for comparison.
pub fn lf(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

/// A port that was free a moment ago, for a spawned binary.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The `mailgate` binary as a child process (its stderr goes to `<dir>/stderr.log`), for
/// tests that kill it or read its output.
pub struct Binary {
    pub child: Child,
    pub address: String,
    /// How it was started, to start it again on another port when `port` was taken.
    start: Start,
}

#[derive(Clone)]
struct Start {
    args: Vec<String>,
    dir: PathBuf,
    envs: Vec<(String, String)>,
    /// The port comes from `MAILGATE_HTTP__LISTEN` (and may be changed), not the config.
    from_env: bool,
}

impl Binary {
    /// Listening on `port` (set by `MAILGATE_HTTP__LISTEN`, over any config file); when
    /// another test took the port meanwhile, `wait_healthy` starts it on a fresh one.
    pub fn spawn(args: &[&str], dir: &Path, port: u16, envs: &[(&str, &str)]) -> Self {
        Self::start(Start::new(args, dir, envs, true), port)
    }

    /// Listening where its config already says (`http.listen`, which must be `port`).
    pub fn spawn_listening_as_configured(args: &[&str], dir: &Path, port: u16, envs: &[(&str, &str)]) -> Self {
        Self::start(Start::new(args, dir, envs, false), port)
    }

    fn start(start: Start, port: u16) -> Self {
        let stderr = std::fs::File::create(start.dir.join("stderr.log")).expect("stderr.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailgate"));
        command
            .args(&start.args)
            .current_dir(&start.dir)
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("MAILGATE_") || n == "RUST_LOG") {
            command.env_remove(name);
        }
        if start.from_env {
            command.env("MAILGATE_HTTP__LISTEN", format!("127.0.0.1:{port}"));
        }
        command.envs(start.envs.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().expect("spawn mailgate");
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            start,
        }
    }

    pub async fn wait_healthy(&mut self) {
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut restarts = 0;
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.address)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                let log = std::fs::read_to_string(self.start.dir.join("stderr.log")).unwrap_or_default();
                // Ports come from `free_port`, which another test may take before us.
                if self.start.from_env && log.contains("Failed to listen") && restarts < 3 {
                    restarts += 1;
                    *self = Self::start(self.start.clone(), free_port());
                    continue;
                }
                panic!("mailgate exited early: {log}");
            }
            assert!(Instant::now() < deadline, "mailgate did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/messages` to this process.
    pub async fn send(&self, token: &str, body: &Value) -> reqwest::Response {
        post_message(&http(), &self.address, token, body).await
    }

    /// SIGKILL: no shutdown hooks, no flush, exactly like a crash.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Start {
    fn new(args: &[&str], dir: &Path, envs: &[(&str, &str)], from_env: bool) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: dir.to_path_buf(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            from_env,
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
