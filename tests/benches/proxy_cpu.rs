//! Proxy CPU per request: the proxy process's own CPU time (user + system, from
//! `/proc/<pid>/stat`) divided by the requests it served, for non-streaming JSON and for SSE
//! streams, at a fixed concurrency against a fast in-process mock provider. The control plane
//! runs on PostgreSQL and stores every routing record, as in production. Used for before/after
//! comparisons of changes on the request path (point `LLMHUB_BIN_DIR` at another build).
//!
//!   cargo build --release --workspace
//!   cargo bench -p llmhub-e2e --bench proxy_cpu
//!
//! `REQUESTS` (default 20000), `CONCURRENCY` (32) and `LLMHUB_BIN_DIR` adjust the run;
//! `LLMHUB_PROXY_BIN` measures another proxy build (e.g. an earlier commit's) against this
//! control plane (the wire contract is compatible across versions).
//!
//! `LIMITS` measures the limit check's cost: `none` (default: no limit applies, nothing is
//! counted), `shared` (the proxy counts in Redis, `LLMHUB_TEST_REDIS_URL`) or `local` (in
//! process). With limits, every provider key has fleet-wide rpm and tpm limits far above what
//! the run reaches, so every request is checked and reserved and nothing is refused. Latency
//! percentiles are the client's (request sent → body read).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed benchmark

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use llmhub_e2e::harness::{Backend, ControlOptions, ControlPlane, ProxyOptions};
use llmhub_e2e::mock::MockProvider;
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of a process in microseconds (utime + stime, fields 14 and 15 of /proc/pid/stat).
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may contain spaces; fields after it are space-separated.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest starts at field 3; utime is field 14, stime field 15.
    let ticks = f[11] + f[12];
    let hz = 100; // USER_HZ on Linux
    ticks * 1_000_000 / hz
}

/// Sends `total` requests over `concurrency` workers; returns (ok, elapsed seconds, sorted
/// latencies in µs).
async fn drive(
    url: &str,
    key: &str,
    body: serde_json::Value,
    total: u64,
    concurrency: u64,
) -> (u64, f64, Vec<u64>) {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, next, ok) = (http.clone(), next.clone(), ok.clone());
        let (url, key, body) = (url.to_owned(), key.to_owned(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let r = http.post(&url).bearer_auth(&key).json(&body).send().await;
                if let Ok(r) = r
                    && r.status() == 200
                    && r.bytes().await.is_ok()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                    lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    lat.sort_unstable();
    (
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        lat,
    )
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env("REQUESTS", 20_000);
    let concurrency = env("CONCURRENCY", 32);
    let mock = MockProvider::start().await?;
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
    let limits = std::env::var("LIMITS").unwrap_or_else(|_| "none".into());
    anyhow::ensure!(
        ["none", "shared", "local"].contains(&limits.as_str()),
        "LIMITS must be none, shared or local"
    );
    for i in 0..4 {
        let (_, k) = cp
            .api(
                "POST",
                &format!("/api/v1/providers/{pid}/keys"),
                Some(json!({"key": format!("sk-bench-key-{i}-0123456789"), "shared": true})),
            )
            .await?;
        if limits != "none" {
            let (s, v) = cp
                .api(
                    "PATCH",
                    &format!("/api/v1/providers/{pid}/keys/{}", k["id"].as_str().unwrap()),
                    Some(json!({"rpm_limit": 1_000_000_000u32, "tpm_limit": 2_000_000_000u32})),
                )
                .await?;
            anyhow::ensure!(s == 200, "key limits: {s} {v}");
        }
    }
    cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "bench", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))).await?;
    let (_, ck) = cp
        .api(
            "POST",
            "/api/v1/client-keys",
            Some(json!({"name": "bench"})),
        )
        .await?;
    let key = ck["key"].as_str().unwrap().to_owned();
    let options = ProxyOptions {
        redis: (limits == "shared").then(|| {
            (
                llmhub_e2e::harness::redis_url(),
                format!("llmhub-bench-{}:", uuid::Uuid::new_v4().simple()),
            )
        }),
        // A 2-core machine running client, mock, Redis and both planes starves Redis now and
        // then: a budget above the default 50 ms keeps every decision shared, which is what is
        // measured (`REDIS_TIMEOUT_MS` to change it).
        // (Only with limits: a proxy build from before the key existed refuses it.)
        redis_timeout_ms: (limits == "shared").then(|| env("REDIS_TIMEOUT_MS", 500)),
        ..ProxyOptions::default()
    };
    let proxy = cp.ready_proxy_with("proxy-1", &options).await?;
    let proxy_pid = proxy.pid().unwrap();
    let url = format!("{}/v1/chat/completions", proxy.url);
    let messages = json!([{"role": "user", "content": "hi"}]);

    // Warm up pools and caches.
    drive(
        &url,
        &key,
        json!({"model": "bench", "messages": messages}),
        500,
        concurrency,
    )
    .await;
    for (name, stream) in [("json", false), ("sse", true)] {
        let body = json!({"model": "bench", "stream": stream, "messages": messages});
        let before = cpu_us(proxy_pid);
        let (ok, secs, lat) = drive(&url, &key, body, total, concurrency).await;
        let used = cpu_us(proxy_pid) - before;
        anyhow::ensure!(
            ok == total,
            "{name}: only {ok} of {total} requests succeeded"
        );
        println!(
            "{name} (limits: {limits}): {total} requests at concurrency {concurrency}: proxy CPU {:.1} µs/request, {:.0} req/s, latency p50 {} µs p99 {} µs (client and mock share the machine)",
            used as f64 / total as f64,
            total as f64 / secs,
            pct(&lat, 0.50),
            pct(&lat, 0.99),
        );
    }
    if limits != "none" {
        let m = proxy.metrics().await?;
        let value = |name: &str| -> u64 {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let admitted = value("llmhub_limit_decisions_total{decision=\"admitted\"}");
        let degraded = value("llmhub_limit_degraded_decisions_total");
        println!("limit decisions: {admitted} admitted, {degraded} degraded");
        anyhow::ensure!(
            admitted >= 2 * total,
            "the limit check did not run on every request"
        );
        anyhow::ensure!(degraded == 0, "Redis was not used for every decision");
    }
    Ok(())
}
