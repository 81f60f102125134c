//! Fleet-wide limits on the public API: requests per minute, tokens per minute and concurrent
//! requests, per client key, per user and per provider key; and spending budgets per client key
//! and per user.
//!
//! Counting is shared through Redis ([`shared`]): one script call per request checks every limit
//! that applies and, only when all of them have room, reserves the request in all of them —
//! atomically, so proxies never race each other past a limit. Tokens are reserved as an estimate
//! at admission and settled with the provider's real usage when the request ends; concurrency
//! slots are leases released at the end (and expiring on their own if a proxy dies holding them).
//!
//! Without Redis — none configured (the embedded `up` mode, or one proxy), or Redis unreachable
//! or slower than its time budget — each proxy counts in process ([`local`]) and enforces its
//! share of each limit: the limit divided by the number of live proxies the control plane
//! reports. The fleet as a whole then stays within the limit (give or take the rounding up to at
//! least one per proxy) instead of multiplying it, and a Redis outage never turns into an error
//! for the client. Decisions taken that way while Redis is configured are counted as degraded.
//!
//! The windows are sliding, not fixed: in any 60 seconds a limit admits at most its value, so
//! offering twice the rate never gets more than the limit through.
//!
//! Budgets count spend (nano-USD) per period. A request reserves its estimated cost — the
//! prompt estimate at the input price plus its output cap at the output price — and is admitted
//! only if that fits what is left, so concurrent requests cannot together overrun a budget by
//! more than the amount by which real costs exceed their estimates (nothing, when requests cap
//! their output and the model has a price). The shared counter starts from the spend the control
//! plane's ledger knows (`seed`) and never drops below it.

mod local;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::clock::millis;

pub use local::Local;
pub use shared::Shared;

/// The sliding window of the per-minute limits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long a concurrency slot is held at most: a proxy that dies holding one frees it then.
pub const LEASE: Duration = Duration::from_secs(15 * 60);
/// After Redis failed or was too slow, how long this proxy counts locally before trying again,
/// so an outage does not cost every request the full time budget.
const RETRY_SHARED_AFTER: Duration = Duration::from_secs(1);
/// Settlements waiting for Redis; beyond this they are dropped (and counted): a dropped token
/// settlement leaves the estimate in the window, a dropped release leaves the lease to expire.
const SETTLE_QUEUE: usize = 16_384;

/// Whose limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ClientKey,
    User,
    ProviderKey,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ClientKey => "client_key",
            Scope::User => "user",
            Scope::ProviderKey => "provider_key",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Scope::ClientKey => "ck",
            Scope::User => "u",
            Scope::ProviderKey => "pk",
        }
    }
}

/// What is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    /// Requests per minute.
    Requests,
    /// Tokens (prompt + completion) per minute.
    Tokens,
    /// Requests in flight at once.
    Concurrent,
    /// Spend in nano-USD per budget period.
    Budget,
}

impl Dim {
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::Tokens => "tokens",
            Dim::Concurrent => "concurrent",
            Dim::Budget => "budget",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Dim::Requests => "rpm",
            Dim::Tokens => "tpm",
            Dim::Concurrent => "cc",
            Dim::Budget => "bud",
        }
    }

    /// Whether settling the request changes this counter.
    fn settles(self) -> bool {
        !matches!(self, Dim::Requests)
    }
}

/// One limit that applies to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub scope: Scope,
    pub id: String,
    pub dim: Dim,
    pub limit: u64,
    /// Budgets only: the period counted in.
    pub period: Option<Period>,
}

/// A budget's current period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// Start, ms since the epoch (names the counter, so a new period starts from nothing).
    pub start_ms: u64,
    /// When the counter may be forgotten: the period's end (or the budget's expiry), ms since
    /// the epoch; `None` for a budget that never resets or expires.
    pub end_ms: Option<u64>,
    /// Spend in this period as the control plane's ledger knew it.
    pub seed: u64,
}

impl Check {
    /// The counter's name, the same on every proxy (Redis adds its prefix).
    fn counter(&self) -> String {
        match &self.period {
            Some(p) => format!(
                "{}:{}:{}:{}",
                self.dim.tag(),
                self.scope.tag(),
                self.id,
                p.start_ms
            ),
            None => format!("{}:{}:{}", self.dim.tag(), self.scope.tag(), self.id),
        }
    }

    /// What this request adds to the counter.
    fn amount(&self, d: &Demand) -> u64 {
        match self.dim {
            Dim::Requests | Dim::Concurrent => 1,
            Dim::Tokens => d.tokens,
            Dim::Budget => d.cost_nanos,
        }
    }
}

/// A provider key the request could be sent with, and its fleet-wide limits (0 = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    pub id: String,
    pub rpm: u64,
    pub tpm: u64,
}

impl KeyLimits {
    fn checks(&self) -> impl Iterator<Item = Check> + '_ {
        [(Dim::Requests, self.rpm), (Dim::Tokens, self.tpm)]
            .into_iter()
            .filter(|(_, limit)| *limit > 0)
            .map(|(dim, limit)| Check {
                scope: Scope::ProviderKey,
                id: self.id.clone(),
                dim,
                limit,
                period: None,
            })
    }
}

/// What a request asks of the limits.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    pub request_id: String,
    /// Estimated tokens (prompt + the most it may generate), reserved until settled.
    pub tokens: u64,
    /// Estimated cost in nano-USD, reserved against budgets until settled.
    pub cost_nanos: u64,
    /// Client-key and user limits: all must have room.
    pub checks: Vec<Check>,
    /// Provider keys in the order the request would try them: the first with room is reserved.
    /// Empty: no key limits to consult.
    pub keys: Vec<KeyLimits>,
}

impl Demand {
    /// Nothing to count: no limit applies.
    pub fn is_free(&self) -> bool {
        self.checks.is_empty() && self.keys.iter().all(|k| k.rpm == 0 && k.tpm == 0)
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub dim: Dim,
    /// The limit as enforced (this proxy's share when counting locally).
    pub limit: u64,
    pub retry_after: Duration,
}

/// The outcome of a check.
#[derive(Debug)]
pub enum Decision {
    Admit(Ticket),
    Refuse(Refusal),
}

/// Where a reservation was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Nothing was reserved.
    Nowhere,
    Shared,
    Local,
}

/// Tokens and cost of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub tokens: u64,
    pub cost_nanos: u64,
}

/// An admitted request's reservations. Dropping it settles them: token and budget reservations
/// are corrected to what [`Ticket::settle`] said was used (kept as estimated when nothing was
/// said) and concurrency slots are released.
#[derive(Debug)]
pub struct Ticket {
    /// Index into [`Demand::keys`] of the key reserved (`None` when the demand named none).
    pub key: Option<usize>,
    pub counted: Counted,
    request_id: String,
    reserved: Amounts,
    actual: Option<Amounts>,
    /// The counters settling changes (tokens, budgets, concurrency).
    settles: Vec<Check>,
    settle: Option<mpsc::Sender<Settlement>>,
    local: Option<Arc<Local>>,
}

impl Ticket {
    fn free() -> Ticket {
        Ticket {
            key: None,
            counted: Counted::Nowhere,
            request_id: String::new(),
            reserved: Amounts::default(),
            actual: None,
            settles: Vec::new(),
            settle: None,
            local: None,
        }
    }

    /// What the request really used, replacing the estimates when the ticket drops.
    pub fn settle(&mut self, used: Amounts) {
        self.actual = Some(used);
    }

    pub fn reserved(&self) -> Amounts {
        self.reserved
    }
}

/// What is left to do for an admitted request when it ends.
#[derive(Debug)]
pub struct Settlement {
    pub request_id: String,
    pub reserved: Amounts,
    pub actual: Amounts,
    pub counters: Vec<Check>,
}

impl Settlement {
    /// The correction a counter needs: `actual - reserved` in its unit.
    fn delta(&self, c: &Check) -> i64 {
        let (r, a) = match c.dim {
            Dim::Tokens => (self.reserved.tokens, self.actual.tokens),
            Dim::Budget => (self.reserved.cost_nanos, self.actual.cost_nanos),
            Dim::Requests | Dim::Concurrent => (0, 0),
        };
        i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(r).unwrap_or(i64::MAX)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let unchanged = self.actual.is_none_or(|a| a == self.reserved);
        if self.counted == Counted::Nowhere
            || self
                .settles
                .iter()
                .all(|c| c.dim != Dim::Concurrent && unchanged)
        {
            return;
        }
        let s = Settlement {
            request_id: std::mem::take(&mut self.request_id),
            reserved: self.reserved,
            actual: self.actual.unwrap_or(self.reserved),
            counters: std::mem::take(&mut self.settles),
        };
        if let Some(local) = &self.local {
            local.settle(&s);
        } else if let Some(tx) = &self.settle
            && tx.try_send(s).is_err()
        {
            SETTLE_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

static SETTLE_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Decision counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
    /// Decisions taken on the local share while Redis is configured but was unreachable or slow.
    pub degraded: AtomicU64,
    /// Redis calls that failed or exceeded the time budget.
    pub shared_errors: AtomicU64,
}

impl Counters {
    pub fn settle_dropped() -> u64 {
        SETTLE_DROPPED.load(Ordering::Relaxed)
    }
}

/// The limiter: shared counting when Redis is configured and answers in time, else the local
/// share.
pub struct Limiter {
    shared: Option<Shared>,
    local: Arc<Local>,
    budget: Duration,
    /// Proxies in the fleet, from the control plane (at least 1).
    live_proxies: AtomicU32,
    /// Until when (ms since epoch) to count locally after a Redis failure.
    local_until_ms: AtomicU64,
    settle_tx: Option<mpsc::Sender<Settlement>>,
    pub counters: Counters,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("shared", &self.shared.is_some())
            .field("live_proxies", &self.live_proxies())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// Counting in this process only.
    pub fn local() -> Limiter {
        Limiter {
            shared: None,
            local: Arc::new(Local::default()),
            budget: Duration::ZERO,
            live_proxies: AtomicU32::new(1),
            local_until_ms: AtomicU64::new(0),
            settle_tx: None,
            counters: Counters::default(),
        }
    }

    /// Counting through Redis, each call bounded by `budget`. Settlements are sent from a
    /// background task (spawned here, so call this inside the runtime).
    pub fn shared(shared: Shared, budget: Duration) -> Limiter {
        let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
        tokio::spawn(shared.clone().settle_loop(rx));
        Limiter {
            shared: Some(shared),
            settle_tx: Some(tx),
            budget,
            ..Limiter::local()
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    pub fn live_proxies(&self) -> u32 {
        self.live_proxies.load(Ordering::Relaxed)
    }

    /// The fleet size the control plane reported; 0 (not reported) counts as 1.
    pub fn set_live_proxies(&self, n: u32) {
        self.live_proxies.store(n.max(1), Ordering::Relaxed);
    }

    /// Checks and reserves a request's limits.
    pub async fn admit(&self, demand: &Demand, now: SystemTime) -> Decision {
        if demand.is_free() {
            return Decision::Admit(Ticket::free());
        }
        if let Some(shared) = &self.shared
            && millis(now) >= self.local_until_ms.load(Ordering::Relaxed)
        {
            match tokio::time::timeout(self.budget, shared.admit(demand)).await {
                Ok(Ok(decision)) => {
                    if self.local_until_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!(
                            degraded = self.counters.degraded.load(Ordering::Relaxed),
                            "shared limit counters reachable again; counting fleet-wide"
                        );
                    }
                    return self.counted(decision, Counted::Shared, demand);
                }
                Ok(Err(e)) => self.shared_failed(now, &e.to_string()),
                Err(_) => self.shared_failed(now, "no answer within the time budget"),
            }
        }
        if self.shared.is_some() {
            self.counters.degraded.fetch_add(1, Ordering::Relaxed);
        }
        let decision = self.local.admit(demand, self.live_proxies(), millis(now));
        self.counted(decision, Counted::Local, demand)
    }

    fn shared_failed(&self, now: SystemTime, why: &str) {
        self.counters.shared_errors.fetch_add(1, Ordering::Relaxed);
        let until = millis(now) + millis_of(RETRY_SHARED_AFTER);
        // One warning per outage, not one per request.
        if self.local_until_ms.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                error = why,
                live_proxies = self.live_proxies(),
                "shared limit counters unavailable; enforcing this proxy's share of each limit"
            );
        }
    }

    fn counted(&self, mut decision: Decision, counted: Counted, demand: &Demand) -> Decision {
        match &mut decision {
            Decision::Admit(t) => {
                self.counters.admitted.fetch_add(1, Ordering::Relaxed);
                t.counted = counted;
                t.request_id = demand.request_id.clone();
                t.reserved = Amounts {
                    tokens: demand.tokens,
                    cost_nanos: demand.cost_nanos,
                };
                match counted {
                    Counted::Shared => t.settle = self.settle_tx.clone(),
                    _ => t.local = Some(self.local.clone()),
                }
                let key = t.key.and_then(|i| demand.keys.get(i));
                let all = demand
                    .checks
                    .iter()
                    .cloned()
                    .chain(key.into_iter().flat_map(KeyLimits::checks));
                t.settles = all.filter(|c| c.dim.settles()).collect();
            }
            Decision::Refuse(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        decision
    }
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// This proxy's share of a limit when counting locally: at least one, so a small limit over a
/// large fleet still admits something on each proxy.
pub fn share(limit: u64, live_proxies: u32) -> u64 {
    (limit / u64::from(live_proxies.max(1))).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scope: Scope, dim: Dim, limit: u64) -> Check {
        Check {
            scope,
            id: "x".into(),
            dim,
            limit,
            period: None,
        }
    }

    #[test]
    fn shares_never_reach_zero() {
        assert_eq!(share(60, 3), 20);
        assert_eq!(share(10, 3), 3);
        assert_eq!(share(2, 5), 1);
        assert_eq!(share(60, 0), 60);
    }

    #[test]
    fn free_demands_need_no_counting() {
        let mut d = Demand {
            keys: vec![KeyLimits {
                id: "k".into(),
                rpm: 0,
                tpm: 0,
            }],
            ..Demand::default()
        };
        assert!(d.is_free());
        d.keys[0].tpm = 5;
        assert!(!d.is_free());
        d.keys.clear();
        d.checks.push(check(Scope::User, Dim::Concurrent, 1));
        assert!(!d.is_free());
    }

    #[tokio::test]
    async fn local_limiter_divides_by_the_fleet_and_releases_on_drop() {
        let l = Limiter::local();
        l.set_live_proxies(2);
        let d = Demand {
            request_id: "r".into(),
            tokens: 10,
            cost_nanos: 0,
            checks: vec![check(Scope::ClientKey, Dim::Concurrent, 4)],
            keys: vec![],
        };
        let now = SystemTime::now();
        let a = l.admit(&d, now).await;
        let b = l.admit(&d, now).await;
        let Decision::Refuse(r) = l.admit(&d, now).await else {
            panic!("a third concurrent request passed a share of 2")
        };
        assert_eq!(
            (r.scope, r.dim, r.limit),
            (Scope::ClientKey, Dim::Concurrent, 2)
        );
        drop(a);
        assert!(matches!(l.admit(&d, now).await, Decision::Admit(_)));
        drop(b);
        assert_eq!(l.counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            l.counters.degraded.load(Ordering::Relaxed),
            0,
            "no Redis configured"
        );
    }
}
