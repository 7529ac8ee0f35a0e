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

/// Which counters a row belongs to: a tenant's, all of them or those of one filter
/// value, in total or for one value of a grouping. An empty group value is "none"
/// (no tag, no template, not at a relay).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub tenant: String,
    pub filter: Option<(Dimension, String)>,
    pub group: Option<(Dimension, String)>,
    pub slot: u32,
}

/// The rows one store write adds to.
#[derive(Debug, Default)]
pub struct StatsDelta(HashMap<CounterKey, Tally>);

/// The values of every dimension for one recipient's event.
struct Values<'a> {
    tags: &'a [String],
    template: Option<&'a str>,
    upstream: Option<&'a str>,
    sender_domain: String,
    recipient_domain: String,
}

impl Values<'_> {
    fn of<'a>(message: &'a Message, recipient: &str, upstream: Option<&'a str>) -> Values<'a> {
        Values {
            tags: &message.tags,
            template: message.template.as_ref().map(|t| t.name.as_str()),
            upstream,
            sender_domain: domain_of(&message.from),
            recipient_domain: domain_of(recipient),
        }
    }

    /// The values of `dimension`: one per tag, `""` when it has none.
    fn of_dimension(&self, dimension: Dimension) -> Vec<&str> {
        let values: Vec<&str> = match dimension {
            Dimension::Tag => self.tags.iter().map(String::as_str).collect(),
            Dimension::Template => self.template.into_iter().collect(),
            Dimension::Upstream => self.upstream.into_iter().collect(),
            Dimension::SenderDomain => vec![self.sender_domain.as_str()],
            Dimension::RecipientDomain => vec![self.recipient_domain.as_str()],
        };
        if values.is_empty() {
            vec![""]
        } else {
            values
        }
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
    }
}

impl StatsDelta {
    /// Counts every recipient of `message` as accepted, at its acceptance.
    pub fn accepted(&mut self, message: &Message) {
        let mut tally = Tally::default();
        tally.counts.bump(Count::Accepted);
        for recipient in &message.recipients {
            let values = Values::of(message, &recipient.email, None);
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
        let values = Values::of(message, &event.recipient, event.upstream.as_deref());
        self.add(message.tenant.as_str(), slot_of(event.created_at), &values, &tally);
    }

    /// Adds `tally` to every series the values count in: the total and each filter
    /// value, each in total and per value of every other dimension.
    fn add(&mut self, tenant: &str, slot: u32, values: &Values<'_>, tally: &Tally) {
        let mut filters: Vec<Option<(Dimension, &str)>> = vec![None];
        for dimension in Dimension::ALL.into_iter().filter(|d| d.filters()) {
            filters.extend(
                values
                    .of_dimension(dimension)
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| Some((dimension, v))),
            );
        }
        for filter in &filters {
            let filtered = filter.map(|(d, _)| d);
            let groups = Dimension::ALL
                .into_iter()
                .filter(|d| Some(*d) != filtered)
                .flat_map(|d| values.of_dimension(d).into_iter().map(move |v| Some((d, v))));
            for group in std::iter::once(None).chain(groups) {
                let key = CounterKey {
                    tenant: tenant.to_owned(),
                    filter: filter.map(|(d, v)| (d, v.to_owned())),
                    group: group.map(|(d, v)| (d, v.to_owned())),
                    slot,
                };
                self.0.entry(key).or_default().add(tally);
            }
        }
    }

    pub fn merge(&mut self, other: &StatsDelta) {
        for (key, tally) in &other.0 {
            self.0.entry(key.clone()).or_default().add(tally);
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = (&CounterKey, &Tally)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::message::{DeliveryOutcome, SmtpReply};
    use crate::store::test_support::message;

    fn total(delta: &StatsDelta, filter: Option<(Dimension, &str)>, group: Option<(Dimension, &str)>) -> Tally {
        let mut sum = Tally::default();
        for (key, tally) in delta.rows() {
            let same = |a: &Option<(Dimension, String)>, b: Option<(Dimension, &str)>| {
                a.as_ref().map(|(d, v)| (*d, v.as_str())) == b
            };
            if same(&key.filter, filter) && same(&key.group, group) {
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
        let welcome = total(&delta, Some((Dimension::Tag, "welcome")), None);
        assert_eq!((welcome.counts.accepted, welcome.counts.sent), (1, 1));
        let at_relay = total(&delta, None, Some((Dimension::Upstream, "relay-a")));
        assert_eq!(
            (at_relay.counts.accepted, at_relay.counts.sent),
            (0, 1),
            "acceptance is at no relay"
        );
        assert_eq!(total(&delta, None, Some((Dimension::Upstream, ""))).counts.accepted, 1);
        assert_eq!(total(&delta, None, Some((Dimension::Template, ""))).counts.sent, 1);
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
    fn slots_are_quarter_hours() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 10, 44, 59).unwrap();
        assert_eq!(
            slot_start(slot_of(at)),
            Utc.with_ymd_and_hms(2026, 12, 2, 10, 30, 0).unwrap()
        );
        assert_eq!(slot_of(DateTime::<Utc>::MIN_UTC), 0);
    }
}
