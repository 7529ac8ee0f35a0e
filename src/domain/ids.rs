//! Prefixed, time-sortable identifiers (`msg_…`, `evt_…`): a UUIDv7 in hex sorts by
//! creation time, so store keys and list cursors need no separate timestamp.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("Identifier of ", $what, ": `", $prefix, "` followed by 32 hex digits of a UUIDv7.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A new identifier that sorts after every earlier one.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), uuid::Uuid::now_v7().simple()))
            }

            pub fn parse(input: &str) -> Result<Self, ValidationError> {
                let valid = input.strip_prefix($prefix).is_some_and(|hex| {
                    hex.len() == 32
                        && hex
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
                if valid {
                    Ok(Self(input.to_owned()))
                } else {
                    Err(ValidationError::new(
                        "invalid_id",
                        concat!("not a valid ", $what, " id"),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An identifier derived from content (16 bytes of a digest), so that the
            /// same input always yields the same id: used to make repeats idempotent.
            pub fn derived(digest: &[u8; 16]) -> Self {
                Self(format!(
                    concat!($prefix, "{}"),
                    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ))
            }

            /// A fixed identifier for something that ships with mailgate (built-in
            /// templates): `n` in the low bits, so it can never collide with a
            /// generated (time-based) one.
            pub fn fixed(n: u32) -> Self {
                Self(format!(concat!($prefix, "{:032x}"), n))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(MessageId, "msg_", "a message");
prefixed_id!(EventId, "evt_", "an event");
prefixed_id!(TemplateId, "tpl_", "a template");
prefixed_id!(WebhookId, "whk_", "a webhook");
prefixed_id!(DomainId, "dom_", "a sender domain");

impl MessageId {
    /// A bound that sorts after every message created before `at` and before every
    /// one created from `at` on (UUIDv7 ids lead with their millisecond): a list
    /// cursor for "created before this time".
    pub fn bound_at(at: chrono::DateTime<chrono::Utc>) -> Self {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
        Self(format!("msg_{millis:012x}{:020x}", 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(a < b);
        assert_eq!(MessageId::parse(a.as_str()).unwrap(), a);
        assert!(MessageId::parse("msg_../../etc").is_err());
        assert!(MessageId::parse(EventId::generate().as_str()).is_err());
    }
}
