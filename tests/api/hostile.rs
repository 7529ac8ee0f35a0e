//! Hostile clients at the connection level: slow headers and bodies (slowloris) are cut
//! off, and huge or deeply nested bodies are refused without the process growing beyond
//! a bound.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{free_port, mint, spawn_binary, Binary};

/// Reads what the server answers until it closes, or `within` passes.
async fn answer(stream: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn host_port(address: &str) -> String {
    address.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let app = spawn_binary("[http]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n").await;
    let address = host_port(&app.address);

    // Headers that never finish: the connection is answered 408 or closed.
    let started = Instant::now();
    let mut slow_head = TcpStream::connect(&address).await.unwrap();
    slow_head
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow_head
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    trickle.await;
    let cut = started.elapsed();
    let reply = answer(&mut slow_head, Duration::from_secs(2)).await;
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(cut < Duration::from_secs(6), "slow headers were tolerated for {cut:?}");

    // A body that trickles: 408 problem once `body_timeout` has passed.
    let mut slow_body = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.token
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow_body.write_all(b" ").await.is_err() {
            break;
        }
    }
    let reply = answer(&mut slow_body, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(app.stored_messages().await, 0);
}

/// Peak resident memory of `pid` (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The bound the README documents: a refused huge body costs at most the body limit
/// (25 MiB by default) plus buffer growth and the parser's stack.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

#[tokio::test]
async fn a_50_mb_body_and_10000_levels_of_nesting_are_refused_within_a_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = mailgate::config::Settings::default();
    settings.storage.path = dir.path().join("data");
    let token = mint(
        &mailgate::auth::TokenKeys::load(&settings).unwrap(),
        "acme",
        "messages:send",
    );
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        format!("[storage]\npath = \"{}\"\n", settings.storage.path.display()),
    )
    .unwrap();
    let mut binary = Binary::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
        free_port(),
        &[],
    );
    binary.wait_healthy().await;
    let ok = binary
        .send(&token, &crate::helpers::simple_message("warm@example.test"))
        .await;
    assert_eq!(ok.status(), 202);
    let pid = binary.child.id();
    let before = peak_rss_kib(pid);
    let address = host_port(&binary.address);

    // 50 MB declared up front: refused from the Content-Length, before reading it.
    let mut declared = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
    );
    declared.write_all(head.as_bytes()).await.unwrap();
    let reply = answer(&mut declared, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{}", &reply[..reply.len().min(200)]);

    // 50 MB chunked (no length to refuse up front): read up to the limit, then 413.
    let mut chunked = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    chunked.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    for _ in 0..50 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if chunked.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = chunked.write_all(b"0\r\n\r\n").await;
    let reply = answer(&mut chunked, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{}", &reply[..reply.len().min(200)]);

    // 10,000 levels of nesting, three times over.
    for _ in 0..3 {
        let nested = "[".repeat(10_000) + &"]".repeat(10_000);
        let response = crate::helpers::http()
            .post(format!("{}/v1/messages", binary.address))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(nested)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let after = peak_rss_kib(pid);
    let growth = after.saturating_sub(before);
    eprintln!("peak RSS {before} KiB before, {after} KiB after: grew {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "peak RSS grew by {growth} KiB");
    binary.wait_healthy().await;
}
