//! The proxy's link to the control plane: the `Watch` stream that feeds snapshots and the
//! `Report` stream that carries routing records back. Both run over one mutual-TLS channel and
//! reconnect with jittered exponential backoff; while disconnected the proxy keeps serving its last
//! good snapshot and buffers reports (bounded).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use llmhub_proto::ControlPlaneClient;
use llmhub_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::clock::Clock;
use crate::config::Config;
use crate::health::{Health, KeyChange};
use crate::spool::Spool;
use crate::state::{Snapshot, SnapshotCell};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane endpoint: {0}")]
    Endpoint(String),
}

/// Builds the mTLS endpoint. There is no plaintext variant.
pub fn endpoint(config: &Config) -> Result<Endpoint, ControlError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.ca_cert_pem))
        .identity(Identity::from_pem(&config.cert_pem, &config.key_pem))
        .domain_name(config.control_plane_server_name.clone());
    Endpoint::from_shared(config.control_plane_url.clone())
        .map_err(|e| ControlError::Endpoint(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| ControlError::Endpoint(e.to_string()))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
}

/// Health of the control-plane link, shown on `/readyz`.
#[derive(Default)]
pub struct LinkStatus {
    pub connected: AtomicBool,
    pub snapshots_applied: AtomicU64,
    pub snapshots_rejected: AtomicU64,
    pub deltas_applied: AtomicU64,
    pub reports_dropped: AtomicU64,
    /// Records dropped because the spool was full or could not be written (also counted in
    /// `reports_dropped`).
    pub spool_dropped: AtomicU64,
    /// Bytes of routing records spooled and not yet acknowledged.
    pub spool_bytes: AtomicU64,
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// Full jitter, so a fleet of proxies does not reconnect in lockstep after an outage.
    async fn wait(&mut self) {
        let max_ms = u64::try_from(self.next.as_millis()).unwrap_or(10_000);
        let ms = rand::random_range(max_ms / 2..=max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}

/// Where the Watch stream's events land: the snapshot cell and this proxy's key health. The
/// watch loop feeds it from the control plane; component tests feed it scripted events.
#[derive(Clone)]
pub struct Sink {
    pub cell: Arc<SnapshotCell>,
    pub health: Arc<Health>,
    pub status: Arc<LinkStatus>,
    pub clock: Arc<dyn Clock>,
    /// Told the fleet size, for the local share of each limit.
    pub limiter: Arc<crate::limits::Limiter>,
}

impl Sink {
    /// Applies one Watch event in order. A snapshot is validated whole and installed unless it
    /// is older than the one served; only then does its key health apply, so an older snapshot
    /// can never undo newer health.
    pub fn apply(&self, event: pb::watch_event::Event) {
        match event {
            pb::watch_event::Event::Snapshot(msg) => {
                let version = msg.version;
                let live_proxies = msg.live_proxies;
                match Snapshot::from_proto(msg) {
                    Ok(snap) => {
                        if self.cell.store(snap)
                            && let Some(current) = self.cell.load()
                        {
                            self.health.apply_snapshot(&current, self.clock.now());
                            self.limiter.set_live_proxies(live_proxies);
                            self.status
                                .snapshots_applied
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(version, "snapshot applied");
                        }
                    }
                    Err(e) => {
                        self.status
                            .snapshots_rejected
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(version, error = %e, "snapshot rejected; keeping the last good one");
                    }
                }
            }
            pb::watch_event::Event::Delta(d) => {
                if d.live_proxies > 0 {
                    self.limiter.set_live_proxies(d.live_proxies);
                }
                // Key health changes apply on their own: each names the key and its new state.
                for u in &d.key_states {
                    if let Some(change) = u.state.as_ref().and_then(key_change) {
                        self.health.apply_change(&u.key_id, &change);
                        self.status.deltas_applied.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(key_id = %u.key_id, ?change, "key state applied");
                    }
                }
            }
        }
    }
}

/// The domain change a wire key state describes; `None` for one this build cannot act on.
fn key_change(state: &pb::KeyState) -> Option<KeyChange> {
    match pb::KeyStatus::try_from(state.status).ok()? {
        pb::KeyStatus::CoolingDown => Some(KeyChange::Cooling {
            model: state.model.clone(),
            until: state
                .until
                .as_ref()
                .and_then(crate::state::to_system_time)?,
            reason: state.reason.clone(),
        }),
        pb::KeyStatus::Disabled => Some(KeyChange::Disabled {
            reason: state.reason.clone(),
        }),
        pb::KeyStatus::Active => Some(KeyChange::Active {
            model: state.model.clone(),
        }),
        pb::KeyStatus::Unspecified => None,
    }
}

/// Follows the Watch stream forever, installing every valid snapshot.
pub async fn watch_loop(endpoint: Endpoint, proxy_id: String, sink: Sink) {
    let mut backoff = Backoff::new();
    loop {
        match watch_once(&endpoint, &proxy_id, &sink, &mut backoff).await {
            Ok(()) => {
                tracing::warn!("control plane closed the watch stream; serving last snapshot")
            }
            Err(e) => {
                tracing::warn!(error = %e, "control plane watch failed; serving last snapshot")
            }
        }
        sink.status.connected.store(false, Ordering::Relaxed);
        backoff.wait().await;
    }
}

async fn watch_once(
    endpoint: &Endpoint,
    proxy_id: &str,
    sink: &Sink,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {}", error_chain(&e))))?;
    let mut client = ControlPlaneClient::new(channel);
    // The control plane always answers a Watch with a full snapshot first. Waiting for it is
    // bounded: a channel the server will not serve (a refused client certificate under TLS 1.3
    // is only reported after the handshake) must fail and retry, not hang until keep-alives
    // notice.
    let request = pb::WatchRequest {
        proxy_id: proxy_id.to_owned(),
        known_version: sink.cell.version(),
    };
    let mut stream = within(FIRST_EVENT, client.watch(request))
        .await??
        .into_inner();
    let mut next = within(FIRST_EVENT, stream.message()).await??;
    sink.status.connected.store(true, Ordering::Relaxed);
    tracing::info!("connected to control plane");
    backoff.reset();
    while let Some(event) = next {
        if let Some(event) = event.event {
            sink.apply(event);
        }
        next = stream.message().await?;
    }
    Ok(())
}

/// How long a new Watch may take to deliver its first snapshot.
const FIRST_EVENT: Duration = Duration::from_secs(10);

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no snapshot from the control plane in time"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Queues for routing records and key outcomes; `try_send` never blocks a request.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<pb::RoutingRecord>,
    outcomes: mpsc::Sender<pb::KeyOutcome>,
    status: Arc<LinkStatus>,
}

/// The receiving ends, owned by [`report_loop`].
pub struct ReportQueues {
    records: mpsc::Receiver<pb::RoutingRecord>,
    outcomes: mpsc::Receiver<pb::KeyOutcome>,
    status: Arc<LinkStatus>,
}

impl ReportQueues {
    /// The next routing record, as the report loop would send it (component tests).
    pub async fn next_record(&mut self) -> Option<pb::RoutingRecord> {
        self.records.recv().await
    }

    /// The next key outcome (component tests).
    pub async fn next_outcome(&mut self) -> Option<pb::KeyOutcome> {
        self.outcomes.recv().await
    }

    /// A key outcome already queued, if any (component tests).
    pub fn try_outcome(&mut self) -> Option<pb::KeyOutcome> {
        self.outcomes.try_recv().ok()
    }

    /// A routing record already queued, if any (component tests).
    pub fn try_record(&mut self) -> Option<pb::RoutingRecord> {
        self.records.try_recv().ok()
    }
}

impl Reporter {
    pub fn new(capacity: usize, status: Arc<LinkStatus>) -> (Self, ReportQueues) {
        let (tx, records) = mpsc::channel(capacity);
        let (otx, outcomes) = mpsc::channel(4096);
        (
            Reporter {
                tx,
                outcomes: otx,
                status: status.clone(),
            },
            ReportQueues {
                records,
                outcomes,
                status,
            },
        )
    }

    pub fn record(&self, r: pb::RoutingRecord) {
        if self.tx.try_send(r).is_err() {
            self.status.reports_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("routing record dropped: report queue full");
        }
    }

    /// A key outcome the fleet must hear about now (sent ahead of routing records).
    pub fn outcome(&self, o: pb::KeyOutcome) {
        if self.outcomes.try_send(o).is_err() {
            self.status.reports_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("key outcome dropped: queue full");
        }
    }
}

const MAX_BATCH: usize = 200;
/// Unacknowledged key-outcome batches held for resending (outcomes are not spooled: they matter
/// now or not at all). When full the proxy stops draining the outcome queue, which then drops
/// (and counts) new ones rather than growing without bound.
const MAX_PENDING_BATCHES: usize = 500;

/// Moves routing records from the in-memory queue into the spool, in batches.
struct Pump {
    rx: mpsc::Receiver<pb::RoutingRecord>,
    spool: Spool,
    proxy_id: String,
    status: Arc<LinkStatus>,
    /// Every `Reporter` is gone (shutdown).
    closed: bool,
}

impl Pump {
    /// Spools `first` and whatever else is queued, up to a batch.
    fn take(&mut self, first: Option<pb::RoutingRecord>) {
        let Some(first) = first else {
            self.closed = true;
            return;
        };
        let mut records = vec![first];
        while records.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(r) => records.push(r),
                Err(_) => break,
            }
        }
        let n = records.len() as u64;
        let batch = pb::ReportBatch {
            seq: 0,
            proxy_id: self.proxy_id.clone(),
            records,
            outcomes: vec![],
        };
        if let Err(e) = self.spool.append(batch) {
            self.status.reports_dropped.fetch_add(n, Ordering::Relaxed);
            self.status.spool_dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, records = n, "routing records dropped: cannot spool them");
        }
        self.status
            .spool_bytes
            .store(self.spool.bytes(), Ordering::Relaxed);
    }

    /// Runs `f` while spooling records as they come, so an unreachable control plane never
    /// stops the queue from draining.
    async fn meanwhile<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                r = self.rx.recv(), if !self.closed => self.take(r),
            }
        }
    }
}

/// Sends routing records over the Report stream from the spool, resending unacknowledged
/// batches after a reconnect (at-least-once; the control plane deduplicates by request id), and
/// key outcomes ahead of them.
pub async fn report_loop(endpoint: Endpoint, proxy_id: String, queues: ReportQueues, spool: Spool) {
    let ReportQueues {
        records: rx,
        outcomes: mut orx,
        status,
    } = queues;
    let mut pump = Pump {
        rx,
        spool,
        proxy_id: proxy_id.clone(),
        status,
        closed: false,
    };
    let mut outcomes: BTreeMap<u64, pb::ReportBatch> = BTreeMap::new();
    let mut backoff = Backoff::new();
    let mut outcomes_closed = false;
    // Once every `Reporter` is gone (shutdown) the loop ends when all it holds is acknowledged,
    // so the last requests' records are not lost (a disk spool keeps them for the next run).
    let finished = |pump: &Pump, outcomes: &BTreeMap<u64, pb::ReportBatch>, oc: bool| {
        pump.closed && oc && outcomes.is_empty() && pump.spool.unacked() == 0
    };
    loop {
        if finished(&pump, &outcomes, outcomes_closed) {
            return;
        }
        let opened = pump
            .meanwhile(async {
                let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
                let (out_tx, out_rx) = mpsc::channel::<pb::ReportBatch>(16);
                let acks = ControlPlaneClient::new(channel)
                    .report(tokio_stream::wrappers::ReceiverStream::new(out_rx))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                Ok::<_, String>((out_tx, acks))
            })
            .await;
        let (out_tx, mut acks) = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "report stream not opened");
                pump.meanwhile(backoff.wait()).await;
                continue;
            }
        };
        backoff.reset();
        // Everything not yet acknowledged is sent again, oldest first.
        pump.spool.rewind();
        let mut to_send: VecDeque<u64> = outcomes.keys().copied().collect();
        loop {
            if finished(&pump, &outcomes, outcomes_closed) {
                return;
            }
            tokio::select! {
                // Outcomes first: other proxies wait on them.
                biased;
                first = orx.recv(), if !outcomes_closed && outcomes.len() < MAX_PENDING_BATCHES => {
                    let Some(first) = first else {
                        outcomes_closed = true;
                        continue;
                    };
                    let mut batch = vec![first];
                    while let Ok(o) = orx.try_recv() {
                        batch.push(o);
                    }
                    let seq = pump.spool.next_seq();
                    outcomes.insert(seq, pb::ReportBatch { seq, proxy_id: proxy_id.clone(), records: vec![], outcomes: batch });
                    to_send.push_front(seq);
                }
                permit = out_tx.reserve(), if !to_send.is_empty() || pump.spool.has_next() => {
                    let Ok(permit) = permit else { break };
                    if let Some(b) = to_send.pop_front().and_then(|s| outcomes.get(&s)) {
                        permit.send(b.clone());
                    } else {
                        match pump.spool.next_batch() {
                            Ok(Some(b)) => permit.send(b),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read the report spool; retrying");
                                break;
                            }
                        }
                    }
                }
                first = pump.rx.recv(), if !pump.closed => pump.take(first),
                ack = acks.message() => match ack {
                    Ok(Some(a)) => {
                        if outcomes.remove(&a.seq).is_none() && pump.spool.ack(a.seq) {
                            pump.status.spool_bytes.store(pump.spool.bytes(), Ordering::Relaxed);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "report stream ended");
                        break;
                    }
                },
            }
        }
        pump.meanwhile(backoff.wait()).await;
    }
}
