//! One attempt at a provider, and what it means: the request is built for the candidate (the
//! body translated or passed through unchanged), sent with the key the way the provider takes it,
//! and the answer classified. The classification alone decides whether the request is done,
//! moves on to the next candidate, or ends here; its effects on key and provider health are
//! applied here before they are reported to the control plane.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Response, StatusCode};
use llmhub_proto::v1 as pb;
use llmhub_providers::classify::exhausted_for;
use llmhub_providers::{Endpoint, FailureClass, Serving, Translation, Verdict};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::admission::Admitted;
use crate::app::App;
use crate::body::Body;
use crate::dialects::{self, Translator};
use crate::error::ProxyError;
use crate::exchange::{Exchange, timestamp};
use crate::health::{InFlight, Probe};
use crate::relay::{self, Through};
use crate::routing::Candidate;
use crate::usage::Shape;

/// What one candidate came to.
pub enum Step {
    /// The answer for the client: a relayed success, or the provider's verdict on a wrong
    /// request (passed on; no other key would do better).
    Done(Result<Response<Body>, ProxyError>),
    /// The candidate was not tried; the line says why (for the routing record).
    Skipped(String),
    /// The candidate's provider cannot serve this operation at all.
    Unsupported(String),
    /// The attempt failed in a way another key or provider may not.
    Failed(Failure),
    /// The egress policy refuses the provider's address: nothing was sent; the line says so.
    Denied(String),
}

/// A failed attempt: the error the client gets if nothing else works, and when a key it cooled
/// may be used again.
pub struct Failure {
    pub error: ProxyError,
    pub recovers_at: Option<SystemTime>,
}

/// The wire body for a candidate. Built once per (upstream model, translation) and reused by
/// later attempts with the same shape; the client's bytes go out unchanged when nothing in them
/// must change.
#[derive(Default)]
pub struct WireBody {
    last: Option<(String, Translation, Bytes)>,
}

impl WireBody {
    fn get(
        &mut self,
        admitted: &mut Admitted<'_>,
        upstream_model: &str,
        serving: Serving,
    ) -> Result<Bytes, ProxyError> {
        let translation = serving.translation;
        if let Some((m, t, b)) = &self.last
            && m == upstream_model
            && *t == translation
        {
            return Ok(b.clone());
        }
        let inject = admitted.injects_usage(serving);
        let bytes = match dialects::translator(translation) {
            None if upstream_model == admitted.model && !inject => admitted.raw.clone(),
            None => {
                admitted
                    .payload
                    .insert("model".into(), Value::String(upstream_model.to_owned()));
                let asked = inject.then(|| ask_for_usage(&mut admitted.payload));
                let body = serde_json::to_vec(&admitted.payload);
                // The payload stays the client's request: other candidates' wire bodies are built
                // from it, and a translated one must not carry the proxy's ask.
                match asked {
                    Some(Some(previous)) => {
                        admitted.payload.insert("stream_options".into(), previous);
                    }
                    Some(None) => {
                        admitted.payload.remove("stream_options");
                    }
                    None => {}
                }
                Bytes::from(body.map_err(|e| ProxyError::BadRequest(e.to_string()))?)
            }
            Some(t) => {
                admitted
                    .payload
                    .insert("model".into(), Value::String(upstream_model.to_owned()));
                let v = t
                    .request(&admitted.payload)
                    .map_err(ProxyError::BadRequest)?;
                Bytes::from(
                    serde_json::to_vec(&v).map_err(|e| ProxyError::BadRequest(e.to_string()))?,
                )
            }
        };
        self.last = Some((upstream_model.to_owned(), translation, bytes.clone()));
        Ok(bytes)
    }
}

/// Sets `stream_options.include_usage` (keeping the client's other stream options); returns
/// the client's own `stream_options`, if it sent any.
fn ask_for_usage(payload: &mut Map<String, Value>) -> Option<Value> {
    let mut options = match payload.get("stream_options") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    payload.insert("stream_options".into(), Value::Object(options))
}

/// A candidate made ready to send.
struct Prepared {
    probe: Option<Probe>,
    serving: Serving,
    body: Bytes,
    upstream: llmhub_providers::Upstream,
}

/// Tries one candidate. `retrying` says an attempt already failed (so this one waits a
/// little jitter first).
pub async fn attempt(
    app: &App,
    admitted: &mut Admitted<'_>,
    cand: &Candidate<'_>,
    wire: &mut WireBody,
    retrying: bool,
    ex: &mut Exchange,
) -> Step {
    let p = match prepare(app, admitted, cand, wire, retrying, ex).await {
        Ok(p) => p,
        Err(step) => return step,
    };
    let (provider, key) = (cand.provider, &cand.key);
    let started = Instant::now();
    let inflight = app.health.begin(&key.id);
    let mut request = app.http.post(p.upstream.url);
    for (name, value) in p.upstream.headers {
        request = request.header(name, value);
    }
    let accept = if admitted.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let send = request
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, accept)
        .body(p.body)
        .send();
    let sent = tokio::time::timeout(provider.request_timeout, send).await;
    let mut record = pb::Attempt {
        provider_id: provider.id.clone(),
        key_fingerprint: key.fingerprint.clone(),
        upstream_model: cand.target.upstream_model.clone(),
        latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if let Some(d) = crate::egress::denied_in(&e) {
                return Step::Denied(egress_denied(&provider.name, &d.0));
            }
            record.set_class(Some(FailureClass::Overloaded));
            ex.push_attempt(record);
            let detail = format!("provider {}: {}", provider.name, e.without_url());
            return unreachable_provider(app, cand, ProxyError::UpstreamUnavailable(detail));
        }
        Err(_) => {
            record.set_class(Some(FailureClass::Overloaded));
            record.class = "timeout".into();
            ex.push_attempt(record);
            return unreachable_provider(app, cand, ProxyError::UpstreamTimeout);
        }
    };
    record.status = u32::from(resp.status().as_u16());
    let answer = Answer {
        resp,
        started,
        inflight,
        probe: p.probe,
        serving: p.serving,
    };
    if answer.resp.status().is_success() {
        record.set_class(None);
        ex.push_attempt(record);
        return Step::Done(succeeded(app, admitted, cand, answer, ex).await);
    }
    let client_prefix = admitted.client.prefix.as_str();
    failed(app, cand, answer, record, client_prefix, ex).await
}

/// Everything before sending: can the provider serve this, is the key's trial slot free, the
/// wire body, the URL and credentials.
async fn prepare(
    app: &App,
    admitted: &mut Admitted<'_>,
    cand: &Candidate<'_>,
    wire: &mut WireBody,
    retrying: bool,
    ex: &mut Exchange,
) -> Result<Prepared, Step> {
    let (target, provider, key) = (cand.target, cand.provider, &cand.key);
    let (Some(kind), Some(serving)) = (provider.kind, provider.serving(admitted.op)) else {
        return Err(Step::Unsupported(format!(
            "provider {} ({}): cannot serve {} yet",
            provider.name,
            provider.kind.map_or("unknown", |k| k.slug()),
            admitted.op.path()
        )));
    };
    // Never send a key to an address the egress policy refuses. Names are also checked by the
    // client's resolver at connect time; an IP literal never reaches a resolver.
    if !app.egress.permits_url_host(&provider.host) {
        return Err(Step::Denied(egress_denied(&provider.name, &provider.host)));
    }
    // The one trial request after a cooldown; if another request holds it, move on.
    let probe = match cand.half_open {
        true => match app.health.try_probe(&key.id, &target.upstream_model) {
            Some(p) => Some(p),
            None => {
                let line = format!("key {}: half-open trial in progress", key.fingerprint);
                return Err(Step::Skipped(line));
            }
        },
        false => None,
    };
    if retrying {
        // Jitter between attempts so a burst of failures does not move in lockstep.
        tokio::time::sleep(Duration::from_millis(rand::random_range(5..25))).await;
    }
    ex.log.attempts += 1;
    ex.log.provider = Some(provider.name.clone());
    ex.log.key_fingerprint = Some(key.fingerprint.clone());
    let body = wire
        .get(admitted, &target.upstream_model, serving)
        .map_err(|e| Step::Done(Err(e)))?;
    let endpoint = Endpoint {
        base_url: &provider.base_url,
        api_version: &provider.api_version,
    };
    let upstream = llmhub_providers::upstream(
        kind,
        &endpoint,
        admitted.op,
        &target.upstream_model,
        key.secret.expose_secret(),
        admitted.anthropic_version.as_ref(),
        admitted.stream,
    )
    .ok_or_else(|| Step::Skipped(format!("key {}: not usable as a header", key.fingerprint)))?;
    Ok(Prepared {
        probe,
        serving,
        body,
        upstream,
    })
}

/// The skip line (and the detail of the client's error) for a provider the policy refuses.
fn egress_denied(provider: &str, host: &str) -> String {
    format!(
        "provider {provider}: {}",
        llmhub_providers::egress::denied_message(host)
    )
}

/// What came back from a sent attempt.
struct Answer {
    resp: reqwest::Response,
    started: Instant,
    /// The key counts as in flight until the answer is consumed.
    inflight: InFlight,
    /// Held until the answer is judged: the trial slot of a half-open key.
    probe: Option<Probe>,
    serving: Serving,
}

/// The provider could not be reached or did not answer in time: not the key's fault.
fn unreachable_provider(app: &App, cand: &Candidate<'_>, error: ProxyError) -> Step {
    app.health
        .provider_result(&cand.provider.id, false, app.clock.now());
    Step::Failed(Failure {
        error,
        recovers_at: None,
    })
}

/// A success: note it, tell the fleet when it ends a cooldown, and relay it.
async fn succeeded(
    app: &App,
    admitted: &Admitted<'_>,
    cand: &Candidate<'_>,
    answer: Answer,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let now = app.clock.now();
    let (key, model) = (&cand.key, &cand.target.upstream_model);
    app.health.provider_result(&cand.provider.id, true, now);
    let recovered = app.health.record_success(
        &key.id,
        model,
        answer.started.elapsed(),
        exhausted_for(answer.resp.headers(), now),
        now,
    );
    if recovered || answer.probe.is_some() {
        let status = answer.resp.status().as_u16();
        let mut o = outcome(&key.id, model, None, status, now, None, false);
        o.client_key_prefix.clone_from(&admitted.client.prefix);
        app.reporter.outcome(o);
    }
    drop(answer.probe);
    ex.set_price(admitted.prices.lookup(
        &admitted.model,
        cand.provider.kind,
        &cand.target.upstream_model,
    ));
    let shape = Shape::of(answer.serving);
    let prompt_bytes = admitted.raw.len();
    match dialects::translator(answer.serving.translation) {
        Some(t) if !admitted.stream => {
            relay::translated(answer.resp, answer.inflight, t, &admitted.model, shape, ex).await
        }
        Some(t) => {
            let st = t.stream(&admitted.model, relay::unix_now(), admitted.include_usage);
            Ok(relay::stream(
                answer.resp,
                true,
                ex,
                answer.inflight,
                Through::Translate(st),
                prompt_bytes,
            ))
        }
        None => {
            let strip = admitted.injects_usage(answer.serving);
            Ok(relay::stream(
                answer.resp,
                admitted.stream,
                ex,
                answer.inflight,
                Through::Pass { shape, strip },
                prompt_bytes,
            ))
        }
    }
}

/// A failure: classify it, apply its effect on the key and provider, and decide.
async fn failed(
    app: &App,
    cand: &Candidate<'_>,
    answer: Answer,
    mut record: pb::Attempt,
    client_prefix: &str,
    ex: &mut Exchange,
) -> Step {
    let Answer {
        resp,
        inflight,
        probe,
        serving,
        ..
    } = answer;
    drop(inflight);
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = relay::error_body(resp).await;
    let now = app.clock.now();
    // `prepare` only sends to providers of a known kind.
    let kind = cand
        .provider
        .kind
        .unwrap_or(llmhub_providers::Kind::OpenAiCompatible);
    let verdict = kind.classify(status.as_u16(), &headers, &body, now);
    record.set_class(Some(verdict.class));
    ex.push_attempt(record);
    let step = match verdict.class {
        FailureClass::ClientError => {
            // The request itself is wrong: no other key would do better, and no penalty.
            app.health.provider_result(&cand.provider.id, true, now);
            let translator: Option<&dyn Translator> = dialects::translator(serving.translation);
            Step::Done(Ok(relay::client_error(
                status,
                body,
                cand.key.secret.expose_secret(),
                translator,
            )))
        }
        FailureClass::Overloaded => {
            app.health.provider_result(&cand.provider.id, false, now);
            Step::Failed(Failure {
                error: ProxyError::UpstreamUnavailable(format!(
                    "provider {} answered {status}",
                    cand.provider.name
                )),
                recovers_at: None,
            })
        }
        FailureClass::RateLimited | FailureClass::QuotaExhausted | FailureClass::InvalidKey => {
            app.health.provider_result(&cand.provider.id, true, now);
            Step::Failed(refused(app, cand, &verdict, status, now, client_prefix))
        }
    };
    drop(probe);
    step
}

/// The provider refused the key: cool it down (or disable it) here at once, then tell the
/// fleet.
fn refused(
    app: &App,
    cand: &Candidate<'_>,
    verdict: &Verdict,
    status: StatusCode,
    now: SystemTime,
    client_prefix: &str,
) -> Failure {
    let (key, model) = (&cand.key, &cand.target.upstream_model);
    let until = app.health.record_failure(&key.id, model, verdict, now);
    if let Some(until) = until {
        let mut o = outcome(
            &key.id,
            model,
            Some(verdict.class),
            status.as_u16(),
            now,
            Some(until),
            verdict.retry_after.is_some(),
        );
        // Which client's request it was: shown to admins with the penalty.
        o.client_key_prefix = client_prefix.to_owned();
        o.needs_verification = verdict.needs_verification();
        app.reporter.outcome(o);
    }
    tracing::warn!(
        provider = %cand.provider.name,
        key = %key.fingerprint,
        class = verdict.class.as_str(),
        status = status.as_u16(),
        "provider refused the key"
    );
    if verdict.class == FailureClass::InvalidKey && !verdict.needs_verification() {
        Failure {
            error: ProxyError::UpstreamAuth,
            recovers_at: None,
        }
    } else {
        Failure {
            error: ProxyError::AllCooling(Duration::ZERO),
            recovers_at: until,
        }
    }
}

fn outcome(
    key_id: &str,
    model: &str,
    class: Option<FailureClass>,
    status: u16,
    now: SystemTime,
    until: Option<SystemTime>,
    provider_stated: bool,
) -> pb::KeyOutcome {
    let mut o = pb::KeyOutcome {
        key_id: key_id.to_owned(),
        upstream_model: model.to_owned(),
        status: u32::from(status),
        observed_at: Some(timestamp(now)),
        retry_at: until.map(timestamp),
        provider_stated,
        ..Default::default()
    };
    o.set_class(class);
    o
}
