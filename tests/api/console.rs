//! The web console's HTTP surface: sign-in and its cookie, the same-origin rule on
//! every change, tenant isolation, scopes, and the headers that keep email HTML in
//! its sandbox. (The browser tests in `tests/browser/` drive the same pages in
//! Chromium.)

use std::process::Command;

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::{redirect, StatusCode};
use serde_json::json;

use crate::helpers::{mint, simple_message, spawn_app, spawn_binary, TestApp};

const FORM: &str = "application/x-www-form-urlencoded";

fn encoded(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).expect("a form")
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .expect("client")
}

/// `POST /console/login` with `token`, from the sign-in page.
async fn post_login(app: &TestApp, token: &str) -> reqwest::Response {
    browser()
        .post(format!("{}/console/login", app.address))
        .header("Origin", &app.address)
        .header(CONTENT_TYPE, FORM)
        .body(encoded(&[("token", token)]))
        .send()
        .await
        .expect("POST /console/login")
}

/// Signs in with `token` the way the sign-in form does; the session cookie's value.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let answer = post_login(app, token).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer
        .headers()
        .get(SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .expect("ASCII")
        .to_owned();
    cookie
        .split(';')
        .next()
        .and_then(|pair| pair.strip_prefix("mailgate_console="))
        .expect("the console cookie")
        .to_owned()
}

async fn page(app: &TestApp, cookie: &str, path: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", app.address))
        .header("Cookie", format!("mailgate_console={cookie}"))
        .send()
        .await
        .expect("GET a console page")
}

/// A form POST from the console's own pages, as a browser sends it.
async fn post_form(app: &TestApp, cookie: &str, path: &str, origin: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(format!("{}{path}", app.address))
        .header("Cookie", format!("mailgate_console={cookie}"))
        .header("Origin", origin)
        .header(CONTENT_TYPE, FORM)
        .body(encoded(form))
        .send()
        .await
        .expect("POST a console form")
}

#[tokio::test]
async fn console_pages_without_a_session_redirect_to_sign_in() {
    let app = spawn_app().await;
    for path in ["/console", "/console/messages", "/console/templates/welcome"] {
        let answer = page(&app, "", path).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()[LOCATION], "/console/login");
    }
    let login = page(&app, "", "/console/login").await;
    assert_eq!(login.status(), StatusCode::OK);
    let csp = login.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
}

#[tokio::test]
async fn a_pasted_token_becomes_a_strict_httponly_cookie_under_console_only() {
    let app = spawn_app().await;
    let answer = post_login(&app, &app.token).await;
    let cookie = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let wrong = post_login(&app, "not-a-token").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
}

#[tokio::test]
async fn a_cross_site_post_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let token = mint(&app.keys, "acme", "suppressions:manage");
    let cookie = sign_in(&app, &token).await;
    let forged = post_form(
        &app,
        &cookie,
        "/console/suppressions",
        "https://evil.example",
        &[("email", "victim@example.test")],
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let by_fetch_metadata = browser()
        .post(format!("{}/console/suppressions", app.address))
        .header("Cookie", format!("mailgate_console={cookie}"))
        .header("Sec-Fetch-Site", "cross-site")
        .header(CONTENT_TYPE, FORM)
        .body(encoded(&[("email", "victim@example.test")]))
        .send()
        .await
        .unwrap();
    assert_eq!(by_fetch_metadata.status(), StatusCode::FORBIDDEN);
    let listed = app.get("/v1/suppressions/victim@example.test", &token).await;
    assert_eq!(listed.status(), StatusCode::NOT_FOUND, "nothing was suppressed");

    let own = post_form(
        &app,
        &cookie,
        "/console/suppressions",
        &app.address,
        &[("email", "victim@example.test")],
    )
    .await;
    assert_eq!(own.status(), StatusCode::SEE_OTHER);
    let listed = app.get("/v1/suppressions/victim@example.test", &token).await;
    assert_eq!(listed.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_tenants_message_is_the_same_404_page_as_a_missing_one() {
    let app = spawn_app().await;
    let id = app.send_ok(&simple_message("someone@example.test")).await;
    let theirs = sign_in(&app, &app.token).await;
    assert_eq!(
        page(&app, &theirs, &format!("/console/messages/{id}")).await.status(),
        StatusCode::OK
    );

    let other = sign_in(&app, &mint(&app.keys, "globex", "messages:read messages:send")).await;
    for path in [
        format!("/console/messages/{id}"),
        format!("/console/messages/{id}/html"),
        format!("/console/messages/{id}/eml"),
        "/console/messages/msg_0000000000000000000000000000dead".to_owned(),
    ] {
        let answer = page(&app, &other, &path).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body = answer.text().await.unwrap();
        assert!(!body.contains(&id), "the page names nothing of the other tenant");
    }
    let cancel = post_form(
        &app,
        &other,
        &format!("/console/messages/{id}/cancel"),
        &app.address,
        &[],
    )
    .await;
    assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_read_only_token_sees_the_editor_but_cannot_save() {
    let app = spawn_app().await;
    let writer = mint(&app.keys, "acme", "templates:read templates:write");
    let created = app
        .client
        .post(format!("{}/v1/templates", app.address))
        .bearer_auth(&writer)
        .json(&json!({"name": "note", "subject": "Hi {{name}}", "text": "Hello {{name}}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    let reader = sign_in(&app, &mint(&app.keys, "acme", "templates:read")).await;
    let editor = page(&app, &reader, "/console/templates/note")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        editor.contains("Read-only") && !editor.contains("id=\"save\""),
        "no save button"
    );
    let save = post_form(
        &app,
        &reader,
        "/console/templates/note",
        &app.address,
        &[("subject", "changed"), ("text", "changed")],
    )
    .await;
    assert_eq!(save.status(), StatusCode::FORBIDDEN);
    let stored = app
        .get("/v1/templates/note", &writer)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(stored["version"], 1, "{stored}");
}

#[tokio::test]
async fn the_preview_renders_strictly_and_places_a_missing_variable() {
    let app = spawn_app().await;
    let cookie = sign_in(&app, &mint(&app.keys, "acme", "templates:read")).await;
    let preview = |html: &'static str, data: &'static str| {
        let cookie = cookie.clone();
        let app = &app;
        async move {
            post_form(
                app,
                &cookie,
                "/console/templates/preview",
                &app.address,
                &[("subject", "Hi"), ("html", html), ("data", data)],
            )
            .await
            .text()
            .await
            .unwrap()
        }
    };
    let ok = preview("<p>Hi {{name}}</p>", r#"{"name": "Ana <3"}"#).await;
    assert!(ok.contains("srcdoc=\"&lt;p&gt;Hi Ana &amp;lt;3&lt;/p&gt;\""), "{ok}");
    let missing = preview("<p>\n  Hi {{name}}</p>", "{}").await;
    assert!(
        missing.contains("missing_variable") && missing.contains("line 2, column 6"),
        "{missing}"
    );
    let syntax = preview("<p>{{#if x}}</p>", "{}").await;
    assert!(syntax.contains("template_syntax"), "{syntax}");
}

#[tokio::test]
async fn the_email_html_is_served_alone_under_its_own_sandbox_policy() {
    let app = spawn_app().await;
    let mut body = simple_message("someone@example.test");
    body["html"] = json!("<p style=\"color:red\">Hi</p><script>alert(1)</script>");
    let id = app.send_ok(&body).await;
    let cookie = sign_in(&app, &app.token).await;
    let shown = page(&app, &cookie, &format!("/console/messages/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(shown.contains("<iframe class=\"email\" sandbox=\"\""), "{shown}");
    let frame = page(&app, &cookie, &format!("/console/messages/{id}/html")).await;
    let csp = frame.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let eml = page(&app, &cookie, &format!("/console/messages/{id}/eml")).await;
    assert_eq!(eml.headers()["content-type"], "message/rfc822");
}

/// `http.public_url` from a config file shapes the link that `console-link` prints;
/// the link signs in once, and neither it nor the session is an API token.
#[tokio::test]
async fn a_console_link_from_the_cli_signs_in_once_and_is_no_api_token() {
    let app = spawn_binary("[http]\npublic_url = \"https://console.mailgate.test/\"\n").await;
    let config = app.data.path().join("mailgate.toml");
    let printed = Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args([
            "console-link",
            "--tenant",
            "acme",
            "--scope",
            "messages:read",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("run console-link");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let link = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
    let token = link
        .strip_prefix("https://console.mailgate.test/console/login?link=")
        .unwrap_or_else(|| panic!("a link under public_url: {link}"));

    let api = app.get("/v1/messages", token).await;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED, "a link is no API key");
    let form = page(&app, "", &format!("/console/login?link={token}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("one-time link"),
        "a GET shows a button and uses nothing up"
    );
    let session = sign_in(&app, token).await;
    assert_eq!(page(&app, &session, "/console/messages").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/messages", &session).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let again = post_login(&app, token).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert!(again.text().await.unwrap().contains("already used"));
    let log = app.stderr();
    assert!(log.contains("console sign-in"), "the sign-in was logged");
    assert!(!log.contains(token), "the link never reaches the log");
}

#[tokio::test]
async fn the_domains_page_lists_each_domain_with_its_records_to_publish() {
    let app = spawn_app().await;
    let token = mint(&app.keys, "acme", "domains:manage");
    let created = app
        .client
        .post(format!("{}/v1/domains", app.address))
        .bearer_auth(&token)
        .json(&json!({"name": "console-domain.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let cookie = sign_in(&app, &token).await;
    let shown = page(&app, &cookie, "/console/domains").await.text().await.unwrap();
    assert!(
        shown.contains("console-domain.test") && shown.contains("_domainkey.console-domain.test"),
        "{shown}"
    );
    assert!(
        shown.contains("bounces.console-domain.test") && shown.contains(">pending<"),
        "{shown}"
    );
    assert!(
        shown.contains(">return_path"),
        "purposes as the API names them: {shown}"
    );
    let other = sign_in(&app, &mint(&app.keys, "globex", "domains:manage")).await;
    let theirs = page(&app, &other, "/console/domains").await.text().await.unwrap();
    assert!(
        !theirs.contains("console-domain.test"),
        "another tenant sees none of it"
    );
}
