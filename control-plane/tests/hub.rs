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
