//! The proxy's view of the world: an immutable snapshot built from the control plane's message,
//! validated whole before it replaces the previous one behind an `ArcSwap`.
//!
//! Requests do one atomic load of the current snapshot; nothing on the request path locks or
//! calls out to the control plane.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use llmhub_providers::{Kind, Op, Serving, Strategy};

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
    client_keys: HashMap<[u8; 32], ClientKey>,
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
            routes,
            providers,
            keys_by_provider,
            prices,
            cursor: AtomicUsize::new(0),
        })
    }

    /// Looks up a presented client key by its keyed hash: the same work for every input, and the
    /// key itself is never stored or compared.
    pub fn authenticate(&self, presented: &str, now: SystemTime) -> Option<&ClientKey> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.hash_secret)
            .expect("HMAC accepts keys of any length");
        mac.update(presented.as_bytes());
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        let key = self.client_keys.get(&digest)?;
        if key.expires_at.is_some_and(|t| t <= now) {
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
