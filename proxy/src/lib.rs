//! llm-hub data plane. A hyper server for the public LLM API whose whole configuration is a
//! snapshot streamed from the control plane over mutual TLS. It never touches a database.
//!
//! Module map (no cycles; checked by the architecture test):
//! - `api` — the public API and the request's phases: `admission` → `routing` → `upstream`
//!   → `relay`, over one per-request `exchange`;
//! - `dialects` — translation between client and provider dialects;
//! - `usage` — token usage from the provider's reports, and cost from the snapshot's prices;
//! - `state` — the validated snapshot; `health` — this proxy's key and provider health;
//! - `control` — the link to the control plane (Watch, Report);
//! - `server` — listeners; `app` — shared state; `error`, `body`, `clock`, `config`, `cli`.

pub mod admission;
pub mod api;
pub mod app;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod dialects;
pub mod egress;
pub mod error;
pub mod exchange;
pub mod health;
pub mod limits;
pub mod relay;
pub mod routing;
pub mod server;
pub mod spool;
pub mod state;
pub mod upstream;
pub mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::control::{LinkStatus, ReportQueues, Reporter, Sink};
use crate::health::{BreakerPolicy, Health};
use crate::state::SnapshotCell;

/// How long in-flight requests and streams may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);
/// How long queued routing records may take to reach the control plane after the drain.
const REPORT_FLUSH: Duration = Duration::from_secs(5);

/// The data plane's parts before any listener or control-plane link exists: the public API's
/// state, where Watch events land, and the report queues. `run` connects them to the control
/// plane; component tests drive them directly.
pub struct Parts {
    pub app: Arc<App>,
    pub sink: Sink,
    pub queues: ReportQueues,
}

impl Parts {
    pub fn new(
        breaker: BreakerPolicy,
        report_queue: usize,
        max_body_bytes: usize,
        clock: Arc<dyn Clock>,
        egress: llmhub_providers::EgressPolicy,
        limiter: limits::Limiter,
    ) -> anyhow::Result<Parts> {
        let limiter = Arc::new(limiter);
        let egress = Arc::new(egress);
        // One process-wide crypto provider (ring) for reqwest's rustls and tonic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            // Only addresses the egress policy permits are ever connected to.
            .dns_resolver(Arc::new(egress::Resolver(egress.clone())))
            // Directly: through an `HTTP(S)_PROXY` from the environment the address connected to
            // would be the proxy's, and the policy could not see the provider's.
            .no_proxy()
            .build()?;
        let cell = Arc::new(SnapshotCell::default());
        let health = Arc::new(Health::new(breaker));
        let status = Arc::new(LinkStatus::default());
        let (reporter, queues) = Reporter::new(report_queue, status.clone());
        let sink = Sink {
            cell: cell.clone(),
            health: health.clone(),
            status,
            clock: clock.clone(),
            limiter: limiter.clone(),
        };
        let app = Arc::new(App {
            cell,
            health,
            http,
            reporter,
            clock,
            max_body_bytes,
            egress,
            limiter,
        });
        Ok(Parts { app, sink, queues })
    }
}

/// Runs the proxy on already-bound listeners until `shutdown` resolves.
pub async fn run(
    config: Config,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = control::endpoint(&config)?;
    let limiter = match &config.redis {
        Some(r) => limits::Limiter::shared(
            limits::Shared::connect(&r.url, &r.prefix, r.timeout)
                .context("redis_url: cannot create a Redis client")?,
            r.timeout,
        ),
        None => {
            tracing::info!(
                "no redis_url: limits are counted in this process, each proxy enforcing its share"
            );
            limits::Limiter::local()
        }
    };
    let Parts { app, sink, queues } = Parts::new(
        config.breaker,
        config.report_queue,
        config.max_body_bytes,
        Arc::new(SystemClock),
        config.egress.clone(),
        limiter,
    )?;
    let watch = tokio::spawn(control::watch_loop(
        endpoint.clone(),
        config.proxy_id.clone(),
        sink.clone(),
    ));
    let spool = match &config.spool_dir {
        Some(dir) => spool::Spool::open(dir, config.spool_max_bytes)
            .context("spool_dir: cannot open the routing-record spool")?,
        None => {
            tracing::info!(
                "no spool_dir: routing records wait in memory while the control plane is unreachable"
            );
            spool::Spool::memory(config.spool_max_bytes)
        }
    };
    let report = tokio::spawn(control::report_loop(
        endpoint,
        config.proxy_id.clone(),
        queues,
        spool,
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (cell, status, limiter) = (sink.cell.clone(), sink.status.clone(), sink.limiter.clone());
    let internal_task = tokio::spawn(server::serve(
        internal,
        move |req| server::internal(req, cell.clone(), status.clone(), limiter.clone()),
        config.header_read_timeout,
        stopped(stop_rx.clone()),
        Duration::from_secs(1),
    ));
    let public_task = tokio::spawn(server::serve(
        public,
        move |req| api::handle(app.clone(), req),
        config.header_read_timeout,
        stopped(stop_rx),
        DRAIN,
    ));
    shutdown.await;
    tracing::info!("shutting down; draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = public_task.await;
    let _ = internal_task.await;
    watch.abort();
    drop(sink);
    // The public task owned the last reporters: the report loop now sends what is queued and
    // ends once the control plane has acknowledged it (bounded, in case it is unreachable).
    let mut report = report;
    if tokio::time::timeout(REPORT_FLUSH, &mut report)
        .await
        .is_err()
    {
        tracing::warn!("routing records not acknowledged before shutdown");
        report.abort();
    }
    Ok(())
}
