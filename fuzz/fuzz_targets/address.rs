//! Addresses and header fields: whatever the input, parsing never panics, and whatever
//! it accepts can hold no CR, LF or NUL (the guarantee that rules out header injection)
//! and parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::domain::address::{EmailAddress, Mailbox};
use mailgate::domain::text::{CustomHeader, Subject};

fn clean(text: &str) -> bool {
    !text.contains(['\r', '\n', '\0'])
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    if let Ok(email) = EmailAddress::parse(&input) {
        let shown = email.to_string();
        assert!(clean(&shown), "{shown:?}");
        assert_eq!(EmailAddress::parse(&shown).map(|e| e.to_string()).ok(), Some(shown));
    }
    if let Ok(mailbox) = Mailbox::parse(&input) {
        assert!(clean(&mailbox.to_string()));
        assert!(clean(&mailbox.email().to_string()));
        assert!(mailbox.name().is_none_or(clean));
    }
    if let Ok(subject) = Subject::parse(&input) {
        assert!(clean(subject.as_str()));
    }
    let (name, value) = input.split_once(':').unwrap_or((&input, ""));
    if let Ok(header) = CustomHeader::parse(name, value) {
        assert!(clean(header.name()) && clean(header.value()));
    }
});
