//! Responses that whole kinds of operations share, added to the OpenAPI document in one
//! place: every operation behind a bearer token can answer 401 and 403, every operation
//! with a body can answer 400, 408, 413 and (for JSON) 415 and 422, every operation with query
//! parameters can answer 422. The extractors that produce these answers are shared, so
//! documenting them per handler would only let the two drift apart; a handler that says
//! something more specific about one of these statuses keeps its own description.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response};

use super::problem::PROBLEM_JSON;

/// `(status, component name, description)` of each shared response.
const SHARED: [(&str, &str, &str); 7] = [
    (
        "400",
        "BadRequest",
        "The body is not valid JSON, is empty where one is required, or could not be read \
         (`malformed_json`, `empty_body`, `unreadable_body`)",
    ),
    (
        "401",
        "Unauthorized",
        "No token, or one that is malformed, expired, not yet valid, revoked or signed with \
         an unknown key (`invalid_token`); sent with `WWW-Authenticate: Bearer`",
    ),
    (
        "403",
        "Forbidden",
        "The token is valid but lacks the scope this operation needs (`insufficient_scope`)",
    ),
    (
        "408",
        "RequestTimeout",
        "The body did not arrive within `http.body_timeout` (`request_timeout`)",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than `http.max_body_bytes` (`payload_too_large`)",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not `application/json` (`unsupported_media_type`)",
    ),
    (
        "422",
        "Unprocessable",
        "Well-formed but invalid: `errors` lists each offending field with a JSON Pointer \
         (body) or the parameter name (query) and a stable `code`",
    ),
];

/// Adds the shared responses to `document`: once under `components.responses`, then as
/// references from every operation they apply to.
pub fn add(document: &mut OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    for (_, name, description) in SHARED {
        components
            .responses
            .insert(name.to_owned(), RefOr::T(problem(description)));
    }
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for status in applicable(operation) {
                if let Some((_, name, _)) = SHARED.iter().find(|(s, _, _)| *s == status) {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))));
                }
            }
        }
    }
}

/// Which shared statuses `operation` can answer, from what it declares. None for the
/// provider-compatible routes: they answer in their provider's shape and document
/// each status themselves.
fn applicable(operation: &Operation) -> Vec<&'static str> {
    let mut statuses = Vec::new();
    if operation.tags.iter().flatten().any(|tag| tag == super::compat::TAG) {
        return statuses;
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        statuses.extend(["401", "403"]);
    }
    if let Some(RefOr::T(body)) = &operation.request_body {
        statuses.extend(["400", "408", "413"]);
        if body.content.keys().any(|media| media.ends_with("json")) {
            statuses.extend(["415", "422"]);
        }
    }
    let has_query = operation.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => p.parameter_in == ParameterIn::Query,
        RefOr::Ref(_) => false,
    });
    if has_query {
        statuses.push("422");
    }
    statuses
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    fn responses(method: &str, path: &str) -> Vec<String> {
        let document = crate::api::openapi_document();
        let json = serde_json::to_value(&document).unwrap();
        let operation = &json["paths"][path][method]["responses"];
        operation.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn authenticated_json_operations_document_every_shared_rejection() {
        let statuses = responses("post", "/v1/webhooks");
        for status in ["400", "401", "403", "413", "415", "422"] {
            assert!(statuses.iter().any(|s| s == status), "{status} missing: {statuses:?}");
        }
    }

    #[test]
    fn public_operations_without_input_get_none() {
        assert_eq!(responses("get", "/healthz"), ["200"]);
    }
}
