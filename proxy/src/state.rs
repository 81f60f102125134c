//! The proxy's view of the world: an immutable snapshot built from the control plane's message,
//! validated whole before it replaces the previous one behind an `ArcSwap`.
//!
//! Requests do one atomic load of the current snapshot; nothing on the request path locks or
//! calls out to the control plane.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use llmhub_providers::{BudgetPeriod, Kind, Op, Serving, Strategy};

use arc_swap::ArcSwapOption;

use hmac::{Hmac, KeyInit, Mac};
use llmhub_proto::v1 as pb;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::usage::{Price, Prices};

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
    #[error("route {0}: unknown routing strategy")]
    Strategy(String),
    #[error("client key {0}: previous key hash must be 32 bytes and come with its end time")]
    PreviousKeyHash(String),
    #[error("client key {0}: a key hash is listed twice")]
    DuplicateKeyHash(String),
    #[error("{0}: invalid budget ({1})")]
    Budget(String, &'static str),
    #[error("user limits: user {0:?} is listed twice or has no id")]
    UserLimits(String),
}

#[derive(Debug)]
pub struct Provider {
    pub id: String,
    pub name: String,
    /// `None` for a kind this build does not know: such a provider serves nothing.
    pub kind: Option<Kind>,
    pub base_url: String,
    /// The base URL's host, parsed once here so the egress check per attempt parses nothing.
    pub host: String,
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
    /// Fleet-wide requests and tokens per minute (0 = no limit), enforced by the limiter.
    pub rpm_limit: u32,
    pub tpm_limit: u32,
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
    /// The owner's limits on this key (the user's own limits, in [`Snapshot::user_limits`],
    /// apply as well).
    pub limits: Limits,
    pub budget: Option<Budget>,
}

/// Fleet-wide limits; `None` is no limit (0 on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<NonZeroU32>,
    pub tpm: Option<NonZeroU32>,
    pub max_concurrent: Option<NonZeroU32>,
}

impl Limits {
    fn from_wire(rpm: u32, tpm: u32, max_concurrent: u32) -> Self {
        Limits {
            rpm: NonZeroU32::new(rpm),
            tpm: NonZeroU32::new(tpm),
            max_concurrent: NonZeroU32::new(max_concurrent),
        }
    }
}

/// A spending cap in nano-US-dollars per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit_nanos: u64,
    pub period: BudgetPeriod,
    /// Start of the period current when the control plane built the snapshot.
    pub period_start: SystemTime,
    /// After it the budget no longer applies.
    pub expires_at: Option<SystemTime>,
    /// What the control plane's ledger knew was spent in the period starting at
    /// `period_start` (for a later period: nothing yet).
    pub spent_nanos: u64,
}

impl Budget {
    /// Whether the budget still applies at `now`.
    pub fn applies_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }

    /// Start of the period that contains `now` by this proxy's clock. It is `period_start`
    /// until the next boundary, and moves on at the boundary itself, before the control plane's
    /// next snapshot (published at the boundary) arrives.
    pub fn period_start_at(&self, now: SystemTime) -> SystemTime {
        let (Some(now_utc), Some(anchor)) = (to_utc(now), to_utc(self.period_start)) else {
            return self.period_start;
        };
        let start = SystemTime::from(self.period.start_at(now_utc, anchor));
        // Never before the published start (a clock behind the control plane's).
        start.max(self.period_start)
    }

    /// When the period containing `now` ends (or the budget expires, if sooner); `None` for a
    /// budget that neither starts over nor expires.
    pub fn period_end_at(&self, now: SystemTime) -> Option<SystemTime> {
        let next = to_utc(now)
            .and_then(|n| self.period.next_start(n))
            .map(SystemTime::from);
        match (next, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What the ledger knew was spent in the period containing `now`: the published figure for
    /// the published period, nothing for a later one.
    pub fn spent_at(&self, now: SystemTime) -> u64 {
        if self.period_start_at(now) == self.period_start {
            self.spent_nanos
        } else {
            0
        }
    }

    fn from_wire(b: &pb::Budget, owner: impl Fn() -> String) -> Result<Budget, SnapshotError> {
        let bad = |why| SnapshotError::Budget(owner(), why);
        let period = b.budget_period().ok_or_else(|| bad("unknown period"))?;
        if b.limit_nanos == 0 {
            return Err(bad("zero limit"));
        }
        let period_start = b
            .period_start
            .as_ref()
            .and_then(to_system_time)
            .ok_or_else(|| bad("no period start"))?;
        Ok(Budget {
            limit_nanos: b.limit_nanos,
            period,
            period_start,
            expires_at: b.expires_at.as_ref().and_then(to_system_time),
            spent_nanos: b.spent_nanos,
        })
    }
}

fn to_utc(t: SystemTime) -> Option<chrono::DateTime<chrono::Utc>> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    chrono::DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())
}

/// A user's limits and budget, across all of the user's client keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub limits: Limits,
    pub budget: Option<Budget>,
}

/// What a presented key's hash finds: the key, and for the hash a rotation replaced, when that
/// hash stops working.
#[derive(Debug)]
struct Presented {
    key: Arc<ClientKey>,
    /// `Some` for a replaced secret during its grace period.
    valid_until: Option<SystemTime>,
}

impl Provider {
    /// How this provider serves `op`, if it can.
    pub fn serving(&self, op: Op) -> Option<Serving> {
        self.kind.and_then(|k| k.serving(op))
    }
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
    /// By keyed hash: every key's current hash, and during a rotation's grace its replaced hash.
    client_keys: HashMap<[u8; 32], Presented>,
    /// Limits and budgets of users that have any, by user id.
    users: HashMap<String, UserLimits>,
    /// By public name and alias (aliases share the route).
    pub routes: HashMap<String, Arc<Route>>,
    pub providers: HashMap<String, Provider>,
    pub keys_by_provider: HashMap<String, Vec<Arc<ProviderKey>>>,
    /// Prices per model, for each request's cost.
    pub prices: Prices,
    /// Round-robin cursor; relaxed ordering is enough, it only spreads load.
    cursor: AtomicUsize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("routes", &self.routes.len())
            .field("providers", &self.providers.len())
            .field("prices", &self.prices.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
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
            let kind = pb::ProviderKind::try_from(p.kind)
                .ok()
                .and_then(pb::ProviderKind::kind);
            let host = url::Url::parse(&p.base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .ok_or_else(|| SnapshotError::BaseUrl(p.id.clone()))?;
            providers.insert(
                p.id.clone(),
                Provider {
                    request_timeout: std::time::Duration::from_millis(u64::from(
                        p.request_timeout_ms.max(1000),
                    )),
                    id: p.id,
                    name: p.name,
                    kind,
                    host,
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
                    tpm_limit: k.tpm_limit,
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
            // A replaced secret: its hash and when it stops working come together or not at all.
            let previous = match (c.previous_key_hash.is_empty(), &c.previous_valid_until) {
                (true, _) => None,
                (false, Some(until)) => Some((
                    <[u8; 32]>::try_from(c.previous_key_hash.as_slice())
                        .map_err(|_| SnapshotError::PreviousKeyHash(c.id.clone()))?,
                    to_system_time(until)
                        .ok_or_else(|| SnapshotError::PreviousKeyHash(c.id.clone()))?,
                )),
                (false, None) => return Err(SnapshotError::PreviousKeyHash(c.id)),
            };
            let budget = c
                .budget
                .as_ref()
                .map(|b| Budget::from_wire(b, || format!("client key {}", c.id)))
                .transpose()?;
            if !c.enabled {
                continue;
            }
            let key = Arc::new(ClientKey {
                expires_at: c.expires_at.as_ref().and_then(to_system_time),
                limits: Limits::from_wire(c.rpm_limit, c.tpm_limit, c.max_concurrent),
                budget,
                id: c.id,
                user_id: c.user_id,
                prefix: c.prefix,
                allowed_models: c.allowed_models,
                use_shared_pool: c.use_shared_pool,
            });
            let entries =
                std::iter::once((hash, None)).chain(previous.map(|(h, until)| (h, Some(until))));
            for (h, valid_until) in entries {
                let entry = Presented {
                    key: key.clone(),
                    valid_until,
                };
                // Two keys answering to one hash would make authentication ambiguous.
                if client_keys.insert(h, entry).is_some() {
                    return Err(SnapshotError::DuplicateKeyHash(key.id.clone()));
                }
            }
        }

        let mut users = HashMap::new();
        for u in msg.users.drain(..) {
            let budget = u
                .budget
                .as_ref()
                .map(|b| Budget::from_wire(b, || format!("user {}", u.user_id)))
                .transpose()?;
            let limits = UserLimits {
                limits: Limits::from_wire(u.rpm_limit, u.tpm_limit, u.max_concurrent),
                budget,
            };
            if u.user_id.is_empty() || users.contains_key(&u.user_id) {
                return Err(SnapshotError::UserLimits(u.user_id));
            }
            users.insert(u.user_id, limits);
        }

        let mut routes = HashMap::new();
        for r in msg.routes.drain(..) {
            let strategy = r
                .strategy()
                .ok_or_else(|| SnapshotError::Strategy(r.public_model.clone()))?;
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
            let route = Arc::new(Route {
                public_model: r.public_model.clone(),
                targets,
                strategy,
            });
            for name in std::iter::once(r.public_model).chain(r.aliases) {
                routes.insert(name, route.clone());
            }
        }

        let mut prices = Prices::default();
        for p in &msg.prices {
            if p.model.is_empty() {
                continue;
            }
            prices.insert(
                &p.model,
                Price {
                    input: p.input_nanos_per_token,
                    output: p.output_nanos_per_token,
                    cached_input: p.cached_input_nanos_per_token,
                },
            );
        }

        Ok(Snapshot {
            version: msg.version,
            hash_secret,
            client_keys,
            users,
            routes,
            providers,
            keys_by_provider,
            prices,
            cursor: AtomicUsize::new(0),
        })
    }

    /// Looks up a presented client key by its keyed hash: the same work for every input, and the
    /// key itself is never stored or compared. A secret replaced by a rotation authenticates as
    /// its key until its grace ends by this proxy's clock (`now`), then never again.
    pub fn authenticate(&self, presented: &str, now: SystemTime) -> Option<&ClientKey> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.hash_secret)
            .expect("HMAC accepts keys of any length");
        mac.update(presented.as_bytes());
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        let found = self.client_keys.get(&digest)?;
        if found.valid_until.is_some_and(|t| t <= now) {
            return None;
        }
        let key = &*found.key;
        if key.expires_at.is_some_and(|t| t <= now) {
            return None;
        }
        Some(key)
    }

    /// The limits and budget of `user_id` (none when the user has none).
    pub fn user_limits(&self, user_id: &str) -> Option<&UserLimits> {
        self.users.get(user_id)
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

    /// A turn for the route rotation; relaxed ordering is enough, it only spreads load.
    pub fn next_turn(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }
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
        assert_eq!(
            s.authenticate("lh-good", SystemTime::now()).unwrap().id,
            "c1"
        );
        assert!(s.authenticate("lh-bad", SystemTime::now()).is_none());
        assert!(s.authenticate("", SystemTime::now()).is_none());
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
    fn unknown_strategies_and_kinds() {
        let mut m = sample();
        m.routes[0].strategy = "random".into();
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::Strategy("gpt-x".into()),
            "an unknown strategy is refused, not silently weighted"
        );
        let mut m = sample();
        m.routes[0].strategy = "latency".into();
        m.routes[0].routing_strategy = pb::RoutingStrategy::LeastInflight as i32;
        let s = Snapshot::from_proto(m).unwrap();
        assert_eq!(
            s.routes["gpt-x"].strategy,
            Strategy::LeastInFlight,
            "the enum wins"
        );
        let mut m = sample();
        m.providers[0].kind = 42;
        let s = Snapshot::from_proto(m).unwrap();
        assert_eq!(s.providers["p1"].kind, None);
        assert_eq!(s.providers["p1"].serving(Op::ChatCompletions), None);
    }

    #[test]
    fn expired_client_keys_do_not_authenticate() {
        let mut m = sample();
        m.client_keys[0].expires_at = Some(prost_types::Timestamp {
            seconds: 1_000,
            nanos: 0,
        });
        let s = Snapshot::from_proto(m).unwrap();
        let before = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(999);
        assert!(s.authenticate("lh-good", before).is_some());
        assert!(s.authenticate("lh-good", SystemTime::now()).is_none());
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    fn wire_ts(secs: u64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: i64::try_from(secs).unwrap(),
            nanos: 0,
        })
    }

    /// 2025-03-01T00:00:00Z, a Saturday and a month start.
    const MAR_1: u64 = 1_740_787_200;
    const DAY: u64 = 86_400;

    fn budget(period: pb::BudgetPeriod) -> pb::Budget {
        pb::Budget {
            limit_nanos: 25_500_000_000,
            period: period as i32,
            period_start: wire_ts(MAR_1),
            expires_at: wire_ts(MAR_1 + 10 * DAY),
            spent_nanos: 7,
        }
    }

    #[test]
    fn parses_limits_budgets_and_user_limits() {
        let mut m = sample();
        m.client_keys[0].rpm_limit = 60;
        m.client_keys[0].max_concurrent = 3;
        m.client_keys[0].budget = Some(budget(pb::BudgetPeriod::Monthly));
        m.users = vec![
            pb::UserLimits {
                user_id: "u1".into(),
                tpm_limit: 1000,
                budget: Some(budget(pb::BudgetPeriod::None)),
                ..Default::default()
            },
            pb::UserLimits {
                user_id: "u2".into(),
                rpm_limit: 5,
                ..Default::default()
            },
        ];
        let s = Snapshot::from_proto(m).unwrap();
        let c = s.authenticate("lh-good", at(MAR_1)).unwrap();
        assert_eq!(
            c.limits,
            Limits {
                rpm: NonZeroU32::new(60),
                tpm: None,
                max_concurrent: NonZeroU32::new(3),
            },
            "0 on the wire is no limit"
        );
        assert_eq!(
            c.budget,
            Some(Budget {
                limit_nanos: 25_500_000_000,
                period: BudgetPeriod::Monthly,
                period_start: at(MAR_1),
                expires_at: Some(at(MAR_1 + 10 * DAY)),
                spent_nanos: 7,
            })
        );
        let u1 = s.user_limits("u1").unwrap();
        assert_eq!(u1.limits.tpm, NonZeroU32::new(1000));
        assert_eq!(u1.budget.unwrap().period, BudgetPeriod::None);
        assert_eq!(s.user_limits("u2").unwrap().limits.rpm, NonZeroU32::new(5));
        assert_eq!(s.user_limits("u3"), None);
        // No limits at all parse as none.
        let s = Snapshot::from_proto(sample()).unwrap();
        let c = s.authenticate("lh-good", at(MAR_1)).unwrap();
        assert_eq!((c.limits, c.budget), (Limits::default(), None));
    }

    #[test]
    fn rejects_invalid_budgets_and_user_limits() {
        let with_key_budget = |b: pb::Budget| {
            let mut m = sample();
            m.client_keys[0].budget = Some(b);
            Snapshot::from_proto(m).map(|_| ())
        };
        let mut b = budget(pb::BudgetPeriod::Daily);
        b.period = pb::BudgetPeriod::Unspecified as i32;
        assert_eq!(
            with_key_budget(b),
            Err(SnapshotError::Budget(
                "client key c1".into(),
                "unknown period"
            ))
        );
        let mut b = budget(pb::BudgetPeriod::Daily);
        b.period = 42;
        assert!(with_key_budget(b).is_err(), "a period from a newer build");
        let mut b = budget(pb::BudgetPeriod::Daily);
        b.limit_nanos = 0;
        assert_eq!(
            with_key_budget(b),
            Err(SnapshotError::Budget("client key c1".into(), "zero limit"))
        );
        let mut b = budget(pb::BudgetPeriod::Daily);
        b.period_start = None;
        assert_eq!(
            with_key_budget(b),
            Err(SnapshotError::Budget(
                "client key c1".into(),
                "no period start"
            ))
        );
        let mut m = sample();
        m.users = vec![pb::UserLimits {
            user_id: "u9".into(),
            budget: Some(pb::Budget::default()),
            ..Default::default()
        }];
        assert!(matches!(
            Snapshot::from_proto(m),
            Err(SnapshotError::Budget(who, _)) if who == "user u9"
        ));
        let mut m = sample();
        let u = pb::UserLimits {
            user_id: "u1".into(),
            rpm_limit: 1,
            ..Default::default()
        };
        m.users = vec![u.clone(), u];
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::UserLimits("u1".into())
        );
        let mut m = sample();
        m.users = vec![pb::UserLimits::default()];
        assert!(matches!(
            Snapshot::from_proto(m),
            Err(SnapshotError::UserLimits(_))
        ));
    }

    #[test]
    fn budget_periods_roll_over_by_the_proxy_clock() {
        let weekly = Budget {
            limit_nanos: 1,
            period: BudgetPeriod::Weekly,
            // Monday 2025-03-03.
            period_start: at(MAR_1 + 2 * DAY),
            expires_at: Some(at(MAR_1 + 30 * DAY)),
            spent_nanos: 0,
        };
        // Within the week; at the next Monday's midnight the next week, snapshot or not.
        assert_eq!(
            weekly.period_start_at(at(MAR_1 + 8 * DAY)),
            at(MAR_1 + 2 * DAY)
        );
        assert_eq!(
            weekly.period_start_at(at(MAR_1 + 9 * DAY - 1)),
            at(MAR_1 + 2 * DAY)
        );
        assert_eq!(
            weekly.period_start_at(at(MAR_1 + 9 * DAY)),
            at(MAR_1 + 9 * DAY)
        );
        // A clock behind the control plane's never goes back before the published start.
        assert_eq!(weekly.period_start_at(at(MAR_1)), at(MAR_1 + 2 * DAY));
        let lifetime = Budget {
            period: BudgetPeriod::None,
            ..weekly
        };
        assert_eq!(
            lifetime.period_start_at(at(MAR_1 + 400 * DAY)),
            at(MAR_1 + 2 * DAY)
        );
        assert!(weekly.applies_at(at(MAR_1 + 30 * DAY - 1)));
        assert!(!weekly.applies_at(at(MAR_1 + 30 * DAY)));
    }

    #[test]
    fn a_rotated_out_secret_works_until_its_grace_ends() {
        let secret = vec![9u8; 32];
        let mut m = sample();
        m.client_keys[0].key_hash = hash(&secret, "lh-new");
        m.client_keys[0].prefix = "lh-new".into();
        m.client_keys[0].previous_key_hash = hash(&secret, "lh-good");
        m.client_keys[0].previous_valid_until = wire_ts(MAR_1);
        let s = Snapshot::from_proto(m).unwrap();
        for now in [at(MAR_1 - 60), at(MAR_1 - 1)] {
            assert_eq!(s.authenticate("lh-good", now).unwrap().id, "c1");
            assert_eq!(s.authenticate("lh-new", now).unwrap().id, "c1");
        }
        for now in [at(MAR_1), at(MAR_1 + 1)] {
            assert!(s.authenticate("lh-good", now).is_none(), "after the grace");
            assert_eq!(s.authenticate("lh-new", now).unwrap().id, "c1");
        }
        // The key's own expiry ends both secrets.
        let mut m = sample();
        m.client_keys[0].key_hash = hash(&secret, "lh-new");
        m.client_keys[0].previous_key_hash = hash(&secret, "lh-good");
        m.client_keys[0].previous_valid_until = wire_ts(MAR_1);
        m.client_keys[0].expires_at = wire_ts(MAR_1 - 100);
        let s = Snapshot::from_proto(m).unwrap();
        assert!(s.authenticate("lh-good", at(MAR_1 - 50)).is_none());
        assert!(s.authenticate("lh-new", at(MAR_1 - 50)).is_none());
    }

    #[test]
    fn rejects_malformed_previous_hashes() {
        let mut m = sample();
        m.client_keys[0].previous_key_hash = vec![1; 31];
        m.client_keys[0].previous_valid_until = wire_ts(MAR_1);
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::PreviousKeyHash("c1".into())
        );
        let mut m = sample();
        m.client_keys[0].previous_key_hash = vec![1; 32];
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::PreviousKeyHash("c1".into()),
            "a replaced hash without an end would work forever"
        );
        // An end time without a hash is nothing to accept.
        let mut m = sample();
        m.client_keys[0].previous_valid_until = wire_ts(MAR_1);
        assert!(Snapshot::from_proto(m).is_ok());
        // A replaced hash that is another key's current hash is ambiguous.
        let mut m = sample();
        let mut other = m.client_keys[0].clone();
        other.id = "c2".into();
        other.key_hash = vec![3; 32];
        other.previous_key_hash = m.client_keys[0].key_hash.clone();
        other.previous_valid_until = wire_ts(MAR_1);
        m.client_keys.push(other);
        assert_eq!(
            Snapshot::from_proto(m).unwrap_err(),
            SnapshotError::DuplicateKeyHash("c2".into())
        );
    }

    #[test]
    fn prices_come_with_the_snapshot() {
        let mut m = sample();
        m.prices = vec![pb::ModelPrice {
            model: "up-x".into(),
            input_nanos_per_token: 2500,
            output_nanos_per_token: 10_000,
            cached_input_nanos_per_token: 1250,
        }];
        let s = Snapshot::from_proto(m).unwrap();
        assert_eq!(
            s.prices.lookup("gpt-x", Some(Kind::OpenAi), "up-x"),
            Some(Price {
                input: 2500,
                output: 10_000,
                cached_input: 1250
            })
        );
        assert_eq!(s.prices.lookup("gpt-x", None, "other"), None);
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
