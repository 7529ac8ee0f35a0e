//! The official Resend and SendGrid SDKs (Node and Python, pinned in
//! `tests/sdk/package-lock.json` and `tests/support/requirements.txt`, installed by the
//! test command) drive a live mailgate through its compatibility routes, as a user
//! migrating from those providers would: base URL and key changed, nothing else. Each
//! script prints what its SDK answered; here that answer is checked, and so is the MIME
//! that Postfix delivered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders as _};
use serde_json::{json, Value};

use crate::helpers::{mint, spawn_app, TestApp};

const DELIVERY: Duration = Duration::from_secs(20);
/// Named like a SendGrid dynamic template id (`d-…`): what a user migrating keeps in
/// their code, and what makes the SendGrid Node SDK send `dynamic_template_data`.
const TEMPLATE: &str = "d-sdk-welcome";

/// Which SDK a script drives, and how to run it.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    ResendNode,
    ResendPython,
    SendGridNode,
    SendGridPython,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::ResendNode => "resend-node",
            Sdk::ResendPython => "resend-python",
            Sdk::SendGridNode => "sendgrid-node",
            Sdk::SendGridPython => "sendgrid-python",
        }
    }

    fn command(self) -> Command {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
        let (program, script) = match self {
            Sdk::ResendNode => (PathBuf::from("node"), "resend_check.mjs"),
            Sdk::SendGridNode => (PathBuf::from("node"), "sendgrid_check.mjs"),
            Sdk::ResendPython => (python(), "resend_check.py"),
            Sdk::SendGridPython => (python(), "sendgrid_check.py"),
        };
        let mut command = Command::new(program);
        command.arg(dir.join(script)).current_dir(dir);
        command
    }
}

/// The tools venv's Python, where the test command installs the Python SDKs.
fn python() -> PathBuf {
    std::env::var_os("MAILGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/mailgate-tools/venv/bin/python"))
}

/// Creates the template the scripts send with, then runs `sdk`'s script against `app`:
/// what it printed, and the run's marker (in every subject it sent).
async fn run(app: &TestApp, sdk: Sdk) -> (Value, String) {
    let admin = mint(&app.keys, "acme", "templates:write");
    let created = app
        .client
        .post(format!("{}/v1/templates", app.address))
        .bearer_auth(&admin)
        .json(&json!({
            "name": TEMPLATE,
            "subject": "Welcome {{name}} ({{run}})",
            "text": "Hello {{name}}, this is {{run}}.",
            "html": "<p>Hello {{name}}, this is {{run}}.</p>",
        }))
        .send()
        .await
        .expect("create the template");
    assert_eq!(created.status(), 201);
    let run = format!("{}-{}", sdk.name(), uuid::Uuid::now_v7().simple());
    let token = mint(&app.keys, "acme", "messages:send messages:read");
    let mut command = sdk.command();
    // Resend's SDKs are pointed at mailgate by the environment alone, as a user would.
    match sdk {
        Sdk::ResendNode => command
            .env("RESEND_BASE_URL", format!("{}/", app.address))
            .env("RESEND_API_KEY", &token),
        Sdk::ResendPython => command
            .env("RESEND_API_URL", &app.address)
            .env("RESEND_API_KEY", &token),
        Sdk::SendGridNode | Sdk::SendGridPython => {
            command.env("MAILGATE_URL", &app.address).env("MAILGATE_TOKEN", &token)
        }
    };
    command
        .env("MAILGATE_TEMPLATE", TEMPLATE)
        .env("MAILGATE_TO", "ana@example.test")
        .env("MAILGATE_RUN", &run);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the script's thread")
        .unwrap_or_else(|err| panic!("run the {} script (the test command installs it): {err}", sdk.name()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed: {stdout}{}",
        sdk.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    let answer = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{}: {err}: {stdout}", sdk.name()));
    (answer, run)
}

/// The one delivered copy of message `id`, parsed.
async fn delivered(app: &TestApp, id: &Value) -> mail_parser::Message<'static> {
    let id = id.as_str().unwrap_or_else(|| panic!("an id, not {id}"));
    let copies = app.postfix.wait_delivered(id, 1, DELIVERY).await;
    assert_eq!(copies.len(), 1, "{id} delivered once");
    MessageParser::default()
        .parse(&copies[0])
        .map(|m| m.into_owned())
        .expect("delivered MIME parses")
}

fn subject(message: &mail_parser::Message) -> String {
    message.subject().unwrap_or_default().to_owned()
}

fn attachment_names(message: &mail_parser::Message) -> Vec<String> {
    message
        .attachments()
        .filter_map(|a| a.attachment_name().map(str::to_owned))
        .collect()
}

/// What every SDK must get right, whatever its provider: one message, a batch, a
/// template, attachments, scheduling, an idempotent retry — each delivered as sent.
async fn check_common(app: &TestApp, sdk: Sdk, answer: &Value, run: &str) {
    let name = sdk.name();
    let one = delivered(app, &answer["one"]).await;
    assert_eq!(subject(&one), format!("{name} one {run}"));
    assert_eq!(one.header_raw("X-Entity-Ref-ID").map(str::trim), Some(run));
    assert_eq!(
        one.body_text(0).as_deref().map(str::trim),
        Some(format!("Hello from {name}").as_str())
    );
    assert!(one.body_html(0).unwrap_or_default().contains(&format!("<b>{name}</b>")));
    let reply_to = one
        .reply_to()
        .and_then(|r| r.first())
        .and_then(|a| a.address())
        .map(str::to_owned);
    assert_eq!(reply_to.as_deref(), Some("support@acme.test"));

    let batch = answer["batch"].as_array().expect("batch ids");
    assert_eq!(batch.len(), 2, "{answer}");
    for (index, id) in batch.iter().enumerate() {
        assert_eq!(
            subject(&delivered(app, id).await),
            format!("{name} batch {index} {run}")
        );
    }

    let attached = delivered(app, &answer["attachments"]).await;
    let mime = String::from_utf8_lossy(attached.raw_message()).into_owned();
    assert!(attachment_names(&attached).contains(&"notes.txt".to_owned()), "{mime}");
    let notes = attached
        .attachments()
        .find(|a| a.attachment_name() == Some("notes.txt"))
        .expect("notes.txt");
    assert_eq!(notes.contents(), format!("notes for {run}\n").as_bytes());
    let logo = attached
        .attachments()
        .find(|a| a.content_id() == Some("logo"))
        .unwrap_or_else(|| panic!("the inline logo is referenced by its Content-ID: {mime}"));
    assert_eq!(logo.contents(), b"\x89PNG");
    assert!(mime.contains("multipart/related"), "inline parts are related: {mime}");

    let templated = delivered(app, &answer["template"]).await;
    assert_eq!(subject(&templated), format!("Welcome Ana ({run})"));
    assert_eq!(
        templated.body_text(0).as_deref().map(str::trim),
        Some(format!("Hello Ana, this is {run}.").as_str())
    );

    assert_eq!(
        subject(&delivered(app, &answer["scheduled"]).await),
        format!("{name} scheduled {run}")
    );
    let scheduled = app.message(answer["scheduled"].as_str().unwrap_or_default()).await;
    assert!(scheduled["send_at"].is_string(), "{scheduled}");

    let retried = answer["idempotent"].as_array().expect("two ids");
    assert_eq!(retried.len(), 2);
    assert_eq!(retried[0], retried[1], "the retry replays the first answer");
    delivered(app, &retried[0]).await;
}

/// The email scheduled `in 1 hour` and cancelled through the SDK is cancelled.
async fn check_cancelled(app: &TestApp, answer: &Value) {
    let id = answer["cancelled"]
        .as_str()
        .unwrap_or_else(|| panic!("a cancelled id: {answer}"));
    let message = app.message(id).await;
    assert_eq!(message["status"], "cancelled", "{message}");
}

#[tokio::test]
async fn resend_node_sdk_sends_through_mailgate() {
    let app = spawn_app().await;
    let (answer, run) = run(&app, Sdk::ResendNode).await;
    check_common(&app, Sdk::ResendNode, &answer, &run).await;
    check_cancelled(&app, &answer).await;
    assert_eq!(answer["scheduled_event"], "scheduled", "{answer}");
    assert_eq!(answer["invalid"]["name"], "validation_error", "{answer}");
    assert_eq!(answer["invalid"]["statusCode"], 422);
    assert!(
        answer["invalid"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`to`"),
        "{answer}"
    );
    assert_eq!(answer["missing"], "missing_required_field", "{answer}");
    let got = &answer["get"];
    assert_eq!(got["subject"], format!("resend-node one {run}"));
    assert_eq!(got["to"], json!(["ana@example.test"]));
    assert_eq!(got["tags"], json!([{"name": "category", "value": "welcome"}]));
    assert!(
        got["html"].as_str().unwrap_or_default().contains("<b>resend-node</b>"),
        "{got}"
    );
    assert_eq!(got["text"].as_str().map(str::trim), Some("Hello from resend-node"));
}

#[tokio::test]
async fn resend_python_sdk_sends_through_mailgate() {
    let app = spawn_app().await;
    let (answer, run) = run(&app, Sdk::ResendPython).await;
    check_common(&app, Sdk::ResendPython, &answer, &run).await;
    check_cancelled(&app, &answer).await;
    assert_eq!(answer["scheduled_event"], "scheduled", "{answer}");
    assert_eq!(answer["invalid"]["class"], "ValidationError", "{answer}");
    assert_eq!(answer["invalid"]["code"], 422);
    assert_eq!(answer["missing"], "MissingRequiredFieldsError", "{answer}");
    assert_eq!(answer["get"]["subject"], format!("resend-python one {run}"));
}

/// The categories and custom args of SendGrid's first message became mailgate tags
/// and metadata.
async fn check_sendgrid_mapping(app: &TestApp, answer: &Value) {
    let one = app.message(answer["one"].as_str().unwrap_or_default()).await;
    assert_eq!(one["tags"], json!(["welcome"]), "{one}");
    assert_eq!(one["metadata"]["user_id"], "42", "{one}");
    let delivered_one = delivered(app, &answer["one"]).await;
    let to = delivered_one
        .to()
        .and_then(|t| t.first())
        .and_then(|a| a.name())
        .map(str::to_owned);
    assert_eq!(to.as_deref(), Some("Ana Example"));
}

#[tokio::test]
async fn sendgrid_node_sdk_sends_through_mailgate() {
    let app = spawn_app().await;
    let (answer, run) = run(&app, Sdk::SendGridNode).await;
    check_common(&app, Sdk::SendGridNode, &answer, &run).await;
    check_sendgrid_mapping(&app, &answer).await;
    assert_eq!(answer["invalid"]["class"], "ResponseError", "{answer}");
    assert_eq!(answer["invalid"]["code"], 400);
    assert_eq!(
        answer["invalid"]["body"]["errors"][0]["field"], "personalizations.0.to.0",
        "{answer}"
    );
    assert_eq!(answer["unsupported"]["code"], 400);
    assert_eq!(
        answer["unsupported"]["body"]["errors"][0]["field"], "tracking_settings.open_tracking.enable",
        "{answer}"
    );
}

#[tokio::test]
async fn sendgrid_python_sdk_sends_through_mailgate() {
    let app = spawn_app().await;
    let (answer, run) = run(&app, Sdk::SendGridPython).await;
    check_common(&app, Sdk::SendGridPython, &answer, &run).await;
    check_sendgrid_mapping(&app, &answer).await;
    assert_eq!(answer["invalid"]["class"], "BadRequestsError", "{answer}");
    assert_eq!(
        answer["invalid"]["body"]["errors"][0]["field"], "personalizations.0.to.0",
        "{answer}"
    );
    assert_eq!(
        answer["unsupported"]["body"]["errors"][0]["field"], "tracking_settings.open_tracking.enable",
        "{answer}"
    );
}
