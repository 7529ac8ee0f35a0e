//! The upstream pool against the real Postfix: failover and recovery, pacing, and
//! connection reuse. The primary relay is Postfix's STARTTLS port reached through a TCP
//! forwarder that the test can stop and start (an outage without disturbing the Postfix
//! other tests share); the secondary is the same Postfix's implicit-TLS port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{mint, simple_message, spawn_app_with, Postfix, TestApp};
use mailgate::config::{ConfigDuration, TlsMode};

const WAIT: Duration = Duration::from_secs(30);

/// Forwards TCP connections on a fixed loopback port to `target`; `stop` closes the
/// port and every connection, `start` opens it again. Counts accepted connections.
struct Forwarder {
    port: u16,
    target: String,
    connections: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    async fn new(target: String) -> Self {
        let port = crate::helpers::free_port();
        let mut forwarder = Self {
            port,
            target,
            connections: Arc::default(),
            task: None,
        };
        forwarder.start().await;
        forwarder
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, connections) = (self.target.clone(), Arc::clone(&self.connections));
        self.task = Some(tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                pipes.spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
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
    let port = forwarder.port;
    let app = spawn_app_with(|s| {
        let password = s.upstreams[0].password_file.clone().unwrap();
        let mut primary = s.upstreams[0].clone();
        primary.name = "primary".into();
        primary.port = port;
        let mut secondary = postfix.upstream(TlsMode::Tls, &password);
        secondary.name = "secondary".into();
        secondary.weight = 0;
        s.upstreams = vec![primary, secondary];
        s.delivery.circuit_cooldown = ConfigDuration(Duration::from_secs(1));
    })
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
async fn an_upstream_is_paced_to_its_rate_and_reuses_its_connections() {
    let postfix = Postfix::shared();
    let forwarder = Forwarder::new(format!("127.0.0.1:{}", postfix.port)).await;
    let port = forwarder.port;
    let app = spawn_app_with(|s| {
        s.upstreams[0].port = port;
        s.upstreams[0].rate_per_second = 4;
        s.upstreams[0].max_connections = 2;
    })
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
    assert!(
        took >= Duration::from_millis(2700),
        "12 messages at 4/s went out in {took:?}"
    );
    let mut per_second = std::collections::BTreeMap::new();
    for second in delivery_seconds(&postfix, &ids) {
        *per_second.entry(second).or_insert(0) += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 5),
        "deliveries per second: {per_second:?}"
    );
    let connections = forwarder.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "12 messages took {connections} connections (pool of 2)"
    );
}
