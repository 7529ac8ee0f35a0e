//! What one counter row holds: per-recipient counts and a latency histogram, and
//! their compact binary form (a row is read for every slot a report covers, so it is
//! varints, not JSON).

use serde::Serialize;
use utoipa::ToSchema;

use super::latency::Latency;

/// One thing `/v1/stats` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Accepted,
    Sent,
    Delivered,
    Deferred,
    BouncedHard,
    BouncedSoft,
    Complained,
    Failed,
    Suppressed,
    Unsubscribed,
    Cancelled,
}

impl Count {
    /// In the order of [`Counts`]' fields (and of CSV columns).
    pub const ALL: [Count; 11] = [
        Count::Accepted,
        Count::Sent,
        Count::Delivered,
        Count::Deferred,
        Count::BouncedHard,
        Count::BouncedSoft,
        Count::Complained,
        Count::Failed,
        Count::Suppressed,
        Count::Unsubscribed,
        Count::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Count::Accepted => "accepted",
            Count::Sent => "sent",
            Count::Delivered => "delivered",
            Count::Deferred => "deferred",
            Count::BouncedHard => "bounced_hard",
            Count::BouncedSoft => "bounced_soft",
            Count::Complained => "complained",
            Count::Failed => "failed",
            Count::Suppressed => "suppressed",
            Count::Unsubscribed => "unsubscribed",
            Count::Cancelled => "cancelled",
        }
    }
}

/// Per-recipient counts, each at the time the event happened (a bounce reported a
/// day after the send counts on the day of the report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counts {
    /// Recipients of accepted messages, suppressed ones included, at acceptance.
    pub accepted: u64,
    /// Recipients an upstream relay accepted (2xx).
    pub sent: u64,
    /// Delivery reports (a DSN or provider webhook saying the recipient's server took
    /// the mail).
    pub delivered: u64,
    /// Attempts that ended in a temporary failure; a recipient deferred three times
    /// counts three.
    pub deferred: u64,
    /// Permanent bounces, at the relay or reported later (DSN, provider webhook).
    pub bounced_hard: u64,
    /// Temporary or policy bounces (mailbox full, blocked as spam, …).
    pub bounced_soft: u64,
    /// Spam complaints (ARF feedback reports, provider webhooks).
    pub complained: u64,
    /// Recipients given up on after their retries ran out.
    pub failed: u64,
    /// Recipients not attempted because they were on the suppression list.
    pub suppressed: u64,
    /// One-click unsubscribes.
    pub unsubscribed: u64,
    /// Recipients of messages cancelled before sending.
    pub cancelled: u64,
}

impl Counts {
    fn field(&mut self, count: Count) -> &mut u64 {
        match count {
            Count::Accepted => &mut self.accepted,
            Count::Sent => &mut self.sent,
            Count::Delivered => &mut self.delivered,
            Count::Deferred => &mut self.deferred,
            Count::BouncedHard => &mut self.bounced_hard,
            Count::BouncedSoft => &mut self.bounced_soft,
            Count::Complained => &mut self.complained,
            Count::Failed => &mut self.failed,
            Count::Suppressed => &mut self.suppressed,
            Count::Unsubscribed => &mut self.unsubscribed,
            Count::Cancelled => &mut self.cancelled,
        }
    }

    pub fn get(&self, count: Count) -> u64 {
        let mut copy = *self;
        *copy.field(count)
    }

    pub fn bump(&mut self, count: Count) {
        let field = self.field(count);
        *field = field.saturating_add(1);
    }

    /// Adds `other`; a count saturates rather than wrapping (or panicking).
    pub fn add(&mut self, other: &Counts) {
        for count in Count::ALL {
            let field = self.field(count);
            *field = field.saturating_add(other.get(count));
        }
    }

    /// Takes `other` away, never below zero.
    pub fn subtract(&mut self, other: &Counts) {
        for count in Count::ALL {
            let field = self.field(count);
            *field = field.saturating_sub(other.get(count));
        }
    }

    /// Every count summed: how groups are ranked.
    pub fn volume(&self) -> u64 {
        Count::ALL.iter().fold(0u64, |sum, c| sum.saturating_add(self.get(*c)))
    }
}

/// One counter row: what happened in one slot of one series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub counts: Counts,
    /// Acceptance (or `send_at`) → upstream 2xx, of the `sent` recipients.
    pub latency: Latency,
}

/// The first byte of an encoded row, so the layout can change later.
const FORMAT: u8 = 1;

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.counts.add(&other.counts);
        self.latency.add(&other.latency);
    }

    /// Takes `other` away (what is left of a total once its named groups are out).
    pub fn subtract(&mut self, other: &Tally) {
        self.counts.subtract(&other.counts);
        self.latency.subtract(&other.latency);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * self.latency.buckets().len());
        out.push(FORMAT);
        for count in Count::ALL {
            put_varint(&mut out, self.counts.get(count));
        }
        let buckets = self.latency.buckets();
        put_varint(&mut out, buckets.len() as u64);
        for (index, count) in buckets {
            put_varint(&mut out, u64::from(*index));
            put_varint(&mut out, *count);
        }
        out
    }

    /// `None` for bytes that are not a row of this format.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, mut rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let mut counts = Counts::default();
        for count in Count::ALL {
            *counts.field(count) = take_varint(&mut rest)?;
        }
        let buckets = take_varint(&mut rest)?;
        let mut hit = Vec::new();
        for _ in 0..buckets {
            let index = u16::try_from(take_varint(&mut rest)?).ok()?;
            hit.push((index, take_varint(&mut rest)?));
        }
        rest.is_empty().then(|| Self {
            counts,
            latency: Latency::from_buckets(hit),
        })
    }
}

/// LEB128.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_survives_its_encoding_and_rows_add_up() {
        let mut row = Tally::default();
        row.counts.bump(Count::Sent);
        row.counts.bump(Count::BouncedSoft);
        row.counts.accepted = u64::MAX;
        row.latency.observe(1_234);
        row.latency.observe(7);
        let encoded = row.encode();
        assert_eq!(Tally::decode(&encoded), Some(row.clone()));
        assert_eq!(Tally::decode(&encoded[..encoded.len() - 1]), None);
        assert_eq!(Tally::decode(b""), None);

        let mut sum = row.clone();
        sum.add(&row);
        assert_eq!(sum.counts.sent, 2);
        assert_eq!(sum.counts.get(Count::BouncedSoft), 2);
        assert_eq!(sum.counts.accepted, u64::MAX, "saturates instead of wrapping");
        assert_eq!(sum.latency.quantile(1.0), Some(1_247));
    }
}
