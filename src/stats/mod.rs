//! Delivery and bounce reports (`GET /v1/stats`): per-recipient counters kept per
//! 15-minute slot, moved in the same store write as the events they count
//! ([`record`]), and summed into the caller's buckets and time zone on demand
//! ([`buckets`], [`report`]). A report reads counter rows only, never messages, so
//! its cost depends on the range and the number of groups, not on how much mail is
//! stored.

pub mod buckets;
pub mod folding;
pub mod latency;
pub mod query;
pub mod record;
pub mod report;
pub mod tally;

pub use record::{Dimension, StatsDelta};
pub use report::{StatsReport, StatsRow};
pub use tally::{Counts, Tally};

/// The counters a report reads: all of a tenant's or one filter value's, in total
/// (`group: None`) or per value of one dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub filter: Option<(Dimension, String)>,
    pub group: Option<Dimension>,
}
