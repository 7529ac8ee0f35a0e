//! One-click unsubscribe links (RFC 8058). Each recipient's copy of a message gets its
//! own link: a token naming the tenant, the message and the recipient's index (never
//! the address), with an HMAC under a secret of this installation, so a link cannot
//! be forged or pointed at someone else. `api::unsubscribe` answers the link.

use base64::Engine as _;

use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;

/// Bytes of the HMAC kept in a token: 128 bits cannot be guessed.
const MAC_BYTES: usize = 16;

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tenant: TenantId,
    pub message: MessageId,
    pub index: usize,
}

/// Makes and checks the links of this installation.
pub struct UnsubscribeLinks {
    key: Vec<u8>,
    /// `http.public_url` (or `http://` + listen): where `/u/{token}` is served.
    base: String,
}

impl UnsubscribeLinks {
    pub fn new(key: Vec<u8>, base: String) -> Self {
        Self { key, base }
    }

    fn mac(&self, tenant: &str, message: &str, index: usize) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key);
        let tag = ring::hmac::sign(&key, format!("{tenant}\0{message}\0{index}").as_bytes());
        tag.as_ref()[..MAC_BYTES].to_vec()
    }

    /// The token for recipient `index` of `message`.
    pub fn token(&self, tenant: &TenantId, message: &MessageId, index: usize) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{message}.{index}.{}",
            b64.encode(tenant.as_str()),
            b64.encode(self.mac(tenant.as_str(), message.as_str(), index))
        )
    }

    /// The headers for that recipient's copy, each ending in CRLF.
    pub fn headers(&self, tenant: &TenantId, message: &MessageId, index: usize) -> Vec<u8> {
        format!(
            "List-Unsubscribe: <{}/u/{}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            self.base,
            self.token(tenant, message, index)
        )
        .into_bytes()
    }

    /// What `token` names, when this installation made it.
    pub fn check(&self, token: &str) -> Option<Target> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (tenant, message, index, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let tenant = String::from_utf8(b64.decode(tenant).ok()?).ok()?;
        let index: usize = index.parse().ok()?;
        let expected = self.mac(&tenant, message, index);
        let given = b64.decode(mac).ok()?;
        // Constant time: the comparison says nothing about how much of a guess was right.
        let same =
            given.len() == expected.len() && given.iter().zip(&expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(())?;
        Some(Target {
            tenant: TenantId::parse(&tenant).ok()?,
            message: MessageId::parse(message).ok()?,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_recipient_and_any_change_to_it_is_refused() {
        let links = UnsubscribeLinks::new(vec![7; 32], "https://mail.example.test".into());
        let tenant = TenantId::parse("acme").unwrap();
        let message = MessageId::generate();
        let token = links.token(&tenant, &message, 2);
        assert!(!token.contains('@'));
        assert_eq!(
            links.check(&token),
            Some(Target {
                tenant: tenant.clone(),
                message: message.clone(),
                index: 2
            })
        );
        let other_index = token.replacen(&format!(".{}.2.", message), &format!(".{}.3.", message), 1);
        assert_eq!(links.check(&other_index), None);
        let other_key = UnsubscribeLinks::new(vec![8; 32], String::new());
        assert_eq!(other_key.check(&token), None);
        assert_eq!(links.check("garbage"), None);
        let headers = String::from_utf8(links.headers(&tenant, &message, 0)).unwrap();
        assert!(
            headers.starts_with("List-Unsubscribe: <https://mail.example.test/u/"),
            "{headers}"
        );
        assert!(headers.ends_with("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    }
}
