//! Responding: the provider's answer on its way to the client. Successful bodies are relayed
//! chunk by chunk (translated event by event when the provider speaks another dialect) and
//! metered on the way (`usage`); nothing is buffered whole except a translated non-streaming
//! answer and the small error bodies that are inspected before being passed on.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use llmhub_providers::Dialect;
use serde_json::{Value, json};

use crate::body::{Body, BoxError, json};
use crate::dialects::{StreamTranslate, Translator};
use crate::error::ProxyError;
use crate::exchange::{Exchange, Finish};
use crate::health::InFlight;
use crate::usage::{Meter, Observed, Shape};

/// Largest upstream error body read for inspection.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How a relayed body reaches the client.
pub enum Through {
    /// Passed through in the provider's dialect, metered as `shape`; `strip` removes the
    /// usage-only chunk the proxy asked for on the client's behalf.
    Pass { shape: Shape, strip: bool },
    /// Rewritten event by event into the client's dialect (the translator meters it).
    Translate(Box<dyn StreamTranslate>),
}

/// Relays an upstream success as it arrives. Finishing passes to the body: it ends when the
/// last chunk is out (or the client leaves). `prompt_bytes` (the client's request body) sizes
/// the prompt estimate of a stream cut before the provider reported its usage.
pub fn stream(
    resp: reqwest::Response,
    sse: bool,
    ex: &mut Exchange,
    inflight: InFlight,
    through: Through,
    prompt_bytes: usize,
) -> Response<Body> {
    let status = resp.status();
    let upstream_type = resp.headers().get(CONTENT_TYPE).cloned();
    let (status, content_type, sse) = match &through {
        // A translated stream is SSE in the client's dialect whatever the provider sent.
        Through::Translate(_) => (
            StatusCode::OK,
            HeaderValue::from_static("text/event-stream"),
            true,
        ),
        Through::Pass { .. } => {
            let content_type = upstream_type.unwrap_or_else(|| {
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
            (status, content_type, sse)
        }
    };
    let body = match through {
        // Metered as what the provider actually sent: a JSON answer to a stream request is
        // read as JSON (and has no usage chunk to strip).
        Through::Pass { shape, strip } => {
            let upstream_sse = content_type
                .to_str()
                .is_ok_and(|c| c.starts_with("text/event-stream"));
            Rewrite::Meter(Meter::new(shape, upstream_sse, strip))
        }
        Through::Translate(t) => Rewrite::Translate(t),
    };
    let relay = Relay {
        inner: Box::pin(resp.bytes_stream()),
        sse,
        done: false,
        finish: ex.hand_off(),
        status: status.as_u16(),
        _inflight: inflight,
        dialect: ex.dialect,
        body,
        prompt_bytes,
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

/// Answers from a provider's whole JSON success, translated into the client's dialect; the
/// provider's usage (in its `shape`) goes on the exchange's record.
pub async fn translated(
    resp: reqwest::Response,
    inflight: InFlight,
    translator: &dyn Translator,
    public_model: &str,
    shape: Shape,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProxyError::UpstreamUnavailable(e.without_url().to_string()))?;
    drop(inflight);
    let v: Value = serde_json::from_slice(&body).map_err(|_| {
        ProxyError::UpstreamUnavailable("provider answered with invalid JSON".into())
    })?;
    let observed = Observed {
        reading: crate::usage::reading(shape, &v).unwrap_or_default(),
        text_bytes: 0,
    };
    ex.set_usage(observed.settle(0, false));
    let answer = translator.response(&v, public_model, unix_now());
    Ok(json(StatusCode::OK, answer.to_string()))
}

/// Passes a provider's answer to a wrong request on to the client: redacted when it quotes the
/// key, translated into the client's dialect when needed.
pub fn client_error(
    status: StatusCode,
    body: Bytes,
    secret: &str,
    translator: Option<&dyn Translator>,
) -> Response<Body> {
    let body = redact(body, secret);
    let body = match translator {
        None => body,
        Some(t) => {
            let v = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            Bytes::from(t.error(&v, status.as_u16()).to_string())
        }
    };
    json(status, body)
}

/// Reads at most [`MAX_ERROR_BODY`] of an upstream error.
pub async fn error_body(resp: reqwest::Response) -> Bytes {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Bytes::from(out)
}

/// Replaces an upstream body that quotes the provider key in any form (or is not JSON) with a
/// generic error.
fn redact(body: Bytes, secret: &str) -> Bytes {
    let parsed = serde_json::from_slice::<Value>(&body);
    let leaks = parsed
        .as_ref()
        .map_or(true, |v| quotes_secret(&body, v, secret));
    if leaks {
        return Bytes::from(
            json!({"error": {"message": "the provider rejected the request", "type": "invalid_request_error", "param": null, "code": "upstream_client_error"}})
                .to_string(),
        );
    }
    body
}

/// Whether a JSON body carries `secret`: in its raw bytes, in any string or key once JSON
/// escapes are decoded (`\u002d` for `-` passes a byte comparison), percent-encoded, or as the
/// base64 or hex encoding of the key.
fn quotes_secret(raw: &[u8], v: &Value, secret: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let encodings = [
        secret.to_owned(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        hex::encode(secret),
        hex::encode_upper(secret),
    ];
    let found = |text: &[u8]| {
        encodings
            .iter()
            .any(|e| text.windows(e.len()).any(|w| w == e.as_bytes()))
    };
    found(raw) || json_strings(v).any(|s| found(s.as_bytes()))
}

/// Every string and object key in a JSON value, decoded.
fn json_strings(v: &Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        Value::String(s) => Box::new(std::iter::once(s.as_str())),
        Value::Array(a) => Box::new(a.iter().flat_map(json_strings)),
        Value::Object(o) => Box::new(
            o.iter()
                .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(json_strings(v))),
        ),
        _ => Box::new(std::iter::empty()),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct Relay {
    inner: ByteStream,
    sse: bool,
    done: bool,
    finish: Finish,
    status: u16,
    /// The key counts as in flight until the body is fully relayed.
    _inflight: InFlight,
    dialect: Dialect,
    body: Rewrite,
    prompt_bytes: usize,
}

/// What happens to the provider's bytes on the way through.
enum Rewrite {
    /// Passed on, read for usage.
    Meter(Meter),
    /// Rewritten into the client's dialect.
    Translate(Box<dyn StreamTranslate>),
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
                    let out = match &mut self.body {
                        Rewrite::Meter(m) => m.relay(chunk),
                        Rewrite::Translate(t) => {
                            let out = t.feed(&chunk);
                            (!out.is_empty()).then(|| Bytes::from(out))
                        }
                    };
                    match out {
                        // Nothing complete yet (or an event with no counterpart): read on.
                        None => continue,
                        Some(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e.without_url(), "upstream body interrupted");
                    Poll::Ready(self.interrupted())
                }
                Poll::Ready(None) => Poll::Ready(self.ended()),
            };
        }
    }
}

impl Relay {
    fn observed(&self) -> Observed {
        match &self.body {
            Rewrite::Meter(m) => m.observed(),
            Rewrite::Translate(t) => t.observed(),
        }
    }

    /// The upstream body ended. A translated stream that ends without its final event was cut
    /// short; one that finished may still owe the client its closing events.
    fn ended(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let tail = match &mut self.body {
            Rewrite::Translate(t) => match t.end() {
                None => return self.interrupted(),
                Some(tail) => Bytes::from(tail),
            },
            Rewrite::Meter(m) => m.finish().unwrap_or_default(),
        };
        self.done = true;
        let (status, usage) = (
            self.status,
            self.observed().settle(self.prompt_bytes, false),
        );
        self.finish.done(status, usage, false);
        (!tail.is_empty()).then_some(Ok(Frame::data(tail)))
    }

    /// Ends the body after an upstream failure: an error event for streams, an error otherwise.
    /// The usage covers what was relayed before the break.
    fn interrupted(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.done = true;
        let usage = self.observed().settle(self.prompt_bytes, true);
        self.finish.done(502, usage, false);
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

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-body: record what was delivered, marked partial.
            let usage = self.observed().settle(self.prompt_bytes, true);
            self.finish.done(499, usage, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn redacts_the_key_in_any_encoding() {
        use base64::Engine;
        let key = "sk-live-0123456789";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let bodies = [
            // JSON escapes, as some encoders write them: a JSON client decodes the full key.
            r#"{"error":{"message":"bad key sk\u002dlive\u002d0123456789"}}"#.to_owned(),
            r#"{"error":{"message":"\u0073\u006b-live-0123456789"}}"#.to_owned(),
            // In an object key, nested arrays, percent-encoded, base64, hex.
            r#"{"error":{"sk-live-0123456789":1}}"#.to_owned(),
            r#"{"error":{"details":[["x","key=sk-live-0123456789"]]}}"#.to_owned(),
            r#"{"error":{"url":"https://h/?key=sk-live-0123456789"}}"#.to_owned(),
            format!(r#"{{"error":{{"auth":"{b64}"}}}}"#),
            format!(r#"{{"error":{{"auth":"{}"}}}}"#, hex::encode(key)),
        ];
        for body in bodies {
            let out = redact(Bytes::from(body.clone()), key);
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("upstream_client_error"), "{body} -> {text}");
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(!v.to_string().contains("0123456789"), "{body}");
        }
        let partial = Bytes::from_static(
            br#"{"error":{"message":"Incorrect API key provided: sk-****6789"}}"#,
        );
        assert_eq!(
            redact(partial.clone(), key),
            partial,
            "a masked key is not the key"
        );
    }
}
