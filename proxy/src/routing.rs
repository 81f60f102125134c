//! Planning a request: which (target, provider, key) candidates to try, in which order, and
//! why the others were skipped. Reads the snapshot and this proxy's key health; changes nothing
//! but the rotation cursors.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use llmhub_providers::Strategy;

use crate::health::{Gate, Health, clock};
use crate::state::{ClientKey, Provider, ProviderKey, Route, Snapshot, Target};

/// Plans a request: the candidates to try in order (per target, by priority; within a
/// target, keys ordered by the route's strategy, half-open keys first so their trial happens
/// promptly), one line for every candidate skipped, and the earliest moment a skipped key or
/// provider recovers.
pub fn plan<'a>(
    snap: &'a Snapshot,
    route: &'a Route,
    client: &ClientKey,
    health: &Health,
    now: SystemTime,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let turn = snap.next_turn();
    for target in weighted_targets(&route.targets, turn) {
        let Some(provider) = snap.providers.get(&target.provider_id) else {
            continue;
        };
        if !provider.enabled {
            plan.skipped
                .push(format!("provider {}: disabled", provider.name));
            continue;
        }
        if let Err(until) = health.provider_allows(&provider.id, now) {
            plan.skipped.push(format!(
                "provider {}: circuit open until {}",
                provider.name,
                clock(until)
            ));
            plan.recovers(Some(until));
            continue;
        }
        let keys = snap
            .keys_by_provider
            .get(&provider.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (open, half_open) = usable_keys(keys, target, client, health, now, &mut plan);
        let key_turn = target.cursor.fetch_add(1, Ordering::Relaxed);
        let ordered = order(open, route.strategy, health, key_turn);
        for (key, half_open) in half_open
            .into_iter()
            .map(|k| (k, true))
            .chain(ordered.into_iter().map(|k| (k, false)))
        {
            plan.candidates.push(Candidate {
                target,
                provider,
                key: key.clone(),
                half_open,
            });
        }
    }
    plan
}

type Keys<'k> = Vec<&'k Arc<ProviderKey>>;

/// The target's keys this client may use and that are not resting: (open, half-open). Every
/// other key of the client's gets a skip line and, when it recovers, counts for `earliest`.
fn usable_keys<'k>(
    keys: &'k [Arc<ProviderKey>],
    target: &Target,
    client: &ClientKey,
    health: &Health,
    now: SystemTime,
    plan: &mut Plan<'_>,
) -> (Keys<'k>, Keys<'k>) {
    let (mut open, mut half_open) = (Vec::new(), Vec::new());
    for k in keys {
        let owned = match &k.owner_user_id {
            Some(owner) => owner == &client.user_id,
            None => client.use_shared_pool,
        };
        if !owned {
            continue;
        }
        if !k.allowed_models.is_empty()
            && !k.allowed_models.iter().any(|m| m == &target.upstream_model)
        {
            plan.skipped.push(format!(
                "key {}: not allowed for {}",
                k.fingerprint, target.upstream_model
            ));
            continue;
        }
        match health.gate(&k.id, &target.upstream_model, now) {
            Gate::Open => open.push(k),
            Gate::HalfOpen => half_open.push(k),
            Gate::Skip { reason, until } => {
                plan.skipped
                    .push(format!("key {}: {reason}", k.fingerprint));
                plan.recovers(until);
            }
        }
    }
    (open, half_open)
}

/// Targets in priority order; targets sharing a priority take turns in proportion to their
/// weights (the others follow as fallbacks).
fn weighted_targets(targets: &[Target], turn: usize) -> Vec<&Target> {
    let mut out = Vec::with_capacity(targets.len());
    let mut i = 0;
    while i < targets.len() {
        let mut j = i;
        while j < targets.len() && targets[j].priority == targets[i].priority {
            j += 1;
        }
        let group = &targets[i..j];
        let total: usize = group.iter().map(|t| t.weight as usize).sum();
        let mut slot = turn % total.max(1);
        let mut first = 0;
        for (k, t) in group.iter().enumerate() {
            if slot < t.weight as usize {
                first = k;
                break;
            }
            slot -= t.weight as usize;
        }
        out.extend((0..group.len()).map(|k| &group[(first + k) % group.len()]));
        i = j;
    }
    out
}

/// Orders usable keys by the route's strategy.
fn order<'k>(
    keys: Vec<&'k Arc<ProviderKey>>,
    strategy: Strategy,
    health: &Health,
    turn: usize,
) -> Vec<&'k Arc<ProviderKey>> {
    if keys.is_empty() {
        return keys;
    }
    // Weighted round-robin start, also the tie-breaker for the other strategies.
    let total: usize = keys.iter().map(|k| k.weight as usize).sum();
    let mut slot = turn % total.max(1);
    let mut first = 0;
    for (i, k) in keys.iter().enumerate() {
        if slot < k.weight as usize {
            first = i;
            break;
        }
        slot -= k.weight as usize;
    }
    let mut rotated: Vec<&Arc<ProviderKey>> = (0..keys.len())
        .map(|i| keys[(first + i) % keys.len()])
        .collect();
    match strategy {
        Strategy::Weighted => {}
        Strategy::LeastInFlight => rotated.sort_by_key(|k| health.stats(&k.id).inflight()),
        Strategy::Latency => rotated.sort_by_key(|k| health.stats(&k.id).ewma_us()),
    }
    rotated
}

/// One way to serve a request: a route target, its provider, and a key for it.
pub struct Candidate<'a> {
    pub target: &'a Target,
    pub provider: &'a Provider,
    pub key: Arc<ProviderKey>,
    /// The key's cooldown ended: this attempt is its trial (take the probe first).
    pub half_open: bool,
}

#[derive(Default)]
pub struct Plan<'a> {
    pub candidates: Vec<Candidate<'a>>,
    pub skipped: Vec<String>,
    pub earliest: Option<SystemTime>,
}

impl Plan<'_> {
    /// Notes when something skipped becomes usable again.
    fn recovers(&mut self, at: Option<SystemTime>) {
        if let Some(t) = at {
            self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::sample;
    use llmhub_providers::{FailureClass, Verdict};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn weighted_round_robin_covers_keys_by_weight() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let client = s.authenticate("lh-good", SystemTime::now()).unwrap();
        let route = &s.routes["gpt-x"];
        let health = Health::default();
        let mut firsts = HashMap::new();
        for _ in 0..400 {
            let plan = super::plan(&s, route, client, &health, SystemTime::now());
            assert_eq!(plan.candidates.len(), 2, "every usable key is a candidate");
            *firsts.entry(plan.candidates[0].key.id.clone()).or_insert(0) += 1;
        }
        assert_eq!(firsts["k1"], 100);
        assert_eq!(firsts["k2"], 300);
    }

    #[test]
    fn shared_pool_respects_client_flag_and_owner() {
        let mut m = sample();
        m.client_keys[0].use_shared_pool = false;
        m.provider_keys[0].owner_user_id = "someone-else".into();
        let s = Snapshot::from_proto(m).unwrap();
        let client = s.authenticate("lh-good", SystemTime::now()).unwrap();
        let plan = super::plan(
            &s,
            &s.routes["gpt-x"],
            client,
            &Health::default(),
            SystemTime::now(),
        );
        assert!(plan.candidates.is_empty());
    }

    #[test]
    fn cooling_keys_are_skipped_with_a_reason_and_recovery_time() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let client = s.authenticate("lh-good", SystemTime::now()).unwrap();
        let health = Health::default();
        health.apply_snapshot(&s, SystemTime::now());
        let now = SystemTime::now();
        let v = Verdict::new(
            FailureClass::RateLimited,
            Some(std::time::Duration::from_secs(30)),
        );
        health.record_failure("k1", "up-x", &v, now);
        let plan = super::plan(&s, &s.routes["gpt-x"], client, &health, now);
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].key.id, "k2");
        assert!(
            plan.skipped[0].contains("fp_1") && plan.skipped[0].contains("cooling until"),
            "{:?}",
            plan.skipped
        );
        health.record_failure("k2", "up-x", &v, now);
        let plan = super::plan(&s, &s.routes["gpt-x"], client, &health, now);
        assert!(plan.candidates.is_empty());
        let wait = plan.earliest.unwrap().duration_since(now).unwrap();
        assert!(
            wait <= std::time::Duration::from_secs(30)
                && wait >= std::time::Duration::from_secs(29)
        );
    }

    #[test]
    fn equal_priority_targets_share_by_weight_and_fall_back() {
        let t = |p: &str, prio, w| Target {
            provider_id: p.into(),
            upstream_model: "m".into(),
            weight: w,
            priority: prio,
            cursor: AtomicUsize::new(0),
        };
        let targets = vec![t("a", 0, 3), t("b", 0, 1), t("c", 1, 1)];
        let mut firsts = HashMap::new();
        for turn in 0..400 {
            let order: Vec<&str> = weighted_targets(&targets, turn)
                .iter()
                .map(|t| t.provider_id.as_str())
                .collect();
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], "c", "lower priority always last");
            *firsts.entry(order[0].to_owned()).or_insert(0) += 1;
        }
        assert_eq!((firsts["a"], firsts["b"]), (300, 100));
    }

    #[test]
    fn least_inflight_prefers_idle_keys() {
        let mut m = sample();
        m.routes[0].strategy = "least_inflight".into();
        let s = Snapshot::from_proto(m).unwrap();
        let client = s.authenticate("lh-good", SystemTime::now()).unwrap();
        let health = Health::default();
        health.apply_snapshot(&s, SystemTime::now());
        let _busy = (health.begin("k2"), health.begin("k2"));
        for _ in 0..10 {
            let plan = super::plan(&s, &s.routes["gpt-x"], client, &health, SystemTime::now());
            assert_eq!(plan.candidates[0].key.id, "k1");
        }
    }
}
