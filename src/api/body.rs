//! The JSON body extractor: enforces the size limit while reading (413), tells bad
//! JSON (400) from well-formed JSON of the wrong shape (422), and reports the JSON
//! Pointer of the field that failed, including unknown fields.

use std::fmt::Write as _;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

use super::problem::{ApiError, FieldError, Kind};
use super::AppState;

/// A parsed JSON body, with the raw bytes it was parsed from (for request hashes).
pub struct JsonBody<T>(pub T, pub web::Bytes);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        Kind::PayloadTooLarge,
        "payload_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Bytes of a body that arrives in several chunks are copied into blocks of this size.
const BODY_BLOCK: usize = 64 * 1024;

/// A request body as it arrives. A body in one chunk (the usual case) is kept as it is,
/// never copied. Otherwise the chunks are copied into fixed-size blocks, joined once at
/// the end: memory stays the body's size however the client chunks it (a million
/// one-byte chunks cost a million bytes, not a million buffers), and a growing buffer
/// never holds its old and new allocation at once.
#[derive(Default)]
struct BodyBuffer {
    only: Option<web::Bytes>,
    full: Vec<web::Bytes>,
    block: Vec<u8>,
    len: usize,
}

impl BodyBuffer {
    fn push(&mut self, chunk: web::Bytes) {
        self.len += chunk.len();
        if self.full.is_empty() && self.block.is_empty() && self.only.is_none() {
            self.only = Some(chunk);
            return;
        }
        if let Some(first) = self.only.take() {
            self.copy(&first);
        }
        self.copy(&chunk);
    }

    fn copy(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.block.len() == BODY_BLOCK {
                let full = std::mem::replace(&mut self.block, Vec::with_capacity(BODY_BLOCK));
                self.full.push(web::Bytes::from(full));
            }
            if self.block.capacity() == 0 {
                self.block.reserve_exact(BODY_BLOCK);
            }
            let take = (BODY_BLOCK - self.block.len()).min(data.len());
            let (now, rest) = data.split_at(take);
            self.block.extend_from_slice(now);
            data = rest;
        }
    }

    fn finish(self) -> web::Bytes {
        if let Some(only) = self.only {
            return only;
        }
        if self.full.is_empty() {
            return web::Bytes::from(self.block);
        }
        let mut body = web::BytesMut::with_capacity(self.len);
        self.full.iter().for_each(|block| body.extend_from_slice(block));
        body.extend_from_slice(&self.block);
        body.freeze()
    }
}

/// Reads the whole body, refusing it (413) past the configured limit — up front from
/// `Content-Length`, or while streaming a chunked body — and (408) when it takes longer
/// than `http.body_timeout` to arrive.
fn read_limited(req: &HttpRequest, payload: &mut Payload) -> LocalBoxFuture<'static, Result<web::Bytes, ApiError>> {
    let (limit, deadline) = req
        .app_data::<web::Data<AppState>>()
        .map_or((25 * 1024 * 1024, std::time::Duration::from_secs(30)), |s| {
            (s.settings.http.max_body_bytes, s.settings.http.body_timeout.0)
        });
    let declared: Option<usize> = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large(limit));
        }
        let read = async {
            let mut body = BodyBuffer::default();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|_| {
                    ApiError::new(
                        Kind::BadRequest,
                        "unreadable_body",
                        "the request body could not be read",
                    )
                })?;
                if body.len + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.push(chunk);
            }
            Ok(body.finish())
        };
        // A client trickling its body (slowloris) holds a connection and a buffer; the
        // whole body must arrive within `http.body_timeout`.
        tokio::time::timeout(deadline, read).await.unwrap_or_else(|_| {
            Err(ApiError::new(
                Kind::RequestTimeout,
                "request_timeout",
                format!("the request body did not arrive within {} s", deadline.as_secs()),
            ))
        })
    })
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let media_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            });
        let body = read_limited(req, payload);
        Box::pin(async move {
            if !media_ok {
                return Err(ApiError::new(
                    Kind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "send the body as `Content-Type: application/json`",
                ));
            }
            let raw = body.await?;
            parse(&raw).map(|value| JsonBody(value, raw))
        })
    }
}

/// The body as bytes, of any media type, under the same size limit.
pub struct RawBody(pub web::Bytes);

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_limited(req, payload);
        Box::pin(async move { body.await.map(RawBody) })
    }
}

/// Nested request objects accept only JSON objects. serde's derived `Deserialize` also
/// takes a struct as a positional array (`"template": [null, "welcome"]`), a form no
/// client means and the schema does not allow; these go through `deserialize_map`.
pub mod object {
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    struct Object<T>(T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            struct Only<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
                type Value = T;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                    T::deserialize(MapAccessDeserializer::new(map))
                }
            }
            de.deserialize_map(Only(PhantomData)).map(Object)
        }
    }

    /// For `Option<T>` fields (use with `#[serde(default)]`).
    pub fn optional<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<T>, D::Error> {
        Ok(Option::<Object<T>>::deserialize(de)?.map(|o| o.0))
    }

    /// For `Vec<T>` fields.
    pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Vec<T>, D::Error> {
        Ok(Vec::<Object<T>>::deserialize(de)?.into_iter().map(|o| o.0).collect())
    }
}

/// A deserialization error with our own stable `code`, for `deserialize_with` helpers
/// that check a value's form while parsing (the shape phase) rather than after it.
pub fn coded_error<E: serde::de::Error>(code: &str, message: &str) -> E {
    E::custom(format!("{CODED}{code}{CODED}{message}"))
}

/// Brackets the code inside a coded serde error; a control character, so no
/// serde message (which quotes JSON text, escaped) can contain it.
const CODED: char = '\u{1}';

/// Deserializes `body`, mapping serde's errors to problem responses with pointers.
///
/// A body that holds nothing but JSON whitespace is `400 empty_body`, not serde's
/// "EOF while parsing": the caller forgot the body, it is not malformed.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Err(ApiError::new(
            Kind::BadRequest,
            "empty_body",
            "the request body is empty; send a JSON document",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let malformed = |err: &serde_json::Error| {
        ApiError::new(
            Kind::BadRequest,
            "malformed_json",
            format!("the body is not valid JSON: {err}"),
        )
    };
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        if !err.inner().is_data() {
            return malformed(err.inner());
        }
        ApiError::unprocessable(vec![shape_error(err.path(), &err.inner().to_string())])
    })?;
    de.end().map_err(|err| malformed(&err))?;
    Ok(value)
}

/// A serde data error at `path` as a field error: the JSON Pointer of the field it is
/// about, our code for it, and serde's message without the offending value. Shared by
/// the body and the query string, so both read the same way.
pub(super) fn shape_error(path: &serde_path_to_error::Path, serde_message: &str) -> FieldError {
    let pointer = pointer_of(path);
    if let Some((code, message)) = serde_message
        .strip_prefix(CODED)
        .and_then(|rest| rest.split_once(CODED))
    {
        let message = message.split(" at line ").next().unwrap_or(message);
        return FieldError::coded(pointer, code, message);
    }
    let text = without_values(serde_message);
    let (code, field) = if let Some(name) = quoted_after(&text, "unknown field `") {
        ("unknown_field", child(&pointer, &name))
    } else if let Some(name) = quoted_after(&text, "missing field `") {
        ("missing_field", child(&pointer, &name))
    } else {
        ("invalid_type", pointer)
    };
    FieldError::coded(field, code, text)
}

/// serde's data errors quote the offending value (`invalid type: string "…"`), which
/// may be a 25 MiB attachment or a secret: keep only what was expected, bounded.
fn without_values(serde_message: &str) -> String {
    let message = serde_message.split(" at line ").next().unwrap_or(serde_message);
    let message = match message.split_once(", expected ") {
        Some((head, expected)) if head.starts_with("invalid type") => format!("wrong type, expected {expected}"),
        Some((head, expected)) if head.starts_with("invalid value") => format!("invalid value, expected {expected}"),
        Some((head, expected)) if head.starts_with("unknown variant") => {
            format!("unknown variant, expected {expected}")
        }
        // A query parameter that should be a number reaches us as Rust's parse error.
        _ if ["invalid digit", "number too large", "cannot parse integer"]
            .iter()
            .any(|m| message.contains(m)) =>
        {
            "expected a whole number".to_owned()
        }
        _ => message.to_owned(),
    };
    message.chars().take(300).collect()
}

fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let rest = text.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_owned())
}

/// Escapes one reference token (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `pointer` extended by `name`, unless the path already ends there (serde reports
/// unknown fields at the field itself, missing fields at their parent).
fn child(pointer: &str, name: &str) -> String {
    let token = format!("/{}", escape_token(name));
    if pointer.ends_with(&token) {
        pointer.to_owned()
    } else {
        format!("{pointer}{token}")
    }
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(pointer, "/{index}");
            }
            Segment::Map { key } => {
                let _ = write!(pointer, "/{}", escape_token(key));
            }
            Segment::Enum { variant } => {
                let _ = write!(pointer, "/{}", escape_token(variant));
            }
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_keeps_its_size_in_memory_however_it_is_chunked() {
        let one = web::Bytes::from_static(b"{\"a\":1}");
        let mut body = BodyBuffer::default();
        body.push(one.clone());
        assert_eq!(body.finish().as_ptr(), one.as_ptr(), "one chunk is not copied");

        let mut body = BodyBuffer::default();
        let expected: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        for byte in &expected {
            body.push(web::Bytes::copy_from_slice(&[*byte]));
        }
        assert_eq!(
            body.full.len(),
            200_000 / BODY_BLOCK,
            "full blocks, not a buffer per chunk"
        );
        assert_eq!(body.finish(), expected);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        to: Vec<String>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "object::optional")]
        strict: Option<Inner>,
        #[serde(default, deserialize_with = "object::list")]
        many: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
    }

    fn problem(body: &str) -> (Kind, String) {
        let err = parse::<Probe>(body.as_bytes()).unwrap_err();
        let text = err.to_string();
        (err.kind(), text)
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_422_with_pointers() {
        assert_eq!(problem("{\"to\": [").0, Kind::BadRequest);
        assert_eq!(problem("{\"to\": []} trailing").0, Kind::BadRequest);
        let (kind, text) = problem(r#"{"to": [], "htlm": 1}"#);
        assert_eq!(kind, Kind::Unprocessable);
        assert!(text.starts_with("unknown_field: /htlm"), "{text}");
        let (_, text) = problem(r#"{"to": ["ok", {"secret": "hunter2"}]}"#);
        assert!(text.starts_with("invalid_type: /to/1"), "{text}");
        let (_, text) = problem(r#"{"to": "hunter2"}"#);
        assert!(!text.contains("hunter2"), "{text}");
        let (_, text) = problem(r#"{"to": [], "inner": {"b": 1}}"#);
        assert!(text.starts_with("unknown_field: /inner/b"), "{text}");
        let (_, text) = problem(r#"{}"#);
        assert!(text.starts_with("missing_field: /to"), "{text}");
    }

    #[test]
    fn object_fields_refuse_the_positional_array_form_and_keep_pointers() {
        assert!(
            parse::<Probe>(br#"{"to": [], "inner": [1]}"#).is_ok(),
            "serde's default, for contrast"
        );
        let (_, text) = problem(r#"{"to": [], "strict": [1]}"#);
        assert!(text.starts_with("invalid_type: /strict"), "{text}");
        let (_, text) = problem(r#"{"to": [], "many": [{"a": 1}, [2]]}"#);
        assert!(text.starts_with("invalid_type: /many/1"), "{text}");
        let (_, text) = problem(r#"{"to": [], "strict": {"a": 1, "b": 2}}"#);
        assert!(text.starts_with("unknown_field: /strict/b"), "{text}");
        let parsed = parse::<Probe>(br#"{"to": [], "strict": {"a": 7}, "many": [{"a": 8}]}"#).unwrap();
        assert_eq!((parsed.strict.unwrap().a, parsed.many[0].a), (7, 8));
    }
}
