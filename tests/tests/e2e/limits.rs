//! Fleet-wide limits with the real binaries: three proxies sharing one Redis hold a client key's
//! requests-per-minute, tokens-per-minute and concurrency limits as one limit (not three); a
//! user's limit covers all of the user's keys; Redis stopping mid-test makes every proxy enforce
//! its share instead, counted on `/metrics`, with no request failing because of it; Redis back,
//! shared counting resumes.

use std::time::Duration;

use llmhub_e2e::harness::{
    Backend, ControlPlane, PrivateRedis, Proxy, ProxyOptions, free_port, redis_url,
};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

struct Rig {
    _mock: MockProvider,
    cp: ControlPlane,
    proxies: Vec<Proxy>,
    http: reqwest::Client,
}

impl Rig {
    async fn start(n: usize, redis: &str) -> anyhow::Result<Rig> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(Backend::Sqlite).await?;
        let pid = cp
            .add_provider("mock", "openai-compatible", &mock.base_url())
            .await?;
        cp.add_shared_key(&pid, &format!("sk-good-{}", uuid::Uuid::new_v4().simple()))
            .await?;
        cp.add_route("m", &pid, "mock-ok").await?;
        cp.add_route("slow", &pid, "mock-slow").await?;
        let options = ProxyOptions {
            redis: Some((
                redis.to_owned(),
                format!("llmhub-e2e-{}:", uuid::Uuid::new_v4().simple()),
            )),
            ..ProxyOptions::default()
        };
        let mut proxies = Vec::new();
        for i in 0..n {
            proxies.push(cp.ready_proxy_with(&format!("proxy-{i}"), &options).await?);
        }
        Ok(Rig {
            _mock: mock,
            cp,
            proxies,
            http: reqwest::Client::new(),
        })
    }

    async fn client_key(&self, limits: Value) -> anyhow::Result<String> {
        let mut body = json!({"name": format!("k-{}", uuid::Uuid::new_v4().simple())});
        body.as_object_mut()
            .unwrap()
            .extend(limits.as_object().unwrap().clone());
        let (s, v) = self
            .cp
            .api("POST", "/api/v1/client-keys", Some(body))
            .await?;
        anyhow::ensure!(s == 201, "client key: {s} {v}");
        // Every proxy serves the snapshot with the new key.
        let version = self.cp.snapshot_version().await?;
        for p in &self.proxies {
            p.wait_for_version(version).await?;
        }
        Ok(v["key"].as_str().unwrap().to_owned())
    }

    /// `n` requests at once, spread over the proxies: (status, headers, body) of each.
    async fn burst(
        &self,
        key: &str,
        n: usize,
        body: impl Fn(usize) -> Value,
    ) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let req = self
                .http
                .post(format!(
                    "{}/v1/chat/completions",
                    self.proxies[i % self.proxies.len()].url
                ))
                .bearer_auth(key)
                .json(&body(i));
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                let (s, h) = (r.status().as_u16(), r.headers().clone());
                (s, h, r.json::<Value>().await.unwrap_or(Value::Null))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn count(results: &[(u16, reqwest::header::HeaderMap, Value)], status: u16) -> usize {
    results.iter().filter(|r| r.0 == status).count()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_hold_one_limit() -> anyhow::Result<()> {
    let rig = Rig::start(3, &redis_url()).await?;
    for p in &rig.proxies {
        assert_eq!(
            metric(&p.metrics().await?, "llmhub_limit_live_proxies"),
            3,
            "the control plane told each proxy the fleet size"
        );
    }

    // Requests per minute: twice the limit offered through three proxies.
    let key = rig.client_key(json!({"rpm_limit": 15})).await?;
    let results = rig.burst(&key, 30, |_| chat("m")).await;
    assert_eq!(count(&results, 200), 15, "admitted must equal the limit");
    assert_eq!(count(&results, 429), 15);
    let refused = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(refused.1["x-ratelimit-scope"], "client_key");
    assert_eq!(refused.1["x-ratelimit-limit-requests"], "15");
    assert!(refused.1.contains_key("retry-after"));
    assert_eq!(refused.2["error"]["type"], "rate_limit_error");

    // Tokens per minute, mixed prompt sizes: every admitted request's usage fits the limit,
    // counting the reservation of requests still in flight.
    let key = rig.client_key(json!({"tpm_limit": 4000})).await?;
    let results = rig
        .burst(&key, 24, |i| {
            json!({"model": "m", "max_tokens": 300 + 100 * (i % 4),
                   "messages": [{"role": "user", "content": "x".repeat(200 * (i % 5))}]})
        })
        .await;
    let admitted = count(&results, 200);
    assert!(admitted >= 3, "some requests fit: {admitted}");
    assert!(
        count(&results, 429) >= 10,
        "the offered estimates were far over 4000"
    );
    let used: u64 = results
        .iter()
        .filter(|r| r.0 == 200)
        .map(|r| r.2["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum();
    assert!(used <= 4000, "{used} tokens admitted in a minute");
    let refused = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(refused.1["x-ratelimit-limit-tokens"], "4000");

    // Concurrency: three slow requests in flight at most, whichever proxy they reach.
    let key = rig.client_key(json!({"max_concurrent": 3})).await?;
    let results = rig.burst(&key, 9, |_| chat("slow")).await;
    assert_eq!(count(&results, 200), 3);
    assert_eq!(count(&results, 429), 6);
    assert_eq!(
        results.iter().find(|r| r.0 == 429).unwrap().1["x-ratelimit-limit-concurrent"],
        "3"
    );
    // Slots free when requests end.
    let results = rig.burst(&key, 2, |_| chat("m")).await;
    assert_eq!(count(&results, 200), 2);

    // A user's limit covers every key of the user, across proxies.
    let (s, me) = rig.cp.api("GET", "/api/v1/me", None).await?;
    anyhow::ensure!(s == 200, "{me}");
    let uid = me["id"].as_str().unwrap().to_owned();
    let (s, v) = rig
        .cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{uid}/limits"),
            Some(json!({"rpm_limit": 10})),
        )
        .await?;
    anyhow::ensure!(s == 200, "user limits: {s} {v}");
    let (a, b) = (
        rig.client_key(json!({})).await?,
        rig.client_key(json!({})).await?,
    );
    let mut ok = 0;
    for k in [&a, &b] {
        let results = rig.burst(k, 10, |_| chat("m")).await;
        ok += count(&results, 200);
        if let Some(r) = results.iter().find(|r| r.0 == 429) {
            assert_eq!(r.1["x-ratelimit-scope"], "user");
        }
    }
    // One limit over both keys (user counters start when the limit is set).
    assert_eq!(ok, 10, "{ok} requests passed a user limit of 10");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_enforces_shares_then_shared_counting_resumes() -> anyhow::Result<()> {
    let mut redis = PrivateRedis::start(free_port());
    let rig = Rig::start(2, &redis.url()).await?;
    let key = rig.client_key(json!({"rpm_limit": 40})).await?;
    let results = rig.burst(&key, 4, |_| chat("m")).await;
    assert_eq!(count(&results, 200), 4);
    for p in &rig.proxies {
        assert_eq!(
            metric(&p.metrics().await?, "llmhub_limit_degraded_decisions_total"),
            0
        );
    }

    redis.stop();
    // Each of the two proxies enforces half of 40; no request fails for want of Redis.
    let key = rig.client_key(json!({"rpm_limit": 40})).await?;
    let results = rig.burst(&key, 60, |_| chat("m")).await;
    assert_eq!(count(&results, 200), 40, "two shares of 20");
    assert_eq!(count(&results, 429), 20);
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 429),
        "a request failed because Redis is down"
    );
    let mut degraded = 0;
    for p in &rig.proxies {
        degraded += metric(&p.metrics().await?, "llmhub_limit_degraded_decisions_total");
    }
    assert_eq!(degraded, 60);

    // Redis back: after the retry pause the proxies count in it again.
    let _redis = PrivateRedis::start(redis.port);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = rig.client_key(json!({"rpm_limit": 5})).await?;
    let mut shared = false;
    for _ in 0..20 {
        let before: u64 = {
            let mut d = 0;
            for p in &rig.proxies {
                d += metric(&p.metrics().await?, "llmhub_limit_degraded_decisions_total");
            }
            d
        };
        rig.burst(&key, 2, |_| chat("m")).await;
        let mut after = 0;
        for p in &rig.proxies {
            after += metric(&p.metrics().await?, "llmhub_limit_degraded_decisions_total");
        }
        if after == before {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(shared, "the proxies never counted in Redis again");
    // Counting is shared again: 7 across both proxies (local shares would give 3 + 3).
    let key = rig.client_key(json!({"rpm_limit": 7})).await?;
    let results = rig.burst(&key, 14, |_| chat("m")).await;
    assert_eq!(count(&results, 200), 7);
    Ok(())
}

/// 50 concurrent requests through three proxies against a budget that covers 10 of them: each
/// request reserves its estimated cost (an upper bound: the output is capped and the model has
/// a price), so at most 10 are admitted and what they really cost stays within the budget; the
/// rest get `budget_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_cannot_overrun_a_budget() -> anyhow::Result<()> {
    let rig = Rig::start(3, &redis_url()).await?;
    let (s, v) = rig
        .cp
        .api(
            "PUT",
            "/api/v1/prices/m",
            Some(json!({"input_nanos_per_token": 1000, "output_nanos_per_token": 4000})),
        )
        .await?;
    anyhow::ensure!(s == 200, "price: {s} {v}");
    let body =
        || json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    // What one such request really costs, from its stored record.
    let probe = rig.client_key(json!({})).await?;
    let r = rig.burst(&probe, 1, |_| body()).await;
    assert_eq!(r[0].0, 200);
    let id = r[0].1["x-request-id"].to_str()?.to_owned();
    let cost = loop {
        let (_, v) = rig
            .cp
            .api("GET", "/api/v1/routing-records?limit=50", None)
            .await?;
        if let Some(rec) = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["request_id"] == id.as_str())
        {
            break rec["cost_nanos"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cost > 0);

    let budget_nanos = 10 * cost;
    let usd = budget_nanos as f64 / 1e9;
    let key = rig
        .client_key(json!({"budget": {"usd": usd, "period": "daily"}}))
        .await?;
    let results = rig.burst(&key, 50, |_| body()).await;
    let admitted = count(&results, 200);
    assert!(
        (1..=10).contains(&admitted),
        "{admitted} admitted against a budget of 10"
    );
    let refused = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(refused.2["error"]["code"], "budget_exceeded");
    assert_eq!(refused.1["x-ratelimit-scope"], "client_key");
    assert!(refused.1.contains_key("retry-after"), "until the day ends");
    // Later requests, as reservations settle to real costs, still never pass the budget.
    let mut total = admitted;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        total += count(&rig.burst(&key, 10, |_| body()).await, 200);
    }
    assert!(
        total <= 10,
        "{total} requests of cost {cost} within {budget_nanos}"
    );
    Ok(())
}
