//! What the hub publishes to proxies, in the control plane's own terms: a full snapshot of
//! everything a proxy serves from, and deltas of key health. The gRPC edge (`grpc`) turns these
//! into proto messages.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::keyring::Plaintext;
pub use crate::prices::ModelPrice;
use crate::store::KeyState;
use crate::vault::HashSecret;

/// A built snapshot. Provider secrets are [`Plaintext`] (wiped when the last holder drops the
/// snapshot); `Debug` prints no secret.
pub struct Snapshot {
    /// Strictly increasing for one control plane; set when the snapshot is published.
    pub version: u64,
    pub generated_at: DateTime<Utc>,
    pub providers: Vec<Provider>,
    pub provider_keys: Vec<ProviderKey>,
    pub client_keys: Vec<ClientKey>,
    pub routes: Vec<Route>,
    /// The effective price table (built-in prices overridden and extended by the admin's).
    pub prices: Vec<ModelPrice>,
    /// Proxies hash presented client keys with it.
    pub client_key_hash_secret: Arc<HashSecret>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("providers", &self.providers)
            .field("provider_keys", &self.provider_keys)
            .field("client_keys", &self.client_keys.len())
            .field("routes", &self.routes)
            .field("prices", &self.prices.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub id: String,
    pub name: String,
    /// The kind's slug as stored (`openai`, `anthropic`, …).
    pub kind: String,
    pub base_url: String,
    pub enabled: bool,
    pub request_timeout_ms: u32,
    /// Azure OpenAI `api-version`; empty for other kinds.
    pub api_version: String,
}

#[derive(Debug)]
pub struct ProviderKey {
    pub id: String,
    pub provider_id: String,
    /// `None`: the shared pool.
    pub owner_user_id: Option<String>,
    pub secret: Plaintext,
    pub fingerprint: String,
    pub label: String,
    pub weight: u32,
    pub allowed_models: Vec<String>,
    /// Active or disabled (with the reason), for the whole key.
    pub state: KeyHealth,
    /// Live cooldowns, whole-key (empty model) or per upstream model.
    pub cooldowns: Vec<KeyHealth>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub id: String,
    pub user_id: String,
    pub key_hash: Vec<u8>,
    pub prefix: String,
    pub allowed_models: Vec<String>,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// Both the key's and its user's permission.
    pub use_shared_pool: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub public_model: String,
    pub strategy: RoutingStrategy,
    pub aliases: Vec<String>,
    pub targets: Vec<RouteTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
}

/// How equal-priority targets and keys share traffic: the vocabulary both planes share, stored
/// as its `as_str` form in `routes.strategy`.
pub use llmhub_providers::Strategy as RoutingStrategy;

/// One key's health as proxies apply it: a cooldown (until a time, for one upstream model or the
/// whole key), active (ends the cooldown of that model, or with no model every cooldown and a
/// disabled state) or disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHealth {
    pub state: KeyState,
    /// For a cooldown: when the key may be used again.
    pub until: Option<DateTime<Utc>>,
    /// Failure class or admin reason (`rate_limited`, `forced`, `invalid_key`).
    pub reason: String,
    /// Empty: the whole key.
    pub model: String,
}

impl KeyHealth {
    pub fn cooling(model: &str, until: DateTime<Utc>, reason: &str) -> Self {
        KeyHealth {
            state: KeyState::CoolingDown,
            until: Some(until),
            reason: reason.to_owned(),
            model: model.to_owned(),
        }
    }

    pub fn active(model: &str) -> Self {
        KeyHealth {
            state: KeyState::Active,
            until: None,
            reason: String::new(),
            model: model.to_owned(),
        }
    }

    pub fn disabled(reason: &str) -> Self {
        KeyHealth {
            state: KeyState::Disabled,
            until: None,
            reason: reason.to_owned(),
            model: String::new(),
        }
    }
}

/// Key-health changes against the snapshot version proxies hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub base_version: u64,
    pub version: u64,
    pub key_states: Vec<KeyStateChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStateChange {
    pub key_id: String,
    pub health: KeyHealth,
}

/// Feeds values into a SHA-256 with lengths in front, so distinct contents never concatenate to
/// the same bytes.
struct Feed(Sha256);

impl Feed {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }
    fn flag(&mut self, v: bool) {
        self.0.update([u8::from(v)]);
    }
    fn time(&mut self, t: Option<DateTime<Utc>>) {
        match t {
            None => self.0.update([0]),
            Some(t) => {
                self.0.update([1]);
                self.0.update(t.timestamp().to_le_bytes());
                self.0.update(t.timestamp_subsec_nanos().to_le_bytes());
            }
        }
    }
    fn list(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn health(&mut self, h: &KeyHealth) {
        self.str(h.state.as_str());
        self.time(h.until);
        self.str(&h.reason);
        self.str(&h.model);
    }
}

impl Snapshot {
    /// Digest of everything proxies receive except the version and time, so an unchanged rebuild
    /// can publish nothing. Covers the secrets: a replaced key or hash secret is a change.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut f = Feed(Sha256::new());
        f.u64(self.providers.len() as u64);
        for p in &self.providers {
            f.str(&p.id);
            f.str(&p.name);
            f.str(&p.kind);
            f.str(&p.base_url);
            f.flag(p.enabled);
            f.u64(u64::from(p.request_timeout_ms));
            f.str(&p.api_version);
        }
        f.u64(self.provider_keys.len() as u64);
        for k in &self.provider_keys {
            f.str(&k.id);
            f.str(&k.provider_id);
            f.str(k.owner_user_id.as_deref().unwrap_or(""));
            f.flag(k.owner_user_id.is_some());
            f.bytes(k.secret.expose());
            f.str(&k.fingerprint);
            f.str(&k.label);
            f.u64(u64::from(k.weight));
            f.list(&k.allowed_models);
            f.health(&k.state);
            f.u64(k.cooldowns.len() as u64);
            for c in &k.cooldowns {
                f.health(c);
            }
            f.u64(k.rpm_limit.map_or(u64::MAX, u64::from));
            f.u64(k.tpm_limit.map_or(u64::MAX, u64::from));
        }
        f.u64(self.client_keys.len() as u64);
        for c in &self.client_keys {
            f.str(&c.id);
            f.str(&c.user_id);
            f.bytes(&c.key_hash);
            f.str(&c.prefix);
            f.list(&c.allowed_models);
            f.flag(c.enabled);
            f.time(c.expires_at);
            f.flag(c.use_shared_pool);
        }
        f.u64(self.routes.len() as u64);
        for r in &self.routes {
            f.str(&r.public_model);
            f.str(r.strategy.as_str());
            f.list(&r.aliases);
            f.u64(r.targets.len() as u64);
            for t in &r.targets {
                f.str(&t.provider_id);
                f.str(&t.upstream_model);
                f.u64(u64::from(t.weight));
                f.u64(u64::from(t.priority));
            }
        }
        f.u64(self.prices.len() as u64);
        for p in &self.prices {
            f.str(&p.model);
            f.u64(p.price.input_nanos_per_token);
            f.u64(p.price.output_nanos_per_token);
            f.u64(p.price.cached_input_nanos_per_token);
        }
        f.bytes(self.client_key_hash_secret.bytes());
        f.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_strategy_round_trips_as_the_stored_strings() {
        for (s, stored) in [
            (RoutingStrategy::Weighted, "weighted"),
            (RoutingStrategy::LeastInFlight, "least_inflight"),
            (RoutingStrategy::Latency, "latency"),
        ] {
            assert_eq!(s.as_str(), stored);
            assert_eq!(RoutingStrategy::parse(stored), Some(s));
        }
        assert_eq!(RoutingStrategy::parse("random"), None);
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 0,
            generated_at: Utc::now(),
            providers: vec![],
            provider_keys: vec![],
            client_keys: vec![ClientKey {
                id: "c1".into(),
                user_id: "u1".into(),
                key_hash: vec![1, 2, 3],
                prefix: "lh-ab".into(),
                allowed_models: vec![],
                enabled: true,
                expires_at: None,
                use_shared_pool: true,
            }],
            routes: vec![Route {
                public_model: "m".into(),
                strategy: RoutingStrategy::Weighted,
                aliases: vec!["a".into(), "b".into()],
                targets: vec![],
            }],
            prices: vec![ModelPrice {
                model: "gpt-4o".into(),
                price: crate::prices::Price {
                    input_nanos_per_token: 2500,
                    output_nanos_per_token: 10_000,
                    cached_input_nanos_per_token: 1250,
                },
            }],
            client_key_hash_secret: Arc::new(HashSecret::from_bytes(b"secret")),
        }
    }

    #[test]
    fn digest_ignores_version_and_time_but_sees_content() {
        let a = snapshot();
        let mut b = snapshot();
        b.version = 9;
        b.generated_at = Utc::now() + chrono::Duration::hours(1);
        assert_eq!(a.content_digest(), b.content_digest());
        b.routes[0].strategy = RoutingStrategy::Latency;
        assert_ne!(a.content_digest(), b.content_digest());
        let mut c = snapshot();
        c.routes[0].aliases = vec!["ab".into()];
        assert_ne!(a.content_digest(), c.content_digest());
        let mut d = snapshot();
        d.client_key_hash_secret = Arc::new(HashSecret::from_bytes(b"other"));
        assert_ne!(a.content_digest(), d.content_digest());
        let mut e = snapshot();
        e.prices[0].price.cached_input_nanos_per_token = 1249;
        assert_ne!(
            a.content_digest(),
            e.content_digest(),
            "a price change is published"
        );
    }
}
