//! The send path, from request bytes to MIME: body parsing, validation into domain
//! values and lettre rendering. Never panics; and whatever MIME comes out has CRLF line
//! ends only, no header line over 998 bytes, and no `Bcc` header (Bcc recipients exist
//! only on envelopes) — a header injection would break one of these.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use mailgate::api::body::parse;
use mailgate::api::messages::{to_new_message, SendMessageRequest};
use mailgate::domain::ids::MessageId;
use mailgate::domain::message::Content;
use mailgate::render::mime::render_mime;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse::<SendMessageRequest>(data) else {
        return;
    };
    let Ok(message) = to_new_message(request, 50) else {
        return;
    };
    let Content::Ready(content) = &message.content else {
        return;
    };
    let Ok(mime) = render_mime(&message, content, &MessageId::generate(), "fuzz.mailgate.test", SystemTime::UNIX_EPOCH)
    else {
        return;
    };
    let end = mime.windows(4).position(|w| w == b"\r\n\r\n").expect("a header section");
    let head = &mime[..end + 2];
    for line in head.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        assert_eq!(line.last(), Some(&b'\r'), "a header line without CRLF: {line:?}");
        assert!(!line[..line.len() - 1].contains(&b'\r'), "a bare CR in {line:?}");
        assert!(line.len() <= 1000, "a header line of {} bytes", line.len());
        assert!(!line.to_ascii_lowercase().starts_with(b"bcc:"), "a Bcc header");
    }
});
