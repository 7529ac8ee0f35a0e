//! The command line: check-config, token issue, openapi, and what `serve` logs.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::write_config;
use crate::helpers::{free_port, Binary, Postfix, SMTP_PASSWORD};

fn mailgate(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mailgate")
}

#[test]
fn check_config_names_an_unknown_key_and_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[delivery]\nretry_bse = \"1s\"\n").unwrap();
    let out = mailgate(&["check-config", "--config", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delivery.retry_bse"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[http]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
    let out = mailgate(&["check-config", "--config", good.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn token_issue_signs_with_the_dev_key_that_serve_uses() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailgate(
        &[
            "token",
            "issue",
            "--tenant",
            "acme",
            "--scope",
            "messages:send",
            "--ttl",
            "1h",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = dir.path().join("data");
    let principal = mailgate::auth::TokenKeys::load(&settings)
        .unwrap()
        .verify(&token)
        .unwrap();
    assert_eq!(principal.tenant.as_str(), "acme");

    let typo = mailgate(
        &["token", "issue", "--tenant", "acme", "--scope", "mesages:send"],
        dir.path(),
    );
    assert_eq!(typo.status.code(), Some(1));
}

#[test]
fn openapi_command_prints_the_committed_document() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailgate(&["openapi"], dir.path());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        printed == committed,
        "regenerate with `cargo run -- openapi > openapi/openapi.json`"
    );
}

/// Makes an Ed25519 key pair with the openssl CLI: (private PEM, public PEM) paths.
fn ed25519_keypair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (private, public) = (dir.join("signing.pem"), dir.join("signing.pub"));
    for args in [
        vec!["genpkey", "-algorithm", "ed25519", "-out", private.to_str().unwrap()],
        vec![
            "pkey",
            "-pubout",
            "-in",
            private.to_str().unwrap(),
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        assert!(
            Command::new("openssl").args(&args).status().unwrap().success(),
            "openssl {args:?}"
        );
    }
    (private, public)
}

/// A whole run — asymmetric tokens minted by `token issue`, a send delivered through
/// Postfix with SMTP AUTH, a signed webhook delivery, a refused request, `/metrics` —
/// with debug-level JSON logs: no secret used anywhere in it appears in the logs or in
/// `/metrics`, and every line is structured with its ids.
#[tokio::test]
async fn a_full_run_logs_ids_and_never_a_secret() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &postfix,
        "[log]\nformat = \"json\"\nlevel = \"debug\"\n[webhooks]\nallow_private_targets = true\n",
    );
    let (private, public) = ed25519_keypair(dir.path());
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[auth]\npublic_keys = [{{ kid = \"k1\", alg = \"EdDSA\", pem_file = \"{}\" }}]\n\
         signing_key = {{ kid = \"k1\", alg = \"EdDSA\", pem_file = \"{}\" }}\n",
        public.display(),
        private.display()
    ));
    std::fs::write(&config, toml).unwrap();
    let issued = mailgate(
        &[
            "token",
            "issue",
            "--config",
            config.to_str().unwrap(),
            "--tenant",
            "acme",
            "--scope",
            "messages:send messages:read webhooks:manage",
        ],
        dir.path(),
    );
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    let mut binary = Binary::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
        free_port(),
        &[],
    );
    binary.wait_healthy().await;
    let client = crate::helpers::http();
    let receiver = crate::webhooks::Receiver::start(204).await;
    let hook: Value = client
        .post(format!("{}/v1/webhooks", binary.address))
        .bearer_auth(&token)
        .json(&json!({"url": receiver.url, "events": ["message.sent"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook_secret = hook["secret"].as_str().expect("a webhook secret").to_owned();

    let body_marker = "BODY-MARKER-7d1f";
    let response = binary
        .send(
            &token,
            &json!({"from": "a@sender.mailgate.test", "to": "logs@example.test",
                    "subject": "log test", "text": body_marker}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A refused request must not echo the offending value back or into the logs.
    let refused = binary
        .send(
            &token,
            &json!({"from": "a@sender.mailgate.test", "to": "x@example.test", "subject": "s",
                    "text": "t", "tags": body_marker}),
        )
        .await;
    assert_eq!(refused.status(), 422);
    assert!(
        !refused.text().await.unwrap().contains(body_marker),
        "a 422 must not echo values"
    );
    postfix.wait_delivered(&id, 1, Duration::from_secs(20)).await;
    receiver.wait("the signed message.sent event", |r| !r.is_empty()).await;
    let metrics = crate::helpers::metrics_text(&binary.address).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    binary.kill();

    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let private_pem = std::fs::read_to_string(&private).unwrap();
    let private_body = private_pem.lines().nth(1).expect("the key's base64 line");
    let webhook_key = webhook_secret.trim_start_matches("whsec_");
    for secret in [
        token.as_str(),
        SMTP_PASSWORD,
        &webhook_secret,
        webhook_key,
        private_body,
        body_marker,
    ] {
        assert!(!logs.contains(secret), "the logs contain `{secret}`");
        assert!(!metrics.contains(secret), "/metrics contains `{secret}`");
    }
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let outcome = lines
        .iter()
        .find(|l| l["fields"]["message"] == "recipient outcome")
        .expect("a recipient outcome line");
    assert_eq!(outcome["span"]["message_id"], id);
    let accepted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "message accepted")
        .expect("accepted line");
    assert!(
        accepted["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["request_id"].is_string()),
        "{accepted}"
    );
}

/// Writes a JWKS file with the public half of each `(kid, Ed25519 private PEM)`.
fn write_jwks(path: &std::path::Path, keys: &[(&str, &std::path::Path)]) {
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, private)| {
            let encoding = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(private).unwrap()).unwrap();
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::EdDSA).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    let set = jsonwebtoken::jwk::JwkSet { keys };
    // Write then rename, as a config manager would: the reader never sees half a file.
    let partial = path.with_extension("tmp");
    std::fs::write(&partial, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

#[tokio::test]
async fn public_keys_reload_when_the_jwks_file_changes_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_key, _) = ed25519_keypair(&old_dir);
    let (new_key, _) = ed25519_keypair(&new_dir);
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[("old", &old_key)]);
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n\n[auth]\njwks_file = \"{}\"\n",
            dir.path().join("data").display(),
            jwks.display()
        ),
    )
    .unwrap();
    let mut binary = Binary::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
        free_port(),
        &[("MAILGATE_LOG__LEVEL", "info")],
    );
    binary.wait_healthy().await;
    let token = |kid: &str, private: &std::path::Path| {
        let claims = json!({"sub": "t", "tenant": "acme", "scope": "messages:read",
                            "exp": jsonwebtoken::get_current_timestamp() + 600});
        let header = jsonwebtoken::Header {
            kid: Some(kid.to_owned()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA)
        };
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(private).unwrap()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let client = crate::helpers::http();
    let status = |token: String| {
        let request = client.get(format!("{}/v1/messages", binary.address)).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token("old", &old_key)).await, 200);
    assert_eq!(status(token("new", &new_key)).await, 401);

    write_jwks(&jwks, &[("old", &old_key), ("new", &new_key)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(token("new", &new_key)).await != 200 {
        assert!(std::time::Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pid = binary.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
        if logs
            .lines()
            .any(|l| l.contains("public keys reloaded") && l.contains("SIGHUP"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload on SIGHUP:\n{logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(token("new", &new_key)).await, 200, "still serving after SIGHUP");
}
