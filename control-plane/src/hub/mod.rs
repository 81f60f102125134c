//! The snapshot and key-health authority. It speaks only domain types (`snapshot`, `report`);
//! `grpc` is the edge that turns them into proto messages for the proxies.
//!
//! The hub rebuilds a full snapshot from the store after every mutation, opening sealed provider
//! keys with the keyring, and publishes it through a `watch` channel. Each Watch subscription
//! starts with the current snapshot and then follows one ordered event stream, so a proxy always
//! converges on the newest state after a reconnect. Key outcomes from proxies and admin
//! force/clear become persisted cooldowns or disabled keys, pushed as deltas on the same stream.

pub mod report;
pub mod snapshot;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::keyring::provider_key_aad;
use crate::store::entities::key_cooldowns;
use crate::store::health::Origin;
use crate::store::{
    AuditEvent, KeyState, NewRoutingRecord, SpendOwner, Store, StoreError, parse_list,
};
use crate::vault::HashSecret;

pub use report::{Attempt, FailureClass, KeyOutcome, Outcome, Report, RoutingRecord};
pub use snapshot::{
    Budget, BudgetPeriod, ClientKey, Delta, KeyHealth, KeyStateChange, Limits, ModelPrice,
    Provider, ProviderKey, Route, RouteTarget, RoutingStrategy, Snapshot, UserLimits,
    next_rollover,
};

#[derive(Debug, Clone, Serialize)]
pub struct ConnectedProxy {
    pub proxy_id: String,
    pub peer: String,
    pub connected_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize)]
pub struct RpcCounters {
    pub watch_calls: u64,
    pub report_calls: u64,
}

/// What the hub publishes to Watch streams, in order.
#[derive(Clone)]
pub enum HubEvent {
    Snapshot(Arc<Snapshot>),
    Delta(Arc<Delta>),
    /// The number of distinct proxies connected changed: each enforces limit ÷ this many
    /// when it cannot reach the shared counters.
    Fleet(u32),
}

pub struct SnapshotHub {
    store: Store,
    vault: Arc<crate::vault::Vault>,
    hash_secret: Arc<HashSecret>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    /// Snapshots and key-health deltas in publication order. Every Watch stream starts with the
    /// current snapshot and then follows this channel, so a proxy sees changes in the order the
    /// control plane made them (a delta is never overtaken by an older snapshot).
    events: broadcast::Sender<HubEvent>,
    /// Held while publishing and while a new Watch stream takes the current snapshot and
    /// subscribes, so no event falls between the two.
    publish: Mutex<()>,
    version: AtomicU64,
    /// Serialises rebuilds and key-health changes: each reads or writes the store and publishes
    /// while holding it, so what proxies receive is in the same order as what the store holds.
    /// Also holds what was last published (an unchanged rebuild publishes nothing).
    rebuild: tokio::sync::Mutex<Published>,
    /// How long budgets' spent figures are reused before a rebuild reads them again (see
    /// [`SPEND_REFRESH`]).
    spend_refresh: Duration,
    proxies: Mutex<HashMap<u64, ConnectedProxy>>,
    next_conn: AtomicU64,
    watch_calls: AtomicU64,
    report_calls: AtomicU64,
    /// Where ambiguous refusals go to be verified (set by `start_verifier`).
    verify_tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<verify::Verification>>,
}

/// How often at most a rebuild reads budgets' spend from the ledger when nothing else changed,
/// and so how often at most the spend figures alone republish the snapshot (each publication
/// sends the whole snapshot to every proxy). A change of anything else reads them afresh.
pub const SPEND_REFRESH: Duration = Duration::from_secs(30);

/// What the last rebuild published.
#[derive(Default)]
struct Published {
    /// Digest of the published content, spent figures included.
    content: Option<[u8; 32]>,
    /// The same without the spent figures ([`Snapshot::config_digest`]).
    config: Option<[u8; 32]>,
    /// When the spent figures were last read from the ledger.
    spend_read: Option<Instant>,
}

/// One Watch stream's place in the ordered event stream: the snapshot current when it
/// subscribed, then every later event. Holding `conn` keeps the proxy in the fleet view.
pub struct Subscription {
    pub first: Option<Arc<Snapshot>>,
    pub events: broadcast::Receiver<HubEvent>,
    pub conn: Connection,
}

/// Removes a proxy from the connected list when its Watch stream ends (is dropped).
pub struct Connection {
    hub: Arc<SnapshotHub>,
    id: u64,
}

fn distinct(map: &HashMap<u64, ConnectedProxy>) -> u32 {
    let ids: std::collections::HashSet<&str> = map.values().map(|p| p.proxy_id.as_str()).collect();
    u32::try_from(ids.len()).unwrap_or(u32::MAX)
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut map = self.hub.proxies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.remove(&self.id) {
            tracing::info!(proxy_id = %p.proxy_id, "proxy disconnected");
            let n = distinct(&map);
            drop(map);
            let _ = self.hub.events.send(HubEvent::Fleet(n));
        }
    }
}

impl SnapshotHub {
    pub fn new(
        store: Store,
        vault: Arc<crate::vault::Vault>,
        hash_secret: Arc<HashSecret>,
    ) -> Arc<Self> {
        Self::with_spend_refresh(store, vault, hash_secret, SPEND_REFRESH)
    }

    /// A hub that reads budgets' spend again after `spend_refresh` instead of
    /// [`SPEND_REFRESH`].
    pub fn with_spend_refresh(
        store: Store,
        vault: Arc<crate::vault::Vault>,
        hash_secret: Arc<HashSecret>,
        spend_refresh: Duration,
    ) -> Arc<Self> {
        let (tx, _) = watch::channel(None);
        let (events, _) = broadcast::channel(1024);
        // Seeded from the clock so a restarted control plane keeps versions increasing.
        let seed = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(1);
        Arc::new(SnapshotHub {
            store,
            vault,
            hash_secret,
            tx,
            events,
            publish: Mutex::new(()),
            version: AtomicU64::new(seed),
            rebuild: tokio::sync::Mutex::new(Published::default()),
            spend_refresh,
            proxies: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            watch_calls: AtomicU64::new(0),
            report_calls: AtomicU64::new(0),
            verify_tx: std::sync::OnceLock::new(),
        })
    }

    pub fn current_version(&self) -> u64 {
        self.tx.borrow().as_ref().map_or(0, |s| s.version)
    }

    /// Distinct proxies connected now (a proxy reconnecting may briefly hold two streams).
    pub fn live_proxies(&self) -> u32 {
        distinct(&self.proxies.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn connected(&self) -> Vec<ConnectedProxy> {
        let map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        v
    }

    pub fn counters(&self) -> RpcCounters {
        RpcCounters {
            watch_calls: self.watch_calls.load(Ordering::Relaxed),
            report_calls: self.report_calls.load(Ordering::Relaxed),
        }
    }

    /// Counts a Watch call (accepted or not).
    pub fn note_watch_call(&self) {
        self.watch_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Report call.
    pub fn note_report_call(&self) {
        self.report_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a proxy in the fleet view and subscribes it to the event stream.
    pub fn subscribe(self: &Arc<Self>, proxy_id: String, peer: String) -> Subscription {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                ConnectedProxy {
                    proxy_id: proxy_id.clone(),
                    peer: peer.clone(),
                    connected_at: Utc::now(),
                },
            );
        tracing::info!(%proxy_id, %peer, "proxy connected");
        let _ = self.events.send(HubEvent::Fleet(self.live_proxies()));
        let conn = Connection {
            hub: self.clone(),
            id,
        };
        // The current snapshot and the subscription are taken together (under the publish
        // lock), so the stream starts at a consistent point and then carries every event in order.
        let (first, events) = {
            let _order = self.publish.lock().unwrap_or_else(|e| e.into_inner());
            (self.tx.borrow().clone(), self.events.subscribe())
        };
        Subscription {
            first,
            events,
            conn,
        }
    }

    /// Rebuilds the snapshot from the store and publishes it when its content changed.
    /// Returns the version proxies should converge on.
    ///
    /// Budgets carry what the ledger says was spent in their current period, so a proxy whose
    /// shared counter is gone (a new Redis, or none) starts from it. Those figures change with
    /// every stored record; they are read again when anything else changed, or when the last
    /// read is older than the hub's spend refresh (by default [`SPEND_REFRESH`]), and only then
    /// may they alone republish the snapshot.
    pub async fn rebuild(&self) -> Result<u64, StoreError> {
        let mut last = self.rebuild.lock().await;
        let providers = self.store.providers().await?;
        let keys = self.store.provider_keys().await?;
        let client_keys = self.store.client_keys().await?;
        // Client keys of disabled, pending or deleted users never reach the proxies.
        let active: Vec<_> = self
            .store
            .users()
            .await?
            .into_iter()
            .filter(|u| u.is_active())
            .collect();
        let active_users: HashMap<String, bool> = active
            .iter()
            .map(|u| (u.id.clone(), u.shared_pool_access))
            .collect();
        let routes = self.store.routes().await?;
        let prices = crate::prices::effective(self.store.model_prices().await?);
        let now = Utc::now();
        let users = active
            .into_iter()
            .filter_map(|u| {
                let (limits, budget) = (u.limits(), u.budget());
                (!limits.is_empty() || budget.is_some()).then(|| UserLimits {
                    user_id: u.id,
                    limits,
                    budget: budget.map(|b| Budget::at(b, now)),
                })
            })
            .collect();

        // The version stays unset until the content digest is taken.
        let mut snap = Snapshot {
            version: 0,
            generated_at: now,
            providers: Vec::new(),
            provider_keys: Vec::new(),
            client_keys: Vec::new(),
            routes: Vec::new(),
            prices: prices
                .into_iter()
                .map(|e| ModelPrice {
                    model: e.model,
                    price: e.price,
                })
                .collect(),
            client_key_hash_secret: self.hash_secret.clone(),
            users,
        };
        snap.providers = providers
            .into_iter()
            .map(|p| Provider {
                id: p.id,
                name: p.name,
                kind: p.kind,
                base_url: p.base_url,
                enabled: p.enabled,
                request_timeout_ms: u32::try_from(p.request_timeout_ms).unwrap_or(60_000),
                api_version: p.api_version.unwrap_or_default(),
            })
            .collect();
        let keyring = self.vault.keyring();
        let mut cooldowns: HashMap<String, Vec<KeyHealth>> = HashMap::new();
        for c in self.store.live_cooldowns().await? {
            cooldowns
                .entry(c.key_id.clone())
                .or_default()
                .push(KeyHealth::cooling(&c.model, c.until, &c.class));
        }
        let mut unreadable = BTreeSet::new();
        for k in keys {
            let aad = provider_key_aad(&k.id, k.owner_user_id.as_deref(), &k.provider_id);
            let secret = match keyring.open(&k.sealed, &aad) {
                Ok(s) => s,
                Err(e) => {
                    // Fails closed: the key is left out of the snapshot, reported in the vault
                    // status and the key list, and logged.
                    tracing::error!(key_id = %k.id, fingerprint = %k.fingerprint, error = %e, "cannot open provider key; excluded from snapshot");
                    unreadable.insert(k.id);
                    continue;
                }
            };
            let state = match k.key_state() {
                Some(KeyState::Disabled) => {
                    KeyHealth::disabled(k.state_reason.as_deref().unwrap_or_default())
                }
                _ => KeyHealth::active(""),
            };
            snap.provider_keys.push(ProviderKey {
                provider_id: k.provider_id,
                owner_user_id: k.owner_user_id,
                secret,
                fingerprint: k.fingerprint,
                label: k.label,
                weight: u32::try_from(k.weight).unwrap_or(1),
                allowed_models: parse_list(&k.allowed_models),
                state,
                cooldowns: cooldowns.remove(&k.id).unwrap_or_default(),
                rpm_limit: k.rpm_limit.and_then(|v| u32::try_from(v).ok()),
                tpm_limit: k.tpm_limit.and_then(|v| u32::try_from(v).ok()),
                id: k.id,
            });
        }
        self.vault.set_unreadable(unreadable);
        snap.client_keys = client_keys
            .into_iter()
            .filter(|c| {
                c.enabled && c.revoked_at.is_none() && active_users.contains_key(&c.user_id)
            })
            .map(|c| {
                // The replaced secret travels only while its grace lasts.
                let previous_valid_until = c.previous_valid_until.filter(|t| *t > now);
                let previous_key_hash = c
                    .previous_key_hash
                    .clone()
                    .filter(|_| previous_valid_until.is_some());
                ClientKey {
                    limits: c.limits(),
                    budget: c.budget().map(|b| Budget::at(b, now)),
                    previous_valid_until: previous_key_hash.as_ref().and(previous_valid_until),
                    previous_key_hash,
                    id: c.id,
                    key_hash: c.key_hash,
                    prefix: c.prefix,
                    allowed_models: parse_list(&c.allowed_models),
                    enabled: c.enabled,
                    expires_at: c.expires_at,
                    // The shared pool needs both the key's and the user's permission.
                    use_shared_pool: c.use_shared_pool
                        && active_users.get(&c.user_id).copied().unwrap_or(false),
                    user_id: c.user_id,
                }
            })
            .collect();
        snap.routes = routes
            .into_iter()
            .map(|r| Route {
                public_model: r.route.public_model,
                // The API stores only known strategies; anything else routes as weighted, which
                // is also how a proxy reads an unknown one.
                strategy: RoutingStrategy::parse(&r.route.strategy)
                    .unwrap_or(RoutingStrategy::Weighted),
                aliases: parse_list(&r.route.aliases),
                targets: r
                    .targets
                    .into_iter()
                    .map(|t| RouteTarget {
                        provider_id: t.provider_id,
                        upstream_model: t.upstream_model,
                        weight: u32::try_from(t.weight).unwrap_or(1),
                        priority: u32::try_from(t.priority).unwrap_or(0),
                    })
                    .collect(),
            })
            .collect();

        let config = snap.config_digest();
        let spend_fresh = last
            .spend_read
            .is_some_and(|t| t.elapsed() < self.spend_refresh);
        if last.config == Some(config) && spend_fresh {
            return Ok(self.current_version());
        }
        self.fill_spend(&mut snap).await?;
        last.spend_read = Some(Instant::now());
        last.config = Some(config);
        let digest = snap.content_digest();
        if last.content == Some(digest) {
            return Ok(self.current_version());
        }
        let seed = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let version = self
            .version
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some((v + 1).max(seed))
            })
            .map(|prev| (prev + 1).max(seed))
            .unwrap_or(seed);
        snap.version = version;
        let published = Arc::new(snap);
        {
            let _order = self.publish.lock().unwrap_or_else(|e| e.into_inner());
            self.tx.send_replace(Some(published.clone()));
            let _ = self.events.send(HubEvent::Snapshot(published));
        }
        last.content = Some(digest);
        tracing::info!(version, "snapshot published");
        Ok(version)
    }

    /// Sets every budget's spent figure: what the ledger holds for its owner since the start of
    /// its current period. One query per distinct period start (all daily budgets share one,
    /// and so do the weekly and the monthly ones; a lifetime budget starts when it was set).
    async fn fill_spend(&self, snap: &mut Snapshot) -> Result<(), StoreError> {
        let keys: Vec<(&str, DateTime<Utc>)> = snap
            .client_keys
            .iter()
            .filter_map(|c| Some((c.id.as_str(), c.budget?.period_start)))
            .collect();
        let users: Vec<(&str, DateTime<Utc>)> = snap
            .users
            .iter()
            .filter_map(|u| Some((u.user_id.as_str(), u.budget?.period_start)))
            .collect();
        let key_spend = self.spend(SpendOwner::ClientKey, &keys).await?;
        let user_spend = self.spend(SpendOwner::User, &users).await?;
        for c in &mut snap.client_keys {
            if let Some(b) = &mut c.budget {
                b.spent_nanos = key_spend
                    .get(&(c.id.clone(), b.period_start))
                    .copied()
                    .unwrap_or(0);
            }
        }
        for u in &mut snap.users {
            if let Some(b) = &mut u.budget {
                b.spent_nanos = user_spend
                    .get(&(u.user_id.clone(), b.period_start))
                    .copied()
                    .unwrap_or(0);
            }
        }
        Ok(())
    }

    /// The spend of each (owner, period start), read grouped by period start.
    async fn spend(
        &self,
        owner: SpendOwner,
        budgets: &[(&str, DateTime<Utc>)],
    ) -> Result<HashMap<(String, DateTime<Utc>), u64>, StoreError> {
        let mut by_start: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
        for (id, start) in budgets {
            by_start.entry(*start).or_default().push((*id).to_owned());
        }
        let mut out = HashMap::new();
        for (start, ids) in by_start {
            for (id, spent) in self.store.spend_since(owner, &ids, start).await? {
                out.insert((id, start), spent);
            }
        }
        Ok(out)
    }

    /// Pushes one key's health change to every connected proxy. Callers hold the rebuild lock.
    fn publish_key_state(&self, key_id: &str, health: KeyHealth) {
        let version = self.current_version();
        let delta = Delta {
            base_version: version,
            version,
            key_states: vec![KeyStateChange {
                key_id: key_id.to_owned(),
                health,
            }],
        };
        let _order = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.events.send(HubEvent::Delta(Arc::new(delta)));
    }

    /// Admin: cools a key down fleet-wide.
    pub async fn force_cooldown(
        &self,
        key_id: &str,
        model: &str,
        until: DateTime<Utc>,
        source: &str,
        audit: AuditEvent,
    ) -> Result<key_cooldowns::Model, StoreError> {
        let _health = self.rebuild.lock().await;
        let c = self
            .store
            .apply_cooldown(key_id, model, until, "forced", source, Some(audit))
            .await?;
        self.publish_key_state(key_id, KeyHealth::cooling(&c.model, c.until, &c.class));
        Ok(c)
    }

    /// Admin: ends every cooldown of a key and re-enables it, fleet-wide.
    pub async fn clear_key(
        &self,
        key_id: &str,
        source: &str,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        {
            let _health = self.rebuild.lock().await;
            self.store
                .clear_key_health(key_id, None, source, Some(audit))
                .await?;
            self.publish_key_state(key_id, KeyHealth::active(""));
        }
        // The enabled state also lives in snapshots, for proxies that connect later.
        self.rebuild().await?;
        Ok(())
    }

    /// Turns what a proxy observed into fleet-wide state: persisted, then pushed to every proxy.
    pub async fn apply_outcome(&self, o: &KeyOutcome, source: &str) -> Result<(), StoreError> {
        let _health = self.rebuild.lock().await;
        let now = Utc::now();
        let effect = self.outcome_effect(o, source, now).await;
        let class = o.class.filter(|c| *c != Outcome::Ok).map(Outcome::as_str);
        let touched = self
            .store
            .touch_provider_key(&o.key_id, o.observed_at.unwrap_or(now), class)
            .await;
        // A key deleted since the proxy used it: nothing to change, and the report must still be
        // acknowledged (an error here would make the proxy resend the batch forever).
        match effect.and(touched) {
            Err(StoreError::NotFound) => Ok(()),
            other => other,
        }
    }

    /// The fleet-wide health change an outcome calls for, persisted and published. Called with
    /// the health lock held.
    async fn outcome_effect(
        &self,
        o: &KeyOutcome,
        source: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let until = o.retry_at.filter(|t| *t > now);
        let origin = Origin {
            source,
            client_key: Some(o.client_key_prefix.as_str()),
        };
        match o.class {
            // An ambiguous refusal: the key rests briefly everywhere while the hub verifies it.
            Some(Outcome::Failed(
                class @ (FailureClass::InvalidKey | FailureClass::QuotaExhausted),
            )) if o.needs_verification => {
                let until = until.unwrap_or(now + chrono::Duration::seconds(60));
                let c = self
                    .store
                    .apply_cooldown(&o.key_id, "", until, class.as_str(), origin, None)
                    .await?;
                self.publish_key_state(&o.key_id, KeyHealth::cooling(&c.model, c.until, &c.class));
                self.request_verification(verify::Verification {
                    key_id: o.key_id.clone(),
                    class,
                    client_key: o.client_key_prefix.clone(),
                });
            }
            Some(Outcome::Failed(
                class @ (FailureClass::RateLimited | FailureClass::QuotaExhausted),
            )) => {
                let rate_limited = class == FailureClass::RateLimited;
                let (model, fallback) = if rate_limited {
                    (o.upstream_model.as_str(), chrono::Duration::seconds(5))
                } else {
                    ("", chrono::Duration::hours(1))
                };
                let until = until.unwrap_or(now + fallback);
                let c = self
                    .store
                    .apply_cooldown(&o.key_id, model, until, class.as_str(), origin, None)
                    .await?;
                self.publish_key_state(&o.key_id, KeyHealth::cooling(&c.model, c.until, &c.class));
            }
            Some(Outcome::Failed(FailureClass::InvalidKey)) => {
                let reason = FailureClass::InvalidKey.as_str();
                if self.store.disable_key(&o.key_id, reason, origin).await? {
                    self.publish_key_state(&o.key_id, KeyHealth::disabled(reason));
                }
            }
            // A trial after a cooldown succeeded: the cooldown is over everywhere.
            Some(Outcome::Ok) => {
                for model in [o.upstream_model.as_str(), ""] {
                    if self
                        .store
                        .clear_key_health_if_expired(&o.key_id, model, source)
                        .await?
                    {
                        self.publish_key_state(&o.key_id, KeyHealth::active(model));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Stores one report batch: key health first (it is what other proxies are waiting for),
    /// then the routing records. Returns once everything is durably stored.
    pub async fn store_report(&self, report: &Report) -> Result<(), StoreError> {
        for o in &report.outcomes {
            self.apply_outcome(o, &report.proxy_id).await?;
        }
        let now = Utc::now();
        let current = self.tx.borrow().clone();
        let prices = current.as_ref().map_or(&[][..], |s| &s.prices[..]);
        let priced = crate::prices::Priced::new(prices);
        let kind_of = |provider_id: &str| {
            current
                .as_ref()
                .and_then(|s| s.providers.iter().find(|p| p.id == provider_id))
                .map(|p| p.kind.as_str())
        };
        let records = report
            .records
            .iter()
            .map(|r| NewRoutingRecord {
                cost_nanos: stored_cost(r, |public, attempt| {
                    let (kind, upstream) = attempt.map_or((None, ""), |a| {
                        (kind_of(&a.provider_id), a.upstream_model.as_str())
                    });
                    priced.covers(public, kind, upstream)
                }),
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                cached_tokens: r.cached_tokens,
                partial: r.partial,
                client_key_id: r.client_key_id.clone(),
                provider_id: r
                    .served_by()
                    .map(|a| a.provider_id.clone())
                    .unwrap_or_default(),
                key_fingerprint: r
                    .served_by()
                    .map(|a| a.key_fingerprint.clone())
                    .unwrap_or_default(),
                upstream_model: r
                    .served_by()
                    .map(|a| a.upstream_model.clone())
                    .unwrap_or_default(),
                request_id: r.request_id.clone(),
                proxy_id: report.proxy_id.clone(),
                started_at: r.started_at.unwrap_or(now),
                user_id: r.user_id.clone(),
                client_key_prefix: r.client_key_prefix.clone(),
                public_model: r.public_model.clone(),
                status: r.status,
                latency_ms: r.latency_ms,
                stream: r.stream,
                detail: r.detail(),
            })
            .collect();
        self.store.insert_routing_records(records).await?;
        Ok(())
    }
}

/// The cost to store for a record: what the proxy computed, or `None` (unknown) for a request
/// that used tokens and cost nothing because no price was known. The contract has no "unknown"
/// for a cost, and 0 alone cannot tell a free model from an unpriced one; the hub holds the
/// table the proxies price with, so `priced(public model, serving attempt)` tells them apart.
fn stored_cost(r: &RoutingRecord, priced: impl Fn(&str, Option<&Attempt>) -> bool) -> Option<u64> {
    if r.cost_nanos > 0 || !r.used_tokens() || priced(&r.public_model, r.served_by()) {
        Some(r.cost_nanos)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt: u64, cost: u64) -> RoutingRecord {
        RoutingRecord {
            request_id: "r".into(),
            started_at: None,
            user_id: "u".into(),
            client_key_prefix: "lh-x".into(),
            public_model: "m".into(),
            attempts: vec![],
            status: 200,
            latency_ms: 1,
            stream: false,
            skipped: vec![],
            prompt_tokens: prompt,
            completion_tokens: 0,
            cached_tokens: 0,
            partial: false,
            cost_nanos: cost,
            client_key_id: "c".into(),
        }
    }

    #[test]
    fn an_unpriced_request_that_used_tokens_has_an_unknown_cost() {
        let never = |_: &str, _: Option<&Attempt>| false;
        let always = |_: &str, _: Option<&Attempt>| true;
        assert_eq!(stored_cost(&record(10, 42), never), Some(42));
        assert_eq!(stored_cost(&record(0, 0), never), Some(0), "nothing used");
        assert_eq!(stored_cost(&record(10, 0), never), None, "unpriced");
        assert_eq!(stored_cost(&record(10, 0), always), Some(0), "free");
    }
}
