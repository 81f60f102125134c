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
        };
        // An error here makes the proxy resend its report batch forever.
        hub.apply_outcome(&o, "proxy-1").await.unwrap();
    }
}
