//! The snapshot hub's handling of what proxies report, on a real SQLite store.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use llmhub_control::hub::{FailureClass, KeyOutcome, Outcome, SnapshotHub};
use llmhub_control::keyring::{self, Keyring};
use llmhub_control::store::Store;
use llmhub_control::vault::{HashSecret, Vault};

#[tokio::test]
async fn an_outcome_for_a_deleted_key_is_acknowledged_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let keyring = Keyring::parse(keyring::generate_entry(1).as_str(), None).unwrap();
    let vault = Arc::new(Vault::new(keyring, None));
    let hash_secret = HashSecret::load_or_create(&store, &vault.keyring())
        .await
        .unwrap();
    let hub = SnapshotHub::new(store, vault, Arc::new(hash_secret));
    for class in [
        Outcome::Failed(FailureClass::RateLimited),
        Outcome::Failed(FailureClass::QuotaExhausted),
        Outcome::Failed(FailureClass::InvalidKey),
        Outcome::Ok,
    ] {
        let o = KeyOutcome {
            key_id: "deleted-since".into(),
            upstream_model: "m".into(),
            class: Some(class),
            status: 429,
            observed_at: None,
            retry_at: None,
            provider_stated: false,
            client_key_prefix: "lh-abcd".into(),
            needs_verification: false,
        };
        // An error here makes the proxy resend its report batch forever.
        hub.apply_outcome(&o, "proxy-1").await.unwrap();
    }
}

/// Limits, budgets (with the current period's start), users' limits and a rotation's replaced
/// hash reach the snapshot from the store; the replaced hash only while its grace lasts.
#[tokio::test]
async fn snapshots_carry_limits_budgets_and_the_grace_of_a_rotation() {
    use chrono::{Duration, Utc};
    use llmhub_control::hub::BudgetPeriod;
    use llmhub_control::store::{
        Actor, AuditEvent, BudgetSetting, LimitsChange, NewClientKey, NewUser, Rotation, UserStatus,
    };

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let keyring = Keyring::parse(keyring::generate_entry(1).as_str(), None).unwrap();
    let vault = Arc::new(Vault::new(keyring, None));
    let hash_secret = HashSecret::load_or_create(&store, &vault.keyring())
        .await
        .unwrap();
    let hub = SnapshotHub::new(store.clone(), vault, Arc::new(hash_secret));
    let actor = Actor::default();
    let ev = |a| AuditEvent::new(&actor, a, "test");
    let user = |name: &str| NewUser {
        username: name.into(),
        email: None,
        password_hash: "$argon2id$x".into(),
        role: "user",
        status: UserStatus::Active,
    };
    let alice = store.create_user(user("alice"), ev("x")).await.unwrap().id;
    let bob = store.create_user(user("bob"), ev("x")).await.unwrap().id;
    let key = store
        .insert_client_key(
            NewClientKey {
                id: "ck1".into(),
                user_id: alice.clone(),
                name: "k".into(),
                key_hash: vec![1; 32],
                prefix: "lh-one".into(),
                allowed_models: vec![],
                use_shared_pool: true,
                expires_at: None,
                limits: LimitsChange {
                    rpm: Some(Some(60)),
                    budget: Some(Some(BudgetSetting {
                        limit_nanos: 5,
                        period: BudgetPeriod::Daily,
                        expires_at: None,
                    })),
                    ..Default::default()
                },
            },
            ev("x"),
        )
        .await
        .unwrap();
    store
        .set_user_limits(
            &alice,
            LimitsChange {
                tpm: Some(Some(1000)),
                budget: Some(Some(BudgetSetting {
                    limit_nanos: 9,
                    period: BudgetPeriod::None,
                    expires_at: None,
                })),
                ..Default::default()
            },
            ev("x"),
        )
        .await
        .unwrap();
    store
        .rotate_client_key(
            &key.id,
            &alice,
            Rotation {
                key_hash: vec![2; 32],
                prefix: "lh-two".into(),
                grace: Duration::milliseconds(300),
            },
            ev("x"),
        )
        .await
        .unwrap();
    let v1 = hub.rebuild().await.unwrap();
    let snap = hub.subscribe("t".into(), "t".into()).first.unwrap();
    let c = &snap.client_keys[0];
    assert_eq!((c.key_hash.clone(), c.limits.rpm), (vec![2; 32], Some(60)));
    assert_eq!(c.previous_key_hash, Some(vec![1; 32]));
    assert!(c.previous_valid_until.unwrap() > Utc::now() - Duration::seconds(1));
    let b = c.budget.unwrap();
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert!(b.period_start == today || b.period_start == today - Duration::days(1));
    assert_eq!((b.limit_nanos, b.spent_nanos), (5, 0));
    // Only users with limits or a budget are listed.
    assert_eq!(snap.users.len(), 1);
    assert_eq!(snap.users[0].user_id, alice);
    assert_eq!(snap.users[0].limits.tpm, Some(1000));
    let ub = snap.users[0].budget.unwrap();
    assert_eq!(ub.period, BudgetPeriod::None);
    assert_eq!(
        ub.period_start,
        store
            .user_by_id(&alice)
            .await
            .unwrap()
            .unwrap()
            .budget()
            .unwrap()
            .anchor,
        "a none budget's one period starts at its anchor"
    );
    assert!(!snap.users.iter().any(|u| u.user_id == bob));

    // Once the grace is over, the next rebuild leaves the replaced hash out (a new version).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let v2 = hub.rebuild().await.unwrap();
    assert!(v2 > v1);
    let snap = hub.subscribe("t".into(), "t".into()).first.unwrap();
    assert_eq!(snap.client_keys[0].previous_key_hash, None);
    assert_eq!(snap.client_keys[0].previous_valid_until, None);
    // Nothing else changed: the next rebuild publishes nothing.
    assert_eq!(hub.rebuild().await.unwrap(), v2);
}

/// Budgets carry what the ledger says was spent in their current period — the client key's
/// own, the user's across all of the user's keys — so a proxy whose shared counter is gone
/// starts from it. Stored records alone republish the snapshot at most once per spend refresh;
/// any other change reads the spend afresh.
#[tokio::test]
async fn budgets_carry_the_ledgers_spend_in_their_period() {
    use chrono::{Datelike, Duration, Utc};
    use llmhub_control::hub::{Attempt, BudgetPeriod, Report, RoutingRecord};
    use llmhub_control::store::{
        Actor, AuditEvent, BudgetSetting, LimitsChange, NewClientKey, NewUser, UserStatus,
    };

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let keyring = Keyring::parse(keyring::generate_entry(1).as_str(), None).unwrap();
    let vault = Arc::new(Vault::new(keyring, None));
    let hash_secret = Arc::new(
        HashSecret::load_or_create(&store, &vault.keyring())
            .await
            .unwrap(),
    );
    // One hub that reads the spend only when something else changes (within the test), one
    // that reads it on every rebuild.
    let slow = SnapshotHub::with_spend_refresh(
        store.clone(),
        vault.clone(),
        hash_secret.clone(),
        std::time::Duration::from_secs(3600),
    );
    let eager = SnapshotHub::with_spend_refresh(
        store.clone(),
        vault,
        hash_secret,
        std::time::Duration::ZERO,
    );
    let actor = Actor::default();
    let ev = |a| AuditEvent::new(&actor, a, "test");
    let alice = store
        .create_user(
            NewUser {
                username: "alice".into(),
                email: None,
                password_hash: "$argon2id$x".into(),
                role: "user",
                status: UserStatus::Active,
            },
            ev("x"),
        )
        .await
        .unwrap()
        .id;
    let budget = |period| {
        Some(Some(BudgetSetting {
            limit_nanos: 1_000_000,
            period,
            expires_at: None,
        }))
    };
    for (id, b) in [
        ("ck-daily", budget(BudgetPeriod::Daily)),
        ("ck-other", None),
    ] {
        store
            .insert_client_key(
                NewClientKey {
                    id: id.into(),
                    user_id: alice.clone(),
                    name: id.into(),
                    key_hash: id.as_bytes().to_vec(),
                    prefix: format!("lh-{id}"),
                    allowed_models: vec![],
                    use_shared_pool: true,
                    expires_at: None,
                    limits: LimitsChange {
                        budget: b,
                        ..Default::default()
                    },
                },
                ev("x"),
            )
            .await
            .unwrap();
    }
    store
        .set_user_limits(
            &alice,
            LimitsChange {
                budget: budget(BudgetPeriod::Monthly),
                ..Default::default()
            },
            ev("x"),
        )
        .await
        .unwrap();
    let v0 = slow.rebuild().await.unwrap();
    eager.rebuild().await.unwrap();

    let now = Utc::now();
    let record = |id: &str, key: &str, started_at, cost| RoutingRecord {
        request_id: id.into(),
        started_at: Some(started_at),
        user_id: alice.clone(),
        client_key_prefix: format!("lh-{key}"),
        public_model: "m".into(),
        attempts: vec![Attempt {
            provider_id: "p".into(),
            key_fingerprint: "fp".into(),
            upstream_model: "m".into(),
            status: 200,
            latency_ms: 1,
            class: None,
        }],
        status: 200,
        latency_ms: 1,
        stream: false,
        skipped: vec![],
        prompt_tokens: 10,
        completion_tokens: 1,
        cached_tokens: 0,
        partial: false,
        cost_nanos: cost,
        client_key_id: key.into(),
    };
    let today = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    // Long enough ago to be yesterday whenever the test runs, and within this month unless
    // today is the 1st.
    let yesterday = today - Duration::hours(12);
    let report = Report {
        proxy_id: "proxy-1".into(),
        records: vec![
            record("r1", "ck-daily", now, 300),
            record("r2", "ck-daily", now, 200),
            record("r3", "ck-other", now, 50),
            record("r4", "ck-daily", yesterday, 7000),
        ],
        outcomes: vec![],
    };
    slow.store_report(&report).await.unwrap();
    // Delivered twice: counted once.
    slow.store_report(&report).await.unwrap();

    let spent = |hub: &Arc<SnapshotHub>| {
        let snap = hub.subscribe("t".into(), "t".into()).first.unwrap();
        let key = snap
            .client_keys
            .iter()
            .find(|c| c.id == "ck-daily")
            .unwrap()
            .budget
            .unwrap()
            .spent_nanos;
        (key, snap.users[0].budget.unwrap().spent_nanos)
    };
    let month = if now.date_naive().day0() == 0 {
        550
    } else {
        7550
    };
    // Within its spend refresh and with nothing else changed, a hub publishes nothing.
    assert_eq!(slow.rebuild().await.unwrap(), v0);
    assert_eq!(spent(&slow), (0, 0));
    // Past it (here: at once), the spend alone republishes: the key's today, the user's over
    // all the user's keys this month.
    let v1 = eager.rebuild().await.unwrap();
    assert_eq!(spent(&eager), (500, month));
    // Unchanged spend: nothing to publish.
    assert_eq!(eager.rebuild().await.unwrap(), v1);
    // Any other change reads the spend afresh.
    store
        .set_user_limits(
            &alice,
            LimitsChange {
                rpm: Some(Some(100)),
                ..Default::default()
            },
            ev("x"),
        )
        .await
        .unwrap();
    assert!(slow.rebuild().await.unwrap() > v0);
    assert_eq!(spent(&slow), (500, month));
}
