//! llm-hub data plane. A hyper server for the public LLM API whose whole configuration is a
//! snapshot streamed from the control plane over mutual TLS. It never touches a database.

pub mod classify;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod health;
pub mod openai;
pub mod providers;
pub mod server;
pub mod snapshot;
pub mod translate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::control::{LinkStatus, Reporter};
use crate::server::Proxy;
use crate::snapshot::SnapshotCell;

/// How long in-flight requests and streams may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs the proxy on already-bound listeners until `shutdown` resolves.
pub async fn run(
    config: Config,
    public: TcpListener,
    internal: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // One process-wide crypto provider (ring) for reqwest's rustls and tonic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = control::endpoint(&config)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let cell = Arc::new(SnapshotCell::default());
    let health = Arc::new(health::Health::new(config.breaker));
    let status = Arc::new(LinkStatus::default());
    let (reporter, queues) = Reporter::new(config.report_queue, status.clone());
    let watch = tokio::spawn(control::watch_loop(
        endpoint.clone(),
        config.proxy_id.clone(),
        cell.clone(),
        health.clone(),
        status.clone(),
    ));
    let report = tokio::spawn(control::report_loop(
        endpoint,
        config.proxy_id.clone(),
        queues,
    ));

    let proxy = Arc::new(Proxy {
        health,
        cell: cell.clone(),
        http,
        reporter,
        max_body_bytes: config.max_body_bytes,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let internal_task = tokio::spawn(server::serve(
        internal,
        move |req| server::internal(req, cell.clone(), status.clone()),
        config.header_read_timeout,
        stopped(stop_rx.clone()),
        Duration::from_secs(1),
    ));
    let public_task = tokio::spawn(server::serve(
        public,
        move |req| proxy.clone().handle(req),
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
    // Give queued routing records a moment to reach the control plane.
    tokio::time::sleep(Duration::from_millis(200)).await;
    report.abort();
    Ok(())
}
