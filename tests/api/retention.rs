//! A node that runs for a year: retention purges finished history and keeps what still
//! waits, the MIME goes first, and the queue depth counters stay true across a burst,
//! a SIGKILL and a restart. Each test starts the real binary with the keys in its file.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, mint, simple_message, spawn_binary, Binary, TestApp};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `path` until `done` holds of its status and body.
async fn wait_until(app: &TestApp, path: &str, token: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = app.get(path, token).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn retention_purges_finished_history_keeps_waiting_mail_and_drops_mime_first() {
    let app = spawn_binary(
        "[storage]\nretention = \"4s\"\nmime_retention = \"1s\"\ncache_bytes = 33554432\n\
         [webhooks]\nallow_private_targets = true\n",
    )
    .await;
    let receiver = crate::webhooks::Receiver::start(204).await;
    let (status, hook) = crate::webhooks::create_hook(&app, &receiver.url, json!(["message.sent"])).await;
    assert_eq!(status, 201, "{hook}");
    let hook_deliveries = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let hooks_token = mint(&app.keys, "acme", "webhooks:manage");

    let done = app.send_ok(&simple_message("done@example.test")).await;
    app.wait_for(&done, WAIT, |m| m["status"] == "sent").await;
    let mut later = simple_message("later@example.test");
    later["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let waiting = app.send_ok(&later).await;
    wait_until(&app, &hook_deliveries, &hooks_token, |_, body| {
        body["data"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;

    let before: Value = app.get("/v1/events?limit=100", &app.token).await.json().await.unwrap();
    assert!(
        before.to_string().contains(&done),
        "the message has events to purge: {before}"
    );
    let gone = wait_until(&app, &format!("/v1/messages/{done}/mime"), &app.token, |status, _| {
        status == 410
    })
    .await;
    assert_eq!(gone["code"], "mime_expired", "{gone}");
    assert_eq!(
        app.message(&done).await["status"],
        "sent",
        "status and events stay with the MIME gone"
    );

    wait_until(&app, &format!("/v1/messages/{done}"), &app.token, |status, _| {
        status == 404
    })
    .await;
    // Events and attempts are younger than the message: they go a moment later.
    wait_until(&app, "/v1/events?limit=100", &app.token, |_, events| {
        !events.to_string().contains(&done)
    })
    .await;
    wait_until(&app, &hook_deliveries, &hooks_token, |_, attempts| {
        attempts["data"] == json!([])
    })
    .await;
    let kept = app.message(&waiting).await;
    assert_eq!(
        kept["status"], "scheduled",
        "a message still waiting is never purged: {kept}"
    );
    assert_eq!(
        app.get(&format!("/v1/messages/{waiting}/mime"), &app.token)
            .await
            .status(),
        200,
        "nor its MIME"
    );
}

/// `mailgate_queue_depth{state}` as the binary reports it.
async fn depth(address: &str) -> (u64, u64, u64, u64) {
    let text = crate::helpers::metrics_text(address).await;
    let of = |state: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("mailgate_queue_depth{{state=\"{state}\"}} ")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (of("queued"), of("scheduled"), of("deferred"), of("sending"))
}

async fn wait_for_depth(address: &str, expected: (u64, u64, u64, u64)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = depth(address).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "queue depth {now:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn queue_depth_counters_match_the_queue_after_a_burst_a_sigkill_and_a_restart() {
    let mut app = spawn_binary("").await;
    let mut scheduled = simple_message("scheduled@example.test");
    scheduled["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let mut deferred = simple_message("defer@example.test");
    deferred["to"] = json!(["defer@example.test"]);
    let bodies: Vec<Value> = (0..40)
        .map(|n| match n % 4 {
            0 => deferred.clone(),
            1 => scheduled.clone(),
            _ => simple_message(&format!("burst-{n}@example.test")),
        })
        .collect();
    futures_util::future::join_all(bodies.iter().map(|b| app.send_ok(b))).await;
    // 20 delivered, 10 scheduled, 10 deferred by Postfix's `451` for `defer@`.
    wait_for_depth(&app.address, (0, 10, 10, 0)).await;

    let config = app.data.path().join("mailgate.toml").to_string_lossy().into_owned();
    app.binary().kill();
    let mut again = Binary::spawn(&["serve", "--config", &config], app.data.path(), free_port(), &[]);
    again.wait_healthy().await;
    wait_for_depth(&again.address, (0, 10, 10, 0)).await;
    // And against a full count: every message listed by status through the API.
    let listed = |status: &'static str| {
        let (address, token) = (again.address.clone(), app.token.clone());
        async move {
            let page =
                crate::helpers::get_json(&address, &format!("/v1/messages?status={status}&limit=100"), &token).await;
            page["data"].as_array().map_or(0, |d| d.len() as u64)
        }
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let counted = (0, listed("scheduled").await, listed("deferred").await, 0);
        let reported = depth(&again.address).await;
        if reported == counted && counted == (0, 10, 10, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters {reported:?}, full count {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A size-limited tmpfs the test mounts (root only) and unmounts when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let size = format!("size={megabytes}m");
        let mount = |program: &str, pre: &[&str]| {
            std::process::Command::new(program)
                .args(pre)
                .args(["mount", "-t", "tmpfs", "-o", &size, "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            mount("env", &[]) || mount("sudo", &["-n"]),
            "mounting a tmpfs needs root or sudo (as the test command's Postfix does)"
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount").arg(self.dir.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = std::process::Command::new("sudo")
                .args(["-n", "umount"])
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A send of about 400 KB, so a small disk fills in a few dozen.
fn large_message(n: usize) -> Value {
    use base64::Engine as _;
    let mut message = simple_message(&format!("full-disk-{n}@example.test"));
    let bytes: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 + n) as u8).collect();
    message["attachments"] = json!([{"filename": "blob.bin", "content_type": "application/octet-stream",
                                     "content": base64::engine::general_purpose::STANDARD.encode(bytes)}]);
    message
}

#[tokio::test]
async fn a_full_disk_refuses_sends_with_503_loses_nothing_and_recovers_by_itself() {
    let disk = SmallDisk::mount(24);
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 6 * 1024 * 1024]).unwrap();
    let mut app = spawn_binary(&format!(
        "[storage]\npath = \"{}/data\"\n[limits]\nmessages_per_second = 0\n",
        disk.path().display()
    ))
    .await;

    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let response = app.send_as(&app.token, &large_message(n)).await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            503 => {
                refused = Some((body, retry_after));
                break;
            }
            other => panic!("a full disk must answer 503, not {other}: {body}"),
        }
    }
    let (problem, retry_after) = refused.expect("the disk filled up");
    assert_eq!(problem["code"], "store_unavailable", "{problem}");
    assert!(retry_after.is_some(), "a 503 says when to retry");
    assert!(!accepted.is_empty());
    let ready = app.get("/readyz", &app.token).await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["store_problem"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left"),
        "/readyz says why: {ready}"
    );
    assert_eq!(
        app.get(&format!("/v1/messages/{}", accepted[0]), &app.token)
            .await
            .status(),
        200,
        "reads go on while writes are refused"
    );

    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let response = app
            .client
            .post(format!("{}/v1/messages", app.address))
            .bearer_auth(&app.token)
            .json(&simple_message("after-the-disk-emptied@example.test"))
            .send()
            .await;
        if let Ok(response) = response {
            if response.status() == 202 {
                break response.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "sends never succeeded again: {}",
            app.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        app.stderr().contains("restarting to reopen the store"),
        "the store was reopened: {}",
        app.stderr()
    );
    eprintln!(
        "full disk: {} sends got 202 before the first 503; all delivered after the disk emptied",
        accepted.len()
    );
    assert!(
        app.binary().child.try_wait().unwrap().is_none(),
        "the process we started is still the one serving (it re-executed in place)"
    );
    for id in accepted.iter().chain([&after]) {
        app.wait_for(id, WAIT, |m| m["status"] == "sent").await;
        app.postfix.wait_delivered(id, 1, WAIT).await;
    }
    drop(app);
    drop(disk);
}
