//! One-click unsubscribe end to end: the link in a message Postfix delivered, used as
//! a mailbox provider uses it (RFC 8058), and the suppression it leaves.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{mint, spawn_binary, TestApp};

const WAIT: Duration = Duration::from_secs(30);

async fn delivered_text(app: &TestApp, body: Value) -> (String, String) {
    let answer = app.send_as(&app.token, &body).await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let id = answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mime = app.postfix.wait_delivered(&id, 1, WAIT).await.remove(0);
    (id, String::from_utf8_lossy(&mime).replace("\r\n", "\n"))
}

fn unsubscribe_url(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("List-Unsubscribe: <"))?;
    Some(
        line.trim_start_matches("List-Unsubscribe: <")
            .trim_end_matches('>')
            .to_owned(),
    )
}

fn message(to: &str) -> Value {
    json!({
        "from": "Acme News <news@acme.mailgate.test>",
        "to": [to],
        "subject": "This week at Acme",
        "html": "<h1>News</h1><p>Read <a href=\"https://acme.mailgate.test/news\">the news</a>.</p>",
    })
}

/// `tenants.<t>.list_unsubscribe` from a config file turns the headers on by default.
#[tokio::test]
async fn a_delivered_unsubscribe_link_suppresses_its_recipient_when_posted_and_get_changes_nothing() {
    let app = spawn_binary("[tenants.acme]\nlist_unsubscribe = true\n").await;
    let manager = mint(&app.keys, "acme", "suppressions:manage messages:read messages:send");
    let (id, text) = delivered_text(&app, message("reader@example.test")).await;
    let url = unsubscribe_url(&text).unwrap_or_else(|| panic!("no List-Unsubscribe: {text}"));
    assert!(
        text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{text}"
    );
    assert!(url.starts_with(&format!("{}/u/", app.address)), "{url}");
    assert!(!url.contains("reader"), "the link names no address: {url}");
    assert!(
        text.contains("Content-Type: multipart/alternative")
            && text.contains("Read the news (https://acme.mailgate.test/news)."),
        "an HTML-only send gets a text part: {text}"
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let shown = client.get(&url).send().await.unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    assert!(shown.text().await.unwrap().contains("<form method=\"post\""));
    let suppression = app.get("/v1/suppressions/reader@example.test", &manager).await;
    assert_eq!(suppression.status(), StatusCode::NOT_FOUND, "a GET changes nothing");

    let forged = client
        .post(format!("{}x", url.trim_end_matches(char::is_alphanumeric)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::NOT_FOUND);

    // As Gmail does it: a POST with this exact body, no cookies, no redirect followed.
    let posted = client
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let suppression: Value = app
        .get("/v1/suppressions/reader@example.test", &manager)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(suppression["reason"], "unsubscribe", "{suppression}");
    let events = app.message(&id).await["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "message.unsubscribed"),
        "{events}"
    );
    let again = app.send_as(&manager, &message("reader@example.test")).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["recipients"][0]["status"], "suppressed", "{again}");

    let mut plain = message("other@example.test");
    plain["list_unsubscribe"] = json!(false);
    plain["auto_text"] = json!(false);
    let (_, text) = delivered_text(&app, plain).await;
    assert!(unsubscribe_url(&text).is_none(), "turned off per send: {text}");
    assert!(text.contains("Content-Type: text/html"), "{text}");
    assert!(
        !text.contains("multipart/alternative"),
        "auto_text off sends the HTML alone: {text}"
    );
}
