//! Routing and fleet-wide cooldowns with two proxies: what one proxy learns from a provider,
//! every proxy applies; each failure class has its own effect; admins force and clear fleet-wide;
//! a trial request decides after a cooldown; exhausted keys are skipped before they fail.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy, ProxyOptions};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

/// A provider key containing `marker` (see the mock's key behaviours), unique per call.
fn key(marker: &str) -> String {
    format!("sk-{marker}-{}", uuid::Uuid::new_v4().simple())
}

struct Fleet {
    mock: MockProvider,
    cp: ControlPlane,
    pid: String,
    client_key: String,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(backend: Backend, keys: &[&str]) -> anyhow::Result<Self> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(backend).await?;
        let pid = cp
            .add_provider("mock", "openai-compatible", &mock.base_url())
            .await?;
        for k in keys {
            cp.add_shared_key(&pid, k).await?;
        }
        for (public, upstream) in [("m", "mock-ok"), ("m400", "mock-400")] {
            cp.add_route(public, &pid, upstream).await?;
        }
        let client_key = cp.new_client_key("fleet").await?;
        Ok(Fleet {
            mock,
            cp,
            pid,
            client_key,
            http: reqwest::Client::new(),
        })
    }

    async fn chat(&self, proxy: &Proxy, model: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", proxy.url))
            .bearer_auth(&self.client_key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    }

    async fn key_view(&self, secret: &str) -> Value {
        let (_, list) = self
            .cp
            .api("GET", &format!("/api/v1/providers/{}/keys", self.pid), None)
            .await
            .unwrap();
        let last4 = &secret[secret.len() - 4..];
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["masked"].as_str().unwrap().ends_with(last4))
            .unwrap()
            .clone()
    }

    async fn key_path(&self, secret: &str) -> String {
        let id = self.key_view(secret).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        format!("/api/v1/providers/{}/keys/{id}", self.pid)
    }
}

async fn propagation(backend: Backend) -> anyhow::Result<()> {
    let (hot, good) = (key("rlhot"), key("good"));
    let f = Fleet::start(backend, &[&hot, &good]).await?;
    let a = f.cp.ready_proxy("proxy-a").await?;
    let b = f.cp.ready_proxy("proxy-b").await?;
    // Proxy A meets the rate-limited key (and still answers 200 through the other key).
    let mut guard = 0;
    while f.mock.uses_of(&hot) == 0 {
        let r = f.chat(&a, "m").await;
        assert_eq!(r.status(), 200, "a fallback should have hidden the 429");
        guard += 1;
        assert!(guard < 20, "the hot key was never chosen");
    }
    // Proxy B hears about it from the control plane and stops choosing the key.
    b.wait_for_deltas(1).await?;
    for p in [&b, &a] {
        for _ in 0..12 {
            assert_eq!(f.chat(p, "m").await.status(), 200);
        }
    }
    assert_eq!(
        f.mock.uses_of(&hot),
        1,
        "a proxy used the cooling key again"
    );

    // The key's live state and history show it.
    let view = f.key_view(&hot).await;
    assert_eq!(view["state"], "cooling_down", "{view}");
    assert_eq!(view["cooldowns"][0]["model"], "mock-ok");
    assert_eq!(view["cooldowns"][0]["class"], "rate_limited");
    assert_eq!(view["cooldowns"][0]["source"], "proxy-a");
    // Which client's request caused it is on record (its display prefix, never the key).
    let client = view["cooldowns"][0]["client_key"].as_str().unwrap_or("");
    assert!(
        client.len() >= 6 && f.client_key.starts_with(client) && client != f.client_key,
        "{view}"
    );
    let (_, hist) =
        f.cp.api("GET", &format!("{}/history", f.key_path(&hot).await), None)
            .await?;
    assert_eq!(hist["events"][0]["event"], "cooldown", "{hist}");
    assert_eq!(hist["events"][0]["client_key"], client, "{hist}");

    // The routing log explains: the failed attempt, the fallback, and later skips.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, recs) =
            f.cp.api("GET", "/api/v1/routing-records?limit=200", None)
                .await?;
        let recs = recs["data"].as_array().unwrap().clone();
        let retried = recs.iter().any(|r| {
            let a = r["detail"]["attempts"].as_array().unwrap();
            a.len() == 2
                && a[0]["class"] == "rate_limited"
                && a[0]["status"] == 429
                && a[1]["class"] == "ok"
        });
        let skipped = recs.iter().any(|r| {
            r["detail"]["skipped"].as_array().unwrap().iter().any(|s| {
                s.as_str().unwrap().contains("cooling until")
                    && s.as_str().unwrap().contains("rate limited")
            })
        });
        if retried && skipped {
            // No record names the key itself, only its fingerprint.
            assert!(!serde_json::to_string(&recs)?.contains(&hot[3..]));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routing records incomplete: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_proxy_stops_every_proxy_sqlite() -> anyhow::Result<()> {
    propagation(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_proxy_stops_every_proxy_postgres() -> anyhow::Result<()> {
    propagation(Backend::Postgres).await
}

/// Quota → long whole-key cooldown; 401 → disabled until an admin clears it; 400 → no change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_class_has_its_own_effect() -> anyhow::Result<()> {
    let (quota, revoked, good) = (key("quota"), key("revoked"), key("good"));
    let f = Fleet::start(Backend::Sqlite, &[&quota, &revoked, &good]).await?;
    let a = f.cp.ready_proxy("proxy-a").await?;
    let mut guard = 0;
    while f.mock.uses_of(&quota) == 0 || f.mock.uses_of(&revoked) == 0 {
        assert_eq!(f.chat(&a, "m").await.status(), 200);
        guard += 1;
        assert!(guard < 30);
    }
    for _ in 0..10 {
        assert_eq!(f.chat(&a, "m").await.status(), 200);
    }
    assert_eq!((f.mock.uses_of(&quota), f.mock.uses_of(&revoked)), (1, 1));

    let q = f.key_view(&quota).await;
    assert_eq!(q["state"], "cooling_down", "{q}");
    assert!(
        q["cooldowns"][0]["model"].is_null(),
        "quota cools the whole key: {q}"
    );
    assert_eq!(q["cooldowns"][0]["class"], "quota_exhausted");
    let until: chrono::DateTime<chrono::Utc> =
        q["cooldowns"][0]["until"].as_str().unwrap().parse()?;
    assert!(
        until > chrono::Utc::now() + chrono::Duration::minutes(50),
        "quota cooldown too short: {until}"
    );

    let r = f.key_view(&revoked).await;
    assert_eq!(
        (r["state"].clone(), r["state_reason"].clone()),
        (json!("disabled"), json!("invalid_key")),
        "{r}"
    );
    // Only an admin brings it back.
    let (s, v) =
        f.cp.api(
            "POST",
            &format!("{}/clear", f.key_path(&revoked).await),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "active");

    // A client error passes through and changes nothing.
    let before = f.key_view(&good).await;
    let resp = f.chat(&a, "m400").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "context_length_exceeded"
    );
    let after = f.key_view(&good).await;
    assert_eq!(after["state"], "active");
    assert_eq!(after["cooldowns"], before["cooldowns"]);
    let (_, hist) =
        f.cp.api("GET", &format!("{}/history", f.key_path(&good).await), None)
            .await?;
    assert_eq!(
        hist["events"],
        json!([]),
        "a client error must not touch the key"
    );
    Ok(())
}

/// 5xx opens the provider's circuit without blaming the key; after it re-opens the key serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_trips_the_provider_breaker_not_the_key() -> anyhow::Result<()> {
    let good = key("good");
    let f = Fleet::start(Backend::Sqlite, &[&good]).await?;
    f.cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "m503", "targets": [{"provider_id": f.pid, "upstream_model": "mock-503"}]}))).await?;
    let a =
        f.cp.ready_proxy_with(
            "proxy-a",
            &ProxyOptions {
                breaker_failures: Some(2),
                breaker_open: Some(Duration::from_millis(400)),
                ..ProxyOptions::default()
            },
        )
        .await?;
    for _ in 0..2 {
        assert_eq!(f.chat(&a, "m503").await.status(), 502);
    }
    let used = f.mock.uses_of(&good);
    // Circuit open: nothing is sent, the client is told when to come back.
    let r = f.chat(&a, "m").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(f.mock.uses_of(&good), used);
    let view = f.key_view(&good).await;
    assert_eq!(
        (view["state"].clone(), view["cooldowns"].clone()),
        (json!("active"), json!([])),
        "the key was blamed: {view}"
    );
    // After the open period a trial goes through and traffic returns, on the same key.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..3 {
        assert_eq!(f.chat(&a, "m").await.status(), 200);
    }
    assert_eq!(f.mock.uses_of(&good), used + 3);
    Ok(())
}

/// An admin's forced cooldown and its clearing reach every proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_cooldown_and_clear_are_fleet_wide() -> anyhow::Result<()> {
    let good = key("good");
    let f = Fleet::start(Backend::Sqlite, &[&good]).await?;
    let a = f.cp.ready_proxy("proxy-a").await?;
    let b = f.cp.ready_proxy("proxy-b").await?;
    let path = f.key_path(&good).await;
    let (s, v) =
        f.cp.api(
            "POST",
            &format!("{path}/cooldown"),
            Some(json!({"seconds": 60})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    for p in [&a, &b] {
        p.wait_for_deltas(1).await?;
        let r = f.chat(p, "m").await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
        assert!((55..=60).contains(&retry), "retry-after {retry}");
        assert_eq!(
            r.json::<Value>().await?["error"]["type"],
            "rate_limit_error"
        );
    }
    assert_eq!(f.mock.uses_of(&good), 0);
    let (s, _) = f.cp.api("POST", &format!("{path}/clear"), None).await?;
    assert_eq!(s, 200);
    for p in [&a, &b] {
        p.wait_for_deltas(2).await?;
        assert_eq!(f.chat(p, "m").await.status(), 200);
    }
    let (_, audit) = f.cp.api("GET", "/api/v1/audit?limit=100", None).await?;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"key_cooldown_forced") && actions.contains(&"key_cooldown_cleared"));
    Ok(())
}

/// After a cooldown ends, one trial request decides; its success ends the cooldown fleet-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_trial_after_cooldown() -> anyhow::Result<()> {
    let once = key("rlonce");
    let f = Fleet::start(Backend::Sqlite, &[&once]).await?;
    let a = f.cp.ready_proxy("proxy-a").await?;
    let b = f.cp.ready_proxy("proxy-b").await?;
    // The only key is rate limited for one second (retry-after-ms: 1000).
    let r = f.chat(&a, "m").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    b.wait_for_deltas(1).await?;
    assert_eq!(
        f.chat(&b, "m").await.status(),
        429,
        "proxy B must not try the cooling key"
    );
    assert_eq!(f.mock.uses_of(&once), 1);
    // The provider said one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(f.chat(&b, "m").await.status(), 200, "the trial request");
    a.wait_for_deltas(2).await?;
    let view = f.key_view(&once).await;
    assert_eq!(
        (view["state"].clone(), view["cooldowns"].clone()),
        (json!("active"), json!([])),
        "{view}"
    );
    let (_, hist) =
        f.cp.api("GET", &format!("{}/history", f.key_path(&once).await), None)
            .await?;
    assert_eq!(hist["events"][0]["event"], "recovered", "{hist}");
    assert_eq!(f.chat(&a, "m").await.status(), 200);
    Ok(())
}

/// A success that reports `x-ratelimit-remaining-requests: 0` makes the proxy skip that key until
/// its reset, instead of sending a request the provider would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_keys_are_skipped_before_they_fail() -> anyhow::Result<()> {
    let (drained, good) = (key("drained"), key("good"));
    let f = Fleet::start(Backend::Sqlite, &[&drained, &good]).await?;
    let a = f.cp.ready_proxy("proxy-a").await?;
    let mut guard = 0;
    while f.mock.uses_of(&drained) == 0 {
        assert_eq!(f.chat(&a, "m").await.status(), 200);
        guard += 1;
        assert!(guard < 20);
    }
    for _ in 0..8 {
        assert_eq!(f.chat(&a, "m").await.status(), 200);
    }
    assert_eq!(
        f.mock.uses_of(&drained),
        1,
        "the exhausted key was used before its reset"
    );
    Ok(())
}

/// A bare 403 does not say the key is at fault: the key only rests while the control plane
/// verifies it with a models probe. A key that still works is back in service at once, without
/// an admin; one the probe finds invalid is disabled, with the client key that led to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_403_is_verified_before_a_key_is_disabled() -> anyhow::Result<()> {
    async fn history_has(f: &Fleet, secret: &str, what: &str) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, hist) =
                f.cp.api(
                    "GET",
                    &format!("{}/history", f.key_path(secret).await),
                    None,
                )
                .await?;
            if hist["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["source"] == "verification" && e["event"] == what)
            {
                return Ok(hist);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no {what} by verification: {hist}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A working key refused for one model stays in service.
    let good = key("good");
    let f = Fleet::start(Backend::Sqlite, &[&good]).await?;
    f.cp.add_route("m403", &f.pid, "mock-403").await?;
    let p = f.cp.ready_proxy("proxy-a").await?;
    p.wait_for_version(f.cp.snapshot_version().await?).await?;
    let r = f.chat(&p, "m403").await;
    assert_ne!(r.status(), 200);
    history_has(&f, &good, "cleared").await?;
    let v = f.key_view(&good).await;
    assert_eq!(v["state"], "active", "a working key is not disabled: {v}");
    // Served again at once, not after the rest.
    let mut ok = false;
    for _ in 0..40 {
        if f.chat(&p, "m").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the verified key never served again");

    // A key the probe finds invalid is disabled, and the history says whose request led to it.
    let bad = key("probe401");
    let f = Fleet::start(Backend::Sqlite, &[&bad]).await?;
    f.cp.add_route("m403", &f.pid, "mock-403").await?;
    let p = f.cp.ready_proxy("proxy-a").await?;
    p.wait_for_version(f.cp.snapshot_version().await?).await?;
    f.chat(&p, "m403").await;
    let hist = history_has(&f, &bad, "disabled").await?;
    let disabled = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "disabled")
        .unwrap()
        .clone();
    assert!(
        disabled["client_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("lh-")),
        "{disabled}"
    );
    let v = f.key_view(&bad).await;
    assert_eq!(
        (v["state"].clone(), v["state_reason"].clone()),
        (json!("disabled"), json!("invalid_key")),
        "{v}"
    );
    Ok(())
}
