//! The hyper listeners: the public API's and the internal health listener, with graceful drain.
//! What a request means is decided in `api`; this module only accepts and serves connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::body::{Body, full};
use crate::control::LinkStatus;
use crate::limits::Limiter;
use crate::state::SnapshotCell;

/// Accepts connections until `shutdown`, then drains in-flight requests for up to `drain`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer): (_, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

/// `/healthz` (process alive), `/readyz` (a snapshot is installed) and `/metrics` (the limit
/// decisions, in the Prometheus text format).
pub async fn internal(
    req: Request<Incoming>,
    cell: Arc<SnapshotCell>,
    status: Arc<LinkStatus>,
    limiter: Arc<Limiter>,
) -> Response<Body> {
    let json = |code: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(full(v.to_string()));
        *r.status_mut() = code;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let version = cell.version();
            let body = serde_json::json!({
                "ready": version > 0,
                "snapshot_version": version,
                "control_plane_connected": status.connected.load(Ordering::Relaxed),
                "snapshots_rejected": status.snapshots_rejected.load(Ordering::Relaxed),
                "deltas_applied": status.deltas_applied.load(Ordering::Relaxed),
                "reports_dropped": status.reports_dropped.load(Ordering::Relaxed),
                "spool_bytes": status.spool_bytes.load(Ordering::Relaxed),
                "spool_dropped": status.spool_dropped.load(Ordering::Relaxed),
            });
            let code = if version > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, body)
        }
        "/metrics" => {
            let mut text = limit_metrics(&limiter);
            text.push_str(&report_metrics(&status));
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// The limiter's counters as Prometheus text.
fn limit_metrics(l: &Limiter) -> String {
    let c = &l.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "# HELP llmhub_limit_decisions_total Public API limit decisions.\n\
         # TYPE llmhub_limit_decisions_total counter\n\
         llmhub_limit_decisions_total{{decision=\"admitted\"}} {}\n\
         llmhub_limit_decisions_total{{decision=\"refused\"}} {}\n\
         # HELP llmhub_limit_degraded_decisions_total Decisions taken on this proxy's local share because the shared counters were unreachable or slow.\n\
         # TYPE llmhub_limit_degraded_decisions_total counter\n\
         llmhub_limit_degraded_decisions_total {}\n\
         # HELP llmhub_limit_shared_errors_total Calls to the shared counters that failed or exceeded their time budget.\n\
         # TYPE llmhub_limit_shared_errors_total counter\n\
         llmhub_limit_shared_errors_total {}\n\
         # HELP llmhub_limit_settlements_dropped_total Settlements dropped because their queue was full.\n\
         # TYPE llmhub_limit_settlements_dropped_total counter\n\
         llmhub_limit_settlements_dropped_total {}\n\
         # HELP llmhub_limit_live_proxies Proxies in the fleet as the control plane last reported.\n\
         # TYPE llmhub_limit_live_proxies gauge\n\
         llmhub_limit_live_proxies {}\n",
        get(&c.admitted),
        get(&c.refused),
        get(&c.degraded),
        get(&c.shared_errors),
        crate::limits::Counters::settle_dropped(),
        l.live_proxies(),
    )
}

/// The report link's counters as Prometheus text.
fn report_metrics(s: &LinkStatus) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "# HELP llmhub_report_records_dropped_total Routing records dropped (queue or spool full, spool unwritable).\n\
         # TYPE llmhub_report_records_dropped_total counter\n\
         llmhub_report_records_dropped_total {}\n\
         # HELP llmhub_report_spool_dropped_total Routing records dropped because the spool was full or unwritable.\n\
         # TYPE llmhub_report_spool_dropped_total counter\n\
         llmhub_report_spool_dropped_total {}\n\
         # HELP llmhub_report_spool_bytes Routing records spooled and not yet stored by the control plane.\n\
         # TYPE llmhub_report_spool_bytes gauge\n\
         llmhub_report_spool_bytes {}\n",
        get(&s.reports_dropped),
        get(&s.spool_dropped),
        get(&s.spool_bytes),
    )
}
