//! Templates: strict rendering, versions, partials and layouts, shipped templates,
//! tenancy, and a templated send delivered through Postfix.

use std::time::Duration;

use mail_parser::MessageParser;
use serde_json::{json, Value};

use crate::helpers::{mint, spawn_app, TestApp};

const ALL: &str = "messages:send messages:read templates:read templates:write";

pub struct Api<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Api<'a> {
    pub fn new(app: &'a TestApp, tenant: &str) -> Self {
        Self {
            app,
            token: mint(&app.keys, tenant, ALL),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .app
            .client
            .request(method, format!("{}{path}", self.app.address))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn create(&self, body: Value) -> Value {
        let (status, created) = self.post("/v1/templates", body).await;
        assert_eq!(status, 201, "{created}");
        created
    }
}

fn first_error(problem: &Value) -> (&str, &str) {
    (
        problem["errors"][0]["field"].as_str().unwrap_or_default(),
        problem["errors"][0]["code"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_templated_send_is_rendered_strictly_and_delivered_through_postfix() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    let template = api
        .create(json!({
            "name": "order-shipped",
            "subject": "Bestellung {{order.id}} ist unterwegs, {{name}}",
            "html": "<p>Hallo {{name}}, {{{note}}}</p><p>Summe: {{format_number order.total}}</p>",
            "text": "Hallo {{name}}, Summe: {{format_number order.total}}",
        }))
        .await;
    assert_eq!(template["version"], 1);
    let data = json!({"name": "Zoë <b>", "note": "<i>bald</i>", "order": {"id": "A-7", "total": 1234.5}});
    let (status, accepted) = api
        .post(
            "/v1/messages",
            json!({"from": "shop@sender.mailgate.test", "to": "tpl@example.test",
                   "template": {"name": "order-shipped", "data": data}}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let delivered = app.postfix.wait_delivered(id, 1, Duration::from_secs(20)).await;
    let mail = MessageParser::default().parse(&delivered[0]).unwrap();
    assert_eq!(mail.subject(), Some("Bestellung A-7 ist unterwegs, Zoë <b>"));
    let html = mail.body_html(0).unwrap();
    assert!(html.contains("Hallo Zoë &lt;b&gt;, <i>bald</i>"), "{html}");
    assert!(html.contains("Summe: 1,234.50"), "{html}");
    assert_eq!(mail.body_text(0).unwrap().trim(), "Hallo Zoë <b>, Summe: 1,234.50");

    let message = app.message(id).await;
    assert_eq!(message["template"]["id"], template["id"]);
    assert_eq!(message["template"]["version"], 1);
    assert_eq!(message["subject"], "Bestellung A-7 ist unterwegs, Zoë <b>");
}

#[tokio::test]
async fn a_missing_variable_is_422_naming_it_and_nothing_is_sent_or_stored() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "total", "subject": "Total", "html": "<p>{{order.total}}</p>"}))
        .await;
    let (status, problem) = api
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "x@example.test",
                   "template": {"name": "total", "data": {"order": {"id": 1}}}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "missing_variable");
    assert_eq!(
        first_error(&problem),
        ("/template/data/order/total", "missing_variable")
    );
    assert_eq!(app.stored_messages().await, 0);

    let (status, problem) = api.post("/v1/templates/total/render", json!({"data": {}})).await;
    assert_eq!(status, 422);
    assert_eq!(first_error(&problem), ("/data/order/total", "missing_variable"));

    let (status, problem) = api
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "x@example.test", "subject": "both",
                   "template": {"name": "total", "data": {}}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(first_error(&problem), ("/subject", "template_conflict"));
}

#[tokio::test]
async fn every_missing_variable_is_reported_at_once_and_nothing_is_sent_or_stored() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "order", "subject": "Order {{order.id}}",
                      "html": "<p>{{name}}: {{order.total}}</p>", "text": "{{name}}"}))
        .await;
    let fields = |problem: &Value| -> Vec<(String, String)> {
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap().to_owned(),
                    e["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let expected = |base: &str| -> Vec<(String, String)> {
        ["order/id", "name", "order/total"]
            .iter()
            .map(|path| (format!("{base}/{path}"), "missing_variable".to_owned()))
            .collect()
    };
    let (status, problem) = api
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "x@example.test",
                   "template": {"name": "order", "data": {"order": {}}}}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("missing_variable")),
        "{problem}"
    );
    assert_eq!(fields(&problem), expected("/template/data"), "{problem}");
    assert_eq!(
        problem["errors"][2]["message"],
        "the html part uses `order.total`, which the data does not have"
    );
    assert_eq!(app.stored_messages().await, 0);

    let (status, problem) = api.post("/v1/templates/order/render", json!({"data": {}})).await;
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), expected("/data"), "{problem}");
}

#[tokio::test]
async fn html_is_escaped_text_and_subject_are_not_and_a_subject_line_break_is_refused() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "echo", "subject": "Re: {{v}}", "html": "{{v}}|{{{v}}}", "text": "{{v}}"}))
        .await;
    let (status, out) = api
        .post(
            "/v1/templates/echo/render",
            json!({"data": {"v": "<a href=\"x\">&</a>"}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["html"],
        "&lt;a href&#x3D;&quot;x&quot;&gt;&amp;&lt;/a&gt;|<a href=\"x\">&</a>"
    );
    assert_eq!(out["text"], "<a href=\"x\">&</a>");
    assert_eq!(out["subject"], "Re: <a href=\"x\">&</a>");

    let injected = json!({"data": {"v": "hi\r\nBcc: victim@example.test"}});
    let (status, problem) = api.post("/v1/templates/echo/render", injected.clone()).await;
    assert_eq!((status, first_error(&problem).1), (422, "invalid_subject"));
    let (status, problem) = api
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "x@example.test",
                   "template": {"name": "echo", "data": injected["data"]}}),
        )
        .await;
    assert_eq!((status, first_error(&problem).1), (422, "invalid_subject"));
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_template_that_does_not_compile_is_refused_with_part_line_and_column() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    let (status, problem) = api
        .post(
            "/v1/templates",
            json!({"name": "broken", "subject": "ok", "html": "<p>\n  {{#if x}}\n</p>"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(first_error(&problem), ("/html", "template_syntax"));
    assert!(problem["errors"][0]["line"].as_u64().unwrap() >= 2, "{problem}");
    assert!(problem["errors"][0]["column"].is_u64(), "{problem}");
    assert_eq!(api.get("/v1/templates/broken").await.0, 404, "nothing is stored");

    let (status, problem) = api
        .post("/v1/templates", json!({"name": "Bad Name", "html": "x"}))
        .await;
    assert_eq!(
        (status, first_error(&problem)),
        (422, ("/name", "invalid_template_name"))
    );
}

#[tokio::test]
async fn every_put_makes_a_new_version_and_old_versions_stay_readable_and_sendable() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    let created = api
        .create(json!({"name": "news", "subject": "v1 {{n}}", "text": "one"}))
        .await;
    let (status, updated) = api
        .put("/v1/templates/news", json!({"subject": "v2 {{n}}", "text": "two"}))
        .await;
    assert_eq!((status, updated["version"].as_u64()), (200, Some(2)));
    assert_eq!(updated["id"], created["id"]);

    let (_, latest) = api.get("/v1/templates/news").await;
    assert_eq!(
        (latest["version"].as_u64(), latest["subject"].as_str()),
        (Some(2), Some("v2 {{n}}"))
    );
    let (_, versions) = api
        .get(&format!("/v1/templates/{}/versions", created["id"].as_str().unwrap()))
        .await;
    let numbers: Vec<u64> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let (_, first) = api.get("/v1/templates/news/versions/1").await;
    assert_eq!(first["subject"], "v1 {{n}}");
    assert_eq!(api.get("/v1/templates/news/versions/3").await.0, 404);

    let (_, rendered) = api
        .post("/v1/templates/news/render", json!({"version": 1, "data": {"n": 7}}))
        .await;
    assert_eq!(rendered["subject"], "v1 7");
    let (status, accepted) = api
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "v@example.test",
                   "template": {"name": "news", "version": 1, "data": {"n": 7}}}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let message = app.message(accepted["id"].as_str().unwrap()).await;
    assert_eq!(
        (message["subject"].as_str(), message["template"]["version"].as_u64()),
        (Some("v1 7"), Some(1))
    );
}

#[tokio::test]
async fn partials_and_layouts_compose_and_cycles_are_refused() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "footer", "html": "<footer>{{company}}</footer>", "text": "-- {{company}}"}))
        .await;
    api.create(
        json!({"name": "layout", "html": "<main>{{> @partial-block}}{{> footer}}</main>",
                      "text": "[{{> @partial-block}}] {{> footer}}"}),
    )
    .await;
    api.create(json!({"name": "page", "subject": "Hi",
                      "html": "{{#> layout}}<p>{{body}}</p>{{/layout}}", "text": "{{#> layout}}{{body}}{{/layout}}"}))
        .await;
    let (status, out) = api
        .post(
            "/v1/templates/page/render",
            json!({"data": {"body": "Hello", "company": "Acme"}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["html"], "<main><p>Hello</p><footer>Acme</footer></main>");
    assert_eq!(out["text"], "[Hello] -- Acme");

    let (status, problem) = api.put("/v1/templates/footer", json!({"html": "{{> page}}"})).await;
    assert_eq!((status, first_error(&problem).1), (422, "template_cycle"), "{problem}");
    let (status, problem) = api
        .post("/v1/templates", json!({"name": "selfish", "html": "{{> selfish}}"}))
        .await;
    assert_eq!((status, first_error(&problem).1), (422, "template_cycle"), "{problem}");
    let (status, problem) = api
        .post("/v1/templates", json!({"name": "lost", "html": "{{> nowhere}}"}))
        .await;
    assert_eq!(
        (status, first_error(&problem)),
        (422, ("/html", "partial_not_found")),
        "{problem}"
    );
    let (_, footer) = api.get("/v1/templates/footer").await;
    assert_eq!(footer["version"], 1, "a refused update stores nothing");

    let (status, problem) = api
        .post("/v1/templates", json!({"name": "no-text", "text": "{{> layout-less}}"}))
        .await;
    assert_eq!((status, first_error(&problem).1), (422, "partial_not_found"));
    api.create(json!({"name": "html-only", "html": "<b>x</b>"})).await;
    let (status, problem) = api
        .post("/v1/templates", json!({"name": "uses-text", "text": "{{> html-only}}"}))
        .await;
    assert_eq!(
        (status, first_error(&problem)),
        (422, ("/text", "partial_not_found")),
        "{problem}"
    );
    for html in [
        "{{> @main}}",
        "{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}",
        "{{> footer company=nope}}",
    ] {
        let (status, problem) = api.post("/v1/templates", json!({"name": "sneaky", "html": html})).await;
        assert_eq!(
            (status, first_error(&problem)),
            (422, ("/html", "template_syntax")),
            "{html}: {problem}"
        );
    }

    // Deleting a layout others use makes their renders fail loudly, never silently
    // without the layout.
    assert_eq!(
        api.call(reqwest::Method::DELETE, "/v1/templates/layout", None).await.0,
        204
    );
    let (status, problem) = api
        .post(
            "/v1/templates/page/render",
            json!({"data": {"body": "x", "company": "y"}}),
        )
        .await;
    assert_eq!(
        (status, first_error(&problem).1),
        (422, "partial_not_found"),
        "{problem}"
    );
}

#[tokio::test]
async fn loops_whose_work_would_explode_are_refused_before_rendering() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    api.create(json!({"name": "cube", "subject": "s",
                      "text": "{{#each a}}{{#each ../a}}{{#each ../../a}}{{/each}}{{/each}}{{/each}}"}))
        .await;
    let wide: Vec<u32> = (0..1000).collect();
    let (status, problem) = api
        .post("/v1/templates/cube/render", json!({"data": {"a": wide}}))
        .await;
    assert_eq!(
        (status, first_error(&problem).1),
        (422, "template_too_complex"),
        "{problem}"
    );
}

#[tokio::test]
async fn another_tenants_template_is_404_and_cannot_be_sent() {
    let app = spawn_app().await;
    let acme = Api::new(&app, "acme");
    let globex = Api::new(&app, "globex");
    let created = acme
        .create(json!({"name": "secret", "subject": "s", "text": "t"}))
        .await;
    let id = created["id"].as_str().unwrap();
    for path in [
        format!("/v1/templates/{id}"),
        "/v1/templates/secret".into(),
        format!("/v1/templates/{id}/versions/1"),
    ] {
        let (status, problem) = globex.get(&path).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("template_not_found")),
            "{path}"
        );
    }
    assert_eq!(
        globex.post(&format!("/v1/templates/{id}/render"), json!({})).await.0,
        404
    );
    assert_eq!(
        globex.put(&format!("/v1/templates/{id}"), json!({"text": "x"})).await.0,
        404
    );
    assert_eq!(
        globex
            .call(reqwest::Method::DELETE, &format!("/v1/templates/{id}"), None)
            .await
            .0,
        404
    );
    let (status, problem) = globex
        .post(
            "/v1/messages",
            json!({"from": "a@sender.mailgate.test", "to": "x@example.test", "template": {"id": id}}),
        )
        .await;
    assert_eq!(
        (status, first_error(&problem)),
        (422, ("/template", "template_not_found"))
    );
    let (_, list) = globex.get("/v1/templates").await;
    assert!(
        list["data"].as_array().unwrap().iter().all(|t| t["builtin"] == true),
        "only the shipped templates: {list}"
    );
    assert_eq!(acme.get("/v1/templates/secret").await.0, 200);
}

#[tokio::test]
async fn shipped_templates_render_by_name_are_read_only_and_a_tenant_can_override_them() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    for name in ["welcome", "password-reset", "receipt", "magic-link"] {
        let (status, template) = api.get(&format!("/v1/templates/{name}")).await;
        assert_eq!((status, template["builtin"].as_bool()), (200, Some(true)), "{name}");
        let sample: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/templates/{name}/sample.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        let (status, out) = api
            .post(&format!("/v1/templates/{name}/render"), json!({"data": sample}))
            .await;
        assert_eq!(status, 200, "{name}: {out}");
        assert!(out["html"].as_str().unwrap().contains("<table"), "{name}");
    }
    assert_eq!(api.put("/v1/templates/welcome", json!({"text": "x"})).await.0, 409);
    assert_eq!(
        api.call(reqwest::Method::DELETE, "/v1/templates/welcome", None).await.0,
        409
    );

    api.create(json!({"name": "welcome", "subject": "Ours", "text": "ours"}))
        .await;
    let (_, mine) = api.get("/v1/templates/welcome").await;
    assert_eq!(
        (mine["builtin"].as_bool(), mine["subject"].as_str()),
        (Some(false), Some("Ours"))
    );
    let other = Api::new(&app, "globex");
    assert_eq!(other.get("/v1/templates/welcome").await.1["builtin"], true);
}

#[tokio::test]
async fn the_list_shows_shipped_templates_read_only_unless_the_tenant_replaced_them() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    let names = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, fresh) = api.get("/v1/templates").await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(names(&fresh), ["magic-link", "receipt", "password-reset", "welcome"]);
    for shipped in fresh["data"].as_array().unwrap() {
        assert_eq!(shipped["builtin"], true, "{shipped}");
        let created: chrono::DateTime<chrono::Utc> = shipped["created_at"].as_str().unwrap().parse().unwrap();
        assert!(created.timestamp() > 1_700_000_000, "{shipped}");
    }
    let (_, welcome) = api.get("/v1/templates/welcome").await;
    assert_ne!(welcome["created_at"], "1970-01-01T00:00:00Z", "{welcome}");

    api.create(json!({"name": "welcome", "subject": "Ours", "text": "ours"}))
        .await;
    api.create(json!({"name": "invoice", "subject": "Invoice", "text": "due"}))
        .await;
    let mut seen = Vec::new();
    let mut path = "/v1/templates?limit=2".to_owned();
    loop {
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["data"].as_array().unwrap().len() <= 2, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["name"].as_str().unwrap().to_owned(), t["builtin"] == true)),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/templates?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<(String, bool)> = [
        ("invoice", false),
        ("welcome", false),
        ("magic-link", true),
        ("receipt", true),
        ("password-reset", true),
    ]
    .iter()
    .map(|(name, builtin)| ((*name).to_owned(), *builtin))
    .collect();
    assert_eq!(
        seen, expected,
        "own templates newest first, then the shipped ones not replaced"
    );
}

#[tokio::test]
async fn render_can_return_the_exact_mime_and_lists_paginate() {
    let app = spawn_app().await;
    let api = Api::new(&app, "acme");
    for name in ["a", "b", "c"] {
        api.create(json!({"name": name, "subject": "Hello {{who}}", "text": "Hi {{who}}"}))
            .await;
    }
    let response = app
        .client
        .post(format!("{}/v1/templates/a/render?format=mime", app.address))
        .bearer_auth(&api.token)
        .json(&json!({"data": {"who": "Ana"}, "to": "Ana <ana@example.test>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "message/rfc822");
    let mime = response.bytes().await.unwrap();
    let mail = MessageParser::default().parse(&mime[..]).unwrap();
    assert_eq!(mail.subject(), Some("Hello Ana"));
    assert_eq!(mail.body_text(0).unwrap().trim(), "Hi Ana");
    assert_eq!(mail.to().unwrap().first().unwrap().address(), Some("ana@example.test"));
    assert_eq!(app.stored_messages().await, 0, "a preview creates no message");

    let (_, page) = api.get("/v1/templates?limit=2").await;
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c", "b"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = api.get(&format!("/v1/templates?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["data"][0]["name"], "a");
    assert_eq!(api.get("/v1/templates?limit=0").await.0, 422);
}
