//! The routing-record ledger is lossless: every request a proxy answered is stored exactly once,
//! through a control-plane crash under load and through a proxy killed with `kill -9` (whose
//! spool the next process on the same directory replays).

use std::collections::BTreeSet;
use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, ProxyOptions};
use llmhub_e2e::mock::MockProvider;
use serde_json::json;

on_both_backends!(records_survive_a_control_plane_crash_under_load);

async fn setup(backend: Backend) -> anyhow::Result<(MockProvider, ControlPlane, String)> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(backend).await?;
    let pid = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    cp.add_shared_key(&pid, &format!("sk-good-{}", uuid::Uuid::new_v4().simple()))
        .await?;
    cp.add_route("m", &pid, "mock-ok").await?;
    let client_key = cp.new_client_key("ledger").await?;
    Ok((mock, cp, client_key))
}

/// Sends `n` chat requests, `concurrency` at a time; returns the request ids of the answers.
async fn load(proxy_url: &str, key: &str, n: usize, concurrency: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let mut tasks = Vec::new();
        for _ in chunk {
            let req = http
                .post(format!("{proxy_url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            tasks.push(tokio::spawn(async move { req.send().await }));
        }
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.status(), 200);
            ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
        }
    }
    ids
}

/// The request ids stored, once the count reaches `want` (or what there is after a while).
async fn stored(cp: &ControlPlane, want: usize) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = cp
            .api("GET", "/api/v1/routing-records?limit=1000", None)
            .await?;
        anyhow::ensure!(s == 200, "records: {s} {v}");
        let ids: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_owned())
            .collect();
        if ids.len() >= want || tokio::time::Instant::now() > deadline {
            return Ok(ids);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn exactly_once(served: &[String], stored: &[String]) {
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a record stored twice");
    let served: BTreeSet<&String> = served.iter().collect();
    assert_eq!(
        served.len(),
        unique.len(),
        "stored {} of {} served",
        unique.len(),
        served.len()
    );
    assert_eq!(served, unique);
}

async fn records_survive_a_control_plane_crash_under_load(backend: Backend) -> anyhow::Result<()> {
    let (_mock, mut cp, key) = setup(backend).await?;
    let proxy = cp.ready_proxy("proxy-1").await?;
    let mut served = load(&proxy.url, &key, 60, 6).await;
    // The control plane dies mid-load; the proxy keeps serving from its snapshot and spools.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = {
        let (url, key, stop) = (proxy.url.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            // Bounded: the records API lists at most 1000.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && ids.len() < 600 {
                ids.extend(load(&url, &key, 4, 4).await);
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    cp.kill_now().await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    cp.restart().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.await?;
    assert!(
        during.len() >= 20,
        "load flowed through the crash: {}",
        during.len()
    );
    served.extend(during);
    served.extend(load(&proxy.url, &key, 30, 3).await);
    let ids = stored(&cp, served.len()).await?;
    exactly_once(&served, &ids);
    Ok(())
}

/// A proxy killed with `kill -9` while the control plane is down loses nothing it had spooled:
/// the next proxy on the same spool directory sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_spool_is_replayed_by_the_next_one() -> anyhow::Result<()> {
    let (_mock, mut cp, key) = setup(Backend::Sqlite).await?;
    let spool = tempfile::tempdir()?;
    let options = ProxyOptions {
        spool_dir: Some(spool.path().join("spool")),
        ..ProxyOptions::default()
    };
    let mut proxy = cp.ready_proxy_with("proxy-1", &options).await?;
    let mut served = load(&proxy.url, &key, 20, 4).await;
    cp.kill_now().await?;
    served.extend(load(&proxy.url, &key, 40, 4).await);
    // Spooled within milliseconds of each answer; the bound is what is still queued in memory.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = proxy.readyz().await?;
        if v["spool_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing spooled: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.kill_now().await?;
    let files = std::fs::read_dir(spool.path().join("spool"))?.count();
    assert!(files >= 1, "the spool is on disk");
    cp.restart().await?;
    let _next = cp.ready_proxy_with("proxy-1", &options).await?;
    let ids = stored(&cp, served.len()).await?;
    exactly_once(&served, &ids);
    Ok(())
}
