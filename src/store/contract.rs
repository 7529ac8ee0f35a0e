//! What every backend owes the rest of mailgate, written once as tests that take a
//! [`Backend`]: a backend's test module runs them all with
//! `crate::store_contract_tests!(its_backend())`, so sled and any later backend are held
//! to the same contract by the same code. Tests that look inside one backend (its trees,
//! its files) stay with that backend.

use chrono::Utc;

use super::test_support::message;
use super::{CancelOutcome, MessageWrite, Store, StoreError};
use crate::domain::auth::TenantId;
use crate::domain::ids::MessageId;
use crate::domain::message::IdempotencyKey;
use crate::domain::status::MessageStatus;
use crate::domain::suppression::{Suppression, SuppressionReason};

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
            a_held_idempotency_key_refuses_a_second_accept_of_the_same_tenant_only,
            a_cancelled_message_is_never_leased_and_a_leased_one_is_too_late,
            events_reach_the_stream_once_in_position_order_per_tenant,
            suppressions_are_per_tenant_and_case_blind,
            the_installation_secret_is_made_once_and_kept,
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

pub(crate) fn a_held_idempotency_key_refuses_a_second_accept_of_the_same_tenant_only(backend: &impl Backend) {
    let store = backend.open();
    let key = IdempotencyKey {
        key: "order-1".into(),
        request_hash: "h".into(),
    };
    let first = message();
    store.accept(&first, b"m", Some(&key)).unwrap();
    let second = message();
    assert!(matches!(
        store.accept(&second, b"m", Some(&key)),
        Err(StoreError::Conflict)
    ));
    assert!(
        store.message(&second.tenant, &second.id).unwrap().is_none(),
        "nothing written"
    );
    let held = store.idempotency(&first.tenant, "order-1").unwrap().unwrap();
    assert_eq!(held.accepted.id, first.id);
    let mut elsewhere = message();
    elsewhere.tenant = TenantId::parse("other").unwrap();
    store.accept(&elsewhere, b"m", Some(&key)).unwrap();
}

pub(crate) fn a_cancelled_message_is_never_leased_and_a_leased_one_is_too_late(backend: &impl Backend) {
    let store = backend.open();
    let (cancelled, leased) = (message(), message());
    store.accept(&cancelled, b"m", None).unwrap();
    let outcome = store.cancel(&cancelled.tenant, &cancelled.id, Utc::now()).unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelled(m) if m.status == MessageStatus::Cancelled));
    assert!(store.lease_due(Utc::now(), 10, &mut |_| true).unwrap().is_empty());
    store.accept(&leased, b"m", None).unwrap();
    assert_eq!(store.lease_due(Utc::now(), 10, &mut |_| true).unwrap().len(), 1);
    assert!(matches!(
        store.cancel(&leased.tenant, &leased.id, Utc::now()).unwrap(),
        CancelOutcome::TooLate(MessageStatus::Sending)
    ));
    let other = TenantId::parse("other").unwrap();
    assert!(matches!(
        store.cancel(&other, &leased.id, Utc::now()).unwrap(),
        CancelOutcome::NotFound
    ));
}

pub(crate) fn events_reach_the_stream_once_in_position_order_per_tenant(backend: &impl Backend) {
    let store = backend.open();
    let (mut first, mut second) = (message(), message());
    first.suppress(0, Utc::now());
    second.suppress(0, Utc::now());
    store.accept(&first, b"m", None).unwrap();
    store.accept(&second, b"m", None).unwrap();
    // Written again with the same events (a later save of the message): no new ones.
    store.write_messages(&[MessageWrite::Progress(&first)]).unwrap()[0]
        .as_ref()
        .unwrap();
    store.sync().unwrap();
    let (events, last) = store.events(&first.tenant, None, &[], 10).unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.data.message_id.as_str()).collect();
    assert_eq!(
        ids,
        [first.id.as_str(), second.id.as_str()],
        "each event once, in order"
    );
    let (after, _) = store.events(&first.tenant, last, &[], 10).unwrap();
    assert!(after.is_empty(), "nothing after the last position");
    let other = TenantId::parse("other").unwrap();
    assert!(store.events(&other, None, &[], 10).unwrap().0.is_empty());
}

pub(crate) fn suppressions_are_per_tenant_and_case_blind(backend: &impl Backend) {
    let store = backend.open();
    let tenant = message().tenant;
    let suppression = Suppression {
        email: "ana@example.test".into(),
        reason: SuppressionReason::Manual,
        created_at: Utc::now(),
        source: "api".into(),
        event_id: None,
    };
    store.put_suppression(&tenant, &suppression).unwrap();
    let asked = ["Ana@Example.test".to_owned(), "bo@example.test".to_owned()];
    assert_eq!(store.suppressed(&tenant, &asked).unwrap(), ["Ana@Example.test"]);
    let other = TenantId::parse("other").unwrap();
    assert!(store.suppressed(&other, &asked).unwrap().is_empty());
    assert!(store.delete_suppression(&tenant, "ana@example.test").unwrap());
    assert!(store.suppressed(&tenant, &asked).unwrap().is_empty());
}

pub(crate) fn the_installation_secret_is_made_once_and_kept(backend: &impl Backend) {
    let made = backend.open().secret("unsubscribe").unwrap();
    assert_eq!(made.len(), 32);
    assert_eq!(backend.open().secret("unsubscribe").unwrap(), made);
    assert_ne!(backend.open().secret("other").unwrap(), made);
}
