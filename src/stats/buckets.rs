//! Bucket boundaries in the caller's time zone: local hours, local days (23 or 25
//! hours long on the days clocks change), ISO weeks from Monday.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The length of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Hour,
    #[default]
    Day,
    Week,
}

/// One bucket: from `start` (included) to `end` (excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The first instant of local `date` (a day that begins in a gap, as where clocks
/// change at midnight, begins when the gap ends).
fn start_of_day(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut local = date.and_time(chrono::NaiveTime::MIN);
    for _ in 0..(24 * 4) {
        match zone.from_local_datetime(&local) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => return at.with_timezone(&Utc),
            LocalResult::None => local += Duration::minutes(15),
        }
    }
    date.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The start of the bucket that holds `at`.
fn floor(at: DateTime<Utc>, interval: Interval, zone: Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&zone);
    match interval {
        Interval::Hour => {
            let into_hour = i64::from(local.minute()) * 60 + i64::from(local.second());
            at - Duration::seconds(into_hour) - Duration::nanoseconds(i64::from(local.nanosecond()))
        }
        Interval::Day => start_of_day(zone, local.date_naive()),
        Interval::Week => {
            let monday = local.date_naive() - Duration::days(i64::from(local.weekday().num_days_from_monday()));
            start_of_day(zone, monday)
        }
    }
}

/// The start of the bucket after the one that starts at `start`.
fn next(start: DateTime<Utc>, interval: Interval, zone: Tz) -> DateTime<Utc> {
    match interval {
        Interval::Hour => start + Duration::hours(1),
        Interval::Day | Interval::Week => {
            let days = if interval == Interval::Day { 1 } else { 7 };
            let date = start.with_timezone(&zone).date_naive() + Duration::days(days);
            start_of_day(zone, date)
        }
    }
}

/// The buckets from the one holding `from` to the one holding the instant before
/// `to`; `None` when there would be more than `max`.
pub fn buckets(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: Interval,
    zone: Tz,
    max: usize,
) -> Option<Vec<Bucket>> {
    let mut out = Vec::new();
    let mut start = floor(from, interval, zone);
    while start < to {
        if out.len() == max {
            return None;
        }
        let end = next(start, interval, zone).max(start + Duration::minutes(15));
        out.push(Bucket { start, end });
        start = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn days_follow_the_zone_through_a_clock_change() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let days = buckets(
            utc("2026-10-24T12:00:00Z"),
            utc("2026-10-26T12:00:00Z"),
            Interval::Day,
            paris,
            10,
        )
        .unwrap();
        let starts: Vec<String> = days.iter().map(|b| b.start.to_rfc3339()).collect();
        assert_eq!(
            starts,
            [
                "2026-10-23T22:00:00+00:00",
                "2026-10-24T22:00:00+00:00",
                "2026-10-25T23:00:00+00:00"
            ]
        );
        assert_eq!(
            days[1].end - days[1].start,
            Duration::hours(25),
            "the day clocks go back"
        );
    }

    #[test]
    fn hours_and_weeks_start_on_local_boundaries() {
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let hours = buckets(
            utc("2026-12-02T10:10:00Z"),
            utc("2026-12-02T11:00:00Z"),
            Interval::Hour,
            kolkata,
            10,
        )
        .unwrap();
        assert_eq!(hours[0].start, utc("2026-12-02T09:30:00Z"));
        assert_eq!(hours.len(), 2);
        let weeks = buckets(
            utc("2026-12-02T10:00:00Z"),
            utc("2026-12-03T10:00:00Z"),
            Interval::Week,
            Tz::UTC,
            10,
        )
        .unwrap();
        assert_eq!(
            weeks,
            [Bucket {
                start: utc("2026-11-30T00:00:00Z"),
                end: utc("2026-12-07T00:00:00Z")
            }]
        );
        assert_eq!(
            buckets(
                utc("2026-01-01T00:00:00Z"),
                utc("2026-03-01T00:00:00Z"),
                Interval::Hour,
                Tz::UTC,
                1_000
            ),
            None
        );
    }
}
