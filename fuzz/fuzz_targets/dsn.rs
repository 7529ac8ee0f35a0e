//! Delivery status notifications and feedback reports (RFC 3464 / 5965) arrive from the
//! outside, through an MTA or straight to `POST /v1/bounces/dsn`: parsing any bytes
//! never panics, and every recipient it reports carries an address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::bounces::report::{looks_like_message, parse};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_message(data);
    if let Ok(report) = parse(data) {
        for recipient in &report.recipients {
            assert!(!recipient.recipient.is_empty());
        }
    }
});
