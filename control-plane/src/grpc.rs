//! The proxies' gRPC service (mutual TLS only) and the snapshot hub that feeds it.
//!
//! The hub rebuilds a full snapshot from the store after every mutation, opening sealed provider
//! keys with the keyring, and publishes it through a `watch` channel. Each `Watch` stream starts
//! with the current snapshot and then follows the channel, so a proxy always converges on the
//! newest state after a reconnect.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use llmhub_proto::v1::{self as pb, ProviderKind};
use llmhub_proto::{ControlPlane, ControlPlaneServer};
use sea_orm::ActiveValue::Set;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroize;

use crate::config::TlsFiles;
use crate::keyring::provider_key_aad;
use crate::store::entities::routing_records;
use crate::store::{Store, StoreError, parse_list};
use crate::vault::HashSecret;

/// A published snapshot. Its secrets are wiped from memory when the last holder drops it.
pub struct Published(pub pb::Snapshot);

impl Drop for Published {
    fn drop(&mut self) {
        for k in &mut self.0.provider_keys {
            k.secret.zeroize();
        }
        self.0.client_key_hash_secret.zeroize();
    }
}

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

pub struct SnapshotHub {
    store: Store,
    vault: Arc<crate::vault::Vault>,
    hash_secret: Arc<HashSecret>,
    tx: watch::Sender<Option<Arc<Published>>>,
    /// Snapshots and key-health deltas in publication order. Every Watch stream starts with the
    /// current snapshot and then follows this channel, so a proxy sees changes in the order the
    /// control plane made them (a delta is never overtaken by an older snapshot).
    events: tokio::sync::broadcast::Sender<HubEvent>,
    /// Held while publishing and while a new Watch stream takes the current snapshot and
    /// subscribes, so no event falls between the two.
    publish: Mutex<()>,
    version: AtomicU64,
    /// Serialises rebuilds and key-health changes: each reads or writes the store and publishes
    /// while holding it, so what proxies receive is in the same order as what the store holds.
    /// Also holds the digest of the last published content (an unchanged rebuild publishes
    /// nothing).
    rebuild: tokio::sync::Mutex<Option<[u8; 32]>>,
    proxies: Mutex<HashMap<u64, ConnectedProxy>>,
    next_conn: AtomicU64,
    watch_calls: AtomicU64,
    report_calls: AtomicU64,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// What the hub publishes to Watch streams, in order.
#[derive(Clone)]
enum HubEvent {
    Snapshot(Arc<Published>),
    Delta(Arc<pb::Delta>),
}

/// The proto form of a live cooldown.
pub fn cooling_state(model: &str, until: DateTime<Utc>, class: &str) -> pb::KeyState {
    pb::KeyState {
        status: pb::KeyStatus::CoolingDown as i32,
        until: Some(ts(until)),
        reason: class.to_owned(),
        model: model.to_owned(),
    }
}

fn from_ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

impl SnapshotHub {
    pub fn new(
        store: Store,
        vault: Arc<crate::vault::Vault>,
        hash_secret: Arc<HashSecret>,
    ) -> Arc<Self> {
        let (tx, _) = watch::channel(None);
        let (events, _) = tokio::sync::broadcast::channel(1024);
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
            rebuild: tokio::sync::Mutex::new(None),
            proxies: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            watch_calls: AtomicU64::new(0),
            report_calls: AtomicU64::new(0),
        })
    }

    pub fn current_version(&self) -> u64 {
        self.tx.borrow().as_ref().map_or(0, |s| s.0.version)
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

    /// Rebuilds the snapshot from the store and publishes it when its content changed.
    /// Returns the version proxies should converge on.
    pub async fn rebuild(&self) -> Result<u64, StoreError> {
        let mut last_digest = self.rebuild.lock().await;
        let providers = self.store.providers().await?;
        let keys = self.store.provider_keys().await?;
        let client_keys = self.store.client_keys().await?;
        // Client keys of disabled, pending or deleted users never reach the proxies.
        let active_users: std::collections::HashMap<String, bool> = self
            .store
            .users()
            .await?
            .into_iter()
            .filter(|u| u.status == "active")
            .map(|u| (u.id, u.shared_pool_access))
            .collect();
        let routes = self.store.routes().await?;
        let now = Utc::now();

        // Version and time stay unset until the content digest is taken.
        let mut snap = pb::Snapshot {
            version: 0,
            generated_at: None,
            client_key_hash_secret: self.hash_secret.bytes().to_vec(),
            ..Default::default()
        };
        snap.providers = providers
            .into_iter()
            .map(|p| pb::Provider {
                kind: ProviderKind::from_slug(&p.kind).unwrap_or(ProviderKind::Unspecified) as i32,
                id: p.id,
                name: p.name,
                base_url: p.base_url,
                enabled: p.enabled,
                request_timeout_ms: u32::try_from(p.request_timeout_ms).unwrap_or(60_000),
                api_version: p.api_version.unwrap_or_default(),
            })
            .collect();
        let keyring = self.vault.keyring();
        let mut cooldowns: std::collections::HashMap<String, Vec<pb::KeyState>> =
            std::collections::HashMap::new();
        for c in self.store.live_cooldowns().await? {
            cooldowns
                .entry(c.key_id.clone())
                .or_default()
                .push(cooling_state(&c.model, c.until, &c.class));
        }
        let mut unreadable = std::collections::BTreeSet::new();
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
            let (status, reason) = match k.state.as_str() {
                "disabled" => (
                    pb::KeyStatus::Disabled,
                    k.state_reason.clone().unwrap_or_default(),
                ),
                _ => (pb::KeyStatus::Active, String::new()),
            };
            snap.provider_keys.push(pb::ProviderKey {
                provider_id: k.provider_id,
                owner_user_id: k.owner_user_id.unwrap_or_default(),
                secret: secret.expose().to_vec(),
                fingerprint: k.fingerprint,
                label: k.label,
                weight: u32::try_from(k.weight).unwrap_or(1),
                allowed_models: parse_list(&k.allowed_models),
                state: Some(pb::KeyState {
                    status: status as i32,
                    reason,
                    ..Default::default()
                }),
                cooldowns: cooldowns.remove(&k.id).unwrap_or_default(),
                rpm_limit: k.rpm_limit.and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                id: k.id,
            });
        }
        self.vault.set_unreadable(unreadable);
        snap.client_keys = client_keys
            .into_iter()
            .filter(|c| {
                c.enabled && c.revoked_at.is_none() && active_users.contains_key(&c.user_id)
            })
            .map(|c| pb::ClientKey {
                id: c.id,
                key_hash: c.key_hash,
                prefix: c.prefix,
                allowed_models: parse_list(&c.allowed_models),
                enabled: c.enabled,
                expires_at: c.expires_at.map(ts),
                // The shared pool needs both the key's and the user's permission.
                use_shared_pool: c.use_shared_pool
                    && active_users.get(&c.user_id).copied().unwrap_or(false),
                user_id: c.user_id,
            })
            .collect();
        snap.routes = routes
            .into_iter()
            .map(|r| pb::Route {
                public_model: r.route.public_model,
                strategy: r.route.strategy,
                aliases: parse_list(&r.route.aliases),
                targets: r
                    .targets
                    .into_iter()
                    .map(|t| pb::RouteTarget {
                        provider_id: t.provider_id,
                        upstream_model: t.upstream_model,
                        weight: u32::try_from(t.weight).unwrap_or(1),
                        priority: u32::try_from(t.priority).unwrap_or(0),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();

        let digest: [u8; 32] = {
            use prost::Message;
            use sha2::Digest;
            let mut bytes = zeroize::Zeroizing::new(snap.encode_to_vec());
            let d = sha2::Sha256::digest(bytes.as_slice()).into();
            bytes.zeroize();
            d
        };
        if *last_digest == Some(digest) {
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
        snap.generated_at = Some(ts(now));
        let published = Arc::new(Published(snap));
        {
            let _order = self.publish.lock().unwrap_or_else(|e| e.into_inner());
            self.tx.send_replace(Some(published.clone()));
            let _ = self.events.send(HubEvent::Snapshot(published));
        }
        *last_digest = Some(digest);
        tracing::info!(version, "snapshot published");
        Ok(version)
    }

    /// Pushes one key's health change to every connected proxy. Callers hold the rebuild lock.
    fn publish_key_state(&self, key_id: &str, state: pb::KeyState) {
        let version = self.current_version();
        let delta = pb::Delta {
            base_version: version,
            version,
            key_states: vec![pb::KeyStateUpdate {
                key_id: key_id.to_owned(),
                state: Some(state),
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
        audit: crate::store::AuditEvent,
    ) -> Result<crate::store::entities::key_cooldowns::Model, StoreError> {
        let _health = self.rebuild.lock().await;
        let c = self
            .store
            .apply_cooldown(key_id, model, until, "forced", source, Some(audit))
            .await?;
        self.publish_key_state(key_id, cooling_state(&c.model, c.until, &c.class));
        Ok(c)
    }

    /// Admin: ends every cooldown of a key and re-enables it, fleet-wide.
    pub async fn clear_key(
        &self,
        key_id: &str,
        source: &str,
        audit: crate::store::AuditEvent,
    ) -> Result<(), StoreError> {
        {
            let _health = self.rebuild.lock().await;
            self.store
                .clear_key_health(key_id, None, source, Some(audit))
                .await?;
            self.publish_key_state(
                key_id,
                pb::KeyState {
                    status: pb::KeyStatus::Active as i32,
                    ..Default::default()
                },
            );
        }
        // The enabled state also lives in snapshots, for proxies that connect later.
        self.rebuild().await?;
        Ok(())
    }

    /// Turns what a proxy observed into fleet-wide state: persisted, then pushed to every proxy.
    pub async fn apply_outcome(&self, o: &pb::KeyOutcome, source: &str) -> Result<(), StoreError> {
        let _health = self.rebuild.lock().await;
        let now = Utc::now();
        let until = from_ts(o.retry_at.as_ref()).filter(|t| *t > now);
        let result = match o.class.as_str() {
            "rate_limited" | "quota_exhausted" => {
                let model = if o.class == "rate_limited" {
                    o.upstream_model.as_str()
                } else {
                    ""
                };
                let fallback = if o.class == "rate_limited" {
                    chrono::Duration::seconds(5)
                } else {
                    chrono::Duration::hours(1)
                };
                let until = until.unwrap_or(now + fallback);
                let c = self
                    .store
                    .apply_cooldown(&o.key_id, model, until, &o.class, source, None)
                    .await?;
                self.publish_key_state(&o.key_id, cooling_state(&c.model, c.until, &c.class));
                Ok(())
            }
            "invalid_key" => {
                if self
                    .store
                    .disable_key(&o.key_id, "invalid_key", source)
                    .await?
                {
                    self.publish_key_state(
                        &o.key_id,
                        pb::KeyState {
                            status: pb::KeyStatus::Disabled as i32,
                            reason: "invalid_key".into(),
                            ..Default::default()
                        },
                    );
                }
                Ok(())
            }
            // A trial after a cooldown succeeded: the cooldown is over everywhere.
            "ok" => {
                let mut cleared = false;
                for model in [o.upstream_model.as_str(), ""] {
                    if self
                        .store
                        .clear_key_health_if_expired(&o.key_id, model, source)
                        .await?
                    {
                        cleared = true;
                        self.publish_key_state(
                            &o.key_id,
                            pb::KeyState {
                                status: pb::KeyStatus::Active as i32,
                                model: model.to_owned(),
                                ..Default::default()
                            },
                        );
                    }
                }
                let _ = cleared;
                Ok(())
            }
            _ => Ok(()),
        };
        let class = (o.class != "ok").then_some(o.class.as_str());
        self.store
            .touch_provider_key(
                &o.key_id,
                from_ts(o.observed_at.as_ref()).unwrap_or(now),
                class,
            )
            .await?;
        match result {
            Err(StoreError::NotFound) => Ok(()),
            other => other,
        }
    }

    async fn store_batch(&self, batch: &pb::ReportBatch) -> Result<(), StoreError> {
        // Key health first: it is what other proxies are waiting for.
        for o in &batch.outcomes {
            self.apply_outcome(o, &batch.proxy_id).await?;
        }
        let now = Utc::now();
        let records = batch
            .records
            .iter()
            .map(|r| routing_records::ActiveModel {
                request_id: Set(r.request_id.chars().take(64).collect()),
                proxy_id: Set(batch.proxy_id.chars().take(64).collect()),
                started_at: Set(from_ts(r.started_at.as_ref()).unwrap_or(now)),
                user_id: Set(r.user_id.chars().take(36).collect()),
                client_key_prefix: Set(r.client_key_prefix.chars().take(16).collect()),
                public_model: Set(r.public_model.chars().take(128).collect()),
                status: Set(i32::try_from(r.status).unwrap_or(0)),
                latency_ms: Set(i32::try_from(r.latency_ms).unwrap_or(i32::MAX)),
                stream: Set(r.stream),
                detail: Set(serde_json::json!({
                    "attempts": r.attempts.iter().map(|a| serde_json::json!({
                        "provider_id": a.provider_id,
                        "key_fingerprint": a.key_fingerprint,
                        "upstream_model": a.upstream_model,
                        "status": a.status,
                        "latency_ms": a.latency_ms,
                        "class": a.class,
                    })).collect::<Vec<_>>(),
                    "skipped": r.skipped,
                })
                .to_string()),
                received_at: Set(now),
            })
            .collect();
        self.store.insert_routing_records(records).await?;
        Ok(())
    }
}

/// The tonic service. Only reachable through the mTLS listener built by [`serve`].
pub struct ControlPlaneService {
    hub: Arc<SnapshotHub>,
    /// Flips to true at shutdown so the endless Watch and Report streams end and the server can
    /// drain instead of waiting on them forever.
    stop: watch::Receiver<bool>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Removes a proxy from the connected list when its Watch stream ends.
struct ConnGuard {
    hub: Arc<SnapshotHub>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = self.hub.proxies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.remove(&self.id) {
            tracing::info!(proxy_id = %p.proxy_id, "proxy disconnected");
        }
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type WatchStream = BoxStream<pb::WatchEvent>;
    type ReportStream = BoxStream<pb::ReportAck>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.hub.watch_calls.fetch_add(1, Ordering::Relaxed);
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let proxy_id: String = req.get_ref().proxy_id.chars().take(64).collect();
        if proxy_id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is required"));
        }
        let id = self.hub.next_conn.fetch_add(1, Ordering::Relaxed);
        self.hub
            .proxies
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
        let guard = ConnGuard {
            hub: self.hub.clone(),
            id,
        };
        // The current snapshot and the subscription are taken together (under the publish
        // lock), so the stream starts at a consistent point and then carries every event in order.
        let (first, rx) = {
            let _order = self.hub.publish.lock().unwrap_or_else(|e| e.into_inner());
            (self.hub.tx.borrow().clone(), self.hub.events.subscribe())
        };
        let first = futures_util::stream::iter(first.map(|s| {
            Ok(pb::WatchEvent {
                event: Some(pb::watch_event::Event::Snapshot(s.0.clone())),
            })
        }));
        let rest = tokio_stream::wrappers::BroadcastStream::new(rx).map(move |e| {
            let _alive = &guard;
            match e {
                Ok(HubEvent::Snapshot(s)) => Ok(pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Snapshot(s.0.clone())),
                }),
                Ok(HubEvent::Delta(d)) => Ok(pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Delta((*d).clone())),
                }),
                // Lagging behind: fail the stream; the proxy reconnects and gets a snapshot.
                Err(_) => Err(Status::aborted("watch stream lagged; resubscribe")),
            }
        });
        let stream = first.chain(rest).take_until(stopped(self.stop.clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report(
        &self,
        req: Request<Streaming<pb::ReportBatch>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        self.hub.report_calls.fetch_add(1, Ordering::Relaxed);
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hub = self.hub.clone();
        let stop = stopped(self.stop.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    () = &mut stop => break,
                };
                let batch = match next {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "report stream ended");
                        break;
                    }
                };
                // Acknowledge only what is stored; on a store error the proxy keeps the batch
                // and resends it after reconnecting.
                let reply = match hub.store_batch(&batch).await {
                    Ok(()) => Ok(pb::ReportAck { seq: batch.seq }),
                    Err(e) => {
                        tracing::error!(error = %e, "storing report batch failed");
                        Err(Status::unavailable("report not stored"))
                    }
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the gRPC API on `listener`, requiring a client certificate signed by the configured CA.
pub async fn serve(
    hub: Arc<SnapshotHub>,
    tls: TlsFiles,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_cert_pem))
        .client_auth_optional(false)
        .timeout(std::time::Duration::from_secs(10));
    // Small, latency-sensitive frames (deltas): no Nagle delay.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .tls_config(tls_config)?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .add_service(ControlPlaneServer::new(ControlPlaneService {
            hub,
            stop: stop.clone(),
        }))
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await?;
    Ok(())
}
