//! The provider-key vault end to end: key pools and their isolation, no key in any response,
//! tampered ciphertext reported, and a full master-key rotation while traffic flows.
//!
//! The key-pool scenarios run on both backends (`<scenario>::sqlite`, `<scenario>::postgres`),
//! each with a control plane of its own, and end by checking that no key leaked.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlOptions, ControlPlane, MasterKeys, bin, master_entry};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

const STRONG: &str = "violet-otter-jumps-42-quietly";

/// A random key in OpenAI's shape with letters that never occur in hex, ids or our JSON.
fn secret_key() -> String {
    let alphabet: Vec<char> = "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ".chars().collect();
    let mut out = String::from("sk-");
    let seed = uuid::Uuid::new_v4();
    for (i, b) in seed
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .enumerate()
    {
        if i >= 28 {
            break;
        }
        out.push(alphabet[usize::from(*b) % alphabet.len()]);
    }
    out
}

/// True when `text` holds more of `key` than its last four characters.
fn leaks(text: &str, key: &str) -> bool {
    let chars: Vec<char> = key.chars().collect();
    chars
        .windows(5)
        .map(|w| w.iter().collect::<String>())
        .any(|w| text.contains(&w))
}

/// Every response body of the test, to scan for keys at the end.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn add(&mut self, v: &Value) -> Value {
        self.0.push_str(&v.to_string());
        self.0.push('\n');
        v.clone()
    }
}

/// A provider pointed at the mock, users alice and bob signed in, and every key the scenario
/// used, checked at the end never to leak.
struct Pools {
    mock: MockProvider,
    cp: ControlPlane,
    /// An `openai-compatible` provider (no key format) ...
    pid: String,
    /// ... and an `openai` one (keys must start with `sk-`).
    oa: String,
    bob_id: String,
    alice: String,
    bob: String,
    keys_path: String,
    seen: Seen,
    keys: Vec<String>,
}

impl Pools {
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(backend).await?;
        let (_, p) = cp
            .api(
                "POST",
                "/api/v1/providers",
                Some(json!({"name": "mock", "kind": "openai-compatible", "base_url": mock.base_url()})),
            )
            .await?;
        let pid = p["id"].as_str().unwrap().to_owned();
        let (_, p) = cp
            .api(
                "POST",
                "/api/v1/providers",
                Some(json!({"name": "oa", "kind": "openai", "base_url": mock.base_url()})),
            )
            .await?;
        let oa = p["id"].as_str().unwrap().to_owned();
        cp.create_user("alice", STRONG, "user").await?;
        let bob_id = cp.create_user("bob", STRONG, "user").await?;
        let alice = cp.login_tokens("alice", STRONG).await?["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bob = cp.login_tokens("bob", STRONG).await?["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let keys_path = format!("/api/v1/providers/{pid}/keys");
        Ok(Pools {
            mock,
            cp,
            pid,
            oa,
            bob_id,
            alice,
            bob,
            keys_path,
            seen: Seen::default(),
            keys: Vec::new(),
        })
    }

    /// A fresh key, remembered for the leak check.
    fn new_key(&mut self) -> String {
        let k = secret_key();
        self.keys.push(k.clone());
        k
    }

    /// Adds a key to alice's own pool; returns its path.
    async fn add_alice_key(&mut self, key: &str) -> anyhow::Result<String> {
        let (s, _, v) = self
            .cp
            .call(
                "POST",
                &self.keys_path,
                Some(&self.alice),
                Some(json!({"key": key, "label": "mine"})),
            )
            .await?;
        assert_eq!(s, 201, "{v}");
        self.seen.add(&v);
        Ok(format!("{}/{}", self.keys_path, v["id"].as_str().unwrap()))
    }

    /// The audit log has a row for each of `actions`; nothing anywhere (API responses, the audit
    /// log, the logs) carries more of a key than its last four characters.
    async fn finish(mut self, actions: &[&str]) -> anyhow::Result<()> {
        let (_, audit) = self.cp.api("GET", "/api/v1/audit?limit=1000", None).await?;
        let seen_actions: Vec<&str> = audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect();
        for a in actions {
            assert!(seen_actions.contains(a), "no audit row {a}");
        }
        self.seen.add(&audit);
        let logs = self.cp.logs.text();
        for key in &self.keys {
            assert!(
                !leaks(&self.seen.0, key),
                "a key leaked into an API response"
            );
            assert!(!leaks(&logs, key), "a key leaked into the logs");
        }
        Ok(())
    }
}

on_both_backends!(
    own_keys_are_added_updated_tested_imported_and_deleted,
    users_cannot_reach_each_others_keys,
    client_keys_use_only_the_pools_their_user_may_use,
);

/// A user's own key: added (masked, pooled as `user`), refused when duplicate or malformed,
/// updated field by field, tested with one cheap authenticated call, bulk-imported with an answer
/// per line (duplicates found by fingerprint), deleted — all audited.
async fn own_keys_are_added_updated_tested_imported_and_deleted(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut t = Pools::start(backend).await?;
    let ka = t.new_key();
    let (s, _, v) =
        t.cp.call(
            "POST",
            &t.keys_path,
            Some(&t.alice),
            Some(json!({"key": ka, "label": "mine"})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    t.seen.add(&v);
    let ka_id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["masked"], format!("sk-****{}", &ka[ka.len() - 4..]));
    assert_eq!(v["pool"], "user");
    let (s, _, v) =
        t.cp.call(
            "POST",
            &t.keys_path,
            Some(&t.alice),
            Some(json!({"key": ka})),
        )
        .await?;
    assert_eq!(s, 409);
    t.seen.add(&v);
    let bad = format!("pk-{}", &secret_key()[3..]);
    let (s, _, v) =
        t.cp.call(
            "POST",
            &format!("/api/v1/providers/{}/keys", t.oa),
            Some(&t.alice),
            Some(json!({"key": bad})),
        )
        .await?;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sk-"),
        "{v}"
    );
    t.seen.add(&v);
    let (s, _, v) =
        t.cp.call(
            "POST",
            &t.keys_path,
            Some(&t.alice),
            Some(json!({"key": format!("{ka} with space")})),
        )
        .await?;
    assert_eq!(s, 400);
    t.seen.add(&v);

    // --- update ---
    let key_path = format!("{}/{ka_id}", t.keys_path);
    let (s, _, v) = t
        .cp
        .call("PATCH", &key_path, Some(&t.alice), Some(json!({"label": "renamed", "weight": 5, "allowed_models": ["mock-ok"], "rpm_limit": 60})))
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["label"].clone(),
            v["weight"].clone(),
            v["rpm_limit"].clone()
        ),
        (json!("renamed"), json!(5), json!(60))
    );
    t.seen.add(&v);
    let (_, _, v) =
        t.cp.call(
            "PATCH",
            &key_path,
            Some(&t.alice),
            Some(json!({"rpm_limit": null})),
        )
        .await?;
    assert!(v["rpm_limit"].is_null(), "{v}");
    assert_eq!(v["weight"], 5, "untouched fields stay");
    t.seen.add(&v);
    let (s, _, v) =
        t.cp.call(
            "PATCH",
            &key_path,
            Some(&t.alice),
            Some(json!({"weight": 0})),
        )
        .await?;
    assert_eq!(s, 400);
    t.seen.add(&v);

    // --- test action: one cheap authenticated call, outcome recorded ---
    let before = t.mock.requests().len();
    let (s, _, v) =
        t.cp.call("POST", &format!("{key_path}/test"), Some(&t.alice), None)
            .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"], "ok");
    assert_eq!(v["key"]["last_test_result"], "ok");
    t.seen.add(&v);
    let probe = &t.mock.requests()[before];
    assert_eq!(
        (probe.method.as_str(), probe.path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(probe.headers["authorization"], format!("Bearer {ka}"));

    // --- bulk import with per-line results and duplicates by fingerprint ---
    let (k1, k2) = (t.new_key(), t.new_key());
    let text = format!("{k1}\n{k1}\n\nnot a key\n# comment\n{ka}\n{k2}\n");
    let (s, _, v) =
        t.cp.call(
            "POST",
            &format!("{}/import", t.keys_path),
            Some(&t.alice),
            Some(json!({"keys": text, "label": "bulk"})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    t.seen.add(&v);
    let results: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        [
            "created",
            "duplicate",
            "skipped",
            "invalid",
            "skipped",
            "duplicate",
            "created"
        ]
    );
    assert_eq!(
        (
            v["created"].clone(),
            v["duplicates"].clone(),
            v["invalid"].clone()
        ),
        (json!(2), json!(2), json!(1))
    );

    // --- delete (audited) ---
    let (s, _, _) = t.cp.call("DELETE", &key_path, Some(&t.alice), None).await?;
    assert_eq!(s, 204);
    let (_, _, v) = t.cp.call("GET", &t.keys_path, Some(&t.alice), None).await?;
    t.seen.add(&v);
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != ka_id.as_str())
    );
    t.finish(&[
        "provider_key_created",
        "provider_key_updated",
        "provider_key_tested",
        "provider_keys_imported",
        "provider_key_deleted",
    ])
    .await
}

/// Bob cannot list, test, change or delete alice's keys (404, as if absent), nor add to the
/// shared pool (403), nor test or delete a shared key (404).
async fn users_cannot_reach_each_others_keys(backend: Backend) -> anyhow::Result<()> {
    let mut t = Pools::start(backend).await?;
    let ka = t.new_key();
    let key_path = t.add_alice_key(&ka).await?;
    let (_, _, v) = t.cp.call("GET", &t.keys_path, Some(&t.bob), None).await?;
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
    t.seen.add(&v);
    for (m, path, body) in [
        ("POST", format!("{key_path}/test"), None),
        ("PATCH", key_path.clone(), Some(json!({"label": "x"}))),
        ("DELETE", key_path.clone(), None),
    ] {
        let (s, _, v) = t.cp.call(m, &path, Some(&t.bob), body).await?;
        assert_eq!(s, 404, "{m} {path}: {v}");
        t.seen.add(&v);
    }
    for (path, body) in [
        (
            t.keys_path.clone(),
            json!({"key": secret_key(), "shared": true}),
        ),
        (
            format!("{}/import", t.keys_path),
            json!({"keys": [secret_key()], "shared": true}),
        ),
    ] {
        let (s, _, v) = t.cp.call("POST", &path, Some(&t.bob), Some(body)).await?;
        assert_eq!(s, 403, "{path}: {v}");
    }
    let shared = t.new_key();
    let (s, v) =
        t.cp.api(
            "POST",
            &t.keys_path,
            Some(json!({"key": shared, "shared": true})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    t.seen.add(&v);
    assert_eq!(v["pool"], "shared");
    let shared_path = format!("{}/{}", t.keys_path, v["id"].as_str().unwrap());
    for (m, path) in [
        ("POST", format!("{shared_path}/test")),
        ("DELETE", shared_path.clone()),
    ] {
        assert_eq!(
            t.cp.call(m, &path, Some(&t.bob), None).await?.0,
            404,
            "{m} {path}"
        );
    }
    t.finish(&["provider_key_created"]).await
}

/// Bob's client key routes to the shared pool only, never to alice's keys; without shared-pool
/// access it has no key at all; once bob is disabled his client keys stop working on the proxy.
async fn client_keys_use_only_the_pools_their_user_may_use(backend: Backend) -> anyhow::Result<()> {
    let mut t = Pools::start(backend).await?;
    let ka = t.new_key();
    t.add_alice_key(&ka).await?;
    let shared = t.new_key();
    let (s, v) =
        t.cp.api(
            "POST",
            &t.keys_path,
            Some(json!({"key": shared, "shared": true})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    t.seen.add(&v);
    let cp = &t.cp;
    cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "m", "targets": [{"provider_id": t.pid, "upstream_model": "mock-ok"}]}))).await?;
    let (_, _, ck) = cp
        .call(
            "POST",
            "/api/v1/client-keys",
            Some(&t.bob),
            Some(json!({"name": "bob"})),
        )
        .await?;
    let bob_key = ck["key"].as_str().unwrap().to_owned();
    let proxy = cp.ready_proxy("proxy-1").await?;
    let http = reqwest::Client::new();
    let chat = |key: String| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", proxy.url);
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..6 {
        let r = chat(bob_key.clone()).await;
        assert_eq!(r.status(), 200);
        let used = t.mock.requests().last().unwrap().headers["authorization"]
            .to_str()?
            .to_owned();
        assert_eq!(
            used,
            format!("Bearer {shared}"),
            "bob's request used someone else's key"
        );
    }
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{}", t.bob_id),
            Some(json!({"shared_pool_access": false})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    proxy.wait_for_version(cp.snapshot_version().await?).await?;
    let (bob_key2, r) = {
        // Bob's sessions ended with the change; sign in again for a new client key.
        let bob = cp.login_tokens("bob", STRONG).await?["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, _, ck) = cp
            .call(
                "POST",
                "/api/v1/client-keys",
                Some(&bob),
                Some(json!({"name": "bob2"})),
            )
            .await?;
        proxy.wait_for_version(cp.snapshot_version().await?).await?;
        let k = ck["key"].as_str().unwrap().to_owned();
        (k.clone(), chat(k).await)
    };
    assert_eq!(
        r.status(),
        503,
        "without shared-pool access bob must have no key"
    );
    // Disabling a user takes their client keys off every proxy.
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{}", t.bob_id),
            Some(json!({"status": "disabled"})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    proxy.wait_for_version(cp.snapshot_version().await?).await?;
    assert_eq!(
        chat(bob_key2).await.status(),
        401,
        "a disabled user's client key still works"
    );
    t.finish(&["provider_key_created", "user_shared_pool_changed"])
        .await
}

async fn vault_status(cp: &ControlPlane) -> Value {
    cp.api("GET", "/api/v1/vault", None).await.unwrap().1
}

/// Add a version, switch writes, re-wrap everything, retire the old version — while chat
/// requests flow through a proxy, none of which may fail.
async fn rotation_flow(backend: Backend) -> anyhow::Result<()> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start_with(
        backend,
        ControlOptions {
            master_keys: MasterKeys::File,
            ..ControlOptions::default()
        },
    )
    .await?;
    let pid = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    for _ in 0..5 {
        cp.add_shared_key(&pid, &secret_key()).await?;
    }
    cp.add_route("m", &pid, "mock-ok").await?;
    let client_key = cp.new_client_key("load").await?;
    let proxy = cp.ready_proxy("proxy-1").await?;

    // Traffic for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("{}/v1/chat/completions", proxy.url);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .bearer_auth(&client_key)
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let wait_for_traffic = |n: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < target {
                assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_traffic(5).await;

    // 1. Add version 2 to the mounted key file and reload.
    std::fs::write(
        cp.master_file(),
        format!("{}\n{}\n", master_entry(1), master_entry(2)),
    )?;
    let (s, v) = cp.api("POST", "/api/v1/vault/reload", None).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["versions"], json!([1, 2]));
    assert_eq!(v["current"], 1);
    // Retiring the current version is refused.
    assert_eq!(
        cp.api("POST", "/api/v1/vault/retire", Some(json!({"version": 1})))
            .await?
            .0,
        409
    );

    // 2. Switch new writes to version 2.
    let (s, v) = cp
        .api("POST", "/api/v1/vault/current", Some(json!({"version": 2})))
        .await?;
    assert_eq!((s, v["current"].clone()), (200, json!(2)), "{v}");
    let (_, fresh) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(json!({"key": secret_key(), "shared": true})),
        )
        .await?;
    assert_eq!(fresh["key_version"], 2, "{fresh}");
    // Version 1 still protects data: retiring it is refused.
    let (s, v) = cp
        .api("POST", "/api/v1/vault/retire", Some(json!({"version": 1})))
        .await?;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("re-wrap"),
        "{v}"
    );
    wait_for_traffic(5).await;

    // 3. Re-wrap online, one row per batch, with visible progress.
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/vault/rewrap",
            Some(json!({"batch_size": 1})),
        )
        .await?;
    assert_eq!(s, 202, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let st = vault_status(&cp).await;
        if st["rewrap"]["running"] == false && !st["rewrap"]["finished_at"].is_null() {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "re-wrap never finished: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // 5 keys + the hash secret + the vault state were under version 1.
    assert_eq!(status["rewrap"]["failed"], 0, "{status}");
    assert!(
        status["rewrap"]["rewrapped"].as_u64().unwrap() >= 6,
        "{status}"
    );
    assert!(status["sealed_by_version"].get("1").is_none(), "{status}");
    wait_for_traffic(5).await;

    // 4. Retire version 1, then drop it from the key file.
    let (s, v) = cp
        .api("POST", "/api/v1/vault/retire", Some(json!({"version": 1})))
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["retired"], json!([1]));
    std::fs::write(cp.master_file(), format!("{}\n", master_entry(2)))?;
    let (s, v) = cp.api("POST", "/api/v1/vault/reload", None).await?;
    assert_eq!((s, v["versions"].clone()), (200, json!([2])), "{v}");
    // A file without the version data depends on is refused.
    std::fs::write(cp.master_file(), format!("{}\n", master_entry(3)))?;
    let (s, v) = cp.api("POST", "/api/v1/vault/reload", None).await?;
    assert_eq!(s, 409, "{v}");
    std::fs::write(cp.master_file(), format!("{}\n", master_entry(2)))?;
    wait_for_traffic(10).await;

    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) >= 30);

    let (_, audit) = cp.api("GET", "/api/v1/audit?limit=1000", None).await?;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "vault_reloaded",
        "vault_current_changed",
        "vault_rewrap_started",
        "vault_rewrap_finished",
        "vault_version_retired",
    ] {
        assert!(actions.contains(&a), "no audit row {a}");
    }
    // The rotated database still opens: a fresh control plane starts on it, and the CLI agrees.
    let replica = cp.replica().await?;
    assert_eq!(replica.call("GET", "/readyz", None, None).await?.0, 200);
    let out = std::process::Command::new(bin("llmhub-control"))
        .args(["vault", "status", "--config"])
        .arg(cp.config_path())
        .env_remove("LLMHUB_MASTER_KEYS")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (st["current"].clone(), st["retired"].clone()),
        (json!(2), json!([1])),
        "{st}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_on_sqlite() -> anyhow::Result<()> {
    rotation_flow(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_on_postgres() -> anyhow::Result<()> {
    rotation_flow(Backend::Postgres).await
}

/// One flipped bit in a stored ciphertext: the key is reported, left out, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ciphertext_fails_closed() -> anyhow::Result<()> {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    use sea_orm::{ConnectionTrait, QueryResult, Statement};
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let pid = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    let (good, bad) = (secret_key(), secret_key());
    cp.add_shared_key(&pid, &good).await?;
    let bad_id = cp.add_shared_key(&pid, &bad).await?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.add_route("m", &pid, "mock-ok").await?;
    let client_key = cp.new_client_key("k").await?;

    let db = sea_orm::Database::connect(&cp.db.url).await?;
    let backend = db.get_database_backend();
    let row: QueryResult = db
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT sealed FROM provider_keys WHERE id = '{bad_id}'"),
        ))
        .await?
        .unwrap();
    let mut sealed: Vec<u8> = row.try_get("", "sealed")?;
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01; // one bit of the tag
    let stmt = Query::update()
        .table(Alias::new("provider_keys"))
        .value(Alias::new("sealed"), sealed)
        .and_where(Expr::col(Alias::new("id")).eq(bad_id.clone()))
        .to_owned();
    db.execute(&stmt).await?;
    db.close().await?;

    // Any change triggers a rebuild; the periodic one would too.
    cp.api("POST", "/api/v1/routes", Some(json!({"public_model": "m2", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))).await?;
    let st = vault_status(&cp).await;
    assert_eq!(st["unreadable_keys"], json!([bad_id]), "{st}");
    let (_, list) = cp
        .api("GET", &format!("/api/v1/providers/{pid}/keys"), None)
        .await?;
    let state = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == bad_id.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(state, "unreadable");
    assert!(cp.logs.text().contains("cannot open provider key"));

    // The proxy serves with the good key only.
    let proxy = cp.ready_proxy("proxy-1").await?;
    for _ in 0..4 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", proxy.url))
            .bearer_auth(&client_key)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        assert_eq!(
            mock.requests().last().unwrap().headers["authorization"],
            format!("Bearer {good}")
        );
    }
    // Testing the damaged key is a clear conflict, and re-wrap counts it as failed.
    let (s, v) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys/{bad_id}/test"),
            None,
        )
        .await?;
    assert_eq!(s, 409, "{v}");
    assert_eq!(cp.call("GET", "/healthz", None, None).await?.0, 200);
    Ok(())
}

/// Provider base URLs at internal or metadata addresses are refused when created, and a key test
/// against a name that resolves to one sends nothing: the key never leaves for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_policy_keeps_keys_away_from_internal_addresses() -> anyhow::Result<()> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            egress_allow: Some(vec![]), // the server default: nothing internal
            ..ControlOptions::default()
        },
    )
    .await?;
    for bad in [
        "http://169.254.169.254/v1".to_owned(),
        "http://metadata.google.internal/".to_owned(),
        "http://[::1]:8000/v1".to_owned(),
        mock.base_url(),
    ] {
        let (s, v) = cp
            .api(
                "POST",
                "/api/v1/providers",
                Some(json!({"name": "bad", "kind": "openai-compatible", "base_url": bad})),
            )
            .await?;
        assert_eq!(s, 400, "{bad}: {v}");
        let text = v.to_string();
        assert!(
            text.contains("base_url") && text.contains("egress_allow"),
            "{text}"
        );
    }
    // A name is accepted here (it may resolve anywhere later) and checked when connecting.
    let named = mock.base_url().replace("127.0.0.1", "localhost");
    let pid = cp
        .add_provider("local", "openai-compatible", &named)
        .await?;
    let key = secret_key();
    let kid = cp.add_shared_key(&pid, &key).await?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = cp
        .api(
            "POST",
            &format!("/api/v1/providers/{pid}/keys/{kid}/test"),
            None,
        )
        .await?;
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("egress policy"), "{v}");
    assert!(
        mock.requests().is_empty(),
        "nothing reached the provider: {:?}",
        mock.requests().len()
    );
    assert!(!cp.logs.text().contains(&key), "the key was never logged");
    Ok(())
}
