//! Requests that no route took: `405` with `Allow` when the path is a documented
//! resource and only the method is wrong, `404` otherwise — as problem+json, or in a
//! provider's shape under its compatibility routes (`compat::unrouted`).
//!
//! The known paths come from the OpenAPI document, which is collected from the route
//! registrations themselves, so this table cannot drift from the routes.

use actix_web::dev::ResourceDef;
use actix_web::HttpRequest;
use utoipa::openapi::OpenApi;

use super::problem::{ApiError, Kind};

pub struct KnownPaths(Vec<(ResourceDef, String)>);

impl KnownPaths {
    pub fn from_document(document: &OpenApi) -> Self {
        let paths = document
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let operations = [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PUT", &item.put),
                    ("PATCH", &item.patch),
                    ("DELETE", &item.delete),
                ];
                let allow: Vec<&str> = operations
                    .iter()
                    .filter(|(_, op)| op.is_some())
                    .map(|(method, _)| *method)
                    .collect();
                (ResourceDef::new(path.as_str()), allow.join(", "))
            })
            .collect();
        Self(paths)
    }

    /// The `Allow` value for `path`, when it is a documented resource.
    fn allowed(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, allow)| allow.as_str())
    }

    /// Why no route took `req`: 405 with `Allow`, or 404.
    pub fn refusal(&self, req: &HttpRequest) -> ApiError {
        match self.allowed(req.path()) {
            Some(allow) => ApiError::new(
                Kind::MethodNotAllowed,
                "method_not_allowed",
                format!("{} is not supported here; use {allow}", req.method()),
            )
            .with_header(actix_web::http::header::ALLOW, allow),
            None => ApiError::new(Kind::NotFound, "not_found", "no such endpoint"),
        }
    }
}
