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

#[tokio::test]
async fn check_config_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("short.toml");
    std::fs::write(&file, "[auth]\nhs256_secret_env = \"SHORT_SECRET\"\n").unwrap();
    let config = file.to_string_lossy().into_owned();
    let envs = [("SHORT_SECRET", "abc")];
    let checked = mailgate(&["check-config", "--config", &config], dir.path(), &envs);
    let port = free_port().to_string();
    let served = mailgate(
        &["serve", "--config", &config],
        dir.path(),
        &[envs[0], ("MAILGATE_HTTP__LISTEN", &format!("127.0.0.1:{port}"))],
    );
    for (command, out) in [("check-config", &checked), ("serve", &served)] {
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(out));
        assert!(stderr(out).contains("at least 32 bytes"), "{command}: {}", stderr(out));
        assert!(!stderr(out).contains("abc"), "{command} never prints the secret");
    }
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
    tokio::time::sleep(Duration::from_millis(300)).await;
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
}

/// The envelope and Message-ID domains, recipient limits (global and per tenant).
#[tokio::test]
async fn delivery_domains_and_recipient_limits_come_from_the_file() {
    let app = spawn_binary(
        "[delivery]\nreturn_path_domain = \"bounce.config.test\"\nmessage_id_domain = \"id.config.test\"\n\
         [limits]\nmax_recipients = 3\n[tenants.acme]\nmax_recipients = 1\nburst = 5\n",
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
    let mut two = simple_message("one@example.test");
    two["to"] = json!(["one@example.test", "two@example.test"]);
    let refused = app.send_as(&app.token, &two).await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_recipients", "{problem}");
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

/// Template render bounds: output size and loop work.
#[tokio::test]
async fn template_bounds_come_from_the_file() {
    let app =
        spawn_binary("[templates]\nmax_output_bytes = 200\nmax_loop_iterations = 10\nrender_timeout = \"2s\"\n").await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "echo", "subject": "s", "text": "{{body}}"}))
        .await;
    let (status, problem) = api
        .post("/v1/templates/echo/render", json!({"data": {"body": "x".repeat(500)}}))
        .await;
    assert_eq!(
        (status, problem["errors"][0]["code"].as_str()),
        (422, Some("template_output_too_large")),
        "{problem}"
    );
    api.create(json!({"name": "loop", "subject": "s", "text": "{{#each items}}.{{/each}}"}))
        .await;
    let items: Vec<u32> = (0..20).collect();
    let (status, problem) = api
        .post("/v1/templates/loop/render", json!({"data": {"items": items}}))
        .await;
    assert_eq!(
        (status, problem["errors"][0]["code"].as_str()),
        (422, Some("template_too_complex")),
        "{problem}"
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
    let (status, problem) = api
        .post("/v1/templates/long/render", json!({"data": {"items": items}}))
        .await;
    assert_eq!(
        (status, problem["errors"][0]["code"].as_str()),
        (422, Some("template_render_timeout")),
        "{problem}"
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
