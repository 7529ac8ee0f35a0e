//! The upstream pool: every configured relay, chosen per SMTP transaction by weight
//! among those whose circuit is closed. A relay that cannot be reached, answers 421, or
//! refuses our credentials is an *upstream* failure: the transaction moves on to the
//! next relay at once (failover), and after `FAILURE_THRESHOLD` such failures in a row
//! the relay's circuit opens for `circuit_cooldown`; then one transaction probes it
//! (half-open) and its outcome closes or reopens the circuit. Recipient-level answers
//! (a 4xx or 5xx at RCPT, say) are the recipient's, not the relay's, and go back to the
//! worker as they are. Each relay may be paced to `rate_per_second`, and may cap how
//! many transactions of one tenant it runs at once (`tenant_max_connections`): a
//! tenant at its cap on one relay goes to the next, and waits when capped on all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use super::transport::{Transport, TransportJob, GATEWAY_PROBLEM_CODES};
use crate::domain::message::{DeliveryOutcome, SmtpReply};
use crate::store::writer::{LeaseGuard, LeasePolicy};

/// Upstream failures in a row that open a circuit.
const FAILURE_THRESHOLD: u32 = 3;

/// How often a transaction capped on every relay looks again without being told.
const CAPPED_RECHECK: Duration = Duration::from_millis(100);

/// Every relay that could take the transaction has the tenant at its cap.
struct Capped;

/// Where a relay's circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Taking traffic.
    Closed,
    /// Failing: skipped until its cooldown ends.
    Open,
    /// Cooldown over: one transaction probes it.
    HalfOpen,
}

#[derive(Debug)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Circuit {
    /// Whether a transaction may use the relay now (claiming the probe when half-open).
    fn admit(&mut self, now: Instant) -> bool {
        match self {
            Circuit::Closed { .. } => true,
            Circuit::Open { until } if now < *until => false,
            Circuit::Open { .. } => {
                *self = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::HalfOpen { probing } => !std::mem::replace(probing, true),
        }
    }

    fn succeeded(&mut self) {
        *self = Circuit::Closed { failures: 0 };
    }

    fn failed(&mut self, now: Instant, cooldown: Duration) {
        *self = match self {
            Circuit::Closed { failures } if *failures + 1 < FAILURE_THRESHOLD => Circuit::Closed {
                failures: *failures + 1,
            },
            _ => Circuit::Open { until: now + cooldown },
        };
    }

    fn state(&self, now: Instant) -> CircuitState {
        match self {
            Circuit::Closed { .. } => CircuitState::Closed,
            Circuit::Open { until } if now < *until => CircuitState::Open,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// Spaces transactions `interval` apart: each caller reserves the next slot and sleeps
/// until it.
struct Pace {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// Transactions running per tenant on one relay, against a cap.
struct TenantSlots {
    cap: u32,
    taken: Mutex<HashMap<String, u32>>,
    /// Told whenever a slot frees, so a capped transaction can try again.
    freed: Arc<Notify>,
}

/// A running transaction's slot; gives it back when dropped.
struct TenantSlot<'a> {
    slots: &'a TenantSlots,
    tenant: String,
}

impl TenantSlots {
    /// A slot for `tenant`, or `None` when the tenant is at the cap.
    fn take(&self, tenant: &str) -> Option<TenantSlot<'_>> {
        let mut taken = self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = taken.entry(tenant.to_owned()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(TenantSlot {
            slots: self,
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for TenantSlot<'_> {
    fn drop(&mut self) {
        let mut taken = self
            .slots
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = taken.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                taken.remove(&self.tenant);
            }
        }
        drop(taken);
        self.slots.freed.notify_waiters();
    }
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicU64,
    sent: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
}

/// One relay and its state.
pub struct Member {
    transport: Transport,
    weight: u32,
    max_connections: u32,
    rate_per_second: u32,
    pace: Option<Pace>,
    tenant_slots: Option<TenantSlots>,
    /// Whether mail through this relay carries mailgate's DKIM signatures
    /// (`upstreams.dkim`).
    signs: bool,
    circuit: Mutex<Circuit>,
    counters: Counters,
}

impl Member {
    /// `weight` 0 takes traffic only when no weighted relay can.
    pub fn new(transport: Transport, weight: u32, max_connections: u32, rate_per_second: u32) -> Self {
        Self {
            transport,
            weight,
            max_connections,
            rate_per_second,
            pace: (rate_per_second > 0).then(|| Pace {
                interval: Duration::from_secs_f64(1.0 / f64::from(rate_per_second)),
                next: Mutex::new(Instant::now()),
            }),
            tenant_slots: None,
            signs: true,
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            counters: Counters::default(),
        }
    }

    /// Caps one tenant's concurrent transactions on this relay (0 = no cap).
    /// Sends the unsigned message through this relay (`upstreams.dkim = "off"`).
    pub fn without_dkim(mut self) -> Self {
        self.signs = false;
        self
    }

    pub fn with_tenant_cap(mut self, cap: u32) -> Self {
        self.tenant_slots = (cap > 0).then(|| TenantSlots {
            cap,
            taken: Mutex::new(HashMap::new()),
            freed: Arc::new(Notify::new()),
        });
        self
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What `GET /v1/upstreams` and `/readyz` show of one relay.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UpstreamStatus {
    pub name: String,
    pub state: CircuitState,
    /// SMTP transactions running now.
    pub in_flight: u64,
    /// Recipient outcomes through this relay since start.
    pub sent: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub weight: u32,
    pub max_connections: u32,
    /// 0 = unpaced.
    pub rate_per_second: u32,
    /// One tenant's transactions at once at most; 0 = no cap.
    pub tenant_max_connections: u32,
}

/// The bytes of one transaction: as stored (plus per-recipient headers), and with
/// DKIM signatures in front when the sender's domain signs. Each relay sends the one
/// its `dkim` setting asks for.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub plain: &'a [u8],
    pub signed: Option<&'a [u8]>,
}

/// Every relay mail can leave through (the sandbox counts as one).
pub struct Upstreams {
    members: Vec<Member>,
    cooldown: Duration,
    /// Each tenant's messages leased by workers right now (see the [`LeasePolicy`]).
    in_progress: Arc<Mutex<HashMap<String, u32>>>,
    /// The relays' tenant caps added up, or `None` when some relay has none.
    tenant_room: Option<u32>,
}

/// A leased message counted against its tenant; uncounted when dropped.
struct InProgress {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// With tenant caps, a worker holding a message whose tenant is at its cap on every
/// relay can only wait; so messages of a tenant are leased only while the tenant has
/// fewer in progress than the relays' caps add up to, and the lease scan passes over
/// the rest — other tenants' mail is leased meanwhile. Without caps (or with a relay
/// that has none) everything is admitted.
impl LeasePolicy for Upstreams {
    fn admits(&self, tenant: &str, admitted: u32) -> bool {
        let Some(room) = self.tenant_room else {
            return true;
        };
        let counts = self
            .in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.get(tenant).copied().unwrap_or(0).saturating_add(admitted) < room
    }

    fn lease_taken(&self, tenant: &str) -> LeaseGuard {
        if self.tenant_room.is_none() {
            return Box::new(());
        }
        let mut counts = self
            .in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(tenant.to_owned()).or_insert(0) += 1;
        Box::new(InProgress {
            counts: Arc::clone(&self.in_progress),
            tenant: tenant.to_owned(),
        })
    }
}

/// Whether `outcome` says the relay, not the recipient, failed: no connection, TLS or
/// timeout (no reply code), 421 (service not available), or the authentication codes
/// that already defer instead of bouncing (`GATEWAY_PROBLEM_CODES`).
fn relay_failed(outcome: &DeliveryOutcome) -> bool {
    match outcome {
        DeliveryOutcome::Deferred(reply) => reply
            .code
            .is_none_or(|c| c == 421 || GATEWAY_PROBLEM_CODES.contains(&c)),
        _ => false,
    }
}

impl Upstreams {
    pub fn new(members: Vec<Member>, cooldown: Duration) -> Self {
        let tenant_room = members.iter().map(|m| m.tenant_slots.as_ref().map(|s| s.cap)).sum();
        Self {
            members,
            cooldown,
            in_progress: Arc::default(),
            tenant_room,
        }
    }

    /// How many transactions can run at once: the sum of every relay's connections.
    pub fn connections(&self) -> usize {
        self.members.iter().map(|m| m.max_connections.max(1) as usize).sum()
    }

    /// The relays admitted now, in the order to try them: a weighted random draw
    /// without replacement, weight-0 relays last.
    fn candidates(&self) -> Vec<&Member> {
        let now = Instant::now();
        let mut open: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.circuit().state(now) != CircuitState::Open)
            .collect();
        let mut order = Vec::with_capacity(open.len());
        let mut rng = rand::rng();
        while !open.is_empty() {
            let total: u64 = open.iter().map(|m| u64::from(m.weight)).sum();
            let index = if total == 0 {
                0
            } else {
                let mut ticket = rng.random_range(0..total);
                open.iter()
                    .position(|m| {
                        let w = u64::from(m.weight);
                        if ticket < w {
                            true
                        } else {
                            ticket -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            order.push(open.remove(index));
        }
        order
    }

    /// Sends one transaction through the first relay that takes it; returns the outcome
    /// and the relay's name. When the tenant is at its cap on every relay that could
    /// take it, waits for a slot.
    pub async fn send(&self, job: &TransportJob, mime: Outgoing<'_>) -> (DeliveryOutcome, String) {
        loop {
            match self.try_send(job, mime).await {
                Ok(sent) => return sent,
                Err(Capped) => self.slot_freed().await,
            }
        }
    }

    /// Until some relay frees a tenant slot (or a short while, in case that happened
    /// just before the wait began).
    async fn slot_freed(&self) {
        let waits = self
            .members
            .iter()
            .filter_map(|m| m.tenant_slots.as_ref())
            .map(|s| Box::pin(s.freed.notified()));
        let any = futures_util::future::select_all(waits);
        let _ = tokio::time::timeout(CAPPED_RECHECK, any).await;
    }

    async fn try_send(&self, job: &TransportJob, mime: Outgoing<'_>) -> Result<(DeliveryOutcome, String), Capped> {
        let mut last: Option<(DeliveryOutcome, String)> = None;
        let mut capped = false;
        for member in self.candidates() {
            let slot = match &member.tenant_slots {
                Some(slots) => match slots.take(&job.tenant) {
                    Some(slot) => Some(slot),
                    None => {
                        capped = true;
                        continue;
                    }
                },
                None => None,
            };
            if !member.circuit().admit(Instant::now()) {
                continue;
            }
            if let Some(pace) = &member.pace {
                pace.wait().await;
            }
            member.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let bytes = match mime.signed {
                Some(signed) if member.signs => signed,
                _ => mime.plain,
            };
            let outcome = member.transport.send(job, bytes).await;
            member.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
            let name = member.transport.name().to_owned();
            if relay_failed(&outcome) {
                member.circuit().failed(Instant::now(), self.cooldown);
                member.counters.deferred.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream = %name, diagnostic = %reply_of(&outcome).diagnostic, "upstream failed; trying the next one");
                last = Some((outcome, name));
                continue;
            }
            member.circuit().succeeded();
            let counter = match &outcome {
                DeliveryOutcome::Sent(_) => &member.counters.sent,
                DeliveryOutcome::Deferred(_) => &member.counters.deferred,
                DeliveryOutcome::Bounced(_) => &member.counters.bounced,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Ok((outcome, name));
        }
        match last {
            Some(last) => Ok(last),
            None if capped => Err(Capped),
            None => Ok((
                DeliveryOutcome::Deferred(SmtpReply {
                    code: None,
                    enhanced: None,
                    diagnostic: "every upstream is unavailable (circuits open); will retry".into(),
                }),
                "none".into(),
            )),
        }
    }

    /// Each relay's state and counters, in configuration order.
    pub fn statuses(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        self.members
            .iter()
            .map(|m| UpstreamStatus {
                name: m.transport.name().to_owned(),
                state: m.circuit().state(now),
                in_flight: m.counters.in_flight.load(Ordering::Relaxed),
                sent: m.counters.sent.load(Ordering::Relaxed),
                deferred: m.counters.deferred.load(Ordering::Relaxed),
                bounced: m.counters.bounced.load(Ordering::Relaxed),
                weight: m.weight,
                max_connections: m.max_connections,
                rate_per_second: m.rate_per_second,
                tenant_max_connections: m.tenant_slots.as_ref().map_or(0, |s| s.cap),
            })
            .collect()
    }

    /// Whether each relay can be reached now (TCP connect, or a writable sandbox).
    pub async fn reachability(&self) -> Vec<(String, bool)> {
        let mut out = Vec::with_capacity(self.members.len());
        for member in &self.members {
            out.push((
                member.transport.name().to_owned(),
                member.transport.is_reachable().await,
            ));
        }
        out
    }
}

fn reply_of(outcome: &DeliveryOutcome) -> &SmtpReply {
    match outcome {
        DeliveryOutcome::Sent(r) | DeliveryOutcome::Deferred(r) | DeliveryOutcome::Bounced(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned(plain: &[u8]) -> Outgoing<'_> {
        Outgoing { plain, signed: None }
    }

    #[test]
    fn a_circuit_opens_after_repeated_failures_and_one_probe_closes_it() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut circuit = Circuit::Closed { failures: 0 };
        for _ in 0..FAILURE_THRESHOLD {
            assert!(circuit.admit(start));
            circuit.failed(start, cooldown);
        }
        assert_eq!(circuit.state(start), CircuitState::Open);
        assert!(!circuit.admit(start + Duration::from_secs(5)));
        let later = start + cooldown;
        assert!(circuit.admit(later), "the probe");
        assert!(!circuit.admit(later), "only one probe at a time");
        circuit.failed(later, cooldown);
        assert_eq!(circuit.state(later), CircuitState::Open, "a failed probe reopens");
        let again = later + cooldown;
        assert!(circuit.admit(again));
        circuit.succeeded();
        assert_eq!(circuit.state(again), CircuitState::Closed);
        assert!(circuit.admit(again) && circuit.admit(again));
    }

    #[test]
    fn relay_failures_are_told_from_recipient_answers() {
        let deferred = |code| {
            DeliveryOutcome::Deferred(SmtpReply {
                code,
                enhanced: None,
                diagnostic: String::new(),
            })
        };
        assert!(relay_failed(&deferred(None)));
        assert!(relay_failed(&deferred(Some(421))));
        assert!(relay_failed(&deferred(Some(535))));
        assert!(
            !relay_failed(&deferred(Some(451))),
            "a greylisting RCPT is the recipient's"
        );
    }

    #[tokio::test]
    async fn weights_share_traffic_and_pacing_spaces_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let member = |weight, rate| Member::new(Transport::sandbox(dir.path().to_path_buf()).unwrap(), weight, 1, rate);
        let pool = Upstreams::new(vec![member(3, 0), member(1, 0)], Duration::from_secs(1));
        let heavy_first = (0..4000)
            .filter(|_| std::ptr::eq(pool.candidates()[0], &pool.members[0]))
            .count();
        let share = heavy_first as f64 / 4000.0;
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 went first {share}");

        let paced = Upstreams::new(vec![member(1, 20)], Duration::from_secs(1));
        let job = |n: usize| TransportJob {
            tenant: "acme".into(),
            sender: "s@x.test".into(),
            recipient: "r@x.test".into(),
            label: format!("m{n}"),
        };
        let started = Instant::now();
        for n in 0..6 {
            let (outcome, name) = paced.send(&job(n), unsigned(b"Subject: x\r\n\r\nx")).await;
            assert!(matches!(outcome, DeliveryOutcome::Sent(_)), "{outcome:?}");
            assert_eq!(name, "sandbox");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(240),
            "6 sends at 20/s take ≥ 250 ms"
        );
        assert_eq!(paced.statuses()[0].sent, 6);
    }

    #[test]
    fn a_tenant_is_leased_only_while_it_has_room_on_the_capped_relays() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = || Transport::sandbox(dir.path().to_path_buf()).unwrap();
        let capped = Upstreams::new(
            vec![
                Member::new(sandbox(), 1, 4, 0).with_tenant_cap(1),
                Member::new(sandbox(), 1, 4, 0).with_tenant_cap(2),
            ],
            Duration::from_secs(1),
        );
        assert!(capped.admits("busy", 2) && !capped.admits("busy", 3), "room is 1 + 2");
        let held: Vec<_> = (0..3).map(|_| capped.lease_taken("busy")).collect();
        assert!(!capped.admits("busy", 0), "three in progress fill the room");
        assert!(capped.admits("calm", 0), "other tenants are not held up");
        drop(held);
        assert!(capped.admits("busy", 0), "finished work frees the room");

        let open = Upstreams::new(
            vec![
                Member::new(sandbox(), 1, 4, 0).with_tenant_cap(1),
                Member::new(sandbox(), 1, 4, 0),
            ],
            Duration::from_secs(1),
        );
        let _held: Vec<_> = (0..10).map(|_| open.lease_taken("busy")).collect();
        assert!(open.admits("busy", 10), "a relay without a cap takes any amount");
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_moves_to_another_relay_or_waits_while_others_go_through() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = || Transport::sandbox(dir.path().to_path_buf()).unwrap();
        let job = |tenant: &str, n: usize| TransportJob {
            tenant: tenant.into(),
            sender: "s@x.test".into(),
            recipient: "r@x.test".into(),
            label: format!("{tenant}{n}"),
        };
        let mime = unsigned(b"Subject: x\r\n\r\nx");
        let sent = |(outcome, _): (DeliveryOutcome, String)| matches!(outcome, DeliveryOutcome::Sent(_));

        let pool = Upstreams::new(
            vec![Member::new(sandbox(), 1, 4, 0).with_tenant_cap(1)],
            Duration::from_secs(1),
        );
        let held = pool.members[0].tenant_slots.as_ref().unwrap().take("busy").unwrap();
        assert!(
            sent(pool.send(&job("calm", 0), mime).await),
            "another tenant is not held up"
        );
        let busy = job("busy", 1);
        let capped = pool.send(&busy, mime);
        tokio::pin!(capped);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut capped)
                .await
                .is_err(),
            "a tenant at its cap waits"
        );
        drop(held);
        let freed = tokio::time::timeout(Duration::from_secs(2), capped).await;
        assert!(sent(freed.expect("a freed slot lets it go")));

        let pool = Upstreams::new(
            vec![
                Member::new(sandbox(), 1, 4, 0).with_tenant_cap(1),
                Member::new(sandbox(), 0, 4, 0),
            ],
            Duration::from_secs(1),
        );
        let _held = pool.members[0].tenant_slots.as_ref().unwrap().take("busy").unwrap();
        assert!(sent(pool.send(&job("busy", 2), mime).await));
        assert_eq!(
            pool.statuses()[1].sent,
            1,
            "capped on the first relay, it took the second"
        );
    }
}
