//! The query-string extractor of every endpoint with query parameters, so that a bad
//! parameter always answers `422 invalid_query` naming the parameter and saying what it
//! takes (for an enum, its values).

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::{ready, Ready};
use serde::de::DeserializeOwned;

use super::body::shape_error;
use super::problem::{ApiError, FieldError};

/// Query parameters parsed into `T`.
pub struct Query<T>(pub T);

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse(req.query_string()).map(Query))
    }
}

/// Deserializes a query string as actix's `web::Query` does, but tracks which
/// parameter failed: its `field` is the parameter's name (`status`), not a pointer.
fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let shape = shape_error(err.path(), &err.inner().to_string());
        let parameter = match shape.field.trim_start_matches('/') {
            "" => "query",
            name => name,
        };
        ApiError::unprocessable(vec![FieldError::coded(parameter, "invalid_query", shape.message)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        status: Option<crate::domain::status::MessageStatus>,
        limit: Option<u32>,
        tenant: String,
    }

    fn refusal(query: &str) -> String {
        parse::<Probe>(query).unwrap_err().to_string()
    }

    #[test]
    fn a_bad_parameter_is_named_and_an_enum_lists_its_values() {
        let text = refusal("tenant=acme&status=delivered");
        assert!(
            text.starts_with("invalid_query: status: unknown variant, expected one of `scheduled`"),
            "{text}"
        );
        assert!(!text.contains("delivered"), "{text}");
        assert_eq!(
            refusal("tenant=acme&limit=many"),
            "invalid_query: limit: expected a whole number"
        );
        assert!(refusal("limit=5").starts_with("invalid_query: tenant: missing field"));
        let parsed = parse::<Probe>("tenant=a%20b&limit=5&status=sent").unwrap();
        assert_eq!((parsed.tenant.as_str(), parsed.limit), ("a b", Some(5)));
    }
}
