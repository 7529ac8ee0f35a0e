//! Routes that speak hosted providers' APIs, so that their official SDKs work against
//! mailgate with only the base URL and the key changed: Resend (`/emails`) and SendGrid
//! (`/v3/mail/send`).
//!
//! Each adapter turns the provider's request into mailgate's own send request and goes
//! through exactly the path of `/v1/messages` — validation, strict templates,
//! idempotency, the durable write, events, webhooks, stats. Only the edges differ: the
//! request's shape, the answer's, and the errors, which each SDK parses into its own
//! error types. A provider feature mailgate does not have is refused naming the field,
//! never dropped.

pub mod resend;
pub mod sendgrid;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use super::problem::{ApiError, Kind};
use crate::domain::message::IdempotencyKey;

/// The OpenAPI tag of every provider-compatible route.
pub const TAG: &str = "compatibility";

/// Where the fields of a mailgate send request came from in a provider's request, so
/// that an error found by mailgate's validation names the field the caller wrote.
/// Each entry maps a JSON Pointer prefix of mailgate's request to the provider's.
#[derive(Debug, Default, Clone)]
pub struct Origins(Vec<(String, String)>);

impl Origins {
    /// Records that mailgate's `ours` (e.g. `/send_at`) was the caller's `theirs`
    /// (e.g. `/scheduled_at`).
    pub fn map(&mut self, ours: impl Into<String>, theirs: impl Into<String>) {
        self.0.push((ours.into(), theirs.into()));
    }

    /// The caller's pointer for mailgate's `pointer`: the longest recorded prefix that
    /// ends on a segment boundary is replaced; an unrecorded pointer stays as it is.
    pub fn theirs(&self, pointer: &str) -> String {
        let best = self
            .0
            .iter()
            .filter(|(ours, _)| {
                pointer
                    .strip_prefix(ours.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|(ours, _)| ours.len());
        match best {
            Some((ours, theirs)) => format!("{theirs}{}", &pointer[ours.len()..]),
            None => pointer.to_owned(),
        }
    }

    /// `err` with its field pointers in the caller's terms, under `prefix` (e.g.
    /// `/personalizations/2`).
    pub fn relabel(&self, err: ApiError, prefix: &str) -> ApiError {
        err.map_fields(|field| format!("{prefix}{}", self.theirs(field)))
    }
}

/// The refusals of several messages of one request as one error: a failure that is not
/// the caller's (the store's) stays itself; otherwise every field error, once — a field
/// of the request that all its messages share (SendGrid's `from`, `content`) fails the
/// same way in each.
pub fn joined(refused: impl IntoIterator<Item = ApiError>) -> ApiError {
    let mut said = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for err in refused {
        if err.kind() != Kind::Unprocessable {
            return err;
        }
        errors.extend(
            err.into_field_errors()
                .into_iter()
                .filter(|e| said.insert((e.field.clone(), e.code.clone()))),
        );
    }
    ApiError::unprocessable(errors)
}

/// The idempotency key of item `index` of a request that holds several messages (a
/// Resend batch, the personalizations of a SendGrid send): the request's key and
/// request hash, told apart by position, so retrying the whole request replays every
/// item. The separator is a space, which a caller's key cannot hold (keys are visible
/// ASCII): a derived key never meets one a caller sent.
pub fn item_key(key: &IdempotencyKey, index: usize) -> IdempotencyKey {
    IdempotencyKey {
        key: format!("{} {index}", key.key),
        request_hash: key.request_hash.clone(),
    }
}

/// An error answer in a provider's JSON shape: `status`, the headers mailgate's own
/// answer would carry (`Retry-After`, `WWW-Authenticate`, `Allow`, rate-limit headers)
/// and `body` as `application/json` — SDKs that parse errors by content type refuse
/// `application/problem+json`.
pub fn error_response(err: &ApiError, status: StatusCode, body: &impl Serialize) -> HttpResponse {
    err.log_if_server_error();
    let mut response = HttpResponseBuilder::new(status);
    for (name, value) in err.headers() {
        response.insert_header((name.clone(), value));
    }
    response.json(body)
}

/// The answer to a request no route took, in the shape its path's SDK parses: under
/// `/emails` Resend's, under `/v3/` SendGrid's, mailgate's problem+json elsewhere.
pub fn unrouted(req: &HttpRequest, refusal: ApiError) -> HttpResponse {
    let path = req.path();
    if path == "/emails" || path.starts_with("/emails/") {
        resend::ResendFailure::from(refusal).error_response()
    } else if path.starts_with("/v3/") {
        sendgrid::SendGridFailure::from(refusal).error_response()
    } else {
        refusal.error_response()
    }
}

/// `(status, description)` of the refusals every compatibility operation with a token
/// can answer, and those with a body too; documented once here (as
/// `shared_responses` does for mailgate's own routes) in each provider's error shape.
const RESEND_SHARED: [(&str, &str); 3] = [
    (
        "401",
        "No key (`missing_api_key`), or a token without this operation's scope (`restricted_api_key`)",
    ),
    ("403", "A key mailgate does not accept (`invalid_api_key`)"),
    (
        "503",
        "A failing store, or (sends) back-pressure; retry after `Retry-After`",
    ),
];
const SENDGRID_SHARED: [(&str, &str); 3] = [
    ("401", "No key, or one mailgate does not accept"),
    ("403", "The token lacks `messages:send`"),
    ("503", "Back-pressure or a failing store; retry after `Retry-After`"),
];
const SHARED_BODY: [(&str, &str); 5] = [
    ("400", "Malformed JSON, or (SendGrid) any invalid field"),
    ("408", "The body did not arrive within `http.body_timeout`"),
    ("413", "The body is over `http.max_body_bytes`"),
    ("415", "The body is not JSON"),
    (
        "429",
        "Over the tenant's rate or daily quota (each message counts); see `Retry-After`",
    ),
];

/// Adds the shared refusals to every compatibility operation of `document`, with the
/// error schema of its provider; an operation's own description of a status wins.
pub fn document_shared_responses(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr};
    for (path, item) in document.paths.paths.iter_mut() {
        let (schema, shared) = if path.starts_with("/v3/") {
            ("SendGridErrors", &SENDGRID_SHARED)
        } else {
            ("ResendError", &RESEND_SHARED)
        };
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            if !operation.tags.iter().flatten().any(|tag| tag == TAG) {
                continue;
            }
            let body = operation.request_body.is_some().then_some(SHARED_BODY.as_slice());
            for (status, description) in shared.iter().chain(body.into_iter().flatten()) {
                operation
                    .responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(*description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name(schema)))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
    }
}

/// A media type from a file name's extension, for providers whose attachments may omit
/// it; `application/octet-stream` when the extension says nothing.
pub fn media_type_for(filename: &str) -> &'static str {
    let extension = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        Some("csv") => "text/csv",
        Some("htm" | "html") => "text/html",
        Some("ics") => "text/calendar",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("zip") => "application/zip",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("doc") => "application/msword",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xls") => "application/vnd.ms-excel",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// A mailbox as mailgate's parser reads it, from a provider's separate name and
/// address: the name quoted, so commas and angle brackets in it stay part of the name.
pub fn mailbox(email: &str, name: Option<&str>) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(name) => format!("\"{}\" <{email}>", name.replace('\\', "\\\\").replace('"', "\\\"")),
        None => email.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_is_translated_by_its_longest_whole_segment_prefix() {
        let mut origins = Origins::default();
        origins.map("/to", "/personalizations/1/to");
        origins.map("/template/data", "/personalizations/1/dynamic_template_data");
        origins.map("/template", "/template_id");
        origins.map("/tags", "/categories");
        assert_eq!(origins.theirs("/to/3"), "/personalizations/1/to/3");
        assert_eq!(
            origins.theirs("/template/data/order/total"),
            "/personalizations/1/dynamic_template_data/order/total"
        );
        assert_eq!(origins.theirs("/template"), "/template_id");
        assert_eq!(origins.theirs("/tagsx"), "/tagsx", "only whole segments match");
        assert_eq!(origins.theirs("/subject"), "/subject");
    }

    #[test]
    fn a_display_name_is_quoted_so_mailgate_reads_it_back_whole() {
        let raw = mailbox("ana@example.test", Some("Ana \"A\", <Ops>"));
        let parsed = crate::domain::address::Mailbox::parse(&raw).unwrap();
        assert_eq!(parsed.name(), Some("Ana \"A\", <Ops>"));
        assert_eq!(parsed.email().to_string(), "ana@example.test");
        assert_eq!(mailbox("ana@example.test", None), "ana@example.test");
    }

    #[test]
    fn the_compatibility_routes_are_documented_under_their_tag_with_provider_shaped_errors() {
        let document = serde_json::to_value(crate::api::openapi_document()).unwrap();
        let routes = [
            ("/emails", "post", "ResendError"),
            ("/emails/batch", "post", "ResendError"),
            ("/emails/{id}", "get", "ResendError"),
            ("/emails/{id}/cancel", "post", "ResendError"),
            ("/v3/mail/send", "post", "SendGridErrors"),
        ];
        for (path, method, schema) in routes {
            let operation = &document["paths"][path][method];
            assert_eq!(operation["tags"], serde_json::json!([TAG]), "{path}");
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses.iter().filter(|(s, _)| s.starts_with(['4', '5'])) {
                let content = response["content"].as_object().unwrap();
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/json"],
                    "{path} {status}"
                );
                assert_eq!(
                    content["application/json"]["schema"]["$ref"],
                    format!("#/components/schemas/{schema}"),
                    "{path} {status}"
                );
            }
            for status in ["401", "403", "503"] {
                assert!(responses.contains_key(status), "{path} documents {status}");
            }
        }
    }

    #[test]
    fn media_types_come_from_the_extension() {
        assert_eq!(media_type_for("Invoice.PDF"), "application/pdf");
        assert_eq!(media_type_for("noextension"), "application/octet-stream");
    }
}
