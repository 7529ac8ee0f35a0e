//! Several nodes on one PostgreSQL: any node accepts, every node delivers, and losing a
//! node loses no accepted message.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{free_port, http, mint, pg_url, simple_message, write_config, Binary, Postfix};

const NODES: usize = 3;
const BURST: usize = 90;
/// Each node's relay sends at most this many messages a second, so the burst takes a
/// few seconds and the kill lands in the middle of it.
const RATE: usize = 10;

/// Sends message `i` to node `i % NODES`; the ids answered 202 (a request to a node
/// killed meanwhile fails, and was never a promise).
async fn send_burst(addresses: &[String], token: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let client = http();
    let sends = range.map(|i| {
        let request = client
            .post(format!("{}/v1/messages", addresses[i % addresses.len()]))
            .bearer_auth(token)
            .json(&simple_message(&format!("cluster-{i}@example.test")));
        async move {
            let response = request.send().await.ok()?;
            if response.status() != 202 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            Some(body["id"].as_str()?.to_owned())
        }
    });
    join_all(sends).await.into_iter().flatten().collect()
}

#[tokio::test]
async fn three_nodes_share_the_work_and_a_killed_one_loses_no_accepted_message() {
    let postfix = Postfix::shared();
    let shared = tempfile::tempdir().unwrap();
    let url_file = shared.path().join("database-url");
    std::fs::write(&url_file, pg_url()).unwrap();
    let secret_file = shared.path().join("hs256");
    std::fs::write(&secret_file, "cluster-test-secret-that-is-long-enough-for-hs256").unwrap();
    let extra = format!(
        "[storage]\nbackend = \"postgres\"\nurl_file = \"{}\"\n[auth]\nhs256_secret_file = \"{}\"\n",
        url_file.display(),
        secret_file.display()
    );
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let data = tempfile::tempdir().unwrap();
        let relay = postfix.relay(
            data.path(),
            "postfix",
            postfix.port,
            "starttls",
            &format!("max_connections = 4\nrate_per_second = {RATE}"),
        );
        let config = write_config(data.path(), &postfix, &format!("{extra}\n{relay}"));
        let mut node = Binary::spawn(
            &["serve", "--config", &config.to_string_lossy()],
            data.path(),
            free_port(),
            &[],
        );
        node.wait_healthy().await;
        nodes.push(node);
        dirs.push(data);
    }
    let mut settings = mailgate::config::Settings::default();
    settings.auth.hs256_secret_file = Some(secret_file.clone());
    let token = mint(
        &mailgate::auth::TokenKeys::load(&settings).unwrap(),
        "acme",
        "messages:send messages:read",
    );
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();

    // The whole burst accepted, then node 0 killed once delivery is flowing: it holds
    // leases and has SMTP transactions open.
    let ids = send_burst(&addresses, &token, 0..BURST).await;
    assert_eq!(ids.len(), BURST, "every node accepts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = |counts: Vec<usize>| counts.iter().filter(|c| **c > 0).count();
    while delivered(postfix.delivered_counts(&ids)) < NODES * RATE / 2 {
        assert!(Instant::now() < deadline, "too little was delivered before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].kill();
    let killed_at = Instant::now();
    let delivered_at_kill = delivered(postfix.delivered_counts(&ids));

    let deadline = Instant::now() + Duration::from_secs(90);
    while delivered(postfix.delivered_counts(&ids)) < ids.len() {
        assert!(Instant::now() < deadline, "not every accepted message was delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_delivered_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs: String = dirs[1..]
        .iter()
        .map(|d| std::fs::read_to_string(d.path().join("stderr.log")).unwrap_or_default())
        .collect();
    let reclaimed: Vec<&String> = ids
        .iter()
        .filter(|id| {
            logs.lines()
                .any(|l| l.contains("took back the lease") && l.contains(id.as_str()))
        })
        .collect();
    let duplicated: Vec<(&String, usize)> = ids
        .iter()
        .zip(postfix.delivered_counts(&ids))
        .filter(|(_, copies)| *copies > 1)
        .collect();
    eprintln!(
        "cluster crash test: {} accepted by {NODES} nodes, {delivered_at_kill} delivered when node 0 was \
         SIGKILLed, all delivered {:.1}s after the kill; {} lease(s) taken back from node 0, {} duplicate(s): {:?}",
        ids.len(),
        all_delivered_after.as_secs_f64(),
        reclaimed.len(),
        duplicated.len(),
        duplicated
    );
    assert!(
        delivered_at_kill < ids.len(),
        "the kill must land before the burst is delivered"
    );
    for (id, copies) in &duplicated {
        assert_eq!(*copies, 2, "{id} was sent {copies} times");
        assert!(
            reclaimed.contains(id),
            "{id} was sent twice but no node took its lease back from the killed one: two live \
             nodes sent it"
        );
    }
    let client = http();
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let message: Value = client
                .get(format!("{}/v1/messages/{id}", addresses[1]))
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
            assert!(Instant::now() < deadline, "{message}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
