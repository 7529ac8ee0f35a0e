//! What a store write adds to the counters: the rows of every series an accepted
//! message or a new event counts in. The store applies the delta in the transaction
//! that writes the message, so counts and events can never disagree, not even after
//! a SIGKILL.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tally::{Count, Tally};
use crate::domain::bounce::BounceKind;
use crate::domain::message::{Event, Message};
use crate::domain::status::EventType;

/// Counters are kept per 15 minutes: every time zone in use today is a whole number
/// of quarter hours off UTC, so any zone's hours and days are made of whole slots.
pub const SLOT_SECONDS: i64 = 15 * 60;

/// The slot `at` falls in.
pub fn slot_of(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().div_euclid(SLOT_SECONDS)).unwrap_or(if at.timestamp() < 0 { 0 } else { u32::MAX })
}

/// When `slot` begins.
pub fn slot_start(slot: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::from(slot) * SLOT_SECONDS, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What a report can be grouped by (`group_by`); the first three also filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Tag,
    Template,
    Upstream,
    SenderDomain,
    RecipientDomain,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Tag,
        Dimension::Template,
        Dimension::Upstream,
        Dimension::SenderDomain,
        Dimension::RecipientDomain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Tag => "tag",
            Dimension::Template => "template",
            Dimension::Upstream => "upstream",
            Dimension::SenderDomain => "sender_domain",
            Dimension::RecipientDomain => "recipient_domain",
        }
    }

    /// Whether counters are also kept per value of this dimension as a filter.
    pub fn filters(self) -> bool {
        matches!(self, Dimension::Tag | Dimension::Template | Dimension::Upstream)
    }
}

/// The key of a counter row: `tenant \0 filter-code filter-value \0 group-code
/// slot(4 bytes BE) group-value`, so that a series (tenant, filter, grouping) is one
/// contiguous range of keys ordered by slot, and a report reads exactly the rows of its
/// slots. Built into one reused buffer, because a write builds a dozen of them per
/// event on the writer thread.
const NONE: u8 = b'-';

fn code(dimension: Option<Dimension>) -> u8 {
    match dimension {
        None => NONE,
        Some(Dimension::Tag) => b't',
        Some(Dimension::Template) => b'm',
        Some(Dimension::Upstream) => b'u',
        Some(Dimension::SenderDomain) => b's',
        Some(Dimension::RecipientDomain) => b'r',
    }
}

/// Appends the part of a key before the slot: what every row of a series shares.
fn push_series(key: &mut Vec<u8>, tenant: &str, filter: Option<(Dimension, &str)>, group: Option<Dimension>) {
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.push(code(filter.map(|(d, _)| d)));
    if let Some((_, value)) = filter {
        key.extend_from_slice(value.as_bytes());
    }
    key.push(0);
    key.push(code(group));
}

/// The key prefix of a series: its rows follow it, slot first.
pub fn series_prefix(tenant: &str, filter: Option<(Dimension, &str)>, group: Option<Dimension>) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 40);
    push_series(&mut key, tenant, filter, group);
    key
}

fn push_row(
    key: &mut Vec<u8>,
    tenant: &str,
    filter: Option<(Dimension, &str)>,
    group: Option<(Dimension, &str)>,
    slot: u32,
) {
    push_series(key, tenant, filter, group.map(|(d, _)| d));
    key.extend_from_slice(&slot.to_be_bytes());
    if let Some((_, value)) = group {
        key.extend_from_slice(value.as_bytes());
    }
}

/// Where the slot is in a row key, and the slot; `None` for a key that is not a row.
pub fn slot_at(key: &[u8]) -> Option<(usize, u32)> {
    let tenant_end = key.iter().position(|b| *b == 0)?;
    let filter_end = tenant_end + 1 + key[tenant_end + 1..].iter().position(|b| *b == 0)?;
    let at = filter_end + 2;
    let slot = u32::from_be_bytes(key.get(at..at + 4)?.try_into().ok()?);
    Some((at, slot))
}

/// The rows one store write adds to, by key.
#[derive(Debug, Default)]
pub struct StatsDelta {
    rows: HashMap<Vec<u8>, Tally>,
    /// The key being built.
    scratch: Vec<u8>,
}

/// The values of every dimension for one recipient's event (`""`: none).
struct Values<'a> {
    /// The tags, or `[""]`.
    tags: Vec<&'a str>,
    /// Template, upstream, sender domain, recipient domain.
    single: [&'a str; 4],
}

impl<'a> Values<'a> {
    fn of(message: &'a Message, domains: &'a [String; 2], upstream: Option<&'a str>) -> Self {
        let mut tags: Vec<&str> = message.tags.iter().map(String::as_str).collect();
        if tags.is_empty() {
            tags.push("");
        }
        let template = message.template.as_ref().map_or("", |t| t.name.as_str());
        Values {
            tags,
            single: [template, upstream.unwrap_or(""), &domains[0], &domains[1]],
        }
    }

    /// The values of `dimension`: one per tag, `[""]` when it has none.
    fn of_dimension(&self, dimension: Dimension) -> &[&'a str] {
        let at = match dimension {
            Dimension::Tag => return &self.tags,
            Dimension::Template => 0,
            Dimension::Upstream => 1,
            Dimension::SenderDomain => 2,
            Dimension::RecipientDomain => 3,
        };
        std::slice::from_ref(&self.single[at])
    }
}

/// The lowercase domain of an address, bare (`a@b.test`) or with a display name
/// (`Ana <a@b.test>`).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, domain)| domain.trim_end_matches(['>', ' ']))
        .to_ascii_lowercase()
}

/// What an event counts as.
fn count_of(event: &Event) -> Count {
    match event.event_type {
        EventType::Sent => Count::Sent,
        EventType::Delivered => Count::Delivered,
        EventType::Deferred => Count::Deferred,
        EventType::Bounced => match event.bounce.as_ref().map(|b| b.kind) {
            Some(BounceKind::Soft) => Count::BouncedSoft,
            _ => Count::BouncedHard,
        },
        EventType::Complained => Count::Complained,
        EventType::Failed => Count::Failed,
        EventType::Suppressed => Count::Suppressed,
        EventType::Cancelled => Count::Cancelled,
        EventType::Unsubscribed => Count::Unsubscribed,
    }
}

impl StatsDelta {
    /// Counts every recipient of `message` as accepted, at its acceptance.
    pub fn accepted(&mut self, message: &Message) {
        let mut tally = Tally::default();
        tally.counts.bump(Count::Accepted);
        let sender = domain_of(&message.from);
        for recipient in &message.recipients {
            let domains = [sender.clone(), domain_of(&recipient.email)];
            let values = Values::of(message, &domains, None);
            self.add(message.tenant.as_str(), slot_of(message.created_at), &values, &tally);
        }
    }

    /// Counts `event` of `message` at the time it happened; a `sent` also records its
    /// latency from when the message could first be sent (acceptance, or `send_at`).
    pub fn event(&mut self, message: &Message, event: &Event) {
        let count = count_of(event);
        let mut tally = Tally::default();
        tally.counts.bump(count);
        if count == Count::Sent {
            let latency = (event.created_at - message.first_due()).num_milliseconds().max(0);
            tally.latency.observe(latency.unsigned_abs());
        }
        let domains = [domain_of(&message.from), domain_of(&event.recipient)];
        let values = Values::of(message, &domains, event.upstream.as_deref());
        self.add(message.tenant.as_str(), slot_of(event.created_at), &values, &tally);
    }

    /// Adds `tally` to the rows of every series the values count in: all mail in
    /// total and per value of each dimension, and each filter value per value of every
    /// other dimension. Nothing that a report can work out is written, because every
    /// row is a read and a write in the writer thread's transaction: a filter's total
    /// is its value's row in the grouping by its dimension, and the "none" group of a
    /// single-valued dimension (no template, at no relay) is the total less the named
    /// groups; only "no tag" needs rows of its own (a message has several tags). A
    /// value holding a NUL (which the key layout could not tell apart) is not counted.
    fn add(&mut self, tenant: &str, slot: u32, values: &Values<'_>, tally: &Tally) {
        if tenant.contains('\0') {
            return;
        }
        let mut filters: Vec<Option<(Dimension, &str)>> = vec![None];
        for dimension in Dimension::ALL.into_iter().filter(|d| d.filters()) {
            filters.extend(
                values
                    .of_dimension(dimension)
                    .iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| Some((dimension, *v))),
            );
        }
        for filter in &filters {
            let filtered = filter.map(|(d, _)| d);
            let groups = Dimension::ALL
                .into_iter()
                .filter(|d| Some(*d) != filtered)
                .flat_map(|d| values.of_dimension(d).iter().map(move |v| (d, *v)))
                .filter(|(d, v)| !v.is_empty() || *d == Dimension::Tag)
                .map(Some);
            let total = filter.is_none().then_some(None);
            for group in total.into_iter().chain(groups) {
                let has_nul = |v: Option<(Dimension, &str)>| v.is_some_and(|(_, v)| v.contains('\0'));
                if has_nul(*filter) || has_nul(group) {
                    continue;
                }
                self.scratch.clear();
                push_row(&mut self.scratch, tenant, *filter, group, slot);
                match self.rows.get_mut(self.scratch.as_slice()) {
                    Some(row) => row.add(tally),
                    None => {
                        self.rows.insert(self.scratch.clone(), tally.clone());
                    }
                }
            }
        }
    }

    pub fn merge(&mut self, other: &StatsDelta) {
        for (key, tally) in &other.rows {
            match self.rows.get_mut(key) {
                Some(row) => row.add(tally),
                None => {
                    self.rows.insert(key.clone(), tally.clone());
                }
            }
        }
    }

    /// Each row's key and what to add to it.
    pub fn rows(&self) -> impl Iterator<Item = (&[u8], &Tally)> {
        self.rows.iter().map(|(k, t)| (k.as_slice(), t))
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The delta as one value (a journal entry the store writes with the events):
    /// per row, the key's and the tally's length and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows.len() * 64);
        for (key, tally) in &self.rows {
            let tally = tally.encode();
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(tally.len() as u32).to_be_bytes());
            out.extend_from_slice(&tally);
        }
        out
    }

    /// `None` for bytes [`Self::encode`] did not write.
    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        let take = |bytes: &mut &[u8]| {
            let (len, rest) = bytes.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            let (part, rest) = (rest.get(..len)?, rest.get(len..)?);
            *bytes = rest;
            Some(part.to_vec())
        };
        let mut delta = Self::default();
        while !bytes.is_empty() {
            let key = take(&mut bytes)?;
            let tally = Tally::decode(&take(&mut bytes)?)?;
            delta.rows.entry(key).or_default().add(&tally);
        }
        Some(delta)
    }
}

/// The rows of one series in a range of slots as a store reads them: the counter rows
/// in the key range, plus what journal batches not yet folded add to it. Both backends
/// read a report this way.
pub struct SeriesRows {
    prefix: Vec<u8>,
    /// The first key of the range and the first key past it.
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    rows: std::collections::BTreeMap<Vec<u8>, Tally>,
}

impl SeriesRows {
    pub fn new(tenant: &str, series: &super::Series, slots: std::ops::Range<u32>) -> Self {
        let filter = series.filter.as_ref().map(|(d, v)| (*d, v.as_str()));
        let prefix = series_prefix(tenant, filter, series.group);
        let bound = |slot: u32| {
            let mut key = prefix.clone();
            key.extend_from_slice(&slot.to_be_bytes());
            key
        };
        Self {
            start: bound(slots.start),
            end: bound(slots.end),
            prefix,
            rows: std::collections::BTreeMap::new(),
        }
    }

    /// A counter row read from the range (one that does not decode is left out).
    pub fn row(&mut self, key: &[u8], value: &[u8]) {
        if let Some(tally) = Tally::decode(value) {
            self.rows.insert(key.to_vec(), tally);
        }
    }

    /// A journal entry: what it adds to rows in the range.
    pub fn journal(&mut self, entry: &[u8]) {
        let Some(batch) = StatsDelta::decode(entry) else {
            return;
        };
        for (key, tally) in batch.rows() {
            if key >= self.start.as_slice() && key < self.end.as_slice() {
                self.rows.entry(key.to_vec()).or_default().add(tally);
            }
        }
    }

    /// The rows in key order.
    pub fn finish(self) -> Vec<super::StatsRow> {
        let at = self.prefix.len();
        self.rows
            .into_iter()
            .filter_map(|(key, tally)| {
                let slot = u32::from_be_bytes(key.get(at..at + 4)?.try_into().ok()?);
                let group = String::from_utf8_lossy(&key[at + 4..]).into_owned();
                Some(super::StatsRow { slot, group, tally })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::message::{DeliveryOutcome, SmtpReply};
    use crate::store::test_support::message;

    /// The key of one row.
    fn row_key(
        tenant: &str,
        filter: Option<(Dimension, &str)>,
        group: Option<(Dimension, &str)>,
        slot: u32,
    ) -> Vec<u8> {
        let mut key = Vec::with_capacity(tenant.len() + 48);
        push_row(&mut key, tenant, filter, group, slot);
        key
    }

    /// The row of (filter, group) summed over the slots the test's events fall in.
    fn total(delta: &StatsDelta, filter: Option<(Dimension, &str)>, group: Option<(Dimension, &str)>) -> Tally {
        let mut sum = Tally::default();
        for (key, tally) in delta.rows() {
            let slot = slot_at(key).unwrap().1;
            if key == row_key("acme", filter, group, slot).as_slice() {
                sum.add(tally);
            }
        }
        sum
    }

    #[test]
    fn an_event_counts_in_every_series_its_values_belong_to() {
        let mut msg = message();
        msg.tags = vec!["welcome".into(), "eu".into()];
        msg.from = "Ana <ana@Mail.Example.test>".into();
        msg.begin_attempt();
        let reply = SmtpReply {
            code: Some(250),
            enhanced: None,
            diagnostic: "ok".into(),
        };
        msg.record_outcome(
            0,
            DeliveryOutcome::Sent(reply),
            "relay-a",
            false,
            msg.created_at + chrono::Duration::milliseconds(40),
        );
        let mut delta = StatsDelta::default();
        delta.accepted(&msg);
        delta.event(&msg, &msg.events[0]);

        let all = total(&delta, None, None);
        assert_eq!((all.counts.accepted, all.counts.sent), (1, 1));
        assert_eq!(all.latency.quantile(0.5), Some(40));
        let welcome = total(&delta, None, Some((Dimension::Tag, "welcome")));
        assert_eq!((welcome.counts.accepted, welcome.counts.sent), (1, 1));
        assert_eq!(
            total(&delta, Some((Dimension::Tag, "welcome")), None),
            Tally::default(),
            "a filter's total is its value's group"
        );
        let at_relay = total(&delta, None, Some((Dimension::Upstream, "relay-a")));
        assert_eq!(
            (at_relay.counts.accepted, at_relay.counts.sent),
            (0, 1),
            "acceptance is at no relay"
        );
        assert_eq!(
            total(&delta, None, Some((Dimension::Upstream, ""))),
            Tally::default(),
            "the none group of a single-valued dimension is worked out by the report"
        );
        assert_eq!(total(&delta, None, Some((Dimension::Template, ""))), Tally::default());
        assert_eq!(
            total(&delta, None, Some((Dimension::SenderDomain, "mail.example.test")))
                .counts
                .sent,
            1
        );
        let by_domain = total(
            &delta,
            Some((Dimension::Upstream, "relay-a")),
            Some((Dimension::RecipientDomain, "example.test")),
        );
        assert_eq!(by_domain.counts.sent, 1);
        assert_eq!(total(&delta, None, Some((Dimension::Tag, "eu"))).counts.sent, 1);
        assert_eq!(
            total(&delta, Some((Dimension::Tag, "eu")), Some((Dimension::Tag, "welcome"))),
            Tally::default(),
            "a filter is not crossed with its own dimension"
        );
    }

    #[test]
    fn a_delta_survives_its_encoding() {
        let mut delta = StatsDelta::default();
        delta.accepted(&message());
        let decoded = StatsDelta::decode(&delta.encode()).unwrap();
        let mut rows: Vec<_> = decoded.rows().collect();
        let mut expected: Vec<_> = delta.rows().collect();
        rows.sort_by_key(|(k, _)| k.to_vec());
        expected.sort_by_key(|(k, _)| k.to_vec());
        assert_eq!(rows, expected);
        assert!(StatsDelta::decode(&delta.encode()[1..]).is_none());
    }

    #[test]
    fn slots_are_quarter_hours() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 10, 44, 59).unwrap();
        assert_eq!(
            slot_start(slot_of(at)),
            Utc.with_ymd_and_hms(2026, 12, 2, 10, 30, 0).unwrap()
        );
        assert_eq!(slot_of(DateTime::<Utc>::MIN_UTC), 0);
        let key = row_key(
            "acme",
            Some((Dimension::Tag, "a")),
            Some((Dimension::Upstream, "relay")),
            7,
        );
        assert_eq!(slot_at(&key), Some((key.len() - 4 - "relay".len(), 7)));
        assert!(key.starts_with(&series_prefix(
            "acme",
            Some((Dimension::Tag, "a")),
            Some(Dimension::Upstream)
        )));
        assert!(slot_at(b"not a row").is_none());
    }
}
