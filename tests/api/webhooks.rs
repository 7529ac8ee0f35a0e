//! Webhooks against a real HTTP receiver in the test process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{
    free_port, mint, simple_message, spawn_app_with, spawn_binary, Backend, Binary, Postfix, TestApp,
};

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP endpoint that records every request and answers `status`.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(AtomicU16::new(status));
        let (log, code) = (Arc::clone(&received), Arc::clone(&answer));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            let (log, code) = (Arc::clone(&log), Arc::clone(&code));
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (log, code) = (Arc::clone(&log), Arc::clone(&code));
                async move {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                        .collect();
                    log.lock().unwrap().push(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(code.load(Ordering::SeqCst)).unwrap())
                        .finish()
                }
            }))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .run();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            received,
            status: answer,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received.
    pub async fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {what} not seen; got {} requests",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn json_of(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Verifies a delivery the way a Standard Webhooks receiver does.
fn verifies(r: &Received, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    let signed = format!("{}.{}.", r.headers["webhook-id"], r.headers["webhook-timestamp"]);
    mac.update(signed.as_bytes());
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.headers["webhook-signature"].split(' ').any(|s| s == expected)
}

async fn app_with_fast_retries() -> TestApp {
    app_with_fast_retries_on(Backend::Sled).await
}

/// The binary with fast webhook retries in its config file, on `backend`.
async fn app_with_fast_retries_on(backend: Backend) -> TestApp {
    spawn_binary(&format!(
        "[webhooks]\nallow_private_targets = true\nretry_base = \"200ms\"\nretry_max = \"400ms\"\n\
         request_timeout = \"2s\"\n{}",
        backend.toml()
    ))
    .await
}

pub async fn create_hook(app: &TestApp, url: &str, events: Value) -> (u16, Value) {
    let token = mint(&app.keys, "acme", "webhooks:manage");
    let response = app
        .client
        .post(format!("{}/v1/webhooks", app.address))
        .bearer_auth(&token)
        .json(&json!({"url": url, "events": events}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

crate::on_both_backends!(events_arrive_signed_per_standard_webhooks);
async fn events_arrive_signed_per_standard_webhooks(backend: Backend) {
    let app = app_with_fast_retries_on(backend).await;
    let receiver = Receiver::start(204).await;
    let (status, hook) = create_hook(&app, &receiver.url, json!(["*"])).await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    let id = app.send_ok(&simple_message("hooked@example.test")).await;
    let got = receiver.wait("message.sent", |all| !all.is_empty()).await;
    let delivery = &got[0];
    let event = json_of(delivery);
    assert_eq!(event["type"], "message.sent");
    assert_eq!(event["data"]["message_id"], id.as_str());
    assert_eq!(delivery.headers["webhook-id"], event["id"].as_str().unwrap());
    let timestamp: i64 = delivery.headers["webhook-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(verifies(delivery, &secret), "the signature must verify with the secret");
    assert!(!verifies(delivery, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));

    let (_, events) = {
        let r = app.get("/v1/events", &app.token).await;
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        events["data"][0], event,
        "the webhook body is exactly the event of the stream"
    );
    let token = mint(&app.keys, "acme", "webhooks:manage");
    let hook_id = hook["id"].as_str().unwrap();
    let deliveries: Value = app
        .get(&format!("/v1/webhooks/{hook_id}/deliveries"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries["data"][0]["outcome"], "delivered");
    assert_eq!(deliveries["data"][0]["status_code"], 204);

    // Rotation: both secrets sign for a while.
    let rotated: Value = app
        .client
        .post(format!("{}/v1/webhooks/{hook_id}/rotate-secret", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let replay = app
        .client
        .post(format!("{}/v1/webhooks/{hook_id}/replay", app.address))
        .bearer_auth(&token)
        .json(&json!({"event_id": event["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let got = receiver.wait("the replay", |all| all.len() >= 2).await;
    let replayed = &got[1];
    assert_eq!(replayed.body, delivery.body, "a replay re-sends the same event");
    assert!(verifies(replayed, &secret) && verifies(replayed, &new_secret));
}

#[tokio::test]
async fn a_receiver_that_is_down_for_a_while_gets_every_event_once_up() {
    let app = app_with_fast_retries().await;
    let receiver = Receiver::start(503).await;
    create_hook(&app, &receiver.url, json!(["message.sent"])).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.send_ok(&simple_message(&format!("down-hook-{i}@example.test")))
                .await,
        );
    }
    receiver.wait("failed attempts", |all| all.len() >= 6).await;
    receiver.status.store(200, Ordering::SeqCst);
    let all = receiver
        .wait("every event after recovery", |all| {
            ids.iter()
                .all(|id| all.iter().any(|r| json_of(r)["data"]["message_id"] == id.as_str()))
        })
        .await;
    // webhook-id is stable: every attempt of one event carries the same id and body.
    let mut by_id: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in &all {
        by_id.entry(r.headers["webhook-id"].clone()).or_default().push(r);
    }
    assert_eq!(by_id.len(), 3, "one event per message");
    for attempts in by_id.values() {
        assert!(attempts.len() >= 2, "each event was retried");
        assert!(attempts.iter().all(|r| r.body == attempts[0].body));
    }
}

#[tokio::test]
async fn a_410_disables_the_endpoint() {
    let app = app_with_fast_retries().await;
    let receiver = Receiver::start(410).await;
    let (_, hook) = create_hook(&app, &receiver.url, json!(["*"])).await;
    app.send_ok(&simple_message("gone@example.test")).await;
    receiver.wait("the first delivery", |all| !all.is_empty()).await;
    let token = mint(&app.keys, "acme", "webhooks:manage");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view: Value = app
            .get(&format!("/v1/webhooks/{}", hook["id"].as_str().unwrap()), &token)
            .await
            .json()
            .await
            .unwrap();
        if view["enabled"] == false {
            assert!(view["disabled_reason"].as_str().unwrap().contains("410"));
            break;
        }
        assert!(Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.all().len(), 1, "no retry after 410");
}

#[tokio::test]
async fn private_and_metadata_targets_are_refused_by_default() {
    let app = spawn_app_with(|_| {}).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/x",
        "http://localhost/x",
    ] {
        let (status, problem) = create_hook(&app, url, json!(["*"])).await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["code"], "webhook_target_not_allowed", "{url}");
    }
    let (_, problem) = create_hook(&app, "http://127.0.0.1:9/hook", json!(["*"])).await;
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("`webhooks.allow_private_targets`"),
        "names the setting that permits it: {message}"
    );
}

#[tokio::test]
async fn an_unknown_event_type_is_refused_with_the_list_of_valid_ones() {
    let app = spawn_app_with(|_| {}).await;
    let (status, problem) = create_hook(
        &app,
        "https://hooks.example.test/x",
        json!(["message.sent", "email.sent"]),
    )
    .await;
    assert_eq!(
        (
            status,
            problem["errors"][0]["field"].as_str(),
            problem["errors"][0]["code"].as_str()
        ),
        (422, Some("/events/1"), Some("invalid_event_type")),
        "{problem}"
    );
    let message = problem["errors"][0]["message"].as_str().unwrap();
    for valid in mailgate::domain::status::EventType::ALL {
        assert!(message.contains(&format!("`{}`", valid.as_str())), "{message}");
    }
    assert!(message.contains("`email.sent`") && message.contains("`*`"), "{message}");
}

#[tokio::test]
async fn a_restart_in_the_middle_of_retries_loses_no_event() {
    let postfix = Postfix::shared();
    let receiver = Receiver::start(503).await;
    let data = tempfile::tempdir().unwrap();
    let config = crate::helpers::write_config(data.path(), &postfix, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[webhooks]\nallow_private_targets = true\nretry_base = \"200ms\"\nretry_max = \"400ms\"\nrequest_timeout = \"2s\"\n");
    std::fs::write(&config, text).unwrap();
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = data.path().to_path_buf();
    let keys = mailgate::auth::TokenKeys::load(&settings).unwrap();
    let token = mint(&keys, "acme", "messages:send webhooks:manage");
    let config = config.to_string_lossy().into_owned();

    let mut first = Binary::spawn(&["serve", "--config", &config], data.path(), free_port(), &[]);
    first.wait_healthy().await;
    let client = crate::helpers::http();
    let created = client
        .post(format!("{}/v1/webhooks", first.address))
        .bearer_auth(&token)
        .json(&json!({"url": receiver.url, "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let sent = first.send(&token, &simple_message("restart-hook@example.test")).await;
    assert_eq!(sent.status(), 202);
    let id = sent.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let failed = receiver.wait("a failing attempt", |all| !all.is_empty()).await;
    let pending_id = failed[0].headers["webhook-id"].clone();
    first.kill();

    receiver.status.store(200, Ordering::SeqCst);
    let before = receiver.all().len();
    let mut second = Binary::spawn(&["serve", "--config", &config], data.path(), free_port(), &[]);
    second.wait_healthy().await;
    // Answered 200 only from here on: the event that was failing before the kill
    // must arrive again, same webhook-id, from the restarted process.
    receiver
        .wait("the pending event after the restart", |all| {
            all[before..].iter().any(|r| r.headers["webhook-id"] == pending_id)
        })
        .await;
    assert!(failed.iter().any(|r| json_of(r)["data"]["message_id"] == id.as_str()));
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_given_up_on_after_max_age() {
    let app = spawn_binary(
        "[webhooks]\nallow_private_targets = true\nretry_base = \"100ms\"\nretry_max = \"200ms\"\nmax_age = \"1s\"\n",
    )
    .await;
    let receiver = Receiver::start(503).await;
    let (status, hook) = create_hook(&app, &receiver.url, json!(["message.sent"])).await;
    assert_eq!(status, 201, "{hook}");
    app.send_ok(&simple_message("gives-up@example.test")).await;
    let path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let token = mint(&app.keys, "acme", "webhooks:manage");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let deliveries: Value = app.get(&path, &token).await.json().await.unwrap();
        let outcomes: Vec<&str> = deliveries["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["outcome"].as_str())
            .collect();
        if outcomes.contains(&"failed") {
            assert!(outcomes.contains(&"retrying"), "retried before giving up: {outcomes:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never gave up: {outcomes:?}\n{}",
            app.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = receiver.all().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.all().len(), attempts, "no attempt after giving up");
}
