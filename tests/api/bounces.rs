//! Bounce ingestion: a real asynchronous DSN from Postfix, and the report formats.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{mint, simple_message, spawn_app_with, spawn_binary, spawn_binary_with_env, TestApp};
use crate::webhooks::Receiver;

const WAIT: Duration = Duration::from_secs(30);

async fn post(app: &TestApp, token: &str, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_real_postfix_dsn_bounces_the_recipient_fires_the_webhook_and_suppresses_the_address() {
    let app = spawn_app_with(|s| s.webhooks.allow_private_targets = true).await;
    let receiver = Receiver::start(200).await;
    let admin = mint(&app.keys, "acme", "webhooks:manage suppressions:manage bounces:write");
    let hook = app
        .client
        .post(format!("{}/v1/webhooks", app.address))
        .bearer_auth(&admin)
        .json(&json!({"url": receiver.url, "events": ["message.bounced"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 201);
    // Postfix's DSN pipe posts the DSNs of each message to this app with this token.
    let dsn_url = format!("{}/v1/bounces/dsn", app.address);

    let id = app.send_ok(&simple_message("nobody@nouser.test")).await;
    app.postfix.route_dsns(&id, &dsn_url, &admin);
    let bounced = app
        .wait_for(&id, WAIT, |m| m["recipients"][0]["status"] == "bounced")
        .await;
    let recipient = &bounced["recipients"][0];
    assert_eq!(recipient["enhanced_code"], "5.1.1", "{bounced:#}");
    let types: Vec<&str> = bounced["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["message.sent", "message.bounced"],
        "accepted by the upstream, bounced later"
    );
    assert_eq!(bounced["events"][1]["seq"], 2);

    let got = receiver.wait("message.bounced", |all| !all.is_empty()).await;
    let event: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(event["type"], "message.bounced");
    assert_eq!(event["data"]["message_id"], id.as_str());
    assert_eq!(event["data"]["bounce"]["source"], "dsn");
    assert_eq!(event["data"]["bounce"]["kind"], "hard");

    let suppression: Value = app
        .get("/v1/suppressions/nobody@nouser.test", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (suppression["reason"].as_str(), suppression["source"].as_str()),
        (Some("hard_bounce"), Some("dsn"))
    );
    let again = app.send_ok(&simple_message("nobody@nouser.test")).await;
    assert_eq!(app.message(&again).await["recipients"][0]["status"], "suppressed");

    // The form real providers send: Postfix relays to a "remote MX" that answers 550,
    // and its DSN carries `Diagnostic-Code: smtp; 550 …` and `Remote-MTA`.
    let remote = app.send_ok(&simple_message("someone@remote-bounce.test")).await;
    app.postfix.route_dsns(&remote, &dsn_url, &admin);
    let bounced = app
        .wait_for(&remote, WAIT, |m| m["recipients"][0]["status"] == "bounced")
        .await;
    let recipient = &bounced["recipients"][0];
    assert_eq!(recipient["smtp_code"], 550, "{bounced:#}");
    assert!(
        recipient["diagnostic"]
            .as_str()
            .unwrap()
            .contains("Simulated remote MX"),
        "{recipient}"
    );
}

#[tokio::test]
async fn reports_that_match_nothing_or_do_not_parse_are_kept_and_answered_202_but_non_messages_are_refused() {
    let app = spawn_app_with(|_| {}).await;
    let token = mint(&app.keys, "acme", "bounces:write");
    for sample in ["postfix-dsn-pipe-bounce.eml", "postfix-dsn-remote-550.eml"] {
        let raw = std::fs::read(format!("{}/tests/fixtures/dsn/{sample}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let (status, body) = post(&app, &token, "/v1/bounces/dsn", "message/rfc822", raw).await;
        assert_eq!(
            (status, body["matched"].as_u64(), body["unmatched"].as_u64()),
            (202, Some(0), Some(1)),
            "{sample}"
        );
        assert!(body["report_id"].as_str().unwrap().starts_with("rpt_"));
    }
    let (status, body) = post(
        &app,
        &token,
        "/v1/bounces/dsn",
        "message/rfc822",
        b"Subject: hello\r\n\r\nnot a report of any kind".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["unmatched"].as_u64()),
        (202, Some(1)),
        "a message that is no report is kept"
    );
    let (status, body) = post(
        &app,
        &token,
        "/v1/bounces/dsn",
        "text/plain",
        b"\x00\xffnot mail at all".to_vec(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("not_a_message")));
    let (status, body) = post(&app, &token, "/v1/bounces/dsn", "message/rfc822", Vec::new()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("empty_body")));
    let (status, _) = post(&app, &app.token, "/v1/bounces/dsn", "message/rfc822", b"x".to_vec()).await;
    assert_eq!(status, 403, "bounces:write is required");
}

#[tokio::test]
async fn complaints_and_generic_reports_are_recorded_on_the_message() {
    let app = spawn_app_with(|_| {}).await;
    let token = mint(&app.keys, "acme", "bounces:write suppressions:manage");
    let id = app.send_ok(&simple_message("ana@example.test")).await;
    app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;

    let delivered = json!({"type": "delivery", "message_id": id, "recipient": "Ana@Example.test", "source": "edge"});
    let (status, body) = post(
        &app,
        &token,
        "/v1/bounces/events",
        "application/json",
        delivered.to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, body["matched"].as_u64()), (202, Some(1)), "{body}");
    assert_eq!(app.message(&id).await["recipients"][0]["status"], "delivered");

    let arf = std::fs::read_to_string(format!(
        "{}/tests/fixtures/arf/complaint.eml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("msg_00000000000000000000000000000001", &id)
    .replace("bounce+", "someone+");
    let (status, body) = post(
        &app,
        &token,
        "/v1/bounces/dsn",
        "message/rfc822",
        arf.clone().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, body["matched"].as_u64()),
        (202, Some(1)),
        "matched by the returned Message-ID: {body}"
    );
    let (status, _) = post(&app, &token, "/v1/bounces/dsn", "message/rfc822", arf.into_bytes()).await;
    assert_eq!(status, 202);
    let complaints = app.message(&id).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message.complained")
        .count();
    assert_eq!(complaints, 1, "the same report delivered twice is recorded once");
    let message = app.message(&id).await;
    assert_eq!(message["recipients"][0]["status"], "complained");
    assert_eq!(
        message["events"].as_array().unwrap().last().unwrap()["type"],
        "message.complained"
    );
    let suppression: Value = app
        .get("/v1/suppressions/ana@example.test", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(suppression["reason"], "complaint");

    let unknown =
        json!({"type": "bounce", "message_id": "msg_00000000000000000000000000000000", "recipient": "x@example.test"});
    let (status, body) = post(
        &app,
        &token,
        "/v1/bounces/events",
        "application/json",
        unknown.to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, body["unmatched"].as_u64()), (202, Some(1)));
    let (status, _) = post(
        &app,
        &token,
        "/v1/bounces/events",
        "application/json",
        b"{\"type\": \"nope\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn provider_webhooks_check_their_signatures_and_record_reports() {
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit, Mac};
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    let b64 = base64::engine::general_purpose::STANDARD;
    let signing = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let sendgrid_key = b64.encode(signing.verifying_key().to_public_key_der().unwrap().as_bytes());
    // As the README shows: both secrets from environment variables the file names.
    let app = spawn_binary_with_env(
        &format!(
            "[tenants.acme]\nmailgun_signing_key_env = \"ACME_MAILGUN_SIGNING_KEY\"\n\
             postmark_webhook_auth_env = \"ACME_POSTMARK_WEBHOOK_AUTH\"\n\
             sendgrid_verification_key = \"{sendgrid_key}\"\n[bounces]\nmax_signature_age = \"10m\"\n"
        ),
        &[
            ("ACME_MAILGUN_SIGNING_KEY", "mg-signing-key"),
            ("ACME_POSTMARK_WEBHOOK_AUTH", "pm:hunter2"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for to in ["mg@example.test", "pm@example.test", "sg@example.test"] {
        let id = app.send_ok(&simple_message(to)).await;
        app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;
        ids.push(id);
    }
    let send = |path: &str, headers: Vec<(&'static str, String)>, body: String| {
        let mut request = app.client.post(format!("{}{path}", app.address)).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };

    // Mailgun: HMAC of timestamp + token.
    let mailgun_body = |timestamp: &str, key: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{timestamp}tok").as_bytes());
        let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        json!({"signature": {"timestamp": timestamp, "token": "tok", "signature": signature},
               "event-data": {"event": "failed", "severity": "permanent", "recipient": "mg@example.test",
                              "message": {"headers": {"message-id": format!("{}@mail.mailgate.test", ids[0])}},
                              "delivery-status": {"code": 550, "message": "5.1.1 mailbox does not exist"}}})
        .to_string()
    };
    let now = chrono::Utc::now().timestamp().to_string();
    let response = send(
        "/v1/bounces/mailgun?tenant=acme",
        vec![],
        mailgun_body(&now, "mg-signing-key"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 202);
    let message = app.message(&ids[0]).await;
    assert_eq!(message["recipients"][0]["status"], "bounced");
    let replayed = send(
        "/v1/bounces/mailgun?tenant=acme",
        vec![],
        mailgun_body(&now, "mg-signing-key"),
    )
    .await
    .unwrap();
    assert_eq!(replayed.status(), 401, "a Mailgun signature (token) is accepted once");
    assert_eq!(
        message["events"].as_array().unwrap().last().unwrap()["type"],
        "message.bounced"
    );
    let forged = send("/v1/bounces/mailgun?tenant=acme", vec![], mailgun_body(&now, "wrong"))
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let stale = send(
        "/v1/bounces/mailgun?tenant=acme",
        vec![],
        mailgun_body("1529006854", "mg-signing-key"),
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), 401);
    assert_eq!(stale.json::<Value>().await.unwrap()["code"], "stale_signature");
    let other = send(
        "/v1/bounces/mailgun?tenant=globex",
        vec![],
        mailgun_body(&now, "mg-signing-key"),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 401, "a tenant without a key cannot be written to");

    // Postmark: Basic credentials.
    let complaint = json!({"RecordType": "SpamComplaint", "Email": "pm@example.test", "Type": "SpamComplaint",
                           "Metadata": {"mailgate_message_id": ids[1]}, "BouncedAt": "2026-11-28T10:00:00Z"})
    .to_string();
    let basic = |creds: &str| ("authorization", format!("Basic {}", b64.encode(creds)));
    let response = send(
        "/v1/bounces/postmark?tenant=acme",
        vec![basic("pm:hunter2")],
        complaint.clone(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(app.message(&ids[1]).await["recipients"][0]["status"], "complained");
    let denied = send("/v1/bounces/postmark?tenant=acme", vec![basic("pm:guess")], complaint)
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // SendGrid: ECDSA over timestamp + body.
    let events = json!([{"email": "sg@example.test", "timestamp": 1, "event": "delivered",
                         "smtp-id": format!("<{}@mail.mailgate.test>", ids[2]), "response": "250 OK"}])
    .to_string();
    let signature: p256::ecdsa::Signature = signing.sign(format!("{now}{events}").as_bytes());
    let headers = vec![
        (
            "x-twilio-email-event-webhook-signature",
            b64.encode(signature.to_der().as_bytes()),
        ),
        ("x-twilio-email-event-webhook-timestamp", now.clone()),
    ];
    let response = send("/v1/bounces/sendgrid?tenant=acme", headers.clone(), events.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(app.message(&ids[2]).await["recipients"][0]["status"], "delivered");
    let tampered = send(
        "/v1/bounces/sendgrid?tenant=acme",
        headers,
        events.replace("delivered", "bounce"),
    )
    .await
    .unwrap();
    assert_eq!(tampered.status(), 401);
}

/// Signs `data` with `openssl dgst -<digest> -sign key`, base64-encoded.
fn openssl_sign(dir: &std::path::Path, digest: &str, data: &str) -> String {
    use base64::Engine as _;
    std::fs::write(dir.join("canonical.txt"), data).unwrap();
    let status = std::process::Command::new("openssl")
        .args(["dgst", &format!("-{digest}"), "-sign"])
        .arg(dir.join("sns.key"))
        .arg("-out")
        .arg(dir.join("sig.bin"))
        .arg(dir.join("canonical.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("sig.bin")).unwrap())
}

#[tokio::test]
async fn ses_notifications_through_sns_are_verified_bound_to_the_tenants_topic_and_recorded() {
    let keys = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sns.test",
        ])
        .arg("-keyout")
        .arg(keys.path().join("sns.key"))
        .arg("-out")
        .arg(keys.path().join("sns.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let topic = "arn:aws:sns:us-east-1:123456789012:ses-bounces";
    let pem = keys.path().join("sns.pem");
    let app = spawn_binary(&format!(
        "[bounces]\nsns_certificate_file = \"{}\"\n[tenants.acme]\nses_topic_arns = [\"{topic}\"]\n",
        pem.display()
    ))
    .await;
    let id = app.send_ok(&simple_message("ses@example.test")).await;
    app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;

    // The SES documentation's bounce sample, pointed at our message.
    let ses_message = json!({"notificationType": "Bounce",
        "bounce": {"feedbackId": "0100015a", "bounceType": "Permanent", "bounceSubType": "General",
                   "bouncedRecipients": [{"emailAddress": "ses@example.test", "action": "failed", "status": "5.1.1",
                                          "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                   "timestamp": "2016-01-27T14:59:38.237Z", "reportingMTA": "dsn; a7-12.smtp-out.us-west-2.amazonses.com"},
        "mail": {"timestamp": "2016-01-27T14:59:38.237Z", "source": "john@example.com", "messageId": "00000137860315fd",
                 "commonHeaders": {"from": ["John Doe <john@example.com>"], "to": ["ses@example.test"],
                                   "messageId": format!("<{id}@mail.mailgate.test>"), "subject": "Hello"}}})
    .to_string();
    let envelope = |version: &str, digest: &str, timestamp: &str, topic_arn: &str| {
        let mut env = json!({"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": topic_arn, "Message": ses_message, "Timestamp": timestamp, "SignatureVersion": version,
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem"});
        let canonical = mailgate::bounces::providers::ses::string_to_sign(&env).unwrap();
        env["Signature"] = json!(openssl_sign(keys.path(), digest, &canonical));
        env.to_string()
    };
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let post_ses = |body: String| {
        app.client
            .post(format!("{}/v1/bounces/ses?tenant=acme", app.address))
            .body(body)
            .send()
    };

    let response = post_ses(envelope("2", "sha256", &now, topic)).await.unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let message = app.message(&id).await;
    assert_eq!(message["recipients"][0]["status"], "bounced");
    let bounce = &message["events"].as_array().unwrap().last().unwrap();
    assert_eq!(bounce["type"], "message.bounced");

    assert_eq!(
        post_ses(envelope("1", "sha1", &now, topic)).await.unwrap().status(),
        202,
        "SignatureVersion 1"
    );
    let foreign_topic = post_ses(envelope("2", "sha256", &now, "arn:aws:sns:us-east-1:999:other"))
        .await
        .unwrap();
    assert_eq!(
        foreign_topic.status(),
        401,
        "a verified notification from another topic is refused"
    );
    let stale = post_ses(envelope("2", "sha256", "2016-01-27T14:59:38.237Z", topic))
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let tampered = envelope("2", "sha256", &now, topic).replace("Permanent", "Transient");
    assert_eq!(post_ses(tampered).await.unwrap().status(), 401);
}
