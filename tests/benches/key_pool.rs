//! Key-pool simulation: a provider that enforces a real per-key request quota (10 keys × 60
//! requests per minute, with OpenAI's `x-ratelimit-*` headers), driven through one proxy at 1.5×
//! the pool's capacity. Reports the share of the ideal that was served and the upstream 429s per
//! 1,000 upstream requests; fails below 95 % or above 5 per 1,000.
//!
//!   cargo build --release --workspace
//!   cargo bench -p llmhub-e2e --bench key_pool
//!
//! `SECONDS` (default 180), `KEYS` (10), `LIMIT` (60 per window), `WINDOW_SECS` (60) and
//! `LLMHUB_BIN_DIR` adjust the run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed benchmark

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llmhub_e2e::harness::{Backend, ControlOptions, ControlPlane};
use llmhub_e2e::mock::MockProvider;
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds = env("SECONDS", 180);
    let keys = env("KEYS", 10);
    let limit = env("LIMIT", 60);
    let window = Duration::from_secs(env("WINDOW_SECS", 60));
    let capacity_rps = (keys * limit) as f64 / window.as_secs_f64();
    let offered_rps = capacity_rps * 1.5;

    let mock = MockProvider::start().await?;
    mock.set_quota(window, u32::try_from(limit)?);
    let cp = ControlPlane::start_with(
        Backend::Postgres,
        ControlOptions {
            admin_rate_limit_ip: Some(100_000),
            admin_rate_limit_user: Some(100_000),
            ..ControlOptions::default()
        },
    )
    .await?;
    let (_, p) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "mock", "kind": "openai-compatible", "base_url": mock.base_url()})),
        )
        .await?;
    let pid = p["id"].as_str().unwrap().to_owned();
    for _ in 0..keys {
        let k = format!("sk-quota60-{}", uuid::Uuid::new_v4().simple());
        cp.api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(json!({"key": k, "shared": true})),
        )
        .await?;
    }
    cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "pool", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))).await?;
    let (_, ck) = cp
        .api("POST", "/api/v1/client-keys", Some(json!({"name": "sim"})))
        .await?;
    let client_key = Arc::new(ck["key"].as_str().unwrap().to_owned());
    let proxy = cp.ready_proxy("proxy-1").await?;
    let url = Arc::new(format!("{}/v1/chat/completions", proxy.url));
    let http = reqwest::Client::new();

    let (served, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let interval = Duration::from_secs_f64(1.0 / offered_rps);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut offered = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        offered += 1;
        let (http, url, key) = (http.clone(), url.clone(), client_key.clone());
        let (served, refused, other) = (served.clone(), refused.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url.as_str())
                .bearer_auth(key.as_str())
                .json(&json!({"model": "pool", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => served.fetch_add(1, Ordering::Relaxed),
                Ok(429) => refused.fetch_add(1, Ordering::Relaxed),
                _ => other.fetch_add(1, Ordering::Relaxed),
            };
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let served = served.load(Ordering::Relaxed);
    let upstream = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count() as u64;
    let upstream_429 = mock.quota_rejections();
    // The pool can serve `limit` per key per window; each key's windows start at its first
    // request (within the first second), so the offering period spans this many windows.
    let windows = (seconds as f64 / window.as_secs_f64()).ceil();
    let ideal = ((keys * limit) as f64 * windows).min(offered as f64);
    let share = served as f64 / ideal;
    let per_1000 = upstream_429 as f64 * 1000.0 / upstream.max(1) as f64;
    println!(
        "key pool: {keys} keys x {limit}/{}s, offered {offered} requests in {elapsed:.0} s ({offered_rps:.1}/s = 1.5x capacity)",
        window.as_secs()
    );
    println!(
        "served {served} of ideal {ideal:.0} ({:.1} %); hub-side 429 {}; other {}; upstream requests {upstream}, upstream 429 {upstream_429} ({per_1000:.2} per 1000)",
        share * 100.0,
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        share >= 0.95,
        "served {:.1} % of ideal (target >= 95 %)",
        share * 100.0
    );
    anyhow::ensure!(
        per_1000 <= 5.0,
        "{per_1000:.2} upstream 429s per 1000 (target <= 5)"
    );
    Ok(())
}
