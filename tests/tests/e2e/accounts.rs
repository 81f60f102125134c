//! Accounts, sessions, RBAC, login-abuse protection, web hardening and the audit log, against
//! the running control plane on Postgres and on SQLite (with Redis for shared counters).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use llmhub_e2e::harness::{Backend, ControlPlane, JWT_SECRET, bin, install_crypto};
use serde_json::{Value, json};

const STRONG: &str = "violet-otter-jumps-42-quietly";
const STRONG2: &str = "amber-falcon-sings-77-softly";

/// Login settings small enough to observe lockouts within a test.
const LOGIN_CFG: &str = "login_max_failures = 3\nlogin_lock_base_secs = 1\nlogin_lock_max_secs = 8\n\
    login_ip_max_failures = 1000\nregistration = \"open\"\n\
    dashboard_origins = \"https://dash.example.com\"\n";

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

/// Every endpoint in the router's own table: no token → 401, a user's token on an admin
/// endpoint → 403.
async fn every_route_enforces_its_access(
    cp: &ControlPlane,
    user_token: &str,
) -> anyhow::Result<()> {
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
            .replace("{key_id}", "00000000-0000-0000-0000-000000000001");
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
                    status_of(cp, method, &path, Some(user_token)).await,
                    403,
                    "{method} {path}"
                );
            }
            other => panic!("unknown access {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 20);
    Ok(())
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

async fn accounts_flow(backend: Backend) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(backend, LOGIN_CFG).await?;
    let mut secrets: Vec<String> = vec![cp.admin_password.clone(), STRONG.into(), STRONG2.into()];

    // --- security headers and CORS ---
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
        if allowed {
            assert_eq!(allow.unwrap(), origin);
        } else {
            assert!(allow.is_none(), "{origin} got {allow:?}");
        }
    }

    // --- users and RBAC ---
    cp.create_user("alice", STRONG, "user").await?;
    let bob = cp.create_user("bob", STRONG, "user").await?;
    let alice_t = cp.login_tokens("alice", STRONG).await?;
    let alice_access = alice_t["access_token"].as_str().unwrap().to_owned();
    secrets.push(alice_access.clone());
    secrets.push(alice_t["refresh_token"].as_str().unwrap().to_owned());
    every_route_enforces_its_access(&cp, &alice_access).await?;

    // Users manage only their own provider keys; another user's key is 404.
    let (_, p) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "p1", "kind": "openai", "base_url": "https://api.example.com/v1"})),
        )
        .await?;
    let pid = p["id"].as_str().unwrap().to_owned();
    let provider_secret = "sk-alice-own-key-0123456789";
    secrets.push(provider_secret.into());
    let (s, key, _) = cp
        .call(
            "POST",
            &format!("/api/v1/providers/{pid}/keys"),
            Some(&alice_access),
            Some(json!({"key": provider_secret})),
        )
        .await
        .map(|(s, h, v)| (s, v, h))?;
    assert_eq!(s, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let bob_t = cp.login_tokens("bob", STRONG).await?;
    let bob_access = bob_t["access_token"].as_str().unwrap().to_owned();
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

    // --- JWT validation ---
    let good = claims_of(&alice_access);
    assert_eq!(
        status_of(&cp, "GET", "/api/v1/me", Some(&alice_access)).await,
        200
    );
    assert_eq!(
        status_of(
            &cp,
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
            status_of(&cp, "GET", "/api/v1/me", Some(tok)).await,
            401,
            "{what} accepted"
        );
    }

    // --- refresh rotation and reuse detection ---
    let r1 = alice_t["refresh_token"].as_str().unwrap().to_owned();
    let (s, _, t2) = cp
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await?;
    assert_eq!(s, 200, "{t2}");
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    let a2 = t2["access_token"].as_str().unwrap().to_owned();
    secrets.extend([r2.clone(), a2.clone()]);
    assert_ne!(r1, r2);
    assert_eq!(status_of(&cp, "GET", "/api/v1/me", Some(&a2)).await, 200);
    // r1 again: reuse → the whole session is revoked.
    let (s, _, _) = cp
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await?;
    assert_eq!(s, 401);
    assert_eq!(
        status_of(&cp, "GET", "/api/v1/me", Some(&a2)).await,
        401,
        "session survived reuse"
    );
    let (s, _, _) = cp
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r2})),
        )
        .await?;
    assert_eq!(s, 401, "the family's newest token survived reuse");

    // --- logout revokes ---
    let t = cp.login_tokens("alice", STRONG).await?;
    let (a, r) = (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    secrets.extend([a.clone(), r.clone()]);
    assert_eq!(
        status_of(&cp, "POST", "/api/v1/auth/logout", Some(&a)).await,
        204
    );
    assert_eq!(status_of(&cp, "GET", "/api/v1/me", Some(&a)).await, 401);
    let (s, _, _) = cp
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r})),
        )
        .await?;
    assert_eq!(s, 401);

    // --- password change revokes every session ---
    let s1 = cp.login_tokens("bob", STRONG).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let s2 = cp.login_tokens("bob", STRONG).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.extend([s1.clone(), s2.clone()]);
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
        assert_eq!(status_of(&cp, "GET", "/api/v1/me", Some(t)).await, 401);
    }
    assert_eq!(cp.login("bob", STRONG).await?.status(), 401);
    let bob_new = cp.login_tokens("bob", STRONG2).await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.push(bob_new.clone());

    // --- role change and disabling end sessions ---
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/users/{bob}"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        status_of(&cp, "GET", "/api/v1/me", Some(&bob_new)).await,
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

    // --- identical answers: unknown user, wrong password, locked, disabled ---
    let carol = cp.create_user("carol", STRONG, "user").await?;
    let mut answers: HashMap<&str, (u16, String, Value)> = HashMap::new();
    let answer = |r: (u16, reqwest::header::HeaderMap, Value)| {
        let www =
            r.1.get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
        (r.0, www, r.2)
    };
    let login = |u: &str, p: &str| json!({"username": u, "password": p});
    answers.insert(
        "unknown",
        answer(
            cp.call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(login("nobody-here", STRONG)),
            )
            .await?,
        ),
    );
    answers.insert(
        "wrong",
        answer(
            cp.call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(login("alice", "not-the-password")),
            )
            .await?,
        ),
    );
    answers.insert(
        "disabled",
        answer(
            cp.call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(login("bob", STRONG2)),
            )
            .await?,
        ),
    );
    for _ in 0..3 {
        cp.call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(login("carol", "not-the-password")),
        )
        .await?;
    }
    answers.insert(
        "locked",
        answer(
            cp.call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(login("carol", STRONG)),
            )
            .await?,
        ),
    );
    let first = answers["unknown"].clone();
    assert_eq!(first.0, 401);
    for (k, v) in &answers {
        assert_eq!(v, &first, "{k} differs from unknown user");
    }

    // --- lockout: growth and unlock on schedule ---
    let l = lockouts(&cp, &carol).await;
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0]["lock_count"].as_u64(), l[0]["ip"].as_str()),
        (Some(1), Some("127.0.0.1"))
    );
    assert!(l[0]["remaining_secs"].as_u64().unwrap() <= 1);
    wait_unlocked(&cp, &carol).await;
    for _ in 0..3 {
        cp.call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(login("carol", "not-the-password")),
        )
        .await?;
    }
    let l = lockouts(&cp, &carol).await;
    assert_eq!(l[0]["lock_count"], 2, "{l:?}");
    assert_eq!(l[0]["remaining_secs"], 2, "second lockout doubles: {l:?}");
    assert_eq!(
        cp.login("carol", STRONG).await?.status(),
        401,
        "locked account let in"
    );
    wait_unlocked(&cp, &carol).await;
    assert_eq!(
        cp.login("carol", STRONG).await?.status(),
        200,
        "not unlocked on schedule"
    );

    // --- oversized and Unicode passwords ---
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
    secrets.push(unicode.into());
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

    // --- cookie mode for the dashboard: HttpOnly refresh cookie + CSRF ---
    let r = cp
        .http
        .post(format!("{}/api/v1/auth/login", cp.admin_url))
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
    secrets.push(cookie_pair.trim_start_matches("llmhub_refresh=").to_owned());
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
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

    // --- the audit log ---
    let (s, page) = cp.api("GET", "/api/v1/audit?limit=1000", None).await?;
    assert_eq!(s, 200);
    let rows = page["data"].as_array().unwrap().clone();
    let actions: std::collections::HashSet<&str> =
        rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in [
        "user_bootstrapped",
        "login_succeeded",
        "login_failed",
        "logout",
        "refresh_token_reuse",
        "user_created",
        "user_role_changed",
        "user_disabled",
        "user_registered",
        "password_changed",
        "password_change_failed",
        "provider_created",
        "provider_disabled",
        "provider_enabled",
        "provider_key_created",
        "provider_key_deleted",
    ] {
        assert!(actions.contains(a), "no audit row for {a}: {actions:?}");
    }
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "login_failed")
        .collect();
    assert!(failed.iter().all(|r| r["ip"] == "127.0.0.1"));
    assert!(failed.iter().any(|r| r["detail"]["reason"] == "locked"));
    let text = page.to_string();
    for sec in &secrets {
        assert!(!text.contains(sec.as_str()), "a secret is in the audit log");
    }
    // Filter and paginate.
    let (_, f) = cp.api("GET", "/api/v1/audit?action=logout", None).await?;
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

    // Secrets never reached the logs either. (The bootstrap password is printed once on stdout
    // by design; that line is not a log line.)
    let logs: String = cp
        .logs
        .text()
        .lines()
        .filter(|l| !l.contains("\"event\":\"bootstrap_admin\""))
        .collect::<Vec<_>>()
        .join("\n");
    for (i, sec) in secrets.iter().enumerate() {
        assert!(!logs.contains(sec.as_str()), "secret #{i} is in the logs");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_sqlite() -> anyhow::Result<()> {
    accounts_flow(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_postgres() -> anyhow::Result<()> {
    accounts_flow(Backend::Postgres).await
}

/// Many accounts from one address: the address is throttled (429) for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_spraying_throttles_the_address() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(Backend::Sqlite, "login_ip_max_failures = 5\n").await?;
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
        "login_max_failures = 2\nlogin_lock_base_secs = 60\n",
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
    let cp =
        ControlPlane::start_with(Backend::Sqlite, "redis_url = \"redis://127.0.0.1:1\"\n").await?;
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
    let cp =
        ControlPlane::start_with(Backend::Sqlite, "# no-redis\nlogin_max_failures = 2\n").await?;
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
    let certs_hint =
        "admin_tls_cert = \"@CERTS@/control.pem\"\nadmin_tls_key = \"@CERTS@/control.key\"\n";
    let cp = ControlPlane::start_with(Backend::Sqlite, certs_hint).await?;
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
    let cp = ControlPlane::start_with(Backend::Sqlite, "registration = \"approval\"\n").await?;
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
        "hash_concurrency = 1\nlogin_ip_max_failures = 100000\nlogin_max_failures = 100000\n",
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
        "admin_rate_limit_user = 5\nadmin_rate_limit_ip = 1000\n",
    )
    .await?;
    let mut last = 0;
    for _ in 0..6 {
        last = cp.api("GET", "/api/v1/me", None).await?.0;
    }
    assert_eq!(last, 429, "per-user limit not applied");
    let ip_limited = ControlPlane::start_with(Backend::Sqlite, "admin_rate_limit_ip = 3\n").await?;
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
