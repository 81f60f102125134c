//! The catalogue completed: client keys edited (models, expiry, limits, budget) and rotated with a
//! grace period, routes and providers updated and deleted, user-level limits set by admins, each
//! change audited and in effect at a real proxy; who may do what; and bad input refused with 400.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};

const STRONG: &str = "violet-otter-jumps-42-quietly";

on_both_backends!(
    client_key_edits_take_effect_at_the_proxy,
    rotation_keeps_the_old_secret_for_the_grace_only,
    route_updates_and_deletion_take_effect,
    provider_updates_and_deletion,
    users_edit_only_their_own_keys_and_admins_set_user_limits,
    bad_inputs_are_refused_with_400,
);

/// A control plane with one mock provider and shared key, and a ready proxy.
struct Setup {
    mock: MockProvider,
    cp: ControlPlane,
    pid: String,
    proxy: Proxy,
    http: reqwest::Client,
}

impl Setup {
    async fn start(backend: Backend, routes: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(backend).await?;
        let pid = cp
            .add_provider("mock", "openai-compatible", &mock.base_url())
            .await?;
        cp.add_shared_key(&pid, &format!("sk-good-{}", uuid::Uuid::new_v4().simple()))
            .await?;
        for (public, upstream) in routes {
            cp.add_route(public, &pid, upstream).await?;
        }
        let proxy = cp.ready_proxy("proxy-a").await?;
        Ok(Setup {
            mock,
            cp,
            pid,
            proxy,
            http: reqwest::Client::new(),
        })
    }

    /// Waits until the proxy serves what the control plane published last.
    async fn synced(&self) -> anyhow::Result<()> {
        self.proxy
            .wait_for_version(self.cp.snapshot_version().await?)
            .await
    }

    async fn chat(&self, key: &str, model: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.proxy.url))
            .bearer_auth(key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a client key of the admin; returns (id, full key).
    async fn client_key(&self, body: Value) -> anyhow::Result<(String, String)> {
        let (s, v) = self
            .cp
            .api("POST", "/api/v1/client-keys", Some(body))
            .await?;
        anyhow::ensure!(s == 201, "client key: {s} {v}");
        Ok((
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        ))
    }

    /// The upstream models the mock received, in order.
    fn upstream_models(&self) -> Vec<String> {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .map(|r| r.body["model"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn chat_requests(mock: &MockProvider) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

async fn audit_actions(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    let (s, v) = cp.api("GET", "/api/v1/audit?limit=1000", None).await?;
    anyhow::ensure!(s == 200, "audit: {s} {v}");
    Ok(v["data"].as_array().unwrap().clone())
}

fn has_action(rows: &[Value], action: &str) -> bool {
    rows.iter().any(|r| r["action"] == action)
}

async fn client_key_edits_take_effect_at_the_proxy(backend: Backend) -> anyhow::Result<()> {
    let st = Setup::start(backend, &[("m1", "mock-ok"), ("m2", "mock-ok")]).await?;
    let (id, key) = st
        .client_key(json!({
            "name": "app",
            "allowed_models": ["m1"],
            "rpm_limit": 60,
            "budget": {"usd": 25.5, "period": "monthly"},
        }))
        .await?;
    st.synced().await?;
    assert_eq!(st.chat(&key, "m1").await.0, 200);
    let (s, v) = st.chat(&key, "m2").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (404, json!("model_not_found"))
    );

    // The key's models change: the proxy follows with the next snapshot.
    let expires = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            &format!("/api/v1/client-keys/{id}"),
            Some(json!({
                "allowed_models": ["m2"],
                "name": "app-v2",
                "expires_at": expires,
                "tpm_limit": 50000,
                "max_concurrent": 4,
                "rpm_limit": null,
                "budget": {"usd": 0.1, "period": "daily", "expires_at": expires},
            })),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    st.synced().await?;
    assert_eq!(st.chat(&key, "m2").await.0, 200);
    assert_eq!(st.chat(&key, "m1").await.0, 404);

    // Limits and budget round-trip through the API exactly.
    let (_, list) = st.cp.api("GET", "/api/v1/client-keys", None).await?;
    let k = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(k["name"], "app-v2");
    assert_eq!(k["allowed_models"], json!(["m2"]));
    assert!(k["rpm_limit"].is_null(), "null cleared it: {k}");
    assert_eq!(
        (k["tpm_limit"].clone(), k["max_concurrent"].clone()),
        (json!(50000), json!(4))
    );
    assert_eq!(k["budget"]["usd"], json!(0.1));
    assert_eq!(k["budget"]["limit_nanos"], json!(100_000_000u64));
    assert_eq!(k["budget"]["period"], "daily");
    let start: chrono::DateTime<chrono::Utc> =
        k["budget"]["period_start"].as_str().unwrap().parse()?;
    // Today's UTC midnight (or yesterday's, should the test run across midnight).
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert!(
        start == today || start == today - chrono::Duration::days(1),
        "{start}"
    );
    assert!(k["key"].is_null(), "no secret in a list: {k}");

    // Absent fields stay; `null` removes the budget and the expiry.
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            &format!("/api/v1/client-keys/{id}"),
            Some(json!({"budget": null, "expires_at": null})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert!(v["budget"].is_null() && v["expires_at"].is_null(), "{v}");
    assert_eq!(v["tpm_limit"], 50000);
    assert_eq!(v["allowed_models"], json!(["m2"]));

    // Emptying the list allows every routed model.
    st.cp
        .api(
            "PATCH",
            &format!("/api/v1/client-keys/{id}"),
            Some(json!({"allowed_models": []})),
        )
        .await?;
    st.synced().await?;
    assert_eq!(st.chat(&key, "m1").await.0, 200);

    // A revoked key cannot be edited or rotated.
    let (s, _) = st
        .cp
        .api("DELETE", &format!("/api/v1/client-keys/{id}"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            &format!("/api/v1/client-keys/{id}"),
            Some(json!({"name": "again"})),
        )
        .await?;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("conflict")),
        "{v}"
    );
    let (s, _) = st
        .cp
        .api(
            "POST",
            &format!("/api/v1/client-keys/{id}/rotate"),
            Some(json!({"grace_seconds": 10})),
        )
        .await?;
    assert_eq!(s, 409);
    st.synced().await?;
    assert_eq!(st.chat(&key, "m1").await.0, 401);

    let rows = audit_actions(&st.cp).await?;
    assert!(has_action(&rows, "client_key_updated"));
    assert!(
        !serde_json::to_string(&rows)?.contains(&key),
        "the key is in the audit log"
    );
    Ok(())
}

async fn rotation_keeps_the_old_secret_for_the_grace_only(backend: Backend) -> anyhow::Result<()> {
    let st = Setup::start(backend, &[("m", "mock-ok")]).await?;
    let (id, old) = st.client_key(json!({"name": "svc"})).await?;
    st.synced().await?;
    assert_eq!(st.chat(&old, "m").await.0, 200);

    let (s, v) = st
        .cp
        .api(
            "POST",
            &format!("/api/v1/client-keys/{id}/rotate"),
            Some(json!({"grace_seconds": 3})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    let new = v["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with(v["prefix"].as_str().unwrap()), "{v}");
    assert!(v["rotated_at"].is_string(), "{v}");
    let until: chrono::DateTime<chrono::Utc> =
        v["previous_valid_until"].as_str().unwrap().parse()?;

    // During the grace both secrets work, on the new snapshot (the new secret proves it).
    st.synced().await?;
    assert_eq!(st.chat(&new, "m").await.0, 200);
    assert!(
        chrono::Utc::now() < until,
        "the grace ended before it could be tested"
    );
    assert_eq!(
        st.chat(&old, "m").await.0,
        200,
        "the old secret during its grace"
    );

    // After it, only the new one.
    let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    let (s, v) = st.chat(&old, "m").await;
    assert_eq!(s, 401, "the old secret after its grace: {v}");
    assert_eq!(st.chat(&new, "m").await.0, 200);
    let (_, list) = st.cp.api("GET", "/api/v1/client-keys", None).await?;
    assert!(list["data"][0]["previous_valid_until"].is_null(), "{list}");

    // Without a grace the replaced secret stops at once.
    let (s, v) = st
        .cp
        .api(
            "POST",
            &format!("/api/v1/client-keys/{id}/rotate"),
            Some(json!({})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert!(v["previous_valid_until"].is_null(), "{v}");
    let newest = v["key"].as_str().unwrap().to_owned();
    st.synced().await?;
    assert_eq!(st.chat(&newest, "m").await.0, 200);
    assert_eq!(st.chat(&new, "m").await.0, 401);

    let rows = audit_actions(&st.cp).await?;
    let rotated: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "client_key_rotated")
        .collect();
    assert_eq!(rotated.len(), 2);
    let text = serde_json::to_string(&rows)?;
    for secret in [&old, &new, &newest] {
        assert!(
            !text.contains(secret.as_str()),
            "a client key is in the audit log"
        );
    }
    let logs = st.cp.logs.text();
    for secret in [&old, &new, &newest] {
        assert!(
            !logs.contains(secret.as_str()),
            "a client key is in the logs"
        );
    }
    Ok(())
}

async fn route_updates_and_deletion_take_effect(backend: Backend) -> anyhow::Result<()> {
    let st = Setup::start(backend, &[("m", "mock-ok"), ("vendor/m2", "mock-ok")]).await?;
    let (_, key) = st
        .client_key(json!({"name": "app", "allowed_models": ["m", "vendor/m2"]}))
        .await?;
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 200);
    assert_eq!(st.upstream_models().last().unwrap(), "mock-ok");

    // New targets, strategy and aliases: the proxy sends the new upstream model.
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            "/api/v1/routes/m",
            Some(json!({
                "strategy": "latency",
                "aliases": ["m-alias"],
                "targets": [{"provider_id": st.pid, "upstream_model": "mock-ok-v2"}],
            })),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["strategy"], "latency");
    assert_eq!(v["targets"][0]["upstream_model"], "mock-ok-v2");
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 200);
    assert_eq!(st.upstream_models().last().unwrap(), "mock-ok-v2");
    // The alias resolves (the key's list names the public name, not the alias).
    let (_, all_key) = st.client_key(json!({"name": "all"})).await?;
    st.synced().await?;
    assert_eq!(st.chat(&all_key, "m-alias").await.0, 200);

    // A name with a slash is addressed percent-encoded.
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            "/api/v1/routes/vendor%2Fm2",
            Some(json!({"targets": [{"provider_id": st.pid, "upstream_model": "mock-ok-v3"}]})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["public_model"], "vendor/m2");

    // Deleted: the name answers model_not_found; the key keeps listing it; records keep it.
    let (s, _) = st.cp.api("DELETE", "/api/v1/routes/m", None).await?;
    assert_eq!(s, 204);
    st.synced().await?;
    let (s, v) = st.chat(&key, "m").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (404, json!("model_not_found")),
        "{v}"
    );
    assert_eq!(
        st.chat(&all_key, "m-alias").await.0,
        404,
        "the alias went with it"
    );
    let (_, keys) = st.cp.api("GET", "/api/v1/client-keys", None).await?;
    let k = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "app")
        .unwrap()
        .clone();
    assert_eq!(k["allowed_models"], json!(["m", "vendor/m2"]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, recs) = st
            .cp
            .api("GET", "/api/v1/routing-records?limit=100", None)
            .await?;
        let served = recs["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["public_model"] == "m" && r["status"] == 200)
            .count();
        if served >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "records: {recs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unknown routes are not found; the name can be routed again.
    let (s, _) = st.cp.api("DELETE", "/api/v1/routes/m", None).await?;
    assert_eq!(s, 404);
    let (s, _) = st
        .cp
        .api(
            "PATCH",
            "/api/v1/routes/m",
            Some(json!({"strategy": "weighted"})),
        )
        .await?;
    assert_eq!(s, 404);
    st.cp.add_route("m", &st.pid, "mock-ok").await?;
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 200);

    let rows = audit_actions(&st.cp).await?;
    assert!(has_action(&rows, "route_updated") && has_action(&rows, "route_deleted"));
    Ok(())
}

async fn provider_updates_and_deletion(backend: Backend) -> anyhow::Result<()> {
    let st = Setup::start(backend, &[("m", "mock-ok")]).await?;
    let (_, key) = st.client_key(json!({"name": "app"})).await?;
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 200);
    let before = chat_requests(&st.mock);

    // A new base URL: the keys go there from the next snapshot on.
    let other = MockProvider::start().await?;
    let (s, v) = st
        .cp
        .api(
            "PATCH",
            &format!("/api/v1/providers/{}", st.pid),
            Some(json!({"base_url": other.base_url(), "name": "mock-b", "request_timeout_ms": 30000})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["name"].clone(), v["base_url"].clone()),
        (json!("mock-b"), json!(other.base_url()))
    );
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 200);
    assert_eq!(chat_requests(&other), 1);
    assert_eq!(
        chat_requests(&st.mock),
        before,
        "the old address got a request"
    );

    // The egress policy applies to updates as to creation; the kind cannot change.
    for (body, field) in [
        (json!({"base_url": "http://169.254.169.254/v1"}), "base_url"),
        (
            json!({"base_url": "http://metadata.google.internal/v1"}),
            "base_url",
        ),
        (json!({"base_url": "ftp://x"}), "base_url"),
        (json!({"kind": "openai"}), "kind"),
        (json!({"api_version": "2024-10-21"}), "api_version"),
        (json!({"request_timeout_ms": 5}), "request_timeout_ms"),
        (json!({}), "nothing to change"),
    ] {
        let (s, v) = st
            .cp
            .api(
                "PATCH",
                &format!("/api/v1/providers/{}", st.pid),
                Some(body.clone()),
            )
            .await?;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let (_, p) = st.cp.api("GET", "/api/v1/providers", None).await?;
    assert_eq!(
        p["data"][0]["base_url"],
        json!(other.base_url()),
        "a refused change changed it"
    );

    // Deletion: refused while a route targets it (naming the route), then while it has keys.
    let path = format!("/api/v1/providers/{}", st.pid);
    let (s, v) = st.cp.api("DELETE", &path, None).await?;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("routes m"),
        "{v}"
    );
    st.cp.api("DELETE", "/api/v1/routes/m", None).await?;
    let (s, v) = st.cp.api("DELETE", &path, None).await?;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete_keys=true"),
        "{v}"
    );
    let (s, v) = st
        .cp
        .api("DELETE", &format!("{path}?delete_keys=true"), None)
        .await?;
    assert_eq!(s, 204, "{v}");
    let (s, _) = st.cp.api("GET", &format!("{path}/keys"), None).await?;
    assert_eq!(s, 404);
    let (s, _) = st.cp.api("DELETE", &path, None).await?;
    assert_eq!(s, 404);
    st.synced().await?;
    assert_eq!(st.chat(&key, "m").await.0, 404);

    let rows = audit_actions(&st.cp).await?;
    for a in [
        "provider_updated",
        "provider_deleted",
        "provider_key_deleted",
    ] {
        assert!(has_action(&rows, a), "no {a}");
    }
    Ok(())
}

async fn users_edit_only_their_own_keys_and_admins_set_user_limits(
    backend: Backend,
) -> anyhow::Result<()> {
    let cp = ControlPlane::start(backend).await?;
    let alice_id = cp.create_user("alice", STRONG, "user").await?;
    cp.create_user("bob", STRONG, "user").await?;
    let alice = cp.login_tokens("alice", STRONG).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = cp.login_tokens("bob", STRONG).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, k) = cp
        .call(
            "POST",
            "/api/v1/client-keys",
            Some(&alice),
            Some(json!({"name": "a", "rpm_limit": 10, "budget": {"usd": 3, "period": "weekly"}})),
        )
        .await?;
    assert_eq!(s, 201, "{k}");
    let id = k["id"].as_str().unwrap().to_owned();
    let key_path = format!("/api/v1/client-keys/{id}");

    // Another user's key is not found, for every verb.
    for (method, path, body) in [
        ("PATCH", key_path.clone(), json!({"rpm_limit": null})),
        (
            "POST",
            format!("{key_path}/rotate"),
            json!({"grace_seconds": 5}),
        ),
    ] {
        let (s, _, v) = cp.call(method, &path, Some(&bob), Some(body)).await?;
        assert_eq!(s, 404, "{method} {path}: {v}");
    }
    let (s, _, v) = cp
        .call(
            "GET",
            &format!("/api/v1/client-keys?user_id={alice_id}"),
            Some(&bob),
            None,
        )
        .await?;
    assert_eq!(s, 403, "{v}");

    // The owner restricts their own key.
    let (s, _, v) = cp
        .call(
            "PATCH",
            &key_path,
            Some(&alice),
            Some(json!({"rpm_limit": 5, "max_concurrent": 1})),
        )
        .await?;
    assert_eq!((s, v["rpm_limit"].clone()), (200, json!(5)), "{v}");

    // An admin edits any key (and lists a user's keys), but never rotates one: that would hand
    // the admin a working secret of the user's.
    let (s, v) = cp
        .api("PATCH", &key_path, Some(json!({"tpm_limit": 777})))
        .await?;
    assert_eq!(
        (s, v["tpm_limit"].clone(), v["user_id"].clone()),
        (200, json!(777), json!(alice_id)),
        "{v}"
    );
    let (s, v) = cp
        .api(
            "GET",
            &format!("/api/v1/client-keys?user_id={alice_id}"),
            None,
        )
        .await?;
    assert_eq!((s, v["data"][0]["id"].clone()), (200, json!(id)), "{v}");
    let (s, v) = cp
        .api("POST", &format!("{key_path}/rotate"), Some(json!({})))
        .await?;
    assert_eq!(s, 404, "{v}");
    let (s, _, v) = cp
        .call("GET", "/api/v1/client-keys", Some(&alice), None)
        .await?;
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["tpm_limit"], 777);
    assert_eq!(v["data"][0]["rpm_limit"], 5);
    assert_eq!(v["data"][0]["budget"]["period"], "weekly");

    // User-level limits: admins only; the user sees them, sessions survive.
    let limits_path = format!("/api/v1/users/{alice_id}/limits");
    let (s, _, _) = cp
        .call(
            "PATCH",
            &limits_path,
            Some(&alice),
            Some(json!({"rpm_limit": 1000})),
        )
        .await?;
    assert_eq!(s, 403);
    let (s, v) = cp
        .api(
            "PATCH",
            &limits_path,
            Some(json!({"rpm_limit": 100, "tpm_limit": 20000, "budget": {"usd": 12.25, "period": "none"}})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["rpm_limit"].clone(), v["budget"]["usd"].clone()),
        (json!(100), json!(12.25))
    );
    let (s, _, me) = cp.call("GET", "/api/v1/me", Some(&alice), None).await?;
    assert_eq!(s, 200, "a limits change must not end the user's session");
    assert_eq!(me["rpm_limit"], 100);
    assert_eq!(me["budget"]["limit_nanos"], 12_250_000_000u64);
    assert_eq!(me["budget"]["period"], "none");
    let (s, v) = cp
        .api(
            "PATCH",
            &limits_path,
            Some(json!({"budget": null, "rpm_limit": null})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert!(v["budget"].is_null() && v["rpm_limit"].is_null(), "{v}");
    assert_eq!(v["tpm_limit"], 20000);
    let (s, _) = cp
        .api(
            "PATCH",
            "/api/v1/users/00000000-0000-0000-0000-000000000000/limits",
            Some(json!({"rpm_limit": 1})),
        )
        .await?;
    assert_eq!(s, 404);

    let rows = audit_actions(&cp).await?;
    assert!(has_action(&rows, "user_limits_changed") && has_action(&rows, "client_key_updated"));
    let denied = rows.iter().any(|r| {
        r["action"] == "access_denied" && r["target_id"].as_str().unwrap().contains("/limits")
    });
    assert!(denied, "the refused limits call is audited");
    Ok(())
}

async fn bad_inputs_are_refused_with_400(backend: Backend) -> anyhow::Result<()> {
    let cp = ControlPlane::start(backend).await?;
    let (s, k) = cp
        .api("POST", "/api/v1/client-keys", Some(json!({"name": "k"})))
        .await?;
    assert_eq!(s, 201);
    let id = k["id"].as_str().unwrap();
    let key_path = format!("/api/v1/client-keys/{id}");
    let user_path = format!("/api/v1/users/{}/limits", {
        let (_, me) = cp.api("GET", "/api/v1/me", None).await?;
        me["id"].as_str().unwrap().to_owned()
    });
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let limit_cases = [
        (json!({"rpm_limit": 0}), "rpm_limit"),
        (json!({"rpm_limit": -1}), "rpm_limit"),
        (json!({"tpm_limit": 1.5}), "tpm_limit"),
        (json!({"max_concurrent": 100_001}), "max_concurrent"),
        (
            json!({"budget": {"usd": 0, "period": "daily"}}),
            "budget.usd",
        ),
        (
            json!({"budget": {"usd": -5, "period": "daily"}}),
            "budget.usd",
        ),
        (
            json!({"budget": {"usd": 0.0000000001, "period": "daily"}}),
            "budget.usd",
        ),
        (
            json!({"budget": {"usd": 2e9, "period": "daily"}}),
            "budget.usd",
        ),
        (json!({"budget": {"usd": "5", "period": "daily"}}), "usd"),
        (
            json!({"budget": {"usd": 5, "period": "yearly"}}),
            "budget.period",
        ),
        (json!({"budget": {"usd": 5}}), "period"),
        (
            json!({"budget": {"usd": 5, "period": "daily", "expires_at": past}}),
            "budget.expires_at",
        ),
        (
            json!({"budget": {"usd": 5, "period": "daily", "cap": 1}}),
            "cap",
        ),
        (json!({}), "nothing to change"),
    ];
    for (body, field) in limit_cases.iter() {
        for path in [&key_path, &user_path] {
            let (s, v) = cp.api("PATCH", path, Some(body.clone())).await?;
            assert_eq!(s, 400, "PATCH {path} {body}: {v}");
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(field),
                "{body}: {v}"
            );
        }
    }
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"allowed_models": ["has space"]}), "allowed_models"),
        (json!({"expires_at": past}), "expires_at"),
        (json!({"prefix": "lh-mine"}), "prefix"),
    ] {
        let (s, v) = cp.api("PATCH", &key_path, Some(body.clone())).await?;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    for (body, field) in [
        (json!({"grace_seconds": 604_801}), "grace_seconds"),
        (json!({"grace_seconds": -1}), "grace_seconds"),
        (json!({"grace": 5}), "grace"),
    ] {
        let (s, v) = cp
            .api("POST", &format!("{key_path}/rotate"), Some(body.clone()))
            .await?;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    // Creation checks the same fields.
    for body in [
        json!({"name": "x", "rpm_limit": 0}),
        json!({"name": "x", "budget": {"usd": 1, "period": "hourly"}}),
    ] {
        let (s, v) = cp
            .api("POST", "/api/v1/client-keys", Some(body.clone()))
            .await?;
        assert_eq!(s, 400, "{body}: {v}");
    }
    // Routes: bad targets, taken names.
    let mock = MockProvider::start().await?;
    let pid = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    cp.add_route("r1", &pid, "mock-ok").await?;
    cp.add_route("r2", &pid, "mock-ok").await?;
    for (body, status, field) in [
        (json!({"targets": []}), 400, "targets"),
        (
            json!({"targets": [{"provider_id": "nope", "upstream_model": "x"}]}),
            400,
            "provider_id",
        ),
        (
            json!({"targets": [{"provider_id": pid, "upstream_model": "x", "weight": 0}]}),
            400,
            "weight",
        ),
        (json!({"strategy": "random"}), 400, "strategy"),
        (json!({"aliases": ["r2"]}), 409, "r2"),
        (json!({"public_model": "r3"}), 400, "public_model"),
        (json!({}), 400, "nothing to change"),
    ] {
        let (s, v) = cp
            .api("PATCH", "/api/v1/routes/r1", Some(body.clone()))
            .await?;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    // Query strings are checked too, answered in the API's error format.
    for (method, path) in [
        (
            "DELETE",
            format!("/api/v1/providers/{pid}?delete_keys=maybe"),
        ),
        ("GET", "/api/v1/client-keys?owner=someone".to_owned()),
    ] {
        let (s, v) = cp.api(method, &path, None).await?;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_request")),
            "{method} {path}: {v}"
        );
    }
    // Nothing refused was changed or audited.
    let (_, routes) = cp.api("GET", "/api/v1/routes", None).await?;
    assert_eq!(routes["data"][0]["targets"][0]["upstream_model"], "mock-ok");
    assert_eq!(routes["data"][0]["aliases"], json!([]));
    let rows = audit_actions(&cp).await?;
    assert!(!has_action(&rows, "route_updated") && !has_action(&rows, "client_key_updated"));
    assert!(!has_action(&rows, "user_limits_changed") && !has_action(&rows, "client_key_rotated"));
    Ok(())
}
