//! The DNS records a sender domain publishes, and what a check concludes from what
//! DNS answered: which records are there, which key signs, whether the domain is
//! verified.

use chrono::{DateTime, Duration, Utc};

use crate::dkim::keys::record_value;
use crate::domain::sender_domain::{DnsRecord, DomainStatus, KeyState, RecordPurpose, SenderDomain};

/// How long a replaced key's record should stay published: mail signed with it may
/// still be in queues and mailboxes that verify late.
pub const RETIRE_GRACE: Duration = Duration::days(7);

/// What the records depend on besides the domain.
#[derive(Debug, Clone)]
pub struct RecordContext {
    /// `delivery.return_path_domain`: the return-path host of each domain is a CNAME to it.
    pub return_path_domain: String,
    /// The relays' host names or addresses, for the SPF advice.
    pub relay_hosts: Vec<String>,
}

/// The return-path (VERP) host under `domain`: bounces to it align with `From` for
/// DMARC (relaxed SPF alignment).
pub fn return_path_host(domain: &str) -> String {
    format!("bounces.{domain}")
}

fn spf_mechanism(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("ip4:{ip}"),
        Ok(std::net::IpAddr::V6(ip)) => format!("ip6:{ip}"),
        Err(_) => format!("a:{host}"),
    }
}

/// Every record to publish for `domain`, in a stable order, as pending.
pub fn expected(domain: &SenderDomain, context: &RecordContext) -> Vec<DnsRecord> {
    let name = domain.name.as_str();
    let record = |record_type: &str, name: String, value: String, purpose, required| DnsRecord {
        record_type: record_type.to_owned(),
        name,
        value,
        purpose,
        status: DomainStatus::Pending,
        required,
    };
    let mut records: Vec<DnsRecord> = domain
        .keys
        .iter()
        .map(|key| {
            record(
                "TXT",
                format!("{}._domainkey.{name}", key.selector),
                record_value(key.algorithm, &key.public),
                RecordPurpose::Dkim,
                key.state == KeyState::Active,
            )
        })
        .collect();
    records.push(record(
        "CNAME",
        return_path_host(name),
        context.return_path_domain.clone(),
        RecordPurpose::ReturnPath,
        true,
    ));
    let mechanisms: Vec<String> = context.relay_hosts.iter().map(|h| spf_mechanism(h)).collect();
    records.push(record(
        "TXT",
        name.to_owned(),
        format!("v=spf1 {} ~all", mechanisms.join(" ")).replace("  ", " "),
        RecordPurpose::Spf,
        false,
    ));
    records.push(record(
        "TXT",
        format!("_dmarc.{name}"),
        "v=DMARC1; p=none; adkim=r; aspf=r".to_owned(),
        RecordPurpose::Dmarc,
        false,
    ));
    records
}

/// The tags of a `v=DKIM1`-style TXT value (`k=rsa; p=…`), whitespace removed.
fn tags(value: &str) -> Vec<(String, String)> {
    value
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

/// Whether what DNS answered (`found`: the TXT values or the CNAME target) publishes
/// `record`.
pub fn matches(record: &DnsRecord, found: &[String]) -> bool {
    match record.purpose {
        RecordPurpose::Dkim => {
            let wanted = tags(&record.value);
            let key = |t: &[(String, String)], k: &str| t.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            found.iter().any(|value| {
                let got = tags(value);
                key(&got, "p") == key(&wanted, "p")
                    && key(&got, "k").unwrap_or_else(|| "rsa".into()) == key(&wanted, "k").unwrap_or_default()
            })
        }
        RecordPurpose::ReturnPath => found
            .iter()
            .any(|target| target.trim_end_matches('.').eq_ignore_ascii_case(&record.value)),
        RecordPurpose::Spf => {
            let mechanisms: Vec<&str> = record.value.split_whitespace().filter(|m| m.contains(':')).collect();
            found.iter().any(|value| {
                let words: Vec<String> = value.split_whitespace().map(str::to_ascii_lowercase).collect();
                value.to_ascii_lowercase().starts_with("v=spf1")
                    && mechanisms.iter().all(|m| {
                        words
                            .iter()
                            .any(|w| w.trim_start_matches(['+', '~', '?']) == m.to_ascii_lowercase())
                    })
            })
        }
        RecordPurpose::Dmarc => found
            .iter()
            .any(|value| value.trim_start().to_ascii_lowercase().starts_with("v=dmarc1")),
    }
}

/// A record's status after a check: found is verified; missing is failing once it had
/// been verified, pending before.
pub fn next_status(previous: DomainStatus, found: bool) -> DomainStatus {
    match (found, previous) {
        (true, _) => DomainStatus::Verified,
        (false, DomainStatus::Pending) => DomainStatus::Pending,
        (false, _) => DomainStatus::Failing,
    }
}

/// Applies a check's records to `domain`: a pending key whose record verified takes
/// over from the active key of its algorithm (which retires), keys retired past their
/// grace are dropped, and the domain's status follows its required records.
pub fn conclude(domain: &mut SenderDomain, checked: Vec<DnsRecord>, context: &RecordContext, now: DateTime<Utc>) {
    let verified_dkim = |selector: &str| {
        checked.iter().any(|r| {
            r.purpose == RecordPurpose::Dkim
                && r.status == DomainStatus::Verified
                && r.name.starts_with(&format!("{selector}._domainkey."))
        })
    };
    let promoted: Vec<(String, crate::dkim::Algorithm)> = domain
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Pending && verified_dkim(&k.selector))
        .map(|k| (k.selector.clone(), k.algorithm))
        .collect();
    for (selector, algorithm) in &promoted {
        for key in &mut domain.keys {
            if &key.selector == selector {
                key.state = KeyState::Active;
            } else if key.algorithm == *algorithm && key.state == KeyState::Active {
                key.state = KeyState::Retired;
                key.retire_after = Some(now + RETIRE_GRACE);
            }
        }
    }
    domain
        .keys
        .retain(|k| k.state != KeyState::Retired || k.retire_after.is_none_or(|at| at > now));
    // Records follow the keys as they are now; each keeps what the check found.
    let records: Vec<DnsRecord> = expected(domain, context)
        .into_iter()
        .map(|mut record| {
            if let Some(seen) = checked
                .iter()
                .find(|c| c.name == record.name && c.value == record.value)
            {
                record.status = seen.status;
            }
            record
        })
        .collect();
    let ready = records
        .iter()
        .filter(|r| r.required)
        .all(|r| r.status == DomainStatus::Verified);
    domain.status = match (ready, domain.status) {
        (true, _) => DomainStatus::Verified,
        (false, DomainStatus::Pending) => DomainStatus::Pending,
        (false, _) => DomainStatus::Failing,
    };
    if ready && domain.verified_at.is_none() {
        domain.verified_at = Some(now);
    }
    domain.records = records;
    domain.checked_at = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim(value: &str) -> DnsRecord {
        DnsRecord {
            record_type: "TXT".into(),
            name: "s._domainkey.acme.test".into(),
            value: value.into(),
            purpose: RecordPurpose::Dkim,
            status: DomainStatus::Pending,
            required: true,
        }
    }

    #[test]
    fn a_dkim_record_matches_on_its_key_whatever_the_spacing_and_tag_order() {
        let record = dkim("v=DKIM1; k=rsa; p=MIIBIjAN");
        assert!(matches(&record, &["k=rsa;v=DKIM1;  p=MIIB IjAN".into()]));
        assert!(matches(&record, &["v=DKIM1; p=MIIBIjAN".into()]), "k defaults to rsa");
        assert!(!matches(&record, &["v=DKIM1; k=rsa; p=OTHER".into()]));
        assert!(!matches(
            &dkim("v=DKIM1; k=ed25519; p=MIIBIjAN"),
            &["v=DKIM1; p=MIIBIjAN".into()]
        ));
    }

    #[test]
    fn spf_advice_is_met_by_a_record_holding_every_mechanism() {
        let record = DnsRecord {
            purpose: RecordPurpose::Spf,
            value: "v=spf1 a:smtp.relay.test ip4:192.0.2.1 ~all".into(),
            ..dkim("")
        };
        assert!(matches(
            &record,
            &["v=spf1 include:_spf.google.com a:smtp.relay.test ip4:192.0.2.1 -all".into()]
        ));
        assert!(!matches(&record, &["v=spf1 a:smtp.relay.test -all".into()]));
    }

    #[test]
    fn a_record_that_disappears_after_verifying_is_failing() {
        assert_eq!(next_status(DomainStatus::Pending, false), DomainStatus::Pending);
        assert_eq!(next_status(DomainStatus::Pending, true), DomainStatus::Verified);
        assert_eq!(next_status(DomainStatus::Verified, false), DomainStatus::Failing);
        assert_eq!(next_status(DomainStatus::Failing, true), DomainStatus::Verified);
    }
}
