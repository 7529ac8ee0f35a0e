//! A report request checked into what the store reads and how rows are summed.

use std::ops::Range;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use utoipa::IntoParams;

use super::buckets::{buckets, Bucket, Interval};
use super::record::{slot_of, Dimension};
use super::report::{Frame, StatsReport};
use super::Series;
use crate::domain::auth::TenantId;
use crate::domain::ValidationError;
use crate::store::{Store, StoreError};

/// Buckets one report may hold: an hourly report spans 41 days, a daily one 2.7 years.
pub const MAX_BUCKETS: usize = 1_000;

/// The range when `from` is not given: the 7 days before `to`.
const DEFAULT_SPAN: Duration = Duration::days(7);

/// The parameters as sent, before checking (the query string of `GET /v1/stats`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RawQuery {
    /// RFC 3339; rounded down to the start of its bucket. Default: 7 days before `to`.
    pub from: Option<String>,
    /// RFC 3339; the bucket holding it is included whole. Default: now.
    pub to: Option<String>,
    /// Bucket length: `hour`, `day` (default) or `week` (ISO weeks, from Monday).
    pub interval: Option<Interval>,
    /// IANA zone for bucket boundaries, e.g. `Europe/Paris`; default `UTC`. A day is
    /// a local day (23 or 25 hours when clocks change).
    pub timezone: Option<String>,
    /// Report each value of one dimension as well (top 100 by volume, the rest as
    /// one `other` group).
    pub group_by: Option<Dimension>,
    /// Only recipients of messages with this tag. One of `tag`, `template`,
    /// `upstream` at a time.
    pub tag: Option<String>,
    /// Only recipients of messages rendered from this template (by name).
    pub template: Option<String>,
    /// Only what happened at this relay (by its configured `name`).
    pub upstream: Option<String>,
}

/// A parameter refused, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub parameter: &'static str,
    pub error: ValidationError,
}

fn refuse(parameter: &'static str, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        parameter,
        error: ValidationError::new(code, message),
    }
}

/// A checked report request.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    pub buckets: Vec<Bucket>,
    pub interval: Interval,
    pub zone: Tz,
    pub group_by: Option<Dimension>,
    pub filter: Option<(Dimension, String)>,
}

/// An RFC 3339 time. An offset written `+01:00` in a URL without encoding arrives
/// as ` 01:00` (a query string's `+` is a space), so a last space is read as `+`.
fn instant(parameter: &'static str, raw: &str) -> Result<DateTime<Utc>, Refusal> {
    let unplussed = raw.rsplit_once(' ').map(|(time, offset)| format!("{time}+{offset}"));
    DateTime::parse_from_rfc3339(raw)
        .or_else(|err| unplussed.map_or(Err(err), |fixed| DateTime::parse_from_rfc3339(&fixed)))
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            refuse(
                parameter,
                "invalid_query",
                format!("`{parameter}` is an RFC 3339 time such as 2026-12-01T00:00:00Z"),
            )
        })
}

impl StatsQuery {
    pub fn parse(raw: RawQuery, now: DateTime<Utc>) -> Result<Self, Refusal> {
        let to = raw.to.as_deref().map(|t| instant("to", t)).transpose()?.unwrap_or(now);
        let from = match raw.from.as_deref() {
            Some(f) => instant("from", f)?,
            None => to - DEFAULT_SPAN,
        };
        if from >= to {
            return Err(refuse("from", "invalid_range", "`from` must be before `to`"));
        }
        let zone: Tz = match raw.timezone.as_deref() {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                refuse(
                    "timezone",
                    "invalid_timezone",
                    format!(
                        "`{}` is not an IANA time zone name such as `Europe/Paris` or `UTC`",
                        name.chars().take(64).collect::<String>()
                    ),
                )
            })?,
        };
        let filters: Vec<(Dimension, String)> = [
            (Dimension::Tag, raw.tag),
            (Dimension::Template, raw.template),
            (Dimension::Upstream, raw.upstream),
        ]
        .into_iter()
        .filter_map(|(d, v)| v.map(|v| (d, v)))
        .collect();
        if filters.len() > 1 {
            return Err(refuse(
                filters[1].0.as_str(),
                "too_many_filters",
                "a report takes one of `tag`, `template` and `upstream` at a time (group by another dimension instead)",
            ));
        }
        let filter = filters.into_iter().next();
        if let Some((dimension, value)) = &filter {
            if value.is_empty() || value.len() > 255 || value.contains('\0') {
                return Err(refuse(
                    dimension.as_str(),
                    "invalid_query",
                    format!("`{}` is 1 to 255 characters", dimension.as_str()),
                ));
            }
            if raw.group_by == Some(*dimension) {
                return Err(refuse(
                    "group_by",
                    "invalid_group_by",
                    format!(
                        "a report filtered by `{0}` cannot be grouped by `{0}`",
                        dimension.as_str()
                    ),
                ));
            }
        }
        let interval = raw.interval.unwrap_or_default();
        let buckets = buckets(from, to, interval, zone, MAX_BUCKETS).ok_or_else(|| {
            refuse(
                "from",
                "range_too_large",
                format!("a report holds at most {MAX_BUCKETS} buckets: shorten the range or use a longer `interval`"),
            )
        })?;
        Ok(Self {
            buckets,
            interval,
            zone,
            group_by: raw.group_by,
            filter,
        })
    }

    /// The slots the buckets cover.
    pub fn slots(&self) -> Range<u32> {
        match (self.buckets.first(), self.buckets.last()) {
            (Some(first), Some(last)) => {
                slot_of(first.start)..slot_of(last.end - Duration::seconds(1)).saturating_add(1)
            }
            _ => 0..0,
        }
    }

    /// Reads the counter rows the report needs and sums them: the totals (for a
    /// filter, its value's rows in the grouping by its dimension) and, with
    /// `group_by`, the grouped rows.
    pub fn run(&self, store: &dyn Store, tenant: &TenantId) -> Result<StatsReport, StoreError> {
        let slots = self.slots();
        let totals = match &self.filter {
            None => store.stats(
                tenant,
                &Series {
                    filter: None,
                    group: None,
                },
                slots.clone(),
            )?,
            Some((dimension, value)) => {
                let by_value = Series {
                    filter: None,
                    group: Some(*dimension),
                };
                let mut rows = store.stats(tenant, &by_value, slots.clone())?;
                rows.retain(|r| &r.group == value);
                rows
            }
        };
        let grouped = match self.group_by {
            Some(group) => store.stats(
                tenant,
                &Series {
                    filter: self.filter.clone(),
                    group: Some(group),
                },
                slots,
            )?,
            None => Vec::new(),
        };
        Ok(self.frame().report(totals, grouped))
    }

    fn frame(&self) -> Frame<'_> {
        Frame {
            buckets: &self.buckets,
            interval: self.interval,
            zone: self.zone,
            group_by: self.group_by,
            filter: self.filter.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn defaults_are_the_last_seven_days_by_utc_day() {
        let now = at("2026-12-02T10:00:00Z");
        let query = StatsQuery::parse(RawQuery::default(), now).unwrap();
        assert_eq!(query.buckets.len(), 8, "seven days back, the first and today partial");
        assert_eq!(query.buckets[0].start, at("2026-11-25T00:00:00Z"));
        assert_eq!(
            query.slots(),
            slot_of(at("2026-11-25T00:00:00Z"))..slot_of(at("2026-12-03T00:00:00Z"))
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let now = Utc::now();
        let refused = |raw: RawQuery| StatsQuery::parse(raw, now).unwrap_err();
        let r = refused(RawQuery {
            timezone: Some("Mars/Olympus".into()),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("timezone", "invalid_timezone"));
        let r = refused(RawQuery {
            from: Some("yesterday".into()),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("from", "invalid_query"));
        let unencoded = RawQuery {
            from: Some("2026-12-01T00:00:00 01:00".into()),
            to: Some("2026-12-02T00:00:00Z".into()),
            ..RawQuery::default()
        };
        let read = StatsQuery::parse(unencoded, now).unwrap();
        assert_eq!(
            read.buckets[0].start,
            at("2026-11-30T00:00:00Z"),
            "` 01:00` is the `+01:00` of an unencoded URL"
        );
        let r = refused(RawQuery {
            tag: Some("a".into()),
            upstream: Some("b".into()),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("upstream", "too_many_filters"));
        let r = refused(RawQuery {
            tag: Some("a".into()),
            group_by: Some(Dimension::Tag),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("group_by", "invalid_group_by"));
        let r = refused(RawQuery {
            from: Some("2020-01-01T00:00:00Z".into()),
            interval: Some(Interval::Hour),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("from", "range_too_large"));
        let r = refused(RawQuery {
            from: Some("2026-12-02T00:00:00Z".into()),
            to: Some("2026-12-01T00:00:00Z".into()),
            ..RawQuery::default()
        });
        assert_eq!((r.parameter, r.error.code), ("from", "invalid_range"));
    }
}
