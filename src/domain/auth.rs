//! Who is calling: the tenant that owns every resource a request touches, and the
//! scopes its token grants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A tenant slug (`acme`, `default`): lowercase letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        if super::is_slug(input) {
            Ok(Self(input.to_owned()))
        } else {
            Err(ValidationError::new(
                "invalid_tenant",
                "a tenant is 1 to 64 lowercase letters, digits, `-` or `_`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> String {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A permission a token can carry. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    MessagesSend,
    MessagesRead,
    TemplatesRead,
    TemplatesWrite,
    WebhooksManage,
    SuppressionsManage,
    DomainsManage,
    BouncesWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::MessagesSend,
        Scope::MessagesRead,
        Scope::TemplatesRead,
        Scope::TemplatesWrite,
        Scope::WebhooksManage,
        Scope::SuppressionsManage,
        Scope::DomainsManage,
        Scope::BouncesWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MessagesSend => "messages:send",
            Scope::MessagesRead => "messages:read",
            Scope::TemplatesRead => "templates:read",
            Scope::TemplatesWrite => "templates:write",
            Scope::WebhooksManage => "webhooks:manage",
            Scope::SuppressionsManage => "suppressions:manage",
            Scope::DomainsManage => "domains:manage",
            Scope::BouncesWrite => "bounces:write",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| ValidationError::new("invalid_scope", format!("unknown scope `{s}`")))
    }
}

/// The scopes of one token, parsed from the space-separated `scope` claim. Unknown
/// scopes are ignored so that tokens minted for newer versions keep working.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn parse_lenient(claim: &str) -> Self {
        Self(claim.split_whitespace().filter_map(|s| s.parse().ok()).collect())
    }

    /// Parses strictly: used by `token issue`, where a typo must not mint a useless token.
    pub fn parse_strict(claim: &str) -> Result<Self, ValidationError> {
        claim
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn all() -> Self {
        Self(Scope::ALL.to_vec())
    }

    pub fn grants(&self, scope: Scope) -> bool {
        self.0.contains(&scope) || self.0.contains(&Scope::Admin)
    }

    pub fn to_claim(&self) -> String {
        self.0.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_grants_every_scope_and_others_only_themselves() {
        let send = Scopes::parse_lenient("messages:send future:scope");
        assert!(send.grants(Scope::MessagesSend));
        assert!(!send.grants(Scope::MessagesRead));
        assert!(Scopes::parse_lenient("admin").grants(Scope::MessagesRead));
        assert!(Scopes::parse_strict("messages:sned").is_err());
    }
}
