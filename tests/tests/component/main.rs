//! Component tier: the proxy's request path in-process against a mock provider and a fake
//! control plane, in milliseconds, with time moved by hand instead of slept. Pins retries across
//! keys, 429 → cooldown with Retry-After, client errors never retried, translation per provider
//! kind, the half-open trial, the provider breaker, snapshot ordering, and errors in the client's
//! dialect on every route; usage and cost on every path (`usage`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod limits;
mod rig;
mod usage;

use std::time::Duration;

use llmhub_proto::v1 as pb;
use llmhub_providers::FailureClass;
use llmhub_proxy::clock::Clock;
use llmhub_proxy::health::BreakerPolicy;
use rig::{CLIENT_KEY, P, R, Rig, secs_until};
use serde_json::json;

const COMPAT: pb::ProviderKind = pb::ProviderKind::OpenaiCompatible;

fn breaker() -> BreakerPolicy {
    BreakerPolicy {
        failures: 2,
        open: Duration::from_secs(10),
    }
}

/// One OpenAI-compatible provider `p` with `keys`, serving `gpt` as `upstream`.
async fn one_provider(keys: &[(&'static str, &'static str)], upstream: &'static str) -> Rig {
    let mut rig = Rig::start(breaker()).await;
    let keys: Vec<rig::K> = keys.iter().map(|(id, s)| (*id, "p", *s)).collect();
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &keys,
        &[R {
            model: "gpt",
            targets: vec![("p", upstream, 0)],
        }],
    );
    rig
}

#[tokio::test]
async fn a_rate_limited_key_is_retried_on_the_next_key() {
    let mut rig = one_provider(&[("hot", "sk-rlhot-1"), ("good", "sk-good-1")], "mock-ok").await;
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "hello from mock");
    let rec = rig.record().await;
    let classes: Vec<_> = rec.attempts.iter().map(|a| a.attempt_class()).collect();
    assert_eq!(
        classes,
        [Some(Some(FailureClass::RateLimited)), Some(None)],
        "first key 429, second key ok"
    );
    assert_eq!(rec.status, 200);
    assert_eq!(rig.upstream_count(), 2);
}

#[tokio::test]
async fn a_429_cools_the_key_until_retry_after_and_the_fleet_hears_of_it() {
    let mut rig = one_provider(&[("hot", "sk-rlhot-1"), ("good", "sk-good-1")], "mock-ok").await;
    rig.chat("gpt").await;
    let o = rig.outcome().await;
    assert_eq!(o.key_id, "hot");
    assert_eq!(o.outcome_class(), Some(Some(FailureClass::RateLimited)));
    assert!(o.provider_stated, "the mock sent Retry-After: 30");
    assert_eq!(o.client_key_prefix, "lh-compo", "whose request it was");
    let wait = secs_until(o.retry_at.as_ref().unwrap(), rig.clock.now());
    assert!((29.0..=30.5).contains(&wait), "retry in {wait} s");
    rig.record().await;
    // While cooling, the key is skipped without an upstream request.
    let before = rig.upstream_count();
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 200);
    assert_eq!(
        rig.upstream_count(),
        before + 1,
        "only the good key was asked"
    );
    let rec = rig.record().await;
    assert!(
        rec.skipped
            .iter()
            .any(|s| s.contains("fp_hot") && s.contains("cooling until")),
        "{:?}",
        rec.skipped
    );
}

#[tokio::test]
async fn every_key_cooling_answers_429_with_retry_after_and_no_upstream_call() {
    let mut rig = one_provider(&[("once", "sk-rlonce-1")], "mock-ok").await;
    let (status, headers, body) = rig.chat("gpt").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        headers["retry-after"], "1",
        "the key's retry-after-ms: 1000"
    );
    rig.record().await;
    let before = rig.upstream_count();
    let (status, headers, _) = rig.chat("gpt").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(rig.upstream_count(), before, "a cooling key is not asked");
}

#[tokio::test]
async fn the_half_open_trial_ends_the_cooldown_and_is_reported() {
    let mut rig = one_provider(&[("once", "sk-rlonce-1")], "mock-ok").await;
    rig.chat("gpt").await;
    let first = rig.outcome().await;
    assert_eq!(first.outcome_class(), Some(Some(FailureClass::RateLimited)));
    // Time moves past the provider's stated reset: the next request is the key's trial.
    rig.advance(Duration::from_millis(1100));
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 200, "{body}");
    let ok = rig.outcome().await;
    assert_eq!(ok.key_id, "once");
    assert_eq!(
        ok.outcome_class(),
        Some(None),
        "the trial's success is reported"
    );
    // And the key is plainly open again: no further outcome for an ordinary success.
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 200);
    assert!(rig.queues.try_outcome().is_none());
}

#[tokio::test]
async fn one_trial_at_a_time_while_a_half_open_key_is_tried() {
    // `mock-slow` answers after 2 s: long enough to send a second request during the trial.
    let rig = one_provider(&[("k", "sk-good-1")], "mock-slow").await;
    // Cool the key through a forced delta, as an admin would, then let the cooldown end.
    let until = rig.clock.now() + Duration::from_secs(5);
    rig.delta(
        "k",
        pb::KeyState {
            status: pb::KeyStatus::CoolingDown as i32,
            until: Some(prost_types::Timestamp::from(until)),
            reason: "forced".into(),
            model: String::new(),
        },
    );
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 429, "cooling");
    rig.advance(Duration::from_secs(6));
    let trial = tokio::spawn({
        let (http, url) = (rig.http.clone(), rig.url.clone());
        async move {
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Wait for the trial to reach the provider (an event, not a sleep of guessed length).
    while rig.upstream_count() == 0 {
        tokio::task::yield_now().await;
    }
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 429, "the trial slot is taken: {body}");
    assert_eq!(rig.upstream_count(), 1, "no second trial");
    assert_eq!(trial.await.unwrap(), 200);
}

#[tokio::test]
async fn client_errors_are_passed_on_and_never_retried() {
    let mut rig = one_provider(&[("a", "sk-good-a"), ("b", "sk-good-b")], "mock-400").await;
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(rig.upstream_count(), 1, "no other key is tried");
    let rec = rig.record().await;
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(
        rec.attempts[0].attempt_class(),
        Some(Some(FailureClass::ClientError))
    );
    assert!(rig.queues.try_outcome().is_none(), "no penalty for the key");
}

#[tokio::test]
async fn an_error_body_quoting_the_key_in_any_encoding_never_reaches_the_client() {
    let mut rig = Rig::start(breaker()).await;
    rig.snapshot(
        &[
            P {
                id: "oai",
                kind: COMPAT,
            },
            P {
                id: "anth",
                kind: pb::ProviderKind::Anthropic,
            },
        ],
        &[("k", "oai", "sk-secret-canary-42")],
        &[R {
            model: "gpt",
            targets: vec![("oai", "mock-400-quotes-key", 0)],
        }],
    );
    // Passed through to an OpenAI client, and translated for an Anthropic one.
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let r = rig
            .http
            .post(format!("{}{path}", rig.url))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let text = r.text().await.unwrap();
        let decoded: serde_json::Value = serde_json::from_str(&text).unwrap();
        for form in [text.as_str(), &decoded.to_string()] {
            assert!(!form.contains("canary"), "{path}: the key leaked: {form}");
        }
    }
    // The mock really quoted it (escaped), so the test would see a leak.
    let raw = rig.mock.requests().len();
    assert_eq!(raw, 2);
}

#[tokio::test]
async fn a_refusal_of_one_request_never_takes_a_shared_key_out_of_service() {
    let mut rig = Rig::start(breaker()).await;
    let routes: Vec<R> = [
        "mock-403-flagged",
        "mock-402-max-tokens",
        "mock-429-too-large",
    ]
    .into_iter()
    .map(|m| R {
        model: m,
        targets: vec![("p", m, 0)],
    })
    .chain([R {
        model: "gpt",
        targets: vec![("p", "mock-ok", 0)],
    }])
    .collect();
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("shared", "p", "sk-shared-1")],
        &routes,
    );
    for (model, status) in [
        ("mock-403-flagged", 403),
        ("mock-402-max-tokens", 402),
        ("mock-429-too-large", 429),
    ] {
        let (got, _, body) = rig.chat(model).await;
        assert_eq!(
            got, status,
            "{model}: the provider's answer is passed on: {body}"
        );
        let rec = rig.record().await;
        assert_eq!(rec.attempts.len(), 1, "{model}: not retried on another key");
        assert_eq!(
            rec.attempts[0].attempt_class(),
            Some(Some(FailureClass::ClientError)),
            "{model}"
        );
        assert!(
            rig.queues.try_outcome().is_none(),
            "{model}: the key was penalized"
        );
        // The key still serves everyone else.
        let (got, _, _) = rig.chat("gpt").await;
        assert_eq!(got, 200, "{model}");
        let rec = rig.record().await;
        assert!(rec.skipped.is_empty(), "{model}: {:?}", rec.skipped);
    }
}

#[tokio::test]
async fn an_invalid_key_is_disabled_and_the_next_key_serves() {
    let mut rig = one_provider(&[("bad", "sk-revoked-1"), ("good", "sk-good-1")], "mock-ok").await;
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 200);
    let o = rig.outcome().await;
    assert_eq!(o.key_id, "bad");
    assert_eq!(o.outcome_class(), Some(Some(FailureClass::InvalidKey)));
    rig.record().await;
    // Disabled keys stay out even after any cooldown would have ended.
    rig.advance(Duration::from_secs(86_400));
    rig.chat("gpt").await;
    let rec = rig.record().await;
    assert!(
        rec.skipped
            .iter()
            .any(|s| s.contains("fp_bad") && s.contains("disabled")),
        "{:?}",
        rec.skipped
    );
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_a_trial_closes_it() {
    let mut rig = one_provider(&[("a", "sk-good-a")], "mock-500").await;
    for _ in 0..2 {
        let (status, _, _) = rig.chat("gpt").await;
        assert_eq!(status, 502);
    }
    let asked = rig.upstream_count();
    let (status, headers, _) = rig.chat("gpt").await;
    assert_eq!(status, 429, "open circuit: come back later");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(rig.upstream_count(), asked, "an open circuit sends nothing");
    // The provider recovers (same provider id, so its breaker carries over).
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("a", "p", "sk-good-a")],
        &[R {
            model: "gpt",
            targets: vec![("p", "mock-ok", 0)],
        }],
    );
    rig.advance(Duration::from_secs(11));
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 200, "the trial goes through and closes the circuit");
    let (status, _, _) = rig.chat("gpt").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn translation_per_provider_kind() {
    let mut rig = Rig::start(breaker()).await;
    rig.snapshot(
        &[
            P {
                id: "anth",
                kind: pb::ProviderKind::Anthropic,
            },
            P {
                id: "gem",
                kind: pb::ProviderKind::Gemini,
            },
            P {
                id: "oai",
                kind: COMPAT,
            },
            P {
                id: "az",
                kind: pb::ProviderKind::AzureOpenai,
            },
        ],
        &[
            ("ka", "anth", "sk-ant-component-key"),
            ("kg", "gem", "AIza-component-key"),
            ("ko", "oai", "sk-component-key"),
            ("kz", "az", "azure-component-key"),
        ],
        &[
            R {
                model: "claude",
                targets: vec![("anth", "claude-x", 0)],
            },
            R {
                model: "gemini",
                targets: vec![("gem", "gemini-x", 0)],
            },
            R {
                model: "gpt",
                targets: vec![("oai", "mock-ok", 0)],
            },
            R {
                model: "azure",
                targets: vec![("az", "deploy-1", 0)],
            },
        ],
    );
    // OpenAI chat → Anthropic Messages.
    let (status, _, body) = rig.chat("claude").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude");
    let req = rig.mock.requests().pop().unwrap();
    assert!(req.path.ends_with("/messages"), "{}", req.path);
    assert_eq!(req.headers["x-api-key"], "sk-ant-component-key");
    assert_eq!(req.body["model"], "claude-x");
    // OpenAI chat → Gemini generateContent.
    let (status, _, body) = rig.chat("gemini").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let req = rig.mock.requests().pop().unwrap();
    assert!(
        req.path.ends_with("/models/gemini-x:generateContent"),
        "{}",
        req.path
    );
    assert_eq!(req.headers["x-goog-api-key"], "AIza-component-key");
    // Anthropic Messages → OpenAI-compatible chat.
    let (status, _, body) = rig
        .post(
            "/v1/messages",
            json!({"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "hello from mock");
    let req = rig.mock.requests().pop().unwrap();
    assert!(req.path.ends_with("/chat/completions"), "{}", req.path);
    assert_eq!(req.headers["authorization"], "Bearer sk-component-key");
    // Native passthrough to Azure: the deployment path and api-key header.
    let (status, _, body) = rig.chat("azure").await;
    assert_eq!(status, 200, "{body}");
    let req = rig.mock.requests().pop().unwrap();
    assert_eq!(
        req.path, "/v1/openai/deployments/deploy-1/chat/completions",
        "{}",
        req.path
    );
    assert_eq!(req.headers["api-key"], "azure-component-key");
    // An operation no provider of the route can serve: a clear 400, nothing sent.
    let before = rig.upstream_count();
    let (status, _, body) = rig
        .post("/v1/embeddings", json!({"model": "claude", "input": "x"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot serve")
    );
    assert_eq!(rig.upstream_count(), before);
}

#[tokio::test]
async fn errors_speak_the_client_dialect_on_every_route() {
    let rig = one_provider(&[("a", "sk-good-a")], "mock-ok").await;
    let openai = |v: &serde_json::Value| v["error"]["type"].is_string() && v.get("type").is_none();
    let anthropic = |v: &serde_json::Value| v["type"] == "error" && v["error"]["type"].is_string();
    for (op, path) in llmhub_providers::op::OPS {
        let r = rig
            .http
            .post(format!("{}{path}", rig.url))
            .bearer_auth("lh-wrong")
            .json(&json!({"model": "gpt"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        match op.dialect() {
            llmhub_providers::Dialect::Anthropic => assert!(anthropic(&v), "{path}: {v}"),
            llmhub_providers::Dialect::OpenAi => assert!(openai(&v), "{path}: {v}"),
        }
    }
    for (path, anthropic_sdk) in [
        ("/v1/models", false),
        ("/v1/models", true),
        ("/v1/models/gpt", false),
        ("/v1/models/gpt", true),
    ] {
        let mut req = rig
            .http
            .get(format!("{}{path}", rig.url))
            .header("x-api-key", "lh-wrong");
        if anthropic_sdk {
            req = req.header("anthropic-version", "2023-06-01");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            if anthropic_sdk {
                anthropic(&v)
            } else {
                openai(&v)
            },
            "{path} anthropic={anthropic_sdk}: {v}"
        );
    }
    let r = rig
        .http
        .get(format!("{}/v1/nowhere", rig.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Bad input in the Anthropic dialect.
    let (status, _, v) = rig
        .post("/v1/messages", json!({"model": "gpt", "messages": []}))
        .await;
    assert_eq!(status, 400);
    assert!(anthropic(&v), "{v}");
}

#[tokio::test]
async fn an_older_snapshot_never_undoes_newer_state() {
    let mut rig = one_provider(&[("a", "sk-good-a"), ("b", "sk-good-b")], "mock-ok").await;
    // Version 5 disables key a.
    let mut newer = rig.build(
        5,
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("a", "p", "sk-good-a"), ("b", "p", "sk-good-b")],
        &[R {
            model: "gpt",
            targets: vec![("p", "mock-ok", 0)],
        }],
    );
    newer.provider_keys[0].state = Some(pb::KeyState {
        status: pb::KeyStatus::Disabled as i32,
        reason: "admin".into(),
        ..Default::default()
    });
    let older = {
        let mut o = newer.clone();
        o.version = 4;
        o.provider_keys[0].state = None;
        o
    };
    rig.send_snapshot(newer);
    rig.send_snapshot(older);
    assert_eq!(rig.sink.cell.version(), 5);
    for _ in 0..4 {
        rig.chat("gpt").await;
        let rec = rig.record().await;
        assert!(
            rec.attempts.iter().all(|a| a.key_fingerprint != "fp_a"),
            "the disabled key was used after an older snapshot arrived"
        );
    }
}

#[tokio::test]
async fn passthrough_sends_the_clients_bytes_and_rewrites_only_the_model() {
    let mut rig = Rig::start(breaker()).await;
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("a", "p", "sk-good-a")],
        &[
            R {
                model: "mock-ok",
                targets: vec![("p", "mock-ok", 0)],
            },
            R {
                model: "alias",
                targets: vec![("p", "mock-ok", 0)],
            },
        ],
    );
    let body = json!({"model": "mock-ok", "zeta": 1, "alpha": {"nested": [1, 2]},
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, _) = rig.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200);
    let got = rig.mock.requests().pop().unwrap().body;
    assert_eq!(got, body, "same model: the body goes out as sent");
    let mut aliased = body.clone();
    aliased["model"] = json!("alias");
    rig.post("/v1/chat/completions", aliased).await;
    let got = rig.mock.requests().pop().unwrap().body;
    assert_eq!(got, body, "only the model changes");
}

/// One OpenAI-compatible provider at `base_url` under the default (deny) egress policy.
async fn denied_rig() -> Rig {
    let mut rig = Rig::start_with(breaker(), llmhub_providers::EgressPolicy::default()).await;
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("a", "p", "sk-good-a")],
        &[R {
            model: "gpt",
            targets: vec![("p", "mock-ok", 0)],
        }],
    );
    rig
}

#[tokio::test]
async fn egress_to_a_loopback_provider_is_refused_without_sending_anything() {
    let mut rig = denied_rig().await;
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert_eq!(rig.upstream_count(), 0, "no request reached the provider");
    let rec = rig.record().await;
    assert!(rec.attempts.is_empty(), "nothing was sent: {rec:?}");
    assert!(
        rec.skipped
            .iter()
            .any(|l| l.contains("egress to 127.0.0.1 denied by policy")),
        "{:?}",
        rec.skipped
    );
    // The Anthropic dialect gets its own error shape.
    let (status, _, body) = rig
        .post(
            "/v1/messages",
            json!({"model": "gpt", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(rig.upstream_count(), 0);
}

#[tokio::test]
async fn egress_to_a_name_resolving_to_loopback_is_refused_at_connect_time() {
    let mut rig = denied_rig().await;
    let named = rig.mock.base_url().replace("127.0.0.1", "localhost");
    rig.provider_base_url = named;
    rig.snapshot(
        &[P {
            id: "p",
            kind: COMPAT,
        }],
        &[("a", "p", "sk-good-a")],
        &[R {
            model: "gpt",
            targets: vec![("p", "mock-ok", 0)],
        }],
    );
    let (status, _, body) = rig.chat("gpt").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(rig.upstream_count(), 0, "no request reached the provider");
    let rec = rig.record().await;
    assert!(
        rec.skipped
            .iter()
            .any(|l| l.contains("egress to localhost denied by policy")),
        "the resolver refused it: {:?}",
        rec.skipped
    );
}
