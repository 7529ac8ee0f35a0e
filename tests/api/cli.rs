//! The command line: check-config, token issue, openapi, and what `serve` logs.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::crash::write_config;
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

#[tokio::test]
async fn json_logs_carry_ids_and_never_a_token_password_or_body() {
    let postfix = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &postfix);
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = dir.path().to_path_buf();
    let token = crate::helpers::mint(
        &mailgate::auth::TokenKeys::load(&settings).unwrap(),
        "acme",
        "messages:send messages:read",
    );
    let mut binary = Binary::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
        free_port(),
        &[("MAILGATE_LOG__FORMAT", "json"), ("MAILGATE_LOG__LEVEL", "debug")],
    );
    binary.wait_healthy().await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    binary.kill();

    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    for secret in [token.as_str(), SMTP_PASSWORD, body_marker] {
        assert!(!logs.contains(secret), "the logs contain `{secret}`");
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
