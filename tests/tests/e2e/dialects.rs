//! Provider kinds and client dialects: each preset and kind reaches the mock with the right URL,
//! authentication header and body; the Anthropic surface passes through natively; errors come
//! back in the client's dialect; embeddings and completions pass through.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

struct Env {
    mock: MockProvider,
    cp: ControlPlane,
    client_key: String,
    proxy: Proxy,
    http: reqwest::Client,
}

async fn provider(cp: &ControlPlane, body: Value) -> String {
    let (s, v) = cp
        .api("POST", "/api/v1/providers", Some(body))
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn setup() -> anyhow::Result<Env> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let base = format!("http://{}", mock.addr);
    // Every preset, pointed at the mock under its own path prefix.
    for preset in [
        "mistral",
        "groq",
        "deepseek",
        "openrouter",
        "together",
        "xai",
        "ollama",
        "vllm",
        "openai",
    ] {
        let pid = provider(
            &cp,
            json!({"name": preset, "preset": preset, "base_url": format!("{base}/{preset}/v1")}),
        )
        .await;
        cp.add_shared_key(&pid, &format!("sk-{preset}-key-0123456789abcdef"))
            .await?;
        cp.add_route(
            &format!("{preset}-model"),
            &pid,
            &format!("{preset}-upstream"),
        )
        .await?;
    }
    let azure = provider(&cp, json!({"name": "azure", "kind": "azure-openai", "base_url": format!("{base}/azure"), "api_version": "2024-10-21"})).await;
    cp.add_shared_key(&azure, "0123456789abcdef0123456789abcdef")
        .await?;
    cp.add_route("azure-model", &azure, "my-deployment").await?;
    let anthropic = provider(
        &cp,
        json!({"name": "anthropic", "preset": "anthropic", "base_url": format!("{base}/v1")}),
    )
    .await;
    cp.add_shared_key(&anthropic, "sk-ant-api03-0123456789abcdef")
        .await?;
    cp.add_route("claude", &anthropic, "claude-mock").await?;
    let gemini = provider(
        &cp,
        json!({"name": "gemini", "preset": "gemini", "base_url": format!("{base}/gemini")}),
    )
    .await;
    cp.add_shared_key(&gemini, &format!("AIza{}", "g".repeat(35)))
        .await?;
    cp.add_route("gemini-model", &gemini, "gemini-2.0-flash")
        .await?;
    let client_key = cp.new_client_key("dialects").await?;
    let proxy = cp.ready_proxy("proxy-1").await?;
    Ok(Env {
        mock,
        cp,
        client_key,
        proxy,
        http: reqwest::Client::new(),
    })
}

impl Env {
    async fn openai(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.proxy.url))
            .bearer_auth(&self.client_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn anthropic(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/messages", self.proxy.url))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Every preset's chat request reaches its URL with a bearer key; Azure OpenAI its deployment URL
/// with an `api-key` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_and_kinds_reach_the_right_url_with_the_right_auth() -> anyhow::Result<()> {
    let env = setup().await?;
    for preset in [
        "mistral",
        "groq",
        "deepseek",
        "openrouter",
        "together",
        "xai",
        "ollama",
        "vllm",
        "openai",
    ] {
        let r = env
            .openai("/v1/chat/completions", json!({"model": format!("{preset}-model"), "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(r.status(), 200, "{preset}");
        let seen = env.mock.requests().pop().unwrap();
        assert_eq!(
            seen.path,
            format!("/{preset}/v1/chat/completions"),
            "{preset}"
        );
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer sk-{preset}-key-0123456789abcdef")
        );
        assert_eq!(seen.body["model"], format!("{preset}-upstream"));
        assert_eq!(seen.body["messages"][0]["content"], "hi");
    }
    // Azure OpenAI: deployment URL, api-version, api-key header, no bearer.
    let r = env
        .openai(
            "/v1/chat/completions",
            json!({"model": "azure-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(
        seen.path,
        "/azure/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(seen.headers["api-key"], "0123456789abcdef0123456789abcdef");
    assert!(seen.headers.get("authorization").is_none());
    Ok(())
}

/// Embeddings, completions and the Responses API pass through where the provider serves them,
/// and get a clear 400 where it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_completions_and_responses_pass_through() -> anyhow::Result<()> {
    let env = setup().await?;
    // Embeddings and completions pass through.
    let r = env
        .openai(
            "/v1/embeddings",
            json!({"model": "groq-model", "input": "hello"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["data"][0]["object"], "embedding");
    assert_eq!(
        env.mock.requests().pop().unwrap().path,
        "/groq/v1/embeddings"
    );
    let r = env
        .openai(
            "/v1/completions",
            json!({"model": "vllm-model", "prompt": "once upon"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["object"], "text_completion");
    assert_eq!(
        env.mock.requests().pop().unwrap().path,
        "/vllm/v1/completions"
    );
    let r = env
        .openai("/v1/embeddings", json!({"model": "groq-model"}))
        .await;
    assert_eq!(r.status(), 400, "missing input");

    // The Responses API passes through to OpenAI, and only there.
    let r = env
        .openai(
            "/v1/responses",
            json!({"model": "openai-model", "input": "hello"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["object"], "response");
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.body["model"].clone()),
        ("/openai/v1/responses", json!("openai-upstream"))
    );
    let r = env
        .openai(
            "/v1/responses",
            json!({"model": "groq-model", "input": "hello"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await?["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/responses")
    );

    // Embeddings have no translation to Gemini yet: a clear 400 instead of a silent loss.
    let r = env
        .openai(
            "/v1/embeddings",
            json!({"model": "gemini-model", "input": "x"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot serve /v1/embeddings"),
        "{v}"
    );
    Ok(())
}

/// The key test's verdict comes from the same classifier the proxy uses: a quota error is
/// `quota_exhausted` (not any-429-is-a-rate-limit), a revoked key `invalid_key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_test_classifies_answers_as_the_proxy_does() -> anyhow::Result<()> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let pid = provider(
        &cp,
        json!({"name": "cls", "kind": "openai-compatible", "base_url": mock.base_url()}),
    )
    .await;
    for (marker, expected) in [
        ("good", "ok"),
        ("quota", "quota_exhausted"),
        ("revoked", "invalid_key"),
        ("rlhot", "rate_limited"),
    ] {
        let (s, k) = cp
            .api(
                "POST",
                &format!("/api/v1/providers/{pid}/keys"),
                Some(json!({"key": format!("sk-{marker}-0123456789abcdef"), "shared": true})),
            )
            .await?;
        assert_eq!(s, 201, "{k}");
        let kid = k["id"].as_str().unwrap().to_owned();
        let (s, v) = cp
            .api(
                "POST",
                &format!("/api/v1/providers/{pid}/keys/{kid}/test"),
                None,
            )
            .await?;
        assert_eq!(
            (s, v["result"].as_str()),
            (200, Some(expected)),
            "{marker}: {v}"
        );
    }
    Ok(())
}

/// The key test action authenticates each kind its own way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_test_authenticates_each_kind_its_own_way() -> anyhow::Result<()> {
    let env = setup().await?;
    let (_, providers) = env.cp.api("GET", "/api/v1/providers", None).await?;
    for (name, path, header) in [
        ("anthropic", "/v1/models", "x-api-key"),
        ("gemini", "/gemini/models", "x-goog-api-key"),
        ("azure", "/azure/openai/models", "api-key"),
        ("groq", "/groq/v1/models", "authorization"),
    ] {
        let pid = providers["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, keys) = env
            .cp
            .api("GET", &format!("/api/v1/providers/{pid}/keys"), None)
            .await?;
        let kid = keys["data"][0]["id"].as_str().unwrap().to_owned();
        let (s, v) = env
            .cp
            .api(
                "POST",
                &format!("/api/v1/providers/{pid}/keys/{kid}/test"),
                None,
            )
            .await?;
        assert_eq!((s, v["result"].clone()), (200, json!("ok")), "{name}: {v}");
        let probe = env.mock.requests().pop().unwrap();
        assert_eq!(
            (probe.method.as_str(), probe.path.as_str()),
            ("GET", path),
            "{name}"
        );
        assert!(
            probe.headers.contains_key(header),
            "{name}: {:?}",
            probe.headers
        );
        if name != "groq" {
            assert!(probe.headers.get("authorization").is_none(), "{name}");
        }
    }
    Ok(())
}

/// Provider presets and kinds validate their fields; a preset fills in its base URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_presets_validate() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "x", "preset": "nope"})),
        )
        .await?;
    assert_eq!(s, 400, "{v}");
    let (s, v) = cp.api("POST", "/api/v1/providers", Some(json!({"name": "az", "kind": "azure-openai", "base_url": "https://r.openai.azure.com"}))).await?;
    assert_eq!(s, 400, "azure needs api_version: {v}");
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "g2", "preset": "groq"})),
        )
        .await?;
    assert_eq!(
        (s, v["base_url"].clone()),
        (201, json!("https://api.groq.com/openai/v1")),
        "{v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_surface_passes_through_natively() -> anyhow::Result<()> {
    let env = setup().await?;
    let body = json!({"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    let r = env.anthropic(&env.client_key, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await?;
    assert_eq!(
        (v["type"].clone(), v["content"][0]["text"].clone()),
        (json!("message"), json!("hello from mock"))
    );
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-api03-0123456789abcdef");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.body["model"], "claude-mock");
    assert!(seen.headers.get("authorization").is_none());

    // Streaming keeps Anthropic's event framing.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = env.anthropic(&env.client_key, stream).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    for ev in [
        "event: message_start",
        "event: content_block_delta",
        "event: message_stop",
    ] {
        assert!(text.contains(ev), "{text}");
    }

    // Errors in Anthropic's shape: a bad client key, a missing field, an OpenAI-only model.
    let r = env.anthropic("lh-wrong", body.clone()).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await?;
    assert_eq!(
        (v["type"].clone(), v["error"]["type"].clone()),
        (json!("error"), json!("authentication_error")),
        "{v}"
    );
    let r = env
        .anthropic(
            &env.client_key,
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{v}"
    );
    let r = env.anthropic(&env.client_key, json!({"model": "gemini-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 400, "no translation to Gemini yet");
    assert_eq!(r.json::<Value>().await?["type"], "error");
    // Bearer works too, and the model list answers in Anthropic's shape.
    let r = env
        .http
        .get(format!("{}/v1/models", env.proxy.url))
        .header("x-api-key", &env.client_key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "claude" && m["type"] == "model"),
        "{v}"
    );
    assert_eq!(v["has_more"], false);

    // All keys cooling: 429 rate_limit_error with Retry-After, in Anthropic's shape.
    let (_, keys) = env.cp.api("GET", "/api/v1/providers", None).await?;
    let pid = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "anthropic")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, list) = env
        .cp
        .api("GET", &format!("/api/v1/providers/{pid}/keys"), None)
        .await?;
    let kid = list["data"][0]["id"].as_str().unwrap().to_owned();
    env.cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys/{kid}/cooldown"),
            Some(json!({"seconds": 30})),
        )
        .await?;
    env.proxy.wait_for_deltas(1).await?;
    let r = env.anthropic(&env.client_key, body).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await?["error"]["type"],
        "rate_limit_error"
    );
    Ok(())
}

/// OpenAI clients served by an Anthropic provider: request, answer and stream translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_are_translated_for_anthropic() -> anyhow::Result<()> {
    let env = setup().await?;
    let r = env
        .openai(
            "/v1/chat/completions",
            json!({"model": "claude", "max_tokens": 20, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(v["choices"][0]["message"]["content"], "hello from mock");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Anthropic's input, cache reads and cache writes are all prompt tokens in OpenAI's terms.
    let u = llmhub_e2e::mock::ANTHROPIC_USAGE;
    assert_eq!(v["usage"]["prompt_tokens"], u.prompt);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        u.cached
    );
    assert_eq!(v["usage"]["total_tokens"], u.prompt + u.completion);
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-api03-0123456789abcdef");
    assert_eq!(seen.body["system"][0]["text"], "be brief");
    assert_eq!(seen.body["max_tokens"], 20);
    assert_eq!(seen.body["model"], "claude-mock");

    let r = env
        .openai(
            "/v1/chat/completions",
            json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "hello from mock");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // A field Anthropic cannot honour is refused by name.
    let r = env
        .openai("/v1/chat/completions", json!({"model": "claude", "logprobs": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await?["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logprobs")
    );
    Ok(())
}

/// Anthropic clients served by an OpenAI-compatible provider: request, answer and stream
/// translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_requests_are_translated_for_openai_compatible() -> anyhow::Result<()> {
    let env = setup().await?;
    let body = json!({"model": "groq-model", "max_tokens": 32, "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}]});
    let r = env.anthropic(&env.client_key, body.clone()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(
        (v["type"].clone(), v["model"].clone()),
        (json!("message"), json!("groq-model"))
    );
    assert_eq!(v["content"][0]["text"], "hello from mock");
    assert_eq!(v["stop_reason"], "end_turn");
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/groq/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        "Bearer sk-groq-key-0123456789abcdef"
    );
    assert_eq!(
        seen.body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(seen.body["model"], "groq-upstream");

    let mut stream = body;
    stream["stream"] = json!(true);
    let r = env.anthropic(&env.client_key, stream).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|d| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, "hello from mock");

    // Anthropic-only fields are refused by name.
    let r = env
        .anthropic(&env.client_key, json!({"model": "groq-model", "max_tokens": 5, "top_k": 3, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("top_k"),
        "{v}"
    );
    Ok(())
}

/// OpenAI clients served by Gemini: the key in `x-goog-api-key` (never in the URL), request,
/// answer and stream translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_are_translated_for_gemini() -> anyhow::Result<()> {
    let env = setup().await?;
    let key = format!("AIza{}", "g".repeat(35));
    let r = env
        .openai("/v1/chat/completions", json!({"model": "gemini-model", "max_tokens": 10,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(
        (v["object"].clone(), v["model"].clone()),
        (json!("chat.completion"), json!("gemini-model"))
    );
    assert_eq!(v["choices"][0]["message"]["content"], "hello from mock");
    assert_eq!(v["usage"]["total_tokens"], 7);
    let seen = env.mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/gemini/models/gemini-2.0-flash:generateContent");
    assert_eq!(seen.headers["x-goog-api-key"], key.as_str());
    assert!(!seen.path.contains(&key));
    assert_eq!(
        seen.body["systemInstruction"]["parts"][0]["text"],
        "be brief"
    );
    assert_eq!(seen.body["generationConfig"]["maxOutputTokens"], 10);

    let r = env
        .openai(
            "/v1/chat/completions",
            json!({"model": "gemini-model", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "hello from mock");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        env.mock.requests().pop().unwrap().path,
        "/gemini/models/gemini-2.0-flash:streamGenerateContent"
    );
    Ok(())
}
