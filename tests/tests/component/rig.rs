//! The component rig: the proxy's real app (admission, routing, upstream, relay, health) served
//! in-process on 127.0.0.1:0, a mock provider, and a fake control plane — scripted snapshots and
//! deltas go in through the same `Sink` the Watch stream feeds, and reports come out of the same
//! queues the Report stream drains. Time is a `ManualClock` the test moves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use llmhub_e2e::mock::MockProvider;
use llmhub_proto::v1 as pb;
use llmhub_providers::EgressPolicy;
use llmhub_proxy::Parts;
use llmhub_proxy::clock::ManualClock;
use llmhub_proxy::control::{ReportQueues, Sink};
use llmhub_proxy::health::BreakerPolicy;
use serde_json::Value;
use sha2::Sha256;

/// The client key every rig accepts.
pub const CLIENT_KEY: &str = "lh-component-test-key";
const HASH_SECRET: [u8; 32] = [7; 32];
/// How long a test waits for something that should already be on its way.
const PATIENCE: Duration = Duration::from_secs(5);

pub struct Rig {
    pub mock: MockProvider,
    pub clock: Arc<ManualClock>,
    pub sink: Sink,
    pub queues: ReportQueues,
    pub url: String,
    pub http: reqwest::Client,
    /// The base URL every scripted provider gets (default: the mock's, on 127.0.0.1).
    pub provider_base_url: String,
    /// The price table every scripted snapshot carries.
    pub prices: Vec<pb::ModelPrice>,
    version: u64,
    _server: tokio::task::JoinHandle<()>,
}

/// A provider in a scripted snapshot.
pub struct P {
    pub id: &'static str,
    pub kind: pb::ProviderKind,
}

/// A provider key: (id, provider id, secret).
pub type K = (&'static str, &'static str, &'static str);

/// A route: public model → targets (provider id, upstream model, priority).
pub struct R {
    pub model: &'static str,
    pub targets: Vec<(&'static str, &'static str, u32)>,
}

impl Rig {
    /// A proxy whose egress policy allows loopback, where the mock provider listens.
    pub async fn start(breaker: BreakerPolicy) -> Rig {
        Rig::start_with(breaker, EgressPolicy::loopback()).await
    }

    pub async fn start_with(breaker: BreakerPolicy, egress: EgressPolicy) -> Rig {
        let mock = MockProvider::start().await.expect("mock provider");
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let Parts { app, sink, queues } = Parts::new(
            breaker,
            1000,
            1 << 20,
            clock.clone(),
            egress,
            llmhub_proxy::limits::Limiter::local(),
        )
        .expect("parts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(llmhub_proxy::server::serve(
            listener,
            move |req| llmhub_proxy::api::handle(app.clone(), req),
            Duration::from_secs(5),
            std::future::pending(),
            Duration::from_secs(1),
        ));
        Rig {
            provider_base_url: mock.base_url(),
            prices: Vec::new(),
            mock,
            clock,
            sink,
            queues,
            url,
            http: reqwest::Client::new(),
            version: 0,
            _server: server,
        }
    }

    /// Installs the next snapshot version built from the script.
    pub fn snapshot(&mut self, providers: &[P], keys: &[K], routes: &[R]) {
        self.version += 1;
        let msg = self.build(self.version, providers, keys, routes);
        self.send_snapshot(msg);
    }

    pub fn build(&self, version: u64, providers: &[P], keys: &[K], routes: &[R]) -> pb::Snapshot {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&HASH_SECRET).expect("hmac");
        mac.update(CLIENT_KEY.as_bytes());
        pb::Snapshot {
            version,
            client_key_hash_secret: HASH_SECRET.to_vec(),
            providers: providers
                .iter()
                .map(|p| pb::Provider {
                    id: p.id.into(),
                    name: p.id.into(),
                    kind: p.kind as i32,
                    base_url: self.provider_base_url.clone(),
                    enabled: true,
                    request_timeout_ms: 5000,
                    api_version: "2024-10-21".into(),
                })
                .collect(),
            provider_keys: keys
                .iter()
                .map(|(id, provider, secret)| pb::ProviderKey {
                    id: (*id).into(),
                    provider_id: (*provider).into(),
                    secret: secret.as_bytes().to_vec(),
                    fingerprint: format!("fp_{id}"),
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            client_keys: vec![pb::ClientKey {
                id: "c1".into(),
                user_id: "u1".into(),
                key_hash: mac.finalize().into_bytes().to_vec(),
                prefix: "lh-compo".into(),
                enabled: true,
                use_shared_pool: true,
                ..Default::default()
            }],
            routes: routes
                .iter()
                .map(|r| {
                    let mut route = pb::Route {
                        public_model: r.model.into(),
                        targets: r
                            .targets
                            .iter()
                            .map(|(p, m, prio)| pb::RouteTarget {
                                provider_id: (*p).into(),
                                upstream_model: (*m).into(),
                                weight: 1,
                                priority: *prio,
                            })
                            .collect(),
                        ..Default::default()
                    };
                    route.set_strategy(llmhub_providers::Strategy::Weighted);
                    route
                })
                .collect(),
            prices: self.prices.clone(),
            ..Default::default()
        }
    }

    pub fn send_snapshot(&self, msg: pb::Snapshot) {
        self.sink.apply(pb::watch_event::Event::Snapshot(msg));
    }

    /// A key-health delta, as the control plane pushes it.
    pub fn delta(&self, key_id: &str, state: pb::KeyState) {
        self.sink.apply(pb::watch_event::Event::Delta(pb::Delta {
            key_states: vec![pb::KeyStateUpdate {
                key_id: key_id.into(),
                state: Some(state),
            }],
            ..Default::default()
        }));
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// `POST path` with the client key and a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// An OpenAI chat completion for `model`.
    pub async fn chat(&self, model: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        self.post(
            "/v1/chat/completions",
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
    }

    /// The next routing record the proxy finished.
    pub async fn record(&mut self) -> pb::RoutingRecord {
        tokio::time::timeout(PATIENCE, self.queues.next_record())
            .await
            .expect("a routing record in time")
            .expect("record queue open")
    }

    /// The next key outcome the proxy reported.
    pub async fn outcome(&mut self) -> pb::KeyOutcome {
        tokio::time::timeout(PATIENCE, self.queues.next_outcome())
            .await
            .expect("a key outcome in time")
            .expect("outcome queue open")
    }

    /// Upstream requests the mock received so far.
    pub fn upstream_count(&self) -> usize {
        self.mock.requests().len()
    }
}

/// Seconds from `now` to a protobuf timestamp.
pub fn secs_until(t: &prost_types::Timestamp, now: SystemTime) -> f64 {
    let at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0));
    match at.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
