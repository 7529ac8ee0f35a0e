//! Stored templates: a tenant-unique name, and immutable numbered versions of the
//! subject, html and text sources.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::TenantId;
use super::ids::TemplateId;
use super::ValidationError;

/// A template name: 1 to 64 lowercase letters, digits, `-` or `_`. Names are how
/// templates are sent and how partials refer to each other (`{{> footer}}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

impl TemplateName {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        if super::is_slug(input) {
            Ok(Self(input.to_owned()))
        } else {
            Err(ValidationError::new(
                "invalid_template_name",
                "a template name is 1 to 64 lowercase letters, digits, `-` or `_`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TemplateName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TemplateName> for String {
    fn from(value: TemplateName) -> String {
        value.0
    }
}

/// How a caller names a template: by id (`tpl_…`) or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateKey {
    Id(TemplateId),
    Name(TemplateName),
}

impl TemplateKey {
    /// Reads `tpl_…` as an id and anything else as a name.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        if input.starts_with("tpl_") {
            TemplateId::parse(input).map(TemplateKey::Id)
        } else {
            TemplateName::parse(input).map(TemplateKey::Name)
        }
    }
}

/// The three parts a template can render. Each is optional on its own (a layout or a
/// partial may have only html), but a template has at least one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSources {
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// Which part of a template, also used to point at errors (`/html`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Subject,
    Html,
    Text,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Subject, Part::Html, Part::Text];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Html => "html",
            Part::Text => "text",
        }
    }
}

impl TemplateSources {
    pub fn get(&self, part: Part) -> Option<&str> {
        match part {
            Part::Subject => self.subject.as_deref(),
            Part::Html => self.html.as_deref(),
            Part::Text => self.text.as_deref(),
        }
    }
}

/// One immutable version of a template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub version: u32,
    pub sources: TemplateSources,
    pub description: Option<String>,
    /// Names of the templates this version includes as partials, for cycle checks.
    pub partials: Vec<TemplateName>,
    pub created_at: DateTime<Utc>,
}

/// A template's identity and the number of its latest version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    pub id: TemplateId,
    pub tenant: TenantId,
    pub name: TemplateName,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Shipped with mailgate: readable by every tenant, never writable.
    #[serde(default)]
    pub builtin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_ids_or_slugs() {
        assert!(matches!(TemplateKey::parse("welcome"), Ok(TemplateKey::Name(_))));
        assert!(matches!(
            TemplateKey::parse(TemplateId::fixed(1).as_str()),
            Ok(TemplateKey::Id(_))
        ));
        assert!(TemplateKey::parse("Welcome").is_err());
        assert!(TemplateKey::parse("tpl_nothex").is_err());
    }
}
