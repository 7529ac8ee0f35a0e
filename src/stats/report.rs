//! A report from counter rows: rows summed into the caller's buckets, rates and
//! latency percentiles derived from the sums, groups ranked by volume.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use utoipa::ToSchema;

use super::buckets::{Bucket, Interval};
use super::record::{slot_start, Dimension};
use super::tally::{Count, Counts, Tally};

/// Groups reported one by one; the rest are summed into one `other` group.
pub const TOP_GROUPS: usize = 100;

/// One counter row as a store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRow {
    pub slot: u32,
    /// The group value (`""`: none) in a grouped series, `""` otherwise.
    pub group: String,
    pub tally: Tally,
}

/// Ratios derived from the counts; `null` when their denominator is zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Rates {
    /// (bounced_hard + bounced_soft) / (sent + bounced_hard + bounced_soft + failed):
    /// the share of attempted recipients that bounced. A recipient accepted by the
    /// relay and bounced later by a DSN is in both `sent` and a bounce count.
    pub bounce_rate: Option<f64>,
    /// complained / sent.
    pub complaint_rate: Option<f64>,
}

/// Delivery latency percentiles in milliseconds, from acceptance (or `send_at`) to
/// the relay's 2xx, within 3 %; `null` with nothing sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct LatencyPercentiles {
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
}

/// Counts with what follows from them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Summary {
    pub counts: Counts,
    pub rates: Rates,
    pub latency_ms: LatencyPercentiles,
}

impl Summary {
    fn of(tally: &Tally) -> Self {
        let c = &tally.counts;
        let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        let bounced = c.bounced_hard + c.bounced_soft;
        Self {
            counts: *c,
            rates: Rates {
                bounce_rate: ratio(bounced, c.sent + bounced + c.failed),
                complaint_rate: ratio(c.complained, c.sent),
            },
            latency_ms: LatencyPercentiles {
                p50: tally.latency.quantile(0.50),
                p90: tally.latency.quantile(0.90),
                p99: tally.latency.quantile(0.99),
            },
        }
    }
}

/// One bucket of a report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BucketReport {
    /// The bucket's first instant, in the report's time zone.
    #[schema(value_type = String, format = DateTime)]
    pub start: DateTime<FixedOffset>,
    /// The instant after it (the next bucket's start).
    #[schema(value_type = String, format = DateTime)]
    pub end: DateTime<FixedOffset>,
    pub counts: Counts,
    pub rates: Rates,
    pub latency_ms: LatencyPercentiles,
}

/// One value of the `group_by` dimension.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GroupReport {
    /// The value (a tag, template name, relay name or domain); `null` for recipients
    /// without one (no tag, no template, or not at a relay: acceptance, suppression,
    /// cancellation); `"other"` for the groups beyond the top 100.
    pub key: Option<String>,
    /// `true` for the sum of the groups beyond the top 100 (a tag may be named
    /// `other`, so tell them apart by this).
    pub other: bool,
    pub totals: Summary,
    pub buckets: Vec<BucketReport>,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StatsReport {
    /// What every count counts: `recipient` (a message to three recipients that all
    /// bounce counts three bounces).
    #[schema(example = "recipient")]
    pub unit: &'static str,
    /// The first bucket's start: `from` rounded down to a bucket boundary.
    #[schema(value_type = String, format = DateTime)]
    pub from: DateTime<FixedOffset>,
    /// The last bucket's end: `to` rounded up to a bucket boundary.
    #[schema(value_type = String, format = DateTime)]
    pub to: DateTime<FixedOffset>,
    pub interval: Interval,
    /// The IANA zone bucket boundaries follow, e.g. `Europe/Paris`.
    pub timezone: String,
    pub group_by: Option<Dimension>,
    /// The filter applied, e.g. `{"tag": "welcome"}`; empty without one.
    pub filter: BTreeMap<String, String>,
    pub totals: Summary,
    pub buckets: Vec<BucketReport>,
    /// Per value of `group_by`, largest volume (all counts summed) first; empty
    /// without `group_by`. A message with two tags counts in both tags' groups.
    pub groups: Vec<GroupReport>,
}

/// What a report covers, to sum rows into.
pub struct Frame<'a> {
    pub buckets: &'a [Bucket],
    pub interval: Interval,
    pub zone: Tz,
    pub group_by: Option<Dimension>,
    pub filter: Option<(Dimension, String)>,
}

impl Frame<'_> {
    /// The bucket a slot's row counts in.
    fn bucket_of(&self, slot: u32) -> Option<usize> {
        let at = slot_start(slot);
        let after = self.buckets.partition_point(|b| b.start <= at);
        after.checked_sub(1).filter(|i| at < self.buckets[*i].end)
    }

    /// Sums rows per bucket.
    fn sum(&self, rows: impl IntoIterator<Item = (u32, Tally)>) -> Vec<Tally> {
        let mut sums = vec![Tally::default(); self.buckets.len()];
        for (slot, tally) in rows {
            if let Some(i) = self.bucket_of(slot) {
                sums[i].add(&tally);
            }
        }
        sums
    }

    fn local(&self, at: DateTime<Utc>) -> DateTime<FixedOffset> {
        at.with_timezone(&self.zone).fixed_offset()
    }

    fn bucket_reports(&self, sums: &[Tally]) -> Vec<BucketReport> {
        self.buckets
            .iter()
            .zip(sums)
            .map(|(bucket, tally)| {
                let summary = Summary::of(tally);
                BucketReport {
                    start: self.local(bucket.start),
                    end: self.local(bucket.end),
                    counts: summary.counts,
                    rates: summary.rates,
                    latency_ms: summary.latency_ms,
                }
            })
            .collect()
    }

    /// The report from the rows of the ungrouped series (`totals`) and, with
    /// `group_by`, of the grouped one.
    pub fn report(&self, totals: Vec<StatsRow>, grouped: Vec<StatsRow>) -> StatsReport {
        let sums = self.sum(totals.into_iter().map(|r| (r.slot, r.tally)));
        let groups = if self.group_by.is_some() {
            self.groups(grouped, &sums)
        } else {
            Vec::new()
        };
        let (from, to) = match (self.buckets.first(), self.buckets.last()) {
            (Some(first), Some(last)) => (first.start, last.end),
            _ => (Utc::now(), Utc::now()),
        };
        StatsReport {
            unit: "recipient",
            from: self.local(from),
            to: self.local(to),
            interval: self.interval,
            timezone: self.zone.name().to_owned(),
            group_by: self.group_by,
            filter: self
                .filter
                .iter()
                .map(|(d, v)| (d.as_str().to_owned(), v.clone()))
                .collect(),
            totals: Summary::of(&total(&sums)),
            buckets: self.bucket_reports(&sums),
            groups,
        }
    }

    /// The groups, with the one without a value: stored for tags (a message has
    /// several), worked out for the other dimensions as what the totals hold beyond the
    /// named groups (see [`super::record`]).
    fn groups(&self, rows: Vec<StatsRow>, totals: &[Tally]) -> Vec<GroupReport> {
        let mut by_key: HashMap<String, Vec<(u32, Tally)>> = HashMap::new();
        for row in rows {
            by_key.entry(row.group).or_default().push((row.slot, row.tally));
        }
        let mut ranked: Vec<(String, Vec<Tally>, Tally)> = by_key
            .into_iter()
            .map(|(key, rows)| {
                let sums = self.sum(rows);
                let sum = total(&sums);
                (key, sums, sum)
            })
            .collect();
        if self.group_by.is_some_and(|d| d != Dimension::Tag) {
            ranked.retain(|(key, _, _)| !key.is_empty());
            let mut rest = totals.to_vec();
            for (_, sums, _) in &ranked {
                for (left, named) in rest.iter_mut().zip(sums) {
                    left.subtract(named);
                }
            }
            let sum = total(&rest);
            ranked.push((String::new(), rest, sum));
        }
        ranked.retain(|(_, _, sum)| sum.counts.volume() > 0);
        ranked.sort_by(|a, b| {
            b.2.counts
                .volume()
                .cmp(&a.2.counts.volume())
                .then_with(|| a.0.cmp(&b.0))
        });
        let rest = ranked.split_off(ranked.len().min(TOP_GROUPS));
        let mut groups: Vec<GroupReport> = ranked
            .into_iter()
            .map(|(key, sums, sum)| GroupReport {
                key: (!key.is_empty()).then_some(key),
                other: false,
                totals: Summary::of(&sum),
                buckets: self.bucket_reports(&sums),
            })
            .collect();
        if !rest.is_empty() {
            let mut sums = vec![Tally::default(); self.buckets.len()];
            for (_, group_sums, _) in &rest {
                for (sum, add) in sums.iter_mut().zip(group_sums) {
                    sum.add(add);
                }
            }
            groups.push(GroupReport {
                key: Some("other".into()),
                other: true,
                totals: Summary::of(&total(&sums)),
                buckets: self.bucket_reports(&sums),
            });
        }
        groups
    }
}

fn total(sums: &[Tally]) -> Tally {
    let mut all = Tally::default();
    for sum in sums {
        all.add(sum);
    }
    all
}

impl StatsReport {
    /// The bucket rows as CSV: one row per bucket, or with `group_by` one per group
    /// and bucket (columns `group` and `other` first).
    pub fn to_csv(&self) -> String {
        let mut header: Vec<&str> = Vec::new();
        if self.group_by.is_some() {
            header.extend(["group", "other"]);
        }
        header.extend(["start", "end"]);
        header.extend(Count::ALL.iter().map(|c| c.name()));
        header.extend([
            "bounce_rate",
            "complaint_rate",
            "latency_p50_ms",
            "latency_p90_ms",
            "latency_p99_ms",
        ]);
        let mut out = header.join(",");
        out.push_str("\r\n");
        let mut line = |group: Option<&GroupReport>, bucket: &BucketReport| {
            let mut cells: Vec<String> = Vec::new();
            if let Some(group) = group {
                cells.push(csv_cell(group.key.as_deref().unwrap_or("")));
                cells.push(group.other.to_string());
            }
            cells.push(bucket.start.to_rfc3339());
            cells.push(bucket.end.to_rfc3339());
            cells.extend(Count::ALL.iter().map(|c| bucket.counts.get(*c).to_string()));
            let number = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
            cells.push(number(bucket.rates.bounce_rate));
            cells.push(number(bucket.rates.complaint_rate));
            let ms = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
            let l = &bucket.latency_ms;
            cells.extend([ms(l.p50), ms(l.p90), ms(l.p99)]);
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        };
        if self.group_by.is_some() {
            for group in &self.groups {
                for bucket in &group.buckets {
                    line(Some(group), bucket);
                }
            }
        } else {
            for bucket in &self.buckets {
                line(None, bucket);
            }
        }
        out
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break.
fn csv_cell(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::buckets::buckets;
    use crate::stats::record::slot_of;

    fn row(at: &str, group: &str, count: Count, times: u64) -> StatsRow {
        let mut tally = Tally::default();
        for _ in 0..times {
            tally.counts.bump(count);
        }
        let at = DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc);
        StatsRow {
            slot: slot_of(at),
            group: group.into(),
            tally,
        }
    }

    fn frame(buckets: &[Bucket], group_by: Option<Dimension>) -> Frame<'_> {
        Frame {
            buckets,
            interval: Interval::Day,
            zone: Tz::UTC,
            group_by,
            filter: None,
        }
    }

    #[test]
    fn rows_sum_into_buckets_with_rates_and_the_rest_of_the_groups_as_other() {
        let from = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let days = buckets(from, from + chrono::Duration::days(2), Interval::Day, Tz::UTC, 10).unwrap();
        let totals = vec![
            row("2026-12-01T03:00:00Z", "", Count::Sent, 105),
            row("2026-12-01T23:45:00Z", "", Count::BouncedHard, 1),
            row("2026-12-02T00:00:00Z", "", Count::Complained, 1),
            row("2026-12-02T01:00:00Z", "", Count::Accepted, 500),
            row("2026-12-05T00:00:00Z", "", Count::Sent, 9),
        ];
        let grouped: Vec<StatsRow> = (0..TOP_GROUPS + 2)
            .map(|i| row("2026-12-01T03:00:00Z", &format!("d{i:03}.test"), Count::Sent, 1))
            .collect();
        let report = frame(&days, Some(Dimension::RecipientDomain)).report(totals, grouped);

        assert_eq!(report.buckets.len(), 2);
        assert_eq!(report.buckets[0].counts.sent, 105);
        assert_eq!(report.buckets[0].rates.bounce_rate, Some(1.0 / 106.0));
        assert_eq!(report.buckets[1].rates.bounce_rate, None);
        assert_eq!(report.totals.counts.complained, 1);
        assert_eq!(report.totals.rates.complaint_rate, Some(1.0 / 105.0));
        assert_eq!(report.groups.len(), TOP_GROUPS + 1);
        assert_eq!(
            report.groups[0].key, None,
            "the largest group is the one without a value"
        );
        assert_eq!(report.groups[1].key.as_deref(), Some("d000.test"));
        let other = report.groups.last().unwrap();
        assert!(other.other);
        assert_eq!(other.totals.counts.sent, 3, "d099 to d101 are summed");

        let csv = report.to_csv();
        let mut lines = csv.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("group,other,start,end,accepted,sent,"));
        assert_eq!(
            lines.next().unwrap(),
            ",false,2026-12-01T00:00:00+00:00,2026-12-02T00:00:00+00:00,0,3,0,0,1,0,0,0,0,0,0,0.25,0,,,"
        );
        assert_eq!(csv.lines().count(), 1 + 2 * (TOP_GROUPS + 1));
        assert_eq!(csv_cell("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
