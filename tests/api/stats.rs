//! Delivery and bounce reports: a scenario through the real Postfix whose every count
//! the test knows, read back in UTC and in another zone, grouped and filtered, as CSV,
//! and again after a SIGKILL and restart; and `storage.stats_retention` from a config
//! file.

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use serde_json::{json, Value};

use crate::helpers::{free_port, mint, simple_message, spawn_binary, spawn_binary_on, Binary, TestApp};

const WAIT: Duration = Duration::from_secs(40);
const COUNTS: [&str; 11] = [
    "accepted",
    "sent",
    "delivered",
    "deferred",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "failed",
    "suppressed",
    "unsubscribed",
    "cancelled",
];

/// Counts by name; the unnamed ones are zero.
fn counts(named: &[(&str, u64)]) -> Value {
    let mut all = serde_json::Map::new();
    for name in COUNTS {
        let value = named.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
        all.insert(name.into(), json!(value));
    }
    Value::Object(all)
}

async fn stats(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/v1/stats?{query}"), &app.token).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The group of `report` with `key` (`None`: the group without a value).
fn group<'a>(report: &'a Value, key: Option<&str>) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"].as_str() == key && g["other"] == false)
        .unwrap_or_else(|| panic!("no group {key:?} in {report:#}"))
}

/// Every bucket's counts summed: must equal the totals.
fn bucket_sum(buckets: &Value) -> Value {
    let mut sums = [0u64; 11];
    for bucket in buckets.as_array().unwrap() {
        for (sum, name) in sums.iter_mut().zip(COUNTS) {
            *sum += bucket["counts"][name].as_u64().unwrap();
        }
    }
    counts(&COUNTS.iter().copied().zip(sums).collect::<Vec<_>>())
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    body
}

/// Polls the message until `done` holds of it.
async fn settled(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    app.wait_for(id, WAIT, done).await
}

fn with_tag(mut message: Value, tag: &str) -> Value {
    message["tags"] = json!([tag]);
    message
}

#[tokio::test]
async fn every_count_and_rate_matches_what_happened_in_any_zone_grouped_and_after_a_sigkill() {
    let mut app = spawn_binary("[delivery]\nmax_age = \"3s\"\n").await;
    let admin = mint(
        &app.keys,
        "acme",
        "templates:write suppressions:manage bounces:write messages:send messages:read",
    );
    post(
        &app,
        &admin,
        "/v1/templates",
        json!({"name": "welcome-mail", "subject": "Hi {{name}}", "html": "<p>Hello {{name}}</p>"}),
    )
    .await;
    let blocked = app
        .client
        .put(format!("{}/v1/suppressions/blocked@example.test", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 200);
    let dsn_url = format!("{}/v1/bounces/dsn", app.address);

    // Two recipients from a template: 2 accepted, 2 sent.
    let welcome = app
        .send_ok(&json!({
            "from": "Acme <hello@acme.test>", "to": ["ok1@example.test", "ok2@other.test"],
            "template": {"name": "welcome-mail", "data": {"name": "Ana"}}, "tags": ["onboarding"],
        }))
        .await;
    // Refused at RCPT: a hard bounce at the relay.
    let rejected = app
        .send_ok(&with_tag(simple_message("reject@example.test"), "onboarding"))
        .await;
    // Deferred until `max_age` gives up: some deferrals, then failed.
    let deferred = app
        .send_ok(&with_tag(simple_message("defer@example.test"), "digest"))
        .await;
    // Accepted by the relay, then a real DSN from Postfix: sent, then a hard bounce.
    let dsn = app
        .send_ok(&with_tag(simple_message("nobody@nouser.test"), "onboarding"))
        .await;
    app.postfix.route_dsns(&dsn, &dsn_url, &admin);
    let complained = app.send_ok(&simple_message("ana@example.test")).await;
    let suppressed = app.send_ok(&simple_message("blocked@example.test")).await;
    let mut later = simple_message("later@example.test");
    later["send_at"] = json!((Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let cancelled = app.send_ok(&later).await;
    post(
        &app,
        &app.token.clone(),
        &format!("/v1/messages/{cancelled}/cancel"),
        json!({}),
    )
    .await;

    settled(&app, &welcome, |m| m["status"] == "sent").await;
    settled(&app, &rejected, |m| m["recipients"][0]["status"] == "bounced").await;
    let deferred_record = settled(&app, &deferred, |m| m["status"] == "failed").await;
    settled(&app, &dsn, |m| m["recipients"][0]["status"] == "bounced").await;
    settled(&app, &complained, |m| m["status"] == "sent").await;
    settled(&app, &suppressed, |m| m["recipients"][0]["status"] == "suppressed").await;
    let arf = std::fs::read_to_string(format!(
        "{}/tests/fixtures/arf/complaint.eml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("msg_00000000000000000000000000000001", &complained)
    .replace("bounce+", "someone+");
    let response = app
        .client
        .post(format!("{}/v1/bounces/dsn", app.address))
        .bearer_auth(&admin)
        .header("content-type", "message/rfc822")
        .body(arf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    settled(&app, &complained, |m| m["recipients"][0]["status"] == "complained").await;
    let deferrals = deferred_record["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message.deferred")
        .count() as u64;
    assert!(deferrals >= 1, "{deferred_record:#}");

    let expected = counts(&[
        ("accepted", 8),
        ("sent", 4),
        ("deferred", deferrals),
        ("bounced_hard", 2),
        ("complained", 1),
        ("failed", 1),
        ("suppressed", 1),
        ("cancelled", 1),
    ]);
    let check = |report: &Value| {
        assert_eq!(report["unit"], "recipient");
        assert_eq!(report["totals"]["counts"], expected, "{report:#}");
        assert_eq!(
            bucket_sum(&report["buckets"]),
            expected,
            "the buckets add up to the totals"
        );
        let rates = &report["totals"]["rates"];
        assert_eq!(
            rates["bounce_rate"].as_f64(),
            Some(2.0 / 7.0),
            "bounced / (sent + bounced + failed)"
        );
        assert_eq!(rates["complaint_rate"].as_f64(), Some(0.25), "complained / sent");
        let latency = &report["totals"]["latency_ms"];
        let (p50, p99) = (latency["p50"].as_u64().unwrap(), latency["p99"].as_u64().unwrap());
        assert!(p50 <= p99 && p99 < 30_000, "{latency}");
    };
    let utc = stats(&app, "").await;
    check(&utc);
    assert_eq!(
        (utc["interval"].as_str(), utc["timezone"].as_str()),
        (Some("day"), Some("UTC"))
    );
    assert_eq!(utc["buckets"].as_array().unwrap().len(), 8, "the last 7 days and today");

    let from = Utc::now() - chrono::Duration::hours(3);
    let kolkata = stats(
        &app,
        &format!(
            "interval=hour&timezone=Asia/Kolkata&from={}",
            from.to_rfc3339().replace('+', "%2B")
        ),
    )
    .await;
    check(&kolkata);
    assert_eq!(kolkata["timezone"], "Asia/Kolkata");
    for bucket in kolkata["buckets"].as_array().unwrap() {
        let start = DateTime::parse_from_rfc3339(bucket["start"].as_str().unwrap()).unwrap();
        assert_eq!(
            (start.offset().local_minus_utc(), start.minute()),
            (19_800, 0),
            "{bucket}"
        );
    }

    let by_tag = stats(&app, "group_by=tag").await;
    check(&by_tag);
    assert_eq!(
        group(&by_tag, Some("onboarding"))["totals"]["counts"],
        counts(&[("accepted", 4), ("sent", 3), ("bounced_hard", 2)])
    );
    assert_eq!(
        group(&by_tag, Some("digest"))["totals"]["counts"],
        counts(&[("accepted", 1), ("deferred", deferrals), ("failed", 1)])
    );
    assert_eq!(
        group(&by_tag, None)["totals"]["counts"],
        counts(&[
            ("accepted", 3),
            ("sent", 1),
            ("complained", 1),
            ("suppressed", 1),
            ("cancelled", 1)
        ])
    );
    let by_template = stats(&app, "group_by=template").await;
    assert_eq!(
        group(&by_template, Some("welcome-mail"))["totals"]["counts"],
        counts(&[("accepted", 2), ("sent", 2)])
    );
    let by_relay = stats(&app, "group_by=upstream").await;
    assert_eq!(
        group(&by_relay, Some("postfix"))["totals"]["counts"],
        counts(&[
            ("sent", 4),
            ("deferred", deferrals),
            ("bounced_hard", 2),
            ("complained", 1),
            ("failed", 1)
        ]),
        "everything that happened at the relay, the DSN and the complaint included"
    );
    assert_eq!(
        group(&by_relay, None)["totals"]["counts"],
        counts(&[("accepted", 8), ("suppressed", 1), ("cancelled", 1)])
    );
    let onboarding_domains = stats(&app, "tag=onboarding&group_by=recipient_domain").await;
    assert_eq!(onboarding_domains["filter"], json!({"tag": "onboarding"}));
    assert_eq!(
        onboarding_domains["totals"]["counts"],
        counts(&[("accepted", 4), ("sent", 3), ("bounced_hard", 2)])
    );
    assert_eq!(
        group(&onboarding_domains, Some("nouser.test"))["totals"]["counts"],
        counts(&[("accepted", 1), ("sent", 1), ("bounced_hard", 1)])
    );
    assert_eq!(
        group(&onboarding_domains, Some("other.test"))["totals"]["counts"],
        counts(&[("accepted", 1), ("sent", 1)])
    );
    let senders = stats(&app, "group_by=sender_domain").await;
    assert_eq!(group(&senders, Some("acme.test"))["totals"]["counts"]["accepted"], 2);

    let csv = app
        .client
        .get(format!("{}/v1/stats", app.address))
        .bearer_auth(&app.token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let accepted_column = header.iter().position(|c| *c == "accepted").unwrap();
    let accepted: u64 = lines
        .map(|l| l.split(',').nth(accepted_column).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(accepted, 8, "{csv}");

    let refused = app.get("/v1/stats?timezone=Mars/Olympus", &app.token).await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        (
            problem["errors"][0]["field"].as_str(),
            problem["errors"][0]["code"].as_str()
        ),
        (Some("timezone"), Some("invalid_timezone"))
    );

    // Counters are in the same transactions as the events: a SIGKILL changes nothing.
    let config = app.data.path().join("mailgate.toml").to_string_lossy().into_owned();
    app.binary().kill();
    let mut restarted = Binary::spawn(&["serve", "--config", &config], app.data.path(), free_port(), &[]);
    restarted.wait_healthy().await;
    app.address = restarted.address.clone();
    *app.binary() = restarted;
    check(&stats(&app, "").await);
    let again = stats(&app, "group_by=tag").await;
    assert_eq!(
        again["groups"], by_tag["groups"],
        "the same after a SIGKILL and restart"
    );
}

#[tokio::test]
async fn stats_retention_from_the_config_file_drops_old_counters_and_keeps_todays() {
    use mailgate::store::Store as _;
    // Counters from two days ago, written before the binary starts on the same data dir.
    let data = tempfile::tempdir().unwrap();
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    {
        let store = mailgate::store::SledStore::open(&data.path().join("db")).unwrap();
        let old = old_message(two_days_ago);
        store.accept(&old, b"Subject: old\r\n\r\nold\r\n", None).unwrap();
        let all = mailgate::stats::Series {
            filter: None,
            group: None,
        };
        let rows = store.stats(&old.tenant, &all, 0..u32::MAX).unwrap();
        assert_eq!(rows.len(), 1, "counted at its acceptance, two days ago");
    }
    let mut app = spawn_binary_on(data, "[storage]\nstats_retention = \"1d\"\n", &[]).await;
    let sent = app.send_ok(&simple_message("today@example.test")).await;
    app.wait_for(&sent, WAIT, |m| m["status"] == "sent").await;
    let query = format!(
        "from={}",
        (two_days_ago - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let report = stats(&app, &query).await;
        // Today's message stays counted; the old one's acceptance is gone.
        if report["totals"]["counts"]["accepted"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old counters were not purged: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.binary().kill();
}

/// A message of tenant `acme` accepted at `at`, as the store keeps it.
fn old_message(at: DateTime<Utc>) -> mailgate::domain::message::Message {
    let id = mailgate::domain::ids::MessageId::generate();
    serde_json::from_value(json!({
        "id": id.as_str(), "tenant": "acme", "from": "tests@sender.mailgate.test",
        "to": ["old@example.test"], "cc": [], "subject": "old", "tags": [], "metadata": {},
        "created_at": at, "send_at": null, "status": "queued", "attempts": 0, "next_attempt_at": at,
        "recipients": [{"email": "old@example.test", "status": "queued", "smtp": null, "updated_at": at}],
        "events": [],
    }))
    .unwrap()
}
