//! The OpenAI-compatible surface: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! Bodies are relayed chunk by chunk; nothing is buffered whole except the (bounded) request and
//! the small error bodies that are inspected before being passed on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use llmhub_proto::v1 as pb;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::classify::{FailureClass, classify, exhausted_for};
use crate::control::Reporter;
use crate::error::{Dialect, ProxyError};
use crate::health::InFlight;
use crate::providers::{self, Op};
use crate::server::{Body, BoxError, Proxy, RequestLog, full};
use crate::snapshot::{ClientKey, Snapshot};
use crate::translate::{self, StreamTranslator, Translation};
use llmhub_proto::v1::ProviderKind;

/// Attempts per request before giving up (each on a different key or provider).
const MAX_ATTEMPTS: usize = 3;
/// Largest upstream error body read for inspection.
const MAX_ERROR_BODY: usize = 64 * 1024;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The client key from `Authorization: Bearer …` or (as Anthropic clients send it) `x-api-key`.
fn authenticate<'s>(snap: &'s Snapshot, headers: &HeaderMap) -> Result<&'s ClientKey, ProxyError> {
    let token = bearer(headers)
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .ok_or(ProxyError::InvalidApiKey)?;
    snap.authenticate(token).ok_or(ProxyError::InvalidApiKey)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-hub"})
}

pub fn list_models(p: &Proxy, req: &Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let snap = p.cell.load().ok_or(ProxyError::NotReady)?;
    let client = authenticate(&snap, req.headers())?;
    let models = snap.models_for(client);
    // Anthropic's SDK lists models with `anthropic-version` set and expects its own shape.
    if req.headers().contains_key("anthropic-version") {
        let data: Vec<Value> = models
            .iter()
            .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"data": data, "has_more": false, "first_id": models.first(), "last_id": models.last()}),
        ));
    }
    let data: Vec<Value> = models.into_iter().map(model_object).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

pub fn get_model(
    p: &Proxy,
    req: &Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ProxyError> {
    let snap = p.cell.load().ok_or(ProxyError::NotReady)?;
    let client = authenticate(&snap, req.headers())?;
    if !snap.routes.contains_key(id) || !client.may_use(id) {
        return Err(ProxyError::ModelNotFound(id.to_owned()));
    }
    Ok(json_response(StatusCode::OK, &model_object(id)))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ProxyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::PayloadTooLarge(limit))
        }
        Err(_) => Err(ProxyError::BadRequest(
            "could not read the request body".into(),
        )),
    }
}

/// Sends the routing record exactly once: when the response (or stream) completes, or when it is
/// dropped early because the client went away.
struct Recorder {
    reporter: Reporter,
    record: Option<pb::RoutingRecord>,
    started: Instant,
}

impl Recorder {
    fn finish(&mut self, status: u32) {
        if let Some(mut r) = self.record.take() {
            r.status = status;
            r.latency_ms = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
            self.reporter.record(r);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // 499: the client closed the connection before the body was complete.
        self.finish(499);
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(0),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Checks the operation's required fields before anything is sent upstream.
fn validate(op: Op, payload: &Map<String, Value>, stream: bool) -> Result<(), ProxyError> {
    let non_empty_array =
        |k: &str| matches!(payload.get(k), Some(Value::Array(a)) if !a.is_empty());
    match op {
        Op::ChatCompletions if !non_empty_array("messages") => Err(ProxyError::BadRequest(
            "`messages` is required and must be a non-empty array".into(),
        )),
        Op::Messages if !non_empty_array("messages") => Err(ProxyError::BadRequest(
            "messages: field required (a non-empty array)".into(),
        )),
        Op::Messages if !payload.get("max_tokens").is_some_and(Value::is_u64) => Err(
            ProxyError::BadRequest("max_tokens: field required (a positive integer)".into()),
        ),
        Op::Completions if payload.get("prompt").is_none_or(Value::is_null) => {
            Err(ProxyError::BadRequest("`prompt` is required".into()))
        }
        Op::Embeddings if payload.get("input").is_none_or(Value::is_null) => {
            Err(ProxyError::BadRequest("`input` is required".into()))
        }
        Op::Embeddings if stream => Err(ProxyError::BadRequest(
            "`stream` is not supported for embeddings".into(),
        )),
        Op::Responses if payload.get("input").is_none_or(Value::is_null) => {
            Err(ProxyError::BadRequest("`input` is required".into()))
        }
        _ => Ok(()),
    }
}

/// Serves one LLM API operation: authenticate, validate, plan, try candidates, relay.
pub async fn forward(
    p: &Proxy,
    req: Request<Incoming>,
    rid: &HeaderValue,
    log: &mut RequestLog,
    op: Op,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let snap: Arc<Snapshot> = p.cell.load().ok_or(ProxyError::NotReady)?;
    let client = authenticate(&snap, req.headers())?;
    log.client_prefix = Some(client.prefix.clone());
    let anthropic_version = req.headers().get("anthropic-version").cloned();
    let dialect = Dialect::of(op);

    let body = read_body(req, p.max_body_bytes).await?;
    let mut payload: Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| ProxyError::BadRequest(format!("request body must be a JSON object: {e}")))?;
    let model = match payload.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ProxyError::BadRequest(
                "`model` is required and must be a string".into(),
            ));
        }
    };
    log.model = Some(model.clone());
    let stream = match payload.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ProxyError::BadRequest("`stream` must be a boolean".into())),
    };
    validate(op, &payload, stream)?;
    let route = snap
        .routes
        .get(&model)
        .filter(|_| client.may_use(&model))
        .ok_or_else(|| ProxyError::ModelNotFound(model.clone()))?;

    let now = SystemTime::now();
    let plan = snap.plan(route, client, &p.health, now);
    let mut recorder = Recorder {
        reporter: p.reporter.clone(),
        record: Some(pb::RoutingRecord {
            request_id: rid.to_str().unwrap_or_default().to_owned(),
            started_at: Some(timestamp(now)),
            user_id: client.user_id.clone(),
            client_key_prefix: client.prefix.clone(),
            public_model: model.clone(),
            stream,
            skipped: plan.skipped,
            ..Default::default()
        }),
        started,
    };
    let mut earliest = plan.earliest;
    let mut last_error = ProxyError::NoKeyAvailable;
    let mut attempts = 0usize;
    let mut unsupported = false;
    for cand in plan.candidates {
        if attempts >= MAX_ATTEMPTS {
            break;
        }
        let (target, provider, key) = (cand.target, cand.provider, cand.key);
        if !providers::supports(provider.kind, op) {
            unsupported = true;
            skip(
                &mut recorder,
                format!(
                    "provider {} ({}): cannot serve {} yet",
                    provider.name,
                    provider.kind.slug(),
                    op.path()
                ),
            );
            continue;
        }
        // The one trial request after a cooldown; if another request holds it, move on.
        let probe = if cand.half_open {
            match p.health.try_probe(&key.id, &target.upstream_model) {
                Some(probe) => Some(probe),
                None => {
                    skip(
                        &mut recorder,
                        format!("key {}: half-open trial in progress", key.fingerprint),
                    );
                    continue;
                }
            }
        } else {
            None
        };
        if attempts > 0 {
            // Jitter between attempts so a burst of failures does not move in lockstep.
            tokio::time::sleep(Duration::from_millis(rand::random_range(5..25))).await;
        }
        attempts += 1;
        log.attempts += 1;
        log.provider = Some(provider.name.clone());
        log.key_fingerprint = Some(key.fingerprint.clone());
        payload.insert("model".into(), Value::String(target.upstream_model.clone()));
        // Across dialects the request is translated here, and the answer on the way back.
        let translation = match (op, providers::wire_op(provider.kind, op)) {
            (Op::ChatCompletions, Op::Messages) => Translation::OpenAiToAnthropic,
            (Op::Messages, Op::ChatCompletions) => Translation::AnthropicToOpenAi,
            (Op::ChatCompletions, _) if provider.kind == ProviderKind::Gemini => {
                Translation::OpenAiToGemini
            }
            _ => Translation::None,
        };
        let bytes = match translation {
            Translation::None => serde_json::to_vec(&payload),
            Translation::OpenAiToAnthropic => serde_json::to_vec(
                &translate::anthropic::request(&payload).map_err(ProxyError::BadRequest)?,
            ),
            Translation::AnthropicToOpenAi => serde_json::to_vec(
                &translate::chat::request(&payload).map_err(ProxyError::BadRequest)?,
            ),
            Translation::OpenAiToGemini => serde_json::to_vec(
                &translate::gemini::request(&payload).map_err(ProxyError::BadRequest)?,
            ),
        }
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let Some(upstream) = providers::upstream(
            provider,
            op,
            &target.upstream_model,
            key.secret.expose_secret(),
            anthropic_version.as_ref(),
            stream,
        ) else {
            skip(
                &mut recorder,
                format!("key {}: not usable as a header", key.fingerprint),
            );
            continue;
        };
        let attempt_started = Instant::now();
        let inflight = p.health.begin(&key.id, SystemTime::now());
        let mut request = p.http.post(upstream.url);
        for (name, value) in upstream.headers {
            request = request.header(name, value);
        }
        let send = request
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(bytes)
            .send();
        let outcome = tokio::time::timeout(provider.request_timeout, send).await;
        let mut attempt = pb::Attempt {
            provider_id: provider.id.clone(),
            key_fingerprint: key.fingerprint.clone(),
            upstream_model: target.upstream_model.clone(),
            latency_ms: u32::try_from(attempt_started.elapsed().as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let resp = match outcome {
            Err(_) => {
                attempt.class = "timeout".into();
                push_attempt(&mut recorder, attempt);
                p.health
                    .provider_result(&provider.id, false, SystemTime::now());
                last_error = ProxyError::UpstreamTimeout;
                continue;
            }
            Ok(Err(e)) => {
                attempt.class = FailureClass::Overloaded.as_str().into();
                push_attempt(&mut recorder, attempt);
                p.health
                    .provider_result(&provider.id, false, SystemTime::now());
                last_error = ProxyError::UpstreamUnavailable(format!(
                    "provider {}: {}",
                    provider.name,
                    e.without_url()
                ));
                continue;
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        attempt.status = u32::from(status.as_u16());
        let now = SystemTime::now();
        if status.is_success() {
            attempt.class = "ok".into();
            push_attempt(&mut recorder, attempt);
            p.health.provider_result(&provider.id, true, now);
            let recovered = p.health.record_success(
                &key.id,
                &target.upstream_model,
                attempt_started.elapsed(),
                exhausted_for(resp.headers(), now),
                now,
            );
            if recovered || probe.is_some() {
                p.reporter.outcome(outcome_msg(
                    &key.id,
                    &target.upstream_model,
                    "ok",
                    status.as_u16(),
                    now,
                    None,
                    false,
                ));
            }
            drop(probe);
            if translation != Translation::None {
                let include_usage = payload
                    .get("stream_options")
                    .and_then(|o| o.get("include_usage"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                return translated(
                    resp,
                    stream,
                    recorder,
                    inflight,
                    &model,
                    include_usage,
                    translation,
                )
                .await;
            }
            return Ok(relay(resp, stream, recorder, inflight, dialect));
        }
        drop(inflight);
        let headers = resp.headers().clone();
        let body = read_error_body(resp).await;
        let verdict = classify(provider.kind, status.as_u16(), &headers, &body, now);
        attempt.class = verdict.class.as_str().into();
        push_attempt(&mut recorder, attempt);
        match verdict.class {
            FailureClass::ClientError => {
                // The request itself is wrong: no other key would do better, and no penalty.
                p.health.provider_result(&provider.id, true, now);
                let body = redact(body, key.secret.expose_secret());
                let v = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                let body = match translation {
                    Translation::None => body,
                    Translation::OpenAiToAnthropic => {
                        Bytes::from(translate::anthropic::error(&v()).to_string())
                    }
                    Translation::AnthropicToOpenAi => {
                        Bytes::from(translate::chat::error(&v(), status.as_u16()).to_string())
                    }
                    Translation::OpenAiToGemini => {
                        Bytes::from(translate::gemini::error(&v()).to_string())
                    }
                };
                recorder.finish(u32::from(status.as_u16()));
                let mut r = Response::new(full(body));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(r);
            }
            FailureClass::Overloaded => {
                p.health.provider_result(&provider.id, false, now);
                last_error = ProxyError::UpstreamUnavailable(format!(
                    "provider {} answered {status}",
                    provider.name
                ));
            }
            FailureClass::RateLimited | FailureClass::QuotaExhausted | FailureClass::InvalidKey => {
                p.health.provider_result(&provider.id, true, now);
                if let Some(until) =
                    p.health
                        .record_failure(&key.id, &target.upstream_model, &verdict, now)
                {
                    if verdict.class != FailureClass::InvalidKey {
                        earliest = Some(earliest.map_or(until, |e| e.min(until)));
                    }
                    p.reporter.outcome(outcome_msg(
                        &key.id,
                        &target.upstream_model,
                        verdict.class.as_str(),
                        status.as_u16(),
                        now,
                        Some(until),
                        verdict.retry_after.is_some(),
                    ));
                }
                tracing::warn!(
                    provider = %provider.name,
                    key = %key.fingerprint,
                    class = verdict.class.as_str(),
                    status = status.as_u16(),
                    "provider refused the key"
                );
                last_error = if verdict.class == FailureClass::InvalidKey {
                    ProxyError::UpstreamAuth
                } else {
                    ProxyError::AllCooling(0)
                };
            }
        }
        drop(probe);
    }
    if attempts == 0 && unsupported && earliest.is_none() {
        last_error = ProxyError::BadRequest(format!(
            "model `{model}` is served only by providers that cannot serve {} yet",
            op.path()
        ));
    }
    // Nothing worked or nothing was usable. When keys are only cooling down, say when to come
    // back rather than failing generically.
    if matches!(
        last_error,
        ProxyError::NoKeyAvailable | ProxyError::AllCooling(_)
    ) && let Some(t) = earliest
    {
        let secs = t
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        last_error = ProxyError::AllCooling(secs);
    } else if let ProxyError::AllCooling(0) = last_error {
        last_error = ProxyError::AllCooling(1);
    }
    recorder.finish(u32::from(last_error.status().as_u16()));
    Err(last_error)
}

fn skip(recorder: &mut Recorder, line: String) {
    if let Some(r) = recorder.record.as_mut() {
        r.skipped.push(line);
    }
}

fn outcome_msg(
    key_id: &str,
    model: &str,
    class: &str,
    status: u16,
    now: SystemTime,
    until: Option<SystemTime>,
    provider_stated: bool,
) -> pb::KeyOutcome {
    pb::KeyOutcome {
        key_id: key_id.to_owned(),
        upstream_model: model.to_owned(),
        class: class.to_owned(),
        status: u32::from(status),
        observed_at: Some(timestamp(now)),
        retry_at: until.map(timestamp),
        provider_stated,
        ..Default::default()
    }
}

fn push_attempt(recorder: &mut Recorder, a: pb::Attempt) {
    if let Some(r) = recorder.record.as_mut() {
        r.attempts.push(a);
    }
}

async fn read_error_body(resp: reqwest::Response) -> Bytes {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Bytes::from(out)
}

/// Replaces an upstream body that quotes the provider key with a generic error.
fn redact(body: Bytes, secret: &str) -> Bytes {
    let contains = !secret.is_empty() && body.windows(secret.len()).any(|w| w == secret.as_bytes());
    if contains || serde_json::from_slice::<Value>(&body).is_err() {
        return Bytes::from(
            json!({"error": {"message": "the provider rejected the request", "type": "invalid_request_error", "param": null, "code": "upstream_client_error"}})
                .to_string(),
        );
    }
    body
}

/// Answers an OpenAI client from an Anthropic success: the JSON translated whole, or the stream
/// translated event by event as it arrives.
async fn translated(
    resp: reqwest::Response,
    stream: bool,
    mut recorder: Recorder,
    inflight: InFlight,
    public_model: &str,
    include_usage: bool,
    translation: Translation,
) -> Result<Response<Body>, ProxyError> {
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if stream {
        let relay = Relay {
            inner: Box::pin(resp.bytes_stream()),
            sse: true,
            done: false,
            recorder,
            status: 200,
            _inflight: inflight,
            dialect: if translation == Translation::AnthropicToOpenAi {
                Dialect::Anthropic
            } else {
                Dialect::OpenAi
            },
            translator: Some(match translation {
                Translation::OpenAiToGemini => StreamTranslator::ToOpenAiFromGemini(
                    translate::gemini::StreamTranslator::new(public_model, created, include_usage),
                ),
                Translation::AnthropicToOpenAi => StreamTranslator::ToAnthropic(
                    translate::chat::StreamTranslator::new(public_model),
                ),
                _ => StreamTranslator::ToOpenAi(translate::anthropic::StreamTranslator::new(
                    public_model,
                    created,
                    include_usage,
                )),
            }),
        };
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(relay)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(r);
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProxyError::UpstreamUnavailable(e.without_url().to_string()))?;
    drop(inflight);
    let v: Value = serde_json::from_slice(&body).map_err(|_| {
        ProxyError::UpstreamUnavailable("provider answered with invalid JSON".into())
    })?;
    recorder.finish(200);
    let answer = match translation {
        Translation::AnthropicToOpenAi => translate::chat::response(&v, public_model),
        Translation::OpenAiToGemini => translate::gemini::response(&v, public_model, created),
        _ => translate::anthropic::response(&v, public_model, created),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Relays an upstream success response chunk by chunk.
fn relay(
    resp: reqwest::Response,
    sse: bool,
    recorder: Recorder,
    inflight: InFlight,
    dialect: Dialect,
) -> Response<Body> {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(if sse {
                "text/event-stream"
            } else {
                "application/json"
            })
        });
    let sse = sse
        || content_type
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"));
    let relay = Relay {
        inner: Box::pin(resp.bytes_stream()),
        sse,
        done: false,
        recorder,
        status: u32::from(status.as_u16()),
        _inflight: inflight,
        dialect,
        translator: None,
    };
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(relay)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, content_type);
    if sse {
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    r
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct Relay {
    inner: ByteStream,
    sse: bool,
    done: bool,
    recorder: Recorder,
    status: u32,
    /// The key counts as in flight until the body is fully relayed.
    _inflight: InFlight,
    dialect: Dialect,
    /// Rewrites the provider's events into the client's dialect on the way through.
    translator: Option<StreamTranslator>,
}

/// Error event that ends an interrupted stream, in the OpenAI dialect.
const SSE_INTERRUPTED: &[u8] = b"data: {\"error\":{\"message\":\"the provider stream was interrupted\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_interrupted\"}}\n\n";
/// The same in Anthropic's dialect.
const SSE_INTERRUPTED_ANTHROPIC: &[u8] = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the provider stream was interrupted\"}}\n\n";

impl Stream for Relay {
    type Item = Result<Frame<Bytes>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            return match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let Some(t) = self.translator.as_mut() else {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    };
                    let out = t.feed(&chunk);
                    if out.is_empty() {
                        // Nothing complete yet (or an event with no counterpart): read on.
                        continue;
                    }
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e.without_url(), "upstream body interrupted");
                    Poll::Ready(self.interrupted())
                }
                Poll::Ready(None) => {
                    // A translated stream that ends without its final event was cut short;
                    // one that finished may still owe the client its closing events.
                    if let Some(t) = self.translator.as_mut() {
                        match t.end() {
                            None => return Poll::Ready(self.interrupted()),
                            Some(tail) if !tail.is_empty() => {
                                self.done = true;
                                let status = self.status;
                                self.recorder.finish(status);
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                            }
                            Some(_) => {}
                        }
                    }
                    self.done = true;
                    let status = self.status;
                    self.recorder.finish(status);
                    Poll::Ready(None)
                }
            };
        }
    }
}

impl Relay {
    /// Ends the body after an upstream failure: an error event for streams, an error otherwise.
    fn interrupted(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.done = true;
        self.recorder.finish(502);
        if self.sse {
            let event = match self.dialect {
                Dialect::OpenAi => SSE_INTERRUPTED,
                Dialect::Anthropic => SSE_INTERRUPTED_ANTHROPIC,
            };
            Some(Ok(Frame::data(Bytes::from_static(event))))
        } else {
            Some(Err("upstream body interrupted".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer lh-abc"));
        assert_eq!(bearer(&h), Some("lh-abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  lh-abc "));
        assert_eq!(bearer(&h), Some("lh-abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn redacts_bodies_that_quote_the_key() {
        let b = Bytes::from_static(br#"{"error":{"message":"bad key sk-secret-123"}}"#);
        let out = redact(b, "sk-secret-123");
        assert!(!String::from_utf8_lossy(&out).contains("sk-secret"));
        let ok = Bytes::from_static(br#"{"error":{"message":"context too long"}}"#);
        assert_eq!(redact(ok.clone(), "sk-secret-123"), ok);
        let html = Bytes::from_static(b"<html>oops</html>");
        assert!(String::from_utf8_lossy(&redact(html, "k")).contains("upstream_client_error"));
    }
}
