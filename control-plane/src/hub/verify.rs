//! Verification of a key after an ambiguous refusal. A bare 403 or 402 does not say the key is at
//! fault (the model, a region or a policy may be), so one user's request must not disable a
//! shared key or cool it for an hour on that alone: the proxies rest the key briefly, and the hub
//! probes it once (the provider's models request, as the key test sends it). A key that still
//! works is put back at once; one the provider now refuses as invalid is disabled, one out of
//! quota cooled; no answer leaves the short rest to run out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::mpsc;

use super::{KeyHealth, SnapshotHub};
use crate::hub::FailureClass;
use crate::probe::{Probe, Prober};
use crate::store::StoreError;
use crate::store::health::Origin;

/// Verifications waiting; more are dropped (the short rest still applies).
const QUEUE: usize = 1024;
/// The history's `source` for changes a verification made.
const SOURCE: &str = "verification";

/// A key to verify, and why.
#[derive(Debug, Clone)]
pub struct Verification {
    pub key_id: String,
    pub class: FailureClass,
    /// The client key whose request led to the refusal.
    pub client_key: String,
}

impl SnapshotHub {
    /// Starts verifying keys with `prober`. Without it (hub tests), ambiguous refusals only rest
    /// keys briefly.
    pub fn start_verifier(self: &Arc<Self>, prober: Prober) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel::<Verification>(QUEUE);
        let _ = self.verify_tx.set(tx);
        let hub = self.clone();
        tokio::spawn(async move {
            // One probe per key at a time, however many proxies report it.
            let inflight: Arc<Mutex<HashSet<String>>> = Arc::default();
            while let Some(v) = rx.recv().await {
                if !inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(v.key_id.clone())
                {
                    continue;
                }
                let (hub, prober, inflight) = (hub.clone(), prober.clone(), inflight.clone());
                tokio::spawn(async move {
                    if let Err(e) = hub.verify(&v, &prober).await {
                        tracing::warn!(key_id = %v.key_id, error = %e, "key verification failed");
                    }
                    inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&v.key_id);
                });
            }
        })
    }

    /// Asks for a key to be verified (never blocks; a full queue drops the request).
    pub(super) fn request_verification(&self, v: Verification) {
        if let Some(tx) = self.verify_tx.get()
            && tx.try_send(v).is_err()
        {
            tracing::warn!("key verification queue full; the key only rests briefly");
        }
    }

    async fn verify(&self, v: &Verification, prober: &Prober) -> Result<(), StoreError> {
        let key = self.store.provider_key(&v.key_id).await?;
        let provider = self.store.provider(&key.provider_id).await?;
        let probe = prober.probe_stored(&self.vault, &provider, &key).await;
        let origin = Origin {
            source: SOURCE,
            client_key: Some(v.client_key.as_str()),
        };
        let _health = self.rebuild.lock().await;
        match probe {
            Probe::Works { status, .. } => {
                tracing::info!(
                    key_id = %key.id, fingerprint = %key.fingerprint, status,
                    refused_as = v.class.as_str(), client_key = %v.client_key,
                    "key verified working after an ambiguous refusal; kept in service"
                );
                if self
                    .store
                    .clear_key_health(&key.id, Some(""), SOURCE, None)
                    .await?
                {
                    self.publish_key_state(&key.id, KeyHealth::active(""));
                }
            }
            Probe::Refused {
                class: FailureClass::InvalidKey,
                ..
            } => {
                let reason = FailureClass::InvalidKey.as_str();
                if self.store.disable_key(&key.id, reason, origin).await? {
                    self.publish_key_state(&key.id, KeyHealth::disabled(reason));
                }
            }
            Probe::Refused {
                class: FailureClass::QuotaExhausted,
                ..
            } => {
                let class = FailureClass::QuotaExhausted.as_str();
                let until = Utc::now() + chrono::Duration::hours(1);
                let c = self
                    .store
                    .apply_cooldown(&key.id, "", until, class, origin, None)
                    .await?;
                self.publish_key_state(&key.id, KeyHealth::cooling(&c.model, c.until, &c.class));
            }
            other => {
                // Unreachable, rate limited, refused for another reason: no verdict on the key.
                // Its short rest runs out and the next request is its trial.
                tracing::info!(key_id = %key.id, probe = ?other, "key verification inconclusive");
            }
        }
        Ok(())
    }
}
