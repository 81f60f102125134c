//! Admission: who is calling, what they ask for, whether it is well-formed, and whether the
//! fleet-wide limits let it through — before anything is sent. Authenticates the client key,
//! reads the bounded body, checks the operation's required fields and resolves the model to a
//! route the key may use ([`admit`]); once the request is planned, reserves its share of the
//! limits ([`reserve`]) in one call to the shared counters.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llmhub_providers::{Op, Serving, Translation};
use serde_json::{Map, Value};

use crate::app::App;
use crate::clock::millis;
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::limits::{Check, Decision, Demand, Dim, KeyLimits, Period, Scope};
use crate::routing::{Candidate, Plan};
use crate::state::{Budget, ClientKey, Limits, ProviderKey, Route, Snapshot};
use crate::usage::Prices;

/// Completion tokens reserved for a request that does not cap its output. The reservation is
/// settled with the real usage afterwards; this only bounds how far ahead of it admission runs.
const DEFAULT_COMPLETION_ESTIMATE: u64 = 512;

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
    /// Tokens reserved against token limits until the real usage is known.
    pub estimate: Estimate,
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
    let estimate = estimate_tokens(op, &payload, raw.len());
    Ok(Admitted {
        estimate,
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

/// A request's tokens before the provider counts them: the prompt at about four bytes a token
/// (the body's JSON syntax makes this an overestimate, which is the safe side) plus the most the
/// request lets the model generate.
pub fn estimate_tokens(op: Op, payload: &Map<String, Value>, body_len: usize) -> Estimate {
    let prompt = (body_len as u64).div_ceil(4);
    if op == Op::Embeddings {
        return Estimate {
            prompt,
            completion: 0,
        };
    }
    let cap = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(Value::as_u64))
        .or_else(|| {
            payload
                .get("generationConfig")
                .and_then(|g| g.get("maxOutputTokens"))
                .and_then(Value::as_u64)
        });
    Estimate {
        prompt,
        completion: cap.unwrap_or(DEFAULT_COMPLETION_ESTIMATE),
    }
}

/// A request's tokens as estimated before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub prompt: u64,
    /// The most it lets the model generate (or the default guess).
    pub completion: u64,
}

impl Estimate {
    pub fn total(self) -> u64 {
        self.prompt + self.completion
    }

    /// The most the request can cost on any of the planned candidates: each price component at
    /// its highest among them, so a budget reservation is an upper bound whichever key serves.
    /// Unpriced candidates count nothing (their cost is unknown, and recorded as such).
    fn cost(self, admitted: &Admitted<'_>, plan: &Plan<'_>) -> u64 {
        let (mut input, mut output) = (0u64, 0u64);
        for c in &plan.candidates {
            if let Some(p) =
                admitted
                    .prices
                    .lookup(&admitted.model, c.provider.kind, &c.target.upstream_model)
            {
                input = input.max(p.input);
                output = output.max(p.output);
            }
        }
        self.prompt
            .saturating_mul(input)
            .saturating_add(self.completion.saturating_mul(output))
    }
}

fn key_limits(k: &ProviderKey) -> KeyLimits {
    KeyLimits {
        id: k.id.clone(),
        rpm: u64::from(k.rpm_limit),
        tpm: u64::from(k.tpm_limit),
    }
}

/// Reserves the request in every limit that applies — the client key's, its user's and those of
/// the first planned provider key with room — in one call. Returns the index of the candidate
/// to start with (the ones before it are at their limits and get a skip line); the reservation
/// is held by the exchange until it finishes.
pub async fn reserve(
    app: &App,
    snap: &Snapshot,
    admitted: &Admitted<'_>,
    plan: &Plan<'_>,
    ex: &mut Exchange,
) -> Result<usize, ProxyError> {
    let checks = client_checks(snap, admitted.client, app.clock.now());
    // Most requests have no limit at all: decide that before building anything to count.
    let first_free = plan
        .candidates
        .first()
        .is_none_or(|c| c.key.rpm_limit == 0 && c.key.tpm_limit == 0);
    if checks.is_empty() && first_free {
        return Ok(0);
    }
    // Pricing the estimate costs a lookup per candidate: only when a budget needs it.
    let cost_nanos = if checks.iter().any(|c| c.dim == Dim::Budget) {
        admitted.estimate.cost(admitted, plan)
    } else {
        0
    };
    let demand = Demand {
        request_id: ex.request_id.to_str().unwrap_or_default().to_owned(),
        tokens: admitted.estimate.total(),
        cost_nanos,
        checks,
        keys: keys_until_unlimited(plan),
    };
    match app.limiter.admit(&demand, app.clock.now()).await {
        Decision::Admit(ticket) => {
            let first = ticket.key.unwrap_or(0);
            for c in plan.candidates.iter().take(first) {
                ex.skip(format!(
                    "key {}: fleet-wide limit reached",
                    c.key.fingerprint
                ));
            }
            ex.hold(ticket);
            Ok(first)
        }
        Decision::Refuse(r) => Err(ProxyError::RateLimited(r)),
    }
}

/// The planned keys' limits up to the first key without any: that one always has room, so
/// the keys after it can never be the one reserved.
fn keys_until_unlimited(plan: &Plan<'_>) -> Vec<KeyLimits> {
    let mut out = Vec::new();
    for c in &plan.candidates {
        let k = key_limits(&c.key);
        let unlimited = k.rpm == 0 && k.tpm == 0;
        out.push(k);
        if unlimited {
            break;
        }
    }
    out
}

/// Reserves a fallback candidate's key limits (after an earlier candidate failed). False: the
/// key is at its limit and must be skipped.
pub async fn reserve_key(
    app: &App,
    admitted: &Admitted<'_>,
    cand: &Candidate<'_>,
    ex: &mut Exchange,
) -> bool {
    let limits = key_limits(&cand.key);
    if limits.rpm == 0 && limits.tpm == 0 {
        return true;
    }
    let demand = Demand {
        request_id: ex.request_id.to_str().unwrap_or_default().to_owned(),
        tokens: admitted.estimate.total(),
        cost_nanos: 0,
        checks: Vec::new(),
        keys: vec![limits],
    };
    match app.limiter.admit(&demand, app.clock.now()).await {
        Decision::Admit(ticket) => {
            ex.hold(ticket);
            true
        }
        Decision::Refuse(_) => {
            ex.skip(format!(
                "key {}: fleet-wide limit reached",
                cand.key.fingerprint
            ));
            false
        }
    }
}

/// The limits and budgets of the client key and of its user.
pub fn client_checks(snap: &Snapshot, client: &ClientKey, now: SystemTime) -> Vec<Check> {
    let mut out = Vec::new();
    push_limits(&mut out, Scope::ClientKey, &client.id, &client.limits);
    push_budget(
        &mut out,
        Scope::ClientKey,
        &client.id,
        client.budget.as_ref(),
        now,
    );
    if let Some(u) = snap.user_limits(&client.user_id) {
        push_limits(&mut out, Scope::User, &client.user_id, &u.limits);
        push_budget(
            &mut out,
            Scope::User,
            &client.user_id,
            u.budget.as_ref(),
            now,
        );
    }
    out
}

fn push_limits(out: &mut Vec<Check>, scope: Scope, id: &str, l: &Limits) {
    for (dim, limit) in [
        (Dim::Requests, l.rpm),
        (Dim::Tokens, l.tpm),
        (Dim::Concurrent, l.max_concurrent),
    ] {
        if let Some(limit) = limit {
            out.push(Check {
                scope,
                id: id.to_owned(),
                dim,
                limit: u64::from(limit.get()),
                period: None,
            });
        }
    }
}

fn push_budget(out: &mut Vec<Check>, scope: Scope, id: &str, b: Option<&Budget>, now: SystemTime) {
    let Some(b) = b.filter(|b| b.applies_at(now)) else {
        return;
    };
    out.push(Check {
        scope,
        id: id.to_owned(),
        dim: Dim::Budget,
        limit: b.limit_nanos,
        period: Some(Period {
            start_ms: millis(b.period_start_at(now)),
            end_ms: b.period_end_at(now).map(millis),
            seed: b.spent_at(now),
        }),
    });
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
