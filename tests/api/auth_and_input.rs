//! Authentication, tenancy and input validation: every refusal is a problem+json with a
//! stable code and pointer, and nothing is stored.

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{mint, simple_message, spawn_app, spawn_binary, TestApp};

async fn read_problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    (status, response.json().await.expect("problem json"))
}

fn forged_token(app: &TestApp, exp_offset: i64) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    signed(
        app,
        json!({"sub": "t", "tenant": "acme", "scope": "messages:send", "exp": now + exp_offset}),
    )
}

/// A token with exactly `claims`, signed with the app's dev key.
fn signed(app: &TestApp, claims: Value) -> String {
    let secret = std::fs::read_to_string(app.data.path().join("dev-hs256.key")).unwrap();
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.trim().as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn missing_malformed_wrongly_signed_or_expired_tokens_are_401() {
    let app = spawn_app().await;
    let body = simple_message("a@example.test");
    let no_token = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    let other_key = tempfile::tempdir().unwrap();
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = other_key.path().to_path_buf();
    let foreign = mint(
        &mailgate::auth::TokenKeys::load(&settings).unwrap(),
        "acme",
        "messages:send",
    );
    let expired = forged_token(&app, -3600);
    // Same header and signature, payload raised to `admin`: only the signature check
    // can refuse it.
    let parts: Vec<&str> = app.token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);

    let mut responses = vec![no_token];
    for token in ["not-a-jwt", &foreign, &expired, &tampered] {
        responses.push(app.send_as(token, &body).await);
    }
    for response in responses {
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{challenge}");
        let (status, problem) = read_problem(response).await;
        assert_eq!(status, 401);
        assert_eq!(problem["code"], "invalid_token");
    }
    assert_eq!(
        app.send_as(&forged_token(&app, 3600), &body).await.status(),
        202,
        "the forging helper itself is sound"
    );
    assert_eq!(
        app.stored_messages().await,
        1,
        "only the request with a valid token stored a message"
    );
}

#[tokio::test]
async fn a_token_without_the_scope_is_403() {
    let app = spawn_app().await;
    let read_only = mint(&app.keys, "acme", "messages:read");
    let response = app.send_as(&read_only, &simple_message("a@example.test")).await;
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let (status, problem) = read_problem(response).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("insufficient_scope")));

    let id = app.send_ok(&simple_message("a@example.test")).await;
    let send_only = mint(&app.keys, "acme", "messages:send");
    let (status, _) = read_problem(app.get(&format!("/v1/messages/{id}"), &send_only).await).await;
    assert_eq!(status, 403);
    assert_eq!(app.stored_messages().await, 1);
}

#[tokio::test]
async fn another_tenants_message_is_404_like_a_missing_one() {
    let app = spawn_app().await;
    let id = app.send_ok(&simple_message("a@example.test")).await;
    let other = mint(&app.keys, "globex", "messages:read");
    for path in [format!("/v1/messages/{id}"), format!("/v1/messages/{id}/mime")] {
        let (status, problem) = read_problem(app.get(&path, &other).await).await;
        assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
        assert!(!problem.to_string().contains("acme"));
    }
    let (status, _) = read_problem(
        app.get("/v1/messages/msg_00000000000000000000000000000000", &app.token)
            .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(app.get(&format!("/v1/messages/{id}"), &app.token).await.status(), 200);
}

#[tokio::test]
async fn invalid_fields_are_422_with_a_pointer_and_store_nothing() {
    let app = spawn_app().await;
    let base = simple_message("a@example.test");
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let cases = [
        (
            with("subject", json!("Hi\r\nBcc: victim@example.test")),
            "/subject",
            "invalid_subject",
        ),
        (
            with("to", json!(["Eve\r\nBcc: victim@example.test <e@example.test>"])),
            "/to/0",
            "invalid_address",
        ),
        (
            with("from", json!("Eve <eve@example.test>\nBcc: v@example.test")),
            "/from",
            "invalid_address",
        ),
        (
            with("headers", json!({"X-Test": "1\r\nBcc: victim@example.test"})),
            "/headers/X-Test",
            "invalid_header",
        ),
        (
            with("headers", json!({"From": "ceo@example.test"})),
            "/headers/From",
            "reserved_header",
        ),
        (with("to", json!(["not-an-address"])), "/to/0", "invalid_address"),
        (with("htlm", json!("<p>typo</p>")), "/htlm", "unknown_field"),
        (
            with(
                "attachments",
                json!([{"filename": "a.txt", "content_type": "text/plain", "content": "!!"}]),
            ),
            "/attachments/0/content",
            "invalid_base64",
        ),
        (with("to", json!([])), "/to", "missing_recipients"),
        (with("text", Value::Null), "/text", "missing_content"),
        (
            with("send_at", json!("2099-01-01T00:00:00Z")),
            "/send_at",
            "invalid_send_at",
        ),
        (with("send_at", json!("tomorrow")), "/send_at", "invalid_send_at"),
        (
            with("template", json!({"name": "welcome", "data": 5})),
            "/template/data",
            "invalid_type",
        ),
        (
            with("template", json!({"name": "welcome", "version": 0})),
            "/template/version",
            "invalid_template_version",
        ),
    ];
    for (body, field, code) in cases {
        let (status, problem) = read_problem(app.send_as(&app.token, &body).await).await;
        assert_eq!(status, 422, "{body} -> {problem}");
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert_eq!(problem["errors"][0]["code"], code, "{problem}");
    }
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn malformed_json_is_400_and_an_oversized_body_is_413() {
    let app = spawn_binary("[http]\nmax_body_bytes = 2048\n").await;
    let response = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    let (status, problem_json) = read_problem(response).await;
    assert_eq!((status, problem_json["code"].as_str()), (400, Some("malformed_json")));

    // Without Content-Length (chunked), the limit is enforced while reading.
    let address = app.address.trim_start_matches("http://").to_owned();
    let token = app.token.clone();
    let status_line = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = format!("{{\"text\": \"{}", "x".repeat(1000));
        for _ in 0..4 {
            if stream
                .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                .is_err()
            {
                break;
            }
        }
        let mut response = [0u8; 64];
        let n = stream.read(&mut response).unwrap();
        String::from_utf8_lossy(&response[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
    .await
    .unwrap();
    assert!(status_line.contains(" 413 "), "{status_line}");

    let mut big = simple_message("a@example.test");
    big["text"] = json!("x".repeat(4096));
    let (status, problem_json) = read_problem(app.send_as(&app.token, &big).await).await;
    assert_eq!(
        (status, problem_json["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_only_admins_revoke() {
    let app = spawn_app().await;
    let victim = mint(&app.keys, "acme", "messages:send messages:read");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: Value = serde_json::from_slice(&b64.decode(victim.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let body = json!({"jti": claims["jti"], "exp": claims["exp"]});
    let revoke = |token: String| {
        app.client
            .post(format!("{}/v1/tokens/revoke", app.address))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        revoke(victim.clone()).await.unwrap().status(),
        403,
        "admin scope required"
    );
    assert_eq!(
        app.send_as(&victim, &simple_message("a@example.test")).await.status(),
        202
    );
    assert_eq!(revoke(mint(&app.keys, "acme", "admin")).await.unwrap().status(), 204);
    let negative = app
        .client
        .post(format!("{}/v1/tokens/revoke", app.address))
        .bearer_auth(mint(&app.keys, "acme", "admin"))
        .json(&json!({"jti": "other", "exp": -1}))
        .send()
        .await
        .unwrap();
    let (status, problem) = read_problem(negative).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_exp")));
    let (status, problem) = read_problem(app.send_as(&victim, &simple_message("a@example.test")).await).await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (401, Some("the token has been revoked"))
    );
    assert_eq!(
        app.send_as(&app.token, &simple_message("a@example.test"))
            .await
            .status(),
        202,
        "others unaffected"
    );
}

#[tokio::test]
async fn sends_over_the_tenant_rate_get_429_with_headers_and_recover() {
    let app = spawn_binary(
        "[limits]\nmessages_per_second = 2\nburst = 2\n\
         [tenants.globex]\ndaily_quota = 1\nmessages_per_second = 0\n",
    )
    .await;
    let body = simple_message("limited@example.test");
    let first = app.send_as(&app.token, &body).await;
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(app.send_as(&app.token, &body).await.status(), 202);
    let refused = app.send_as(&app.token, &body).await;
    assert_eq!(refused.status(), 429);
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let (_, problem) = read_problem(refused).await;
    assert_eq!(problem["code"], "rate_limited");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(app.send_as(&app.token, &body).await.status(), 202, "the bucket refills");

    let globex = mint(&app.keys, "globex", "messages:send");
    assert_eq!(app.send_as(&globex, &body).await.status(), 202);
    let (status, problem) = read_problem(app.send_as(&globex, &body).await).await;
    assert_eq!((status, problem["code"].as_str()), (429, Some("daily_quota_exceeded")));

    // A token's `limits` claim lowers its own limits, never the tenant's or raises them.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let lowered = signed(
        &app,
        json!({"sub": "nightly-job", "tenant": "acme", "scope": "messages:send", "exp": exp,
               "limits": {"burst": 1, "messages_per_second": 1}}),
    );
    let first = app.send_as(&lowered, &body).await;
    assert_eq!(
        (first.status().as_u16(), &first.headers()["ratelimit-limit"]),
        (202, &"1".parse().unwrap())
    );
    assert_eq!(
        app.send_as(&lowered, &body).await.status(),
        429,
        "its own bucket of 1 is empty"
    );
    assert_eq!(
        app.send_as(&app.token, &body).await.status(),
        202,
        "the tenant's has room"
    );
}

#[tokio::test]
async fn hostile_shapes_are_refused_with_clear_problems() {
    let app = spawn_app().await;
    let mut many_headers = simple_message("a@example.test");
    many_headers["headers"] = (0..60)
        .map(|i| (format!("X-H{i}"), json!("v")))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let (status, problem) = read_problem(app.send_as(&app.token, &many_headers).await).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("too_many_headers")));

    let mut many_files = simple_message("a@example.test");
    many_files["attachments"] = (0..101)
        .map(|i| json!({"filename": format!("f{i}.txt"), "content_type": "text/plain", "content": "eA=="}))
        .collect();
    let (status, problem) = read_problem(app.send_as(&app.token, &many_files).await).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("too_many_attachments")));

    // Every other documented limit, each with its code and pointer.
    let at = |key: &str, value: Value| {
        let mut body = simple_message("a@example.test");
        body[key] = value;
        body
    };
    let limits = [
        (
            at("to", (0..51).map(|i| json!(format!("r{i}@example.test"))).collect()),
            "too_many_recipients",
            "/to",
        ),
        (at("subject", json!("s".repeat(999))), "invalid_subject", "/subject"),
        (
            at("headers", json!({"X-Long": "v".repeat(999)})),
            "invalid_header",
            "/headers/X-Long",
        ),
        (
            at(
                "metadata",
                (0..51)
                    .map(|i| (format!("k{i}"), json!("v")))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            ),
            "invalid_metadata",
            "/metadata",
        ),
        (
            at("tags", (0..11).map(|i| json!(format!("t{i}"))).collect()),
            "invalid_tag",
            "/tags",
        ),
    ];
    for (body, code, field) in limits {
        let (status, problem) = read_problem(app.send_as(&app.token, &body).await).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
            (422, Some(code), Some(field)),
            "{problem}"
        );
    }

    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({"d": deep});
    }
    let templated = json!({"from": "a@sender.mailgate.test", "to": "x@example.test",
                           "template": {"name": "welcome", "data": deep}});
    let (status, problem) = read_problem(app.send_as(&app.token, &templated).await).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("/template/data"))
    );

    assert_eq!(app.stored_messages().await, 0, "10,000-level nesting: see hostile.rs");
}

#[tokio::test]
async fn a_tenant_sends_only_from_its_allowed_sender_domains() {
    let app = spawn_binary("[tenants.acme]\nallowed_sender_domains = [\"sender.mailgate.test\"]\n").await;
    let mut foreign = simple_message("a@example.test");
    foreign["from"] = json!("Spoof <ceo@bank.example>");
    let (status, problem) = read_problem(app.send_as(&app.token, &foreign).await).await;
    assert_eq!(
        (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
        (422, Some("sender_not_allowed"), Some("/from"))
    );
    assert_eq!(
        app.send_as(&app.token, &simple_message("a@example.test"))
            .await
            .status(),
        202
    );
    assert_eq!(app.stored_messages().await, 1);
}

#[tokio::test]
async fn an_address_field_of_the_wrong_type_says_what_it_expects() {
    let app = spawn_app().await;
    for field in ["to", "cc", "bcc", "reply_to"] {
        let mut body = simple_message("a@example.test");
        body[field] = json!(5);
        let (status, problem) = read_problem(app.send_as(&app.token, &body).await).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
            (422, Some("invalid_type"), Some(format!("/{field}").as_str())),
            "{problem}"
        );
        assert_eq!(
            problem["errors"][0]["message"], "expected an address string or an array of address strings",
            "{problem}"
        );
    }
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_bad_query_parameter_is_422_invalid_query_naming_the_parameter() {
    let app = spawn_app().await;
    let token = mint(
        &app.keys,
        "acme",
        "messages:read templates:read suppressions:manage webhooks:manage",
    );
    let (status, problem) = read_problem(app.get("/v1/messages?status=delivered", &token).await).await;
    assert_eq!(
        (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
        (422, Some("invalid_query"), Some("status")),
        "{problem}"
    );
    let message = problem["errors"][0]["message"].as_str().unwrap();
    for valid in [
        "scheduled",
        "queued",
        "sending",
        "deferred",
        "sent",
        "failed",
        "cancelled",
    ] {
        assert!(message.contains(&format!("`{valid}`")), "{message}");
    }
    for path in [
        "/v1/messages?limit=many",
        "/v1/events?limit=many",
        "/v1/templates?limit=many",
        "/v1/suppressions?limit=many",
    ] {
        let (status, problem) = read_problem(app.get(path, &token).await).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
            (422, Some("invalid_query"), Some("limit")),
            "{path}: {problem}"
        );
    }
    for (path, parameter) in [
        ("/v1/templates/welcome/render?format=xml", "format"),
        ("/v1/bounces/mailgun", "tenant"),
    ] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (status, problem) = read_problem(response).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
            (422, Some("invalid_query"), Some(parameter)),
            "{path}: {problem}"
        );
    }
}

#[tokio::test]
async fn an_empty_or_blank_json_body_is_400_empty_body() {
    let app = spawn_app().await;
    let admin = mint(
        &app.keys,
        "acme",
        "messages:send templates:write webhooks:manage bounces:write",
    );
    for path in [
        "/v1/messages",
        "/v1/messages/batch",
        "/v1/templates",
        "/v1/webhooks",
        "/v1/bounces/events",
    ] {
        for body in ["", " \r\n\t "] {
            let response = app
                .client
                .post(format!("{}{path}", app.address))
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, problem) = read_problem(response).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (400, Some("empty_body")),
                "{path} {body:?}: {problem}"
            );
        }
    }
    assert_eq!(app.stored_messages().await, 0);
}
