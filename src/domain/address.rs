//! RFC 5322 mailboxes (`Name <local@domain>`), with internationalised domains stored in
//! their ASCII (punycode) form so they can go on the SMTP envelope as-is.

use std::fmt;

use super::{reject_line_breaks, ValidationError};

const CODE: &str = "invalid_address";

/// An addr-spec whose local part is an RFC 5322 dot-atom and whose domain is an ASCII
/// (IDNA-encoded) host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress {
    local: String,
    domain: String,
}

impl EmailAddress {
    /// Parses `local@domain`; a Unicode domain is converted to punycode.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        reject_line_breaks(input, CODE, "an email address")?;
        let input = input.trim();
        let (local, domain) = input
            .rsplit_once('@')
            .ok_or_else(|| ValidationError::new(CODE, format!("`{input}` has no `@`")))?;
        check_local_part(local)?;
        let domain = ascii_domain(domain)?;
        Ok(Self {
            local: local.to_owned(),
            domain,
        })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn check_local_part(local: &str) -> Result<(), ValidationError> {
    if local.is_empty() || local.len() > 64 {
        return Err(ValidationError::new(CODE, "the local part must be 1 to 64 characters"));
    }
    let valid = local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext));
    if !valid {
        return Err(ValidationError::new(
            CODE,
            format!(
                "`{local}` is not a valid local part (ASCII letters, digits and !#$%&'*+-/=?^_`{{|}}~, dot-separated)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn ascii_domain(domain: &str) -> Result<String, ValidationError> {
    let invalid = || ValidationError::new(CODE, format!("`{domain}` is not a valid domain"));
    let ascii = idna::domain_to_ascii(domain).map_err(|_| invalid())?;
    let labels_ok = ascii.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if ascii.is_empty() || ascii.len() > 253 || !ascii.contains('.') || !labels_ok {
        return Err(invalid());
    }
    Ok(ascii)
}

/// An optional display name plus an address, as written in From/To/Cc/Reply-To.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    name: Option<String>,
    email: EmailAddress,
}

impl Mailbox {
    /// Parses `addr`, `<addr>`, `Name <addr>` or `"Name, Inc." <addr>`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        reject_line_breaks(input, CODE, "a mailbox")?;
        let trimmed = input.trim();
        let Some(open) = trimmed.rfind('<') else {
            return Ok(Self {
                name: None,
                email: EmailAddress::parse(trimmed)?,
            });
        };
        let addr = trimmed[open + 1..]
            .strip_suffix('>')
            .ok_or_else(|| ValidationError::new(CODE, format!("`{trimmed}` has an unclosed `<`")))?;
        let name = unquote(trimmed[..open].trim());
        if name.len() > 256 {
            return Err(ValidationError::new(CODE, "the display name is longer than 256 bytes"));
        }
        Ok(Self {
            name: (!name.is_empty()).then_some(name),
            email: EmailAddress::parse(addr)?,
        })
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn email(&self) -> &EmailAddress {
        &self.email
    }
}

fn unquote(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => name.to_owned(),
    }
}

impl fmt::Display for Mailbox {
    /// Formats for humans and JSON responses (not for the wire: MIME encoding is the
    /// renderer's job).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) if name.contains(|c: char| ",;:<>@\"()[]\\".contains(c)) => {
                write!(
                    f,
                    "\"{}\" <{}>",
                    name.replace('\\', "\\\\").replace('"', "\\\""),
                    self.email
                )
            }
            Some(name) => write!(f, "{name} <{}>", self.email),
            None => write!(f, "{}", self.email),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_display_name_and_idn_domain() {
        let mbox = Mailbox::parse("Zoë Müller <zoe@bücher.example>").unwrap();
        assert_eq!(mbox.name(), Some("Zoë Müller"));
        assert_eq!(mbox.email().to_string(), "zoe@xn--bcher-kva.example");
    }

    #[test]
    fn parses_quoted_name_with_comma() {
        let mbox = Mailbox::parse("\"Acme, Inc.\" <no-reply@acme.test>").unwrap();
        assert_eq!(mbox.name(), Some("Acme, Inc."));
        assert_eq!(mbox.to_string(), "\"Acme, Inc.\" <no-reply@acme.test>");
    }

    #[test]
    fn line_breaks_are_refused_anywhere() {
        for input in ["a@b.test\r\nBcc: x@y.test", "Eve\n <e@x.test>", "e@x.test\0"] {
            assert_eq!(Mailbox::parse(input).unwrap_err().code, "invalid_address");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for input in [
            "",
            "no-at",
            "a@",
            "@b.test",
            "a..b@c.test",
            "a@-b.test",
            "a@localhost",
            "Ana <a@b.test",
        ] {
            assert!(Mailbox::parse(input).is_err(), "{input} should be refused");
        }
    }
}
