//! The store's contract, run as one suite against every supported backend: a real SQLite file and
//! a real, uniquely named Postgres database (created through `LLMHUB_TEST_PG_URL`'s server and
//! dropped afterwards; skipped with a note when that variable is unset).
//!
//! Each case is an `async fn(&TestDb)`; `suite!` turns it into `<case>_sqlite` and
//! `<case>_postgres`, so both backends run identical assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use chrono::{DateTime, Duration, Utc};
use llmhub_control::store::entities::routing_records;
use llmhub_control::store::sessions::RefreshOutcome;
use llmhub_control::store::vault_rows::SealedRow;
use llmhub_control::store::{
    Actor, AuditEvent, AuditFilter, AuditKey, BudgetSetting, ClientKeyChange, KeyChange, KeyState,
    Limits, LimitsChange, NewClientKey, NewModelPrice, NewProvider, NewProviderKey, NewRouteTarget,
    NewRoutingRecord, NewUser, ProviderChange, RecordCursor, RecordFilter, Rotation, RouteChange,
    SpendOwner, StatusFilter, Store, StoreError, UsageFilter, UsageGroup, UsageRow, UserChange,
    UserStatus,
};
use llmhub_providers::BudgetPeriod;
use sea_orm::{ConnectionTrait, DbBackend};

// ---- backends ----

/// One test's database; a Postgres database is dropped when this is.
struct TestDb {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Runs outside the test's runtime, on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = sea_orm::Database::connect(admin_url).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

fn audit_key() -> AuditKey {
    AuditKey(zeroize::Zeroizing::new([7u8; 32]))
}

async fn open(url: String) -> Store {
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    assert!(store.pending_migrations().await.unwrap().is_empty());
    store.ping().await.unwrap();
    store.with_audit_key(audit_key())
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    );
    let store = open(url.clone()).await;
    assert_eq!(store.backend(), DbBackend::Sqlite);
    TestDb {
        store,
        url,
        _dir: Some(dir),
        _pg: None,
    }
}

async fn postgres(case: &str) -> Option<TestDb> {
    let (url, pg) = pg_database(case).await?;
    let store = open(url.clone()).await;
    assert_eq!(store.backend(), DbBackend::Postgres);
    Some(TestDb {
        store,
        url,
        _dir: None,
        _pg: Some(pg),
    })
}

/// A new, empty Postgres database: its URL, and the guard that drops it.
async fn pg_database(case: &str) -> Option<(String, PgDatabase)> {
    let Ok(admin_url) = std::env::var("LLMHUB_TEST_PG_URL") else {
        eprintln!("{case}_postgres: skipped, LLMHUB_TEST_PG_URL is not set");
        return None;
    };
    let name = format!("llmhub_store_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(admin_url.as_str())
        .await
        .expect("connecting to LLMHUB_TEST_PG_URL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let pg = PgDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let (head, _) = admin_url
        .rsplit_once('/')
        .expect("LLMHUB_TEST_PG_URL names a database");
    Some((format!("{head}/{name}"), pg))
}

macro_rules! suite {
    ($($case:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test]
        async fn $sqlite() {
            $case(&sqlite().await).await;
        }

        #[tokio::test]
        async fn $postgres() {
            if let Some(db) = postgres(stringify!($case)).await {
                $case(&db).await;
            }
        }
    )*};
}

suite! {
    users_crud => users_crud_sqlite, users_crud_postgres;
    sessions_rotate => sessions_rotate_sqlite, sessions_rotate_postgres;
    providers_crud => providers_crud_sqlite, providers_crud_postgres;
    provider_keys_crud => provider_keys_crud_sqlite, provider_keys_crud_postgres;
    client_keys_owned => client_keys_owned_sqlite, client_keys_owned_postgres;
    routes_crud => routes_crud_sqlite, routes_crud_postgres;
    routes_update_and_delete => routes_update_and_delete_sqlite, routes_update_and_delete_postgres;
    providers_update_and_delete => providers_update_and_delete_sqlite, providers_update_and_delete_postgres;
    client_keys_edit_and_rotate => client_keys_edit_and_rotate_sqlite, client_keys_edit_and_rotate_postgres;
    user_limits => user_limits_sqlite, user_limits_postgres;
    routing_records_idempotent => routing_records_idempotent_sqlite, routing_records_idempotent_postgres;
    routing_records_filters_and_pages => routing_records_filters_and_pages_sqlite, routing_records_filters_and_pages_postgres;
    usage_grouping => usage_grouping_sqlite, usage_grouping_postgres;
    records_retention => records_retention_sqlite, records_retention_postgres;
    model_prices_crud => model_prices_crud_sqlite, model_prices_crud_postgres;
    key_health => key_health_sqlite, key_health_postgres;
    settings_and_vault_rows => settings_and_vault_rows_sqlite, settings_and_vault_rows_postgres;
    audit_chain => audit_chain_sqlite, audit_chain_postgres;
}

// ---- helpers ----

fn actor() -> Actor {
    Actor {
        user_id: Some("admin-id".into()),
        ip: "127.0.0.1".into(),
        user_agent: "store-tests".into(),
    }
}

fn ev(action: &'static str, target_type: &'static str) -> AuditEvent {
    AuditEvent::new(&actor(), action, target_type)
}

fn new_user(username: &str, role: &'static str, status: UserStatus) -> NewUser {
    NewUser {
        username: username.into(),
        email: Some(format!("{username}@example.com")),
        password_hash: "$argon2id$placeholder".into(),
        role,
        status,
    }
}

async fn user(store: &Store, username: &str) -> String {
    store
        .create_user(
            new_user(username, "user", UserStatus::Active),
            ev("user_created", "user"),
        )
        .await
        .unwrap()
        .id
}

async fn provider(store: &Store, name: &str) -> String {
    store
        .create_provider(
            NewProvider {
                name: name.into(),
                kind: "openai",
                base_url: "https://api.example.com/v1".into(),
                enabled: true,
                request_timeout_ms: 30_000,
                preset: None,
                api_version: None,
            },
            ev("provider_created", "provider"),
        )
        .await
        .unwrap()
        .id
}

fn new_key(provider_id: &str, owner: Option<&str>, fingerprint: &str) -> NewProviderKey {
    NewProviderKey {
        id: uuid::Uuid::new_v4().to_string(),
        provider_id: provider_id.into(),
        owner_user_id: owner.map(str::to_owned),
        sealed: format!("sealed-{fingerprint}").into_bytes(),
        key_version: 1,
        fingerprint: fingerprint.into(),
        mask: "sk-****abcd".into(),
        label: format!("label-{fingerprint}"),
        weight: 1,
        allowed_models: vec![],
        rpm_limit: None,
        tpm_limit: None,
    }
}

async fn key(store: &Store, provider_id: &str, owner: Option<&str>, fp: &str) -> String {
    store
        .insert_provider_key(
            new_key(provider_id, owner, fp),
            ev("provider_key_created", "provider_key"),
        )
        .await
        .unwrap()
        .id
}

fn new_client_key(user_id: &str, name: &str) -> NewClientKey {
    NewClientKey {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user_id.into(),
        name: name.into(),
        key_hash: format!("hash-{user_id}-{name}").into_bytes(),
        prefix: "lh-abcdef".into(),
        allowed_models: vec!["gpt-x".into()],
        use_shared_pool: true,
        expires_at: None,
        limits: LimitsChange::default(),
    }
}

/// Audit rows with `action`, newest first.
async fn audit_rows(
    store: &Store,
    action: &str,
) -> Vec<llmhub_control::store::entities::audit_log::Model> {
    store
        .audit_rows(AuditFilter {
            action: Some(action.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn audit_count(store: &Store) -> usize {
    store
        .audit_rows(AuditFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

fn is_conflict(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match r {
        Err(StoreError::Conflict(w)) => assert_eq!(w, what),
        other => panic!("expected a {what} conflict, got {other:?}"),
    }
}

fn is_not_found(r: Result<impl std::fmt::Debug, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::NotFound)),
        "expected not found, got {r:?}"
    );
}

/// Timestamps as both backends keep them (Postgres: microseconds).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

// ---- cases ----

async fn users_crud(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    let alice = s
        .create_user(
            new_user("alice", "user", UserStatus::Active),
            ev("user_created", "user"),
        )
        .await
        .unwrap();
    assert_eq!(alice.status, "active");
    assert_eq!(alice.user_status(), Some(UserStatus::Active));
    assert!(alice.is_active());
    assert_eq!(alice.token_version, 0);
    assert!(alice.shared_pool_access);
    let row = &audit_rows(s, "user_created").await[0];
    assert_eq!(row.target_id, alice.id);
    assert_eq!(row.actor_user_id.as_deref(), Some("admin-id"));

    // Reads: by id, by username, by email (case-insensitive on the email only).
    assert_eq!(s.user_by_id(&alice.id).await.unwrap().unwrap(), alice);
    assert_eq!(
        s.user_by_login("alice").await.unwrap().unwrap().id,
        alice.id
    );
    assert_eq!(
        s.user_by_login("ALICE@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        alice.id
    );
    assert!(s.user_by_login("nobody").await.unwrap().is_none());
    assert!(s.user_by_id("no-such-id").await.unwrap().is_none());

    // Username and email are unique; a refused insert writes no audit row.
    let before = audit_count(s).await;
    is_conflict(
        s.create_user(
            new_user("alice", "user", UserStatus::Active),
            ev("user_created", "user"),
        )
        .await,
        "user",
    );
    let mut same_email = new_user("alice2", "user", UserStatus::Active);
    same_email.email = Some("alice@example.com".into());
    is_conflict(
        s.create_user(same_email, ev("user_created", "user")).await,
        "user",
    );
    assert_eq!(audit_count(s).await, before);

    // Ordered by username; admins counted only when active.
    s.create_user(
        new_user("root", "admin", UserStatus::Active),
        ev("user_created", "user"),
    )
    .await
    .unwrap();
    let waiting = s
        .create_user(
            new_user("aaron", "admin", UserStatus::Pending),
            ev("user_created", "user"),
        )
        .await
        .unwrap();
    assert_eq!(waiting.user_status(), Some(UserStatus::Pending));
    assert!(!waiting.is_active());
    let names: Vec<String> = s
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["aaron", "alice", "root"]);
    assert_eq!(s.count_users().await.unwrap(), 3);
    assert_eq!(s.count_active_admins().await.unwrap(), 1);

    // Update: status and role change, token version moves.
    let updated = s
        .update_user(
            &waiting.id,
            UserChange {
                status: Some(UserStatus::Active),
                ..Default::default()
            },
            ev("user_approved", "user"),
        )
        .await
        .unwrap();
    assert_eq!(updated.status, "active");
    assert_eq!(updated.token_version, 1);
    assert_eq!(s.count_active_admins().await.unwrap(), 2);
    let updated = s
        .update_user(
            &alice.id,
            UserChange {
                role: Some("admin"),
                status: Some(UserStatus::Disabled),
                shared_pool_access: Some(false),
            },
            ev("user_updated", "user"),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.role.as_str(), updated.status.as_str()),
        ("admin", "disabled")
    );
    assert!(!updated.shared_pool_access);
    assert_eq!(updated.user_status(), Some(UserStatus::Disabled));
    let row = &audit_rows(s, "user_updated").await[0];
    let detail: serde_json::Value = serde_json::from_str(&row.detail).unwrap();
    assert_eq!(detail["status"]["from"], "active");
    assert_eq!(detail["status"]["to"], "disabled");
    is_not_found(
        s.update_user(
            "no-such-id",
            UserChange::default(),
            ev("user_updated", "user"),
        )
        .await,
    );

    // Password: a change ends sessions (token version), a re-hash does not.
    s.set_password_hash(&alice.id, "h2", false, None)
        .await
        .unwrap();
    let u = s.user_by_id(&alice.id).await.unwrap().unwrap();
    assert_eq!((u.password_hash.as_str(), u.token_version), ("h2", 1));
    s.set_password_hash(&alice.id, "h3", true, Some(ev("password_changed", "user")))
        .await
        .unwrap();
    let u = s.user_by_id(&alice.id).await.unwrap().unwrap();
    assert_eq!((u.password_hash.as_str(), u.token_version), ("h3", 2));
    assert_eq!(
        audit_rows(s, "password_changed").await[0].target_id,
        alice.id
    );
    is_not_found(s.set_password_hash("no-such-id", "h", true, None).await);

    // Delete.
    s.delete_user(&alice.id, ev("user_deleted", "user"))
        .await
        .unwrap();
    assert!(s.user_by_id(&alice.id).await.unwrap().is_none());
    is_not_found(s.delete_user(&alice.id, ev("user_deleted", "user")).await);
    assert_eq!(audit_rows(s, "user_deleted").await.len(), 1);
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn sessions_rotate(db: &TestDb) {
    let s = &db.store;
    let uid = user(s, "alice").await;
    let ttl = Duration::hours(1);
    let session = s
        .create_session(
            &uid,
            "10.0.0.1",
            "ua",
            ttl,
            b"r1".to_vec(),
            ev("login_succeeded", "user"),
        )
        .await
        .unwrap();
    assert_eq!(s.session(&session.id).await.unwrap().unwrap().user_id, uid);
    assert!(s.session("no-such-id").await.unwrap().is_none());
    assert_eq!(
        s.session_for_refresh(b"r1").await.unwrap().as_deref(),
        Some(session.id.as_str())
    );

    // Each token is exchanged once; presenting a used one revokes the session.
    let reuse = || ev("refresh_token_reuse", "user").failure();
    assert!(matches!(
        s.rotate_refresh(b"r1", b"r2".to_vec(), reuse()).await.unwrap(),
        RefreshOutcome::Rotated(x) if x.id == session.id
    ));
    assert!(matches!(
        s.rotate_refresh(b"nope", b"r9".to_vec(), reuse())
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    ));
    assert!(matches!(
        s.rotate_refresh(b"r1", b"r3".to_vec(), reuse())
            .await
            .unwrap(),
        RefreshOutcome::Reused(_)
    ));
    assert_eq!(audit_rows(s, "refresh_token_reuse").await.len(), 1);
    let revoked = s.session(&session.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_reason.as_deref(), Some("refresh_reuse"));
    assert!(matches!(
        s.rotate_refresh(b"r2", b"r4".to_vec(), reuse())
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    ));

    // Logout ends one session once; a user change ends all of them.
    let a = s
        .create_session(
            &uid,
            "ip",
            "ua",
            ttl,
            b"a1".to_vec(),
            ev("login_succeeded", "user"),
        )
        .await
        .unwrap();
    let b = s
        .create_session(
            &uid,
            "ip",
            "ua",
            ttl,
            b"b1".to_vec(),
            ev("login_succeeded", "user"),
        )
        .await
        .unwrap();
    assert!(
        s.revoke_session(&a.id, "logout", ev("logout", "user"))
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_session(&a.id, "logout", ev("logout", "user"))
            .await
            .unwrap()
    );
    s.update_user(
        &uid,
        UserChange {
            shared_pool_access: Some(false),
            ..Default::default()
        },
        ev("user_updated", "user"),
    )
    .await
    .unwrap();
    let b = s.session(&b.id).await.unwrap().unwrap();
    assert_eq!(b.revoked_reason.as_deref(), Some("user_changed"));
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn providers_crud(db: &TestDb) {
    let s = &db.store;
    let zeta = provider(s, "zeta").await;
    let p = s
        .create_provider(
            NewProvider {
                name: "alpha".into(),
                kind: "azure-openai",
                base_url: "https://x.openai.azure.com/openai".into(),
                enabled: false,
                request_timeout_ms: u32::MAX,
                preset: Some("custom".into()),
                api_version: Some("2024-10-21".into()),
            },
            ev("provider_created", "provider"),
        )
        .await
        .unwrap();
    assert_eq!(p.kind, "azure-openai");
    assert_eq!(p.request_timeout_ms, i32::MAX);
    assert_eq!(p.api_version.as_deref(), Some("2024-10-21"));
    assert!(!p.enabled);
    assert_eq!(s.provider(&p.id).await.unwrap(), p);
    is_not_found(s.provider("no-such-id").await);

    let before = audit_count(s).await;
    is_conflict(
        s.create_provider(
            NewProvider {
                name: "zeta".into(),
                kind: "openai",
                base_url: "https://other".into(),
                enabled: true,
                request_timeout_ms: 1000,
                preset: None,
                api_version: None,
            },
            ev("provider_created", "provider"),
        )
        .await,
        "provider",
    );
    assert_eq!(audit_count(s).await, before);

    let names: Vec<String> = s
        .providers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);

    let off = s
        .update_provider(
            &zeta,
            ProviderChange {
                enabled: Some(false),
                ..Default::default()
            },
            ev("provider_disabled", "provider"),
        )
        .await
        .unwrap();
    assert!(!off.enabled);
    assert!(!s.provider(&zeta).await.unwrap().enabled);
    assert_eq!(audit_rows(s, "provider_disabled").await[0].target_id, zeta);
    is_not_found(
        s.update_provider(
            "no-such-id",
            ProviderChange {
                enabled: Some(true),
                ..Default::default()
            },
            ev("provider_enabled", "provider"),
        )
        .await,
    );
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn provider_keys_crud(db: &TestDb) {
    let s = &db.store;
    let p1 = provider(s, "p1").await;
    let p2 = provider(s, "p2").await;
    let alice = user(s, "alice").await;

    let mut nk = new_key(&p1, Some(&alice), "fp_a");
    nk.weight = 3;
    nk.allowed_models = vec!["gpt-x".into(), "gpt-y".into()];
    nk.rpm_limit = Some(60);
    nk.tpm_limit = Some(u32::MAX);
    let dup_id = nk.id.clone();
    let k = s
        .insert_provider_key(nk, ev("provider_key_created", "provider_key"))
        .await
        .unwrap();
    assert_eq!(k.key_state(), Some(KeyState::Active));
    assert_eq!(k.state, "active");
    assert_eq!(k.sealed, b"sealed-fp_a");
    assert_eq!(
        (k.weight, k.rpm_limit, k.tpm_limit),
        (3, Some(60), Some(i32::MAX))
    );
    assert_eq!(
        llmhub_control::store::parse_list(&k.allowed_models),
        ["gpt-x", "gpt-y"]
    );
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "provider_key_created").await[0].detail).unwrap();
    assert_eq!(detail["pool"], "user");
    assert_eq!(detail["fingerprint"], "fp_a");
    assert!(!detail.to_string().contains("sealed"));

    let shared = key(s, &p1, None, "fp_s").await;
    let other = key(s, &p2, None, "fp_o").await;
    assert_eq!(s.provider_key(&k.id).await.unwrap(), k);
    is_not_found(s.provider_key("no-such-id").await);

    // A duplicate id is a conflict; a key for a missing provider is refused; neither is audited.
    let before = audit_count(s).await;
    let mut again = new_key(&p1, None, "fp_dup");
    again.id = dup_id;
    is_conflict(
        s.insert_provider_key(again, ev("provider_key_created", "provider_key"))
            .await,
        "record",
    );
    assert!(
        s.insert_provider_key(
            new_key("no-such-provider", None, "fp_x"),
            ev("provider_key_created", "provider_key")
        )
        .await
        .is_err()
    );
    assert_eq!(audit_count(s).await, before);

    // Lists: per provider, in creation order.
    let ids: Vec<String> = s
        .provider_keys_of(&p1)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, [k.id.clone(), shared.clone()]);
    let ids: Vec<String> = s
        .provider_keys_of(&p2)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, [other.as_str()]);
    assert_eq!(s.provider_keys().await.unwrap().len(), 3);

    // Update: only what is given changes; `Some(None)` removes a limit.
    let u = s
        .update_provider_key(
            &k.id,
            KeyChange {
                label: Some("renamed".into()),
                rpm_limit: Some(None),
                ..Default::default()
            },
            ev("provider_key_updated", "provider_key"),
        )
        .await
        .unwrap();
    assert_eq!(u.label, "renamed");
    assert_eq!(
        (u.weight, u.rpm_limit, u.tpm_limit),
        (3, None, Some(i32::MAX))
    );
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "provider_key_updated").await[0].detail).unwrap();
    assert_eq!(detail["changed"], serde_json::json!(["label", "rpm_limit"]));
    is_not_found(
        s.update_provider_key(
            "no-such-id",
            KeyChange::default(),
            ev("provider_key_updated", "provider_key"),
        )
        .await,
    );

    // Test results and reported use.
    let t = s
        .record_key_test(
            &k.id,
            "invalid_key",
            Some("invalid_key"),
            ev("provider_key_tested", "provider_key"),
        )
        .await
        .unwrap();
    assert_eq!(t.last_test_result.as_deref(), Some("invalid_key"));
    assert_eq!(t.last_error_class.as_deref(), Some("invalid_key"));
    assert!(t.last_tested_at.is_some());
    let t = s
        .record_key_test(&k.id, "ok", None, ev("provider_key_tested", "provider_key"))
        .await
        .unwrap();
    assert_eq!(t.last_test_result.as_deref(), Some("ok"));
    assert_eq!(t.last_error_class.as_deref(), Some("invalid_key"));
    is_not_found(
        s.record_key_test(
            "no-such-id",
            "ok",
            None,
            ev("provider_key_tested", "provider_key"),
        )
        .await,
    );
    let at = Utc::now() - Duration::minutes(5);
    s.touch_provider_key(&k.id, at, Some("rate_limited"))
        .await
        .unwrap();
    let t = s.provider_key(&k.id).await.unwrap();
    assert_eq!(t.last_used_at.map(micros), Some(micros(at)));
    assert_eq!(t.last_error_class.as_deref(), Some("rate_limited"));
    s.touch_provider_key(&k.id, at, None).await.unwrap();
    assert_eq!(s.provider_key(&k.id).await.unwrap().last_error_class, None);

    // Delete; a user's keys go with the user, the shared pool stays.
    s.delete_provider_key(&other, ev("provider_key_deleted", "provider_key"))
        .await
        .unwrap();
    is_not_found(s.provider_key(&other).await);
    is_not_found(
        s.delete_provider_key(&other, ev("provider_key_deleted", "provider_key"))
            .await,
    );
    s.delete_user(&alice, ev("user_deleted", "user"))
        .await
        .unwrap();
    is_not_found(s.provider_key(&k.id).await);
    assert_eq!(s.provider_key(&shared).await.unwrap().owner_user_id, None);
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn client_keys_owned(db: &TestDb) {
    let s = &db.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let expires = Utc::now() + Duration::days(30);
    let mut nk = new_client_key(&alice, "laptop");
    nk.expires_at = Some(expires);
    let a1 = s
        .insert_client_key(nk, ev("client_key_created", "client_key"))
        .await
        .unwrap();
    assert!(a1.enabled && a1.revoked_at.is_none() && a1.use_shared_pool);
    assert_eq!(a1.expires_at.map(micros), Some(micros(expires)));
    assert_eq!(
        llmhub_control::store::parse_list(&a1.allowed_models),
        ["gpt-x"]
    );
    let a2 = s
        .insert_client_key(
            new_client_key(&alice, "ci"),
            ev("client_key_created", "client_key"),
        )
        .await
        .unwrap();
    let b1 = s
        .insert_client_key(
            new_client_key(&bob, "laptop"),
            ev("client_key_created", "client_key"),
        )
        .await
        .unwrap();

    // The key hash is unique; a key needs an existing user.
    let before = audit_count(s).await;
    is_conflict(
        s.insert_client_key(
            new_client_key(&alice, "laptop"),
            ev("client_key_created", "client_key"),
        )
        .await,
        "record",
    );
    assert!(
        s.insert_client_key(
            new_client_key("no-such-user", "x"),
            ev("client_key_created", "client_key")
        )
        .await
        .is_err()
    );
    assert_eq!(audit_count(s).await, before);

    // Each user sees only their own keys, in creation order.
    let of = |v: Vec<llmhub_control::store::entities::client_keys::Model>| -> Vec<String> {
        v.into_iter().map(|k| k.id).collect()
    };
    assert_eq!(
        of(s.client_keys_of(&alice).await.unwrap()),
        [a1.id.clone(), a2.id.clone()]
    );
    assert_eq!(of(s.client_keys_of(&bob).await.unwrap()), [b1.id.as_str()]);
    assert_eq!(s.client_keys().await.unwrap().len(), 3);

    // Another user's key is not found; revoking twice is not found; neither is audited.
    is_not_found(
        s.revoke_client_key(&bob, &a1.id, ev("client_key_revoked", "client_key"))
            .await,
    );
    assert!(audit_rows(s, "client_key_revoked").await.is_empty());
    s.revoke_client_key(&alice, &a1.id, ev("client_key_revoked", "client_key"))
        .await
        .unwrap();
    is_not_found(
        s.revoke_client_key(&alice, &a1.id, ev("client_key_revoked", "client_key"))
            .await,
    );
    let rows = audit_rows(s, "client_key_revoked").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].target_id, a1.id);
    let revoked = s
        .client_keys_of(&alice)
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id == a1.id)
        .unwrap();
    assert!(!revoked.enabled && revoked.revoked_at.is_some());
    let untouched = s.client_keys_of(&bob).await.unwrap();
    assert!(untouched[0].enabled && untouched[0].revoked_at.is_none());
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn routes_crud(db: &TestDb) {
    let s = &db.store;
    let p1 = provider(s, "p1").await;
    let p2 = provider(s, "p2").await;
    let target = |p: &str, model: &str, weight, priority| NewRouteTarget {
        provider_id: p.into(),
        upstream_model: model.into(),
        weight,
        priority,
    };
    let r = s
        .create_route(
            "gpt-x",
            "latency",
            &["gx".into(), "gpt-x-latest".into()],
            vec![target(&p1, "up-a", 2, 1), target(&p2, "up-b", 1, 0)],
            ev("route_created", "route"),
        )
        .await
        .unwrap();
    assert_eq!(r.route.strategy, "latency");
    assert_eq!(r.targets.len(), 2);
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "route_created").await[0].detail).unwrap();
    assert_eq!(detail["targets"], 2);
    s.create_route(
        "alpha",
        "weighted",
        &[],
        vec![target(&p1, "up-c", 1, 0)],
        ev("route_created", "route"),
    )
    .await
    .unwrap();

    // Conflicts and bad targets leave nothing behind (route and targets are one transaction).
    let before = audit_count(s).await;
    is_conflict(
        s.create_route(
            "gpt-x",
            "weighted",
            &[],
            vec![target(&p1, "up-z", 1, 0)],
            ev("route_created", "route"),
        )
        .await,
        "route",
    );
    assert!(
        s.create_route(
            "beta",
            "weighted",
            &[],
            vec![
                target(&p1, "ok", 1, 0),
                target("no-such-provider", "up", 1, 1)
            ],
            ev("route_created", "route"),
        )
        .await
        .is_err()
    );
    assert_eq!(audit_count(s).await, before);

    // Listed by public name, targets by priority.
    let routes = s.routes().await.unwrap();
    let names: Vec<&str> = routes
        .iter()
        .map(|r| r.route.public_model.as_str())
        .collect();
    assert_eq!(names, ["alpha", "gpt-x"]);
    let gx = &routes[1];
    assert_eq!(
        llmhub_control::store::parse_list(&gx.route.aliases),
        ["gx", "gpt-x-latest"]
    );
    let models: Vec<(&str, i32, i32)> = gx
        .targets
        .iter()
        .map(|t| (t.upstream_model.as_str(), t.weight, t.priority))
        .collect();
    assert_eq!(models, [("up-b", 1, 0), ("up-a", 2, 1)]);
    assert_eq!(routes[0].targets.len(), 1);
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn routes_update_and_delete(db: &TestDb) {
    let s = &db.store;
    let p1 = provider(s, "p1").await;
    let p2 = provider(s, "p2").await;
    let target = |p: &str, model: &str, priority| NewRouteTarget {
        provider_id: p.into(),
        upstream_model: model.into(),
        weight: 1,
        priority,
    };
    s.create_route(
        "gpt-x",
        "weighted",
        &["gx".into()],
        vec![target(&p1, "up-a", 0)],
        ev("route_created", "route"),
    )
    .await
    .unwrap();
    s.create_route(
        "other",
        "weighted",
        &[],
        vec![target(&p1, "up-o", 0)],
        ev("route_created", "route"),
    )
    .await
    .unwrap();

    // Only what is given changes; targets are replaced as a whole.
    let r = s
        .update_route(
            "gpt-x",
            RouteChange {
                targets: Some(vec![target(&p2, "up-b", 1), target(&p1, "up-c", 0)]),
                ..Default::default()
            },
            ev("route_updated", "route"),
        )
        .await
        .unwrap();
    assert_eq!(r.route.strategy, "weighted");
    assert_eq!(llmhub_control::store::parse_list(&r.route.aliases), ["gx"]);
    let targets: Vec<(&str, &str)> = r
        .targets
        .iter()
        .map(|t| (t.provider_id.as_str(), t.upstream_model.as_str()))
        .collect();
    assert_eq!(targets, [(p1.as_str(), "up-c"), (p2.as_str(), "up-b")]);
    let r = s
        .update_route(
            "gpt-x",
            RouteChange {
                strategy: Some("latency".into()),
                aliases: Some(vec![]),
                ..Default::default()
            },
            ev("route_updated", "route"),
        )
        .await
        .unwrap();
    assert_eq!(r.route.strategy, "latency");
    assert_eq!(r.targets.len(), 2, "targets untouched");
    let stored = s.routes().await.unwrap();
    let gx = stored
        .iter()
        .find(|r| r.route.public_model == "gpt-x")
        .unwrap();
    assert_eq!(
        (gx.route.strategy.as_str(), gx.route.aliases.as_str()),
        ("latency", "[]")
    );
    assert_eq!(gx.targets.len(), 2);
    let rows = audit_rows(s, "route_updated").await;
    assert_eq!(rows.len(), 2);
    let detail: serde_json::Value = serde_json::from_str(&rows[1].detail).unwrap();
    assert_eq!(detail["targets"]["from"][0]["upstream_model"], "up-a");
    assert_eq!(detail["targets"]["to"][1]["upstream_model"], "up-b");

    // A target naming a missing provider leaves the route as it was.
    let before = audit_count(s).await;
    assert!(
        s.update_route(
            "gpt-x",
            RouteChange {
                targets: Some(vec![target("no-such-provider", "up", 0)]),
                ..Default::default()
            },
            ev("route_updated", "route"),
        )
        .await
        .is_err()
    );
    assert_eq!(audit_count(s).await, before);
    let gx = s
        .routes()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.route.public_model == "gpt-x")
        .unwrap();
    assert_eq!(gx.targets.len(), 2);

    // Unknown names (aliases are not route names) are not found, and not audited.
    is_not_found(
        s.update_route("gx", RouteChange::default(), ev("route_updated", "route"))
            .await,
    );
    is_not_found(s.delete_route("nope", ev("route_deleted", "route")).await);
    assert_eq!(audit_count(s).await, before);

    // Deleting takes the targets along and leaves the other routes alone.
    s.delete_route("gpt-x", ev("route_deleted", "route"))
        .await
        .unwrap();
    let left: Vec<String> = s
        .routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route.public_model)
        .collect();
    assert_eq!(left, ["other"]);
    let rows = audit_rows(s, "route_deleted").await;
    let detail: serde_json::Value = serde_json::from_str(&rows[0].detail).unwrap();
    assert_eq!(detail["public_model"], "gpt-x");
    assert_eq!(detail["targets"].as_array().unwrap().len(), 2);
    // The name is free again.
    s.create_route(
        "gpt-x",
        "weighted",
        &[],
        vec![target(&p2, "up-z", 0)],
        ev("route_created", "route"),
    )
    .await
    .unwrap();
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn providers_update_and_delete(db: &TestDb) {
    let s = &db.store;
    let alice = user(s, "alice").await;
    let p = provider(s, "p1").await;
    provider(s, "p2").await;
    let p = s
        .update_provider(
            &p,
            ProviderChange {
                name: Some("renamed".into()),
                base_url: Some("https://other.example.com/v1".into()),
                request_timeout_ms: Some(5_000),
                ..Default::default()
            },
            ev("provider_updated", "provider"),
        )
        .await
        .unwrap();
    assert_eq!(
        (p.name.as_str(), p.base_url.as_str(), p.request_timeout_ms),
        ("renamed", "https://other.example.com/v1", 5_000)
    );
    assert!(p.enabled, "untouched");
    assert_eq!(s.provider(&p.id).await.unwrap(), p);
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "provider_updated").await[0].detail).unwrap();
    assert_eq!(detail["base_url"]["from"], "https://api.example.com/v1");
    assert_eq!(detail["base_url"]["to"], "https://other.example.com/v1");
    // Names stay unique.
    is_conflict(
        s.update_provider(
            &p.id,
            ProviderChange {
                name: Some("p2".into()),
                ..Default::default()
            },
            ev("provider_updated", "provider"),
        )
        .await,
        "provider",
    );

    // A provider a route targets is not deleted; the error names the routes.
    let shared = key(s, &p.id, None, "fp_shared").await;
    let own = key(s, &p.id, Some(&alice), "fp_alice").await;
    s.apply_cooldown(
        &shared,
        "",
        Utc::now() + Duration::minutes(5),
        "rate_limited",
        "proxy-a",
        None,
    )
    .await
    .unwrap();
    for name in ["b-route", "a-route"] {
        s.create_route(
            name,
            "weighted",
            &[],
            vec![NewRouteTarget {
                provider_id: p.id.clone(),
                upstream_model: "m".into(),
                weight: 1,
                priority: 0,
            }],
            ev("route_created", "route"),
        )
        .await
        .unwrap();
    }
    let before = audit_count(s).await;
    match s
        .delete_provider(&p.id, true, ev("provider_deleted", "provider"))
        .await
    {
        Err(StoreError::InUse { what, names }) => {
            assert_eq!(
                (what, names),
                ("routes", vec!["a-route".into(), "b-route".into()])
            );
        }
        other => panic!("expected in use, got {other:?}"),
    }
    for name in ["a-route", "b-route"] {
        s.delete_route(name, ev("route_deleted", "route"))
            .await
            .unwrap();
    }
    // Keys: refused unless asked to delete them too.
    let before_keys = audit_count(s).await;
    assert_eq!(before_keys, before + 2);
    match s
        .delete_provider(&p.id, false, ev("provider_deleted", "provider"))
        .await
    {
        Err(StoreError::InUse { what, names }) => {
            assert_eq!(what, "provider keys");
            assert_eq!(names.len(), 2);
        }
        other => panic!("expected in use, got {other:?}"),
    }
    assert_eq!(audit_count(s).await, before_keys);
    assert_eq!(s.provider_keys_of(&p.id).await.unwrap().len(), 2);

    let deleted = s
        .delete_provider(&p.id, true, ev("provider_deleted", "provider"))
        .await
        .unwrap();
    let mut ids = deleted.keys.clone();
    ids.sort();
    let mut want = vec![shared.clone(), own.clone()];
    want.sort();
    assert_eq!(ids, want);
    is_not_found(s.provider(&p.id).await);
    is_not_found(s.provider_key(&shared).await);
    is_not_found(s.provider_key(&own).await);
    assert!(s.live_cooldowns().await.unwrap().is_empty());
    // One audit row per key, then the provider's.
    let key_rows = audit_rows(s, "provider_key_deleted").await;
    assert_eq!(key_rows.len(), 2);
    assert!(
        key_rows
            .iter()
            .all(|r| r.detail.contains("provider_deleted"))
    );
    let prow = &audit_rows(s, "provider_deleted").await[0];
    assert_eq!(prow.target_id, p.id);
    assert!(
        prow.detail.contains("\"keys_deleted\":2"),
        "{}",
        prow.detail
    );
    is_not_found(
        s.delete_provider(&p.id, true, ev("provider_deleted", "provider"))
            .await,
    );
    assert!(s.verify_audit().await.unwrap().ok);
}

fn budget(usd: u64, period: BudgetPeriod) -> BudgetSetting {
    BudgetSetting {
        limit_nanos: usd * 1_000_000_000,
        period,
        expires_at: None,
    }
}

async fn client_keys_edit_and_rotate(db: &TestDb) {
    let s = &db.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let mut nk = new_client_key(&alice, "laptop");
    nk.limits = LimitsChange {
        rpm: Some(Some(60)),
        budget: Some(Some(budget(5, BudgetPeriod::Monthly))),
        ..Default::default()
    };
    let k = s
        .insert_client_key(nk, ev("client_key_created", "client_key"))
        .await
        .unwrap();
    assert_eq!(
        k.limits(),
        Limits {
            rpm: Some(60),
            tpm: None,
            max_concurrent: None
        }
    );
    let b = k.budget().unwrap();
    assert_eq!(
        (b.limit_nanos, b.period),
        (5_000_000_000, BudgetPeriod::Monthly)
    );
    let anchor = b.anchor;
    assert!(k.previous_key_hash.is_none() && k.rotated_at.is_none());

    // Edit: absent fields stay, null clears, values set; read back from the store.
    let expires = Utc::now() + Duration::days(3);
    let e = s
        .update_client_key(
            &k.id,
            &alice,
            ClientKeyChange {
                name: Some("desk".into()),
                allowed_models: Some(vec!["m1".into(), "m2".into()]),
                expires_at: Some(Some(expires)),
                limits: LimitsChange {
                    rpm: Some(None),
                    tpm: Some(Some(10_000)),
                    max_concurrent: Some(Some(2)),
                    budget: Some(Some(budget(8, BudgetPeriod::Monthly))),
                },
            },
            ev("client_key_updated", "client_key"),
        )
        .await
        .unwrap();
    let stored = s.client_key(&k.id).await.unwrap();
    assert_eq!(stored, e);
    assert_eq!(e.name, "desk");
    assert_eq!(
        llmhub_control::store::parse_list(&e.allowed_models),
        ["m1", "m2"]
    );
    assert_eq!(e.expires_at.map(micros), Some(micros(expires)));
    assert_eq!(
        e.limits(),
        Limits {
            rpm: None,
            tpm: Some(10_000),
            max_concurrent: Some(2)
        }
    );
    let b = e.budget().unwrap();
    assert_eq!(b.limit_nanos, 8_000_000_000);
    assert_eq!(
        micros(b.anchor),
        micros(anchor),
        "same period: the anchor stays"
    );
    assert_eq!(e.key_hash, k.key_hash, "an edit never touches the secret");
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "client_key_updated").await[0].detail).unwrap();
    assert_eq!(detail["limits"]["from"]["rpm_limit"], 60);
    assert!(detail["limits"]["to"]["rpm_limit"].is_null());
    assert_eq!(
        detail["limits"]["to"]["budget"]["limit_nanos"],
        8_000_000_000u64
    );
    let e = s
        .update_client_key(
            &k.id,
            &alice,
            ClientKeyChange {
                expires_at: Some(None),
                limits: LimitsChange {
                    budget: Some(None),
                    ..Default::default()
                },
                ..Default::default()
            },
            ev("client_key_updated", "client_key"),
        )
        .await
        .unwrap();
    assert!(e.expires_at.is_none() && e.budget().is_none());
    assert_eq!(e.limits().tpm, Some(10_000), "untouched");
    assert_eq!(e.name, "desk");

    // Another user's key is not found; nothing is audited.
    let before = audit_count(s).await;
    is_not_found(
        s.update_client_key(
            &k.id,
            &bob,
            ClientKeyChange {
                name: Some("mine".into()),
                ..Default::default()
            },
            ev("client_key_updated", "client_key"),
        )
        .await,
    );
    is_not_found(
        s.rotate_client_key(
            &k.id,
            &bob,
            Rotation {
                key_hash: b"bob-hash".to_vec(),
                prefix: "lh-bob".into(),
                grace: Duration::seconds(60),
            },
            ev("client_key_rotated", "client_key"),
        )
        .await,
    );
    assert_eq!(audit_count(s).await, before);

    // Rotation with a grace keeps the old hash until then; without one it drops it.
    let r = s
        .rotate_client_key(
            &k.id,
            &alice,
            Rotation {
                key_hash: b"hash-two".to_vec(),
                prefix: "lh-two".into(),
                grace: Duration::seconds(120),
            },
            ev("client_key_rotated", "client_key"),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.key_hash.as_slice(), r.prefix.as_str()),
        (&b"hash-two"[..], "lh-two")
    );
    assert_eq!(r.previous_key_hash.as_deref(), Some(k.key_hash.as_slice()));
    let until = r.previous_valid_until.unwrap();
    assert!(
        until > Utc::now() + Duration::seconds(100) && until <= Utc::now() + Duration::seconds(120)
    );
    assert!(r.rotated_at.is_some());
    assert_eq!(s.client_key(&k.id).await.unwrap(), r);
    let detail: serde_json::Value =
        serde_json::from_str(&audit_rows(s, "client_key_rotated").await[0].detail).unwrap();
    assert_eq!(detail["prefix"]["from"], "lh-abcdef");
    assert_eq!(detail["prefix"]["to"], "lh-two");
    assert_eq!(detail["grace_seconds"], 120);
    // Neither hash is in the audit row.
    let row = &audit_rows(s, "client_key_rotated").await[0].detail;
    assert!(!row.contains("hash-two") && !row.contains("hash-"), "{row}");
    // A second rotation: the first secret ends now (one previous secret at most).
    let r2 = s
        .rotate_client_key(
            &k.id,
            &alice,
            Rotation {
                key_hash: b"hash-three".to_vec(),
                prefix: "lh-three".into(),
                grace: Duration::zero(),
            },
            ev("client_key_rotated", "client_key"),
        )
        .await
        .unwrap();
    assert!(r2.previous_key_hash.is_none() && r2.previous_valid_until.is_none());
    // A new hash that another key has is a conflict, and changes nothing.
    let other = s
        .insert_client_key(
            new_client_key(&alice, "other"),
            ev("client_key_created", "client_key"),
        )
        .await
        .unwrap();
    is_conflict(
        s.rotate_client_key(
            &k.id,
            &alice,
            Rotation {
                key_hash: other.key_hash.clone(),
                prefix: "lh-dup".into(),
                grace: Duration::seconds(5),
            },
            ev("client_key_rotated", "client_key"),
        )
        .await,
        "client key",
    );
    assert_eq!(s.client_key(&k.id).await.unwrap(), r2);

    // A revoked key can be neither edited nor rotated.
    s.revoke_client_key(&alice, &k.id, ev("client_key_revoked", "client_key"))
        .await
        .unwrap();
    let before = audit_count(s).await;
    assert!(matches!(
        s.update_client_key(
            &k.id,
            &alice,
            ClientKeyChange {
                name: Some("again".into()),
                ..Default::default()
            },
            ev("client_key_updated", "client_key"),
        )
        .await,
        Err(StoreError::Revoked)
    ));
    assert!(matches!(
        s.rotate_client_key(
            &k.id,
            &alice,
            Rotation {
                key_hash: b"hash-four".to_vec(),
                prefix: "lh-four".into(),
                grace: Duration::zero(),
            },
            ev("client_key_rotated", "client_key"),
        )
        .await,
        Err(StoreError::Revoked)
    ));
    assert_eq!(audit_count(s).await, before);
    is_not_found(s.client_key("no-such-key").await);
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn user_limits(db: &TestDb) {
    let s = &db.store;
    let alice = user(s, "alice").await;
    let fresh = s.user_by_id(&alice).await.unwrap().unwrap();
    assert!(fresh.limits().is_empty() && fresh.budget().is_none());
    let version = fresh.token_version;
    let u = s
        .set_user_limits(
            &alice,
            LimitsChange {
                rpm: Some(Some(100)),
                max_concurrent: Some(Some(5)),
                budget: Some(Some(BudgetSetting {
                    expires_at: Some(Utc::now() + Duration::days(30)),
                    ..budget(25, BudgetPeriod::None)
                })),
                ..Default::default()
            },
            ev("user_limits_changed", "user"),
        )
        .await
        .unwrap();
    assert_eq!(s.user_by_id(&alice).await.unwrap().unwrap(), u);
    assert_eq!(
        u.limits(),
        Limits {
            rpm: Some(100),
            tpm: None,
            max_concurrent: Some(5)
        }
    );
    let b = u.budget().unwrap();
    assert_eq!(
        (b.limit_nanos, b.period),
        (25_000_000_000, BudgetPeriod::None)
    );
    assert!(b.expires_at.is_some());
    assert_eq!(
        u.token_version, version,
        "limits end no session: they are not about who the user is"
    );
    // Switching the period starts a new anchor; clearing leaves other fields.
    let later = s
        .set_user_limits(
            &alice,
            LimitsChange {
                rpm: Some(None),
                budget: Some(Some(budget(3, BudgetPeriod::Daily))),
                ..Default::default()
            },
            ev("user_limits_changed", "user"),
        )
        .await
        .unwrap();
    assert!(later.budget().unwrap().anchor >= b.anchor);
    assert_eq!(later.budget().unwrap().period, BudgetPeriod::Daily);
    assert_eq!(
        later.limits(),
        Limits {
            rpm: None,
            tpm: None,
            max_concurrent: Some(5)
        }
    );
    let rows = audit_rows(s, "user_limits_changed").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].target_id, alice);
    is_not_found(
        s.set_user_limits(
            "no-such-user",
            LimitsChange {
                rpm: Some(Some(1)),
                ..Default::default()
            },
            ev("user_limits_changed", "user"),
        )
        .await,
    );
    assert!(s.verify_audit().await.unwrap().ok);
}

/// A record for the ledger tests: `n` tokens in, `n / 10` out, cost `n` nano-dollars unless
/// `cost` says otherwise.
struct Rec {
    id: String,
    at: DateTime<Utc>,
    user: &'static str,
    key: &'static str,
    model: &'static str,
    provider: &'static str,
    fingerprint: &'static str,
    status: u32,
    tokens: u64,
    cost: Option<u64>,
}

impl Rec {
    fn new(id: impl Into<String>, at: DateTime<Utc>) -> Rec {
        Rec {
            id: id.into(),
            at,
            user: "u1",
            key: "ck-1",
            model: "gpt-x",
            provider: "p1",
            fingerprint: "fp-1",
            status: 200,
            tokens: 100,
            cost: Some(1000),
        }
    }

    fn build(&self) -> NewRoutingRecord {
        NewRoutingRecord {
            request_id: self.id.clone(),
            proxy_id: "proxy-1".into(),
            started_at: self.at,
            user_id: self.user.into(),
            client_key_prefix: "lh-abc".into(),
            public_model: self.model.into(),
            status: self.status,
            latency_ms: 12,
            stream: false,
            detail: serde_json::json!({
                "attempts": [{"provider_id": self.provider, "key_fingerprint": self.fingerprint, "class": "ok"}],
                "skipped": ["p0: cooling"],
            }),
            prompt_tokens: self.tokens,
            completion_tokens: self.tokens / 10,
            cached_tokens: self.tokens / 2,
            partial: false,
            cost_nanos: self.cost,
            client_key_id: self.key.into(),
            provider_id: self.provider.into(),
            key_fingerprint: self.fingerprint.into(),
            upstream_model: format!("{}-upstream", self.model),
        }
    }
}

/// Whole seconds: Postgres keeps microseconds, so times compared after a round trip must not
/// carry more.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

async fn all_records(s: &Store, filter: &RecordFilter) -> Vec<routing_records::Model> {
    s.routing_records(filter, None, 10_000).await.unwrap()
}

fn ids(rows: &[routing_records::Model]) -> Vec<&str> {
    rows.iter().map(|r| r.request_id.as_str()).collect()
}

async fn day_usage(s: &Store, day: chrono::NaiveDate, group: UsageGroup) -> Vec<UsageRow> {
    s.usage(
        &UsageFilter {
            first_day: day,
            last_day: day,
            user_id: None,
            client_key_id: None,
            model: None,
            provider_id: None,
        },
        group,
    )
    .await
    .unwrap()
}

async fn routing_records_idempotent(db: &TestDb) {
    let s = &db.store;
    // Proxies send nanoseconds; the ledger keeps microseconds (Postgres's precision) on both
    // backends, and a record delivered again still matches the stored one.
    let t0 = whole_seconds(Utc::now() - Duration::minutes(10)) + Duration::nanoseconds(123_456_789);
    let at = |secs: i64| t0 + Duration::seconds(secs);
    let record = |id: &str, user: &'static str, secs: i64, status: u32| {
        let mut r = Rec::new(id, at(secs));
        r.user = user;
        r.status = status;
        r.tokens = 1200;
        r.cost = (secs != 2).then_some(3_000_000_000);
        let mut r = r.build();
        r.cached_tokens = 1024;
        r.completion_tokens = 80;
        r.partial = secs == 1;
        r
    };
    assert_eq!(s.insert_routing_records(vec![]).await.unwrap(), 0);
    let first = s
        .insert_routing_records(vec![record("r1", "u1", 0, 200), record("r2", "u2", 1, 429)])
        .await
        .unwrap();
    assert_eq!(first, 2);
    // Delivered again (at least once) together with a new one, and the new one twice in the same
    // batch: each request is stored once, and the first delivery wins.
    let again = s
        .insert_routing_records(vec![
            record("r1", "u1", 0, 500),
            record("r3", "u1", 2, 200),
            record("r3", "u1", 2, 201),
        ])
        .await
        .unwrap();
    assert_eq!(again, 1);
    assert_eq!(
        s.insert_routing_records(vec![record("r3", "u1", 2, 503)])
            .await
            .unwrap(),
        0
    );

    let all = all_records(s, &RecordFilter::default()).await;
    assert_eq!(ids(&all), ["r3", "r2", "r1"], "newest first");
    assert_eq!((all[2].status, all[0].status), (200, 200));
    assert_eq!(
        all[0].started_at,
        at(2) - Duration::nanoseconds(789),
        "the start time round-trips, in microseconds"
    );
    assert_eq!(all[1].proxy_id, "proxy-1");
    let detail: serde_json::Value = serde_json::from_str(&all[0].detail).unwrap();
    assert_eq!(detail["attempts"][0]["class"], "ok");
    assert_eq!(detail["skipped"][0], "p0: cooling");
    // Usage, cost (unknown for r3), the client key and the serving attempt round-trip.
    let usage = |r: &routing_records::Model| {
        (
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.partial,
            r.cost_nanos,
            r.client_key_id.clone(),
        )
    };
    assert_eq!(
        usage(&all[1]),
        (1200, 80, 1024, true, Some(3_000_000_000), "ck-1".into())
    );
    assert_eq!(usage(&all[0]), (1200, 80, 1024, false, None, "ck-1".into()));
    assert_eq!(
        (
            all[0].provider_id.as_str(),
            all[0].key_fingerprint.as_str(),
            all[0].upstream_model.as_str()
        ),
        ("p1", "fp-1", "gpt-x-upstream")
    );

    // The rollups counted each request once, whatever was delivered twice.
    let day = t0.date_naive();
    let mut by_user = day_usage(s, day, UsageGroup::User).await;
    // A record stored near midnight may fall on the next day: sum over both.
    by_user.extend(day_usage(s, day.succ_opt().unwrap(), UsageGroup::User).await);
    let sum = |user: &str, f: fn(&UsageRow) -> i64| -> i64 {
        by_user.iter().filter(|r| r.key == user).map(f).sum()
    };
    assert_eq!(sum("u1", |r| r.requests), 2);
    assert_eq!(
        sum("u1", |r| r.errors),
        0,
        "r1's first delivery (200) counts"
    );
    assert_eq!(sum("u1", |r| r.prompt_tokens), 2400);
    assert_eq!(sum("u1", |r| r.completion_tokens), 160);
    assert_eq!(sum("u1", |r| r.cached_tokens), 2048);
    assert_eq!(
        sum("u1", |r| r.cost_nanos),
        3_000_000_000,
        "r3's is unknown"
    );
    assert_eq!(sum("u1", |r| r.unknown_cost), 1);
    assert_eq!((sum("u2", |r| r.requests), sum("u2", |r| r.errors)), (1, 1));

    // Counts beyond the column's range are stored as its largest value, not wrapped, and the
    // rollup saturates instead of failing the batch (which the proxy would resend forever).
    for id in ["r-huge", "r-huge-2"] {
        let mut huge = record(id, "u9", -1, 200);
        huge.prompt_tokens = u64::MAX;
        huge.cost_nanos = Some(u64::MAX);
        s.insert_routing_records(vec![huge]).await.unwrap();
    }
    let only_u9 = RecordFilter {
        user_id: Some("u9".into()),
        ..RecordFilter::default()
    };
    let stored = all_records(s, &only_u9).await;
    assert_eq!(
        (stored[0].prompt_tokens, stored[0].cost_nanos),
        (i64::MAX, Some(i64::MAX))
    );
    let mut u9 = day_usage(s, day, UsageGroup::User).await;
    u9.extend(day_usage(s, day.succ_opt().unwrap(), UsageGroup::User).await);
    let u9: Vec<_> = u9.into_iter().filter(|r| r.key == "u9").collect();
    assert_eq!(
        (u9[0].requests, u9[0].prompt_tokens, u9[0].cost_nanos),
        (2, i64::MAX, i64::MAX)
    );

    // Text longer than its column is cut to fit.
    let mut long = record(&"x".repeat(100), "u1", 3, 200);
    long.user_id = "u".repeat(50);
    long.public_model = "m".repeat(300);
    long.key_fingerprint = "f".repeat(100);
    s.insert_routing_records(vec![long]).await.unwrap();
    let newest = &s
        .routing_records(&RecordFilter::default(), None, 1)
        .await
        .unwrap()[0];
    assert_eq!(newest.request_id.len(), 64);
    assert_eq!(newest.user_id.len(), 36);
    assert_eq!(newest.public_model.len(), 128);
    assert_eq!(newest.key_fingerprint.len(), 64);
}

/// Every filter narrows the records, and paging with the cursor walks them in one stable order
/// (start time, then request id, newest first) with no gap and no repeat, also across records
/// that started at the same instant and records stored between two pages.
async fn routing_records_filters_and_pages(db: &TestDb) {
    let s = &db.store;
    let t0 = whole_seconds(Utc::now() - Duration::hours(3));
    let mut batch = Vec::new();
    for i in 0..60u32 {
        // Three records share each start time.
        let mut r = Rec::new(format!("r{i:02}"), t0 + Duration::seconds(i64::from(i / 3)));
        r.user = if i % 4 == 0 { "u2" } else { "u1" };
        r.key = if i % 2 == 0 { "ck-even" } else { "ck-odd" };
        r.model = ["m-a", "m-b", "m-c"][(i % 3) as usize];
        r.provider = if i % 5 == 0 { "p-five" } else { "p1" };
        r.fingerprint = if i % 6 == 0 { "fp-six" } else { "fp-1" };
        r.status = match i % 10 {
            3 => 429,
            7 => 502,
            9 => 499,
            _ => 200,
        };
        batch.push(r.build());
    }
    s.insert_routing_records(batch).await.unwrap();
    let all = all_records(s, &RecordFilter::default()).await;
    assert_eq!(all.len(), 60);
    for w in all.windows(2) {
        assert!(
            (w[0].started_at, &w[0].request_id) > (w[1].started_at, &w[1].request_id),
            "strictly newest first"
        );
    }

    let count = |f: RecordFilter| async move { all_records(s, &f).await };
    let f = RecordFilter::default;
    let check = |rows: &[routing_records::Model],
                 pred: &dyn Fn(&routing_records::Model) -> bool| {
        let want = all.iter().filter(|r| pred(r)).count();
        assert!(want > 0 && want < 60, "a filter that narrows");
        assert_eq!(rows.len(), want);
        assert!(rows.iter().all(pred));
    };
    check(
        &count(RecordFilter {
            user_id: Some("u2".into()),
            ..f()
        })
        .await,
        &|r| r.user_id == "u2",
    );
    check(
        &count(RecordFilter {
            client_key_id: Some("ck-odd".into()),
            ..f()
        })
        .await,
        &|r| r.client_key_id == "ck-odd",
    );
    check(
        &count(RecordFilter {
            model: Some("m-b".into()),
            ..f()
        })
        .await,
        &|r| r.public_model == "m-b",
    );
    check(
        &count(RecordFilter {
            provider_id: Some("p-five".into()),
            ..f()
        })
        .await,
        &|r| r.provider_id == "p-five",
    );
    check(
        &count(RecordFilter {
            key_fingerprint: Some("fp-six".into()),
            ..f()
        })
        .await,
        &|r| r.key_fingerprint == "fp-six",
    );
    type Pred = fn(&routing_records::Model) -> bool;
    let statuses: [(&str, Pred); 5] = [
        ("429", |r| r.status == 429),
        ("4xx", |r| (400..500).contains(&r.status)),
        ("5xx", |r| (500..600).contains(&r.status)),
        ("2xx", |r| (200..300).contains(&r.status)),
        ("error", |r| r.status >= 400),
    ];
    for (status, pred) in statuses {
        let status = StatusFilter::parse(status);
        check(&count(RecordFilter { status, ..f() }).await, &pred);
    }
    // Combined: a model's errors.
    check(
        &count(RecordFilter {
            model: Some("m-a".into()),
            status: StatusFilter::parse("error"),
            ..f()
        })
        .await,
        &|r| r.public_model == "m-a" && r.status >= 400,
    );
    // A time range: from included, to excluded.
    let (from, to) = (t0 + Duration::seconds(5), t0 + Duration::seconds(10));
    check(
        &count(RecordFilter {
            from: Some(from),
            to: Some(to),
            ..f()
        })
        .await,
        &|r| r.started_at >= from && r.started_at < to,
    );
    assert!(
        count(RecordFilter {
            user_id: Some("nobody".into()),
            ..f()
        })
        .await
        .is_empty()
    );

    // Pages of 7 (not a divisor of 3): every page continues exactly after the previous one,
    // with a record stored between two pages (newer than the first page) not disturbing them.
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<RecordCursor> = None;
    let mut pages = 0;
    loop {
        let page = s.routing_records(&f(), after.as_ref(), 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        pages += 1;
        if pages == 2 {
            let newer = Rec::new("r-late", t0 + Duration::hours(1)).build();
            s.insert_routing_records(vec![newer]).await.unwrap();
        }
        seen.extend(page.iter().map(|r| r.request_id.clone()));
        after = page.last().map(RecordCursor::from);
    }
    assert_eq!(pages, 9);
    let want: Vec<String> = all.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(seen, want, "no gap, no repeat, same order");

    // Paging a filtered view the same way.
    let errors = RecordFilter {
        status: StatusFilter::parse("error"),
        ..f()
    };
    let mut seen = Vec::new();
    let mut after: Option<RecordCursor> = None;
    loop {
        let page = s.routing_records(&errors, after.as_ref(), 4).await.unwrap();
        seen.extend(page.iter().map(|r| r.request_id.clone()));
        match page.last() {
            Some(r) if page.len() == 4 => after = Some(RecordCursor::from(r)),
            _ => break,
        }
    }
    let want: Vec<String> = all_records(s, &errors)
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(seen, want);
}

/// Usage sums per day, model, client key, user and provider from the rollups, narrowed by the
/// same filters; a budget's spend in its period comes from whole days of rollups plus, for a
/// period that starts within a day, that day's records after the start.
async fn usage_grouping(db: &TestDb) {
    let s = &db.store;
    let today = Utc::now().date_naive();
    let midnight = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let d1 = today - Duration::days(2);
    let d2 = today - Duration::days(1);
    let mut batch = Vec::new();
    let mut n = 0;
    let mut add = |day, hour: i64, f: &dyn Fn(&mut Rec)| {
        n += 1;
        let mut r = Rec::new(format!("u-{n}"), midnight(day) + Duration::hours(hour));
        f(&mut r);
        batch.push(r.build());
    };
    add(d1, 1, &|_| {});
    add(d1, 2, &|r| r.model = "m-b");
    add(d1, 3, &|r| {
        r.status = 500;
        r.cost = None;
    });
    add(d2, 1, &|r| {
        r.user = "u2";
        r.key = "ck-2";
        r.provider = "p2";
        r.tokens = 1000;
        r.cost = Some(7000);
    });
    add(d2, 12, &|r| r.model = "m-b");
    add(d2, 13, &|r| r.model = "m-b");
    s.insert_routing_records(batch).await.unwrap();

    let filter = |first, last| UsageFilter {
        first_day: first,
        last_day: last,
        user_id: None,
        client_key_id: None,
        model: None,
        provider_id: None,
    };
    let sums = |rows: &[UsageRow]| -> Vec<(String, i64, i64, i64, i64, i64, i64)> {
        rows.iter()
            .map(|r| {
                (
                    r.key.clone(),
                    r.requests,
                    r.errors,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.cost_nanos,
                    r.unknown_cost,
                )
            })
            .collect()
    };
    let by = |g| async move { s.usage(&filter(d1, d2), g).await.unwrap() };
    assert_eq!(
        sums(&by(UsageGroup::Day).await),
        [
            (d1.to_string(), 3, 1, 300, 30, 2000, 1),
            (d2.to_string(), 3, 0, 1200, 120, 9000, 0),
        ]
    );
    assert_eq!(
        sums(&by(UsageGroup::Model).await),
        [
            ("gpt-x".into(), 3, 1, 1200, 120, 8000, 1),
            ("m-b".into(), 3, 0, 300, 30, 3000, 0),
        ]
    );
    assert_eq!(
        sums(&by(UsageGroup::ClientKey).await),
        [
            ("ck-1".into(), 5, 1, 500, 50, 4000, 1),
            ("ck-2".into(), 1, 0, 1000, 100, 7000, 0),
        ]
    );
    assert_eq!(
        sums(&by(UsageGroup::User).await)
            .iter()
            .map(|r| (r.0.clone(), r.1))
            .collect::<Vec<_>>(),
        [("u1".into(), 5), ("u2".into(), 1)]
    );
    assert_eq!(
        sums(&by(UsageGroup::Provider).await)
            .iter()
            .map(|r| (r.0.clone(), r.1, r.5))
            .collect::<Vec<_>>(),
        [("p1".into(), 5, 4000), ("p2".into(), 1, 7000)]
    );
    let cached: i64 = by(UsageGroup::Day)
        .await
        .iter()
        .map(|r| r.cached_tokens)
        .sum();
    assert_eq!(cached, 750);
    // Filters, and the day range.
    let narrowed = s
        .usage(
            &UsageFilter {
                user_id: Some("u1".into()),
                model: Some("m-b".into()),
                ..filter(d1, d2)
            },
            UsageGroup::Day,
        )
        .await
        .unwrap();
    assert_eq!(
        sums(&narrowed),
        [
            (d1.to_string(), 1, 0, 100, 10, 1000, 0),
            (d2.to_string(), 2, 0, 200, 20, 2000, 0)
        ]
    );
    let one_day = s
        .usage(
            &UsageFilter {
                provider_id: Some("p2".into()),
                client_key_id: Some("ck-2".into()),
                ..filter(d2, d2)
            },
            UsageGroup::Model,
        )
        .await
        .unwrap();
    assert_eq!(sums(&one_day), [("gpt-x".into(), 1, 0, 1000, 100, 7000, 0)]);
    assert!(
        s.usage(&filter(d1, d1), UsageGroup::User)
            .await
            .unwrap()
            .iter()
            .all(|r| r.key == "u1")
    );
    assert!(
        s.usage(&filter(today, today), UsageGroup::Day)
            .await
            .unwrap()
            .is_empty()
    );

    // Spend since a period start: whole days from the rollups...
    let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let spent = s
        .spend_since(
            SpendOwner::ClientKey,
            &ids(&["ck-1", "ck-2", "ck-none"]),
            midnight(d1),
        )
        .await
        .unwrap();
    assert_eq!(spent.get("ck-1"), Some(&4000));
    assert_eq!(spent.get("ck-2"), Some(&7000));
    assert_eq!(spent.get("ck-none"), None);
    let spent = s
        .spend_since(SpendOwner::User, &ids(&["u1", "u2"]), midnight(d2))
        .await
        .unwrap();
    assert_eq!(
        (spent.get("u1"), spent.get("u2")),
        (Some(&2000), Some(&7000))
    );
    // ...and from within a day (a lifetime budget set at 02:30 on d1): that day's records after
    // it (d1's 03:00 record has an unknown cost, which counts as nothing) plus d2's rollups.
    let spent = s
        .spend_since(
            SpendOwner::User,
            &ids(&["u1"]),
            midnight(d1) + Duration::minutes(150),
        )
        .await
        .unwrap();
    assert_eq!(spent.get("u1"), Some(&2000));
    let spent = s
        .spend_since(
            SpendOwner::User,
            &ids(&["u1"]),
            midnight(d1) + Duration::minutes(90),
        )
        .await
        .unwrap();
    assert_eq!(spent.get("u1"), Some(&3000));
    let spent = s
        .spend_since(
            SpendOwner::User,
            &ids(&["u1"]),
            midnight(d2) + Duration::hours(12),
        )
        .await
        .unwrap();
    assert_eq!(
        spent.get("u1"),
        Some(&2000),
        "from 12:00 on d2, both records at 12 and 13"
    );
}

/// Records past the retention go: on Postgres by dropping their day's partition (the table is
/// gone, not just its rows), with partitions created ahead and rows that waited in the default
/// partition moved into one of their own day; on SQLite by batched deletes. The rollups stay.
async fn records_retention(db: &TestDb) {
    let s = &db.store;
    let now = whole_seconds(Utc::now());
    let today = now.date_naive();
    let postgres = s.backend() == DbBackend::Postgres;
    let old = now - Duration::days(40);
    // As if the control plane ran 40 days ago: that day's partition exists then.
    let m = s.maintain_records(old, 30).await.unwrap();
    if postgres {
        assert_eq!(
            m.created,
            (0..=2)
                .map(|d| old.date_naive() + Duration::days(d))
                .collect::<Vec<_>>()
        );
        assert!(
            s.record_partitions()
                .await
                .unwrap()
                .contains(&old.date_naive())
        );
    } else {
        assert!(m.created.is_empty() && s.record_partitions().await.unwrap().is_empty());
    }
    // More expired rows than one delete batch, one recent row, and one far ahead (a proxy's
    // clock gone wrong: it waits in the default partition).
    let mut batch: Vec<NewRoutingRecord> = (0..5_200)
        .map(|i| Rec::new(format!("old-{i}"), old + Duration::milliseconds(i)).build())
        .collect();
    batch.push(Rec::new("recent", now - Duration::days(3)).build());
    batch.push(Rec::new("ahead", now + Duration::days(10)).build());
    s.insert_routing_records(batch).await.unwrap();

    let m = s.maintain_records(now, 30).await.unwrap();
    let left = all_records(s, &RecordFilter::default()).await;
    assert_eq!(ids(&left), ["ahead", "recent"], "expired records are gone");
    if postgres {
        assert_eq!(
            m.dropped,
            [
                old.date_naive(),
                old.date_naive() + Duration::days(1),
                old.date_naive() + Duration::days(2)
            ]
        );
        assert_eq!(m.deleted, 0, "dropped whole, not deleted row by row");
        let days = s.record_partitions().await.unwrap();
        assert!(
            !days.contains(&old.date_naive()),
            "the partition itself is gone"
        );
        let recent = (now - Duration::days(3)).date_naive();
        assert!(
            m.created.contains(&recent),
            "moved out of the default partition"
        );
        assert!(days.contains(&recent) && days.contains(&today));
        assert!(days.contains(&(today + Duration::days(2))));
        let ahead = (now + Duration::days(10)).date_naive();
        assert!(!days.contains(&ahead), "not yet: only days up to two ahead");
        // Another run changes nothing.
        assert_eq!(
            s.maintain_records(now, 30).await.unwrap(),
            Default::default()
        );
        // Ten days later the far-ahead row's day is near: its partition takes it in.
        let later = now + Duration::days(9);
        let m = s.maintain_records(later, 30).await.unwrap();
        assert!(m.created.contains(&ahead));
        assert!(s.record_partitions().await.unwrap().contains(&ahead));
        assert_eq!(
            ids(&all_records(s, &RecordFilter::default()).await),
            ["ahead", "recent"]
        );
    } else {
        assert_eq!(m.deleted, 5_200);
        assert!(m.dropped.is_empty());
    }
    // A stray expired row in the default partition (Postgres) or the table (SQLite) is deleted.
    s.insert_routing_records(vec![Rec::new("stray", now - Duration::days(100)).build()])
        .await
        .unwrap();
    assert_eq!(s.maintain_records(now, 30).await.unwrap().deleted, 1);
    // The rollups outlive the records.
    let usage = day_usage(s, old.date_naive(), UsageGroup::Day).await;
    assert_eq!(usage[0].requests, 5_200);
}

async fn model_prices_crud(db: &TestDb) {
    let s = &db.store;
    assert!(s.model_prices().await.unwrap().is_empty());
    let price = |model: &str, input: u64| NewModelPrice {
        model: model.into(),
        input_nanos_per_token: input,
        output_nanos_per_token: input * 4,
        cached_input_nanos_per_token: input / 2,
        updated_by: "admin-id".into(),
    };
    let before = audit_count(s).await;
    let row = s
        .set_model_price(price("gpt-4o", 2000), ev("price_set", "model_price"))
        .await
        .unwrap();
    assert_eq!(
        (
            row.input_nanos_per_token,
            row.output_nanos_per_token,
            row.cached_input_nanos_per_token
        ),
        (2000, 8000, 1000)
    );
    s.set_model_price(price("local/llama-3", 7), ev("price_set", "model_price"))
        .await
        .unwrap();
    // Setting again replaces: one row per model.
    s.set_model_price(price("gpt-4o", 2500), ev("price_set", "model_price"))
        .await
        .unwrap();
    let rows = s.model_prices().await.unwrap();
    let models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(models, ["gpt-4o", "local/llama-3"]);
    assert_eq!(rows[0].input_nanos_per_token, 2500);
    assert_eq!(rows[0].updated_by, "admin-id");
    // The largest price fits (BIGINT).
    s.set_model_price(price("dear", 1 << 40), ev("price_set", "model_price"))
        .await
        .unwrap();
    let dear = s.model_prices().await.unwrap();
    assert_eq!(dear[0].output_nanos_per_token, 1 << 42);

    // Each change is audited in its transaction, with the prices (never anything secret).
    let audited = audit_rows(s, "price_set").await;
    assert_eq!(audited.len(), 4);
    assert_eq!(audit_count(s).await, before + 4);
    assert!(audited.iter().any(|a| a.target_id == "local/llama-3"));

    s.delete_model_price("gpt-4o", ev("price_deleted", "model_price"))
        .await
        .unwrap();
    is_not_found(
        s.delete_model_price("gpt-4o", ev("price_deleted", "model_price"))
            .await,
    );
    assert_eq!(audit_rows(s, "price_deleted").await.len(), 1);
    let models: Vec<String> = s
        .model_prices()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.model)
        .collect();
    assert_eq!(models, ["dear", "local/llama-3"]);
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn key_health(db: &TestDb) {
    let s = &db.store;
    let p = provider(s, "p1").await;
    let k = key(s, &p, None, "fp_k").await;
    let k2 = key(s, &p, None, "fp_k2").await;
    let now = Utc::now();

    // Upsert: a cooldown keeps the later end.
    let c = s
        .apply_cooldown(
            &k,
            "gpt-x",
            now + Duration::seconds(60),
            "rate_limited",
            "proxy-1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (c.model.as_str(), c.class.as_str()),
        ("gpt-x", "rate_limited")
    );
    let c = s
        .apply_cooldown(
            &k,
            "gpt-x",
            now + Duration::seconds(10),
            "rate_limited",
            "proxy-2",
            None,
        )
        .await
        .unwrap();
    assert_eq!(micros(c.until), micros(now + Duration::seconds(60)));
    assert_eq!(c.source, "proxy-2");
    let c = s
        .apply_cooldown(
            &k,
            "gpt-x",
            now + Duration::seconds(120),
            "forced",
            "admin:a",
            Some(ev("key_cooldown_forced", "provider_key")),
        )
        .await
        .unwrap();
    assert_eq!(micros(c.until), micros(now + Duration::seconds(120)));
    assert_eq!(audit_rows(s, "key_cooldown_forced").await[0].target_id, k);
    s.apply_cooldown(
        &k2,
        "",
        now + Duration::hours(1),
        "quota_exhausted",
        "proxy-1",
        None,
    )
    .await
    .unwrap();
    is_not_found(
        s.apply_cooldown(
            "no-such-key",
            "",
            now + Duration::hours(1),
            "forced",
            "x",
            None,
        )
        .await,
    );

    // Live cooldowns only: an ended one is not listed.
    s.apply_cooldown(
        &k,
        "old",
        now - Duration::seconds(1),
        "rate_limited",
        "proxy-1",
        None,
    )
    .await
    .unwrap();
    let mut live: Vec<(String, String)> = s
        .live_cooldowns()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.key_id, c.model))
        .collect();
    live.sort();
    let mut expected = vec![(k.clone(), "gpt-x".to_owned()), (k2.clone(), String::new())];
    expected.sort();
    assert_eq!(live, expected);
    let mine = s.cooldowns_of(&k).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].model, "gpt-x");

    // Expiry: only an ended cooldown is cleared by a successful trial.
    assert!(
        !s.clear_key_health_if_expired(&k, "gpt-x", "proxy-1")
            .await
            .unwrap()
    );
    assert!(
        s.clear_key_health_if_expired(&k, "old", "proxy-1")
            .await
            .unwrap()
    );
    assert!(
        !s.clear_key_health_if_expired(&k, "old", "proxy-1")
            .await
            .unwrap()
    );

    // Clear one model, then nothing left to clear.
    assert!(
        s.clear_key_health(&k, Some("gpt-x"), "admin:a", None)
            .await
            .unwrap()
    );
    assert!(
        !s.clear_key_health(&k, Some("gpt-x"), "admin:a", None)
            .await
            .unwrap()
    );
    assert!(s.cooldowns_of(&k).await.unwrap().is_empty());
    is_not_found(s.clear_key_health("no-such-key", None, "x", None).await);

    // Disable once; a whole-key clear re-enables it.
    assert!(s.disable_key(&k, "invalid_key", "proxy-1").await.unwrap());
    assert!(!s.disable_key(&k, "invalid_key", "proxy-1").await.unwrap());
    let row = s.provider_key(&k).await.unwrap();
    assert_eq!(row.key_state(), Some(KeyState::Disabled));
    assert_eq!(row.state, "disabled");
    assert_eq!(row.state_reason.as_deref(), Some("invalid_key"));
    assert_eq!(row.last_error_class.as_deref(), Some("invalid_key"));
    is_not_found(s.disable_key("no-such-key", "invalid_key", "x").await);
    assert!(
        s.clear_key_health(
            &k,
            None,
            "admin:a",
            Some(ev("key_cooldown_cleared", "provider_key"))
        )
        .await
        .unwrap()
    );
    let row = s.provider_key(&k).await.unwrap();
    assert_eq!(row.key_state(), Some(KeyState::Active));
    assert_eq!(row.state_reason, None);
    assert_eq!(audit_rows(s, "key_cooldown_cleared").await.len(), 1);

    // History, newest first, bounded by the limit.
    let events: Vec<String> = s
        .key_history(&k, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        [
            "cleared",
            "disabled",
            "cleared",
            "recovered",
            "cooldown",
            "cooldown",
            "cooldown",
            "cooldown"
        ]
    );
    assert_eq!(s.key_history(&k, 2).await.unwrap().len(), 2);
    assert_eq!(s.key_history(&k2, 100).await.unwrap().len(), 1);

    // Cooldowns and history go with the key.
    s.delete_provider_key(&k2, ev("provider_key_deleted", "provider_key"))
        .await
        .unwrap();
    assert!(s.cooldowns_of(&k2).await.unwrap().is_empty());
    assert!(s.key_history(&k2, 100).await.unwrap().is_empty());
    assert!(s.verify_audit().await.unwrap().ok);
}

async fn settings_and_vault_rows(db: &TestDb) {
    let s = &db.store;
    assert!(s.setting("secret").await.unwrap().is_none());
    let first = s
        .insert_setting_if_absent("secret", b"one".to_vec(), 1)
        .await
        .unwrap();
    assert_eq!(
        (first.sealed.as_slice(), first.key_version),
        (&b"one"[..], 1)
    );
    // The first writer wins; a later insert reads back the same row.
    let again = s
        .insert_setting_if_absent("secret", b"two".to_vec(), 2)
        .await
        .unwrap();
    assert_eq!(again.sealed, b"one");

    s.put_setting("state", b"s1".to_vec(), 1, None)
        .await
        .unwrap();
    s.put_setting(
        "state",
        b"s2".to_vec(),
        2,
        Some(ev("vault_state_changed", "vault")),
    )
    .await
    .unwrap();
    let st = s.setting("state").await.unwrap().unwrap();
    assert_eq!((st.sealed.as_slice(), st.key_version), (&b"s2"[..], 2));
    assert_eq!(audit_rows(s, "vault_state_changed").await.len(), 1);

    // Ciphertext swaps happen only over the expected old value.
    assert!(
        !s.swap_setting_sealed("secret", b"stale", b"x".to_vec(), 3)
            .await
            .unwrap()
    );
    assert!(
        s.swap_setting_sealed("secret", b"one", b"one-v3".to_vec(), 3)
            .await
            .unwrap()
    );
    assert_eq!(s.setting("secret").await.unwrap().unwrap().key_version, 3);

    let p = provider(s, "p1").await;
    let k = key(s, &p, None, "fp_v").await;
    assert!(
        !s.swap_provider_key_sealed(&k, b"stale", b"y".to_vec(), 3)
            .await
            .unwrap()
    );
    assert!(
        s.swap_provider_key_sealed(&k, b"sealed-fp_v", b"sealed-v3".to_vec(), 3)
            .await
            .unwrap()
    );
    let row = s.provider_key(&k).await.unwrap();
    assert_eq!(
        (row.sealed.as_slice(), row.key_version),
        (&b"sealed-v3"[..], 3)
    );
    key(s, &p, None, "fp_w").await;

    // Counts by master-key version, and the rows still to re-wrap.
    let counts = s.sealed_counts().await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(1, 1), (2, 1), (3, 2)]
    );
    let pending = s.rows_not_under(3, 10).await.unwrap();
    let mut names: Vec<String> = pending
        .iter()
        .map(|r| match r {
            SealedRow::ProviderKey(k) => format!("key:{}", k.fingerprint),
            SealedRow::Setting(st) => format!("setting:{}", st.name),
        })
        .collect();
    names.sort();
    assert_eq!(names, ["key:fp_w", "setting:state"]);
    assert_eq!(s.rows_not_under(3, 1).await.unwrap().len(), 1);
}

async fn audit_chain(db: &TestDb) {
    let s = &db.store;
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok && report.rows_checked == 0);

    let alice = user(s, "alice").await;
    let p = provider(s, "p1").await;
    s.audit(ev("lockouts_cleared", "user").target(&alice))
        .await
        .unwrap();
    s.audit(ev("login_failed", "user").failure().target(&alice))
        .await
        .unwrap();
    let k = key(s, &p, None, "fp_a").await;
    // A refused mutation rolls its audit row back with it.
    is_conflict(
        s.create_user(
            new_user("alice", "user", UserStatus::Active),
            ev("user_created", "user"),
        )
        .await,
        "user",
    );
    assert_eq!(audit_count(s).await, 5);

    // Filters.
    let by = |f: AuditFilter| async move { s.audit_rows(f).await.unwrap() };
    let rows = by(AuditFilter {
        target_id: Some(alice.clone()),
        limit: 100,
        ..Default::default()
    })
    .await;
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["login_failed", "lockouts_cleared", "user_created"]
    );
    let rows = by(AuditFilter {
        outcome: Some("failure".into()),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action, "login_failed");
    assert_eq!(
        by(AuditFilter {
            actor_user_id: Some("admin-id".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .len(),
        5
    );
    assert!(
        by(AuditFilter {
            since: Some(Utc::now() + Duration::hours(1)),
            limit: 100,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        by(AuditFilter {
            until: Some(Utc::now() + Duration::hours(1)),
            action: Some("provider_key_created".into()),
            limit: 100,
            ..Default::default()
        })
        .await[0]
            .target_id,
        k
    );

    // Keyset pagination: newest first, pages continue below the last seq.
    let page1 = by(AuditFilter {
        limit: 2,
        ..Default::default()
    })
    .await;
    let seqs: Vec<i64> = page1.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [5, 4]);
    let page2 = by(AuditFilter {
        limit: 2,
        before_seq: Some(4),
        ..Default::default()
    })
    .await;
    assert_eq!(page2.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2]);
    let page3 = by(AuditFilter {
        limit: 2,
        before_seq: Some(2),
        ..Default::default()
    })
    .await;
    assert_eq!(page3.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);

    // The chain verifies, links each row to the one before, and notices an edited row.
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.rows_checked, report.head_seq), (5, 5));
    let all = by(AuditFilter {
        limit: 100,
        ..Default::default()
    })
    .await;
    for pair in all.windows(2) {
        assert_eq!(pair[0].prev_hash, pair[1].hash);
    }
    let raw = sea_orm::Database::connect(db.url.as_str()).await.unwrap();
    raw.execute_unprepared("UPDATE audit_log SET detail = '{\"edited\":true}' WHERE seq = 3")
        .await
        .unwrap();
    raw.close().await.unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(3));
    assert_eq!(report.rows_checked, 2);

    // A store with another chain key cannot vouch for these rows.
    let other = Store::connect(&db.url)
        .await
        .unwrap()
        .with_audit_key(AuditKey(zeroize::Zeroizing::new([9u8; 32])));
    let report = other.verify_audit().await.unwrap();
    assert_eq!(report.first_bad_seq, Some(1));
}

/// The SQLite file holds sealed keys, password hashes and the audit chain: owner-only, and an
/// existing file that others could read is restricted when the control plane opens it.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = dir.path().join("fresh.db");
    let store = open(format!("sqlite://{}?mode=rwc", fresh.display())).await;
    store.ping().await.unwrap();
    assert_eq!(mode(&fresh), 0o600);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
    }
    let old = dir.path().join("old.db");
    std::fs::write(&old, b"").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    open(format!("sqlite://{}?mode=rwc", old.display())).await;
    assert_eq!(mode(&old), 0o600);
}

// ---- upgrading ----

/// Records stored before the ledger migration (000009) are moved into the new table with their
/// serving attempt read from `detail`, summed into the rollups, and (Postgres) placed in
/// partitions of their days.
async fn ledger_migration_moves_existing_records(url: &str) {
    use llmhub_migrations::{Migrator, MigratorTrait};
    use sea_orm::sea_query::{Alias, Query};
    let conn = sea_orm::Database::connect(url).await.unwrap();
    Migrator::up(&conn, Some(8)).await.unwrap();
    // Stored before the upgrade with nanoseconds (SQLite keeps the driver's text); the ledger
    // now keeps microseconds, and a replay after the upgrade must still match.
    let t0 = whole_seconds(Utc::now() - Duration::days(2)) + Duration::nanoseconds(123_456_789);
    // Each fraction the SQLite driver writes differently once cut to microseconds: 6 digits
    // (t0), 3 (whole milliseconds) and none.
    let t1 = whole_seconds(t0 + Duration::days(1)) + Duration::nanoseconds(5_000_789);
    let t2 = whole_seconds(t0 + Duration::days(1)) + Duration::nanoseconds(1_000_000_789);
    let cols = [
        "request_id",
        "proxy_id",
        "started_at",
        "user_id",
        "client_key_prefix",
        "public_model",
        "status",
        "latency_ms",
        "stream",
        "detail",
        "received_at",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "partial",
        "cost_nanos",
        "client_key_id",
    ];
    let mut insert = Query::insert();
    insert
        .into_table(Alias::new("routing_records"))
        .columns(cols.map(Alias::new));
    let detail = serde_json::json!({"attempts": [
        {"provider_id": "p-first", "key_fingerprint": "fp-first", "upstream_model": "up-first", "status": 429},
        {"provider_id": "p-served", "key_fingerprint": "fp-served", "upstream_model": "up-served", "status": 200},
    ], "skipped": []})
    .to_string();
    for (id, at, status, cost, detail) in [
        ("old-1", t0, 200, Some(500i64), detail.as_str()),
        (
            "old-2",
            t1,
            502,
            None,
            r#"{"attempts": [], "skipped": ["x"]}"#,
        ),
        ("old-3", t2, 200, Some(700), detail.as_str()),
    ] {
        let values: Vec<sea_orm::sea_query::SimpleExpr> = vec![
            id.into(),
            "proxy-1".into(),
            at.into(),
            "u1".into(),
            "lh-abc".into(),
            "gpt-x".into(),
            status.into(),
            5.into(),
            false.into(),
            detail.into(),
            at.into(),
            10i64.into(),
            2i64.into(),
            1i64.into(),
            false.into(),
            cost.into(),
            "ck-1".into(),
        ];
        insert.values_panic(values);
    }
    conn.execute(&insert).await.unwrap();
    Migrator::up(&conn, None).await.unwrap();
    conn.close().await.unwrap();

    let s = Store::connect(url).await.unwrap();
    let rows = all_records(&s, &RecordFilter::default()).await;
    assert_eq!(ids(&rows), ["old-3", "old-2", "old-1"]);
    let served = |r: &routing_records::Model| {
        (
            r.provider_id.clone(),
            r.key_fingerprint.clone(),
            r.upstream_model.clone(),
        )
    };
    assert_eq!(
        served(&rows[2]),
        ("p-served".into(), "fp-served".into(), "up-served".into())
    );
    assert_eq!(
        served(&rows[1]),
        (String::new(), String::new(), String::new())
    );
    assert_eq!(rows[2].cost_nanos, Some(500));
    assert_eq!(rows[1].cost_nanos, None);
    assert_eq!(rows[0].started_at, t2 - Duration::nanoseconds(789));
    assert_eq!(rows[1].started_at, t1 - Duration::nanoseconds(789));
    assert_eq!(rows[2].started_at, t0 - Duration::nanoseconds(789));
    let by_provider = s
        .usage(
            &UsageFilter {
                first_day: t0.date_naive(),
                last_day: t0.date_naive() + Duration::days(1),
                user_id: None,
                client_key_id: None,
                model: None,
                provider_id: None,
            },
            UsageGroup::Day,
        )
        .await
        .unwrap();
    let sums: Vec<_> = by_provider
        .iter()
        .map(|r| {
            (
                r.requests,
                r.errors,
                r.prompt_tokens,
                r.cost_nanos,
                r.unknown_cost,
            )
        })
        .collect();
    assert_eq!(sums, [(1, 0, 10, 500, 0), (2, 1, 20, 700, 1)]);
    if s.backend() == DbBackend::Postgres {
        assert_eq!(
            s.record_partitions().await.unwrap(),
            [t0.date_naive(), t0.date_naive() + Duration::days(1)]
        );
    }
    // Delivered again after the upgrade (a proxy replaying them): still stored once.
    let again = [("old-1", t0), ("old-2", t1), ("old-3", t2)]
        .map(|(id, at)| Rec::new(id, at).build())
        .into_iter()
        .collect();
    assert_eq!(s.insert_routing_records(again).await.unwrap(), 0);
}

#[tokio::test]
async fn ledger_migration_moves_existing_records_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("up.db").display());
    ledger_migration_moves_existing_records(&url).await;
}

#[tokio::test]
async fn ledger_migration_moves_existing_records_postgres() {
    if let Some((url, _pg)) = pg_database("ledger_migration_moves_existing_records").await {
        ledger_migration_moves_existing_records(&url).await;
    }
}
