//! An open-loop load generator for `scripts/bench-delivery.sh` (f): POSTs the body in
//! `BENCH_BODY` to `BENCH_URL` at a fixed `BENCH_RATE` per second for `BENCH_SECS`
//! seconds, whatever the answers take, and prints the latency percentiles measured from
//! each request's *scheduled* start, so a stall counts against every request it delays
//! (no coordinated omission, as wrk2 or `oha -q` measure). Not a test; asserts nothing.

use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is required"))
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("BENCH_URL") else {
        println!("fixed_rate: set BENCH_URL, BENCH_TOKEN, BENCH_BODY, BENCH_RATE, BENCH_SECS (scripts/bench-delivery.sh does)");
        return;
    };
    let (token, body) = (env("BENCH_TOKEN"), env("BENCH_BODY"));
    let rate: f64 = env("BENCH_RATE").parse().expect("BENCH_RATE is a number");
    let secs: f64 = env("BENCH_SECS").parse().expect("BENCH_SECS is a number");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(&url)
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = answer.as_ref().is_ok_and(|a| a.status().is_success());
            if let Ok(answer) = answer {
                let _ = answer.bytes().await;
            }
            (scheduled.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for task in tasks {
        if let Ok((latency, ok)) = task.await {
            latencies.push(latency);
            failed += u64::from(!ok);
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "fixed rate {rate:.0}/s for {secs:.0} s: {} requests, {failed} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}
