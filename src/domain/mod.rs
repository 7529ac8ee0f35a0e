//! Pure domain types: values that are valid by construction, with no I/O.
//!
//! Every type here is built only by a `parse` function, so a value that exists has
//! already been checked: an address, subject or header with CR, LF or NUL cannot exist.

pub mod address;
pub mod auth;
pub mod bounce;
pub mod event;
pub mod ids;
pub mod message;
pub mod sender_domain;
pub mod status;
pub mod suppression;
pub mod template;
pub mod text;
pub mod webhook;

/// Why a single input value was refused, with a stable machine code.
///
/// The API layer adds the JSON Pointer of the offending field; the domain only knows
/// what was wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// Stable snake_case code, e.g. `invalid_address`.
    pub code: &'static str,
    /// Human-readable explanation for the caller.
    pub message: String,
}

impl ValidationError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A slug: 1 to 64 lowercase ASCII letters, digits, `-` or `_` (tenants, template
/// names).
pub(crate) fn is_slug(input: &str) -> bool {
    !input.is_empty()
        && input.len() <= 64
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Refuses CR, LF and NUL, the characters that turn a value into header injection.
pub(crate) fn reject_line_breaks(value: &str, code: &'static str, what: &str) -> Result<(), ValidationError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ValidationError::new(
            code,
            format!("{what} must not contain CR, LF or NUL characters"),
        ));
    }
    Ok(())
}
