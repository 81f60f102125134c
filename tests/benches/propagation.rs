//! Fleet-wide cooldown propagation: how long after proxy A receives a provider's 429 does proxy B
//! apply the cooldown? Spawns the real binaries (control plane on Postgres, two proxies, a mock
//! provider) and measures many trials. Fails when p99 exceeds the target.
//!
//!   cargo build --release --workspace
//!   cargo bench -p llmhub-e2e --bench propagation
//!
//! `LLMHUB_BIN_DIR` picks other binaries (e.g. `target/debug`); `TRIALS` sets the trial count.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed benchmark

use std::time::{Duration, Instant};

use llmhub_e2e::harness::{Backend, ControlOptions, ControlPlane};
use llmhub_e2e::mock::MockProvider;
use serde_json::json;

const TARGET_P99: Duration = Duration::from_millis(100);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
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
    let hot = format!("sk-rlhot-{}", uuid::Uuid::new_v4().simple());
    let (_, k) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(json!({"key": hot, "shared": true})),
        )
        .await?;
    let key_path = format!("/api/v1/providers/{pid}/keys/{}", k["id"].as_str().unwrap());
    cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "hot", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))).await?;
    let (_, ck) = cp
        .api(
            "POST",
            "/api/v1/client-keys",
            Some(json!({"name": "bench"})),
        )
        .await?;
    let client_key = ck["key"].as_str().unwrap().to_owned();
    let a = cp.ready_proxy("proxy-a").await?;
    let b = cp.ready_proxy("proxy-b").await?;
    let http = reqwest::Client::new();

    let mut delays = Vec::with_capacity(trials);
    let mut answered = Vec::with_capacity(trials);
    for trial in 0..trials {
        // Start each trial with the key healthy on both proxies.
        let (seen_a, seen_b) = (a.deltas_applied().await?, b.deltas_applied().await?);
        let (s, v) = cp.api("POST", &format!("{key_path}/clear"), None).await?;
        anyhow::ensure!(s == 200, "{v}");
        a.wait_for_deltas(seen_a + 1).await?;
        b.wait_for_deltas(seen_b + 1).await?;
        let before = b.deltas_applied().await?;
        let t0 = Instant::now();
        let r = http
            .post(format!("{}/v1/chat/completions", a.url))
            .bearer_auth(&client_key)
            .json(&json!({"model": "hot", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 429,
            "expected the provider's 429, got {}",
            r.status()
        );
        answered.push(t0.elapsed());
        loop {
            if b.deltas_applied().await? > before {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "trial {trial}: proxy B never heard of the cooldown (A {:?}, B {:?})\n{}",
                a.readyz().await?.1,
                b.readyz().await?.1,
                cp.logs
                    .text()
                    .lines()
                    .filter(|l| !l.contains("provider refused")
                        && (l.contains("ERROR") || l.contains("WARN") || l.contains("failed")))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        delays.push(t0.elapsed());
    }
    // The control plane → proxy leg alone: an admin's forced cooldown.
    let mut leg = Vec::new();
    for _ in 0..20 {
        let before = b.deltas_applied().await?;
        let t0 = Instant::now();
        cp.api(
            "POST",
            &format!("{key_path}/cooldown"),
            Some(json!({"seconds": 1})),
        )
        .await?;
        let api = t0.elapsed();
        while b.deltas_applied().await? <= before {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        leg.push((api, t0.elapsed()));
    }
    leg.sort();
    println!(
        "admin force-cooldown: API answered p50 {:.1} ms; applied at proxy B p50 {:.1} ms",
        leg[leg.len() / 2].0.as_secs_f64() * 1e3,
        leg[leg.len() / 2].1.as_secs_f64() * 1e3
    );
    delays.sort();
    answered.sort();
    println!(
        "client saw proxy A's 429 after: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&answered, 0.5).as_secs_f64() * 1e3,
        percentile(&answered, 0.99).as_secs_f64() * 1e3
    );
    let (p50, p90, p99, max) = (
        percentile(&delays, 0.50),
        percentile(&delays, 0.90),
        percentile(&delays, 0.99),
        *delays.last().unwrap(),
    );
    println!(
        "propagation (429 at proxy A → cooldown applied at proxy B), {trials} trials: \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    anyhow::ensure!(
        p99 < TARGET_P99,
        "p99 {p99:?} exceeds the {TARGET_P99:?} target"
    );
    Ok(())
}
