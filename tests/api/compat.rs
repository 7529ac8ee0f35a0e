//! The provider-compatible routes at the HTTP surface: all-or-nothing requests change
//! nothing when one part is refused, and every refusal has the provider's shape and
//! `application/json` (the SDKs' own checks are in `provider_sdks`).

use serde_json::{json, Value};

use crate::helpers::{mint, spawn_app, TestApp};

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (u16, String, Value) {
    let mut request = app.client.post(format!("{}{path}", app.address)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    let media = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, media, body)
}

async fn create_template(app: &TestApp) {
    let admin = mint(&app.keys, "acme", "templates:write");
    let template = json!({"name": "d-receipt", "subject": "Receipt {{order}}", "text": "Total {{total}}"});
    let (status, _, body) = post(app, "/v1/templates", Some(&admin), &template).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_strict_resend_batch_with_one_unrenderable_email_stores_none_and_permissive_stores_the_rest() {
    let app = spawn_app().await;
    create_template(&app).await;
    let good = json!({"from": "no-reply@acme.test", "to": "ana@example.test", "subject": "ok", "text": "ok"});
    // Valid JSON and valid fields: only rendering finds what is missing.
    let missing = json!({"from": "no-reply@acme.test", "to": "bob@example.test",
                         "template": {"id": "d-receipt", "variables": {"order": "42"}}});
    let batch = json!([good, missing]);

    let (status, media, body) = post(&app, "/emails/batch", Some(&app.token), &batch).await;
    assert_eq!((status, media.as_str()), (422, "application/json"), "{body}");
    assert_eq!(body["name"], "validation_error");
    assert_eq!(body["statusCode"], 422);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`1/template/variables/total`"),
        "{body}"
    );
    assert_eq!(app.stored_messages().await, 0, "a strict batch is all or nothing");

    let permissive = app
        .client
        .post(format!("{}/emails/batch", app.address))
        .bearer_auth(&app.token)
        .header("x-batch-validation", "permissive")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(permissive.status(), 200);
    let body: Value = permissive.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    assert_eq!(app.stored_messages().await, 1);
}

#[tokio::test]
async fn a_sendgrid_send_is_refused_whole_when_one_personalization_cannot_render() {
    let app = spawn_app().await;
    create_template(&app).await;
    let mail = json!({
        "personalizations": [
            {"to": [{"email": "ana@example.test"}], "dynamic_template_data": {"order": "1", "total": "9"}},
            {"to": [{"email": "bob@example.test"}], "dynamic_template_data": {"order": "2"}}
        ],
        "from": {"email": "no-reply@acme.test"},
        "template_id": "d-receipt"
    });
    let (status, media, body) = post(&app, "/v3/mail/send", Some(&app.token), &mail).await;
    assert_eq!((status, media.as_str()), (400, "application/json"), "{body}");
    assert_eq!(
        body["errors"][0]["field"], "personalizations.1.dynamic_template_data.total",
        "{body}"
    );
    assert_eq!(app.stored_messages().await, 0, "nothing is stored");

    let mut fixed = mail.clone();
    fixed["personalizations"][1]["dynamic_template_data"]["total"] = json!("3");
    let response = app
        .client
        .post(format!("{}/v3/mail/send", app.address))
        .bearer_auth(&app.token)
        .json(&fixed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ids = response.headers()["x-mailgate-message-ids"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ids.split(',').count(), 2);
    assert_eq!(
        response.headers()["x-message-id"].to_str().unwrap(),
        ids.split(',').next().unwrap()
    );
    assert_eq!(
        response.text().await.unwrap(),
        "",
        "SendGrid answers 202 with an empty body"
    );
}

#[tokio::test]
async fn refusals_before_the_handler_speak_the_providers_shape() {
    let app = spawn_app().await;
    let email = json!({"from": "no-reply@acme.test", "to": "ana@example.test", "subject": "s", "text": "t"});

    let (status, media, body) = post(&app, "/emails", None, &email).await;
    assert_eq!((status, media.as_str()), (401, "application/json"));
    assert_eq!(body["name"], "missing_api_key");
    let (status, _, body) = post(&app, "/emails", Some("not-a-token"), &email).await;
    assert_eq!((status, body["name"].as_str()), (403, Some("invalid_api_key")));
    let reader = mint(&app.keys, "acme", "messages:read");
    let (status, _, body) = post(&app, "/emails", Some(&reader), &email).await;
    assert_eq!((status, body["name"].as_str()), (401, Some("restricted_api_key")));

    let (status, media, body) = post(&app, "/emails/nope/deeper", Some(&app.token), &email).await;
    assert_eq!((status, media.as_str()), (404, "application/json"));
    assert_eq!(body["name"], "not_found");

    let (status, media, body) = post(&app, "/v3/mail/send", None, &json!({})).await;
    assert_eq!((status, media.as_str()), (401, "application/json"));
    assert!(body["errors"][0]["message"].is_string(), "{body}");

    let mut unknown = email.clone();
    unknown["topic_id"] = json!("t1");
    let (status, _, body) = post(&app, "/emails", Some(&app.token), &unknown).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("topic_id"), "{body}");
    assert_eq!(app.stored_messages().await, 0);
}
