//! VERP return paths: the envelope sender of each SMTP transaction encodes the message
//! id and the recipient's index, so a bounce that arrives days later at
//! `bounce+msg_…-3@return_path_domain` names exactly who bounced.

use crate::domain::ids::MessageId;

const PREFIX: &str = "bounce+";

/// The envelope sender for recipient `index` of message `id`.
pub fn return_path(id: &MessageId, index: usize, domain: &str) -> String {
    format!("{PREFIX}{id}-{index}@{domain}")
}

/// The message and recipient index a return path was made for, if it is one of ours.
pub fn parse_return_path(address: &str) -> Option<(MessageId, usize)> {
    let local = address.rsplit_once('@')?.0;
    let (id, index) = local.strip_prefix(PREFIX)?.rsplit_once('-')?;
    Some((MessageId::parse(id).ok()?, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_round_trips() {
        let id = MessageId::generate();
        let address = return_path(&id, 12, "bounces.example.test");
        assert_eq!(parse_return_path(&address), Some((id, 12)));
        assert_eq!(parse_return_path("someone@example.test"), None);
    }
}
