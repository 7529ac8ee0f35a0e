//! Templates: the list, an editor with a live preview against sample JSON (strict
//! rendering, errors at their line and column), versions side by side with a diff,
//! and "send a test". Every read and write goes through the `Templates` service and
//! its error mapping, exactly as `/v1/templates` does.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse, ResponseError as _};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::diff;
use super::failure::Failure;
use super::page::{self, Section};
use super::session::{ConsoleAction, ConsoleUser};
use crate::api::auth::{MessagesSend, RequiredScope as _, TemplatesRead, TemplatesWrite};
use crate::api::problem::{ApiError, FieldError, TemplateContext};
use crate::api::AppState;
use crate::auth::Principal;
use crate::domain::template::{Template, TemplateKey, TemplateName, TemplateSources, TemplateVersion};
use crate::templates::{TemplateInput, TemplatesError};

/// Templates listed on one page.
const PAGE: usize = 100;

fn problem(err: TemplatesError) -> Failure {
    ApiError::from_templates(err, TemplateContext::Endpoint).into()
}

fn key(raw: &str) -> Result<TemplateKey, Failure> {
    TemplateKey::parse(raw).map_err(|_| problem(TemplatesError::NotFound))
}

/// The editor as submitted (every part optional, as in the API).
#[derive(Debug, Default, Deserialize)]
pub struct Draft {
    #[serde(default)]
    name: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    html: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    description: String,
    /// Sample data for the preview and the test send, a JSON object.
    #[serde(default)]
    data: String,
}

fn part(raw: &str) -> Option<String> {
    (!raw.is_empty()).then(|| raw.replace("\r\n", "\n"))
}

impl Draft {
    fn of(template: &Template, version: &TemplateVersion) -> Self {
        Self {
            name: template.name.as_str().to_owned(),
            subject: version.sources.subject.clone().unwrap_or_default(),
            html: version.sources.html.clone().unwrap_or_default(),
            text: version.sources.text.clone().unwrap_or_default(),
            description: version.description.clone().unwrap_or_default(),
            data: "{}".to_owned(),
        }
    }

    fn input(&self) -> TemplateInput {
        TemplateInput {
            sources: TemplateSources {
                subject: part(&self.subject),
                html: part(&self.html),
                text: part(&self.text),
            },
            description: part(self.description.trim()),
        }
    }

    /// The sample data, or a 422 pointing at the data box.
    fn sample(&self) -> Result<Value, ApiError> {
        let raw = if self.data.trim().is_empty() {
            "{}"
        } else {
            self.data.as_str()
        };
        match serde_json::from_str::<Value>(raw) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err(ApiError::unprocessable(vec![FieldError::coded(
                "/data",
                "invalid_data",
                "the sample data is a JSON object",
            )])),
            Err(err) => Err(ApiError::unprocessable(vec![FieldError {
                line: Some(err.line()),
                column: Some(err.column()),
                ..FieldError::coded("/data", "invalid_json", format!("the sample data is not JSON: {err}"))
            }])),
        }
    }
}

/// The field errors of a refusal, each with its place in the source when known.
fn errors(err: &ApiError) -> Markup {
    let problem = err.problem();
    html! {
        div.errors role="alert" {
            p { strong { (problem.title) } ": " (problem.detail) }
            @if !problem.errors.is_empty() {
                ul { @for e in &problem.errors {
                    li {
                        code { (e.field) }
                        @if let (Some(line), Some(column)) = (e.line, e.column) { " line " (line) ", column " (column) }
                        " — " (e.message) " " span.muted { "(" (e.code) ")" }
                    }
                } }
            }
        }
    }
}

/// `GET /console/templates`.
pub async fn list(ConsoleUser(user): ConsoleUser, state: web::Data<AppState>) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesRead::SCOPE)?;
    let templates = state.templates.list(&user.tenant, None, PAGE).await.map_err(problem)?;
    let body = html! {
        h1 { "Templates" }
        @if page::can(&user, TemplatesWrite::SCOPE) {
            p { a href="/console/templates/new" { "New template" } }
        } @else { (page::read_only(TemplatesWrite::SCOPE)) }
        table.templates {
            thead { tr { th { "Name" } th { "Id" } th.num { "Version" } th { "Updated" } th {} } }
            tbody { @for t in &templates {
                tr {
                    td { a href={ "/console/templates/" (t.name.as_str()) } { (t.name.as_str()) } }
                    td { code { (t.id) } }
                    td.num { (t.latest_version) }
                    td { (page::when(&t.updated_at)) }
                    td { @if t.builtin { span.status { "shipped" } } }
                }
            } }
        }
    };
    Ok(page::render(&user, Section::Templates, "Templates", body))
}

/// What the editor shows besides the draft itself.
struct Editor<'a> {
    /// `None` for a new template.
    template: Option<&'a Template>,
    versions: &'a [TemplateVersion],
    /// The version loaded into the form.
    shown: Option<u32>,
    writable: bool,
    error: Option<&'a ApiError>,
}

fn editor(user: &Principal, draft: &Draft, e: &Editor<'_>) -> Markup {
    let action = match e.template {
        Some(t) => format!("/console/templates/{}", t.name.as_str()),
        None => "/console/templates".to_owned(),
    };
    let disabled = !e.writable;
    html! {
        @if let Some(err) = e.error { (errors(err)) }
        @if let Some(t) = e.template {
            @if t.builtin { p.readonly { "A shipped template: read-only. Create your own template named " code { (t.name.as_str()) } " to override it." } }
            @else if !page::can(user, TemplatesWrite::SCOPE) { (page::read_only(TemplatesWrite::SCOPE)) }
        }
        div.grid2 {
            form #editor method="post" action=(action) {
                @if e.template.is_none() {
                    label for="name" { "Name" }
                    input #name name="name" required value=(draft.name) pattern="[a-z0-9_-]{1,64}";
                }
                label for="subject" { "Subject" }
                input #subject.code name="subject" value=(draft.subject) readonly[disabled];
                label for="html" { "HTML" }
                textarea #html.code name="html" rows="14" spellcheck="false" readonly[disabled] { (draft.html) }
                label for="text" { "Text" }
                textarea #text.code name="text" rows="6" spellcheck="false" readonly[disabled] { (draft.text) }
                label for="description" { "Description" }
                input #description name="description" value=(draft.description) readonly[disabled];
                label for="data" { "Sample data (JSON) for the preview and test sends" }
                textarea #data.code name="data" rows="5" spellcheck="false" { (draft.data) }
                @if let Some(t) = e.template {
                    @if page::can(user, MessagesSend::SCOPE) {
                        fieldset.test {
                            legend { "Send a test of the saved version with the sample data" }
                            div.filters {
                                div { label for="test-from" { "From" } input #test-from name="from" placeholder="Acme <no-reply@acme.test>"; }
                                div { label for="test-to" { "To" } input #test-to type="email" name="to" value=(if user.subject.contains('@') { user.subject.as_str() } else { "" }); }
                                button.secondary type="submit" formaction={ "/console/templates/" (t.name.as_str()) "/test" } { "Send test" }
                            }
                        }
                    }
                }
                div.inline {
                    @if e.writable {
                        button #save type="submit" { @if e.template.is_some() { "Save as a new version" } @else { "Create" } }
                    }
                    button.secondary type="submit" formaction="/console/templates/preview" formtarget="_blank" { "Preview without JavaScript" }
                }
            }
            div {
                h2 { "Live preview" }
                div #preview hx-post="/console/templates/preview" hx-include="#editor"
                    hx-trigger="load, input from:#editor delay:300ms" hx-swap="innerHTML" {
                    p.muted { "The preview renders as you type (strictly: a missing variable is an error, never a blank)." }
                }
            }
        }
        @if let Some(t) = e.template {
            h2 { "Versions" }
            table.versions {
                thead { tr { th.num { "Version" } th { "Created" } th { "Description" } th {} } }
                tbody { @for v in e.versions {
                    tr aria-current=[(Some(v.version) == e.shown).then_some("true")] {
                        td.num { a href={ "/console/templates/" (t.name.as_str()) "?version=" (v.version) } { "v" (v.version) } }
                        td { (page::when(&v.created_at)) }
                        td { (v.description.as_deref().unwrap_or("")) }
                        td { @if v.version > 1 {
                            a href={ "/console/templates/" (t.name.as_str()) "/diff?a=" (v.version - 1) "&b=" (v.version) } { "diff with v" (v.version - 1) }
                        } }
                    }
                } }
            }
        }
    }
}

/// `GET /console/templates/new`.
pub async fn new_form(ConsoleUser(user): ConsoleUser) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesWrite::SCOPE)?;
    let draft = Draft {
        data: "{}".into(),
        ..Draft::default()
    };
    let body = html! {
        h1 { "New template" }
        (editor(&user, &draft, &Editor { template: None, versions: &[], shown: None, writable: true, error: None }))
    };
    Ok(page::render(&user, Section::Templates, "New template", body))
}

/// `POST /console/templates`: creates version 1.
pub async fn create(
    ConsoleAction(user): ConsoleAction,
    form: web::Form<Draft>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesWrite::SCOPE)?;
    let draft = form.into_inner();
    let created = match TemplateName::parse(draft.name.trim()) {
        Ok(name) => state
            .templates
            .create(&user.tenant, name, draft.input())
            .await
            .map_err(|e| ApiError::from_templates(e, TemplateContext::Endpoint)),
        Err(e) => Err(ApiError::unprocessable(vec![FieldError::new("/name", &e)])),
    };
    match created {
        Ok((template, _)) => Ok(see_template(&template)),
        Err(err) if err.status_code().is_client_error() => {
            let body = html! {
                h1 { "New template" }
                (editor(&user, &draft, &Editor { template: None, versions: &[], shown: None, writable: true, error: Some(&err) }))
            };
            Ok(page::respond(
                err.status_code(),
                &user,
                Section::Templates,
                "New template",
                body,
            ))
        }
        Err(err) => Err(err.into()),
    }
}

fn see_template(template: &Template) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/console/templates/{}", template.name.as_str()),
        ))
        .finish()
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionQuery {
    version: Option<u32>,
}

async fn edit_page(
    state: &AppState,
    user: &Principal,
    raw: &str,
    version: Option<u32>,
    submitted: Option<(&Draft, &ApiError)>,
) -> Result<HttpResponse, Failure> {
    page::require(user, TemplatesRead::SCOPE)?;
    let (template, shown) = state
        .templates
        .get(&user.tenant, key(raw)?, version)
        .await
        .map_err(problem)?;
    let (_, versions) = state
        .templates
        .versions(&user.tenant, TemplateKey::Id(template.id.clone()))
        .await
        .map_err(problem)?;
    let loaded = Draft::of(&template, &shown);
    let (draft, error) = match submitted {
        Some((draft, err)) => (draft, Some(err)),
        None => (&loaded, None),
    };
    let writable = page::can(user, TemplatesWrite::SCOPE) && !template.builtin;
    let body = html! {
        h1 { (template.name.as_str()) " " span.muted { "v" (shown.version) " of " (template.latest_version) } }
        (editor(user, draft, &Editor { template: Some(&template), versions: &versions, shown: Some(shown.version), writable, error }))
    };
    let status = error.map_or(StatusCode::OK, ApiError::status_code);
    Ok(page::respond(
        status,
        user,
        Section::Templates,
        template.name.as_str(),
        body,
    ))
}

/// `GET /console/templates/{name}`: the editor on the latest (or `?version=`) version.
pub async fn edit(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    query: web::Query<VersionQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    edit_page(&state, &user, &path, query.version, None).await
}

/// `POST /console/templates/{name}`: saves the form as a new version.
pub async fn save(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    form: web::Form<Draft>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesWrite::SCOPE)?;
    let draft = form.into_inner();
    match state.templates.update(&user.tenant, key(&path)?, draft.input()).await {
        Ok((template, _)) => Ok(see_template(&template)),
        Err(err) => {
            let err = ApiError::from_templates(err, TemplateContext::Endpoint);
            if !err.status_code().is_client_error() || err.status_code() == StatusCode::NOT_FOUND {
                return Err(err.into());
            }
            edit_page(&state, &user, &path, None, Some((&draft, &err))).await
        }
    }
}

/// `POST /console/templates/preview`: the draft rendered with the sample data, as an
/// HTML fragment (htmx swaps it in; without JavaScript it opens as a page). Renders
/// exactly as a send of the saved template would, and saves nothing.
pub async fn preview(
    ConsoleAction(user): ConsoleAction,
    form: web::Form<Draft>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesRead::SCOPE)?;
    let draft = form.into_inner();
    // A draft without a valid name yet renders under a stand-in: a name only decides
    // which partial would include the template itself.
    let name = TemplateName::parse(draft.name.trim())
        .or_else(|_| TemplateName::parse("console-preview"))
        .map_err(|e| ApiError::unprocessable(vec![FieldError::new("/name", &e)]))?;
    let rendered = match draft.sample() {
        Ok(data) => state
            .templates
            .render_draft(&user.tenant, name, draft.input().sources, data)
            .await
            .map_err(|e| ApiError::from_templates(e, TemplateContext::Endpoint)),
        Err(err) => Err(err),
    };
    let markup = match rendered {
        Ok(parts) => html! {
            div.preview {
                p { "Subject: " strong.subject { (parts.subject.as_deref().unwrap_or("(none)")) } }
                @if let Some(h) = &parts.html {
                    iframe.email sandbox="" referrerpolicy="no-referrer" title="Preview of the HTML part" srcdoc=(h) {}
                }
                @if let Some(t) = &parts.text { pre.text { (t) } }
            }
        },
        Err(err) if err.status_code().is_server_error() => return Err(err.into()),
        Err(err) => errors(&err),
    };
    Ok(page::fragment(markup))
}

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    a: u32,
    b: u32,
}

/// `GET /console/templates/{name}/diff?a=&b=`: two versions side by side.
pub async fn diff(
    ConsoleUser(user): ConsoleUser,
    path: web::Path<String>,
    query: web::Query<DiffQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, TemplatesRead::SCOPE)?;
    let (template, old) = state
        .templates
        .get(&user.tenant, key(&path)?, Some(query.a))
        .await
        .map_err(problem)?;
    let (_, new) = state
        .templates
        .get(&user.tenant, TemplateKey::Id(template.id.clone()), Some(query.b))
        .await
        .map_err(problem)?;
    let parts = [
        ("Subject", &old.sources.subject, &new.sources.subject),
        ("HTML", &old.sources.html, &new.sources.html),
        ("Text", &old.sources.text, &new.sources.text),
    ];
    let body = html! {
        h1 { (template.name.as_str()) ": v" (old.version) " → v" (new.version) }
        p { a href={ "/console/templates/" (template.name.as_str()) } { "Back to the editor" } }
        @for (label, a, b) in parts {
            h2 { (label) }
            (diff::side_by_side(a.as_deref().unwrap_or(""), b.as_deref().unwrap_or(""), old.version, new.version))
        }
    };
    Ok(page::render(&user, Section::Templates, "Template diff", body))
}

#[derive(Debug, Deserialize)]
pub struct TestForm {
    from: String,
    to: String,
    #[serde(default)]
    data: String,
}

/// `POST /console/templates/{name}/test`: sends the saved template with the sample
/// data through the same path as `POST /v1/messages` (validation, rate limit,
/// durable write), tagged `console-test`, and opens the message.
pub async fn send_test(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    form: web::Form<TestForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, MessagesSend::SCOPE)?;
    let form = form.into_inner();
    let data = Draft {
        data: form.data,
        ..Draft::default()
    }
    .sample()?;
    let request = json!({
        "from": form.from.trim(),
        "to": [form.to.trim()],
        "template": {"name": path.as_str(), "data": data},
        "tags": ["console-test"],
    });
    let request = serde_json::from_value(request)
        .map_err(|e| ApiError::unprocessable(vec![FieldError::coded("", "invalid_request", e.to_string())]))?;
    crate::api::limits::take(&state, &user, 1)?;
    let (accepted, _) = crate::api::messages::send_one(&state, &user.tenant, request, None).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/console/messages/{}", accepted.id)))
        .finish())
}
