//! DKIM signing cost per message: canonicalization, body hash and one signature of a
//! 2 KB message (as the delivery benchmark sends), for RSA-2048 and Ed25519, and both
//! at once. Run with `cargo bench --bench dkim`; prints figures, asserts nothing.

use std::time::Instant;

use mailgate::dkim::{keys, sign, Algorithm, LoadedKey, SigningKey};

fn key(algorithm: Algorithm, selector: &str) -> SigningKey {
    let generated = keys::generate(algorithm).expect("a key");
    SigningKey {
        selector: selector.to_owned(),
        key: LoadedKey::load(algorithm, &generated.pkcs8).expect("loads"),
    }
}

fn main() {
    let body = "x".repeat(72);
    let lines: Vec<&str> = std::iter::repeat_n(body.as_str(), 21).collect();
    let message = format!(
        "From: Bench <bench@bench-mail.net>\r\nTo: ana@example.test\r\nSubject: Bench\r\n\
         Date: Fri, 04 Dec 2026 21:31:21 +0000\r\nMessage-ID: <m@bench-mail.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        lines.join("\r\n")
    );
    let rsa = key(Algorithm::Rsa, "r");
    let ed = key(Algorithm::Ed25519, "e");
    println!("DKIM signing of a {} byte message, one core:", message.len());
    for (label, keys) in [("rsa-sha256", vec![rsa]), ("ed25519-sha256", vec![ed])] {
        let runs = 2_000;
        let start = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(sign(message.as_bytes(), "bench-mail.net", &keys, 1).expect("signs"));
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
        println!(
            "  {label:<16} {micros:8.1} µs per message ({:.0} messages/s per core)",
            1e6 / micros
        );
    }
}
