//! Sender domains: a tenant's domain, the DKIM keys mailgate signs its mail with, and
//! what the last DNS check found. Pure data; `crate::domains` checks and changes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::TenantId;
use super::ids::DomainId;
use super::ValidationError;
use crate::dkim::Algorithm;

/// A DNS name mailgate sends for (ASCII, lower case; a Unicode name is stored as
/// punycode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        super::address::ascii_domain(input.trim().trim_end_matches('.'))
            .map(|ascii| Self(ascii.to_ascii_lowercase()))
            .map_err(|_| {
                ValidationError::new(
                    "invalid_domain",
                    format!("`{input}` is not a domain name like acme.com"),
                )
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This name and each parent with at least two labels (`a.b.acme.com`, `b.acme.com`,
    /// `acme.com`): where a verified domain covering it can be.
    pub fn and_parents(&self) -> impl Iterator<Item = &str> {
        let name = self.0.as_str();
        std::iter::once(name)
            .chain(name.match_indices('.').map(move |(at, _)| &name[at + 1..]))
            .filter(|candidate| candidate.contains('.'))
    }
}

impl TryFrom<String> for DomainName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> String {
        value.0
    }
}

/// Where a domain, or one of its records, stands after the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Not (yet) found in DNS.
    Pending,
    /// Found as published.
    Verified,
    /// Verified once, missing or different since.
    Failing,
}

impl DomainStatus {
    /// The wire name, as the API's JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failing => "failing",
        }
    }
}

/// Where a DKIM key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Signs mail.
    Active,
    /// Published by a rotation; takes over once its record verifies.
    Pending,
    /// Replaced; its record can be removed after `retire_after`.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Pending => "pending",
            Self::Retired => "retired",
        }
    }
}

/// One DKIM key of a domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DkimKey {
    pub selector: String,
    pub algorithm: Algorithm,
    /// The private key, PKCS#8 DER, base64. Never leaves the store but to sign.
    pub private_pkcs8: String,
    /// The public key as published in `p=`.
    pub public: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    /// For a retired key: when its DNS record may go (signatures made before the
    /// switch still verify until then).
    pub retire_after: Option<DateTime<Utc>>,
}

/// What a domain's record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordPurpose {
    Dkim,
    Spf,
    ReturnPath,
    Dmarc,
}

impl RecordPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dkim => "dkim",
            Self::Spf => "spf",
            Self::ReturnPath => "return_path",
            Self::Dmarc => "dmarc",
        }
    }
}

/// One DNS record to publish, and what the last check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecord {
    /// `TXT` or `CNAME`.
    #[serde(rename = "type")]
    pub record_type: String,
    pub name: String,
    pub value: String,
    pub purpose: RecordPurpose,
    pub status: DomainStatus,
    /// Whether the domain needs it to be `verified` (SPF and DMARC are advice).
    pub required: bool,
}

/// A tenant's sender domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderDomain {
    pub id: DomainId,
    pub tenant: TenantId,
    pub name: DomainName,
    pub status: DomainStatus,
    pub keys: Vec<DkimKey>,
    /// The records as of the last check (or as created).
    pub records: Vec<DnsRecord>,
    pub created_at: DateTime<Utc>,
    pub checked_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
}

impl SenderDomain {
    /// The keys that sign mail now.
    pub fn active_keys(&self) -> impl Iterator<Item = &DkimKey> {
        self.keys.iter().filter(|k| k.state == KeyState::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ascii_lower_case_and_list_their_parents() {
        let name = DomainName::parse("Mail.Bücher.example.").unwrap();
        assert_eq!(name.as_str(), "mail.xn--bcher-kva.example");
        assert_eq!(
            name.and_parents().collect::<Vec<_>>(),
            ["mail.xn--bcher-kva.example", "xn--bcher-kva.example"]
        );
        assert!(DomainName::parse("localhost").is_err());
        assert!(DomainName::parse("a b.com").is_err());
    }

    #[test]
    fn names_shown_on_pages_are_the_json_names() {
        for status in [DomainStatus::Pending, DomainStatus::Verified, DomainStatus::Failing] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for state in [KeyState::Active, KeyState::Pending, KeyState::Retired] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for purpose in [
            RecordPurpose::Dkim,
            RecordPurpose::Spf,
            RecordPurpose::ReturnPath,
            RecordPurpose::Dmarc,
        ] {
            assert_eq!(serde_json::to_value(purpose).unwrap(), purpose.as_str());
        }
    }
}
