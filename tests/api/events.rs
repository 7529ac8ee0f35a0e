//! The event stream and the suppression list.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{mint, simple_message, spawn_app, spawn_app_on, Backend, TestApp};

const WAIT: Duration = Duration::from_secs(20);

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app.get(path, token).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

crate::on_both_backends!(a_hard_bounce_is_an_event_suppresses_the_address_and_the_next_send_skips_it);
async fn a_hard_bounce_is_an_event_suppresses_the_address_and_the_next_send_skips_it(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let token = mint(&app.keys, "acme", "messages:send messages:read suppressions:manage");
    let first = app.send_ok(&simple_message("reject@example.test")).await;
    app.wait_for(&first, WAIT, |m| m["status"] == "failed").await;

    let (_, events) = get(&app, &token, "/v1/events?type=message.bounced").await;
    let event = &events["data"][0];
    assert_eq!(event["data"]["message_id"], first.as_str());
    assert_eq!(event["data"]["seq"], 1);
    assert_eq!(
        event["data"]["bounce"],
        json!({"kind": "hard", "type": "mailbox_unknown", "source": "smtp"})
    );
    assert_eq!(event["data"]["smtp"]["code"], 550);

    let (status, suppression) = get(&app, &token, "/v1/suppressions/Reject@Example.test").await;
    assert_eq!(status, 200, "{suppression}");
    assert_eq!(suppression["reason"], "hard_bounce");
    assert_eq!(suppression["event_id"], event["id"]);

    let response = app.send_as(&app.token, &simple_message("reject@example.test")).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["recipients"][0]["status"], "suppressed");
    let second = accepted["id"].as_str().unwrap();
    let message = app.message(second).await;
    assert_eq!(message["status"], "failed");
    assert_eq!(message["attempts"], 0, "a suppressed recipient is never attempted");
    assert_eq!(message["events"][0]["type"], "message.suppressed");
    let (_, suppressed) = get(&app, &token, "/v1/events?type=message.suppressed").await;
    assert_eq!(suppressed["data"][0]["data"]["message_id"], second);
}

crate::on_both_backends!(the_event_stream_is_ordered_resumable_and_per_tenant);
async fn the_event_stream_is_ordered_resumable_and_per_tenant(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = app.send_ok(&simple_message(&format!("stream-{i}@example.test"))).await;
        app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;
        ids.push(id);
    }
    let (status, page) = get(&app, &app.token, "/v1/events?limit=2").await;
    assert_eq!(status, 200);
    let seen: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [ids[0].as_str(), ids[1].as_str()]);
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["type"] == "message.sent"));
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = get(&app, &app.token, &format!("/v1/events?after={cursor}")).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["data"]["message_id"], ids[2].as_str());
    let end = rest["next_cursor"].as_str().unwrap().to_owned();
    let (_, empty) = get(&app, &app.token, &format!("/v1/events?after={end}")).await;
    assert_eq!(
        (empty["data"].as_array().unwrap().len(), empty["next_cursor"].as_str()),
        (0, Some(end.as_str()))
    );

    let (_, filtered) = get(&app, &app.token, "/v1/events?type=message.bounced").await;
    assert_eq!(filtered["data"], json!([]));
    let other = mint(&app.keys, "globex", "messages:read");
    let (_, foreign) = get(&app, &other, "/v1/events").await;
    assert_eq!(foreign["data"], json!([]));
    assert_eq!(get(&app, &app.token, "/v1/events?type=message.nope").await.0, 422);
    assert_eq!(get(&app, &app.token, "/v1/events?after=x").await.0, 422);
}

#[tokio::test]
async fn suppressions_are_managed_by_api_and_honoured_by_sends() {
    let app = spawn_app().await;
    let admin = mint(&app.keys, "acme", "suppressions:manage");
    let put = |email: &'static str| {
        app.client
            .put(format!("{}/v1/suppressions/{email}", app.address))
            .bearer_auth(&admin)
            .send()
    };
    let added: Value = put("blocked@example.test").await.unwrap().json().await.unwrap();
    assert_eq!(
        (added["reason"].as_str(), added["source"].as_str()),
        (Some("manual"), Some("api"))
    );
    assert_eq!(put("not-an-address").await.unwrap().status(), 422);
    assert_eq!(
        get(&app, &admin, "/v1/suppressions/not-an-address").await.0,
        404,
        "no such suppression"
    );
    assert_eq!(app.get("/v1/suppressions", &app.token).await.status(), 403);

    let (_, list) = get(&app, &admin, "/v1/suppressions").await;
    assert_eq!(list["data"][0]["email"], "blocked@example.test");

    let suppressed = app.send_ok(&simple_message("blocked@example.test")).await;
    assert_eq!(app.message(&suppressed).await["recipients"][0]["status"], "suppressed");

    let deleted = app
        .client
        .delete(format!("{}/v1/suppressions/blocked@example.test", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(get(&app, &admin, "/v1/suppressions/blocked@example.test").await.0, 404);
    let sent = app.send_ok(&simple_message("blocked@example.test")).await;
    app.wait_for(&sent, WAIT, |m| m["status"] == "sent").await;
    app.postfix.wait_delivered(&sent, 1, WAIT).await;
}
