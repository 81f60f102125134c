//! Usage and cost on every path a success takes: the provider's usage in each dialect reaches
//! the routing record, the usage chunk the proxy asks for on a client's behalf never reaches
//! that client, a stream the client leaves is recorded as partial with what was delivered, and
//! the cost comes from the snapshot's prices.

use llmhub_e2e::mock::{
    ANTHROPIC_USAGE, CHAT_USAGE, COMPLETIONS_USAGE, EMBEDDINGS_USAGE, GEMINI_USAGE, MockUsage,
    RESPONSES_USAGE,
};
use llmhub_proto::v1 as pb;
use serde_json::{Value, json};

use super::breaker;
use super::rig::{CLIENT_KEY, P, R, Rig};

fn tokens(rec: &pb::RoutingRecord) -> MockUsage {
    MockUsage {
        prompt: rec.prompt_tokens,
        completion: rec.completion_tokens,
        cached: rec.cached_tokens,
    }
}

/// One provider of each kind, a route to each, and gated streams.
async fn every_kind() -> Rig {
    let mut rig = Rig::start(breaker()).await;
    install_every_kind(&mut rig);
    rig
}

/// Installs the next snapshot of [`every_kind`]'s script (with the rig's current prices).
fn install_every_kind(rig: &mut Rig) {
    rig.snapshot(
        &[
            P {
                id: "compat",
                kind: pb::ProviderKind::OpenaiCompatible,
            },
            P {
                id: "openai",
                kind: pb::ProviderKind::Openai,
            },
            P {
                id: "anth",
                kind: pb::ProviderKind::Anthropic,
            },
            P {
                id: "gem",
                kind: pb::ProviderKind::Gemini,
            },
        ],
        &[
            ("kc", "compat", "sk-compat-key-1"),
            ("ko", "openai", "sk-openai-key-0123456789"),
            ("ka", "anth", "sk-ant-key-1"),
            ("kg", "gem", "AIza-key-1"),
        ],
        &[
            R {
                model: "gpt",
                targets: vec![("compat", "mock-ok", 0)],
            },
            R {
                model: "resp",
                targets: vec![("openai", "mock-ok", 0)],
            },
            R {
                model: "claude",
                targets: vec![("anth", "claude-x", 0)],
            },
            R {
                model: "gemini",
                targets: vec![("gem", "gemini-x", 0)],
            },
            R {
                model: "gated",
                targets: vec![("compat", "mock-stream-gated", 0)],
            },
            R {
                model: "claude-gated",
                targets: vec![("anth", "claude-stream-gated", 0)],
            },
        ],
    );
}

/// `POST path` with `body`; returns the status and the raw response text.
async fn send(rig: &Rig, path: &str, body: &Value) -> (u16, String) {
    let r = rig
        .http
        .post(format!("{}{path}", rig.url))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The JSON `data:` payloads of an SSE body (without `[DONE]`).
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn hi() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

#[tokio::test]
async fn every_path_records_the_providers_usage() {
    let mut rig = every_kind().await;
    let chat =
        |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": hi()});
    let messages = |model: &str, stream: bool| json!({"model": model, "stream": stream, "max_tokens": 16, "messages": hi()});
    let cases = [
        // Passed through in the provider's dialect.
        ("/v1/chat/completions", chat("gpt", false), CHAT_USAGE),
        ("/v1/chat/completions", chat("gpt", true), CHAT_USAGE),
        (
            "/v1/completions",
            json!({"model": "gpt", "prompt": "once"}),
            COMPLETIONS_USAGE,
        ),
        (
            "/v1/completions",
            json!({"model": "gpt", "prompt": "once", "stream": true}),
            COMPLETIONS_USAGE,
        ),
        (
            "/v1/embeddings",
            json!({"model": "gpt", "input": "x"}),
            EMBEDDINGS_USAGE,
        ),
        (
            "/v1/responses",
            json!({"model": "resp", "input": "x"}),
            RESPONSES_USAGE,
        ),
        (
            "/v1/responses",
            json!({"model": "resp", "input": "x", "stream": true}),
            RESPONSES_USAGE,
        ),
        ("/v1/messages", messages("claude", false), ANTHROPIC_USAGE),
        ("/v1/messages", messages("claude", true), ANTHROPIC_USAGE),
        // Translated.
        (
            "/v1/chat/completions",
            chat("claude", false),
            ANTHROPIC_USAGE,
        ),
        (
            "/v1/chat/completions",
            chat("claude", true),
            ANTHROPIC_USAGE,
        ),
        ("/v1/messages", messages("gpt", false), CHAT_USAGE),
        ("/v1/messages", messages("gpt", true), CHAT_USAGE),
        ("/v1/chat/completions", chat("gemini", false), GEMINI_USAGE),
        ("/v1/chat/completions", chat("gemini", true), GEMINI_USAGE),
    ];
    for (path, body, want) in cases {
        let (status, text) = send(&rig, path, &body).await;
        assert_eq!(status, 200, "{path} {body}: {text}");
        let rec = rig.record().await;
        assert_eq!(tokens(&rec), want, "{path} {body}");
        assert!(!rec.partial, "{path} {body}");
        assert_eq!(rec.client_key_id, "c1");
    }
}

#[tokio::test]
async fn the_injected_usage_chunk_never_reaches_a_client_that_did_not_ask() {
    let mut rig = every_kind().await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt", "stream": true, "messages": hi()}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt", "stream": true, "messages": hi(),
                "stream_options": {"include_usage": false}}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt", "stream": true, "prompt": "once"}),
        ),
    ] {
        let (status, text) = send(&rig, path, &body).await;
        assert_eq!(status, 200, "{text}");
        let upstream = rig.mock.requests().pop().unwrap();
        assert_eq!(
            upstream.body["stream_options"]["include_usage"], true,
            "{path}: the proxy asked the provider for usage"
        );
        let events = events(&text);
        assert!(events.len() >= 2, "{text}");
        for e in &events {
            assert!(
                !e["usage"].is_object() && !e["choices"].as_array().unwrap().is_empty(),
                "{path} {body}: the usage chunk reached the client: {text}"
            );
        }
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let content: String = events
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .or(e["choices"][0]["text"].as_str())
            })
            .collect();
        assert_eq!(content, "hello from mock");
        let rec = rig.record().await;
        let want = if path == "/v1/completions" {
            COMPLETIONS_USAGE
        } else {
            CHAT_USAGE
        };
        assert_eq!(tokens(&rec), want, "{path}: metered all the same");
    }
}

#[tokio::test]
async fn a_client_that_asked_for_usage_gets_it_unchanged() {
    let mut rig = every_kind().await;
    let body = json!({"model": "gpt", "stream": true, "messages": hi(),
        "stream_options": {"include_usage": true}});
    let (status, text) = send(&rig, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let mut sent = body.clone();
    sent["model"] = json!("mock-ok");
    assert_eq!(
        rig.mock.requests().pop().unwrap().body,
        sent,
        "sent as the client wrote it"
    );
    let events = events(&text);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{text}");
    assert_eq!(last["usage"]["prompt_tokens"], CHAT_USAGE.prompt);
    assert_eq!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"],
        CHAT_USAGE.cached
    );
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["usage"].is_null()),
        "{text}"
    );
    assert_eq!(tokens(&rig.record().await), CHAT_USAGE);
}

/// Sends a gated stream, reads its first chunk, and hangs up (the mock's gate is never
/// released: the proxy must notice the client leave while the provider is silent).
async fn leave_after_the_first_chunk(rig: &Rig, path: &str, body: &Value) -> usize {
    let bytes = serde_json::to_vec(body).unwrap();
    let len = bytes.len();
    let mut r = rig
        .http
        .post(format!("{}{path}", rig.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    len
}

#[tokio::test]
async fn a_stream_the_client_leaves_is_recorded_as_partial_with_what_was_delivered() {
    let mut rig = every_kind().await;
    // OpenAI-family: the provider reports usage only at the end, so both counts are estimates:
    // the delivered text ("first", 5 bytes) and the request body, at ~4 bytes per token.
    let body = json!({"model": "gated", "stream": true, "messages": hi()});
    let len = leave_after_the_first_chunk(&rig, "/v1/chat/completions", &body).await;
    let rec = rig.record().await;
    assert_eq!((rec.status, rec.partial), (499, true), "{rec:?}");
    assert!(rec.stream);
    assert_eq!(
        tokens(&rec),
        MockUsage {
            prompt: (len as u64).div_ceil(4),
            completion: 2,
            cached: 0
        }
    );

    // Anthropic reports the prompt at the start: it stands; the output is what was delivered
    // ("hello"). The same passed through and translated for an OpenAI client.
    for (path, body) in [
        (
            "/v1/messages",
            json!({"model": "claude-gated", "stream": true, "max_tokens": 8, "messages": hi()}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "claude-gated", "stream": true, "messages": hi()}),
        ),
    ] {
        leave_after_the_first_chunk(&rig, path, &body).await;
        let rec = rig.record().await;
        assert_eq!((rec.status, rec.partial), (499, true), "{path}");
        assert_eq!(
            tokens(&rec),
            MockUsage {
                prompt: ANTHROPIC_USAGE.prompt,
                completion: 2,
                cached: ANTHROPIC_USAGE.cached
            },
            "{path}"
        );
    }

    // Exactly one record per request: the next one is a new request's, and nothing else waits.
    let (status, _) = send(
        &rig,
        "/v1/chat/completions",
        &json!({"model": "gpt", "messages": hi()}),
    )
    .await;
    assert_eq!(status, 200);
    let rec = rig.record().await;
    assert_eq!((rec.status, rec.partial), (200, false));
    assert!(rig.queues.try_record().is_none(), "a record was sent twice");
}

fn price(model: &str, input: u64, output: u64, cached: u64) -> pb::ModelPrice {
    pb::ModelPrice {
        model: model.into(),
        input_nanos_per_token: input,
        output_nanos_per_token: output,
        cached_input_nanos_per_token: cached,
    }
}

/// The cost of `u` at (input, output, cached input) nanos per token.
fn cost(u: MockUsage, p: (u64, u64, u64)) -> u64 {
    (u.prompt - u.cached) * p.0 + u.completion * p.1 + u.cached * p.2
}

#[tokio::test]
async fn cost_is_computed_from_the_snapshots_prices() {
    let mut rig = every_kind().await;
    let chat = json!({"model": "gpt", "messages": hi()});
    // No price for `gpt` or `mock-ok`: tokens, but cost 0.
    send(&rig, "/v1/chat/completions", &chat).await;
    let rec = rig.record().await;
    assert_eq!((tokens(&rec), rec.cost_nanos), (CHAT_USAGE, 0));

    // Priced by the upstream model that served it.
    rig.prices = vec![
        price("mock-ok", 2500, 10_000, 1250),
        price("anthropic/claude-x", 3000, 15_000, 300),
    ];
    let (p1, p2) = ((2500, 10_000, 1250), (3000, 15_000, 300));
    install_every_kind(&mut rig);
    send(&rig, "/v1/chat/completions", &chat).await;
    assert_eq!(rig.record().await.cost_nanos, cost(CHAT_USAGE, p1));
    let (_, text) = send(
        &rig,
        "/v1/chat/completions",
        &json!({"model": "gpt", "stream": true, "messages": hi()}),
    )
    .await;
    assert!(!text.contains("\"usage\":{"), "{text}");
    assert_eq!(rig.record().await.cost_nanos, cost(CHAT_USAGE, p1));
    // Kind-qualified, for the Anthropic provider's upstream model.
    send(
        &rig,
        "/v1/messages",
        &json!({"model": "claude", "max_tokens": 8, "messages": hi()}),
    )
    .await;
    assert_eq!(rig.record().await.cost_nanos, cost(ANTHROPIC_USAGE, p2));

    // A price for the public model wins over the upstream model's.
    rig.prices.push(price("gpt", 1, 2, 0));
    install_every_kind(&mut rig);
    send(&rig, "/v1/chat/completions", &chat).await;
    assert_eq!(rig.record().await.cost_nanos, cost(CHAT_USAGE, (1, 2, 0)));
}
