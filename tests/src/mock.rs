//! A mock OpenAI-compatible provider for end-to-end tests.
//!
//! Behaviour is chosen by the (upstream) model name, so one mock serves every scenario:
//!
//! | model               | behaviour                                                        |
//! |---------------------|------------------------------------------------------------------|
//! | `mock-ok` (default) | 200 JSON completion, or SSE when `stream: true`                  |
//! | `mock-slow`         | like `mock-ok` after 2 s                                         |
//! | `mock-429`          | 429 with `Retry-After: 7` and an OpenAI rate-limit body          |
//! | `mock-500`          | 500 with an OpenAI server-error body                             |
//! | `mock-401`          | 401 whose message quotes the bearer key, as some providers do    |
//! | `mock-400`          | 400 with an OpenAI invalid-request body                          |
//! | `mock-400-quotes-key` | 400 whose message quotes the key with JSON escapes (`\u002d`)  |
//! | `mock-403`          | 403 naming no culprit (an ambiguous refusal: the key may be fine) |
//! | `mock-403-flagged`, `mock-402-max-tokens`, `mock-429-too-large` | refusals of one request (moderation, credit for this many tokens, larger than the whole TPM budget) |
//! | `mock-stream-cut`   | SSE: two chunks, then the connection is cut without `[DONE]`     |
//! | `mock-stream-gated` | SSE: one chunk, then waits for [`MockProvider::release`]         |
//! | `claude-stream-gated` | Anthropic SSE: `message_start` and one text delta, then waits for [`MockProvider::release`] |
//!
//! Every answer reports usage as its API does, with cached prompt tokens ([`CHAT_USAGE`] and
//! the other constants). Chat and completions streams carry usage only when the request asks
//! for it (`stream_options.include_usage`), as OpenAI's do: then every chunk has `"usage":null`
//! and a last chunk with `choices: []` carries the usage. The Responses API streams too, with
//! its usage in `response.completed`.
//!
//! Some behaviours follow the provider key instead (the bearer token contains the marker), so a
//! pool can hold good and bad keys side by side:
//!
//! | key contains | behaviour                                                              |
//! |--------------|------------------------------------------------------------------------|
//! | `rlhot`      | always 429 with `Retry-After: 30` and OpenAI rate-limit headers        |
//! | `rlonce`     | the first request 429 with `retry-after-ms: 1000`, then normal         |
//! | `quota`      | 429 `insufficient_quota` (no reset time)                               |
//! | `revoked`    | 401 `invalid_api_key`                                                  |
//! | `probe401`   | 401 `invalid_api_key` on `GET …/models` only (a key the probe finds invalid) |
//! | `drained`    | 200, with `x-ratelimit-remaining-requests: 0` and a 2 s reset          |
//! | `quota60`    | a real per-key quota: 60 requests per 60 s window (configurable), with |
//! |              | OpenAI's `x-ratelimit-*-requests` headers, 429 + `Retry-After` beyond  |
//!
//! Model `mock-503` answers 503. The `quota`, `revoked` and `rlhot` markers also apply to
//! `GET …/models` (the control plane's key test). Every request is recorded (method, path,
//! headers, body).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Token usage as the mock reports it; `prompt` includes `cached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockUsage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

/// Chat completions (JSON and streams).
pub const CHAT_USAGE: MockUsage = MockUsage {
    prompt: 5,
    completion: 3,
    cached: 2,
};
/// Legacy completions.
pub const COMPLETIONS_USAGE: MockUsage = MockUsage {
    prompt: 2,
    completion: 3,
    cached: 0,
};
/// Embeddings.
pub const EMBEDDINGS_USAGE: MockUsage = MockUsage {
    prompt: 2,
    completion: 0,
    cached: 0,
};
/// The Responses API.
pub const RESPONSES_USAGE: MockUsage = MockUsage {
    prompt: 6,
    completion: 3,
    cached: 4,
};
/// Anthropic's Messages API: `input_tokens` 5 plus 4 tokens read from and 1 written to the
/// cache (both count as prompt tokens).
pub const ANTHROPIC_USAGE: MockUsage = MockUsage {
    prompt: 10,
    completion: 3,
    cached: 4,
};
/// Gemini (`promptTokenCount` includes the cached tokens).
pub const GEMINI_USAGE: MockUsage = MockUsage {
    prompt: 4,
    completion: 3,
    cached: 2,
};

fn openai_usage(u: MockUsage) -> Value {
    json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached}})
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Recorded>>,
    gate: Notify,
    /// Requests seen per key, for the `rlonce` behaviour.
    per_key: Mutex<std::collections::HashMap<String, u32>>,
    /// `quota60` windows per key: (window start, requests in it).
    windows: Mutex<std::collections::HashMap<String, (tokio::time::Instant, u32)>>,
    quota: Mutex<(Duration, u32)>,
    rejected: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _shutdown: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl MockProvider {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::default());
        *inner.quota.lock().unwrap() = (Duration::from_secs(60), 60);
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
                let _ = s.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(MockProvider {
            addr,
            inner,
            _shutdown: Arc::new(tx),
        })
    }

    /// Base URL to register as the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Sets the `quota60` window and limit.
    pub fn set_quota(&self, window: Duration, limit: u32) {
        *self.inner.quota.lock().unwrap() = (window, limit);
    }

    /// 429s answered by the `quota60` behaviour.
    pub fn quota_rejections(&self) -> u64 {
        self.inner
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many chat requests carried this provider key.
    pub fn uses_of(&self, key: &str) -> usize {
        let bearer = format!("Bearer {key}");
        self.requests()
            .iter()
            .filter(|r| {
                r.path.ends_with("/chat/completions")
                    && r.headers
                        .get("authorization")
                        .is_some_and(|v| v == bearer.as_str())
            })
            .count()
    }

    /// Lets one waiting `mock-stream-gated` response continue.
    pub fn release(&self) {
        self.inner.gate.notify_one();
    }
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from mock"},
                     "finish_reason": "stop"}],
        "usage": openai_usage(CHAT_USAGE)
    })
}

/// A chat chunk; with `usage` (the request asked for it) it says `"usage":null` as OpenAI's do.
fn chunk(model: &str, content: &str, finish: Option<&str>, usage: bool) -> Bytes {
    let mut v = json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    });
    if usage {
        v["usage"] = Value::Null;
    }
    Bytes::from(format!("data: {v}\n\n"))
}

/// The last chunk of a stream whose request asked for usage: no choices, the usage.
fn usage_chunk(model: &str, object: &str, usage: MockUsage) -> Bytes {
    let v = json!({"id": "chatcmpl-mock", "object": object, "created": 1_700_000_000,
        "model": model, "choices": [], "usage": openai_usage(usage)});
    Bytes::from(format!("data: {v}\n\n"))
}

/// Whether a request asks for usage in its stream.
fn asks_usage(body: &Value) -> bool {
    body["stream_options"]["include_usage"].as_bool() == Some(true)
}

fn error(status: StatusCode, message: &str, ty: &str, code: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"message": message, "type": ty, "param": null, "code": code}}).to_string(),
    )
        .into_response()
}

fn sse(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: parsed.clone(),
    });
    // Paths are matched by their tail, so one mock can stand behind any base URL (presets,
    // Azure deployment paths).
    let path = uri.path();
    if method == Method::GET && path.ends_with("/models") {
        // The key markers apply to the models probe too (how the control plane tests a key).
        let key = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if key.contains("quota") {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            );
        }
        if key.contains("revoked") || key.contains("probe401") {
            return error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
            );
        }
        if key.contains("rlhot") {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached",
                "requests",
                "rate_limit_exceeded",
            );
            r.headers_mut().insert("retry-after", "30".parse().unwrap());
            return r;
        }
        if headers.contains_key("anthropic-version") {
            return axum::Json(json!({"data": [{"type": "model", "id": "claude-mock",
                "display_name": "Claude Mock", "created_at": "2025-01-01T00:00:00Z"}],
                "has_more": false, "first_id": "claude-mock", "last_id": "claude-mock"}))
            .into_response();
        }
        return axum::Json(
            json!({"object": "list", "data": [{"id": "mock-ok", "object": "model"}]}),
        )
        .into_response();
    }
    if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
        return gemini(path.ends_with(":streamGenerateContent"), &headers);
    }
    if path.ends_with("/messages") {
        return anthropic_messages(inner, &parsed, &headers);
    }
    if path.ends_with("/responses") {
        return responses(&parsed);
    }
    if path.ends_with("/embeddings") {
        let u = EMBEDDINGS_USAGE;
        return axum::Json(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": parsed["model"], "usage": {"prompt_tokens": u.prompt, "total_tokens": u.prompt}
        }))
        .into_response();
    }
    if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        return completions(&parsed);
    }
    if !path.ends_with("/chat/completions") {
        return error(
            StatusCode::NOT_FOUND,
            "unknown path",
            "invalid_request_error",
            "unknown_url",
        );
    }
    let model = parsed["model"].as_str().unwrap_or("mock-ok").to_owned();
    let stream = parsed["stream"].as_bool().unwrap_or(false);
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_owned();
    let seen = {
        let mut m = inner.per_key.lock().unwrap();
        let n = m.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if key.contains("rlhot") || (key.contains("rlonce") && seen == 1) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests",
            "requests",
            "rate_limit_exceeded",
        );
        let h = r.headers_mut();
        if key.contains("rlonce") {
            h.insert("retry-after-ms", "1000".parse().unwrap());
        } else {
            h.insert("retry-after", "30".parse().unwrap());
        }
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "30s".parse().unwrap());
        return r;
    }
    if key.contains("quota60") {
        let (window, limit) = *inner.quota.lock().unwrap();
        let (remaining, reset, allowed) = {
            let mut w = inner.windows.lock().unwrap();
            let now = tokio::time::Instant::now();
            let e = w.entry(key.clone()).or_insert((now, 0));
            if now.duration_since(e.0) >= window {
                *e = (now, 0);
            }
            let allowed = e.1 < limit;
            if allowed {
                e.1 += 1;
            }
            (
                limit - e.1,
                window.saturating_sub(now.duration_since(e.0)),
                allowed,
            )
        };
        let mut r = if allowed {
            axum::Json(completion(&model)).into_response()
        } else {
            inner
                .rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
            r.headers_mut().insert(
                "retry-after",
                reset.as_secs().max(1).to_string().parse().unwrap(),
            );
            r
        };
        let h = r.headers_mut();
        h.insert(
            "x-ratelimit-limit-requests",
            limit.to_string().parse().unwrap(),
        );
        h.insert(
            "x-ratelimit-remaining-requests",
            remaining.to_string().parse().unwrap(),
        );
        h.insert(
            "x-ratelimit-reset-requests",
            format!("{}ms", reset.as_millis()).parse().unwrap(),
        );
        return r;
    }
    if key.contains("quota") {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        );
    }
    if key.contains("revoked") {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            "invalid_api_key",
        );
    }
    if key.contains("drained") && !stream {
        let mut r = axum::Json(completion(&model)).into_response();
        r.headers_mut()
            .insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        r.headers_mut()
            .insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        return r;
    }
    match model.as_str() {
        "mock-tools" => axum::Json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        }))
        .into_response(),
        "mock-503" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later",
            "server_error",
            "overloaded",
        ),
        "mock-429" => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        "mock-500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
            "server_error",
        ),
        "mock-401" => {
            let key = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .trim_start_matches("Bearer ")
                .to_owned();
            error(
                StatusCode::UNAUTHORIZED,
                &format!("Incorrect API key provided: {key}."),
                "invalid_request_error",
                "invalid_api_key",
            )
        }
        // A provider that quotes the key with JSON escapes (`\u002d` for `-`), as some encoders
        // write: a byte comparison misses it, any JSON client decodes it.
        "mock-400-quotes-key" => (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            format!(
                r#"{{"error":{{"message":"invalid request for key {}","type":"invalid_request_error","param":null,"code":null}}}}"#,
                key.replace('-', "\\u002d")
            ),
        )
            .into_response(),
        // Refusals about one request, not the key (they must not penalize a shared key).
        // A refusal that names no culprit: the key may be fine.
        "mock-403" => error(
            StatusCode::FORBIDDEN,
            "You are not allowed to sample from this model",
            "invalid_request_error",
            "",
        ),
        "mock-403-flagged" => (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json")],
            json!({"error": {"code": 403, "message": "Your chosen model requires moderation and your input was flagged for \"harassment\"",
                "metadata": {"reasons": ["harassment"], "flagged_input": "..."}}})
            .to_string(),
        )
            .into_response(),
        "mock-402-max-tokens" => error(
            StatusCode::PAYMENT_REQUIRED,
            "This request requires more credits, or fewer max_tokens. You requested up to 900000 tokens, but can only afford 1234.",
            "payment_required",
            "402",
        ),
        "mock-429-too-large" => error(
            StatusCode::TOO_MANY_REQUESTS,
            "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 450000. The input or output tokens must be reduced in order to run successfully.",
            "tokens",
            "rate_limit_exceeded",
        ),
        "mock-400" => error(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 8 tokens.",
            "invalid_request_error",
            "context_length_exceeded",
        ),
        "mock-slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            axum::Json(completion(&model)).into_response()
        }
        "mock-stream-cut" => {
            let m = model.clone();
            let u = asks_usage(&parsed);
            let items = vec![
                Ok(chunk(&m, "Hel", None, u)),
                Ok(chunk(&m, "lo", None, u)),
                Err(std::io::Error::other("connection cut")),
            ];
            // Paced so the headers and first chunks are on the wire before the cut, as when a
            // real provider's connection drops mid-answer.
            let s = futures_util::stream::unfold(items.into_iter(), |mut it| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                it.next().map(|item| (item, it))
            });
            sse(s)
        }
        "mock-stream-gated" => {
            let m = model.clone();
            let u = asks_usage(&parsed);
            let first = chunk(&m, "first", None, u);
            let mut rest = vec![chunk(&m, " second", None, u), chunk(&m, "", Some("stop"), u)];
            if u {
                rest.push(usage_chunk(&m, "chat.completion.chunk", CHAT_USAGE));
            }
            rest.push(Bytes::from_static(b"data: [DONE]\n\n"));
            gated(inner, first, Bytes::from(rest.concat()))
        }
        _ if stream => {
            let m = model.clone();
            let u = asks_usage(&parsed);
            let mut parts = vec![
                chunk(&m, "hello", None, u),
                chunk(&m, " from", None, u),
                chunk(&m, " mock", None, u),
                chunk(&m, "", Some("stop"), u),
            ];
            if u {
                parts.push(usage_chunk(&m, "chat.completion.chunk", CHAT_USAGE));
            }
            parts.push(Bytes::from_static(b"data: [DONE]\n\n"));
            sse(futures_util::stream::iter(
                parts.into_iter().map(Ok::<_, std::io::Error>),
            ))
        }
        _ => axum::Json(completion(&model)).into_response(),
    }
}

/// A stream that sends `first`, then waits for [`MockProvider::release`] before `rest`.
fn gated(inner: Arc<Inner>, first: Bytes, rest: Bytes) -> Response {
    let s = futures_util::stream::unfold(0u8, move |state| {
        let inner = inner.clone();
        let first = first.clone();
        let rest = rest.clone();
        async move {
            match state {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    inner.gate.notified().await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    sse(s)
}

/// Legacy completions: JSON, or SSE chunks with usage only when asked for.
fn completions(body: &Value) -> Response {
    let model = body["model"].clone();
    let u = COMPLETIONS_USAGE;
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
            "model": model,
            "choices": [{"text": "hello from mock", "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": openai_usage(u)
        }))
        .into_response();
    }
    let asks = asks_usage(body);
    let mut parts: Vec<Bytes> = [("hello", None), (" from mock", Some("stop"))]
        .into_iter()
        .map(|(text, finish)| {
            let mut v = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
                "model": model, "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
            if asks {
                v["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {v}\n\n"))
        })
        .collect();
    if asks {
        let m = model.as_str().unwrap_or("mock");
        parts.push(usage_chunk(m, "text_completion", u));
    }
    parts.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse(futures_util::stream::iter(
        parts.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// The Responses API: a response object, or its event stream ending in `response.completed`.
fn responses(body: &Value) -> Response {
    let u = RESPONSES_USAGE;
    let usage = json!({"input_tokens": u.prompt, "output_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens_details": {"reasoning_tokens": 0}});
    let response = |status: &str, usage: Value| {
        json!({"id": "resp_mock", "object": "response", "status": status, "model": body["model"],
            "output": [{"type": "message", "id": "msg_mock", "role": "assistant",
                "content": [{"type": "output_text", "text": "hello from mock", "annotations": []}]}],
            "usage": usage})
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(response("completed", usage)).into_response();
    }
    let ev = |data: Value| {
        Bytes::from(format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap_or("")
        ))
    };
    let frames = vec![
        ev(json!({"type": "response.created", "sequence_number": 0,
            "response": response("in_progress", Value::Null)})),
        ev(
            json!({"type": "response.output_text.delta", "sequence_number": 1,
            "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": "hello"}),
        ),
        ev(
            json!({"type": "response.output_text.delta", "sequence_number": 2,
            "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": " from mock"}),
        ),
        ev(json!({"type": "response.completed", "sequence_number": 3,
            "response": response("completed", usage)})),
    ];
    sse(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// Anthropic's Messages API: JSON, or SSE in Anthropic's event framing; errors in its shape.
fn anthropic_messages(inner: Arc<Inner>, body: &Value, headers: &HeaderMap) -> Response {
    let anthropic_error = |status: StatusCode, ty: &str, message: &str| {
        (
            status,
            [("content-type", "application/json")],
            json!({"type": "error", "error": {"type": ty, "message": message}}).to_string(),
        )
            .into_response()
    };
    if !headers.contains_key("anthropic-version") {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version header is required",
        );
    }
    if !headers.contains_key("x-api-key") {
        return anthropic_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    let model = body["model"].as_str().unwrap_or("claude-mock").to_owned();
    if model == "claude-overloaded" {
        return anthropic_error(
            StatusCode::from_u16(529).unwrap(),
            "overloaded_error",
            "Overloaded",
        );
    }
    let u = ANTHROPIC_USAGE;
    // 1 of the prompt tokens was written to the cache, `cached` read from it, the rest plain.
    let input = |output: u64| {
        json!({"input_tokens": u.prompt - u.cached - 1, "cache_read_input_tokens": u.cached,
            "cache_creation_input_tokens": 1, "output_tokens": output})
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hello from mock"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": input(u.completion)
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let frames = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": input(1)}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from mock"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": u.completion}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ];
    if model == "claude-stream-gated" {
        // message_start, content_block_start, ping and the first delta; the rest on release.
        let first = Bytes::from(frames[..4].concat());
        let rest = Bytes::from(frames[4..].concat());
        return gated(inner, first, rest);
    }
    sse(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// Gemini's `generateContent` (JSON) and `streamGenerateContent?alt=sse` (SSE, CRLF-framed).
fn gemini(stream: bool, headers: &HeaderMap) -> Response {
    if !headers.contains_key("x-goog-api-key") {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json")],
            json!({"error": {"code": 403, "message": "Method doesn't allow unregistered callers", "status": "PERMISSION_DENIED"}}).to_string(),
        )
            .into_response();
    }
    let u = GEMINI_USAGE;
    let usage = json!({"promptTokenCount": u.prompt, "candidatesTokenCount": u.completion,
        "totalTokenCount": u.prompt + u.completion, "cachedContentTokenCount": u.cached});
    if !stream {
        return axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hello from mock"}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": "gemini-mock", "responseId": "gem-1"
        }))
        .into_response();
    }
    let frames = vec![
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hello"}]}, "index": 0}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " from mock"}]},
            "finishReason": "STOP", "index": 0}], "usageMetadata": usage}),
    ];
    sse(futures_util::stream::iter(frames.into_iter().map(|f| {
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {f}\r\n\r\n")))
    })))
}
