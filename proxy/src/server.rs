//! The hyper servers: the public LLM API and the internal health listener.
//!
//! Every request gets a request id, one span of work, and exactly one access-log event emitted
//! here; handlers return either a response or a [`ProxyError`] that is rendered in the client's
//! dialect.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::control::{LinkStatus, Reporter};
use crate::error::{Dialect, ProxyError};
use crate::openai;
use crate::providers::Op;
use crate::snapshot::SnapshotCell;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Shared state of the public listener.
pub struct Proxy {
    pub cell: Arc<SnapshotCell>,
    pub health: Arc<crate::health::Health>,
    pub http: reqwest::Client,
    pub reporter: Reporter,
    pub max_body_bytes: usize,
}

/// Per-request facts gathered for the access log and the routing record.
#[derive(Default)]
pub struct RequestLog {
    pub model: Option<String>,
    pub client_prefix: Option<String>,
    pub provider: Option<String>,
    pub key_fingerprint: Option<String>,
    pub attempts: u32,
}

fn request_id() -> HeaderValue {
    HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple()))
        .expect("uuid is header-safe")
}

impl Proxy {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let rid = request_id();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut log = RequestLog::default();
        let op = match path.as_str() {
            "/v1/chat/completions" => Some(Op::ChatCompletions),
            "/v1/completions" => Some(Op::Completions),
            "/v1/embeddings" => Some(Op::Embeddings),
            "/v1/messages" => Some(Op::Messages),
            "/v1/responses" => Some(Op::Responses),
            _ => None,
        };
        let dialect = op.map_or(Dialect::OpenAi, Dialect::of);
        let result = match (&method, path.as_str(), op) {
            (&Method::POST, _, Some(op)) => openai::forward(&self, req, &rid, &mut log, op).await,
            (&Method::GET, "/v1/models", _) => openai::list_models(&self, &req),
            (&Method::GET, p, _) if p.starts_with("/v1/models/") => {
                openai::get_model(&self, &req, &p["/v1/models/".len()..])
            }
            (_, "/v1/models", _) | (_, _, Some(_)) => Err(ProxyError::MethodNotAllowed),
            _ => Err(ProxyError::NotFound(format!("{method} {path}"))),
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!(request_id = ?rid, error = ?e, "request failed");
                }
                e.into_dialect_response(dialect, &rid)
            }
        };
        resp.headers_mut().insert("x-request-id", rid.clone());
        tracing::info!(
            request_id = rid.to_str().unwrap_or_default(),
            method = %method,
            path = %path,
            status = resp.status().as_u16(),
            latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            model = log.model.as_deref().unwrap_or(""),
            client_key = log.client_prefix.as_deref().unwrap_or(""),
            provider = log.provider.as_deref().unwrap_or(""),
            key = log.key_fingerprint.as_deref().unwrap_or(""),
            attempts = log.attempts,
            "request"
        );
        resp
    }
}

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

/// `/healthz` (process alive) and `/readyz` (a snapshot is installed).
pub async fn internal(
    req: Request<Incoming>,
    cell: Arc<SnapshotCell>,
    status: Arc<LinkStatus>,
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
            });
            let code = if version > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, body)
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}
