//! Reading bounce and complaint reports: RFC 3464 delivery status notifications and
//! RFC 5965 (ARF) feedback reports, parsed with mail-parser. Only the fields the
//! gateway acts on are kept.

use mail_parser::{MessageParser, MimeHeaders as _, PartType};

/// What one report says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Complained,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    pub recipient: String,
    pub action: Action,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: Option<String>,
    /// The SMTP reply code when the diagnostic is an SMTP reply (`smtp; 550 …`).
    pub smtp_code: Option<u16>,
    pub diagnostic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where the report was sent: our VERP return path, when it is one.
    pub envelope_to: Vec<String>,
    /// The Message-ID of the returned original, without `<>`.
    pub original_message_id: Option<String>,
    pub recipients: Vec<RecipientReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the body is not a MIME message")]
    NotMime,
    #[error("the message holds neither a delivery-status nor a feedback-report part")]
    NotAReport,
}

/// `Name: value` fields of RFC 822 style blocks separated by blank lines, with
/// folded lines joined.
fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `rfc822; a@b` → `a@b`.
fn address_of(typed: &str) -> String {
    let value = typed.split_once(';').map_or(typed, |(_, v)| v);
    value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// `something@something`: what a reported recipient must at least look like to be kept.
fn is_address_like(text: &str) -> bool {
    text.split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// Every `local@domain` in a header value (`Name <a@b>, c@d`).
fn addresses_in(value: &str) -> Vec<String> {
    value
        .split([',', ' ', '<', '>', '"'])
        .filter(|t| t.contains('@'))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

fn header_value(headers: &str, name: &str) -> Option<String> {
    field_blocks(headers)
        .first()
        .and_then(|b| field(b, &name.to_ascii_lowercase()).map(str::to_owned))
}

fn dsn_recipients(text: &str) -> Vec<RecipientReport> {
    field_blocks(text)
        .iter()
        .skip(1)
        .filter_map(|block| {
            let recipient = address_of(field(block, "final-recipient").or_else(|| field(block, "original-recipient"))?);
            if !is_address_like(&recipient) {
                return None;
            }
            let action = match field(block, "action")?.to_ascii_lowercase().as_str() {
                "failed" => Action::Failed,
                "delayed" => Action::Delayed,
                "delivered" | "relayed" | "expanded" => Action::Delivered,
                _ => return None,
            };
            let diagnostic =
                field(block, "diagnostic-code").map(|d| d.split_once(';').map_or(d, |(_, v)| v).trim().to_owned());
            let smtp_code = field(block, "diagnostic-code")
                .filter(|d| d.to_ascii_lowercase().starts_with("smtp"))
                .and_then(|d| d.split_once(';'))
                .and_then(|(_, v)| v.trim().get(..3)?.parse().ok());
            Some(RecipientReport {
                recipient,
                action,
                status: field(block, "status").map(str::to_owned),
                smtp_code,
                diagnostic,
            })
        })
        .collect()
}

/// Whether `raw` begins like an Internet message (RFC 5322 §2.2: a header field name of
/// printable ASCII other than `:`, then `:`). Anything else is not a report of any kind
/// and is refused instead of being stored as an unparseable one.
pub fn looks_like_message(raw: &[u8]) -> bool {
    let name_len = raw
        .iter()
        .take_while(|&&b| (0x21..=0x7e).contains(&b) && b != b':')
        .count();
    name_len > 0 && raw.get(name_len) == Some(&b':')
}

/// Parses a DSN or an ARF report.
pub fn parse(raw: &[u8]) -> Result<Report, ReportError> {
    let message = MessageParser::default().parse(raw).ok_or(ReportError::NotMime)?;
    let mut envelope_to = Vec::new();
    for name in ["Delivered-To", "X-Original-To", "To"] {
        if let Some(value) = message.header_raw(name) {
            envelope_to.extend(addresses_in(value));
        }
    }
    let mut recipients = Vec::new();
    let mut original_message_id = None;
    let mut original_to = Vec::new();
    let mut feedback = false;
    for part in &message.parts {
        let Some(kind) = part.content_type() else {
            continue;
        };
        let essence = format!(
            "{}/{}",
            kind.ctype().to_ascii_lowercase(),
            kind.subtype().unwrap_or_default().to_ascii_lowercase()
        );
        let text = || String::from_utf8_lossy(part.contents()).into_owned();
        match essence.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => recipients.extend(dsn_recipients(&text())),
            "message/feedback-report" => {
                feedback = true;
                let fields = field_blocks(&text());
                if let Some(block) = fields.first() {
                    original_to.extend(
                        block
                            .iter()
                            .filter(|(n, _)| n == "original-rcpt-to" || n == "removal-recipient")
                            .map(|(_, v)| address_of(v)),
                    );
                }
            }
            "message/rfc822" | "message/global" => {
                if let PartType::Message(original) = &part.body {
                    original_message_id = original.message_id().map(str::to_owned);
                    if let Some(to) = original.header_raw("To") {
                        original_to.extend(addresses_in(to));
                    }
                }
            }
            "text/rfc822-headers" => {
                let headers = text();
                original_message_id = header_value(&headers, "Message-ID")
                    .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>').to_owned());
                if let Some(to) = header_value(&headers, "To") {
                    original_to.extend(addresses_in(&to));
                }
            }
            _ => {}
        }
    }
    if feedback {
        original_to.dedup();
        recipients = original_to
            .into_iter()
            .filter(|recipient| is_address_like(recipient))
            .map(|recipient| RecipientReport {
                recipient,
                action: Action::Complained,
                status: None,
                smtp_code: None,
                diagnostic: Some("the recipient reported the message as spam".into()),
            })
            .collect();
    } else if recipients.is_empty() {
        return Err(ReportError::NotAReport);
    }
    Ok(Report {
        envelope_to,
        original_message_id,
        recipients,
    })
}

#[cfg(test)]
mod tests {
    /// Found by the `dsn` fuzz target: a feedback report whose `Original-Rcpt-To` was
    /// mangled into nothing produced a complaint for the empty address.
    #[test]
    fn fuzz_regression_reports_never_name_an_empty_recipient() {
        let raw = include_bytes!("../../fuzz/regressions/dsn/empty-original-rcpt-to");
        let report = parse(raw).expect("a feedback report, however mangled");
        assert!(
            report.recipients.iter().all(|r| is_address_like(&r.recipient)),
            "{:?}",
            report.recipients
        );
    }

    #[test]
    fn only_text_starting_with_a_header_field_looks_like_a_message() {
        assert!(looks_like_message(b"From: MAILER-DAEMON\r\n\r\nbody"));
        assert!(looks_like_message(b"Return-Path: <>\n"));
        for not in [&b"{}"[..], b"", b"0", b" From: x", b": x", b"From x"] {
            assert!(!looks_like_message(not), "{not:?}");
        }
    }

    use super::*;

    #[test]
    fn reads_a_real_postfix_pipe_bounce() {
        let report = parse(include_bytes!("../../tests/fixtures/dsn/postfix-dsn-pipe-bounce.eml")).unwrap();
        assert_eq!(report.envelope_to, ["bounces+msg-0001@gateway.test"]);
        assert_eq!(report.original_message_id.as_deref(), Some("msg-0001@gateway.test"));
        let r = &report.recipients[0];
        assert_eq!(
            (r.recipient.as_str(), &r.action, r.status.as_deref()),
            ("nobody@bounce.test", &Action::Failed, Some("5.1.1"))
        );
        assert_eq!(r.smtp_code, None);
        assert!(r.diagnostic.as_deref().unwrap().contains("mailbox does not exist"));
    }

    #[test]
    fn reads_a_real_remote_550_with_its_smtp_reply() {
        let report = parse(include_bytes!("../../tests/fixtures/dsn/postfix-dsn-remote-550.eml")).unwrap();
        let r = &report.recipients[0];
        assert_eq!(r.smtp_code, Some(550));
        assert!(r.diagnostic.as_deref().unwrap().starts_with("550 5.1.1"), "{r:?}");
    }

    #[test]
    fn reads_an_arf_complaint() {
        let report = parse(include_bytes!("../../tests/fixtures/arf/complaint.eml")).unwrap();
        assert_eq!(report.recipients.len(), 1);
        assert_eq!(report.recipients[0].action, Action::Complained);
        assert_eq!(report.recipients[0].recipient, "ana@example.test");
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("msg_00000000000000000000000000000001@mail.test")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"Subject: hi\r\n\r\nnot a report").is_err());
    }
}
