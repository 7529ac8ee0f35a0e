//! Single-line header texts: subjects, custom header names and values, tags.

use super::{reject_line_breaks, ValidationError};

/// A subject line: no CR/LF/NUL, at most 998 bytes (RFC 5322 line limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        reject_line_breaks(input, "invalid_subject", "the subject")?;
        if input.len() > 998 {
            return Err(ValidationError::new(
                "invalid_subject",
                "the subject is longer than 998 bytes",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Headers that mailgate writes itself; a caller may not set or override them.
const STRUCTURAL_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "return-path",
    "sender",
    // Set per recipient at delivery (one-click unsubscribe) or by the DKIM signer.
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
];

/// A custom header a caller may add (e.g. `X-Entity-Ref-ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHeader {
    name: String,
    value: String,
}

impl CustomHeader {
    /// Validates the name (RFC 5322 field-name, not structural) and the value (one line).
    pub fn parse(name: &str, value: &str) -> Result<Self, ValidationError> {
        let name_ok =
            !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !name_ok {
            return Err(ValidationError::new(
                "invalid_header",
                format!("`{}` is not a valid header name", name.escape_debug()),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if STRUCTURAL_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
            return Err(ValidationError::new(
                "reserved_header",
                format!("`{name}` is set by mailgate and cannot be overridden"),
            ));
        }
        reject_line_breaks(value, "invalid_header", "a header value")?;
        if value.len() > 998 {
            return Err(ValidationError::new(
                "invalid_header",
                "a header value is longer than 998 bytes",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// A short label used to filter messages and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !ok {
            return Err(ValidationError::new(
                "invalid_tag",
                "a tag is 1 to 64 ASCII letters, digits or `-_.:`",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_with_line_break_is_refused() {
        assert_eq!(Subject::parse("Hi\r\nBcc: x@y.z").unwrap_err().code, "invalid_subject");
    }

    #[test]
    fn structural_headers_cannot_be_overridden() {
        for name in ["From", "bcc", "Content-Type", "MIME-Version", "Message-ID"] {
            assert_eq!(CustomHeader::parse(name, "x").unwrap_err().code, "reserved_header");
        }
        assert!(CustomHeader::parse("X-Entity-Ref-ID", "42").is_ok());
        assert_eq!(
            CustomHeader::parse("X-A", "1\r\nBcc: e@x.test").unwrap_err().code,
            "invalid_header"
        );
        assert_eq!(CustomHeader::parse("X A", "1").unwrap_err().code, "invalid_header");
    }
}
