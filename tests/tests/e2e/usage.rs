//! Usage and prices end to end: the tokens the mock provider reports and the cost at the
//! control plane's prices add up in the stored routing records for JSON, streamed and
//! translated requests; the prices API lists the built-in prices, an admin's override prices
//! the next request, users may only read, and bad input gets a clear 400.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy};
use llmhub_e2e::mock::{ANTHROPIC_USAGE, CHAT_USAGE, GEMINI_USAGE, MockProvider, MockUsage};
use serde_json::{Value, json};

on_both_backends!(
    tokens_and_cost_add_up_in_the_stored_records,
    prices_api_overrides_reach_the_next_request
);

const STRONG: &str = "violet-otter-jumps-42-quietly";

struct Env {
    _mock: MockProvider,
    cp: ControlPlane,
    proxy: Proxy,
    client_key: String,
    http: reqwest::Client,
}

/// An OpenAI-compatible, an Anthropic and a Gemini provider, each behind routes to upstream
/// models with built-in prices, and `local`, whose upstream model has no price.
async fn setup(backend: Backend) -> anyhow::Result<Env> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(backend).await?;
    let compat = cp
        .add_provider("compat", "openai-compatible", &mock.base_url())
        .await?;
    cp.add_shared_key(&compat, "sk-compat-0123456789abcdef")
        .await?;
    cp.add_route("gpt", &compat, "gpt-4o").await?;
    cp.add_route("local", &compat, "mock-ok").await?;
    let anthropic = cp
        .add_provider("anthropic", "anthropic", &mock.base_url())
        .await?;
    cp.add_shared_key(&anthropic, "sk-ant-api03-0123456789abcdef")
        .await?;
    cp.add_route("claude", &anthropic, "claude-sonnet-4-20250514")
        .await?;
    let gemini = cp
        .add_provider("gemini", "gemini", &mock.base_url())
        .await?;
    cp.add_shared_key(&gemini, &format!("AIza{}", "g".repeat(35)))
        .await?;
    cp.add_route("gemini", &gemini, "gemini-2.0-flash").await?;
    let client_key = cp.new_client_key("usage").await?;
    let proxy = cp.ready_proxy("proxy-1").await?;
    Ok(Env {
        _mock: mock,
        cp,
        proxy,
        client_key,
        http: reqwest::Client::new(),
    })
}

impl Env {
    /// Sends a request to the proxy; returns its request id and the whole response text.
    async fn send(&self, path: &str, body: Value) -> (String, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.proxy.url))
            .bearer_auth(&self.client_key);
        if path == "/v1/messages" {
            req = req.header("anthropic-version", "2023-06-01");
        }
        let r = req.json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} {body}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        (id, r.text().await.unwrap())
    }

    /// The stored records of `ids`, once all have arrived over the Report stream.
    async fn records(&self, ids: &[String]) -> HashMap<String, Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = self
                .cp
                .api("GET", "/api/v1/routing-records?limit=1000", None)
                .await
                .unwrap();
            assert_eq!(s, 200, "{v}");
            let found: HashMap<String, Value> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| ids.iter().any(|id| r["request_id"] == id.as_str()))
                .map(|r| (r["request_id"].as_str().unwrap().to_owned(), r.clone()))
                .collect();
            if found.len() == ids.len() {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "records never arrived: {} of {}",
                found.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The effective price table by model, as the API lists it.
    async fn prices(&self) -> HashMap<String, Value> {
        let (s, v) = self.cp.api("GET", "/api/v1/prices", None).await.unwrap();
        assert_eq!(s, 200, "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["model"].as_str().unwrap().to_owned(), p.clone()))
            .collect()
    }

    /// Waits until the proxy serves the control plane's current snapshot (after a change).
    async fn converge(&self) {
        let v = self.cp.snapshot_version().await.unwrap();
        self.proxy.wait_for_version(v).await.unwrap();
    }
}

fn tokens(rec: &Value) -> MockUsage {
    let n = |k: &str| rec[k].as_u64().unwrap_or_else(|| panic!("{k}: {rec}"));
    MockUsage {
        prompt: n("prompt_tokens"),
        completion: n("completion_tokens"),
        cached: n("cached_tokens"),
    }
}

/// The cost of `u` at a price as the API lists it: uncached prompt tokens at the input price,
/// cached ones at the cached price, completion tokens at the output price.
fn cost(u: MockUsage, price: &Value) -> u64 {
    let p = |k: &str| price[k].as_u64().unwrap_or_else(|| panic!("{k}: {price}"));
    (u.prompt - u.cached) * p("input_nanos_per_token")
        + u.cached * p("cached_input_nanos_per_token")
        + u.completion * p("output_nanos_per_token")
}

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

async fn tokens_and_cost_add_up_in_the_stored_records(backend: Backend) -> anyhow::Result<()> {
    let env = setup(backend).await?;
    let prices = env.prices().await;
    let chat =
        |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": hi()});
    // (what, path, body, the usage the provider reports, the upstream model that prices it)
    let cases = [
        (
            "json",
            "/v1/chat/completions",
            chat("gpt", false),
            CHAT_USAGE,
            Some("gpt-4o"),
        ),
        (
            "stream",
            "/v1/chat/completions",
            chat("gpt", true),
            CHAT_USAGE,
            Some("gpt-4o"),
        ),
        (
            "stream with usage asked",
            "/v1/chat/completions",
            json!({"model": "gpt", "stream": true, "stream_options": {"include_usage": true}, "messages": hi()}),
            CHAT_USAGE,
            Some("gpt-4o"),
        ),
        (
            "translated json",
            "/v1/chat/completions",
            chat("claude", false),
            ANTHROPIC_USAGE,
            Some("claude-sonnet-4-20250514"),
        ),
        (
            "translated stream",
            "/v1/chat/completions",
            chat("claude", true),
            ANTHROPIC_USAGE,
            Some("claude-sonnet-4-20250514"),
        ),
        (
            "native anthropic stream",
            "/v1/messages",
            json!({"model": "claude", "stream": true, "max_tokens": 16, "messages": hi()}),
            ANTHROPIC_USAGE,
            Some("claude-sonnet-4-20250514"),
        ),
        (
            "anthropic client, openai provider, stream",
            "/v1/messages",
            json!({"model": "gpt", "stream": true, "max_tokens": 16, "messages": hi()}),
            CHAT_USAGE,
            Some("gpt-4o"),
        ),
        (
            "translated gemini stream",
            "/v1/chat/completions",
            chat("gemini", true),
            GEMINI_USAGE,
            Some("gemini-2.0-flash"),
        ),
        (
            "unpriced",
            "/v1/chat/completions",
            chat("local", false),
            CHAT_USAGE,
            None,
        ),
    ];
    let mut sent = Vec::new();
    for (what, path, body, usage, priced_by) in cases {
        let (id, text) = env.send(path, body.clone()).await;
        if path == "/v1/chat/completions" && body["stream"] == true {
            let asked = body["stream_options"]["include_usage"] == true;
            let usage_chunks = events(&text)
                .iter()
                .filter(|e| e["usage"].is_object())
                .count();
            assert_eq!(
                usage_chunks,
                usize::from(asked),
                "{what}: a usage chunk reaches exactly the clients that asked: {text}"
            );
        }
        sent.push((what, id, usage, priced_by));
    }
    let ids: Vec<String> = sent.iter().map(|(_, id, _, _)| id.clone()).collect();
    let records = env.records(&ids).await;
    let (mut want_total, mut stored_total) = (0, 0);
    for (what, id, usage, priced_by) in &sent {
        let rec = &records[id];
        assert_eq!(tokens(rec), *usage, "{what}: {rec}");
        assert_eq!(rec["partial"], false, "{what}");
        assert!(
            rec["client_key_id"].as_str().is_some_and(|k| !k.is_empty()),
            "{what}: {rec}"
        );
        match priced_by {
            Some(model) => {
                let want = cost(*usage, &prices[*model]);
                assert!(want > 0);
                assert_eq!(rec["cost_nanos"], want, "{what}: {rec}");
                want_total += want;
                stored_total += rec["cost_nanos"].as_u64().unwrap();
            }
            None => assert!(rec["cost_nanos"].is_null(), "{what}: unknown cost: {rec}"),
        }
    }
    assert_eq!(stored_total, want_total);
    // Every record of the same client key names it.
    let keys: std::collections::HashSet<&str> = records
        .values()
        .map(|r| r["client_key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 1);
    Ok(())
}

async fn prices_api_overrides_reach_the_next_request(backend: Backend) -> anyhow::Result<()> {
    let env = setup(backend).await?;
    let cp = &env.cp;
    // The built-in prices are listed, with their source.
    let prices = env.prices().await;
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "o3",
        "o4-mini",
        "text-embedding-3-small",
        "claude-sonnet-4-20250514",
        "claude-opus-4-20250514",
        "claude-3-5-haiku-20241022",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
        "gemini-1.5-flash",
    ] {
        assert_eq!(prices[model]["source"], "default", "{model}");
    }
    assert_eq!(prices["gpt-4o"]["input_nanos_per_token"], 2500);
    assert_eq!(prices["gpt-4o"]["default"]["input_nanos_per_token"], 2500);

    // A user may read the prices, not change them.
    cp.create_user("alice", STRONG, "user").await?;
    let alice = cp.login_tokens("alice", STRONG).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, v) = cp.call("GET", "/api/v1/prices", Some(&alice), None).await?;
    assert_eq!(s, 200, "{v}");
    assert!(!v["data"].as_array().unwrap().is_empty());
    let body = json!({"input_nanos_per_token": 1, "output_nanos_per_token": 1});
    let (s, _, _) = cp
        .call("PUT", "/api/v1/prices/gpt-4o", Some(&alice), Some(body))
        .await?;
    assert_eq!(s, 403);
    let (s, _, _) = cp
        .call("DELETE", "/api/v1/prices/gpt-4o", Some(&alice), None)
        .await?;
    assert_eq!(s, 403);

    // Bad input: a clear 400 naming what is wrong, and nothing stored.
    let bad = [
        (
            "gpt-4o",
            json!({"input_nanos_per_token": -1, "output_nanos_per_token": 1}),
            "input_nanos_per_token",
        ),
        (
            "gpt-4o",
            json!({"input_nanos_per_token": 1, "output_nanos_per_token": 2_000_000}),
            "output_nanos_per_token",
        ),
        (
            "gpt-4o",
            json!({"input_nanos_per_token": 1, "output_nanos_per_token": 1, "cached_input_nanos_per_token": -5}),
            "cached_input_nanos_per_token",
        ),
        (
            "gpt-4o",
            json!({"input_nanos_per_token": 2.5, "output_nanos_per_token": 1}),
            "input_nanos_per_token",
        ),
        (
            "gpt-4o",
            json!({"input_nanos_per_token": 1}),
            "output_nanos_per_token",
        ),
        (
            "gpt-4o",
            json!({"input_nanos_per_token": 1, "output_nanos_per_token": 1, "currency": "eur"}),
            "currency",
        ),
        (
            "bad%20name",
            json!({"input_nanos_per_token": 1, "output_nanos_per_token": 1}),
            "model",
        ),
    ];
    for (model, body, names) in bad {
        let (s, v) = cp
            .api(
                "PUT",
                &format!("/api/v1/prices/{model}"),
                Some(body.clone()),
            )
            .await?;
        assert_eq!(s, 400, "{model} {body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {v}");
    }
    assert_eq!(env.prices().await["gpt-4o"]["source"], "default");

    // The price of a request before and after an override.
    let chat = json!({"model": "gpt", "messages": hi()});
    let (before, _) = env.send("/v1/chat/completions", chat.clone()).await;
    let (s, v) = cp
        .api(
            "PUT",
            "/api/v1/prices/gpt-4o",
            Some(
                json!({"input_nanos_per_token": 1000, "output_nanos_per_token": 2000,
                "cached_input_nanos_per_token": 100}),
            ),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["source"].clone(), v["input_nanos_per_token"].clone()),
        (json!("custom"), json!(1000))
    );
    assert_eq!(
        v["default"]["input_nanos_per_token"], 2500,
        "what DELETE reverts to"
    );
    // A price for a model the list lacks: the unpriced route gets a cost.
    let (s, v) = cp
        .api(
            "PUT",
            "/api/v1/prices/mock-ok",
            Some(json!({"input_nanos_per_token": 7, "output_nanos_per_token": 9})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cached_input_nanos_per_token"], 7, "defaults to input");
    assert!(v["default"].is_null());
    // A kind-qualified name (its `/` written `%2F`) prices the Anthropic provider's model.
    let (s, v) = cp
        .api(
            "PUT",
            "/api/v1/prices/anthropic%2Fclaude-sonnet-4-20250514",
            Some(
                json!({"input_nanos_per_token": 11, "output_nanos_per_token": 13,
                "cached_input_nanos_per_token": 1}),
            ),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "anthropic/claude-sonnet-4-20250514");
    env.converge().await;
    let (after, _) = env.send("/v1/chat/completions", chat.clone()).await;
    let (local, _) = env
        .send(
            "/v1/chat/completions",
            json!({"model": "local", "messages": hi()}),
        )
        .await;
    let (claude, _) = env
        .send(
            "/v1/chat/completions",
            json!({"model": "claude", "messages": hi()}),
        )
        .await;
    let records = env
        .records(&[before.clone(), after.clone(), local.clone(), claude.clone()])
        .await;
    let qualified = json!({"input_nanos_per_token": 11, "output_nanos_per_token": 13,
        "cached_input_nanos_per_token": 1});
    assert_eq!(
        records[&claude]["cost_nanos"],
        cost(ANTHROPIC_USAGE, &qualified)
    );
    let list_price = json!({"input_nanos_per_token": 2500, "output_nanos_per_token": 10000,
        "cached_input_nanos_per_token": 1250});
    assert_eq!(
        records[&before]["cost_nanos"],
        cost(CHAT_USAGE, &list_price)
    );
    let custom = json!({"input_nanos_per_token": 1000, "output_nanos_per_token": 2000,
        "cached_input_nanos_per_token": 100});
    assert_eq!(records[&after]["cost_nanos"], cost(CHAT_USAGE, &custom));
    let local_price = json!({"input_nanos_per_token": 7, "output_nanos_per_token": 9,
        "cached_input_nanos_per_token": 7});
    assert_eq!(
        records[&local]["cost_nanos"],
        cost(CHAT_USAGE, &local_price)
    );

    // DELETE reverts to the built-in price, or removes a model the list lacks; both audited.
    let (s, _) = cp.api("DELETE", "/api/v1/prices/gpt-4o", None).await?;
    assert_eq!(s, 204);
    let (s, _) = cp.api("DELETE", "/api/v1/prices/mock-ok", None).await?;
    assert_eq!(s, 204);
    let (s, _) = cp.api("DELETE", "/api/v1/prices/mock-ok", None).await?;
    assert_eq!(s, 404, "nothing left to delete");
    let (s, _) = cp
        .api(
            "DELETE",
            "/api/v1/prices/anthropic%2Fclaude-sonnet-4-20250514",
            None,
        )
        .await?;
    assert_eq!(s, 204);
    let prices = env.prices().await;
    assert_eq!(
        (
            prices["gpt-4o"]["source"].clone(),
            prices["gpt-4o"]["input_nanos_per_token"].clone()
        ),
        (json!("default"), json!(2500))
    );
    assert!(!prices.contains_key("mock-ok"));
    env.converge().await;
    let (reverted, _) = env.send("/v1/chat/completions", chat).await;
    let records = env.records(std::slice::from_ref(&reverted)).await;
    assert_eq!(
        records[&reverted]["cost_nanos"],
        cost(CHAT_USAGE, &list_price)
    );
    for (action, n) in [("price_set", 3), ("price_deleted", 3)] {
        let (_, v) = cp
            .api("GET", &format!("/api/v1/audit?action={action}"), None)
            .await?;
        let rows = v["data"].as_array().unwrap();
        assert_eq!(rows.len(), n, "{action}: {v}");
        assert!(rows.iter().all(|r| r["target_type"] == "model_price"));
    }
    Ok(())
}
