//! RFC 9457 problem+json: the one place where any error becomes an HTTP response.
//!
//! Each error says only *which* kind it is ([`Kind`]: status and title, one table) and
//! its stable `code`; the rendering is shared. A 5xx tells the caller nothing about the
//! cause and logs the whole cause chain for the operator.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::ValidationError;
use crate::render::template::TemplateError;
use crate::sending::SendError;
use crate::store::StoreError;
use crate::templates::TemplatesError;

/// One invalid field of the request body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) into the request body, e.g. `/to/0`.
    #[schema(example = "/to/0")]
    pub field: String,
    /// Stable machine code, e.g. `invalid_address`.
    #[schema(example = "invalid_address")]
    pub code: String,
    pub message: String,
    /// For template syntax errors: where in the part (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, error: &ValidationError) -> Self {
        Self::coded(field, error.code, error.message.clone())
    }

    pub fn coded(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: code.to_owned(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:mailgate:problem:invalid_address",
    "title": "Unprocessable request",
    "status": 422,
    "detail": "1 field is invalid",
    "code": "invalid_address",
    "errors": [{"field": "/to/0", "code": "invalid_address", "message": "`bob` has no `@`"}]
}))]
pub struct Problem {
    /// `urn:mailgate:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case machine code; switch on this, not on `title` or `detail`.
    pub code: String,
    /// Field-level errors (422), empty otherwise.
    pub errors: Vec<FieldError>,
}

/// The kinds of failure, each with its HTTP status and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    /// It existed and was deliberately dropped (retention).
    Gone,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    Internal,
    Unavailable,
}

impl Kind {
    /// The HTTP status this kind is answered with.
    pub fn status(self) -> StatusCode {
        self.status_and_title().0
    }

    fn status_and_title(self) -> (StatusCode, &'static str) {
        match self {
            Kind::BadRequest => (StatusCode::BAD_REQUEST, "Bad request"),
            Kind::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Kind::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
            Kind::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            Kind::Gone => (StatusCode::GONE, "Gone"),
            Kind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            Kind::Conflict => (StatusCode::CONFLICT, "Conflict"),
            Kind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
            Kind::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"),
            Kind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable request"),
            Kind::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "Request timeout"),
            Kind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
            Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
        }
    }
}

/// The media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    kind: Kind,
    code: String,
    detail: String,
    errors: Vec<FieldError>,
    /// Extra response headers: `WWW-Authenticate` for 401/403, `Allow` for 405.
    headers: Vec<(header::HeaderName, String)>,
    #[source]
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(kind: Kind, code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
            cause: None,
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// A 503 the caller should retry after `Retry-After`: back-pressure, or a store that
    /// cannot write.
    pub fn unavailable(code: &str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, code, detail).with_header(
            header::RETRY_AFTER,
            crate::api::limits::BACKPRESSURE_RETRY_SECS.to_string(),
        )
    }

    pub fn invalid_token(detail: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, "invalid_token", detail)
            .with_header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
    }

    pub fn insufficient_scope(scope: &str) -> Self {
        Self::new(
            Kind::Forbidden,
            "insufficient_scope",
            format!("this call needs the `{scope}` scope"),
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            format!(r#"Bearer error="insufficient_scope", scope="{scope}""#),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Kind::NotFound, "not_found", format!("{what} was not found"))
    }

    /// A 422 for one or more invalid fields; the top-level `code` is the first field's.
    pub fn unprocessable(errors: Vec<FieldError>) -> Self {
        let code = errors
            .first()
            .map_or_else(|| "validation_failed".to_owned(), |e| e.code.clone());
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            errors,
            ..Self::new(Kind::Unprocessable, code, detail)
        }
    }

    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            cause: Some(Box::new(cause)),
            ..Self::new(
                Kind::Internal,
                "internal_error",
                "the server could not complete the request; it has been logged",
            )
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The stable machine code (`invalid_address`, `rate_limited`, …).
    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn field_errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// The extra headers the answer carries (`Retry-After`, `WWW-Authenticate`, …),
    /// those that are valid header values.
    pub fn headers(&self) -> impl Iterator<Item = (&header::HeaderName, HeaderValue)> {
        self.headers
            .iter()
            .filter_map(|(name, value)| HeaderValue::from_str(value).ok().map(|value| (name, value)))
    }

    /// Logs a server failure with its whole cause chain, for the operator: the caller
    /// is told nothing about the cause.
    pub fn log_if_server_error(&self) {
        if self.kind.status().is_server_error() {
            let chain = crate::telemetry::ErrorChain(self);
            tracing::error!(error = %chain, "request failed");
        }
    }

    /// The same error with each field pointer rewritten by `pointer`.
    pub fn map_fields(mut self, pointer: impl Fn(&str) -> String) -> Self {
        for error in &mut self.errors {
            error.field = pointer(&error.field);
        }
        if let [one] = self.errors.as_slice() {
            self.detail = format!("{}: {}", one.field, one.message);
        }
        self
    }

    /// The problem document this error renders as.
    pub fn problem(&self) -> Problem {
        let (status, title) = self.kind.status_and_title();
        Problem {
            problem_type: format!("urn:mailgate:problem:{}", self.code),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
            errors: self.errors.clone(),
        }
    }

    /// The same error for a part of a larger body: field pointers get `prefix`
    /// (e.g. `/messages/3`) in front.
    /// The field errors of this problem, or one error at the document root carrying
    /// its code and detail, so a refusal can join the field errors of a larger request.
    pub fn into_field_errors(self) -> Vec<FieldError> {
        if self.errors.is_empty() {
            vec![FieldError::coded("", &self.code, self.detail)]
        } else {
            self.errors
        }
    }

    pub fn nested_under(self, prefix: &str) -> Self {
        self.map_fields(|field| format!("{prefix}{field}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status_and_title().0
    }

    fn error_response(&self) -> HttpResponse {
        self.log_if_server_error();
        let mut response = HttpResponse::build(self.kind.status());
        response.content_type(PROBLEM_JSON);
        for (name, value) in self.headers() {
            response.insert_header((name.clone(), value));
        }
        response.json(self.problem())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %crate::telemetry::ErrorChain(&err), "the store is unavailable");
            return ApiError::unavailable(
                "store_unavailable",
                "the message store cannot write right now; nothing was stored, retry shortly",
            );
        }
        ApiError::internal(err)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        ApiError::internal(err)
    }
}

impl From<SendError> for ApiError {
    fn from(err: SendError) -> Self {
        match err {
            SendError::SenderDomainNotAllowed(domain) => ApiError::unprocessable(vec![FieldError::new(
                "/from",
                &ValidationError::new(
                    "sender_not_allowed",
                    format!("this tenant may not send from `{domain}`"),
                ),
            )]),
            SendError::SenderDomainNotVerified(domain) => ApiError::unprocessable(vec![FieldError::new(
                "/from",
                &ValidationError::new(
                    "sender_domain_not_verified",
                    format!("`{domain}` is not a verified sender domain of this tenant (see POST /v1/domains)"),
                ),
            )]),
            SendError::Template(err) => ApiError::from_templates(err, TemplateContext::Send),
            SendError::KeyReused => ApiError::new(
                Kind::Conflict,
                "idempotency_key_reused",
                "this Idempotency-Key was used within 24 hours with a different request body",
            ),
            SendError::TemplateContent(err) => ApiError::unprocessable(vec![FieldError::new("/template", &err)]),
            SendError::PreviewAddress { field, error } => ApiError::unprocessable(vec![FieldError::new(field, &error)]),
            SendError::Store(err) if err.is_unavailable() => ApiError::from(err),
            other => ApiError::internal(other),
        }
    }
}

/// Where a template error happened: on a template endpoint (an unknown template is a
/// 404, data errors point into `/data`), or inside a send (everything is a 422 under
/// `/template`, data errors point into `/template/data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateContext {
    Endpoint,
    Send,
}

impl ApiError {
    pub fn from_templates(err: TemplatesError, context: TemplateContext) -> Self {
        let (base, data) = match context {
            TemplateContext::Endpoint => ("", "/data"),
            TemplateContext::Send => ("/template", "/template/data"),
        };
        let message = err.to_string();
        let field =
            |pointer: String, code: &str| ApiError::unprocessable(vec![FieldError::coded(pointer, code, &message)]);
        match err {
            TemplatesError::NotFound if context == TemplateContext::Endpoint => {
                ApiError::new(Kind::NotFound, "template_not_found", message)
            }
            TemplatesError::NotFound => field(base.to_owned(), "template_not_found"),
            TemplatesError::VersionNotFound(_) if context == TemplateContext::Endpoint => {
                ApiError::new(Kind::NotFound, "template_version_not_found", message)
            }
            TemplatesError::VersionNotFound(_) => field(format!("{base}/version"), "template_version_not_found"),
            TemplatesError::NameTaken(_) => ApiError::new(Kind::Conflict, "template_name_taken", message),
            TemplatesError::ReadOnly => ApiError::new(Kind::Conflict, "template_read_only", message),
            TemplatesError::Empty => field(format!("{base}/subject"), "missing_content"),
            TemplatesError::Compile(compile) => ApiError::unprocessable(vec![FieldError {
                line: Some(compile.line),
                column: Some(compile.column),
                ..FieldError::coded(format!("/{}", compile.part.as_str()), "template_syntax", &message)
            }]),
            TemplatesError::UnknownPartial { part, .. } => field(format!("/{}", part.as_str()), "partial_not_found"),
            TemplatesError::Cycle(_) => field(base.to_owned(), "template_cycle"),
            TemplatesError::Render(TemplateError::MissingVariables(missing)) => ApiError::unprocessable(
                missing
                    .iter()
                    .map(|m| FieldError {
                        line: m.line,
                        column: m.column,
                        ..FieldError::coded(format!("{data}{}", m.path), "missing_variable", m.to_string())
                    })
                    .collect(),
            ),
            TemplatesError::Render(TemplateError::MissingPartial { .. }) => field(base.to_owned(), "partial_not_found"),
            TemplatesError::Render(TemplateError::OutputTooLarge { .. }) => {
                field(base.to_owned(), "template_output_too_large")
            }
            TemplatesError::Render(TemplateError::TooSlow { .. }) => field(base.to_owned(), "template_render_timeout"),
            TemplatesError::Render(TemplateError::TooComplex { .. }) => field(base.to_owned(), "template_too_complex"),
            TemplatesError::Render(TemplateError::Failed { .. }) => field(data.to_owned(), "template_render_failed"),
            TemplatesError::SubjectLineBreak => field(data.to_owned(), "invalid_subject"),
            other @ (TemplatesError::Store(_) | TemplatesError::Join(_)) => ApiError::internal(other),
        }
    }
}
