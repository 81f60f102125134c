//! Run-time health of keys and providers on this proxy: cooldowns (per key × model, or whole
//! key), disabled keys, half-open trials, proactive exhaustion from `x-ratelimit-remaining-*`,
//! per-key in-flight counts, latency EWMA and request rate, and a circuit breaker per provider.
//!
//! Reads on the request path are one `ArcSwap` load each and allocate nothing; writes (failures,
//! ended cooldowns, control-plane deltas) copy the small maps and swap them. A success copies
//! nothing unless it ends a cooldown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use llmhub_providers::{FailureClass, Verdict};

use crate::clock::{from_millis, millis};

/// Longest backoff for a rate limit the provider gave no reset time for.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First backoff for such a rate limit.
const BASE_BACKOFF: Duration = Duration::from_secs(2);
/// How long a key rests after an ambiguous refusal (a bare 403 or 402) while the control plane
/// verifies it.
pub const VERIFY_COOLDOWN: Duration = Duration::from_secs(60);
/// Quota exhaustion without a stated reset.
const QUOTA_COOLDOWN: Duration = Duration::from_secs(3600);
/// Consecutive provider failures that open its circuit, and for how long at first.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_OPEN: Duration = Duration::from_secs(10);

/// `12:03:10` (UTC) for skip reasons in routing records.
pub fn clock(t: SystemTime) -> String {
    let secs = millis(t) / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

#[derive(Clone, Debug)]
pub struct Cooling {
    pub until: SystemTime,
    pub class: String,
    pub strikes: u32,
    /// Set while the single half-open trial request is in flight.
    probe: Arc<AtomicBool>,
}

/// Per-key counters.
#[derive(Default, Debug)]
pub struct KeyStats {
    inflight: AtomicU32,
    /// Latency EWMA in microseconds (0 = no sample yet).
    ewma_us: AtomicU64,
    /// `x-ratelimit-remaining-*` hit zero: skip until this instant (ms since epoch).
    exhausted_until_ms: AtomicU64,
}

impl KeyStats {
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    fn observe_latency(&self, d: Duration) {
        let sample = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let old = self.ewma_us.load(Ordering::Relaxed);
        // alpha = 0.2
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.ewma_us.store(new, Ordering::Relaxed);
    }
}

/// Decrements the key's in-flight count when the attempt ends.
pub struct InFlight(Arc<KeyStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default, Debug)]
struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    opens: AtomicU32,
    trial: AtomicBool,
}

/// The right to make the one trial request after a cooldown ended. Released on drop.
pub struct Probe(Arc<AtomicBool>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A change to one key's health decided by the control plane (forced or observed by any proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Cool `model` (`""` = the whole key) down until `until`.
    Cooling {
        model: String,
        until: SystemTime,
        reason: String,
    },
    Disabled {
        reason: String,
    },
    /// Clear the cooldown for `model`; `""` clears every cooldown and a disabled state.
    Active {
        model: String,
    },
}

pub enum Gate {
    Open,
    /// The cooldown ended; the next request is a trial (take it with [`Health::try_probe`]).
    HalfOpen,
    Skip {
        reason: String,
        until: Option<SystemTime>,
    },
}

/// Cooldowns by key id, then by upstream model (`""` = the whole key). Nested so a lookup by
/// `&str` needs no allocation.
type CooldownMap = HashMap<String, HashMap<String, Cooling>>;

/// The cooldown that governs `key_id` × `model`: the later of the model's and the whole key's.
fn governing<'m>(map: &'m CooldownMap, key_id: &str, model: &str) -> Option<&'m Cooling> {
    let models = map.get(key_id)?;
    [model, ""]
        .iter()
        .filter_map(|m| models.get(*m))
        .max_by_key(|c| c.until)
}

/// When a provider's circuit opens: consecutive failures, and the first open period.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub failures: u32,
    pub open: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: BREAKER_THRESHOLD,
            open: BREAKER_OPEN,
        }
    }
}

#[derive(Default)]
pub struct Health {
    breaker_policy: BreakerPolicy,
    cooldowns: ArcSwap<CooldownMap>,
    disabled: ArcSwap<HashMap<String, String>>,
    stats: ArcSwap<HashMap<String, Arc<KeyStats>>>,
    breakers: ArcSwap<HashMap<String, Arc<Breaker>>>,
}

fn backoff(strikes: u32) -> Duration {
    let exp = strikes.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

impl Health {
    pub fn new(breaker_policy: BreakerPolicy) -> Self {
        Health {
            breaker_policy,
            ..Default::default()
        }
    }

    /// Adopts the state in a new snapshot: disabled keys as given, cooldowns merged (the later
    /// end wins, so a snapshot built a moment before a local observation cannot undo it), and
    /// counters kept for keys that still exist.
    pub fn apply_snapshot(&self, snap: &crate::state::Snapshot, now: SystemTime) {
        let mut disabled = HashMap::new();
        let mut stats = HashMap::new();
        let old_stats = self.stats.load();
        let mut incoming: Vec<((String, String), SystemTime, String)> = Vec::new();
        for keys in snap.keys_by_provider.values() {
            for k in keys {
                if let Some(reason) = &k.disabled_reason {
                    disabled.insert(k.id.clone(), reason.clone());
                }
                stats.insert(
                    k.id.clone(),
                    old_stats.get(&k.id).cloned().unwrap_or_default(),
                );
                for (model, until, class) in &k.cooldowns {
                    incoming.push(((k.id.clone(), model.clone()), *until, class.clone()));
                }
            }
        }
        self.disabled.store(Arc::new(disabled));
        self.stats.store(Arc::new(stats));
        let old_breakers = self.breakers.load();
        let breakers = snap
            .providers
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    old_breakers.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect();
        self.breakers.store(Arc::new(breakers));
        self.cooldowns.rcu(|cur| {
            let mut next: CooldownMap = cur
                .iter()
                .map(|(k, models)| {
                    let live = models
                        .iter()
                        .filter(|(_, c)| c.until > now)
                        .map(|(m, c)| (m.clone(), c.clone()))
                        .collect::<HashMap<_, _>>();
                    (k.clone(), live)
                })
                .filter(|(_, models)| !models.is_empty())
                .collect();
            for ((key, model), until, class) in &incoming {
                merge(&mut next, key, model, *until, class, 1);
            }
            next
        });
    }

    /// Applies a control-plane change to one key.
    pub fn apply_change(&self, key_id: &str, change: &KeyChange) {
        match change {
            KeyChange::Cooling {
                model,
                until,
                reason,
            } => {
                self.cooldowns.rcu(|cur| {
                    let mut next = (**cur).clone();
                    merge(&mut next, key_id, model, *until, reason, 1);
                    next
                });
            }
            KeyChange::Disabled { reason } => {
                self.disabled.rcu(|cur| {
                    let mut next = (**cur).clone();
                    next.insert(key_id.to_owned(), reason.clone());
                    next
                });
            }
            KeyChange::Active { model } => {
                let all = model.is_empty();
                self.cooldowns.rcu(|cur| {
                    let mut next = (**cur).clone();
                    if let Some(models) = next.get_mut(key_id) {
                        models.retain(|m, _| !(all || m == model));
                        if models.is_empty() {
                            next.remove(key_id);
                        }
                    }
                    next
                });
                if all {
                    self.disabled.rcu(|cur| {
                        let mut next = (**cur).clone();
                        next.remove(key_id);
                        next
                    });
                }
            }
        }
    }

    pub fn stats(&self, key_id: &str) -> Arc<KeyStats> {
        self.stats.load().get(key_id).cloned().unwrap_or_default()
    }

    /// Whether a key may be tried for `model` now.
    pub fn gate(&self, key_id: &str, model: &str, now: SystemTime) -> Gate {
        if let Some(reason) = self.disabled.load().get(key_id) {
            return Gate::Skip {
                reason: format!(
                    "disabled ({})",
                    if reason.is_empty() { "admin" } else { reason }
                ),
                until: None,
            };
        }
        let cooldowns = self.cooldowns.load();
        if let Some(c) = governing(&cooldowns, key_id, model) {
            if now < c.until {
                return Gate::Skip {
                    reason: format!(
                        "cooling until {}, {}",
                        clock(c.until),
                        c.class.replace('_', " ")
                    ),
                    until: Some(c.until),
                };
            }
            if c.probe.load(Ordering::Acquire) {
                return Gate::Skip {
                    reason: "half-open trial in progress".into(),
                    until: Some(now + Duration::from_secs(1)),
                };
            }
            return Gate::HalfOpen;
        }
        let stats = self.stats.load();
        if let Some(s) = stats.get(key_id) {
            let ex = s.exhausted_until_ms.load(Ordering::Relaxed);
            if ex > millis(now) {
                return Gate::Skip {
                    reason: format!(
                        "limit reached until {} (provider headers)",
                        clock(from_millis(ex))
                    ),
                    until: Some(from_millis(ex)),
                };
            }
        }
        Gate::Open
    }

    /// Takes the single trial slot of a key whose cooldown ended.
    pub fn try_probe(&self, key_id: &str, model: &str) -> Option<Probe> {
        let cooldowns = self.cooldowns.load();
        let c = governing(&cooldowns, key_id, model)?;
        c.probe
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Probe(c.probe.clone()))
    }

    /// Starts an attempt on a key: counts it in flight. (Its requests and tokens per minute
    /// are the fleet-wide limiter's.)
    pub fn begin(&self, key_id: &str) -> InFlight {
        let s = self.stats(key_id);
        s.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(s)
    }

    /// A success: latency, proactive exhaustion, and (after a trial) the end of the cooldown.
    /// Returns true when a cooldown ended here, so the fleet should hear of it.
    pub fn record_success(
        &self,
        key_id: &str,
        model: &str,
        latency: Duration,
        exhausted_for: Option<Duration>,
        now: SystemTime,
    ) -> bool {
        let s = self.stats(key_id);
        s.observe_latency(latency);
        if let Some(d) = exhausted_for {
            s.exhausted_until_ms
                .store(millis(now + d), Ordering::Relaxed);
        }
        let ends = |map: &CooldownMap| {
            map.get(key_id).is_some_and(|models| {
                models
                    .iter()
                    .any(|(m, c)| (m == model || m.is_empty()) && c.until <= now)
            })
        };
        // The common case, a key that was not cooling, reads and copies nothing.
        if !ends(&self.cooldowns.load()) {
            return false;
        }
        let mut ended = false;
        self.cooldowns.rcu(|cur| {
            ended = ends(cur);
            let mut next = (**cur).clone();
            if let Some(models) = next.get_mut(key_id) {
                models.retain(|m, c| !((m == model || m.is_empty()) && c.until <= now));
                if models.is_empty() {
                    next.remove(key_id);
                }
            }
            next
        });
        ended
    }

    /// A failure that blames the key. Applies it here at once and returns when the key may be
    /// used again (for the report), or `None` for classes that do not touch the key.
    pub fn record_failure(
        &self,
        key_id: &str,
        model: &str,
        verdict: &Verdict,
        now: SystemTime,
    ) -> Option<SystemTime> {
        if verdict.needs_verification() {
            // An ambiguous signal: rest the whole key briefly while the control plane verifies
            // it; it disables or long-cools the key fleet-wide only if the probe confirms.
            let until = now + VERIFY_COOLDOWN;
            self.cooldowns.rcu(|cur| {
                let mut next = (**cur).clone();
                merge(&mut next, key_id, "", until, verdict.class.as_str(), 1);
                next
            });
            return Some(until);
        }
        match verdict.class {
            FailureClass::RateLimited | FailureClass::QuotaExhausted => {
                let scope_model = if verdict.class == FailureClass::RateLimited {
                    model
                } else {
                    ""
                };
                let mut applied = now;
                self.cooldowns.rcu(|cur| {
                    let mut next = (**cur).clone();
                    let strikes = next
                        .get(key_id)
                        .and_then(|m| m.get(scope_model))
                        .map_or(0, |c| c.strikes)
                        + 1;
                    let wait = verdict.retry_after.unwrap_or(match verdict.class {
                        FailureClass::QuotaExhausted => QUOTA_COOLDOWN,
                        _ => backoff(strikes),
                    });
                    // A stated reset of zero still means "not right now".
                    applied = now + wait.max(Duration::from_millis(200));
                    merge(
                        &mut next,
                        key_id,
                        scope_model,
                        applied,
                        verdict.class.as_str(),
                        strikes,
                    );
                    next
                });
                Some(applied)
            }
            FailureClass::InvalidKey => {
                self.disabled.rcu(|cur| {
                    let mut next = (**cur).clone();
                    next.insert(key_id.to_owned(), "invalid_key".into());
                    next
                });
                Some(now)
            }
            FailureClass::Overloaded | FailureClass::ClientError => None,
        }
    }

    /// Whether the provider's circuit lets a request through; the first request after it
    /// re-opens is the trial.
    pub fn provider_allows(&self, provider_id: &str, now: SystemTime) -> Result<(), SystemTime> {
        let breakers = self.breakers.load();
        let Some(b) = breakers.get(provider_id) else {
            return Ok(());
        };
        let open_until = b.open_until_ms.load(Ordering::Relaxed);
        if open_until == 0 {
            return Ok(());
        }
        if millis(now) < open_until {
            return Err(from_millis(open_until));
        }
        // Half-open: one trial at a time.
        match b
            .trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(_) => Err(now + Duration::from_secs(1)),
        }
    }

    pub fn provider_result(&self, provider_id: &str, ok: bool, now: SystemTime) {
        let breakers = self.breakers.load();
        let Some(b) = breakers.get(provider_id) else {
            return;
        };
        b.trial.store(false, Ordering::Release);
        if ok {
            b.failures.store(0, Ordering::Relaxed);
            b.opens.store(0, Ordering::Relaxed);
            b.open_until_ms.store(0, Ordering::Relaxed);
            return;
        }
        let failures = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let reopening = b.open_until_ms.load(Ordering::Relaxed) != 0;
        if failures >= self.breaker_policy.failures || reopening {
            let opens = b.opens.fetch_add(1, Ordering::Relaxed).min(3);
            let d = self.breaker_policy.open.saturating_mul(1 << opens);
            b.open_until_ms.store(millis(now + d), Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            tracing::warn!(
                provider_id,
                open_secs = d.as_secs(),
                "provider circuit opened"
            );
        }
    }
}

fn merge(
    map: &mut CooldownMap,
    key_id: &str,
    model: &str,
    until: SystemTime,
    class: &str,
    strikes: u32,
) {
    let models = map.entry(key_id.to_owned()).or_default();
    match models.get_mut(model) {
        Some(c) if c.until >= until => {
            c.strikes = c.strikes.max(strikes);
        }
        Some(c) => {
            c.until = until;
            c.class = class.to_owned();
            c.strikes = c.strikes.max(strikes);
        }
        None => {
            models.insert(
                model.to_owned(),
                Cooling {
                    until,
                    class: class.to_owned(),
                    strikes,
                    probe: Arc::default(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(secs: Option<u64>) -> Verdict {
        Verdict::new(FailureClass::RateLimited, secs.map(Duration::from_secs))
    }

    #[test]
    fn rate_limit_cools_key_for_that_model_then_half_opens() {
        let h = Health::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let until = h.record_failure("k", "gpt", &rl(Some(10)), now).unwrap();
        assert_eq!(until, now + Duration::from_secs(10));
        assert!(matches!(h.gate("k", "gpt", now), Gate::Skip { .. }));
        assert!(
            matches!(h.gate("k", "other", now), Gate::Open),
            "scope is key x model"
        );
        let later = now + Duration::from_secs(11);
        assert!(matches!(h.gate("k", "gpt", later), Gate::HalfOpen));
        let probe = h.try_probe("k", "gpt").unwrap();
        assert!(h.try_probe("k", "gpt").is_none(), "one trial at a time");
        assert!(matches!(h.gate("k", "gpt", later), Gate::Skip { .. }));
        drop(probe);
        assert!(h.record_success("k", "gpt", Duration::from_millis(5), None, later));
        assert!(matches!(h.gate("k", "gpt", later), Gate::Open));
    }

    #[test]
    fn backoff_grows_without_a_stated_reset() {
        let h = Health::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = h.record_failure("k", "m", &rl(None), now).unwrap();
        let b = h.record_failure("k", "m", &rl(None), now).unwrap();
        assert_eq!(a, now + BASE_BACKOFF);
        assert_eq!(b, now + BASE_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn quota_cools_whole_key_and_invalid_disables() {
        let h = Health::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let q = Verdict::new(FailureClass::QuotaExhausted, None);
        h.record_failure("k", "m", &q, now);
        assert!(matches!(
            h.gate("k", "any-model", now + Duration::from_secs(3000)),
            Gate::Skip { .. }
        ));
        let bad = Verdict::new(FailureClass::InvalidKey, None);
        h.record_failure("j", "m", &bad, now);
        match h.gate("j", "m", now + Duration::from_secs(86_400)) {
            Gate::Skip { reason, until } => {
                assert!(
                    reason.contains("invalid_key") && until.is_none(),
                    "{reason}"
                );
            }
            _ => panic!("invalid key still usable"),
        }
        let client = Verdict::new(FailureClass::ClientError, None);
        assert!(h.record_failure("c", "m", &client, now).is_none());
        assert!(matches!(h.gate("c", "m", now), Gate::Open));
    }

    #[test]
    fn an_ambiguous_refusal_rests_the_key_briefly_instead_of_disabling_it() {
        let h = Health::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let unsure = Verdict::new(FailureClass::InvalidKey, None).unsure();
        assert_eq!(
            h.record_failure("k", "m", &unsure, now),
            Some(now + VERIFY_COOLDOWN)
        );
        assert!(matches!(
            h.gate("k", "other", now),
            Gate::Skip { until: Some(_), .. }
        ));
        assert!(
            !matches!(
                h.gate("k", "m", now + VERIFY_COOLDOWN + Duration::from_secs(1)),
                Gate::Skip { .. }
            ),
            "not disabled: usable again once the rest ends"
        );
        let unsure_quota = Verdict::new(FailureClass::QuotaExhausted, None).unsure();
        assert_eq!(
            h.record_failure("q", "m", &unsure_quota, now),
            Some(now + VERIFY_COOLDOWN)
        );
    }

    #[test]
    fn deltas_set_and_clear() {
        let h = Health::default();
        let until = SystemTime::now() + Duration::from_secs(60);
        h.apply_change(
            "k",
            &KeyChange::Cooling {
                model: String::new(),
                until,
                reason: "forced".into(),
            },
        );
        assert!(matches!(
            h.gate("k", "m", SystemTime::now()),
            Gate::Skip { .. }
        ));
        h.apply_change(
            "k",
            &KeyChange::Active {
                model: String::new(),
            },
        );
        assert!(matches!(h.gate("k", "m", SystemTime::now()), Gate::Open));
    }

    #[test]
    fn proactive_exhaustion() {
        let h = Health::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_020);
        h.stats.store(Arc::new(HashMap::from([(
            "k".to_owned(),
            Arc::new(KeyStats::default()),
        )])));
        h.record_success(
            "k",
            "m",
            Duration::from_millis(3),
            Some(Duration::from_secs(5)),
            now,
        );
        assert!(matches!(
            h.gate("k", "m", now + Duration::from_secs(4)),
            Gate::Skip { .. }
        ));
        assert!(matches!(
            h.gate("k", "m", now + Duration::from_secs(6)),
            Gate::Open
        ));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_recovers() {
        let h = Health::default();
        h.breakers.store(Arc::new(HashMap::from([(
            "p".to_owned(),
            Arc::new(Breaker::default()),
        )])));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..BREAKER_THRESHOLD {
            assert!(h.provider_allows("p", now).is_ok());
            h.provider_result("p", false, now);
        }
        assert!(h.provider_allows("p", now).is_err());
        let later = now + BREAKER_OPEN + Duration::from_millis(1);
        assert!(
            h.provider_allows("p", later).is_ok(),
            "trial after the open period"
        );
        assert!(h.provider_allows("p", later).is_err(), "only one trial");
        h.provider_result("p", true, later);
        assert!(h.provider_allows("p", later).is_ok());
    }
}
