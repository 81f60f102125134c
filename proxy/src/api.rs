//! The public LLM API. Every request goes through the same phases over one [`Exchange`]:
//!
//! 1. **admit** (`admission`): authenticate, read and check the body, resolve the route;
//! 2. **plan** (`routing`): order the candidates, note the skipped ones; then **reserve**
//!    (`admission::reserve`): the client key's, user's and first usable provider key's
//!    fleet-wide limits, in one call, or a 429 saying which limit;
//! 3. **attempt** (`upstream`): try candidates until one is done, each failure's classification
//!    deciding whether to go on;
//! 4. **respond** (`relay`): relay or translate the answer;
//! 5. **finish** (`exchange`): one access-log event and one routing record, exactly once.
//!
//! The client's dialect is decided once, when the request arrives, and every error is rendered
//! in it.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use llmhub_providers::{Dialect, Op};
use serde_json::{Value, json};

use crate::admission::{self, Admitted};
use crate::app::App;
use crate::body::{Body, json};
use crate::error::ProxyError;
use crate::exchange::{Exchange, timestamp};
use crate::routing;
use crate::upstream::{self, Step, WireBody};
use llmhub_proto::v1 as pb;

/// Attempts per request before giving up (each on a different key or provider).
const MAX_ATTEMPTS: u32 = 3;

/// Serves one request of the public API.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let op = Op::from_path(&path);
    let dialect = Dialect::of_request(op, req.headers().contains_key("anthropic-version"));
    let mut ex = Exchange::new(dialect, method.clone(), path.clone(), app.reporter.clone());
    let result = match (&method, path.as_str(), op) {
        (&Method::POST, _, Some(op)) => forward(&app, req, op, &mut ex).await,
        (&Method::GET, "/v1/models", _) => list_models(&app, &req, &ex),
        (&Method::GET, p, _) if p.starts_with("/v1/models/") => {
            get_model(&app, &req, &p["/v1/models/".len()..])
        }
        (_, "/v1/models", _) | (_, _, Some(_)) => Err(ProxyError::MethodNotAllowed),
        _ => Err(ProxyError::NotFound(format!("{method} {path}"))),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(request_id = ?ex.request_id, error = ?e, "request failed");
            }
            e.into_response(ex.dialect, &ex.request_id)
        }
    };
    resp.headers_mut()
        .insert("x-request-id", ex.request_id.clone());
    ex.finish(resp.status().as_u16());
    resp
}

/// An LLM operation: admit, plan, attempt candidates, respond.
async fn forward(
    app: &App,
    req: Request<Incoming>,
    op: Op,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let snap = app.cell.load().ok_or(ProxyError::NotReady)?;
    let now = app.clock.now();
    let mut admitted = admission::admit(&snap, req, op, app.max_body_bytes, now, ex).await?;
    let route = admitted.route.clone();
    let mut plan = routing::plan(&snap, &route, admitted.client, &app.health, now);
    let skipped = std::mem::take(&mut plan.skipped);
    ex.start_record(record(&admitted, ex, skipped, now));
    let first = admission::reserve(app, &snap, &admitted, &plan, ex).await?;
    let mut tally = Tally {
        earliest: plan.earliest,
        ..Tally::default()
    };
    let mut wire = WireBody::default();
    for (i, cand) in plan.candidates.iter().enumerate().skip(first) {
        if tally.attempts >= MAX_ATTEMPTS {
            break;
        }
        if i > first && !admission::reserve_key(app, &admitted, cand, ex).await {
            continue;
        }
        let retrying = tally.attempts > 0;
        match upstream::attempt(app, &mut admitted, cand, &mut wire, retrying, ex).await {
            Step::Done(result) => return result,
            Step::Skipped(line) => ex.skip(line),
            Step::Unsupported(line) => {
                tally.unsupported = true;
                ex.skip(line);
            }
            Step::Denied(line) => {
                tally.last = Some(ProxyError::UpstreamUnavailable(line.clone()));
                ex.skip(line);
            }
            Step::Failed(f) => {
                tally.attempts += 1;
                if let Some(t) = f.recovers_at {
                    tally.earliest = Some(tally.earliest.map_or(t, |e| e.min(t)));
                }
                tally.last = Some(f.error);
            }
        }
    }
    Err(tally.into_error(&admitted, app.clock.now()))
}

/// What the attempts came to, for the final answer when none succeeded.
#[derive(Default)]
struct Tally {
    attempts: u32,
    /// A candidate was passed over because its provider cannot serve the operation.
    unsupported: bool,
    /// The earliest moment a cooling key or open circuit recovers.
    earliest: Option<SystemTime>,
    last: Option<ProxyError>,
}

impl Tally {
    /// Nothing worked or nothing was usable. When keys are only cooling down, say when to come
    /// back rather than failing generically.
    fn into_error(self, admitted: &Admitted<'_>, now: SystemTime) -> ProxyError {
        if self.attempts == 0 && self.unsupported && self.earliest.is_none() {
            return ProxyError::BadRequest(format!(
                "model `{}` is served only by providers that cannot serve {} yet",
                admitted.model,
                admitted.op.path()
            ));
        }
        match (self.last, self.earliest) {
            (None | Some(ProxyError::AllCooling(_)), Some(t)) => {
                ProxyError::AllCooling(t.duration_since(now).unwrap_or_default())
            }
            (None, None) => ProxyError::NoKeyAvailable,
            (Some(e), _) => e,
        }
    }
}

/// The routing record as planned; attempts, status and latency are added as they happen.
fn record(
    admitted: &Admitted<'_>,
    ex: &Exchange,
    skipped: Vec<String>,
    now: SystemTime,
) -> pb::RoutingRecord {
    pb::RoutingRecord {
        request_id: ex.request_id.to_str().unwrap_or_default().to_owned(),
        started_at: Some(timestamp(now)),
        user_id: admitted.client.user_id.clone(),
        client_key_prefix: admitted.client.prefix.clone(),
        client_key_id: admitted.client.id.clone(),
        public_model: admitted.model.clone(),
        stream: admitted.stream,
        skipped,
        ..Default::default()
    }
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-hub"})
}

/// `GET /v1/models`, in the client's dialect.
fn list_models(
    app: &App,
    req: &Request<Incoming>,
    ex: &Exchange,
) -> Result<Response<Body>, ProxyError> {
    let snap = app.cell.load().ok_or(ProxyError::NotReady)?;
    let client = admission::authenticate(&snap, req.headers(), app.clock.now())?;
    let models = snap.models_for(client);
    let body = match ex.dialect {
        Dialect::Anthropic => {
            let data: Vec<Value> = models
                .iter()
                .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            json!({"data": data, "has_more": false, "first_id": models.first(), "last_id": models.last()})
        }
        Dialect::OpenAi => {
            let data: Vec<Value> = models.into_iter().map(model_object).collect();
            json!({"object": "list", "data": data})
        }
    };
    Ok(json(StatusCode::OK, body.to_string()))
}

/// `GET /v1/models/{id}`.
fn get_model(app: &App, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ProxyError> {
    let snap = app.cell.load().ok_or(ProxyError::NotReady)?;
    let client = admission::authenticate(&snap, req.headers(), app.clock.now())?;
    if !snap.routes.contains_key(id) || !client.may_use(id) {
        return Err(ProxyError::ModelNotFound(id.to_owned()));
    }
    Ok(json(StatusCode::OK, model_object(id).to_string()))
}
