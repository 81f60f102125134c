//! The proxies' gRPC service (mutual TLS only): the edge between the hub's domain types and the
//! proto contract. This is the only module of the control plane that builds or reads `pb::`
//! messages; the hub (`crate::hub`) decides what is published and what reports mean.

use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use llmhub_proto::v1::{self as pb, ProviderKind};
use llmhub_proto::{ControlPlane, ControlPlaneServer};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::config::TlsFiles;
use crate::hub::{
    Attempt, Budget, Delta, FailureClass, HubEvent, KeyHealth, KeyOutcome, Limits, Outcome, Report,
    Route, RoutingRecord, Snapshot, SnapshotHub, Subscription,
};
use crate::store::KeyState;

// ---- domain → proto ----

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn key_status(s: KeyState) -> pb::KeyStatus {
    match s {
        KeyState::Active => pb::KeyStatus::Active,
        KeyState::CoolingDown => pb::KeyStatus::CoolingDown,
        KeyState::Disabled => pb::KeyStatus::Disabled,
    }
}

fn key_state(h: &KeyHealth) -> pb::KeyState {
    pb::KeyState {
        status: key_status(h.state) as i32,
        until: h.until.map(ts),
        reason: h.reason.clone(),
        model: h.model.clone(),
    }
}

/// Writes the strategy twice: the enum for current proxies, the string for older ones.
fn route(r: &Route) -> pb::Route {
    pb::Route {
        public_model: r.public_model.clone(),
        strategy: r.strategy.as_str().to_owned(),
        routing_strategy: pb::RoutingStrategy::from(r.strategy) as i32,
        aliases: r.aliases.clone(),
        targets: r
            .targets
            .iter()
            .map(|t| pb::RouteTarget {
                provider_id: t.provider_id.clone(),
                upstream_model: t.upstream_model.clone(),
                weight: t.weight,
                priority: t.priority,
            })
            .collect(),
    }
}

fn budget(b: &Budget) -> pb::Budget {
    pb::Budget {
        limit_nanos: b.limit_nanos,
        period: pb::BudgetPeriod::from(b.period) as i32,
        period_start: Some(ts(b.period_start)),
        expires_at: b.expires_at.map(ts),
        spent_nanos: b.spent_nanos,
    }
}

/// Limits on the wire: 0 is "no limit".
fn limit(v: Option<u32>) -> u32 {
    v.unwrap_or(0)
}

fn user_limits(u: &crate::hub::UserLimits) -> pb::UserLimits {
    let Limits {
        rpm,
        tpm,
        max_concurrent,
    } = u.limits;
    pb::UserLimits {
        user_id: u.user_id.clone(),
        rpm_limit: limit(rpm),
        tpm_limit: limit(tpm),
        max_concurrent: limit(max_concurrent),
        budget: u.budget.as_ref().map(budget),
    }
}

/// The proto form of a published snapshot, with its own copy of the secrets (as the message
/// tonic encodes and drops for each stream).
fn snapshot(s: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        version: s.version,
        generated_at: Some(ts(s.generated_at)),
        providers: s
            .providers
            .iter()
            .map(|p| pb::Provider {
                id: p.id.clone(),
                name: p.name.clone(),
                kind: llmhub_providers::Kind::from_slug(&p.kind)
                    .map_or(ProviderKind::Unspecified, ProviderKind::from)
                    as i32,
                base_url: p.base_url.clone(),
                enabled: p.enabled,
                request_timeout_ms: p.request_timeout_ms,
                api_version: p.api_version.clone(),
            })
            .collect(),
        provider_keys: s
            .provider_keys
            .iter()
            .map(|k| pb::ProviderKey {
                id: k.id.clone(),
                provider_id: k.provider_id.clone(),
                owner_user_id: k.owner_user_id.clone().unwrap_or_default(),
                secret: k.secret.expose().to_vec(),
                fingerprint: k.fingerprint.clone(),
                label: k.label.clone(),
                weight: k.weight,
                allowed_models: k.allowed_models.clone(),
                state: Some(key_state(&k.state)),
                cooldowns: k.cooldowns.iter().map(key_state).collect(),
                rpm_limit: k.rpm_limit.unwrap_or(0),
                tpm_limit: k.tpm_limit.unwrap_or(0),
            })
            .collect(),
        client_keys: s
            .client_keys
            .iter()
            .map(|c| pb::ClientKey {
                id: c.id.clone(),
                user_id: c.user_id.clone(),
                key_hash: c.key_hash.clone(),
                prefix: c.prefix.clone(),
                allowed_models: c.allowed_models.clone(),
                enabled: c.enabled,
                expires_at: c.expires_at.map(ts),
                use_shared_pool: c.use_shared_pool,
                rpm_limit: limit(c.limits.rpm),
                tpm_limit: limit(c.limits.tpm),
                max_concurrent: limit(c.limits.max_concurrent),
                budget: c.budget.as_ref().map(budget),
                previous_key_hash: c.previous_key_hash.clone().unwrap_or_default(),
                previous_valid_until: c.previous_valid_until.map(ts),
            })
            .collect(),
        routes: s.routes.iter().map(route).collect(),
        client_key_hash_secret: s.client_key_hash_secret.bytes().to_vec(),
        users: s.users.iter().map(user_limits).collect(),
        prices: s
            .prices
            .iter()
            .map(|p| pb::ModelPrice {
                model: p.model.clone(),
                input_nanos_per_token: p.price.input_nanos_per_token,
                output_nanos_per_token: p.price.output_nanos_per_token,
                cached_input_nanos_per_token: p.price.cached_input_nanos_per_token,
            })
            .collect(),
        ..Default::default()
    }
}

fn delta(d: &Delta) -> pb::Delta {
    pb::Delta {
        base_version: d.base_version,
        version: d.version,
        key_states: d
            .key_states
            .iter()
            .map(|c| pb::KeyStateUpdate {
                key_id: c.key_id.clone(),
                state: Some(key_state(&c.health)),
            })
            .collect(),
        ..Default::default()
    }
}

/// A hub event for one Watch stream; snapshots carry the fleet size at the time they are sent.
fn watch_event(e: &HubEvent, live_proxies: impl Fn() -> u32) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(match e {
            HubEvent::Snapshot(s) => pb::watch_event::Event::Snapshot(pb::Snapshot {
                live_proxies: live_proxies(),
                ..snapshot(s)
            }),
            HubEvent::Delta(d) => pb::watch_event::Event::Delta(delta(d)),
            // A delta of nothing but the fleet size: proxies apply it whatever their version.
            HubEvent::Fleet(n) => pb::watch_event::Event::Delta(pb::Delta {
                live_proxies: *n,
                ..Default::default()
            }),
        }),
    }
}

// ---- proto → domain ----

fn from_ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

/// An outcome as a peer of any version reports it: the enum when set, else the string (see
/// `llmhub_proto`); the string `timeout` refines the enum's "provider unavailable". `None` when
/// neither names a known class.
fn outcome_of(read: Option<Option<FailureClass>>, text: &str) -> Option<Outcome> {
    if text == Outcome::Timeout.as_str() {
        return Some(Outcome::Timeout);
    }
    match read? {
        None => Some(Outcome::Ok),
        Some(c) => Some(Outcome::Failed(c)),
    }
}

fn key_outcome(o: &pb::KeyOutcome) -> KeyOutcome {
    KeyOutcome {
        key_id: o.key_id.clone(),
        upstream_model: o.upstream_model.clone(),
        class: outcome_of(o.outcome_class(), &o.class),
        status: o.status,
        observed_at: from_ts(o.observed_at.as_ref()),
        retry_at: from_ts(o.retry_at.as_ref()),
        provider_stated: o.provider_stated,
        client_key_prefix: o.client_key_prefix.clone(),
        needs_verification: o.needs_verification,
    }
}

fn attempt(a: &pb::Attempt) -> Attempt {
    Attempt {
        provider_id: a.provider_id.clone(),
        key_fingerprint: a.key_fingerprint.clone(),
        upstream_model: a.upstream_model.clone(),
        status: a.status,
        latency_ms: a.latency_ms,
        class: outcome_of(a.attempt_class(), &a.class),
    }
}

fn routing_record(r: &pb::RoutingRecord) -> RoutingRecord {
    RoutingRecord {
        request_id: r.request_id.clone(),
        started_at: from_ts(r.started_at.as_ref()),
        user_id: r.user_id.clone(),
        client_key_prefix: r.client_key_prefix.clone(),
        public_model: r.public_model.clone(),
        attempts: r.attempts.iter().map(attempt).collect(),
        status: r.status,
        latency_ms: r.latency_ms,
        stream: r.stream,
        skipped: r.skipped.clone(),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cached_tokens: r.cached_tokens,
        partial: r.partial,
        cost_nanos: r.cost_nanos,
        client_key_id: r.client_key_id.clone(),
    }
}

fn report(b: &pb::ReportBatch) -> Report {
    Report {
        proxy_id: b.proxy_id.clone(),
        records: b.records.iter().map(routing_record).collect(),
        outcomes: b.outcomes.iter().map(key_outcome).collect(),
    }
}

// ---- the service ----

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

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type WatchStream = BoxStream<pb::WatchEvent>;
    type ReportStream = BoxStream<pb::ReportAck>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.hub.note_watch_call();
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let proxy_id: String = req.get_ref().proxy_id.chars().take(64).collect();
        if proxy_id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is required"));
        }
        // One ordered event stream per Watch: the snapshot current at subscription, then every
        // later event in publication order (the hub takes both under its publish lock).
        let Subscription {
            first,
            events,
            conn,
        } = self.hub.subscribe(proxy_id, peer);
        let hub = self.hub.clone();
        let first = futures_util::stream::iter(
            first.map(|s| Ok(watch_event(&HubEvent::Snapshot(s), || hub.live_proxies()))),
        );
        let hub = self.hub.clone();
        let rest = tokio_stream::wrappers::BroadcastStream::new(events).map(move |e| {
            let _alive = &conn;
            match e {
                Ok(e) => Ok(watch_event(&e, || hub.live_proxies())),
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
        self.hub.note_report_call();
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
                let reply = match hub.store_report(&report(&batch)).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RoutingStrategy;

    fn outcome(class: &str, failure_class: pb::FailureClass) -> pb::KeyOutcome {
        pb::KeyOutcome {
            key_id: "k1".into(),
            upstream_model: "m".into(),
            class: class.into(),
            failure_class: failure_class as i32,
            ..Default::default()
        }
    }

    #[test]
    fn reads_failure_classes_from_old_and_new_proxies() {
        use pb::FailureClass as P;
        // (class string, enum, expected): new proxies set both; old ones only the string; the
        // enum wins when they disagree.
        let table = [
            (
                "rate_limited",
                P::RateLimited,
                Some(FailureClass::RateLimited),
            ),
            ("", P::QuotaExhausted, Some(FailureClass::QuotaExhausted)),
            ("ok", P::InvalidKey, Some(FailureClass::InvalidKey)),
            (
                "rate_limited",
                P::Unspecified,
                Some(FailureClass::RateLimited),
            ),
            (
                "quota_exhausted",
                P::Unspecified,
                Some(FailureClass::QuotaExhausted),
            ),
            (
                "invalid_key",
                P::Unspecified,
                Some(FailureClass::InvalidKey),
            ),
            (
                "provider_unavailable",
                P::Unspecified,
                Some(FailureClass::Overloaded),
            ),
            (
                "client_error",
                P::Unspecified,
                Some(FailureClass::ClientError),
            ),
            (
                "client_error",
                P::ProviderUnavailable,
                Some(FailureClass::Overloaded),
            ),
            ("x", P::ClientError, Some(FailureClass::ClientError)),
        ];
        let table = table
            .into_iter()
            .map(|(c, e, f)| (c, e, f.map(Outcome::Failed)))
            .chain([
                ("ok", P::Unspecified, Some(Outcome::Ok)),
                ("x", P::Ok, Some(Outcome::Ok)),
                ("timeout", P::Unspecified, Some(Outcome::Timeout)),
                ("timeout", P::ProviderUnavailable, Some(Outcome::Timeout)),
                ("nonsense", P::Unspecified, None),
                ("", P::Unspecified, None),
            ]);
        for (class, e, expected) in table {
            assert_eq!(
                key_outcome(&outcome(class, e)).class,
                expected,
                "{class} {e:?}"
            );
            let a = pb::Attempt {
                class: class.into(),
                failure_class: e as i32,
                ..Default::default()
            };
            assert_eq!(attempt(&a).class, expected, "attempt {class} {e:?}");
        }
        // An enum value from a newer proxy that this build does not know reads the string.
        let mut o = outcome("rate_limited", P::Unspecified);
        o.failure_class = 99;
        assert_eq!(
            key_outcome(&o).class,
            Some(Outcome::Failed(FailureClass::RateLimited))
        );
    }

    #[test]
    fn routes_carry_the_strategy_as_enum_and_string() {
        for (s, e) in [
            (RoutingStrategy::Weighted, pb::RoutingStrategy::Weighted),
            (
                RoutingStrategy::LeastInFlight,
                pb::RoutingStrategy::LeastInflight,
            ),
            (RoutingStrategy::Latency, pb::RoutingStrategy::Latency),
        ] {
            let r = route(&Route {
                public_model: "m".into(),
                strategy: s,
                aliases: vec![],
                targets: vec![],
            });
            assert_eq!(r.routing_strategy, e as i32);
            assert_eq!(r.strategy, s.as_str());
        }
    }

    #[test]
    fn key_health_maps_to_proto_key_state() {
        let until = DateTime::from_timestamp(1_700_000_000, 5).unwrap();
        let s = key_state(&KeyHealth::cooling("gpt", until, "rate_limited"));
        assert_eq!(s.status, pb::KeyStatus::CoolingDown as i32);
        assert_eq!(s.until, Some(ts(until)));
        assert_eq!(
            (s.reason.as_str(), s.model.as_str()),
            ("rate_limited", "gpt")
        );
        assert_eq!(
            key_state(&KeyHealth::disabled("invalid_key")),
            pb::KeyState {
                status: pb::KeyStatus::Disabled as i32,
                reason: "invalid_key".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            key_state(&KeyHealth::active("")),
            pb::KeyState {
                status: pb::KeyStatus::Active as i32,
                ..Default::default()
            }
        );
    }

    #[test]
    fn client_keys_and_users_carry_limits_budgets_and_the_previous_hash() {
        use crate::hub::{BudgetPeriod, ClientKey, UserLimits};
        let start = DateTime::from_timestamp(1_740_787_200, 0).unwrap();
        let until = DateTime::from_timestamp(1_740_800_000, 0).unwrap();
        let b = Budget {
            limit_nanos: 25_500_000_000,
            period: BudgetPeriod::Monthly,
            period_start: start,
            expires_at: Some(until),
            spent_nanos: 0,
        };
        let snap = Snapshot {
            version: 3,
            generated_at: start,
            prices: vec![],
            providers: vec![],
            provider_keys: vec![],
            client_keys: vec![ClientKey {
                id: "c1".into(),
                user_id: "u1".into(),
                key_hash: vec![1; 32],
                prefix: "lh-abc".into(),
                allowed_models: vec![],
                enabled: true,
                expires_at: None,
                use_shared_pool: true,
                limits: Limits {
                    rpm: Some(60),
                    tpm: None,
                    max_concurrent: Some(4),
                },
                budget: Some(b),
                previous_key_hash: Some(vec![2; 32]),
                previous_valid_until: Some(until),
            }],
            routes: vec![],
            client_key_hash_secret: std::sync::Arc::new(crate::vault::HashSecret::from_bytes(
                &[9; 32],
            )),
            users: vec![UserLimits {
                user_id: "u1".into(),
                limits: Limits {
                    rpm: None,
                    tpm: Some(1000),
                    max_concurrent: None,
                },
                budget: None,
            }],
        };
        let m = snapshot(&snap);
        let c = &m.client_keys[0];
        assert_eq!(
            (c.rpm_limit, c.tpm_limit, c.max_concurrent),
            (60, 0, 4),
            "0 is no limit on the wire"
        );
        assert_eq!(
            c.budget,
            Some(pb::Budget {
                limit_nanos: 25_500_000_000,
                period: pb::BudgetPeriod::Monthly as i32,
                period_start: Some(ts(start)),
                expires_at: Some(ts(until)),
                spent_nanos: 0,
            })
        );
        assert_eq!(c.previous_key_hash, vec![2; 32]);
        assert_eq!(c.previous_valid_until, Some(ts(until)));
        assert_eq!(
            m.users,
            vec![pb::UserLimits {
                user_id: "u1".into(),
                rpm_limit: 0,
                tpm_limit: 1000,
                max_concurrent: 0,
                budget: None,
            }]
        );
    }
}
