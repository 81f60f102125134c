//! The proxy's view of the world: an immutable snapshot built from the control plane's message,
//! validated whole before it replaces the previous one behind an `ArcSwap`.
//!
//! Requests do one atomic load of the current snapshot; nothing on the request path locks or
//! calls out to the control plane.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::health::{Gate, Health};
use hmac::{Hmac, KeyInit, Mac};
use llmhub_proto::v1 as pb;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot version must be positive")]
    NoVersion,
    #[error("client-key hash secret is missing or too short")]
    HashSecret,
    #[error("client key {0}: hash must be 32 bytes")]
    ClientKeyHash(String),
    #[error("provider {0}: base_url is not an http(s) URL")]
    BaseUrl(String),
    #[error("route {0}: target names unknown provider {1}")]
    UnknownProvider(String, String),
    #[error("provider key {0}: unknown provider {1}")]
    KeyProvider(String, String),
    #[error("provider key {0}: secret is not valid UTF-8 header text")]
    KeySecret(String),
}

#[derive(Debug)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: pb::ProviderKind,
    pub base_url: String,
    pub enabled: bool,
    pub request_timeout: std::time::Duration,
    /// Azure OpenAI `api-version`.
    pub api_version: String,
}

/// A provider key as the proxy holds it: the secret zeroizes on drop and prints as `[REDACTED]`.
pub struct ProviderKey {
    pub id: String,
    pub provider_id: String,
    pub owner_user_id: Option<String>,
    pub secret: SecretString,
    pub fingerprint: String,
    pub weight: u32,
    pub allowed_models: Vec<String>,
    /// Why the control plane disabled the key, when it did.
    pub disabled_reason: Option<String>,
    /// Cooldowns in force when the snapshot was built: (model or "" for the whole key, until, class).
    pub cooldowns: Vec<(String, SystemTime, String)>,
    pub rpm_limit: u32,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct ClientKey {
    pub id: String,
    pub user_id: String,
    pub prefix: String,
    pub allowed_models: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub use_shared_pool: bool,
}

impl ClientKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

#[derive(Debug)]
pub struct Target {
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
    /// Round-robin cursor over this target's keys, separate from the route's target rotation so
    /// the two do not fall into step.
    pub cursor: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Round-robin in proportion to key weights.
    Weighted,
    /// The key with the fewest requests in flight on this proxy.
    LeastInFlight,
    /// The key with the lowest latency EWMA (untried keys first, to learn them).
    Latency,
}

#[derive(Debug)]
pub struct Route {
    pub public_model: String,
    /// Sorted by priority, lowest first.
    pub targets: Vec<Target>,
    pub strategy: Strategy,
}

pub struct Snapshot {
    pub version: u64,
    hash_secret: Zeroizing<Vec<u8>>,
    client_keys: HashMap<[u8; 32], ClientKey>,
    /// By public name and alias (aliases share the route).
    pub routes: HashMap<String, Arc<Route>>,
    pub providers: HashMap<String, Provider>,
    pub keys_by_provider: HashMap<String, Vec<Arc<ProviderKey>>>,
    /// Round-robin cursor; relaxed ordering is enough, it only spreads load.
    cursor: AtomicUsize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("routes", &self.routes.len())
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

fn to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(t.nanos).ok()?))
}

impl Snapshot {
    /// Validates and converts a snapshot message. The message's secret buffers are wiped as they
    /// are moved into zeroizing types.
    pub fn from_proto(mut msg: pb::Snapshot) -> Result<Snapshot, SnapshotError> {
        if msg.version == 0 {
            return Err(SnapshotError::NoVersion);
        }
        if msg.client_key_hash_secret.len() < 16 {
            return Err(SnapshotError::HashSecret);
        }
        let hash_secret = Zeroizing::new(std::mem::take(&mut msg.client_key_hash_secret));

        let mut providers = HashMap::new();
        for p in msg.providers.drain(..) {
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(SnapshotError::BaseUrl(p.id));
            }
            let kind = pb::ProviderKind::try_from(p.kind).unwrap_or(pb::ProviderKind::Unspecified);
            providers.insert(
                p.id.clone(),
                Provider {
                    request_timeout: std::time::Duration::from_millis(u64::from(
                        p.request_timeout_ms.max(1000),
                    )),
                    id: p.id,
                    name: p.name,
                    kind,
                    base_url: p.base_url,
                    enabled: p.enabled,
                    api_version: p.api_version,
                },
            );
        }

        let mut keys_by_provider: HashMap<String, Vec<Arc<ProviderKey>>> = HashMap::new();
        let mut failure = None;
        for mut k in msg.provider_keys.drain(..) {
            let raw = std::mem::take(&mut k.secret);
            let secret = match String::from_utf8(raw) {
                Ok(s) => SecretString::from(s),
                Err(e) => {
                    e.into_bytes().zeroize();
                    failure.get_or_insert(SnapshotError::KeySecret(k.id.clone()));
                    continue;
                }
            };
            if failure.is_some() {
                continue;
            }
            if !providers.contains_key(&k.provider_id) {
                failure = Some(SnapshotError::KeyProvider(k.id, k.provider_id));
                continue;
            }
            if http::HeaderValue::from_str(secret.expose_secret()).is_err() {
                failure = Some(SnapshotError::KeySecret(k.id));
                continue;
            }
            let disabled_reason = k
                .state
                .as_ref()
                .filter(|s| s.status == pb::KeyStatus::Disabled as i32)
                .map(|s| s.reason.clone());
            let cooldowns = k
                .cooldowns
                .iter()
                .filter_map(|c| {
                    let until = to_system_time(c.until.as_ref()?)?;
                    Some((c.model.clone(), until, c.reason.clone()))
                })
                .collect();
            keys_by_provider
                .entry(k.provider_id.clone())
                .or_default()
                .push(Arc::new(ProviderKey {
                    id: k.id,
                    provider_id: k.provider_id,
                    owner_user_id: (!k.owner_user_id.is_empty()).then_some(k.owner_user_id),
                    secret,
                    fingerprint: k.fingerprint,
                    weight: k.weight.max(1),
                    allowed_models: k.allowed_models,
                    disabled_reason,
                    cooldowns,
                    rpm_limit: k.rpm_limit,
                }));
        }
        if let Some(e) = failure {
            return Err(e);
        }

        let mut client_keys = HashMap::new();
        for c in msg.client_keys.drain(..) {
            let hash: [u8; 32] = c
                .key_hash
                .as_slice()
                .try_into()
                .map_err(|_| SnapshotError::ClientKeyHash(c.id.clone()))?;
            if !c.enabled {
                continue;
            }
            client_keys.insert(
                hash,
                ClientKey {
                    expires_at: c.expires_at.as_ref().and_then(to_system_time),
                    id: c.id,
                    user_id: c.user_id,
                    prefix: c.prefix,
                    allowed_models: c.allowed_models,
                    use_shared_pool: c.use_shared_pool,
                },
            );
        }

        let mut routes = HashMap::new();
        for r in msg.routes.drain(..) {
            let mut targets: Vec<Target> = Vec::with_capacity(r.targets.len());
            for t in r.targets {
                if !providers.contains_key(&t.provider_id) {
                    return Err(SnapshotError::UnknownProvider(
                        r.public_model,
                        t.provider_id,
                    ));
                }
                targets.push(Target {
                    provider_id: t.provider_id,
                    upstream_model: t.upstream_model,
                    weight: t.weight.max(1),
                    priority: t.priority,
                    cursor: AtomicUsize::new(0),
                });
            }
            targets.sort_by_key(|t| t.priority);
            let strategy = match r.strategy.as_str() {
                "least_inflight" => Strategy::LeastInFlight,
                "latency" => Strategy::Latency,
                _ => Strategy::Weighted,
            };
            let route = Arc::new(Route {
                public_model: r.public_model.clone(),
                targets,
                strategy,
            });
            for name in std::iter::once(r.public_model).chain(r.aliases) {
                routes.insert(name, route.clone());
            }
        }

        Ok(Snapshot {
            version: msg.version,
            hash_secret,
            client_keys,
            routes,
            providers,
            keys_by_provider,
            cursor: AtomicUsize::new(0),
        })
    }

    /// Looks up a presented client key by its keyed hash: the same work for every input, and the
    /// key itself is never stored or compared.
    pub fn authenticate(&self, presented: &str) -> Option<&ClientKey> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.hash_secret)
            .expect("HMAC accepts keys of any length");
        mac.update(presented.as_bytes());
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        let key = self.client_keys.get(&digest)?;
        if key.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return None;
        }
        Some(key)
    }

    /// Public models the client key may call, sorted.
    pub fn models_for(&self, client: &ClientKey) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .routes
            .keys()
            .map(String::as_str)
            .filter(|m| client.may_use(m))
            .collect();
        v.sort_unstable();
        v
    }

    /// Plans a request: the candidates to try in order (per target, by priority; within a
    /// target, keys ordered by the route's strategy, half-open keys first so their trial happens
    /// promptly), one line for every candidate skipped, and the earliest moment a skipped key or
    /// provider recovers.
    pub fn plan<'a>(
        &'a self,
        route: &'a Route,
        client: &ClientKey,
        health: &Health,
        now: SystemTime,
    ) -> Plan<'a> {
        let mut plan = Plan::default();
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        let earliest = |t: Option<SystemTime>, plan: &mut Plan<'a>| {
            if let Some(t) = t {
                plan.earliest = Some(plan.earliest.map_or(t, |e| e.min(t)));
            }
        };
        for target in weighted_targets(&route.targets, turn) {
            let Some(provider) = self.providers.get(&target.provider_id) else {
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
                    crate::health::clock(until)
                ));
                earliest(Some(until), &mut plan);
                continue;
            }
            let keys = self
                .keys_by_provider
                .get(&provider.id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut open: Vec<&Arc<ProviderKey>> = Vec::new();
            let mut half_open: Vec<&Arc<ProviderKey>> = Vec::new();
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
                match health.gate(&k.id, &target.upstream_model, k.rpm_limit, now) {
                    Gate::Open => open.push(k),
                    Gate::HalfOpen => half_open.push(k),
                    Gate::Skip { reason, until } => {
                        plan.skipped
                            .push(format!("key {}: {reason}", k.fingerprint));
                        earliest(until, &mut plan);
                    }
                }
            }
            let key_turn = target.cursor.fetch_add(1, Ordering::Relaxed);
            let ordered = order(open, route.strategy, health, key_turn);
            for k in half_open
                .into_iter()
                .map(|k| (k, true))
                .chain(ordered.into_iter().map(|k| (k, false)))
            {
                plan.candidates.push(Candidate {
                    target,
                    provider,
                    key: k.0.clone(),
                    half_open: k.1,
                });
            }
        }
        plan
    }
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

/// The current snapshot, swapped atomically as new ones arrive.
#[derive(Default)]
pub struct SnapshotCell {
    inner: ArcSwapOption<Snapshot>,
}

impl SnapshotCell {
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.inner.load_full()
    }

    pub fn version(&self) -> u64 {
        self.inner.load().as_ref().map_or(0, |s| s.version)
    }

    /// Installs `next` unless it is older than what is already served.
    pub fn store(&self, next: Snapshot) -> bool {
        let current = self.version();
        if next.version < current {
            return false;
        }
        self.inner.store(Some(Arc::new(next)));
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn hash(secret: &[u8], key: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn sample() -> pb::Snapshot {
        let secret = vec![9u8; 32];
        pb::Snapshot {
            version: 7,
            client_key_hash_secret: secret.clone(),
            providers: vec![pb::Provider {
                id: "p1".into(),
                name: "mock".into(),
                kind: pb::ProviderKind::OpenaiCompatible as i32,
                base_url: "http://127.0.0.1:9/v1".into(),
                enabled: true,
                request_timeout_ms: 5000,
                api_version: String::new(),
            }],
            provider_keys: vec![
                pb::ProviderKey {
                    id: "k1".into(),
                    provider_id: "p1".into(),
                    owner_user_id: "u1".into(),
                    secret: b"sk-one".to_vec(),
                    fingerprint: "fp_1".into(),
                    weight: 1,
                    ..Default::default()
                },
                pb::ProviderKey {
                    id: "k2".into(),
                    provider_id: "p1".into(),
                    owner_user_id: String::new(),
                    secret: b"sk-two".to_vec(),
                    fingerprint: "fp_2".into(),
                    weight: 3,
                    ..Default::default()
                },
            ],
            client_keys: vec![pb::ClientKey {
                id: "c1".into(),
                user_id: "u1".into(),
                key_hash: hash(&secret, "lh-good"),
                prefix: "lh-good".into(),
                enabled: true,
                use_shared_pool: true,
                ..Default::default()
            }],
            routes: vec![pb::Route {
                public_model: "gpt-x".into(),
                strategy: "weighted".into(),
                aliases: vec!["gpt-alias".into()],
                targets: vec![pb::RouteTarget {
                    provider_id: "p1".into(),
                    upstream_model: "up-x".into(),
                    weight: 1,
                    priority: 0,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn aliases_resolve_to_the_same_route() {
        let s = Snapshot::from_proto(sample()).unwrap();
        assert!(Arc::ptr_eq(&s.routes["gpt-x"], &s.routes["gpt-alias"]));
    }

    #[test]
    fn authenticates_by_keyed_hash() {
        let s = Snapshot::from_proto(sample()).unwrap();
        assert_eq!(s.authenticate("lh-good").unwrap().id, "c1");
        assert!(s.authenticate("lh-bad").is_none());
        assert!(s.authenticate("").is_none());
    }

    #[test]
    fn rejects_invalid_snapshots() {
        let mut m = sample();
        m.version = 0;
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::NoVersion
        );
        let mut m = sample();
        m.routes[0].targets[0].provider_id = "nope".into();
        assert!(matches!(
            Snapshot::from_proto(m),
            Err(SnapshotError::UnknownProvider(..))
        ));
        let mut m = sample();
        m.client_key_hash_secret.clear();
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::HashSecret
        );
        let mut m = sample();
        m.provider_keys[0].secret = b"bad\nvalue".to_vec();
        assert!(matches!(
            Snapshot::from_proto(m),
            Err(SnapshotError::KeySecret(_))
        ));
    }

    #[test]
    fn weighted_round_robin_covers_keys_by_weight() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let client = s.authenticate("lh-good").unwrap();
        let route = &s.routes["gpt-x"];
        let health = Health::default();
        let mut firsts = HashMap::new();
        for _ in 0..400 {
            let plan = s.plan(route, client, &health, SystemTime::now());
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
        let client = s.authenticate("lh-good").unwrap();
        let plan = s.plan(
            &s.routes["gpt-x"],
            client,
            &Health::default(),
            SystemTime::now(),
        );
        assert!(plan.candidates.is_empty());
    }

    #[test]
    fn cell_keeps_newer_snapshot() {
        let cell = SnapshotCell::default();
        assert!(cell.store(Snapshot::from_proto(sample()).unwrap()));
        let mut older = sample();
        older.version = 3;
        assert!(!cell.store(Snapshot::from_proto(older).unwrap()));
        assert_eq!(cell.version(), 7);
    }
}

#[cfg(test)]
mod plan_tests {
    use super::tests::sample;
    use super::*;
    use crate::classify::{FailureClass, Verdict};
    use std::collections::HashMap;

    #[test]
    fn cooling_keys_are_skipped_with_a_reason_and_recovery_time() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let client = s.authenticate("lh-good").unwrap();
        let health = Health::default();
        health.apply_snapshot(&s);
        let now = SystemTime::now();
        let v = Verdict {
            class: FailureClass::RateLimited,
            retry_after: Some(std::time::Duration::from_secs(30)),
        };
        health.record_failure("k1", "up-x", &v, now);
        let plan = s.plan(&s.routes["gpt-x"], client, &health, now);
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].key.id, "k2");
        assert!(
            plan.skipped[0].contains("fp_1") && plan.skipped[0].contains("cooling until"),
            "{:?}",
            plan.skipped
        );
        health.record_failure("k2", "up-x", &v, now);
        let plan = s.plan(&s.routes["gpt-x"], client, &health, now);
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
        let client = s.authenticate("lh-good").unwrap();
        let health = Health::default();
        health.apply_snapshot(&s);
        let _busy = (
            health.begin("k2", SystemTime::now()),
            health.begin("k2", SystemTime::now()),
        );
        for _ in 0..10 {
            let plan = s.plan(&s.routes["gpt-x"], client, &health, SystemTime::now());
            assert_eq!(plan.candidates[0].key.id, "k1");
        }
    }
}
