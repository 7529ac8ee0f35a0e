//! Sender domains against a real authoritative DNS server (Debian's dnsmasq, on
//! loopback, serving exactly the records `POST /v1/domains` returned), and DKIM
//! signatures on mail that Postfix delivered, checked by an independent verifier
//! (dkimpy, `tests/support/dkim_verify.py`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{free_port, mint, spawn_binary, TestApp, RETURN_PATH_DOMAIN};

const DOMAIN: &str = "mailgate-tests.net";
const WAIT: Duration = Duration::from_secs(30);

/// dnsmasq answering for the test domains only (NXDOMAIN for what it does not hold).
struct Dnsmasq {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Dnsmasq {
    fn start() -> Self {
        let mut dns = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        dns.serve(&[]);
        dns
    }

    /// Restarts the server with exactly `records` (each `{"type","name","value"}`).
    fn serve(&mut self, records: &[&Value]) {
        self.stop();
        let mut conf =
            format!("local=/{DOMAIN}/\nlocal=/{RETURN_PATH_DOMAIN}/\nhost-record={RETURN_PATH_DOMAIN},127.0.0.1\n");
        for record in records {
            let (name, value) = (record["name"].as_str().unwrap(), record["value"].as_str().unwrap());
            match record["type"].as_str().unwrap() {
                "TXT" => {
                    let strings: Vec<String> = value
                        .as_bytes()
                        .chunks(255)
                        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                        .collect();
                    conf.push_str(&format!("txt-record={name},{}\n", strings.join(",")));
                }
                "CNAME" => conf.push_str(&format!("cname={name},{value}\n")),
                other => panic!("no dnsmasq line for a {other} record"),
            }
        }
        let file = self.dir.path().join("dnsmasq.conf");
        std::fs::write(&file, conf).expect("write dnsmasq.conf");
        let child = Command::new(dnsmasq())
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--user=root", "--pid-file"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--conf-file={}", file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (the test command installs dnsmasq-base)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dnsmasq() -> PathBuf {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("dnsmasq"))
}

/// The Python with dkimpy that the test command installs.
fn python() -> PathBuf {
    std::env::var_os("MAILGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/mailgate-tools/venv/bin/python"))
}

/// Runs dkimpy on `message` with the DKIM records of `domains`: its exit code and output.
fn dkim_verify(dir: &Path, message: &[u8], records: &[Value]) -> (i32, String) {
    let keys: serde_json::Map<String, Value> = records
        .iter()
        .filter(|r| r["purpose"] == "dkim")
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["value"].clone()))
        .collect();
    let file = dir.join(format!("verify-{}.eml", uuid::Uuid::now_v7()));
    std::fs::write(&file, message).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dkim_verify.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&file)
        .arg(Value::Object(keys).to_string())
        .output()
        .expect("run dkim_verify.py (the test command installs dkimpy)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The rules SpamAssassin (`spamassassin -t -L`: local tests only) hits on `message`.
fn spamassassin_rules(message: &[u8]) -> Vec<String> {
    use std::io::Write as _;
    let mut child = Command::new("spamassassin")
        .args(["-t", "-L"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run spamassassin (the test command installs it)");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let details = report.split("Content analysis details:").nth(1).unwrap_or_default();
    details
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let score = words.next()?;
            let rule = words.next()?;
            (score.parse::<f64>().is_ok()
                && rule
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .then(|| rule.to_owned())
        })
        .collect()
}

async fn call(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("request");
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// A POST with a JSON body (`Value::Null`: none).
async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let body = (!body.is_null()).then_some(body);
    call(app, token, reqwest::Method::POST, path, body).await
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let (status, domain) = call(
        app,
        token,
        reqwest::Method::POST,
        &format!("/v1/domains/{DOMAIN}/verify"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{domain}");
    domain
}

fn records(domain: &Value) -> Vec<Value> {
    domain["records"].as_array().expect("records").clone()
}

async fn send_from_domain(app: &TestApp, token: &str, subject: &str) -> String {
    let answer = app
        .send_as(
            token,
            &json!({
                "from": format!("Acme <hello@{DOMAIN}>"),
                "to": ["ana@example.test"],
                "subject": subject,
                "text": "Hello Ana,\n\nyour order has shipped.\n",
                "html": "<p>Hello Ana,</p><p>your order has <b>shipped</b>.</p>",
                "list_unsubscribe": true,
            }),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn delivered(app: &TestApp, id: &str) -> Vec<u8> {
    app.postfix.wait_delivered(id, 1, WAIT).await.remove(0)
}

async fn app_with_dns(dns: &Dnsmasq) -> (TestApp, String) {
    let app = spawn_binary(&format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.port)).await;
    let token = mint(&app.keys, "acme", "domains:manage messages:send messages:read");
    (app, token)
}

/// `[dns] nameservers` from a config file points the checks at this server.
#[tokio::test]
async fn a_domain_verifies_when_its_records_are_published_and_its_mail_is_signed_with_both_keys() {
    let mut dns = Dnsmasq::start();
    let (app, token) = app_with_dns(&dns).await;
    let (status, created) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN, "ed25519": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "pending");
    let published = records(&created);
    let purposes: Vec<&str> = published.iter().map(|r| r["purpose"].as_str().unwrap()).collect();
    assert_eq!(purposes, ["dkim", "dkim", "return_path", "spf", "dmarc"], "{created}");
    assert!(published[0]["value"]
        .as_str()
        .unwrap()
        .starts_with("v=DKIM1; k=rsa; p=MII"));
    assert!(published[1]["value"]
        .as_str()
        .unwrap()
        .starts_with("v=DKIM1; k=ed25519; p="));
    assert_eq!(published[2]["name"], format!("bounces.{DOMAIN}"));
    assert_eq!(published[2]["value"], RETURN_PATH_DOMAIN);

    let unpublished = verify(&app, &token).await;
    assert_eq!(unpublished["status"], "pending", "{unpublished}");

    dns.serve(&published.iter().collect::<Vec<_>>());
    let checked = verify(&app, &token).await;
    assert_eq!(checked["status"], "verified", "{checked}");
    assert!(records(&checked).iter().all(|r| r["status"] == "verified"), "{checked}");

    let id = send_from_domain(&app, &token, "Re: Your order has shipped").await;
    let mime = delivered(&app, &id).await;
    let text = String::from_utf8_lossy(&mime).into_owned();
    assert!(
        text.contains(&format!("Return-Path: <bounce+{id}-0@bounces.{DOMAIN}>")),
        "the return path aligns with From: {text}"
    );
    let (code, out) = dkim_verify(app.data.path(), &mime, &published);
    assert_eq!(code, 0, "dkimpy refused a signature: {out}\n{text}");
    assert!(
        out.contains("rsa-sha256 pass") && out.contains("ed25519-sha256 pass"),
        "{out}"
    );
    let unfolded = text.replace("\n\t", "").replace("\n ", " ");
    assert!(
        unfolded.contains(
            "h=from:from:to:subject:subject:date:message-id:mime-version:content-type:list-unsubscribe:list-unsubscribe-post;"
        ),
        "From and Subject over-signed, the unsubscribe headers signed: {text}"
    );

    // An HTML-only send, as most are: its text part is made for it.
    let answer = app
        .send_as(
            &token,
            &json!({"from": format!("Acme <hello@{DOMAIN}>"), "to": ["ana@example.test"], "subject": "Receipt",
                    "html": "<h1>Thanks</h1><p>Your receipt is <a href=\"https://acme.test/r/1\">here</a>.</p>"}),
        )
        .await;
    let html_only = answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let rules = spamassassin_rules(&delivered(&app, &html_only).await);
    for rule in ["HEADER_FROM_DIFFERENT_DOMAINS", "MIME_HTML_ONLY"] {
        assert!(!rules.iter().any(|r| r == rule), "SpamAssassin hit {rule}: {rules:?}");
    }
    let header_or_mime: Vec<&String> = rules
        .iter()
        .filter(|r| {
            r.starts_with("HEADER_") || r.starts_with("MIME_") || r.contains("MISSING") || r.starts_with("INVALID")
        })
        .collect();
    assert!(header_or_mime.is_empty(), "header or MIME rules hit: {rules:?}");

    let tampered = text.replacen("Your order has shipped", "Your order was cancelled", 1);
    let (code, out) = dkim_verify(app.data.path(), tampered.as_bytes(), &published);
    assert_eq!(code, 1, "a changed subject must fail: {out}");

    // The DKIM records go: the next check says failing, and mail is no longer signed.
    let without_dkim: Vec<&Value> = published.iter().filter(|r| r["purpose"] != "dkim").collect();
    dns.serve(&without_dkim);
    let failing = verify(&app, &token).await;
    assert_eq!(failing["status"], "failing", "{failing}");
    let id = send_from_domain(&app, &token, "After the record went").await;
    let unsigned = delivered(&app, &id).await;
    let (code, out) = dkim_verify(app.data.path(), &unsigned, &published);
    assert_eq!(code, 2, "unsigned once failing: {out}");
    let rules = spamassassin_rules(&unsigned);
    assert!(
        rules.iter().any(|r| r == "HEADER_FROM_DIFFERENT_DOMAINS"),
        "the check can fail: with the global return path it does ({rules:?})"
    );
}

#[tokio::test]
async fn a_key_rotation_in_the_middle_of_a_burst_leaves_every_message_verifiable() {
    let mut dns = Dnsmasq::start();
    let (app, token) = app_with_dns(&dns).await;
    let (_, created) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN})).await;
    let first = records(&created);
    dns.serve(&first.iter().collect::<Vec<_>>());
    assert_eq!(verify(&app, &token).await["status"], "verified");
    let old_selector = first[0]["name"].as_str().unwrap().split('.').next().unwrap().to_owned();

    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(send_from_domain(&app, &token, &format!("Burst {n}")).await);
    }
    let (status, rotating) = post(&app, &token, &format!("/v1/domains/{DOMAIN}/rotate-dkim"), Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{rotating}");
    let keys = rotating["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["state"], "pending");
    let (again, _) = post(&app, &token, &format!("/v1/domains/{DOMAIN}/rotate-dkim"), Value::Null).await;
    assert_eq!(again, StatusCode::CONFLICT, "one rotation at a time");
    for n in 10..15 {
        ids.push(send_from_domain(&app, &token, &format!("Burst {n}")).await);
    }
    let both = records(&rotating);
    dns.serve(&both.iter().collect::<Vec<_>>());
    let switched = verify(&app, &token).await;
    let states: Vec<(&str, &str)> = switched["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["selector"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states[0], (old_selector.as_str(), "retired"), "{switched}");
    assert_eq!(states[1].1, "active", "{switched}");
    assert!(switched["keys"][0]["retire_after"].is_string());
    for n in 15..25 {
        ids.push(send_from_domain(&app, &token, &format!("Burst {n}")).await);
    }
    let mut selectors = Vec::new();
    for id in &ids {
        let mime = delivered(&app, id).await;
        let (code, out) = dkim_verify(app.data.path(), &mime, &both);
        assert_eq!(code, 0, "{id}: {out}");
        selectors.push(out.split_whitespace().next().unwrap().to_owned());
    }
    assert_eq!(
        selectors.first(),
        Some(&old_selector),
        "the burst began with the old key"
    );
    assert_eq!(
        selectors.last(),
        Some(&states[1].0.to_owned()),
        "and ended with the new one"
    );
}

#[tokio::test]
async fn domains_belong_to_their_tenant_and_need_their_scope() {
    let dns = Dnsmasq::start();
    let (app, token) = app_with_dns(&dns).await;
    let (status, _) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (taken, problem) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN})).await;
    assert_eq!(
        (taken, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("domain_exists"))
    );
    let (bad, problem) = post(&app, &token, "/v1/domains", json!({"name": "not a domain"})).await;
    assert_eq!(
        (bad, problem["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/name"))
    );
    let other = mint(&app.keys, "globex", "domains:manage");
    let (status, _) = call(
        &app,
        &other,
        reqwest::Method::GET,
        &format!("/v1/domains/{DOMAIN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, listed) = call(&app, &other, reqwest::Method::GET, "/v1/domains", None).await;
    assert_eq!(
        (status, listed["data"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let reader = mint(&app.keys, "acme", "messages:read");
    let (status, _) = call(&app, &reader, reqwest::Method::GET, "/v1/domains", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &app,
        &token,
        reqwest::Method::DELETE,
        &format!("/v1/domains/{DOMAIN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// `[delivery] require_verified_domain` and `[dns] recheck` from a config file: sends
/// need a verified domain, and the schedule notices records come and go by itself.
#[tokio::test]
async fn with_verified_domains_required_the_scheduled_check_opens_and_closes_sending() {
    let mut dns = Dnsmasq::start();
    let app = spawn_binary(&format!(
        "[dns]\nnameservers = [\"127.0.0.1:{}\"]\nrecheck = \"300ms\"\n[delivery]\nrequire_verified_domain = true\n",
        dns.port
    ))
    .await;
    let token = mint(&app.keys, "acme", "domains:manage messages:send messages:read");
    let refused = |answer: Value| {
        assert_eq!(answer["code"], "sender_domain_not_verified", "{answer}");
        assert_eq!(answer["errors"][0]["field"], "/from", "{answer}");
    };
    let body =
        json!({"from": format!("hello@mail.{DOMAIN}"), "to": ["ana@example.test"], "subject": "Hi", "text": "Hi"});
    let answer = app.send_as(&token, &body).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    refused(answer.json().await.unwrap());

    let (_, created) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN})).await;
    let published = records(&created);
    dns.serve(&published.iter().collect::<Vec<_>>());
    let status_becomes = |wanted: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let (_, domain) = call(app, token, reqwest::Method::GET, &format!("/v1/domains/{DOMAIN}"), None).await;
                if domain["status"] == wanted {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "never {wanted}: {domain}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    status_becomes("verified").await;
    let answer = app.send_as(&token, &body).await;
    assert_eq!(
        answer.status(),
        StatusCode::ACCEPTED,
        "a subdomain of a verified domain may send"
    );

    dns.serve(&published.iter().filter(|r| r["purpose"] != "dkim").collect::<Vec<_>>());
    status_becomes("failing").await;
    let answer = app.send_as(&token, &body).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    refused(answer.json().await.unwrap());
}

/// `upstreams.dkim = "off"` from a config file: that relay gets the message unsigned
/// (it signs itself), with the return path still under the verified domain.
#[tokio::test]
async fn a_relay_with_dkim_off_gets_mail_unsigned() {
    let mut dns = Dnsmasq::start();
    let data = tempfile::tempdir().unwrap();
    let postfix = crate::helpers::Postfix::shared();
    let relay = postfix.relay(data.path(), "postfix", postfix.port, "starttls", "dkim = \"off\"");
    let app = crate::helpers::spawn_binary_on(
        data,
        &format!("{relay}\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.port),
        &[],
    )
    .await;
    let token = mint(&app.keys, "acme", "domains:manage messages:send messages:read");
    let (_, created) = post(&app, &token, "/v1/domains", json!({"name": DOMAIN})).await;
    let published = records(&created);
    dns.serve(&published.iter().collect::<Vec<_>>());
    assert_eq!(verify(&app, &token).await["status"], "verified");
    let id = send_from_domain(&app, &token, "Through a relay that signs").await;
    let mime = delivered(&app, &id).await;
    let (code, out) = dkim_verify(app.data.path(), &mime, &published);
    assert_eq!(code, 2, "no signature of ours: {out}");
    assert!(String::from_utf8_lossy(&mime).contains(&format!("@bounces.{DOMAIN}>")));
}
