//! `GET /v1/stats` at its worst: every 15-minute slot of the last 30 days holds
//! counters (10 messages per slot, each to one of 50 recipient domains, with one of 5
//! tags, sent through one of 2 relays), and a report reads them all. Prints the time of
//! the store reads plus the report for the shapes a console asks for; asserts nothing.
//! Run with `cargo bench --bench stats`.

use std::time::Instant;

use chrono::{Duration, Utc};
use mailgate::domain::auth::TenantId;
use mailgate::domain::ids::{EventId, MessageId};
use mailgate::domain::message::Message;
use mailgate::stats::query::{RawQuery, StatsQuery};
use mailgate::stats::Dimension;
use mailgate::store::{MessageWrite, SledStore, Store};
use serde_json::json;

const DAYS: i64 = 30;
const PER_SLOT: i64 = 10;

fn message(n: i64, at: chrono::DateTime<Utc>) -> Message {
    let recipient = format!("r{n}@d{}.test", n % 50);
    let sent_at = at + Duration::milliseconds(200 + n % 900);
    serde_json::from_value(json!({
        "id": MessageId::generate().as_str(), "tenant": "acme", "from": "Acme <hello@acme.test>",
        "to": [recipient], "cc": [], "subject": "s", "tags": [format!("campaign-{}", n % 5)], "metadata": {},
        "created_at": at, "send_at": null, "status": "sent", "attempts": 1, "next_attempt_at": null,
        "recipients": [{"email": recipient, "status": "sent", "smtp": null, "updated_at": sent_at, "upstream": "relay-a"}],
        "events": [{"id": EventId::generate().as_str(), "seq": 1, "event_type": "message.sent", "recipient": recipient,
                    "created_at": sent_at, "smtp": null, "upstream": format!("relay-{}", n % 2)}],
    }))
    .expect("a message")
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("store");
    let now = Utc::now();
    let slots = DAYS * 96;
    let started = Instant::now();
    let messages: Vec<Message> = (0..slots * PER_SLOT)
        .map(|n| message(n, now - Duration::minutes(15 * (n / PER_SLOT))))
        .collect();
    for batch in messages.chunks(500) {
        let writes: Vec<MessageWrite<'_>> = batch
            .iter()
            .map(|m| MessageWrite::Accept {
                message: m,
                mime: b"m",
                key: None,
            })
            .collect();
        store.write_messages(&writes).expect("write");
    }
    store.sync().expect("sync");
    // As the background folder leaves it: the journal folded into the rows.
    let folded = store.fold_stats(usize::MAX).expect("fold");
    println!("{folded} journal entries folded");
    println!(
        "{} messages over {DAYS} days ({slots} slots, every one with counters) written in {:.1} s",
        messages.len(),
        started.elapsed().as_secs_f64()
    );

    let tenant = TenantId::parse("acme").expect("tenant");
    let from = (now - Duration::days(DAYS)).to_rfc3339();
    let shapes: [(&str, RawQuery); 5] = [
        (
            "30 days by day",
            RawQuery {
                from: Some(from.clone()),
                ..RawQuery::default()
            },
        ),
        (
            "30 days by day, Europe/Paris",
            RawQuery {
                from: Some(from.clone()),
                timezone: Some("Europe/Paris".into()),
                ..RawQuery::default()
            },
        ),
        (
            "30 days by hour",
            RawQuery {
                from: Some(from.clone()),
                interval: Some(mailgate::stats::buckets::Interval::Hour),
                ..RawQuery::default()
            },
        ),
        (
            "30 days by day, group_by=upstream",
            RawQuery {
                from: Some(from.clone()),
                group_by: Some(Dimension::Upstream),
                ..RawQuery::default()
            },
        ),
        (
            "30 days, tag, group_by=recipient_domain",
            RawQuery {
                from: Some(from.clone()),
                tag: Some("campaign-1".into()),
                group_by: Some(Dimension::RecipientDomain),
                ..RawQuery::default()
            },
        ),
    ];
    for (name, raw) in shapes {
        let query = StatsQuery::parse(raw, Utc::now()).expect("a valid query");
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let start = Instant::now();
            let report = query.run(&store, &tenant).expect("report");
            bytes = serde_json::to_vec(&report).expect("json").len();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<42} {:>5} KiB of JSON   p50 {:>6.1} ms   max {:>6.1} ms",
            bytes / 1024,
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
