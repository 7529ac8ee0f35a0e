//! Delivery through the real Postfix: the MIME it received, and each SMTP outcome.

use std::time::Duration;

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders as _};
use mailgate::config::TlsMode;
use serde_json::json;

use crate::helpers::{
    lf, simple_message, spawn_app, spawn_app_on, spawn_app_with, spawn_binary, Backend, Postfix, MESSAGE_ID_DOMAIN,
    RETURN_PATH_DOMAIN,
};

const WAIT: Duration = Duration::from_secs(20);

fn status(message: &serde_json::Value) -> &str {
    message["status"].as_str().unwrap_or_default()
}

crate::on_both_backends!(text_html_attachment_and_inline_image_arrive_intact_through_starttls_and_auth);
async fn text_html_attachment_and_inline_image_arrive_intact_through_starttls_and_auth(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-not-really-an-image".to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let id = app
        .send_ok(&json!({
            "from": "Zoë Müller <zoe@sender.mailgate.test>",
            "to": ["Ana <ana@example.test>"],
            "cc": ["cc@example.test"],
            "bcc": ["hidden@example.test"],
            "reply_to": "support@sender.mailgate.test",
            "subject": "Grüße — Ihre Bestellung №42",
            "text": "Hallo Ana, deine Bestellung ist unterwegs.",
            "html": "<p>Hallo <b>Ana</b></p><img src=\"cid:logo\">",
            "headers": {"X-Entity-Ref-ID": "order-42"},
            "attachments": [
                {"filename": "rechnung.pdf", "content_type": "application/pdf", "content": b64(&pdf)},
                {"filename": "logo.png", "content_type": "image/png", "content": b64(&png), "content_id": "logo"}
            ],
            "tags": ["orders"],
            "metadata": {"order": "42"}
        }))
        .await;

    let delivered = app.postfix.wait_delivered(&id, 3, WAIT).await;
    let stored = app.get(&format!("/v1/messages/{id}/mime"), &app.token).await;
    assert_eq!(stored.headers()["content-type"], "message/rfc822");
    let stored = lf(&stored.bytes().await.unwrap());

    let mut envelope_recipients = Vec::new();
    for raw in &delivered {
        assert!(
            lf(raw).trim_end().ends_with(stored.trim_end()),
            "Postfix must deliver exactly the stored MIME"
        );
        let mail = MessageParser::default().parse(raw).expect("parse delivered mail");
        envelope_recipients.push(mail.header_raw("X-Original-To").unwrap().trim().to_owned());
        let return_path = mail.header_raw("Return-Path").unwrap().trim().to_owned();
        assert!(return_path.starts_with(&format!("<bounce+{id}-")), "{return_path}");
        assert!(
            return_path.ends_with(&format!("@{RETURN_PATH_DOMAIN}>")),
            "{return_path}"
        );

        assert_eq!(mail.subject(), Some("Grüße — Ihre Bestellung №42"));
        let from = mail.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Zoë Müller"));
        assert_eq!(from.address(), Some("zoe@sender.mailgate.test"));
        assert_eq!(mail.to().unwrap().first().unwrap().address(), Some("ana@example.test"));
        assert_eq!(mail.cc().unwrap().first().unwrap().address(), Some("cc@example.test"));
        assert!(mail.header_raw("Bcc").is_none(), "Bcc must never be in the headers");
        assert_eq!(mail.message_id(), Some(format!("{id}@{MESSAGE_ID_DOMAIN}").as_str()));
        assert!(mail.header_raw("Date").is_some());
        assert_eq!(mail.header_raw("X-Entity-Ref-ID").map(str::trim), Some("order-42"));
        assert_eq!(
            mail.body_text(0).unwrap().trim(),
            "Hallo Ana, deine Bestellung ist unterwegs."
        );
        assert!(mail.body_html(0).unwrap().contains("<b>Ana</b>"));

        let attachment = mail
            .attachments()
            .find(|a| a.attachment_name() == Some("rechnung.pdf"))
            .expect("pdf");
        assert_eq!(attachment.contents(), pdf.as_slice());
        let inline = mail
            .attachments()
            .find(|a| a.content_id() == Some("logo"))
            .expect("inline image");
        assert_eq!(inline.contents(), png.as_slice());
    }
    envelope_recipients.sort();
    assert_eq!(
        envelope_recipients,
        ["ana@example.test", "cc@example.test", "hidden@example.test"]
    );
    assert!(
        !stored.contains("hidden@example.test"),
        "the Bcc address must not appear in the MIME"
    );
    assert!(
        stored.contains("multipart/mixed")
            && stored.contains("multipart/related")
            && stored.contains("multipart/alternative")
    );

    let message = app.wait_for(&id, WAIT, |m| status(m) == "sent").await;
    for recipient in message["recipients"].as_array().unwrap() {
        assert_eq!(recipient["status"], "sent");
        assert_eq!(recipient["smtp_code"], 250);
        assert!(
            recipient["diagnostic"].as_str().unwrap().contains("queued as"),
            "{recipient}"
        );
    }
    assert_eq!(message["events"].as_array().unwrap().len(), 3);
    assert_eq!(message["events"][0]["type"], "message.sent");
}

#[tokio::test]
async fn implicit_tls_upstream_delivers() {
    let app = spawn_app_with(|s| {
        let password_file = s.storage.path.join("smtp-password");
        s.upstreams = vec![Postfix::shared().upstream(TlsMode::Tls, &password_file)];
    })
    .await;
    let id = app.send_ok(&simple_message("tls@example.test")).await;
    app.postfix.wait_delivered(&id, 1, WAIT).await;
    app.wait_for(&id, WAIT, |m| status(m) == "sent").await;
}

#[tokio::test]
async fn rejected_rcpt_marks_recipient_bounced_with_code_and_diagnostic() {
    let app = spawn_app().await;
    let id = app.send_ok(&simple_message("reject@example.test")).await;
    let message = app.wait_for(&id, WAIT, |m| status(m) == "failed").await;
    let recipient = &message["recipients"][0];
    assert_eq!(recipient["status"], "bounced");
    assert_eq!(recipient["smtp_code"], 550);
    assert_eq!(recipient["enhanced_code"], "5.1.1");
    assert!(
        recipient["diagnostic"].as_str().unwrap().contains("User unknown"),
        "{recipient}"
    );
    assert_eq!(message["events"][0]["type"], "message.bounced");
    assert_eq!(message["next_attempt_at"], serde_json::Value::Null);
    assert!(app.postfix.delivered(&id).is_empty());
}

#[tokio::test]
async fn deferred_recipient_is_retried_then_failed_after_max_age() {
    let app = spawn_binary("[delivery]\nmax_age = \"3s\"\n").await;
    let id = app.send_ok(&simple_message("defer@example.test")).await;
    let deferred = app.wait_for(&id, WAIT, |m| status(m) == "deferred").await;
    assert!(deferred["next_attempt_at"].is_string(), "{deferred:#}");
    let recipient = &deferred["recipients"][0];
    assert_eq!(recipient["status"], "deferred");
    assert_eq!(recipient["smtp_code"], 451);
    assert_eq!(recipient["enhanced_code"], "4.2.0");

    let failed = app.wait_for(&id, WAIT, |m| status(m) == "failed").await;
    assert!(failed["attempts"].as_u64().unwrap() >= 3, "{failed:#}");
    assert_eq!(failed["recipients"][0]["status"], "failed");
    assert_eq!(failed["next_attempt_at"], serde_json::Value::Null);
    let types: Vec<&str> = failed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.last(), Some(&"message.failed"));
    assert!(
        types[..types.len() - 1].iter().all(|t| *t == "message.deferred"),
        "{types:?}"
    );
}

#[tokio::test]
async fn upstream_down_defers_and_everything_is_sent_once_it_is_back() {
    // A private Postfix so that stopping it does not disturb the other tests.
    let own = Postfix {
        dir: std::env::temp_dir().join(format!("mailgate-postfix-down-{}", std::process::id())),
        port: 10687,
    };
    own.control("start");
    own.control("stop");
    let app = spawn_app_with(|s| {
        let password_file = s.storage.path.join("smtp-password");
        s.upstreams = vec![own.upstream(TlsMode::Starttls, &password_file)];
    })
    .await;
    let ids = [
        app.send_ok(&simple_message("down-1@example.test")).await,
        app.send_ok(&simple_message("down-2@example.test")).await,
    ];
    for id in &ids {
        let message = app.wait_for(id, WAIT, |m| status(m) == "deferred").await;
        assert_eq!(message["recipients"][0]["smtp_code"], serde_json::Value::Null);
        assert!(message["recipients"][0]["diagnostic"].as_str().unwrap().len() > 3);
    }
    own.control("restart");
    for id in &ids {
        app.wait_for(id, WAIT, |m| status(m) == "sent").await;
        assert_eq!(own.wait_delivered(id, 1, WAIT).await.len(), 1);
    }
    own.control("stop");
    let _ = std::fs::remove_dir_all(&own.dir);
}

crate::on_both_backends!(a_scheduled_message_waits_for_send_at_and_can_be_cancelled_until_it_goes);
async fn a_scheduled_message_waits_for_send_at_and_can_be_cancelled_until_it_goes(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut scheduled = simple_message("later@example.test");
    scheduled["send_at"] = json!(at);
    let later = app.send_ok(&scheduled).await;
    assert_eq!(app.message(&later).await["status"], "scheduled");
    assert!(app.postfix.delivered(&later).is_empty(), "not before send_at");
    app.wait_for(&later, WAIT, |m| status(m) == "sent").await;

    let mut far = simple_message("never@example.test");
    far["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let never = app.send_ok(&far).await;
    let cancel = |id: String| {
        app.client
            .post(format!("{}/v1/messages/{id}/cancel", app.address))
            .bearer_auth(&app.token)
            .send()
    };
    let cancelled = cancel(never.clone()).await.unwrap();
    assert_eq!(cancelled.status(), 200);
    let view: serde_json::Value = cancelled.json().await.unwrap();
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["events"][0]["type"], "message.cancelled");
    assert_eq!(cancel(never.clone()).await.unwrap().status(), 409, "cancelled already");
    assert_eq!(cancel(later.clone()).await.unwrap().status(), 409, "sent already");

    let list: serde_json::Value = app
        .get("/v1/messages?status=cancelled", &app.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], never.as_str());
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let all: serde_json::Value = app.get("/v1/messages?limit=1", &app.token).await.json().await.unwrap();
    assert_eq!(all["data"][0]["id"], never.as_str(), "newest first");
    let cursor = all["next_cursor"].as_str().unwrap();
    let rest: serde_json::Value = app
        .get(&format!("/v1/messages?limit=5&cursor={cursor}"), &app.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"][0]["id"], later.as_str());
    let by_recipient: serde_json::Value = app
        .get("/v1/messages?recipient=LATER@example.test", &app.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_recipient["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/messages?status=nope", &app.token).await.status(), 422);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_refuses_another_body_and_races_to_one_message() {
    an_idempotency_key_replays_the_first_answer_refuses_another_body_and_races_to_one_message_on(Backend::Sled).await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_refuses_another_body_and_races_to_one_message_on_postgres() {
    an_idempotency_key_replays_the_first_answer_refuses_another_body_and_races_to_one_message_on(Backend::Postgres)
        .await;
}

async fn an_idempotency_key_replays_the_first_answer_refuses_another_body_and_races_to_one_message_on(
    backend: Backend,
) {
    let app = spawn_app_on(backend).await;
    let send = |key: &'static str, to: &'static str| {
        app.client
            .post(format!("{}/v1/messages", app.address))
            .bearer_auth(&app.token)
            .header("Idempotency-Key", key)
            .json(&simple_message(to))
            .send()
    };
    let first = send("order-42", "idem@example.test").await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    app.wait_for(&id, WAIT, |m| status(m) == "sent").await;

    let again = send("order-42", "idem@example.test").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first answer, not the current state");

    let other = send("order-42", "someone-else@example.test").await.unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(
        other.json::<serde_json::Value>().await.unwrap()["code"],
        "idempotency_key_reused"
    );

    let racers = futures_util::future::join_all((0..8).map(|_| send("race-1", "race@example.test"))).await;
    let ids: std::collections::BTreeSet<String> = {
        let mut ids = std::collections::BTreeSet::new();
        for response in racers {
            let response = response.unwrap();
            assert_eq!(response.status(), 202);
            ids.insert(
                response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    };
    assert_eq!(ids.len(), 1, "concurrent duplicates create one message");
    assert_eq!(app.stored_messages().await, 2);
    let bad = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", "has space")
        .json(&simple_message("x@example.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

crate::on_both_backends!(a_batch_accepts_valid_items_refuses_invalid_ones_in_order_and_honours_item_keys);
async fn a_batch_accepts_valid_items_refuses_invalid_ones_in_order_and_honours_item_keys(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let mut keyed = simple_message("batch-2@example.test");
    keyed["idempotency_key"] = json!("batch-item-2");
    let batch = json!({"messages": [
        simple_message("batch-1@example.test"),
        {"from": "x@sender.mailgate.test", "to": ["not-an-address"], "subject": "s", "text": "t"},
        keyed,
    ]});
    let post = || {
        app.client
            .post(format!("{}/v1/messages/batch", app.address))
            .bearer_auth(&app.token)
            .json(&batch)
            .send()
    };
    let response = post().await.unwrap();
    assert_eq!(response.status(), 200);
    let results: serde_json::Value = response.json().await.unwrap();
    let data = results["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data[0]["id"].is_string());
    assert_eq!(data[1]["error"]["code"], "invalid_address");
    assert_eq!(data[1]["error"]["errors"][0]["field"], "/messages/1/to/0");
    let keyed_id = data[2]["id"].as_str().unwrap().to_owned();
    for item in [&data[0], &data[2]] {
        let id = item["id"].as_str().unwrap();
        app.postfix.wait_delivered(id, 1, WAIT).await;
    }
    // Retrying the whole batch re-sends the unkeyed item but not the keyed one.
    let retried: serde_json::Value = post().await.unwrap().json().await.unwrap();
    assert_eq!(retried["data"][2]["id"], keyed_id.as_str());
    assert_ne!(retried["data"][0]["id"], data[0]["id"]);
    assert_eq!(app.stored_messages().await, 3);
    let empty = app
        .client
        .post(format!("{}/v1/messages/batch", app.address))
        .bearer_auth(&app.token)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 422);
    // An item of the wrong shape is a malformed request: the whole batch is refused,
    // with every such error, and nothing is stored.
    let mut misshaped = simple_message("batch-3@example.test");
    misshaped["template"] = json!([null, "welcome"]);
    let mut unknown = simple_message("batch-4@example.test");
    unknown["sendat"] = json!("2026-12-01T09:00:00Z");
    let refused = app
        .client
        .post(format!("{}/v1/messages/batch", app.address))
        .bearer_auth(&app.token)
        .json(&json!({"messages": [simple_message("batch-5@example.test"), misshaped, unknown]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem: serde_json::Value = refused.json().await.unwrap();
    let fields: Vec<_> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].clone())
        .collect();
    assert_eq!(fields, [json!("/messages/1/template"), json!("/messages/2/sendat")]);
    assert_eq!(app.stored_messages().await, 3);
}

/// Items of a batch are accepted concurrently, so two items with one key meet as two
/// concurrent requests do: the same body gets the one message, another body is refused.
#[tokio::test]
async fn items_of_one_batch_sharing_a_key_store_one_message() {
    let app = spawn_app().await;
    let mut same = simple_message("twin@example.test");
    same["idempotency_key"] = json!("twins");
    let mut other = simple_message("other@example.test");
    other["idempotency_key"] = json!("cousins");
    let mut cousin = simple_message("cousin@example.test");
    cousin["idempotency_key"] = json!("cousins");
    let response = app
        .client
        .post(format!("{}/v1/messages/batch", app.address))
        .bearer_auth(&app.token)
        .json(&json!({"messages": [same.clone(), same, other, cousin]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let results: serde_json::Value = response.json().await.unwrap();
    let data = results["data"].as_array().unwrap();
    assert!(data[0]["id"].is_string());
    assert_eq!(
        data[0]["id"], data[1]["id"],
        "the same body with the same key: one message"
    );
    let cousins = [&data[2], &data[3]];
    assert_eq!(
        cousins.iter().filter(|item| item["id"].is_string()).count(),
        1,
        "{cousins:?}"
    );
    assert_eq!(
        cousins
            .iter()
            .filter(|item| item["error"]["code"] == "idempotency_key_reused")
            .count(),
        1,
        "{cousins:?}"
    );
    assert_eq!(app.stored_messages().await, 2);
}

#[tokio::test]
async fn a_queue_over_its_bound_gets_503_and_keeps_what_it_accepted() {
    let app = spawn_binary("[delivery]\nmax_queue_depth = 3\n").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.send_ok(&simple_message(&format!("defer@d{n}.example.test"))).await);
    }
    // The depth is sampled every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let response = app.send_as(&app.token, &simple_message("one-more@example.test")).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 202);
        ids.push(
            response.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert!(std::time::Instant::now() < deadline, "no back-pressure after 5 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "5");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full");
    assert_eq!(app.stored_messages().await, ids.len(), "everything accepted is kept");
}

/// One connection (`max_connections = 1`) through a refused, a deferred and an accepted
/// recipient, in turn, on the harness port that offers PIPELINING and on the one that
/// does not (`BASE + 6`, `smtpd_discard_ehlo_keywords = pipelining`): each outcome is
/// the relay's, and the connection goes on to the next transaction.
#[tokio::test]
async fn every_outcome_holds_with_and_without_pipelining_on_one_reused_connection() {
    let postfix = Postfix::shared();
    for (port, offers) in [(postfix.port, true), (postfix.port + 6, false)] {
        // What the relay's EHLO says, before TLS (Postfix lists the same keywords after).
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let session = mailgate::delivery::smtp_session::Session::open(Box::new(tcp), "test.local")
            .await
            .unwrap();
        assert_eq!(
            session.pipelines(),
            offers,
            "port {port} advertises PIPELINING: {offers}"
        );
        session.quit().await;
        let app = spawn_app_with(|s| {
            s.upstreams[0].port = port;
            s.upstreams[0].max_connections = 1;
        })
        .await;
        let mut ids = Vec::new();
        for to in [
            "first@example.test",
            "reject@example.test",
            "defer@example.test",
            "last@example.test",
        ] {
            ids.push(app.send_ok(&simple_message(to)).await);
        }
        let outcome = |id: &String, wanted: &'static str| {
            let app = &app;
            let id = id.clone();
            async move {
                let message = app
                    .wait_for(&id, WAIT, |m| m["recipients"][0]["status"] == wanted)
                    .await;
                message["recipients"][0]["smtp_code"].clone()
            }
        };
        assert_eq!(outcome(&ids[0], "sent").await, 250, "port {port}");
        assert_eq!(outcome(&ids[1], "bounced").await, 550, "port {port}");
        assert_eq!(outcome(&ids[2], "deferred").await, 451, "port {port}");
        assert_eq!(outcome(&ids[3], "sent").await, 250, "port {port}");
        for id in [&ids[0], &ids[3]] {
            let delivered = app.postfix.wait_delivered(id, 1, WAIT).await;
            assert!(lf(&delivered[0]).contains("plain body"), "port {port}");
        }
        assert!(
            app.postfix.delivered(&ids[1]).is_empty(),
            "no body for a refused recipient"
        );
    }
}
