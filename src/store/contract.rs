//! What every backend owes the rest of mailgate, written once as tests that take a
//! [`Backend`]: a backend's test module runs them all with
//! `crate::store_contract_tests!(its_backend())`, so sled and any later backend are held
//! to the same contract by the same code. Tests that look inside one backend (its trees,
//! its files) stay with that backend.

use chrono::Utc;

use super::test_support::message;
use super::Store;
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::status::MessageStatus;

/// Opens stores over one storage for a test: each [`Backend::open`] after the last store
/// was dropped sees what it wrote, as a restarted process would.
pub(crate) trait Backend {
    fn open(&self) -> Box<dyn Store>;
}

/// Runs every contract test against a backend built by `$backend` (an expression,
/// evaluated once per test).
#[macro_export]
#[doc(hidden)]
macro_rules! store_contract_tests {
    ($backend:expr) => {
        $crate::store_contract_tests!(@each $backend;
            a_lease_is_exclusive_and_survives_a_restart_as_a_queued_message,
            leases_come_in_due_order_up_to_the_number_asked_for,
            a_released_message_is_due_again_only_at_its_retry_time,
            another_tenant_cannot_read_a_message,
            revocations_survive_a_restart_until_they_expire,
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::store::contract::$name(&$backend);
            }
        )*
    };
}

pub(crate) fn a_lease_is_exclusive_and_survives_a_restart_as_a_queued_message(backend: &impl Backend) {
    let msg = message();
    {
        let store = backend.open();
        store.accept(&msg, b"mime", None).unwrap();
        let lease = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
        assert_eq!(lease.message.id, msg.id);
        assert_eq!(lease.message.status, MessageStatus::Sending);
        let seen = store.message(&msg.tenant, &msg.id).unwrap().unwrap();
        assert_eq!(seen.status, MessageStatus::Sending, "readers see the lease");
        assert!(
            store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().is_empty(),
            "a leased message is not handed out twice"
        );
        store.sync().unwrap();
    }
    let store = backend.open();
    assert_eq!(store.recover_leases().unwrap(), 1);
    let again = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
    assert_eq!(again.message.id, msg.id);
    assert_eq!(again.mime, b"mime");
}

pub(crate) fn leases_come_in_due_order_up_to_the_number_asked_for(backend: &impl Backend) {
    let store = backend.open();
    let mut ids = Vec::new();
    for age in [3, 1, 2] {
        let mut msg = message();
        msg.next_attempt_at = Some(Utc::now() - chrono::Duration::seconds(age));
        store.accept(&msg, b"mime", None).unwrap();
        ids.push((age, msg.id));
    }
    ids.sort();
    let leased: Vec<MessageId> = store
        .lease_due(Utc::now(), 2, &mut |_| true)
        .unwrap()
        .into_iter()
        .map(|l| l.message.id)
        .collect();
    assert_eq!(leased, [ids[2].1.clone(), ids[1].1.clone()]);
    let rest = store.lease_due(Utc::now(), 5, &mut |_| true).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].message.id, ids[0].1);
}

pub(crate) fn a_released_message_is_due_again_only_at_its_retry_time(backend: &impl Backend) {
    let store = backend.open();
    store.accept(&message(), b"mime", None).unwrap();
    let mut lease = store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().remove(0);
    let retry_at = Utc::now() + chrono::Duration::seconds(60);
    lease.message.next_attempt_at = Some(retry_at);
    store.release(&lease.message).unwrap();
    assert!(store.lease_due(Utc::now(), 1, &mut |_| true).unwrap().is_empty());
    assert!(!store.lease_due(retry_at, 1, &mut |_| true).unwrap().is_empty());
}

pub(crate) fn another_tenant_cannot_read_a_message(backend: &impl Backend) {
    let store = backend.open();
    let msg = message();
    store.accept(&msg, b"mime", None).unwrap();
    let other = TenantId::parse("other").unwrap();
    assert!(store.message(&other, &msg.id).unwrap().is_none());
    assert!(store.mime(&other, &msg.id).unwrap().is_none());
    assert!(store.message(&msg.tenant, &msg.id).unwrap().is_some());
}

pub(crate) fn revocations_survive_a_restart_until_they_expire(backend: &impl Backend) {
    {
        let store = backend.open();
        store.revoke_token("live", 2_000).unwrap();
        store.revoke_token("expired", 500).unwrap();
    }
    let store = backend.open();
    assert_eq!(store.revoked_tokens(1_000).unwrap(), [("live".to_owned(), 2_000)]);
}
