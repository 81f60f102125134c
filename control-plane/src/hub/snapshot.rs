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

pub use crate::store::Limits;
pub use llmhub_providers::BudgetPeriod;

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
    /// Limits and budgets of active users that have any, by user id.
    pub users: Vec<UserLimits>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("providers", &self.providers)
            .field("provider_keys", &self.provider_keys)
            .field("client_keys", &self.client_keys.len())
            .field("routes", &self.routes)
            .field("users", &self.users.len())
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
    pub limits: Limits,
    pub budget: Option<Budget>,
    /// During a rotation's grace: the replaced key's hash and when it stops working. Only
    /// published while the grace lasts; proxies check the time themselves.
    pub previous_key_hash: Option<Vec<u8>>,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// A user's limits and budget, across all of the user's client keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimits {
    pub user_id: String,
    pub limits: Limits,
    pub budget: Option<Budget>,
}

/// A budget as proxies receive it: with the start of the period current when the snapshot was
/// built (a snapshot is published again when a period rolls over, see [`next_rollover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit_nanos: u64,
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Spend in the current period as the ledger knows it.
    pub spent_nanos: u64,
}

impl Budget {
    /// The stored budget as of `now`.
    pub fn at(b: crate::store::Budget, now: DateTime<Utc>) -> Self {
        Budget {
            limit_nanos: b.limit_nanos,
            period: b.period,
            period_start: b.period.start_at(now, b.anchor),
            expires_at: b.expires_at,
            // Filled from the ledger by the hub (`SnapshotHub::rebuild`).
            spent_nanos: 0,
        }
    }
}

/// When the next budget period starts for any budget: every period (day, ISO week, month) starts
/// at a UTC midnight, and a `none` budget never rolls over.
pub fn next_rollover(now: DateTime<Utc>) -> DateTime<Utc> {
    BudgetPeriod::Daily
        .next_start(now)
        .unwrap_or(now + chrono::Duration::days(1))
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
/// the same bytes. `spend`: whether budgets' spent figures count.
struct Feed(Sha256, bool);

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
    fn opt_u32(&mut self, v: Option<u32>) {
        self.u64(v.map_or(u64::MAX, u64::from));
    }
    fn limits(&mut self, l: &Limits) {
        self.opt_u32(l.rpm);
        self.opt_u32(l.tpm);
        self.opt_u32(l.max_concurrent);
    }
    fn budget(&mut self, b: Option<&Budget>) {
        self.flag(b.is_some());
        if let Some(b) = b {
            self.u64(b.limit_nanos);
            self.str(b.period.as_str());
            self.time(Some(b.period_start));
            self.time(b.expires_at);
            if self.1 {
                self.u64(b.spent_nanos);
            }
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
        self.digest(true)
    }

    /// [`Snapshot::content_digest`] without budgets' spent figures: whether anything but the
    /// ledger's spend changed.
    pub fn config_digest(&self) -> [u8; 32] {
        self.digest(false)
    }

    fn digest(&self, spend: bool) -> [u8; 32] {
        let mut f = Feed(Sha256::new(), spend);
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
            f.limits(&c.limits);
            f.budget(c.budget.as_ref());
            f.flag(c.previous_key_hash.is_some());
            f.bytes(c.previous_key_hash.as_deref().unwrap_or_default());
            f.time(c.previous_valid_until);
        }
        f.u64(self.users.len() as u64);
        for u in &self.users {
            f.str(&u.user_id);
            f.limits(&u.limits);
            f.budget(u.budget.as_ref());
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
                limits: Limits::default(),
                budget: None,
                previous_key_hash: None,
                previous_valid_until: None,
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
            users: vec![],
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

    #[test]
    fn digest_sees_limits_budgets_rotation_and_users() {
        let a = snapshot();
        let t0: DateTime<Utc> = "2025-03-05T00:00:00Z".parse().unwrap();
        let budget = Budget {
            limit_nanos: 5,
            period: BudgetPeriod::Daily,
            period_start: t0,
            expires_at: None,
            spent_nanos: 0,
        };
        type Change = Box<dyn Fn(&mut Snapshot)>;
        let changes: Vec<Change> = vec![
            Box::new(|s| s.client_keys[0].limits.rpm = Some(60)),
            Box::new(|s| s.client_keys[0].limits.tpm = Some(60)),
            Box::new(|s| s.client_keys[0].limits.max_concurrent = Some(2)),
            Box::new(move |s| s.client_keys[0].budget = Some(budget)),
            Box::new(|s| s.client_keys[0].previous_key_hash = Some(vec![4; 32])),
            Box::new(move |s| s.client_keys[0].previous_valid_until = Some(t0)),
            Box::new(move |s| {
                s.users.push(UserLimits {
                    user_id: "u1".into(),
                    limits: Limits::default(),
                    budget: None,
                })
            }),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut b = snapshot();
            change(&mut b);
            assert_ne!(a.content_digest(), b.content_digest(), "change #{i}");
        }
        // The ledger's spend is content, but not configuration.
        let mut spent = snapshot();
        spent.client_keys[0].budget = Some(Budget {
            spent_nanos: 3,
            ..budget
        });
        let mut unspent = snapshot();
        unspent.client_keys[0].budget = Some(budget);
        assert_ne!(spent.content_digest(), unspent.content_digest());
        assert_eq!(spent.config_digest(), unspent.config_digest());
        assert_ne!(a.config_digest(), unspent.config_digest());
        // A rolled-over period is new content: the hub publishes it.
        let mut b = snapshot();
        b.client_keys[0].budget = Some(budget);
        let mut c = snapshot();
        c.client_keys[0].budget = Some(Budget {
            period_start: t0 + chrono::Duration::days(1),
            ..budget
        });
        assert_ne!(b.content_digest(), c.content_digest());
    }

    #[test]
    fn budgets_carry_the_current_period_and_roll_over_at_utc_midnight() {
        let now: DateTime<Utc> = "2025-03-05T17:00:00Z".parse().unwrap();
        let anchor: DateTime<Utc> = "2025-01-10T08:00:00Z".parse().unwrap();
        let stored = |period| crate::store::Budget {
            limit_nanos: 7,
            period,
            anchor,
            expires_at: None,
        };
        assert_eq!(
            Budget::at(stored(BudgetPeriod::Monthly), now).period_start,
            "2025-03-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            Budget::at(stored(BudgetPeriod::None), now).period_start,
            anchor
        );
        assert_eq!(Budget::at(stored(BudgetPeriod::Daily), now).spent_nanos, 0);
        assert_eq!(
            next_rollover(now),
            "2025-03-06T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
