//! What one SMTP transaction sends: the stored MIME, with the headers that belong to
//! this recipient in front (one-click unsubscribe), DKIM-signed for the sender's
//! verified domain. Signing happens here, at delivery, on the worker that sends — in
//! parallel across connections, never on the writer thread — so a key rotated after a
//! message was accepted is the key it leaves with.

use std::borrow::Cow;

use crate::dkim;
use crate::domains::DomainSigning;

/// The two forms of a transaction's bytes (see `pool::Outgoing`).
pub struct Prepared<'a> {
    /// The stored MIME itself when there is nothing to add (no copy on the hot path).
    pub plain: Cow<'a, [u8]>,
    pub signed: Option<Vec<u8>>,
}

/// `extra_headers` (each line ending in CRLF) put in front of `mime`, and the same
/// signed with `signing`'s keys when there are any. A signing failure is logged and
/// the message goes unsigned: better delivered without DKIM than not at all.
pub fn prepare<'a>(mime: &'a [u8], extra_headers: &[u8], signing: Option<&DomainSigning>, now: u64) -> Prepared<'a> {
    let plain: Cow<'a, [u8]> = if extra_headers.is_empty() {
        Cow::Borrowed(mime)
    } else {
        Cow::Owned([extra_headers, mime].concat())
    };
    let signed =
        signing
            .filter(|s| !s.keys.is_empty())
            .and_then(|s| match dkim::sign(&plain, &s.domain, &s.keys, now) {
                Ok(signatures) => {
                    let mut signed = signatures;
                    signed.extend_from_slice(&plain);
                    Some(signed)
                }
                Err(err) => {
                    tracing::warn!(error = %err, domain = %s.domain, "DKIM signing failed; sending unsigned");
                    None
                }
            });
    Prepared { plain, signed }
}
