//! The upstream pool against the real Postfix, each test starting the real binary with
//! a config file of two `[[upstreams]]`, as a user would: failover, the circuit and
//! recovery, pacing and connection reuse, the per-tenant cap. A relay is Postfix's
//! STARTTLS port reached through a TCP forwarder that the test can stop, start or slow
//! down (an outage without disturbing the Postfix other tests share), or the same
//! Postfix's implicit-TLS port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{mint, simple_message, spawn_binary, Postfix, TestApp};

const WAIT: Duration = Duration::from_secs(30);

/// Forwards TCP connections on a fixed loopback port to `target`; `stop` closes the
/// port and every connection, `start` opens it again. Counts accepted connections.
struct Forwarder {
    port: u16,
    target: String,
    connections: Arc<AtomicUsize>,
    /// Added before each chunk the client sends, so every SMTP command is slow.
    delay: Duration,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    async fn new(target: String) -> Self {
        Self::slowed(target, Duration::ZERO).await
    }

    async fn slowed(target: String, delay: Duration) -> Self {
        let port = crate::helpers::free_port();
        let mut forwarder = Self {
            port,
            target,
            connections: Arc::default(),
            delay,
            task: None,
        };
        forwarder.start().await;
        forwarder
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, connections, delay) = (self.target.clone(), Arc::clone(&self.connections), self.delay);
        self.task = Some(tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                pipes.spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    if delay.is_zero() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    let (mut client_in, mut client_out) = client.into_split();
                    let (mut upstream_in, mut upstream_out) = upstream.into_split();
                    let answers = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut upstream_in, &mut client_out).await;
                    });
                    let mut chunk = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_in.read(&mut chunk).await {
                        tokio::time::sleep(delay).await;
                        if upstream_out.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                    answers.abort();
                });
            }
        }));
    }

    /// Aborting the task drops the listener and (with the JoinSet) every pipe.
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn upstreams(app: &TestApp) -> Value {
    let admin = mint(&app.keys, "acme", "admin");
    app.get("/v1/upstreams", &admin).await.json().await.unwrap()
}

fn sent_by(list: &Value, name: &str) -> u64 {
    let upstream = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap();
    upstream["sent"].as_u64().unwrap()
}

async fn send_and_deliver(app: &TestApp, count: usize, tag: &str) {
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(app.send_ok(&simple_message(&format!("{tag}-{n}@example.test"))).await);
    }
    for id in ids {
        app.postfix.wait_delivered(&id, 1, WAIT).await;
        // Postfix can hold the message before the relay's counters move: the recorded
        // outcome comes after them.
        app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;
    }
}

#[tokio::test]
async fn mail_fails_over_to_the_secondary_and_returns_when_the_primary_recovers() {
    let postfix = Postfix::shared();
    let mut forwarder = Forwarder::new(format!("127.0.0.1:{}", postfix.port)).await;
    let scratch = tempfile::tempdir().unwrap();
    let app = spawn_binary(&format!(
        "{}{}[delivery]\ncircuit_cooldown = \"1s\"\n",
        postfix.relay(scratch.path(), "primary", forwarder.port, "starttls", ""),
        postfix.relay(scratch.path(), "secondary", postfix.port + 1, "tls", "weight = 0"),
    ))
    .await;

    send_and_deliver(&app, 3, "before").await;
    let list = upstreams(&app).await;
    assert_eq!(
        (sent_by(&list, "primary"), sent_by(&list, "secondary")),
        (3, 0),
        "{list}"
    );

    forwarder.stop();
    send_and_deliver(&app, 4, "outage").await;
    let list = upstreams(&app).await;
    assert_eq!(
        (sent_by(&list, "primary"), sent_by(&list, "secondary")),
        (3, 4),
        "{list}"
    );
    assert_eq!(
        list["data"][0]["state"], "open",
        "three refused connections open the circuit: {list}"
    );
    let ready: Value = app.get("/readyz", &app.token).await.json().await.unwrap();
    assert_eq!(
        (
            &ready["checks"]["upstream:primary"],
            &ready["checks"]["upstream:secondary"],
            &ready["status"]
        ),
        (&Value::Bool(false), &Value::Bool(true), &Value::from("ready")),
        "{ready}"
    );

    forwarder.start().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The first transaction after the cooldown probes the primary (others meanwhile go
    // to the secondary); its success closes the circuit for the rest.
    send_and_deliver(&app, 1, "probe").await;
    send_and_deliver(&app, 2, "recovered").await;
    let list = upstreams(&app).await;
    assert_eq!(
        (sent_by(&list, "primary"), sent_by(&list, "secondary")),
        (6, 4),
        "{list}"
    );
    assert_eq!(list["data"][0]["state"], "closed");
    let forbidden = app
        .get("/v1/upstreams", &mint(&app.keys, "acme", "messages:send"))
        .await;
    assert_eq!(forbidden.status(), 403, "admin only");
}

/// Maildir file names start with the delivery time in seconds.
fn delivery_seconds(postfix: &Postfix, ids: &[String]) -> Vec<u64> {
    let entries = std::fs::read_dir(postfix.dir.join("sink/new")).unwrap();
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            ids.iter().any(|id| text.contains(&format!("<{id}@")))
        })
        .filter_map(|e| e.file_name().to_str()?.split('.').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn upstreams_are_paced_to_their_rates_and_reuse_their_connections() {
    let postfix = Postfix::shared();
    let target = format!("127.0.0.1:{}", postfix.port);
    let (first, second) = (Forwarder::new(target.clone()).await, Forwarder::new(target).await);
    let scratch = tempfile::tempdir().unwrap();
    let paced = "rate_per_second = 2\nmax_connections = 2";
    let app = spawn_binary(&format!(
        "{}{}",
        postfix.relay(scratch.path(), "first", first.port, "starttls", paced),
        postfix.relay(scratch.path(), "second", second.port, "starttls", paced),
    ))
    .await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(app.send_ok(&simple_message(&format!("paced-{n}@example.test"))).await);
    }
    for id in &ids {
        postfix.wait_delivered(id, 1, WAIT).await;
    }
    let took = started.elapsed();
    // Two relays at 2/s each: 12 transactions need at least 2.5 s (each relay's first
    // goes at once), however the weights share them out.
    assert!(
        took >= Duration::from_millis(2400),
        "12 messages at 2 × 2/s went out in {took:?}"
    );
    let mut per_second = std::collections::BTreeMap::new();
    for second in delivery_seconds(&postfix, &ids) {
        *per_second.entry(second).or_insert(0) += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 6),
        "deliveries per second: {per_second:?}"
    );
    for (name, forwarder) in [("first", &first), ("second", &second)] {
        let connections = forwarder.connections.load(Ordering::SeqCst);
        assert!(connections <= 2, "{name}: {connections} connections for a pool of 2");
    }
    let list = upstreams(&app).await;
    assert_eq!(sent_by(&list, "first") + sent_by(&list, "second"), 12, "{list}");
    assert_eq!(list["data"][0]["rate_per_second"], 2, "{list}");
}

#[tokio::test]
async fn a_tenant_at_its_cap_on_one_relay_overflows_to_the_next() {
    let postfix = Postfix::shared();
    // Every command through the primary takes 50 ms more, so a burst's transactions
    // overlap there and the cap of one has something to hold back.
    let slow = Forwarder::slowed(format!("127.0.0.1:{}", postfix.port), Duration::from_millis(50)).await;
    let scratch = tempfile::tempdir().unwrap();
    let app = spawn_binary(&format!(
        "{}{}",
        postfix.relay(
            scratch.path(),
            "primary",
            slow.port,
            "starttls",
            "tenant_max_connections = 1"
        ),
        postfix.relay(scratch.path(), "secondary", postfix.port + 1, "tls", "weight = 0"),
    ))
    .await;
    let bodies: Vec<Value> = (0..8)
        .map(|n| simple_message(&format!("capped-{n}@example.test")))
        .collect();
    let ids = futures_util::future::join_all(bodies.iter().map(|body| app.send_ok(body))).await;
    for id in &ids {
        app.wait_for(id, WAIT, |m| m["status"] == "sent").await;
    }
    let list = upstreams(&app).await;
    let (primary, secondary) = (sent_by(&list, "primary"), sent_by(&list, "secondary"));
    assert_eq!(primary + secondary, 8, "{list}");
    assert!(
        primary >= 1 && secondary >= 1,
        "with one transaction of the tenant at a time on the primary (which has 4 connections), \
         the rest of the burst goes to the weight-0 secondary: {list}"
    );
    assert_eq!(
        slow.connections.load(Ordering::SeqCst),
        1,
        "one transaction at a time needs one connection"
    );
    assert_eq!(list["data"][0]["tenant_max_connections"], 1, "{list}");
}

#[tokio::test]
async fn a_pooled_connection_idle_past_idle_timeout_is_closed_and_the_next_send_opens_one() {
    let postfix = Postfix::shared();
    let forwarder = Forwarder::new(format!("127.0.0.1:{}", postfix.port)).await;
    let scratch = tempfile::tempdir().unwrap();
    // The password from an environment variable named in the file, as the README shows.
    let app = crate::helpers::spawn_binary_with_env(
        &postfix.relay(
            scratch.path(),
            "idle",
            forwarder.port,
            "starttls",
            "idle_timeout = \"2s\"\npassword_env = \"IDLE_RELAY_PASSWORD\"",
        ),
        &[("IDLE_RELAY_PASSWORD", crate::helpers::SMTP_PASSWORD)],
    )
    .await;
    send_and_deliver(&app, 1, "warm").await;
    send_and_deliver(&app, 1, "reused").await;
    assert_eq!(forwarder.connections.load(Ordering::SeqCst), 1, "reused while fresh");
    tokio::time::sleep(Duration::from_secs(3)).await;
    send_and_deliver(&app, 1, "after-idle").await;
    assert_eq!(
        forwarder.connections.load(Ordering::SeqCst),
        2,
        "a connection idle for longer than idle_timeout is not reused"
    );
}
