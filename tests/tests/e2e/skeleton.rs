//! The walking skeleton end to end, on SQLite and on Postgres: admin API → control plane →
//! mTLS gRPC snapshot → proxy → mock provider, with the provider key checked never to leak.
//!
//! Each scenario runs on both backends (`<scenario>::sqlite`, `<scenario>::postgres`) with a
//! control plane and proxy of its own, and ends with the leak checks.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

struct Setup {
    client_key: String,
    canary: String,
}

async fn configure(cp: &ControlPlane, mock: &MockProvider) -> anyhow::Result<Setup> {
    let (s, provider) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "mock", "kind": "openai-compatible", "base_url": mock.base_url()})),
        )
        .await?;
    assert_eq!(s, 201, "{provider}");
    let pid = provider["id"].as_str().unwrap().to_owned();

    let canary = format!("sk-canary-{}", uuid::Uuid::new_v4().simple());
    let (s, key) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(json!({"key": canary, "label": "canary", "shared": true})),
        )
        .await?;
    assert_eq!(s, 201, "{key}");
    assert_eq!(
        key["masked"],
        format!("sk-****{}", &canary[canary.len() - 4..])
    );
    assert!(!key.to_string().contains(&canary[3..canary.len() - 4]));

    // The same key twice is refused, and the refusal does not quote it.
    let (s, dup) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(json!({"key": canary, "shared": true})),
        )
        .await?;
    assert_eq!(s, 409, "{dup}");
    assert!(!dup.to_string().contains(&canary));

    let (s, r) = cp
        .api(
            "POST",
            "/api/v1/routes",
            Some(
                json!({"public_model": "gpt-test", "aliases": ["gpt-test-latest"],
                "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}),
            ),
        )
        .await?;
    assert_eq!(s, 201, "{r}");
    let (s, _) = cp
        .api(
            "POST",
            "/api/v1/routes",
            Some(json!({"public_model": "gpt-test-latest",
                "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]})),
        )
        .await?;
    assert_eq!(s, 409, "an alias is a routed name");
    for (public, upstream) in [
        ("gpt-stream", "mock-stream-gated"),
        ("gpt-cut", "mock-stream-cut"),
        ("gpt-429", "mock-429"),
        ("gpt-401", "mock-401"),
        ("gpt-400", "mock-400"),
        ("gpt-500", "mock-500"),
    ] {
        let (s, r) = cp
            .api(
                "POST",
                "/api/v1/routes",
                Some(json!({"public_model": public,
                    "targets": [{"provider_id": pid, "upstream_model": upstream}]})),
            )
            .await?;
        assert_eq!(s, 201, "{r}");
    }
    // A second provider with a short timeout, for the slow-upstream case.
    let (s, slow) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "mock-slow", "kind": "openai-compatible",
                "base_url": mock.base_url(), "request_timeout_ms": 1000})),
        )
        .await?;
    assert_eq!(s, 201, "{slow}");
    let slow_id = slow["id"].as_str().unwrap();
    let (s, _) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{slow_id}/keys"),
            Some(json!({"key": canary, "shared": true})),
        )
        .await?;
    assert_eq!(s, 201, "the same key may be stored for another provider");
    let (s, _) = cp
        .api(
            "POST",
            "/api/v1/routes",
            Some(json!({"public_model": "gpt-slow",
                "targets": [{"provider_id": slow_id, "upstream_model": "mock-slow"}]})),
        )
        .await?;
    assert_eq!(s, 201);
    let (s, ck) = cp
        .api("POST", "/api/v1/client-keys", Some(json!({"name": "e2e"})))
        .await?;
    assert_eq!(s, 201, "{ck}");
    let client_key = ck["key"].as_str().unwrap().to_owned();
    assert!(client_key.starts_with("lh-"));
    // Listing never shows the full client key again.
    let (_, list) = cp.api("GET", "/api/v1/client-keys", None).await?;
    assert!(!list.to_string().contains(&client_key));
    Ok(Setup { client_key, canary })
}

/// Collects every response the test saw, to check none of them carries the provider key.
#[derive(Default)]
struct Seen(String);

async fn chat(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    stream: bool,
) -> anyhow::Result<reqwest::Response> {
    Ok(http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?)
}

/// A configured control plane, a ready proxy and the mock behind it, for one scenario.
struct Skeleton {
    mock: MockProvider,
    cp: ControlPlane,
    setup: Setup,
    proxy: Proxy,
    http: reqwest::Client,
    seen: Seen,
}

impl Skeleton {
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(backend).await?;
        let setup = configure(&cp, &mock).await?;
        let proxy = cp.ready_proxy("proxy-1").await?;
        Ok(Skeleton {
            mock,
            cp,
            setup,
            proxy,
            http: reqwest::Client::new(),
            seen: Seen::default(),
        })
    }

    async fn chat(&self, model: &str, stream: bool) -> anyhow::Result<reqwest::Response> {
        chat(
            &self.http,
            &self.proxy.url,
            &self.setup.client_key,
            model,
            stream,
        )
        .await
    }

    /// The provider key never appears in a response, a log line, or the database; nor does the
    /// client key in a response or a log line.
    async fn finish(self) -> anyhow::Result<()> {
        let logs = self.cp.logs.text();
        assert!(logs.contains("\"request\""), "access log missing:\n{logs}");
        for (what, text) in [("responses", &self.seen.0), ("logs", &logs)] {
            assert!(
                !text.contains(&self.setup.canary),
                "provider key leaked in {what}"
            );
            assert!(
                !text.contains(&self.setup.client_key),
                "client key leaked in {what}"
            );
        }
        let dump = self.cp.db.dump().await?;
        use base64::Engine;
        for form in [
            self.setup.canary.clone().into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(&self.setup.canary)
                .into_bytes(),
            hex_lower(self.setup.canary.as_bytes()).into_bytes(),
        ] {
            assert!(
                !dump.windows(form.len()).any(|w| w == form.as_slice()),
                "provider key found in the database dump"
            );
        }
        Ok(())
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

on_both_backends!(
    requests_are_checked_then_sent_with_the_provider_key,
    streams_are_relayed_chunk_by_chunk,
    upstream_failures_are_mapped_and_recorded,
);

/// The model list shows the routes of the client key; a completion reaches the mock with the
/// provider key as bearer and the upstream model, never with the client's key. Bad client keys
/// get 401 in OpenAI's shape; an unknown model 404; a malformed body 400.
async fn requests_are_checked_then_sent_with_the_provider_key(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut t = Skeleton::start(backend).await?;
    let r = t
        .http
        .get(format!("{}/v1/models", t.proxy.url))
        .bearer_auth(&t.setup.client_key)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let models: Value = r.json().await?;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-test") && ids.contains(&"gpt-stream"),
        "{ids:?}"
    );

    let r = t.chat("gpt-test", false).await?;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str()?.to_owned();
    assert!(rid.starts_with("req_"));
    t.seen.0.push_str(&format!("{:?}", r.headers()));
    let body = r.text().await?;
    t.seen.0.push_str(&body);
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["choices"][0]["message"]["content"], "hello from mock");
    let last = t.mock.requests().pop().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.headers["authorization"],
        format!("Bearer {}", t.setup.canary)
    );
    assert_eq!(last.body["model"], "mock-ok");
    assert!(last.headers.get("x-api-key").is_none());
    // The client's own key never reaches the provider.
    assert!(!format!("{:?}", last.headers).contains(&t.setup.client_key));

    // Bad client keys: 401 in OpenAI's shape.
    for auth in [Some("lh-not-a-real-key"), Some(""), None] {
        let mut req = t
            .http
            .post(format!("{}/v1/chat/completions", t.proxy.url))
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("x-request-id"));
        let v: Value = r.json().await?;
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    // Unknown model and malformed bodies.
    let r = t.chat("nope", false).await?;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await?["error"]["code"], "model_not_found");
    let r = t
        .http
        .post(format!("{}/v1/chat/completions", t.proxy.url))
        .bearer_auth(&t.setup.client_key)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await?["error"]["type"],
        "invalid_request_error"
    );
    t.finish().await
}

/// Streaming is relayed chunk by chunk: the first event arrives while the mock still holds the
/// rest back (a buffering proxy would block here until the timeout). A stream cut mid-way ends
/// with an error event in the OpenAI dialect.
async fn streams_are_relayed_chunk_by_chunk(backend: Backend) -> anyhow::Result<()> {
    let mut t = Skeleton::start(backend).await?;
    let mut r = t.chat("gpt-stream", true).await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("first SSE chunk was not relayed before the stream finished")?
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"first\""),
        "{first:?}"
    );
    t.mock.release();
    let mut rest = String::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await?? {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(
        rest.contains(" second") && rest.trim_end().ends_with("data: [DONE]"),
        "{rest}"
    );
    t.seen.0.push_str(&rest);

    let r = t.chat("gpt-cut", true).await?;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap_or_default();
    assert!(
        body.contains("Hel") && body.contains("upstream_interrupted"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"));
    t.seen.0.push_str(&body);
    t.finish().await
}

/// Provider 429, 500, slowness, 400 and a 401 quoting the key each reach the client as their own
/// answer, none naming the key. Routing records of every request come back over the Report
/// stream and are stored, naming keys only by fingerprint.
async fn upstream_failures_are_mapped_and_recorded(backend: Backend) -> anyhow::Result<()> {
    let mut t = Skeleton::start(backend).await?;
    let r = t.chat("gpt-test", false).await?;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str()?.to_owned();
    t.seen.0.push_str(&r.text().await?);

    // Provider 429: the client gets 429 with the provider's Retry-After.
    let r = t.chat("gpt-429", false).await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let h = r.headers().clone();
    let body = r.text().await?;
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["error"]["type"], "rate_limit_error");
    t.seen.0.push_str(&format!("{h:?}{body}"));

    // Provider 500: a generic 502 in the OpenAI shape.
    let r = t.chat("gpt-500", false).await?;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "upstream_unavailable");

    // A provider slower than its timeout: 504.
    let r = t.chat("gpt-slow", false).await?;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "upstream_timeout");

    // Provider 400 (a client error) is passed through.
    let r = t.chat("gpt-400", false).await?;
    assert_eq!(r.status(), 400);
    let body = r.text().await?;
    assert!(body.contains("context_length_exceeded"), "{body}");
    t.seen.0.push_str(&body);

    // Provider 401 quoting the key: the client gets a generic 502 that names no key (and the key
    // is disabled fleet-wide, so this comes last).
    let r = t.chat("gpt-401", false).await?;
    assert_eq!(r.status(), 502);
    let body = r.text().await?;
    assert!(body.contains("upstream_auth_failed"), "{body}");
    t.seen.0.push_str(&body);

    // Routing records come back over the Report stream and are stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let (s, v) =
            t.cp.api("GET", "/api/v1/routing-records?limit=100", None)
                .await?;
        assert_eq!(s, 200);
        let list = v["data"].as_array().cloned().unwrap_or_default();
        if list.iter().any(|r| r["request_id"] == rid.as_str()) && list.len() >= 6 {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never arrived: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rec = records
        .iter()
        .find(|r| r["request_id"] == rid.as_str())
        .unwrap();
    assert_eq!(rec["public_model"], "gpt-test");
    assert_eq!(rec["status"], 200);
    let fp = rec["detail"]["attempts"][0]["key_fingerprint"]
        .as_str()
        .unwrap();
    assert!(fp.starts_with("fp_"));
    t.seen.0.push_str(&serde_json::to_string(&records)?);
    t.finish().await
}

/// Admin API basics: bad credentials, missing token, user-only routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_auth() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let r = cp.login("admin", "wrong-password").await?;
    assert_eq!(r.status(), 401);
    let wrong: Value = r.json().await?;
    let r = cp.login("nobody", "wrong-password").await?;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await?,
        wrong,
        "unknown user and wrong password look the same"
    );
    let r = cp
        .http
        .get(format!("{}/api/v1/providers", cp.admin_url))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = cp
        .http
        .get(format!("{}/api/v1/providers", cp.admin_url))
        .bearer_auth("not.a.jwt")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // Bad input gets a clear 400 naming the field.
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "x", "kind": "openai", "base_url": "ftp://x"})),
        )
        .await?;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("base_url"),
        "{v}"
    );
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "x", "kind": "openai", "base_url": "https://user:pw@h/v1"})),
        )
        .await?;
    assert_eq!(s, 400, "{v}");
    let (s, v) = cp
        .api("POST", "/api/v1/providers", Some(json!({"nme": "x"})))
        .await?;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request");
    Ok(())
}
