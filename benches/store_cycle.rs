//! The store's share of one message's life on the hot path, as the writer thread
//! drives it: accept in batches, lease in batches, release as sent. Messages of 2 KB
//! MIME to one recipient, with two tags and a metadata entry; one fsync per batch, as
//! the writer does. Prints microseconds per message for each step; asserts nothing.
//! Run with `cargo bench --bench store_cycle [-- MESSAGES [BATCH]]`.

use std::time::{Duration as StdDuration, Instant};

use chrono::Utc;
use mailgate::domain::ids::{EventId, MessageId};
use mailgate::domain::message::Message;
use mailgate::store::{MessageWrite, SledStore, Store};
use serde_json::json;

fn queued(n: usize) -> Message {
    let recipient = format!("user{n}@example.test");
    serde_json::from_value(json!({
        "id": MessageId::generate().as_str(), "tenant": "acme", "from": "Acme <hello@acme.test>",
        "to": [recipient], "cc": [], "subject": "Your order has shipped",
        "tags": ["orders", "shipping"], "metadata": {"order": format!("{n}")},
        "created_at": Utc::now(), "send_at": null, "status": "queued", "attempts": 0,
        "next_attempt_at": Utc::now(),
        "recipients": [{"email": recipient, "status": "queued", "smtp": null, "updated_at": Utc::now()}],
        "events": [],
    }))
    .expect("a message")
}

/// The message as delivery releases it after the relay took it.
fn sent(mut message: Message) -> Message {
    let recipient = message.to[0].clone();
    let event = json!({"id": EventId::generate().as_str(), "seq": 1, "event_type": "message.sent",
        "recipient": recipient, "created_at": Utc::now(),
        "smtp": {"code": 250, "enhanced": "2.0.0", "diagnostic": "Ok: queued as 4ZxYz1abc"}, "upstream": "relay-a"});
    message.events.push(serde_json::from_value(event).expect("an event"));
    let mut value = serde_json::to_value(&message).expect("json");
    value["status"] = json!("sent");
    value["attempts"] = json!(1);
    value["next_attempt_at"] = json!(null);
    value["recipients"][0]["status"] = json!("sent");
    value["recipients"][0]["upstream"] = json!("relay-a");
    serde_json::from_value(value).expect("a sent message")
}

fn per_message(total: StdDuration, count: usize) -> f64 {
    total.as_secs_f64() * 1e6 / count as f64
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let count = args.first().copied().unwrap_or(50_000);
    let batch = args.get(1).copied().unwrap_or(64);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("store");
    let mime = vec![b'x'; 2048];
    let messages: Vec<Message> = (0..count).map(queued).collect();

    let (mut accept, mut lease, mut release, mut sync) = Default::default();
    for chunk in messages.chunks(batch) {
        let started = Instant::now();
        let writes: Vec<MessageWrite<'_>> = chunk
            .iter()
            .map(|message| MessageWrite::Accept {
                message,
                mime: &mime,
                key: None,
            })
            .collect();
        store.write_messages(&writes).expect("accept");
        accept += started.elapsed();
        let started = Instant::now();
        store.sync().expect("sync");
        sync += started.elapsed();

        let started = Instant::now();
        let leases = store.lease_due(Utc::now(), chunk.len(), &mut |_| true).expect("lease");
        lease += started.elapsed();
        assert_eq!(leases.len(), chunk.len(), "every accepted message is due");

        let done: Vec<Message> = leases.into_iter().map(|l| sent(l.message)).collect();
        let started = Instant::now();
        let writes: Vec<MessageWrite<'_>> = done.iter().map(MessageWrite::Release).collect();
        store.write_messages(&writes).expect("release");
        release += started.elapsed();
        let started = Instant::now();
        store.sync().expect("sync");
        sync += started.elapsed();
    }
    println!("{count} messages in batches of {batch}, microseconds per message:");
    println!("  accept  {:7.1}", per_message(accept, count));
    println!("  lease   {:7.1}", per_message(lease, count));
    println!("  release {:7.1}", per_message(release, count));
    println!(
        "  writer  {:7.1}  (the three together, without fsync)",
        per_message(accept + lease + release, count)
    );
    println!(
        "  sync    {:7.1}  (the store's sync after each batch; accept also syncs its MIME)",
        per_message(sync, count)
    );
    if let Some(bytes) = bytes_written() {
        println!(
            "{:.0} bytes written to disk per message (2,048 of them MIME)",
            bytes as f64 / count as f64
        );
    }
}

/// What this process has written to disk so far (`write_bytes` of /proc/self/io).
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
}
