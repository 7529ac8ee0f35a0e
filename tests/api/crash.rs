//! A 202 is a promise: SIGKILL right after a burst of acceptances loses nothing.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{free_port, mint, simple_message, write_config, Binary, Postfix};

const MAX_CONNECTIONS: usize = 4;
/// Delivery workers: each may have one transaction whose outcome is not yet on disk.
const WORKERS: usize = MAX_CONNECTIONS * mailgate::startup::WORKERS_PER_CONNECTION;
const BURST: usize = 60;

/// Sends one message per index concurrently; every one must be answered 202.
async fn send_burst(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let sends = range.map(|i| {
        let request = client
            .post(format!("{address}/v1/messages"))
            .bearer_auth(token)
            .json(&simple_message(&format!("crash-{i}@example.test")));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            let body: Value = response.json().await.unwrap();
            body["id"].as_str().unwrap().to_owned()
        }
    });
    join_all(sends).await
}

/// A data dir with a config delivering to `postfix`, and a token its dev key accepts.
fn prepare(postfix: &Postfix, extra: &str) -> (tempfile::TempDir, String, String) {
    let data = tempfile::tempdir().unwrap();
    let config = write_config(data.path(), postfix, extra);
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = data.path().to_path_buf();
    let token = mint(
        &mailgate::auth::TokenKeys::load(&settings).unwrap(),
        "acme",
        "messages:send messages:read",
    );
    (data, config.to_string_lossy().into_owned(), token)
}

#[tokio::test]
async fn sigkill_after_a_burst_of_202s_loses_no_accepted_message() {
    let postfix = Postfix::shared();
    let (data, config_arg, token) = prepare(&postfix, "");

    let mut first = Binary::spawn(&["serve", "--config", &config_arg], data.path(), free_port(), &[]);
    first.wait_healthy().await;
    let client = crate::helpers::http();
    // Half the burst first, then the rest once delivery is flowing, so the kill lands
    // in the middle of SMTP transactions rather than before the first one.
    let mut ids = send_burst(&client, &first.address, &token, 0..BURST / 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ids.iter().any(|id| !postfix.delivered(id).is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was delivered before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ids.extend(send_burst(&client, &first.address, &token, BURST / 2..BURST).await);
    first.kill();
    let delivered_before_restart = ids.iter().filter(|id| !postfix.delivered(id).is_empty()).count();

    let mut second = Binary::spawn(&["serve", "--config", &config_arg], data.path(), free_port(), &[]);
    second.wait_healthy().await;
    let mut duplicates = 0;
    for id in &ids {
        let copies = postfix.wait_delivered(id, 1, Duration::from_secs(60)).await.len();
        duplicates += copies - 1;
    }
    // Let any last in-flight retry land before counting for good.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let duplicates_final: usize = ids.iter().map(|id| postfix.delivered(id).len() - 1).sum();
    eprintln!(
        "crash test: {BURST} accepted, {delivered_before_restart} delivered before SIGKILL, \
         all delivered after restart, {duplicates_final} duplicate(s) (bound {WORKERS})"
    );
    assert!(duplicates <= duplicates_final);
    assert!(
        duplicates_final <= WORKERS,
        "a duplicate is allowed only for a transaction whose outcome was not on disk at the kill: \
         at most one per worker"
    );
    assert!(
        delivered_before_restart < BURST,
        "the kill must land before the burst is fully delivered, or this proves nothing"
    );
    let status_client = crate::helpers::http();
    for id in &ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message: Value = status_client
                .get(format!("{}/v1/messages/{id}", second.address))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if message["status"] == "sent" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{message}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_transactions_and_leaves_the_rest_queued() {
    let postfix = Postfix::shared();
    // Paced to 20 transactions a second, the burst takes 3 s: SIGTERM lands mid-way.
    let scratch = tempfile::tempdir().unwrap();
    let paced = postfix.relay(
        scratch.path(),
        "postfix",
        postfix.port,
        "starttls",
        &format!("max_connections = {MAX_CONNECTIONS}\nrate_per_second = 20"),
    );
    let (data, config_arg, token) = prepare(&postfix, &paced);
    let mut first = Binary::spawn(&["serve", "--config", &config_arg], data.path(), free_port(), &[]);
    first.wait_healthy().await;
    let client = crate::helpers::http();
    let ids = send_burst(&client, &first.address, &token, 0..BURST).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ids.iter().any(|id| !postfix.delivered(id).is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was delivered before SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = first.child.id().to_string();
    let terminated = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            terminated.elapsed() < Duration::from_secs(20),
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drained_in = terminated.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        drained_in < Duration::from_secs(5),
        "the drain waited for the queue: {drained_in:?}"
    );
    let delivered_before_restart = ids.iter().filter(|id| !postfix.delivered(id).is_empty()).count();
    assert!(
        delivered_before_restart < BURST,
        "SIGTERM must leave work queued, or this proves nothing"
    );

    let mut second = Binary::spawn(&["serve", "--config", &config_arg], data.path(), free_port(), &[]);
    second.wait_healthy().await;
    for id in &ids {
        postfix.wait_delivered(id, 1, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let duplicates: usize = ids.iter().map(|id| postfix.delivered(id).len() - 1).sum();
    eprintln!(
        "drain test: {BURST} accepted, exit {drained_in:?} after SIGTERM with {delivered_before_restart} \
         delivered, the rest after restart, {duplicates} duplicate(s)"
    );
    assert_eq!(
        duplicates, 0,
        "a drained transaction is recorded, so nothing is sent twice"
    );
}
