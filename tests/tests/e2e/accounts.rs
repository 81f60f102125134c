//! Accounts, sessions, RBAC, login-abuse protection, web hardening and the audit log, against
//! the running control plane on Postgres and on SQLite (with Redis for shared counters).
//!
//! Each scenario runs on both backends (`<scenario>::sqlite`, `<scenario>::postgres`) with a
//! control plane of its own, and ends by checking that no secret it handled reached the audit log
//! or the logs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use llmhub_e2e::harness::{
    Backend, ControlOptions, ControlPlane, JWT_SECRET, Redis, Registration, bin, install_crypto,
};
use serde_json::{Value, json};

const STRONG: &str = "violet-otter-jumps-42-quietly";
const STRONG2: &str = "amber-falcon-sings-77-softly";

/// Login settings small enough to observe lockouts within a test.
fn login_options() -> ControlOptions {
    ControlOptions {
        login_max_failures: Some(3),
        login_lock_base: Some(Duration::from_secs(1)),
        login_lock_max: Some(Duration::from_secs(8)),
        login_ip_max_failures: Some(1000),
        registration: Some(Registration::Open),
        dashboard_origins: vec!["https://dash.example.com".into()],
        ..ControlOptions::default()
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn status_of(cp: &ControlPlane, method: &str, path: &str, token: Option<&str>) -> u16 {
    cp.call(method, path, token, None).await.unwrap().0
}

fn login_body(u: &str, p: &str) -> Value {
    json!({"username": u, "password": p})
}

async fn refresh(cp: &ControlPlane, token: &str) -> anyhow::Result<(u16, Value)> {
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
        .await?;
    Ok((s, v))
}

async fn lockouts(cp: &ControlPlane, id: &str) -> Vec<Value> {
    let (_, v) = cp
        .api("GET", &format!("/api/v1/users/{id}/lockouts"), None)
        .await
        .unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until the account's lockouts have expired on their own.
async fn wait_unlocked(cp: &ControlPlane, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while !lockouts(cp, id).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "lock never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audit_rows(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    let (s, page) = cp.api("GET", "/api/v1/audit?limit=1000", None).await?;
    assert_eq!(s, 200, "{page}");
    Ok(page["data"].as_array().unwrap().clone())
}

/// A control plane with [`login_options`] and the secrets one scenario handled.
struct Scenario {
    cp: ControlPlane,
    secrets: Vec<String>,
}

impl Scenario {
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        let cp = ControlPlane::start_with(backend, login_options()).await?;
        let secrets = vec![cp.admin_password.clone(), STRONG.into(), STRONG2.into()];
        Ok(Scenario { cp, secrets })
    }

    /// Signs in and remembers both tokens as secrets; returns (access, refresh).
    async fn sign_in(&mut self, user: &str, password: &str) -> anyhow::Result<(String, String)> {
        let t = self.cp.login_tokens(user, password).await?;
        let access = t["access_token"].as_str().unwrap().to_owned();
        let refresh = t["refresh_token"].as_str().unwrap().to_owned();
        self.secrets.extend([access.clone(), refresh.clone()]);
        Ok((access, refresh))
    }

    /// The audit log has a row for each of `actions`; no secret of the scenario is in the audit
    /// log or in the logs. (The bootstrap password is printed once on stdout by design; that line
    /// is not a log line.)
    async fn finish(self, actions: &[&str]) -> anyhow::Result<()> {
        let rows = audit_rows(&self.cp).await?;
        let seen: std::collections::HashSet<&str> =
            rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
        for a in actions {
            assert!(seen.contains(a), "no audit row for {a}: {seen:?}");
        }
        let text = serde_json::to_string(&rows)?;
        for sec in &self.secrets {
            assert!(!text.contains(sec.as_str()), "a secret is in the audit log");
        }
        let logs: String = self
            .cp
            .logs
            .text()
            .lines()
            .filter(|l| !l.contains("\"event\":\"bootstrap_admin\""))
            .collect::<Vec<_>>()
            .join("\n");
        for (i, sec) in self.secrets.iter().enumerate() {
            assert!(!logs.contains(sec.as_str()), "secret #{i} is in the logs");
        }
        Ok(())
    }
}

on_both_backends!(
    security_headers_and_cors,
    every_route_enforces_its_access,
    users_manage_only_their_own_provider_keys,
    forged_tokens_are_refused,
    logout_and_refresh_token_reuse_end_the_session,
    password_and_role_changes_end_every_session,
    failed_logins_look_identical_and_lockouts_expire,
    oversized_and_unicode_passwords,
    cookie_refresh_requires_the_csrf_token,
    audit_log_filters_paginates_and_detects_tampering,
);

async fn security_headers_and_cors(backend: Backend) -> anyhow::Result<()> {
    let sc = Scenario::start(backend).await?;
    let cp = &sc.cp;
    let (_, h, _) = cp.call("GET", "/api/v1/me", None, None).await?;
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()?
            .contains("frame-ancestors 'none'")
    );
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS without TLS"
    );
    for (origin, allowed) in [
        ("https://dash.example.com", true),
        ("https://evil.example.com", false),
        ("null", false),
        ("https://dash.example.com.evil.com", false),
    ] {
        let r = cp
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/me", cp.admin_url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .await?;
        let allow = r.headers().get("access-control-allow-origin");
        let cors: Vec<&str> = r
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        if allowed {
            assert_eq!(allow.unwrap(), origin);
            assert!(
                cors.contains(&"access-control-allow-credentials"),
                "{cors:?}"
            );
        } else {
            assert!(allow.is_none(), "{origin} got {allow:?}");
            // Nothing else either: no allow-credentials, methods, headers or max-age.
            assert!(cors.is_empty(), "{origin} got {cors:?}");
        }
    }
    sc.finish(&[]).await
}

/// Every endpoint in the router's own table: no token → 401, a user's token on an admin
/// endpoint → 403.
async fn every_route_enforces_its_access(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    let (user_token, _) = sc.sign_in("alice", STRONG).await?;
    let cp = &sc.cp;
    let out = std::process::Command::new(bin("llmhub-control"))
        .arg("routes")
        .output()?;
    let routes: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    assert!(routes.len() > 20, "{routes:?}");
    let mut checked = 0;
    for r in &routes {
        let method = r["method"].as_str().unwrap();
        let path = r["path"]
            .as_str()
            .unwrap()
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{key_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{model}", "no-such-model");
        match r["access"].as_str().unwrap() {
            "public" => continue,
            "user" => {
                assert_eq!(
                    status_of(cp, method, &path, None).await,
                    401,
                    "{method} {path}"
                );
                assert_eq!(
                    status_of(cp, method, &path, Some("garbage")).await,
                    401,
                    "{method} {path}"
                );
            }
            "admin" => {
                assert_eq!(
                    status_of(cp, method, &path, None).await,
                    401,
                    "{method} {path}"
                );
                assert_eq!(
                    status_of(cp, method, &path, Some(&user_token)).await,
                    403,
                    "{method} {path}"
                );
            }
            other => panic!("unknown access {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 20);
    sc.finish(&["user_created", "login_succeeded"]).await
}

/// Users manage only their own provider keys; another user's key is 404; only admins manage the
/// shared pool and providers.
async fn users_manage_only_their_own_provider_keys(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    sc.cp.create_user("bob", STRONG, "user").await?;
    let (alice_access, _) = sc.sign_in("alice", STRONG).await?;
    let (bob_access, _) = sc.sign_in("bob", STRONG).await?;
    let provider_secret = "sk-alice-own-key-0123456789";
    sc.secrets.push(provider_secret.into());
    let cp = &sc.cp;
    let (_, p) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "p1", "kind": "openai", "base_url": "https://api.example.com/v1"})),
        )
        .await?;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (s, _, key) = cp
        .call(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(&alice_access),
            Some(json!({"key": provider_secret})),
        )
        .await?;
    assert_eq!(s, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (_, _, list) = cp
        .call(
            "GET",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(&bob_access),
            None,
        )
        .await?;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "bob sees alice's key: {list}"
    );
    let (s, _, _) = cp
        .call(
            "DELETE",
            &format!("/api/v1/providers/{pid}/keys/{key_id}"),
            Some(&bob_access),
            None,
        )
        .await?;
    assert_eq!(s, 404);
    let (s, _, _) = cp
        .call(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(&bob_access),
            Some(json!({"key": "sk-bob-shared-0123456789", "shared": true})),
        )
        .await?;
    assert_eq!(s, 403, "only admins manage the shared pool");
    let (s, _, _) = cp
        .call(
            "DELETE",
            &format!("/api/v1/providers/{pid}/keys/{key_id}"),
            Some(&alice_access),
            None,
        )
        .await?;
    assert_eq!(s, 204);
    // Provider disable/enable (admin).
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/providers/{pid}"),
            Some(json!({"enabled": false})),
        )
        .await?;
    assert_eq!((s, v["enabled"].clone()), (200, json!(false)));
    cp.api(
        "PATCH",
        &format!("/api/v1/providers/{pid}"),
        Some(json!({"enabled": true})),
    )
    .await?;
    sc.finish(&[
        "provider_created",
        "provider_disabled",
        "provider_enabled",
        "provider_key_created",
        "provider_key_deleted",
    ])
    .await
}

/// A valid token (and the same claims re-signed) is accepted; every forgery is 401.
async fn forged_tokens_are_refused(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    let (alice_access, _) = sc.sign_in("alice", STRONG).await?;
    let cp = &sc.cp;
    let good = claims_of(&alice_access);
    assert_eq!(
        status_of(cp, "GET", "/api/v1/me", Some(&alice_access)).await,
        200
    );
    assert_eq!(
        status_of(
            cp,
            "GET",
            "/api/v1/me",
            Some(&sign(jsonwebtoken::Algorithm::HS256, &good))
        )
        .await,
        200
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let mut forged = vec![
        ("alg none", none),
        ("HS512", sign(jsonwebtoken::Algorithm::HS512, &good)),
    ];
    let now = jsonwebtoken::get_current_timestamp();
    for (what, k, v) in [
        ("expired", "exp", json!(now - 300)),
        ("not yet valid", "nbf", json!(now + 300)),
        ("wrong aud", "aud", json!("someone-else")),
        ("wrong iss", "iss", json!("someone-else")),
        ("wrong typ", "typ", json!("refresh")),
        ("wrong version", "ver", json!(99)),
        (
            "unknown session",
            "sid",
            json!("00000000-0000-0000-0000-000000000000"),
        ),
    ] {
        let mut c = good.clone();
        c[k] = v;
        forged.push((what, sign(jsonwebtoken::Algorithm::HS256, &c)));
    }
    let mut parts: Vec<String> = alice_access.split('.').map(str::to_owned).collect();
    let mut c = good.clone();
    c["role"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    forged.push(("tampered", parts.join(".")));
    for (what, tok) in &forged {
        assert_eq!(
            status_of(cp, "GET", "/api/v1/me", Some(tok)).await,
            401,
            "{what} accepted"
        );
    }
    sc.finish(&[]).await
}

/// Logging out ends the session; a refresh rotates the token, and presenting a used one revokes
/// the whole session and its token family.
async fn logout_and_refresh_token_reuse_end_the_session(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;

    // --- logout revokes ---
    let (a, r) = sc.sign_in("alice", STRONG).await?;
    assert_eq!(
        status_of(&sc.cp, "POST", "/api/v1/auth/logout", Some(&a)).await,
        204
    );
    assert_eq!(status_of(&sc.cp, "GET", "/api/v1/me", Some(&a)).await, 401);
    assert_eq!(refresh(&sc.cp, &r).await?.0, 401);

    // --- refresh rotation and reuse detection ---
    let (_, r1) = sc.sign_in("alice", STRONG).await?;
    let (s, t2) = refresh(&sc.cp, &r1).await?;
    assert_eq!(s, 200, "{t2}");
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    let a2 = t2["access_token"].as_str().unwrap().to_owned();
    sc.secrets.extend([r2.clone(), a2.clone()]);
    let cp = &sc.cp;
    assert_ne!(r1, r2);
    assert_eq!(status_of(cp, "GET", "/api/v1/me", Some(&a2)).await, 200);
    // r1 again: reuse → the whole session is revoked.
    assert_eq!(refresh(cp, &r1).await?.0, 401);
    assert_eq!(
        status_of(cp, "GET", "/api/v1/me", Some(&a2)).await,
        401,
        "session survived reuse"
    );
    assert_eq!(
        refresh(cp, &r2).await?.0,
        401,
        "the family's newest token survived reuse"
    );
    sc.finish(&["logout", "refresh_token_reuse"]).await
}

/// A password change needs the current password and a strong new one, and ends every session;
/// so does a role change; a user can be disabled; the last active admin cannot be demoted.
async fn password_and_role_changes_end_every_session(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    let bob = sc.cp.create_user("bob", STRONG, "user").await?;
    let (bob_access, _) = sc.sign_in("bob", STRONG).await?;
    let (s1, _) = sc.sign_in("bob", STRONG).await?;
    let (s2, _) = sc.sign_in("bob", STRONG).await?;
    let cp = &sc.cp;
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/me/password",
            Some(&s1),
            Some(json!({"current_password": "wrong-wrong-wrong", "new_password": STRONG2})),
        )
        .await?;
    assert_eq!(s, 403, "{v}");
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/me/password",
            Some(&s1),
            Some(json!({"current_password": STRONG, "new_password": "password"})),
        )
        .await?;
    assert_eq!(s, 400, "weak new password accepted: {v}");
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/me/password",
            Some(&s1),
            Some(json!({"current_password": STRONG, "new_password": STRONG2})),
        )
        .await?;
    assert_eq!(s, 204, "{v}");
    for t in [&s1, &s2, &bob_access] {
        assert_eq!(status_of(cp, "GET", "/api/v1/me", Some(t)).await, 401);
    }
    assert_eq!(cp.login("bob", STRONG).await?.status(), 401);
    let (bob_new, _) = sc.sign_in("bob", STRONG2).await?;

    // --- role change and disabling end sessions ---
    let cp = &sc.cp;
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{bob}"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        status_of(cp, "GET", "/api/v1/me", Some(&bob_new)).await,
        401,
        "role change kept the session"
    );
    let (s, _) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{bob}"),
            Some(json!({"status": "disabled"})),
        )
        .await?;
    assert_eq!(s, 200);
    // The last active admin cannot be demoted.
    let (_, me) = cp.api("GET", "/api/v1/me", None).await?;
    let admin_id = me["id"].as_str().unwrap().to_owned();
    let (s, _) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{admin_id}"),
            Some(json!({"role": "user"})),
        )
        .await?;
    assert_eq!(s, 409);
    sc.finish(&[
        "password_changed",
        "password_change_failed",
        "user_role_changed",
        "user_disabled",
    ])
    .await
}

/// Unknown user, wrong password, disabled account and locked account get identical answers.
/// Failures lock an account for the address; the second lockout doubles, and each ends on
/// schedule. Every failed login is audited with the address, a locked attempt as `locked`.
async fn failed_logins_look_identical_and_lockouts_expire(backend: Backend) -> anyhow::Result<()> {
    let sc = Scenario::start(backend).await?;
    let cp = &sc.cp;
    cp.create_user("alice", STRONG, "user").await?;
    let bob = cp.create_user("bob", STRONG2, "user").await?;
    let (s, _) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{bob}"),
            Some(json!({"status": "disabled"})),
        )
        .await?;
    assert_eq!(s, 200);
    let carol = cp.create_user("carol", STRONG, "user").await?;

    // --- identical answers: unknown user, wrong password, disabled, locked ---
    let mut answers: HashMap<&str, (u16, String, Value)> = HashMap::new();
    let answer = |r: (u16, reqwest::header::HeaderMap, Value)| {
        let www =
            r.1.get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
        (r.0, www, r.2)
    };
    let login =
        |u: &str, p: &str| cp.call("POST", "/api/v1/auth/login", None, Some(login_body(u, p)));
    answers.insert("unknown", answer(login("nobody-here", STRONG).await?));
    answers.insert("wrong", answer(login("alice", "not-the-password").await?));
    answers.insert("disabled", answer(login("bob", STRONG2).await?));
    for _ in 0..3 {
        login("carol", "not-the-password").await?;
    }
    answers.insert("locked", answer(login("carol", STRONG).await?));
    let first = answers["unknown"].clone();
    assert_eq!(first.0, 401);
    for (k, v) in &answers {
        assert_eq!(v, &first, "{k} differs from unknown user");
    }

    // --- lockout: growth and unlock on schedule ---
    let l = lockouts(cp, &carol).await;
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0]["lock_count"].as_u64(), l[0]["ip"].as_str()),
        (Some(1), Some("127.0.0.1"))
    );
    assert!(l[0]["remaining_secs"].as_u64().unwrap() <= 1);
    wait_unlocked(cp, &carol).await;
    for _ in 0..3 {
        login("carol", "not-the-password").await?;
    }
    let l = lockouts(cp, &carol).await;
    assert_eq!(l[0]["lock_count"], 2, "{l:?}");
    assert_eq!(l[0]["remaining_secs"], 2, "second lockout doubles: {l:?}");
    assert_eq!(
        cp.login("carol", STRONG).await?.status(),
        401,
        "locked account let in"
    );
    wait_unlocked(cp, &carol).await;
    assert_eq!(
        cp.login("carol", STRONG).await?.status(),
        200,
        "not unlocked on schedule"
    );
    let rows = audit_rows(cp).await?;
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "login_failed")
        .collect();
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|r| r["ip"] == "127.0.0.1"));
    assert!(failed.iter().any(|r| r["detail"]["reason"] == "locked"));
    sc.finish(&["login_failed", "login_succeeded", "user_disabled"])
        .await
}

/// Oversized passwords are refused before any hashing work; a long Unicode passphrase works; a
/// common password is refused at registration.
async fn oversized_and_unicode_passwords(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    let cp = &sc.cp;
    let (_, stats) = cp.api("GET", "/api/v1/system/stats", None).await?;
    let before = stats["password_hashing"].clone();
    let huge = "x".repeat(1024 * 1024);
    for path in ["/api/v1/auth/login", "/api/v1/auth/register"] {
        let (s, _, v) = cp
            .call(
                "POST",
                path,
                None,
                Some(json!({"username": "alice", "password": huge})),
            )
            .await?;
        assert_eq!(s, 413, "{path}: {v}");
    }
    let long = "y".repeat(2000);
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "longpw", "password": long})),
        )
        .await?;
    assert_eq!(s, 400, "{v}");
    let (s, _, _) = cp
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": long})),
        )
        .await?;
    assert_eq!(s, 401);
    let (_, stats) = cp.api("GET", "/api/v1/system/stats", None).await?;
    assert_eq!(
        stats["password_hashing"], before,
        "oversized passwords caused hashing work"
    );
    let unicode = "Ωμέγα-пароль-密码-パスワード-🦀-correct-horse-battery-staple-ünïcödé-äöü";
    assert_eq!(unicode.chars().count(), 64);
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "unicoder", "password": unicode})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(cp.login("unicoder", unicode).await?.status(), 200);
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "weakling", "password": "password1"})),
        )
        .await?;
    assert_eq!(s, 400, "common password accepted: {v}");
    sc.secrets.push(unicode.into());
    sc.finish(&["user_registered"]).await
}

/// Cookie mode for the dashboard: an HttpOnly refresh cookie, usable only with the CSRF token.
async fn cookie_refresh_requires_the_csrf_token(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    let r = sc
        .cp
        .http
        .post(format!("{}/api/v1/auth/login", sc.cp.admin_url))
        .json(&json!({"username": "alice", "password": STRONG, "cookie": true}))
        .send()
        .await?;
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body: Value = r.json().await?;
    assert!(
        body.get("refresh_token").is_none(),
        "refresh token must not be in the body"
    );
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("llmhub_refresh="))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/api/v1/auth"] {
        assert!(refresh_cookie.contains(attr), "{refresh_cookie}");
    }
    let cookie_pair = refresh_cookie.split(';').next().unwrap().to_owned();
    sc.secrets
        .push(cookie_pair.trim_start_matches("llmhub_refresh=").to_owned());
    if let Some(a) = body["access_token"].as_str() {
        sc.secrets.push(a.to_owned());
    }
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let cp = &sc.cp;
    let refresh_with = |csrf: Option<&str>| {
        let mut r = cp
            .http
            .post(format!("{}/api/v1/auth/refresh", cp.admin_url))
            .header("cookie", &cookie_pair);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(
        refresh_with(None).await?.status(),
        403,
        "refresh by cookie without CSRF token"
    );
    assert_eq!(refresh_with(Some("forged")).await?.status(), 403);
    assert_eq!(refresh_with(Some(&csrf)).await?.status(), 200);
    sc.finish(&["login_succeeded"]).await
}

/// The audit log filters by action, paginates by sequence number, and its hash chain pinpoints a
/// row changed behind the API's back.
async fn audit_log_filters_paginates_and_detects_tampering(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    sc.cp.create_user("alice", STRONG, "user").await?;
    let (a, _) = sc.sign_in("alice", STRONG).await?;
    let cp = &sc.cp;
    assert_eq!(cp.login("alice", "not-the-password").await?.status(), 401);
    assert_eq!(
        status_of(cp, "POST", "/api/v1/auth/logout", Some(&a)).await,
        204
    );
    let rows = audit_rows(cp).await?;
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "login_failed")
        .collect();
    assert!(failed.iter().all(|r| r["ip"] == "127.0.0.1"));
    // Filter and paginate.
    let (_, f) = cp.api("GET", "/api/v1/audit?action=logout", None).await?;
    assert!(!f["data"].as_array().unwrap().is_empty(), "{f}");
    assert!(
        f["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"] == "logout")
    );
    let (_, p1) = cp.api("GET", "/api/v1/audit?limit=2", None).await?;
    let next = p1["next_before"].as_i64().unwrap();
    let (_, p2) = cp
        .api("GET", &format!("/api/v1/audit?limit=2&before={next}"), None)
        .await?;
    assert!(p2["data"][0]["seq"].as_i64().unwrap() < next);

    let (_, v) = cp.api("GET", "/api/v1/audit/verify", None).await?;
    assert_eq!(v["ok"], true, "{v}");
    // Tamper with one row directly in the database: verify points at it.
    let victim = rows.iter().find(|r| r["action"] == "login_failed").unwrap()["seq"]
        .as_i64()
        .unwrap();
    {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(&cp.db.url).await?;
        db.execute_unprepared(&format!(
            "UPDATE audit_log SET outcome = 'success' WHERE seq = {victim}"
        ))
        .await?;
        db.close().await?;
    }
    let (_, v) = cp.api("GET", "/api/v1/audit/verify", None).await?;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_seq"], victim, "{v}");
    sc.finish(&[
        "user_bootstrapped",
        "user_created",
        "login_succeeded",
        "login_failed",
        "logout",
    ])
    .await
}

/// Many accounts from one address: the address is throttled (429) for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_spraying_throttles_the_address() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            login_ip_max_failures: Some(5),
            ..ControlOptions::default()
        },
    )
    .await?;
    for i in 0..5 {
        assert_eq!(
            cp.login(&format!("user{i}"), "Summer2024!").await?.status(),
            401
        );
    }
    let r = cp.login("admin", &cp.admin_password).await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    Ok(())
}

/// Two replicas share lockouts through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_login_counters() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Postgres,
        ControlOptions {
            login_max_failures: Some(2),
            login_lock_base: Some(Duration::from_secs(60)),
            ..ControlOptions::default()
        },
    )
    .await?;
    cp.create_user("erin", STRONG, "user").await?;
    let other = cp.replica().await?;
    assert_eq!(other.login("erin", "wrong-password-1").await?.status(), 401);
    assert_eq!(cp.login("erin", "wrong-password-2").await?.status(), 401);
    // Locked on both replicas now.
    assert_eq!(cp.login("erin", STRONG).await?.status(), 401);
    assert_eq!(other.login("erin", STRONG).await?.status(), 401);
    Ok(())
}

/// With Redis unreachable, login and the admin API fail closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_closed() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            redis: Redis::Url("redis://127.0.0.1:1".into()),
            ..ControlOptions::default()
        },
    )
    .await?;
    assert_eq!(cp.login("admin", &cp.admin_password).await?.status(), 503);
    let (s, _, _) = cp.call("GET", "/api/v1/providers", None, None).await?;
    assert_eq!(s, 503);
    // Health stays reachable for orchestrators.
    assert_eq!(cp.call("GET", "/healthz", None, None).await?.0, 200);
    Ok(())
}

/// Without Redis (the embedded default) the in-process counters still lock out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_counters_lock_out() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            redis: Redis::None,
            login_max_failures: Some(2),
            ..ControlOptions::default()
        },
    )
    .await?;
    let (_, stats) = cp.api("GET", "/api/v1/system/stats", None).await?;
    assert_eq!(stats["counters_shared"], false);
    cp.create_user("frank", STRONG, "user").await?;
    assert_eq!(cp.login("frank", "wrong-password-1").await?.status(), 401);
    assert_eq!(cp.login("frank", "wrong-password-2").await?.status(), 401);
    assert_eq!(cp.login("frank", STRONG).await?.status(), 401, "not locked");
    Ok(())
}

/// The admin listener over TLS sends HSTS; plain HTTP is not served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_tls() -> anyhow::Result<()> {
    install_crypto();
    // The control plane's own server certificate (SAN 127.0.0.1) serves the admin API too.
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            admin_tls: true,
            ..ControlOptions::default()
        },
    )
    .await?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cp.certs().join("ca.pem"))?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let r = client
        .get(format!("{}/api/v1/me", cp.admin_url))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()?
            .contains("max-age=")
    );
    let plain = cp.admin_url.replacen("https://", "http://", 1);
    assert!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "plain HTTP answered"
    );
    Ok(())
}

/// Admin-approved registration: a new account cannot sign in until an admin activates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_registration() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            registration: Some(Registration::Approval),
            ..ControlOptions::default()
        },
    )
    .await?;
    let (s, _, v) = cp
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"email": "Gina@Example.com", "password": STRONG})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["username"], "gina@example.com");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(cp.login("gina@example.com", STRONG).await?.status(), 401);
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{id}"),
            Some(json!({"status": "active"})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(cp.login("gina@example.com", STRONG).await?.status(), 200);
    let (_, audit) = cp
        .api("GET", "/api/v1/audit?action=user_approved", None)
        .await?;
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);
    // Closed registration is refused outright.
    let closed = ControlPlane::start(Backend::Sqlite).await?;
    let (s, _, _) = closed
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "hank", "password": STRONG})),
        )
        .await?;
    assert_eq!(s, 403);
    Ok(())
}

/// A login flood with one hashing slot: the excess gets 503 quickly, nothing crashes, and the
/// service answers normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_is_bounded() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            hash_concurrency: Some(1),
            login_ip_max_failures: Some(100_000),
            login_max_failures: Some(100_000),
            ..ControlOptions::default()
        },
    )
    .await?;
    let mut tasks = Vec::new();
    for i in 0..80 {
        let http = cp.http.clone();
        let url = format!("{}/api/v1/auth/login", cp.admin_url);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"username": format!("flood{i}"), "password": "not-a-real-password"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        *counts.entry(t.await?).or_default() += 1;
    }
    assert!(
        counts.get(&503).copied().unwrap_or(0) > 0,
        "no request was shed: {counts:?}"
    );
    assert!(counts.keys().all(|s| *s == 401 || *s == 503), "{counts:?}");
    let (_, stats) = cp.api("GET", "/api/v1/system/stats", None).await?;
    assert!(stats["password_hashing"]["rejected_busy"].as_u64().unwrap() > 0);
    Ok(())
}

/// Per-address and per-user admin API budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_rate_limits() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            admin_rate_limit_user: Some(5),
            admin_rate_limit_ip: Some(1000),
            ..ControlOptions::default()
        },
    )
    .await?;
    let mut last = 0;
    for _ in 0..6 {
        last = cp.api("GET", "/api/v1/me", None).await?.0;
    }
    assert_eq!(last, 429, "per-user limit not applied");
    let ip_limited = ControlPlane::start_with(
        Backend::Sqlite,
        ControlOptions {
            admin_rate_limit_ip: Some(3),
            ..ControlOptions::default()
        },
    )
    .await?;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            ip_limited
                .call("GET", "/api/v1/providers", None, None)
                .await?
                .0,
        );
    }
    assert_eq!(statuses, vec![401, 401, 401, 429]);
    Ok(())
}

on_both_backends!(login_failures_are_capped_per_account_across_addresses);

/// Wrong passwords for one account from ever new addresses: once the account-wide cap is reached
/// the account is throttled (429 + Retry-After) from every address, even with the right password,
/// and the throttle ends on its own.
async fn login_failures_are_capped_per_account_across_addresses(
    backend: Backend,
) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        backend,
        ControlOptions {
            trust_forwarded_for: true,
            login_lock_base: Some(Duration::from_secs(4)),
            ..login_options()
        },
    )
    .await?;
    let ivan = cp.create_user("ivan", STRONG, "user").await?;
    let login_from = |ip: String, password: &str| {
        cp.http
            .post(format!("{}/api/v1/auth/login", cp.admin_url))
            .header("x-forwarded-for", ip)
            .json(&login_body("ivan", password))
            .send()
    };
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for i in 0..101 {
        let r = login_from(
            format!("10.1.{}.{}", i / 200, i % 200 + 1),
            "not-the-password",
        )
        .await?;
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains_key(&429), "never throttled: {statuses:?}");
    let r = login_from("10.9.9.9".into(), STRONG).await?;
    assert_eq!(r.status(), 429, "the right password got through the cap");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        lockouts(&cp, &ivan).await.iter().any(|l| l["ip"] == "*"),
        "the account-wide throttle is not in the admin view"
    );
    // Not a permanent lock: it ends on its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = login_from("10.9.9.9".into(), STRONG).await?.status();
        if s == 200 {
            break;
        }
        assert_eq!(s, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "throttle never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

on_both_backends!(password_change_failures_count_like_login_failures);

/// Guessing the current password on the password-change endpoint is counted like failed logins:
/// after the limit even the right current password is refused until the lock ends by itself.
async fn password_change_failures_count_like_login_failures(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    let alice = sc.cp.create_user("alice", STRONG, "user").await?;
    let (a, _) = sc.sign_in("alice", STRONG).await?;
    let cp = &sc.cp;
    let change = |current: &str| {
        cp.call(
            "POST",
            "/api/v1/me/password",
            Some(&a),
            Some(json!({"current_password": current, "new_password": STRONG2})),
        )
    };
    for _ in 0..3 {
        let (s, _, v) = change("wrong-wrong-wrong").await?;
        assert_eq!(s, 403, "{v}");
    }
    let (s, h, v) = change(STRONG).await?;
    assert_eq!(s, 429, "right password accepted past the limit: {v}");
    assert!(h.contains_key("retry-after"));
    assert_eq!(lockouts(cp, &alice).await.len(), 1);
    wait_unlocked(cp, &alice).await;
    let (s, _, v) = change(STRONG).await?;
    assert_eq!(s, 204, "{v}");
    sc.finish(&["password_change_failed", "password_changed"])
        .await
}

on_both_backends!(approval_registration_does_not_reveal_taken_names);

/// In approval mode a taken username or email gets the same answer as a new one, and nothing is
/// created for it.
async fn approval_registration_does_not_reveal_taken_names(backend: Backend) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        backend,
        ControlOptions {
            registration: Some(Registration::Approval),
            ..ControlOptions::default()
        },
    )
    .await?;
    let register = |body: Value| cp.call("POST", "/api/v1/auth/register", None, Some(body));
    let (s, _, fresh) =
        register(json!({"username": "gina", "email": "gina@example.com", "password": STRONG}))
            .await?;
    assert_eq!(s, 201, "{fresh}");
    let (_, users_before) = cp.api("GET", "/api/v1/users", None).await?;
    let shape = |v: &Value| {
        let mut keys: Vec<(String, &'static str)> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), if v.is_string() { "string" } else { "other" }))
            .collect();
        keys.sort();
        keys
    };
    for (what, body) in [
        (
            "taken username",
            json!({"username": "gina", "password": STRONG2}),
        ),
        (
            "taken email",
            json!({"email": "GINA@example.com", "password": STRONG2}),
        ),
        (
            "the admin",
            json!({"username": "admin", "password": STRONG2}),
        ),
    ] {
        let (s, h, v) = register(body).await?;
        assert_eq!(s, 201, "{what}: {v}");
        assert_eq!(shape(&v), shape(&fresh), "{what}: {v}");
        assert_eq!(v["status"], "pending", "{what}");
        assert_ne!(v["id"], fresh["id"], "{what}");
        assert_eq!(h.get("content-type"), Some(&"application/json".parse()?));
    }
    let (_, users_after) = cp.api("GET", "/api/v1/users", None).await?;
    assert_eq!(
        users_before, users_after,
        "something was created for a taken name"
    );
    Ok(())
}

on_both_backends!(open_registration_is_bounded_per_address);

/// In open mode a taken name is still answered clearly, but one address may try only a bounded
/// number of registrations, and each attempt is logged.
async fn open_registration_is_bounded_per_address(backend: Backend) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(
        backend,
        ControlOptions {
            registration: Some(Registration::Open),
            ..ControlOptions::default()
        },
    )
    .await?;
    let register = |u: String, p: &str| {
        cp.call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": u, "password": p})),
        )
    };
    assert_eq!(register("dave".into(), STRONG).await?.0, 201);
    assert_eq!(register("dave".into(), STRONG2).await?.0, 409);
    let mut statuses = Vec::new();
    for i in 0..20 {
        // Weak passwords: refused before any hashing, but still attempts.
        statuses.push(register(format!("probe{i}"), "password1").await?.0);
    }
    let first_429 = statuses.iter().position(|s| *s == 429);
    assert!(first_429.is_some(), "never limited: {statuses:?}");
    assert!(
        statuses[first_429.unwrap()..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    let (s, h, _) = register("erin".into(), STRONG).await?;
    assert_eq!(s, 429);
    assert!(h.contains_key("retry-after"));
    assert!(
        cp.logs
            .text()
            .contains("\"event\":\"registration_attempt\""),
        "registration attempts are not logged"
    );
    Ok(())
}

on_both_backends!(refused_admin_calls_are_audited_and_bounded);

/// A user calling an admin endpoint is refused, audited as `access_denied` (with the route and
/// the actor) and logged; a flood of refusals writes a bounded number of rows.
async fn refused_admin_calls_are_audited_and_bounded(backend: Backend) -> anyhow::Result<()> {
    let mut sc = Scenario::start(backend).await?;
    let alice = sc.cp.create_user("alice", STRONG, "user").await?;
    let (a, _) = sc.sign_in("alice", STRONG).await?;
    let cp = &sc.cp;
    for _ in 0..50 {
        assert_eq!(status_of(cp, "GET", "/api/v1/users", Some(&a)).await, 403);
    }
    assert_eq!(status_of(cp, "GET", "/api/v1/audit", Some(&a)).await, 403);
    let (_, page) = cp
        .api("GET", "/api/v1/audit?action=access_denied&limit=1000", None)
        .await?;
    let rows = page["data"].as_array().unwrap();
    let users_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r["detail"]["path"] == "/api/v1/users")
        .collect();
    assert!(
        (1..=2).contains(&users_rows.len()),
        "{} rows for 50 refusals",
        users_rows.len()
    );
    let r = users_rows[0];
    assert_eq!(r["actor_user_id"], alice.as_str());
    assert_eq!(r["outcome"], "failure");
    assert_eq!(r["detail"]["method"], "GET");
    assert!(
        rows.iter().any(|r| r["detail"]["path"] == "/api/v1/audit"),
        "{rows:?}"
    );
    assert!(
        cp.logs.text().contains("\"event\":\"access_denied\""),
        "no access_denied log event"
    );
    sc.finish(&["access_denied"]).await
}

/// With no dashboard origin configured no CORS header at all is sent, to a preflight or to a
/// simple request carrying an `Origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_headers_without_dashboard_origins() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let preflight = cp
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/me", cp.admin_url),
        )
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await?;
    let simple = cp
        .http
        .get(format!("{}/api/v1/providers", cp.admin_url))
        .header("origin", "https://dash.example.com")
        .send()
        .await?;
    for (what, r) in [("preflight", preflight), ("simple", simple)] {
        let cors: Vec<&str> = r
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    }
    Ok(())
}
