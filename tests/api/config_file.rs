//! What a user's configuration turns on, proved by starting the real binary with the
//! keys in a config file (or in the environment, where the README says so): the
//! README's own configuration block, `check-config` refusing what `serve` refuses,
//! relays from the environment alone, start-up warnings, a graceful Ctrl-C, and each
//! key that no feature test elsewhere starts the binary with.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{
    free_port, get_json, mint, simple_message, spawn_binary, write_config, Binary, Postfix, SMTP_PASSWORD,
};
use crate::templates::Api;

const WAIT: Duration = Duration::from_secs(20);

/// `mailgate <args>` in `dir` with exactly `envs` among the MAILGATE_ variables.
fn mailgate(args: &[&str], dir: &std::path::Path, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailgate"));
    command.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("MAILGATE_")) {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied()).output().expect("run mailgate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The README's configuration block, with every absolute path moved under `root` (and
/// a file put there: a copy of the harness CA for `.pem`, a 40-byte secret otherwise).
fn readme_config(root: &std::path::Path, postfix: &Postfix) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let mut config = String::new();
    for line in block.lines() {
        let mut line = line.to_owned();
        if let Some(at) = line.find("= \"/") {
            let path = &line[at + 3..at + 3 + line[at + 3..].find('"').unwrap()];
            let moved = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
            if path.ends_with(".pem") {
                std::fs::copy(postfix.dir.join("tls/ca.pem"), &moved).unwrap();
            } else {
                std::fs::write(&moved, "s".repeat(40)).unwrap();
            }
            line = line.replace(path, &moved.to_string_lossy());
        }
        config.push_str(&line);
        config.push('\n');
    }
    config
}

/// The environment variables the README's block names for its secrets.
const README_SECRETS: &[(&str, &str)] = &[
    ("MAILGATE_PRIMARY_PASSWORD", "relay-password"),
    ("MAILGATE_BACKUP_PASSWORD", "relay-password"),
    ("ACME_MAILGUN_SIGNING_KEY", "mailgun-key"),
    ("ACME_POSTMARK_WEBHOOK_AUTH", "user:password"),
];

#[test]
fn the_readme_configuration_block_is_valid_as_written() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let config = readme_config(dir.path(), &postfix);
    assert!(
        config.matches("[[upstreams]]").count() >= 2,
        "the README shows several relays: {config}"
    );
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, &config).unwrap();
    let out = mailgate(
        &["check-config", "--config", &file.to_string_lossy()],
        dir.path(),
        README_SECRETS,
    );
    assert!(out.status.success(), "{}\n{config}", stderr(&out));
    assert!(
        !dir.path().join("data").exists(),
        "check-config changes nothing (no dev key, no data directory)"
    );
}

/// `serve` with `envs`, expected to refuse its configuration: its exit code and stderr.
async fn serve_refusing(config: &str, dir: &std::path::Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut binary = Binary::spawn(&["serve", "--config", config], dir, free_port(), envs);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve accepted what it should refuse");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (
        status.code(),
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
    )
}

#[tokio::test]
async fn check_config_refuses_what_serve_refuses() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let not_a_directory = dir.path().join("a-file");
    std::fs::write(&not_a_directory, "").unwrap();
    let cases = [
        (
            "a short HS256 secret",
            "[auth]\nhs256_secret_env = \"SHORT_SECRET\"\n".to_owned(),
            "at least 32 bytes",
        ),
        (
            "a relay CA file that is not there",
            postfix.relay(
                dir.path(),
                "postfix",
                postfix.port,
                "starttls",
                "ca_file = \"/nonexistent/ca.pem\"",
            ),
            "/nonexistent/ca.pem",
        ),
        (
            "a data directory that is a file",
            format!("[storage]\npath = \"{}/data\"\n", not_a_directory.display()),
            "not a directory",
        ),
        (
            "a provider secret file that is not there",
            "[tenants.acme]\nmailgun_signing_key_file = \"/nonexistent/mailgun\"\n".to_owned(),
            "/nonexistent/mailgun",
        ),
    ];
    let envs = [("SHORT_SECRET", "abc")];
    for (case, toml, reason) in cases {
        let file = dir.path().join("refused.toml");
        std::fs::write(&file, toml).unwrap();
        let config = file.to_string_lossy().into_owned();
        let checked = mailgate(&["check-config", "--config", &config], dir.path(), &envs);
        assert_eq!(
            checked.status.code(),
            Some(1),
            "check-config, {case}: {}",
            stderr(&checked)
        );
        assert!(
            stderr(&checked).contains(reason),
            "check-config, {case}: {}",
            stderr(&checked)
        );
        let (code, log) = serve_refusing(&config, dir.path(), &envs).await;
        assert_eq!(code, Some(1), "serve, {case}: {log}");
        assert!(log.contains(reason), "serve, {case}: {log}");
        assert!(
            !log.contains("abc\n") && !stderr(&checked).contains("abc\n"),
            "never the secret"
        );
    }
}

#[test]
fn check_config_on_the_defaults_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailgate(&["check-config"], dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no data directory, no dev key"
    );
}

/// A relay of the harness Postfix as `MAILGATE_UPSTREAMS__<i>__…` variables.
fn relay_env(index: usize, name: &str, port: u16, tls: &str, ca: &str) -> Vec<(String, String)> {
    let key = |k: &str| format!("MAILGATE_UPSTREAMS__{index}__{k}");
    vec![
        (key("NAME"), name.into()),
        (key("HOST"), "127.0.0.1".into()),
        (key("PORT"), port.to_string()),
        (key("TLS"), tls.into()),
        (key("USERNAME"), crate::helpers::SMTP_USER.into()),
        (key("PASSWORD_ENV"), "RELAY_PASSWORD".into()),
        (key("CA_FILE"), ca.into()),
    ]
}

#[tokio::test]
async fn relays_set_by_environment_alone_are_checked_and_served() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = postfix.dir.join("tls/ca.pem").to_string_lossy().into_owned();
    let mut env = relay_env(1, "b", postfix.port + 1, "tls", &ca);
    env.extend(relay_env(0, "a", postfix.port, "starttls", &ca));
    env.extend([
        ("RELAY_PASSWORD".to_owned(), SMTP_PASSWORD.to_owned()),
        ("MAILGATE_STORAGE__PATH".into(), dir.path().display().to_string()),
        (
            "MAILGATE_DELIVERY__RETURN_PATH_DOMAIN".into(),
            "bounces.env.test".into(),
        ),
        ("MAILGATE_DELIVERY__MESSAGE_ID_DOMAIN".into(), "env.test".into()),
    ]);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let checked = mailgate(&["check-config"], dir.path(), &envs);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let mut binary = Binary::spawn(&["serve"], dir.path(), free_port(), &envs);
    binary.wait_healthy().await;
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = dir.path().to_path_buf();
    let keys = mailgate::auth::TokenKeys::load(&settings).unwrap();
    let list = get_json(&binary.address, "/v1/upstreams", &mint(&keys, "acme", "admin")).await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{list}");
    let sent = binary
        .send(
            &mint(&keys, "acme", "messages:send"),
            &simple_message("env@example.test"),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let id = sent.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    postfix.wait_delivered(&id, 1, WAIT).await;
}

#[tokio::test]
async fn placeholder_domains_with_a_real_relay_are_warned_about() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("placeholder.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\npath = \"{}\"\n{}",
            dir.path().display(),
            postfix.relay(dir.path(), "postfix", postfix.port, "starttls", "")
        ),
    )
    .unwrap();
    let config = file.to_string_lossy().into_owned();
    let checked = mailgate(&["check-config", "--config", &config], dir.path(), &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("placeholder"), "{}", stderr(&checked));

    let mut binary = Binary::spawn(&["serve", "--config", &config], dir.path(), free_port(), &[]);
    binary.wait_healthy().await;
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("WARN") && log.contains("delivery.return_path_domain"),
        "{log}"
    );
}

#[tokio::test]
async fn sigint_lets_a_request_still_sending_its_body_finish() {
    let mut app = spawn_binary("").await;
    let body = simple_message("ctrl-c@example.test").to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = app.binary().child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + WAIT;
    while !app.stderr().contains("shutting down") {
        assert!(Instant::now() < deadline, "SIGINT was not taken: {}", app.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = loop {
        match TcpStream::connect(app.address.trim_start_matches("http://")).await {
            Err(_) => break true,
            Ok(_) if Instant::now() > deadline => break false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(refused, "after SIGINT no new connection is taken");
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut reply))
        .await
        .expect("an answer")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = app.binary().child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!app.stderr().contains("forced shutdown"), "{}", app.stderr());
}

#[tokio::test]
async fn metrics_name_tenants_only_when_tenant_labels_is_on() {
    let app = spawn_binary("[metrics]\ntenant_labels = true\n").await;
    let id = app.send_ok(&simple_message("labels@example.test")).await;
    app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;
    let text = app.get("/metrics", &app.token).await.text().await.unwrap();
    assert!(
        text.contains("mailgate_messages_accepted_total{tenant=\"acme\"} 1"),
        "{text}"
    );
    assert!(text.contains("tenant=\"acme\",outcome=\"sent\"} 1"), "{text}");
}

/// `http.listen` from the file itself (other binaries get theirs from the environment),
/// and `keep_alive`: an idle connection is closed after it.
#[tokio::test]
async fn the_listen_address_and_keep_alive_come_from_the_file() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &postfix,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nkeep_alive = \"1s\"\n"),
    );
    let mut binary =
        Binary::spawn_listening_as_configured(&["serve", "--config", &config.to_string_lossy()], dir.path(), port, &[]);
    binary.wait_healthy().await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .expect("the idle connection is closed");
    assert_eq!(closed.unwrap_or(0), 0);
    assert!(
        idle.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        idle.elapsed()
    );
}

/// HS256 from a secret file, with `issuer`, `audience` and `leeway` checked.
#[tokio::test]
async fn tokens_are_checked_against_the_configured_secret_issuer_audience_and_leeway() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("hs256");
    std::fs::write(&secret, "a-shared-secret-of-at-least-32-bytes!").unwrap();
    let app = spawn_binary(&format!(
        "[auth]\nhs256_secret_file = \"{}\"\nissuer = \"https://auth.config.test\"\naudience = \"mailgate\"\nleeway = \"2m\"\n",
        secret.display()
    ))
    .await;
    assert_eq!(app.get("/v1/messages", &app.token).await.status(), 200);
    let claims = |aud: &str, exp_ago: u64| {
        json!({"sub": "t", "tenant": "acme", "scope": "messages:read", "iss": "https://auth.config.test",
               "aud": aud, "exp": jsonwebtoken::get_current_timestamp() - exp_ago})
    };
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"a-shared-secret-of-at-least-32-bytes!").unwrap(),
        )
        .unwrap()
    };
    let late = sign(claims("mailgate", 60));
    assert_eq!(
        app.get("/v1/messages", &late).await.status(),
        200,
        "a minute late is within the 2m leeway"
    );
    let too_late = sign(claims("mailgate", 600));
    assert_eq!(app.get("/v1/messages", &too_late).await.status(), 401);
    let elsewhere = sign(claims("another-service", 0));
    assert_eq!(
        app.get("/v1/messages", &elsewhere).await.status(),
        401,
        "wrong audience"
    );
    let mut foreign = claims("mailgate", 0);
    foreign["iss"] = json!("https://another-issuer.test");
    assert_eq!(
        app.get("/v1/messages", &sign(foreign)).await.status(),
        401,
        "wrong issuer"
    );
}

/// The envelope and Message-ID domains; recipient, burst and daily limits, global and
/// per tenant; and `/metrics` without tenant names by default.
#[tokio::test]
async fn delivery_domains_and_tenant_limits_come_from_the_file() {
    let app = spawn_binary(
        "[delivery]\nreturn_path_domain = \"bounce.config.test\"\nmessage_id_domain = \"id.config.test\"\n\
         [limits]\nmax_recipients = 2\ndaily_quota = 2\n\
         [tenants.acme]\nmax_recipients = 1\ndaily_quota = 100\n\
         [tenants.globex]\nburst = 1\nmessages_per_second = 1\ndaily_quota = 100\n",
    )
    .await;
    let id = app.send_ok(&simple_message("domains@example.test")).await;
    let delivered = app.postfix.wait_delivered(&id, 1, WAIT).await;
    let mime = crate::helpers::lf(&delivered[0]);
    assert!(
        mime.contains(&format!("Return-Path: <bounce+{id}-0@bounce.config.test>")),
        "{mime}"
    );
    assert!(mime.contains(&format!("Message-ID: <{id}@id.config.test>")), "{mime}");

    let to = |n: usize| {
        let mut message = simple_message("limits@example.test");
        message["to"] = json!((0..n).map(|i| format!("r{i}@example.test")).collect::<Vec<_>>());
        message
    };
    let code = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    };
    let (acme, globex, initech) = (
        app.token.clone(),
        mint(&app.keys, "globex", "messages:send"),
        mint(&app.keys, "initech", "messages:send"),
    );
    let too_many = (422, "too_many_recipients".to_owned());
    assert_eq!(
        code(app.send_as(&acme, &to(2)).await).await,
        too_many,
        "acme's own cap is 1"
    );
    assert_eq!(
        code(app.send_as(&initech, &to(3)).await).await,
        too_many,
        "the global cap is 2"
    );
    assert_eq!(code(app.send_as(&initech, &to(2)).await).await.0, 202);
    assert_eq!(
        code(app.send_as(&initech, &to(1)).await).await,
        (429, "daily_quota_exceeded".to_owned()),
        "the global daily quota is 2, and every request counts (the refused one too)"
    );
    assert_eq!(code(app.send_as(&globex, &to(1)).await).await.0, 202);
    assert_eq!(
        code(app.send_as(&globex, &to(1)).await).await,
        (429, "rate_limited".to_owned()),
        "globex's bucket holds one"
    );
    let metrics = app.get("/metrics", &app.token).await.text().await.unwrap();
    assert!(!metrics.contains("tenant="), "no tenant names by default: {metrics}");
}

/// A relay that accepts the connection and never says a word: `smtp_timeout` defers.
#[tokio::test]
async fn a_silent_relay_is_given_up_on_after_smtp_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let app = spawn_binary(&format!(
        "[[upstreams]]\nname = \"silent\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         [delivery]\nsmtp_timeout = \"1s\"\n"
    ))
    .await;
    let started = Instant::now();
    let id = app.send_ok(&simple_message("silence@example.test")).await;
    let message = app.wait_for(&id, WAIT, |m| m["status"] == "deferred").await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let diagnostic = message["recipients"][0]["diagnostic"].as_str().unwrap_or_default();
    assert!(diagnostic.contains("1 s"), "{message}");
    held.abort();
}

/// `POST /v1/templates/{name}/render` with `data`: the status and the first error's code.
async fn render_refusal(api: &Api<'_>, name: &str, data: Value) -> (u16, String) {
    let (status, problem) = api
        .post(&format!("/v1/templates/{name}/render"), json!({ "data": data }))
        .await;
    (
        status,
        problem["errors"][0]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Template render bounds: output size and loop work.
#[tokio::test]
async fn template_bounds_come_from_the_file() {
    let app =
        spawn_binary("[templates]\nmax_output_bytes = 200\nmax_loop_iterations = 10\nrender_timeout = \"2s\"\n").await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "echo", "subject": "s", "text": "{{body}}"}))
        .await;
    assert_eq!(
        render_refusal(&api, "echo", json!({"body": "x".repeat(500)})).await,
        (422, "template_output_too_large".to_owned())
    );
    api.create(json!({"name": "loop", "subject": "s", "text": "{{#each items}}.{{/each}}"}))
        .await;
    let items: Vec<u32> = (0..20).collect();
    assert_eq!(
        render_refusal(&api, "loop", json!({ "items": items })).await,
        (422, "template_too_complex".to_owned())
    );
}

/// A render that writes a lot is stopped at `render_timeout`.
#[tokio::test]
async fn a_render_past_render_timeout_is_stopped() {
    let app = spawn_binary("[templates]\nrender_timeout = \"1ms\"\n").await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "long", "subject": "s", "text": "{{#each items}}{{this}} {{/each}}"}))
        .await;
    let items: Vec<String> = (0..200_000).map(|n| format!("item-{n}")).collect();
    assert_eq!(
        render_refusal(&api, "long", json!({ "items": items })).await,
        (422, "template_render_timeout".to_owned())
    );
}

/// An HS256 secret from an environment variable the file names.
#[tokio::test]
async fn an_hs256_secret_from_the_environment_signs_and_checks_tokens() {
    let secret = "an-environment-secret-of-32-bytes-or-more";
    let app = crate::helpers::spawn_binary_with_env(
        "[auth]\nhs256_secret_env = \"CONFIG_TEST_HS256\"\n",
        &[("CONFIG_TEST_HS256", secret)],
    )
    .await;
    assert_eq!(app.get("/v1/messages", &app.token).await.status(), 200);
    let forged = crate::helpers::mint(
        &mailgate::auth::TokenKeys::load(&mailgate::config::Settings {
            storage: mailgate::config::StorageSettings {
                path: app.data.path().join("elsewhere"),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap(),
        "acme",
        "messages:read",
    );
    assert_eq!(
        app.get("/v1/messages", &forged).await.status(),
        401,
        "another key's token"
    );
    assert!(
        !app.data.path().join("dev-hs256.key").exists(),
        "no dev key with a secret configured"
    );
}

/// Provider webhook secrets from files (the `_file` forms of the README's `_env` keys).
#[tokio::test]
async fn provider_webhook_secrets_from_files_authenticate_reports() {
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let secrets = tempfile::tempdir().unwrap();
    let (mailgun, postmark) = (secrets.path().join("mailgun"), secrets.path().join("postmark"));
    std::fs::write(&mailgun, "mg-file-key\n").unwrap();
    std::fs::write(&postmark, "pm:from-a-file\n").unwrap();
    let app = spawn_binary(&format!(
        "[tenants.acme]\nmailgun_signing_key_file = \"{}\"\npostmark_webhook_auth_file = \"{}\"\n",
        mailgun.display(),
        postmark.display()
    ))
    .await;
    let post = |path: &str, auth: Option<String>, body: Value| {
        let mut request = app.client.post(format!("{}{path}", app.address)).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mailgun_body = |key: &str| {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let token = format!("tok-{key}");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{timestamp}{token}").as_bytes());
        let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        json!({"signature": {"timestamp": timestamp, "token": token, "signature": signature},
               "event-data": {"event": "failed", "severity": "permanent", "recipient": "nobody@example.test",
                              "message": {"headers": {"message-id": "unknown@elsewhere.test"}},
                              "delivery-status": {"code": 550, "message": "5.1.1 no such user"}}})
    };
    let mailgun_path = "/v1/bounces/mailgun?tenant=acme";
    assert_eq!(post(mailgun_path, None, mailgun_body("mg-file-key")).await, 202);
    assert_eq!(post(mailgun_path, None, mailgun_body("another-key")).await, 401);
    let complaint = json!({"RecordType": "SpamComplaint", "Email": "nobody@example.test", "Type": "SpamComplaint",
                           "BouncedAt": "2026-11-28T10:00:00Z"});
    let basic = |creds: &str| {
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        ))
    };
    let postmark_path = "/v1/bounces/postmark?tenant=acme";
    assert_eq!(
        post(postmark_path, basic("pm:from-a-file"), complaint.clone()).await,
        202
    );
    assert_eq!(post(postmark_path, basic("pm:guess"), complaint).await, 401);
}

#[tokio::test]
async fn a_second_ctrl_c_exits_without_waiting_for_the_drain() {
    let mut app = spawn_binary("").await;
    // A request that never finishes its body keeps the graceful stop waiting.
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let pid = app.binary().child.id().to_string();
    let interrupt = || assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    interrupt();
    let deadline = Instant::now() + WAIT;
    while !app.stderr().contains("shutting down") {
        assert!(Instant::now() < deadline, "SIGINT was not taken: {}", app.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = Instant::now();
    interrupt();
    let status = loop {
        if let Some(status) = app.binary().child.try_wait().unwrap() {
            break status;
        }
        assert!(
            again.elapsed() < Duration::from_secs(5),
            "the second SIGINT did not end it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130), "{status}");
}

/// `storage.backend = "postgres"` with the URL in the variable `url_env` names (the
/// README's example; `url_file` is what the PostgreSQL integration tests start with):
/// the message is stored in that database and delivered.
#[tokio::test]
async fn a_postgres_url_from_the_variable_url_env_names_stores_and_delivers() {
    let url = crate::helpers::pg_url();
    let app = crate::helpers::spawn_binary_with_env(
        "[storage]\nbackend = \"postgres\"\nurl_env = \"CONFIG_TEST_DATABASE_URL\"\n",
        &[("CONFIG_TEST_DATABASE_URL", &url)],
    )
    .await;
    let id = app.send_ok(&simple_message("ana@example.test")).await;
    app.postfix.wait_delivered(&id, 1, WAIT).await;
    let stored = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("the test PostgreSQL");
        client
            .query_one("SELECT count(*) FROM messages WHERE id = $1", &[&id])
            .expect("the messages table")
            .get::<_, i64>(0)
    })
    .await
    .unwrap();
    assert_eq!(stored, 1, "the message is in PostgreSQL, not in a sled directory");
}
