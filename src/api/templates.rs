//! `/v1/templates`: versioned handlebars templates, and rendering them without sending.

use actix_web::http::header;
use actix_web::{delete, get, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authenticated, TemplatesRead, TemplatesWrite};
use super::body::JsonBody;
use super::pagination::{invalid_cursor, page_size, split_page};
use super::problem::{ApiError, FieldError, Problem, TemplateContext, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::domain::ids::TemplateId;
use crate::domain::template::{Template, TemplateKey, TemplateName, TemplateSources, TemplateVersion};
use crate::domain::ValidationError;
use crate::sending::SendError;
use crate::templates::{TemplateInput, TemplatesError};

/// A new template. At least one of `subject`, `html` and `text`; each is a handlebars
/// template. `{{> name}}` includes another template of yours (the same part of it);
/// a layout is a template whose html contains `{{> @partial-block}}` and is used as
/// `{{#> layout}}…{{/layout}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "order-shipped",
    "subject": "Your order {{order.id}} has shipped",
    "html": "<p>Hi {{default first_name \"there\"}}, order {{order.id}} is on its way.</p>",
    "text": "Hi {{default first_name \"there\"}}, order {{order.id}} is on its way.",
    "description": "Sent when the warehouse hands the parcel over"
}))]
pub struct CreateTemplateRequest {
    /// Unique per tenant: lowercase letters, digits, `-` and `_`.
    pub name: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A new version: replaces all parts (a part left out is removed in the new version).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"subject": "Order {{order.id}} shipped", "html": "<p>On its way.</p>", "text": "On its way."}))]
pub struct UpdateTemplateRequest {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One version of a template, with its sources.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "tpl_01a2239b6f4576c6abf5dbfeff8e03ca", "name": "order-shipped", "version": 2, "latest_version": 2,
    "subject": "Your order {{order.id}} has shipped",
    "html": "<p>Hi {{default first_name \"there\"}}, order {{order.id}} is on its way.</p>",
    "text": "Hi {{default first_name \"there\"}}, order {{order.id}} is on its way.",
    "description": "Sent when the warehouse hands the parcel over", "partials": [], "builtin": false,
    "created_at": "2026-11-28T10:00:00Z", "version_created_at": "2026-11-28T12:30:00Z"
}))]
pub struct TemplateView {
    #[schema(example = "tpl_01a2239b6f4576c6abf5dbfeff8e03ca")]
    pub id: String,
    pub name: String,
    pub version: u32,
    /// The newest version number; older ones stay readable.
    pub latest_version: u32,
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    pub description: Option<String>,
    /// Templates this version includes with `{{> name}}`.
    pub partials: Vec<String>,
    /// Shipped with mailgate: usable by every tenant, read-only.
    pub builtin: bool,
    /// For a shipped template, when this mailgate process started: shipped templates
    /// are part of the binary.
    pub created_at: DateTime<Utc>,
    /// When this version was created.
    pub version_created_at: DateTime<Utc>,
}

impl TemplateView {
    fn new(template: &Template, version: TemplateVersion) -> Self {
        Self {
            id: template.id.to_string(),
            name: template.name.as_str().to_owned(),
            version: version.version,
            latest_version: template.latest_version,
            subject: version.sources.subject,
            html: version.sources.html,
            text: version.sources.text,
            description: version.description,
            partials: version.partials.iter().map(|p| p.as_str().to_owned()).collect(),
            builtin: template.builtin,
            created_at: template.created_at,
            version_created_at: version.created_at,
        }
    }
}

/// A template without its sources.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSummary {
    pub id: String,
    pub name: String,
    pub latest_version: u32,
    /// Shipped with mailgate: usable by every tenant, read-only (`PUT` and `DELETE`
    /// answer 409 `template_read_only`). Create a template of the same name to replace it.
    pub builtin: bool,
    /// For a shipped template, when this mailgate process started: shipped templates
    /// are part of the binary.
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "data": [{"id": "tpl_01a2239b6f4576c6abf5dbfeff8e03ca", "name": "order-shipped", "latest_version": 2,
              "builtin": false, "created_at": "2026-11-28T10:00:00Z", "updated_at": "2026-11-28T12:30:00Z"},
             {"id": "tpl_00000000000000000000000000000001", "name": "welcome", "latest_version": 1,
              "builtin": true, "created_at": "2026-12-01T08:00:00Z", "updated_at": "2026-12-01T08:00:00Z"}],
    "next_cursor": null
}))]
pub struct TemplateList {
    pub data: Vec<TemplateSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateVersionList {
    /// Newest first.
    pub data: Vec<TemplateView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Render without sending: the stored (or pinned) version with `data`.
/// Reads an optional template version number: 1 to 2^31 - 1, as the schema says, so an
/// out-of-range number is refused with the shape errors (a 422 naming the field).
pub(super) fn version_number<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    match Option::<u32>::deserialize(de)? {
        Some(v) if v == 0 || v > i32::MAX as u32 => Err(super::body::coded_error(
            "invalid_template_version",
            "a template version is 1 to 2147483647",
        )),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"data": {"first_name": "Ana", "order": {"id": "A-1042"}}}))]
pub struct RenderTemplateRequest {
    /// The variables, a JSON object.
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The version to render; the latest when absent.
    #[serde(default, deserialize_with = "version_number")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub version: Option<u32>,
    /// For `format=mime`: the From of the preview (default `preview@<message_id_domain>`).
    #[serde(default)]
    pub from: Option<String>,
    /// For `format=mime`: the To of the preview (default `recipient@example.com`).
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RenderQuery {
    /// `json` (default) or `mime` for the exact `message/rfc822` that would be sent.
    #[param(inline)]
    pub format: Option<RenderFormat>,
}

/// What a render answers with: the rendered parts as JSON, or the MIME message.
// An enum, so that any other value is refused by the query extractor (`invalid_query`,
// listing these) like every other bad parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RenderFormat {
    Json,
    Mime,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "template_id": "tpl_01a2239b6f4576c6abf5dbfeff8e03ca", "version": 2,
    "subject": "Your order A-1042 has shipped",
    "html": "<p>Hi Ana, order A-1042 is on its way.</p>",
    "text": "Hi Ana, order A-1042 is on its way."
}))]
pub struct RenderTemplateResponse {
    pub template_id: String,
    pub version: u32,
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
}

fn key(raw: &str) -> Result<TemplateKey, ApiError> {
    TemplateKey::parse(raw).map_err(|_| ApiError::from_templates(TemplatesError::NotFound, TemplateContext::Endpoint))
}

fn problem(err: TemplatesError) -> ApiError {
    ApiError::from_templates(err, TemplateContext::Endpoint)
}

fn input(
    subject: Option<String>,
    html: Option<String>,
    text: Option<String>,
    description: Option<String>,
) -> Result<TemplateInput, ApiError> {
    if description.as_ref().is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::unprocessable(vec![FieldError::new(
            "/description",
            &ValidationError::new("invalid_description", "at most 1000 bytes"),
        )]));
    }
    Ok(TemplateInput {
        sources: TemplateSources { subject, html, text },
        description,
    })
}

/// Create a template (version 1).
///
/// Every part must compile (a 422 `template_syntax` names the part, line and
/// column), every `{{> partial}}` must be an existing template, and a template may
/// not include itself, directly or through others (`template_cycle`). Nothing is
/// stored when any check fails.
#[utoipa::path(
    tag = "templates",
    request_body = CreateTemplateRequest,
    security(("bearer" = ["templates:write"])),
    responses(
        (status = 201, description = "Created", body = TemplateView, headers(("Location" = String))),
        (status = 409, description = "The name is taken (`template_name_taken`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid name, syntax error, unknown partial or cycle", body = Problem, content_type = PROBLEM_JSON,
            example = json!({"type": "urn:mailgate:problem:template_syntax", "title": "Unprocessable request", "status": 422,
                "detail": "/html: the html part does not compile at line 3, column 1: …", "code": "template_syntax",
                "errors": [{"field": "/html", "code": "template_syntax", "message": "…", "line": 3, "column": 1}]})),
    )
)]
#[post("/v1/templates")]
pub async fn create_template(
    auth: Authenticated<TemplatesWrite>,
    body: JsonBody<CreateTemplateRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    let name =
        TemplateName::parse(&req.name).map_err(|e| ApiError::unprocessable(vec![FieldError::new("/name", &e)]))?;
    let input = input(req.subject, req.html, req.text, req.description)?;
    let (template, version) = state
        .templates
        .create(&auth.principal.tenant, name, input)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/templates/{}", template.id)))
        .json(TemplateView::new(&template, version)))
}

/// List the templates you can use: yours, newest first, then the shipped ones.
///
/// Shipped templates are marked `builtin: true` and are read-only. One you replaced
/// with your own template of the same name is not listed; yours is. Pages continue
/// from yours into the shipped ones with the same `cursor`.
#[utoipa::path(
    tag = "templates",
    params(ListQuery),
    security(("bearer" = ["templates:read"])),
    responses(
        (status = 200, description = "A page of templates", body = TemplateList),
        (status = 422, description = "Invalid `limit` or `cursor`", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/templates")]
pub async fn list_templates(
    auth: Authenticated<TemplatesRead>,
    query: Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateList>, ApiError> {
    let size = page_size(query.limit)?;
    let cursor = match &query.cursor {
        Some(raw) => Some(TemplateId::parse(raw).map_err(|_| invalid_cursor("cursor"))?),
        None => None,
    };
    let fetched = state
        .templates
        .list(&auth.principal.tenant, cursor, size + 1)
        .await
        .map_err(problem)?;
    let (page, next_cursor) = split_page(fetched, size, |t| t.id.to_string());
    Ok(web::Json(TemplateList {
        next_cursor,
        data: page
            .into_iter()
            .map(|t| TemplateSummary {
                id: t.id.to_string(),
                name: t.name.as_str().to_owned(),
                latest_version: t.latest_version,
                builtin: t.builtin,
                created_at: t.created_at,
                updated_at: t.updated_at,
            })
            .collect(),
    }))
}

/// Get a template (its latest version) by id or name.
///
/// A name resolves to your own template first, then to a shipped one. Another
/// tenant's template is answered 404, exactly like a missing one.
#[utoipa::path(
    tag = "templates",
    params(("id_or_name" = String, Path, description = "`tpl_…` id or template name")),
    security(("bearer" = ["templates:read"])),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 404, description = "No such template (`template_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/templates/{id_or_name}")]
pub async fn get_template(
    auth: Authenticated<TemplatesRead>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateView>, ApiError> {
    let (template, version) = state
        .templates
        .get(&auth.principal.tenant, key(&path)?, None)
        .await
        .map_err(problem)?;
    Ok(web::Json(TemplateView::new(&template, version)))
}

/// Update a template: creates a new immutable version; the old ones stay readable.
#[utoipa::path(
    tag = "templates",
    params(("id_or_name" = String, Path, description = "`tpl_…` id or template name")),
    request_body = UpdateTemplateRequest,
    security(("bearer" = ["templates:write"])),
    responses(
        (status = 200, description = "The new version", body = TemplateView),
        (status = 404, description = "No such template", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Shipped templates are read-only (`template_read_only`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Syntax error, unknown partial or cycle", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[put("/v1/templates/{id_or_name}")]
pub async fn update_template(
    auth: Authenticated<TemplatesWrite>,
    path: web::Path<String>,
    body: JsonBody<UpdateTemplateRequest>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateView>, ApiError> {
    let req = body.0;
    let input = input(req.subject, req.html, req.text, req.description)?;
    let (template, version) = state
        .templates
        .update(&auth.principal.tenant, key(&path)?, input)
        .await
        .map_err(problem)?;
    Ok(web::Json(TemplateView::new(&template, version)))
}

/// Delete a template and all its versions. Messages keep the id and version they
/// were rendered from.
#[utoipa::path(
    tag = "templates",
    params(("id_or_name" = String, Path, description = "`tpl_…` id or template name")),
    security(("bearer" = ["templates:write"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such template", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Shipped templates are read-only", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[delete("/v1/templates/{id_or_name}")]
pub async fn delete_template(
    auth: Authenticated<TemplatesWrite>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .templates
        .delete(&auth.principal.tenant, key(&path)?)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::NoContent().finish())
}

/// List every version of a template, newest first.
#[utoipa::path(
    tag = "templates",
    params(("id_or_name" = String, Path, description = "`tpl_…` id or template name")),
    security(("bearer" = ["templates:read"])),
    responses(
        (status = 200, description = "The versions", body = TemplateVersionList),
        (status = 404, description = "No such template", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/templates/{id_or_name}/versions")]
pub async fn list_template_versions(
    auth: Authenticated<TemplatesRead>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateVersionList>, ApiError> {
    let (template, versions) = state
        .templates
        .versions(&auth.principal.tenant, key(&path)?)
        .await
        .map_err(problem)?;
    Ok(web::Json(TemplateVersionList {
        data: versions.into_iter().map(|v| TemplateView::new(&template, v)).collect(),
        next_cursor: None,
    }))
}

/// Get one version of a template.
#[utoipa::path(
    tag = "templates",
    params(
        ("id_or_name" = String, Path, description = "`tpl_…` id or template name"),
        ("version" = u32, Path, description = "Version number, from 1"),
    ),
    security(("bearer" = ["templates:read"])),
    responses(
        (status = 200, description = "The version", body = TemplateView),
        (status = 404, description = "No such template or version", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/templates/{id_or_name}/versions/{version}")]
pub async fn get_template_version(
    auth: Authenticated<TemplatesRead>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateView>, ApiError> {
    let (raw_key, raw_version) = path.into_inner();
    let version: u32 = raw_version
        .parse()
        .map_err(|_| problem(TemplatesError::VersionNotFound(0)))?;
    let (template, version) = state
        .templates
        .get(&auth.principal.tenant, key(&raw_key)?, Some(version))
        .await
        .map_err(problem)?;
    Ok(web::Json(TemplateView::new(&template, version)))
}

/// Render a template with data, without sending anything.
///
/// Partials are always rendered at their latest version (a pinned `version` pins
/// the template itself). Strict like a send: the variables the template uses and `data`
/// lacks are a 422 with one `missing_variable` error per variable, each `field` naming
/// one (`/data/order/total`), so all can be fixed at once. With
/// `?format=mime` the answer is the exact `message/rfc822` a send would produce
/// (Message-ID and Date differ per send).
#[utoipa::path(
    tag = "templates",
    params(("id_or_name" = String, Path, description = "`tpl_…` id or template name"), RenderQuery),
    request_body = RenderTemplateRequest,
    security(("bearer" = ["templates:read"])),
    responses(
        (status = 200, description = "The rendered parts, or with `format=mime` the message",
            content((RenderTemplateResponse = "application/json"), (String = "message/rfc822"))),
        (status = 404, description = "No such template or version", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Variables are missing (each one listed), or the output is too large or too slow", body = Problem, content_type = PROBLEM_JSON,
            example = json!({"type": "urn:mailgate:problem:missing_variable", "title": "Unprocessable request", "status": 422,
                "detail": "/data/order/total: the html part uses `order.total`, which the data does not have",
                "code": "missing_variable",
                "errors": [{"field": "/data/order/total", "code": "missing_variable", "message": "the html part uses `order.total`, which the data does not have"}]})),
    )
)]
#[post("/v1/templates/{id_or_name}/render")]
pub async fn render_template(
    auth: Authenticated<TemplatesRead>,
    path: web::Path<String>,
    query: Query<RenderQuery>,
    body: JsonBody<RenderTemplateRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    let as_mime = query.format == Some(RenderFormat::Mime);
    let data = serde_json::Value::Object(req.data);
    if super::messages::data_too_deep(&data) {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            "/data",
            "invalid_template_data",
            "`data` nests at most 32 levels",
        )]));
    }
    let tenant = &auth.principal.tenant;
    if as_mime {
        let mime = state
            .sender
            .preview(tenant, key(&path)?, req.version, data, req.from, req.to)
            .await
            .map_err(|err| match err {
                SendError::Template(err) => problem(err),
                other => other.into(),
            })?;
        return Ok(HttpResponse::Ok().content_type("message/rfc822").body(mime));
    }
    let rendering = state
        .templates
        .render(tenant, key(&path)?, req.version, data)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Ok().json(RenderTemplateResponse {
        template_id: rendering.template.id.to_string(),
        version: rendering.version,
        subject: rendering.parts.subject,
        html: rendering.parts.html,
        text: rendering.parts.text,
    }))
}
