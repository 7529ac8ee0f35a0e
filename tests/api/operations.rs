//! Health, readiness, unknown routes and the committed OpenAPI document.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn committed_openapi_document_is_what_the_service_serves() {
    let app = spawn_app().await;
    let served: Value = app.get("/openapi.json", &app.token).await.json().await.unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json"),
    )
    .unwrap();
    assert!(
        served == committed,
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
    for path in [
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/messages/{id}/mime",
        "/healthz",
        "/readyz",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is not documented");
    }
    assert_eq!(served["paths"]["/v1/messages"]["post"]["operationId"], "send_message");
    let bounced = &served["webhooks"]["message.bounced"]["post"];
    assert_eq!(
        bounced["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PublishedEvent"
    );
}

#[tokio::test]
async fn health_and_readiness_report_a_working_service() {
    let app = spawn_app().await;
    let health = app.client.get(format!("{}/healthz", app.address)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(format!("{}/readyz", app.address)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["upstream:postfix"], true);
    assert_eq!(body["checks"]["store"], true);
    let missing = app.client.get(format!("{}/v1/nope", app.address)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let wrong_method = app
        .client
        .delete(format!("{}/v1/messages", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "GET, POST");
    let wrong_method = app
        .client
        .put(format!("{}/v1/messages/msg_x/mime", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.headers()["allow"], "GET");
}

#[tokio::test]
async fn interactive_docs_are_served_from_the_binary_without_a_cdn() {
    let app = spawn_app().await;
    let page = app.client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(page.status(), 200, "/docs redirects to /docs/");
    let html = page.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    for attribute in ["src=\"http", "href=\"http", "src='http", "href='http"] {
        assert!(
            !html.contains(attribute),
            "the docs page must not load assets from the network"
        );
    }
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn metrics_count_acceptances_outcomes_and_requests() {
    let app = spawn_app().await;
    let id = app
        .send_ok(&crate::helpers::simple_message("metrics@example.test"))
        .await;
    app.wait_for(&id, std::time::Duration::from_secs(20), |m| m["status"] == "sent")
        .await;
    let mut later = crate::helpers::simple_message("later@example.test");
    later["send_at"] = serde_json::json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    app.send_ok(&later).await;
    // The queue is sampled once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let response = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains("mailgate_messages_accepted_total 2"), "{text}");
    assert!(
        text.contains("mailgate_recipients_total{upstream=\"postfix\",outcome=\"sent\"} 1"),
        "{text}"
    );
    assert!(!text.contains("tenant="), "no tenant names by default: {text}");
    assert!(text.contains("mailgate_delivery_latency_seconds_count 1"), "{text}");
    assert!(text.contains("route=\"/v1/messages\",status=\"202\"} 2"), "{text}");
    assert!(
        text.contains("mailgate_upstream_max_connections{upstream=\"postfix\"} 4"),
        "{text}"
    );
    assert!(text.contains("mailgate_queue_depth{state=\"scheduled\"} 1"), "{text}");
    assert!(text.contains("mailgate_queue_depth{state=\"queued\"} 0"), "{text}");
}

#[tokio::test]
async fn request_metrics_label_each_request_with_the_route_that_served_it() {
    let app = spawn_app().await;
    let batch = serde_json::json!({"messages": [crate::helpers::simple_message("batch@example.test")]});
    let post = |path: &str, body: &Value| {
        app.client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&app.token)
            .json(body)
            .send()
    };
    assert_eq!(post("/v1/messages/batch", &batch).await.unwrap().status(), 200);
    let wrong_method = post("/v1/messages/msg_00000000000000000000000000000000", &batch)
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let text = app.get("/metrics", &app.token).await.text().await.unwrap();
    assert!(
        text.contains("mailgate_http_requests_total{method=\"POST\",route=\"/v1/messages/batch\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mailgate_http_requests_total{method=\"POST\",route=\"/v1/messages/{id}\",status=\"405\"} 1"),
        "{text}"
    );
}

/// The request examples in the document work as written against a real server (the
/// contract script checks that every example matches its schema; this checks they mean
/// something), and the render example produces the response example.
#[tokio::test]
async fn documented_request_examples_work_as_written() {
    let app = spawn_app().await;
    let document = serde_json::to_value(mailgate::api::openapi_document()).unwrap();
    let example = |schema: &str| document["components"]["schemas"][schema]["example"].clone();
    let admin = crate::helpers::mint(
        &app.keys,
        "acme",
        "messages:send templates:write templates:read bounces:write admin",
    );
    let post = |path: &str, body: Value| {
        app.client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/v1/messages", example("SendMessageRequest"))
            .await
            .unwrap()
            .status(),
        202
    );
    let templated = serde_json::json!({
        "from": "Acme <no-reply@acme.test>", "to": "ana@example.test", "template": example("TemplateRequest"),
    });
    assert_eq!(post("/v1/messages", templated).await.unwrap().status(), 202);
    assert_eq!(
        post("/v1/templates", example("CreateTemplateRequest"))
            .await
            .unwrap()
            .status(),
        201
    );
    let name = example("CreateTemplateRequest")["name"].as_str().unwrap().to_owned();
    let rendered = post(
        &format!("/v1/templates/{name}/render"),
        example("RenderTemplateRequest"),
    )
    .await
    .unwrap();
    assert_eq!(rendered.status(), 200);
    let rendered: Value = rendered.json().await.unwrap();
    let expected = example("RenderTemplateResponse");
    for part in ["subject", "html", "text"] {
        assert_eq!(rendered[part], expected[part], "{part}");
    }
    assert_eq!(
        post("/v1/tokens/revoke", example("RevokeRequest"))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        post("/v1/bounces/events", example("GenericReport"))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(post("/emails", example("ResendEmail")).await.unwrap().status(), 200);
    assert_eq!(
        post("/v3/mail/send", example("SendGridMail")).await.unwrap().status(),
        202
    );
}
