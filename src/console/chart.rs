//! Server-rendered SVG line charts of report buckets: no chart library, no script,
//! readable without JavaScript, and nothing in them but numbers and dates.

use maud::{html, Markup};

use crate::stats::report::BucketReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;

/// One line of a chart: its legend name, CSS class (its colour) and value per bucket.
pub struct Series {
    pub name: &'static str,
    pub class: &'static str,
    pub value: fn(&BucketReport) -> u64,
}

/// The delivery series the overview draws.
pub const DELIVERY: [Series; 4] = [
    Series {
        name: "sent",
        class: "sent",
        value: |b| b.counts.sent,
    },
    Series {
        name: "bounced",
        class: "bounced",
        value: |b| b.counts.bounced_hard + b.counts.bounced_soft,
    },
    Series {
        name: "deferred",
        class: "deferred",
        value: |b| b.counts.deferred,
    },
    Series {
        name: "complaints",
        class: "complained",
        value: |b| b.counts.complained,
    },
];

/// A chart of `series` over `buckets`, x labels formatted with `label` (a chrono
/// format such as `%H:%M`).
pub fn lines(buckets: &[BucketReport], series: &[Series], label: &str) -> Markup {
    let top = buckets
        .iter()
        .flat_map(|b| series.iter().map(move |s| (s.value)(b)))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 28.0;
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let step = plot_w / (buckets.len().max(2) - 1) as f64;
    let x = |i: usize| LEFT + step * i as f64;
    let y = |v: u64| 8.0 + plot_h * (1.0 - v as f64 / top as f64);
    let every = buckets.len().div_ceil(8).max(1);
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label="Delivery over time" {
                @for tick in [0, top / 2, top] {
                    line.grid x1=(LEFT) x2=(WIDTH - 28.0) y1=(y(tick)) y2=(y(tick)) {}
                    text.axis x=(LEFT - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (tick) }
                }
                @for (i, b) in buckets.iter().enumerate() {
                    @if i % every == 0 {
                        text.axis x=(x(i)) y=(HEIGHT - 6.0) text-anchor="middle" { (b.start.format(label)) }
                    }
                }
                @for s in series {
                    polyline class={ "line " (s.class) } fill="none" points=(points(buckets, s, x, y)) {}
                }
            }
            figcaption.legend {
                @for s in series {
                    span { span class={ "sw " (s.class) } {} (s.name) " " ((buckets.iter().map(s.value).sum::<u64>())) }
                }
            }
        }
    }
}

fn points(buckets: &[BucketReport], s: &Series, x: impl Fn(usize) -> f64, y: impl Fn(u64) -> f64) -> String {
    buckets
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{:.1},{:.1}", x(i), y((s.value)(b))))
        .collect::<Vec<_>>()
        .join(" ")
}
