//! The README's run command: no config at all, a dev token printed, sandbox delivery.

use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{free_port, simple_message, Binary};

#[tokio::test]
async fn the_binary_with_no_config_prints_a_token_and_delivers_to_the_sandbox() {
    let cwd = tempfile::tempdir().unwrap();
    // Only the port is overridden, so that tests can run in parallel with a dev server.
    let mut binary = Binary::spawn(&["serve"], cwd.path(), free_port(), &[]);
    binary.wait_healthy().await;
    let stdout = binary.child.stdout.take().unwrap();
    let log = cwd.path().join("stderr.log");
    let token = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("Dev token") {
                return lines.next().unwrap().unwrap();
            }
        }
        panic!(
            "no dev token printed: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    })
    .await
    .unwrap();
    assert!(cwd.path().join("data/dev-hs256.key").is_file());

    let client = crate::helpers::http();
    let response = binary.send(&token, &simple_message("sandbox@example.test")).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(location, format!("/v1/messages/{id}"));

    let eml = cwd.path().join(format!("data/sandbox/{id}-0.eml"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !eml.is_file() {
        assert!(Instant::now() < deadline, "no sandbox file {}", eml.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::read_to_string(&eml)
        .unwrap()
        .contains("Subject: Hello from the tests"));
    let message: Value = client
        .get(format!("{}{location}", binary.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(message["recipients"][0]["email"], "sandbox@example.test");
}
