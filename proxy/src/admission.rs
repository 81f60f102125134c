//! Admission: who is calling, what they ask for, and whether it is well-formed — before anything
//! is planned or sent. Authenticates the client key, reads the bounded body, checks the
//! operation's required fields and resolves the model to a route the key may use.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llmhub_providers::{Op, Serving, Translation};
use serde_json::{Map, Value};

use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::state::{ClientKey, Route, Snapshot};
use crate::usage::Prices;

/// An admitted request.
pub struct Admitted<'s> {
    pub op: Op,
    pub client: &'s ClientKey,
    pub route: Arc<Route>,
    /// The public model the client named.
    pub model: String,
    pub stream: bool,
    /// The client asked for usage in its stream (`stream_options.include_usage`).
    pub include_usage: bool,
    pub anthropic_version: Option<HeaderValue>,
    /// The body as received, forwarded unchanged when no field must change.
    pub raw: Bytes,
    pub payload: Map<String, Value>,
    /// The snapshot's prices, for the cost of the answer.
    pub prices: &'s Prices,
}

impl Admitted<'_> {
    /// Whether the proxy asks the provider for a stream's usage that the client did not ask
    /// for: an OpenAI-family chat or completions stream passed through reports usage only when
    /// asked (`stream_options.include_usage`). The usage-only chunk this adds is removed from
    /// what the client receives. Translated streams set it in their own request translation.
    pub fn injects_usage(&self, serving: Serving) -> bool {
        self.stream
            && !self.include_usage
            && serving.translation == Translation::None
            && matches!(serving.wire, Op::ChatCompletions | Op::Completions)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The client key from `Authorization: Bearer …` or (as Anthropic clients send it) `x-api-key`.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<&'s ClientKey, ProxyError> {
    let token = bearer(headers)
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .ok_or(ProxyError::InvalidApiKey)?;
    snap.authenticate(token, now)
        .ok_or(ProxyError::InvalidApiKey)
}

/// Admits one LLM API request or says, in the client's terms, why not.
pub async fn admit<'s>(
    snap: &'s Snapshot,
    req: Request<Incoming>,
    op: Op,
    max_body_bytes: usize,
    now: SystemTime,
    ex: &mut Exchange,
) -> Result<Admitted<'s>, ProxyError> {
    let client = authenticate(snap, req.headers(), now)?;
    ex.log.client_prefix = Some(client.prefix.clone());
    let anthropic_version = req.headers().get("anthropic-version").cloned();
    let raw = read_body(req, max_body_bytes).await?;
    let payload: Map<String, Value> = serde_json::from_slice(&raw)
        .map_err(|e| ProxyError::BadRequest(format!("request body must be a JSON object: {e}")))?;
    let model = match payload.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ProxyError::BadRequest(
                "`model` is required and must be a string".into(),
            ));
        }
    };
    ex.log.model = Some(model.clone());
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
        .cloned()
        .ok_or_else(|| ProxyError::ModelNotFound(model.clone()))?;
    let include_usage = payload
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Admitted {
        op,
        client,
        route,
        model,
        stream,
        include_usage,
        anthropic_version,
        raw,
        payload,
        prices: &snap.prices,
    })
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

/// Checks the operation's required fields before anything is sent upstream.
fn validate(op: Op, payload: &Map<String, Value>, stream: bool) -> Result<(), ProxyError> {
    let non_empty_array =
        |k: &str| matches!(payload.get(k), Some(Value::Array(a)) if !a.is_empty());
    let present = |k: &str| payload.get(k).is_some_and(|v| !v.is_null());
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
        Op::Completions if !present("prompt") => {
            Err(ProxyError::BadRequest("`prompt` is required".into()))
        }
        Op::Embeddings if !present("input") => {
            Err(ProxyError::BadRequest("`input` is required".into()))
        }
        Op::Embeddings if stream => Err(ProxyError::BadRequest(
            "`stream` is not supported for embeddings".into(),
        )),
        Op::Responses if !present("input") => {
            Err(ProxyError::BadRequest("`input` is required".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn required_fields_per_operation() {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let cases = [
            (Op::ChatCompletions, json!({"messages": []}), false, false),
            (Op::ChatCompletions, json!({"messages": [{}]}), false, true),
            (Op::Messages, json!({"messages": [{}]}), false, false),
            (
                Op::Messages,
                json!({"messages": [{}], "max_tokens": 5}),
                false,
                true,
            ),
            (Op::Completions, json!({"prompt": null}), false, false),
            (Op::Completions, json!({"prompt": "x"}), false, true),
            (Op::Embeddings, json!({"input": "x"}), true, false),
            (Op::Embeddings, json!({"input": "x"}), false, true),
            (Op::Responses, json!({}), false, false),
            (Op::Responses, json!({"input": "x"}), false, true),
        ];
        for (op, body, stream, ok) in cases {
            assert_eq!(
                validate(op, &obj(body.clone()), stream).is_ok(),
                ok,
                "{op:?} {body}"
            );
        }
    }
}
