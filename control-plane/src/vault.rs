//! Provider-key sealing and client-key hashing on top of the keyring and the store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keyring::{Keyring, KeyringError, setting_aad};
use crate::store::{Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

pub const CLIENT_KEY_HASH_SECRET: &str = "client_key_hash_secret";
pub const CLIENT_KEY_PREFIX: &str = "lh-";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealed setting {name}: {source}")]
    Keyring {
        name: &'static str,
        source: KeyringError,
    },
}

/// The secret that keys client-key hashes and provider-key fingerprints. It lives sealed in the
/// `settings` table (so it survives restarts and is shared by replicas) and is sent to proxies
/// inside the mTLS snapshot so they can hash presented keys.
pub struct HashSecret(Zeroizing<Vec<u8>>);

impl HashSecret {
    pub async fn load_or_create(store: &Store, keyring: &Keyring) -> Result<Self, VaultError> {
        let aad = setting_aad(CLIENT_KEY_HASH_SECRET);
        let row = match store.setting(CLIENT_KEY_HASH_SECRET).await? {
            Some(row) => row,
            None => {
                let mut fresh = Zeroizing::new(vec![0u8; 32]);
                rand::fill(fresh.as_mut_slice());
                let sealed = keyring.seal(&fresh, &aad);
                store
                    .insert_setting_if_absent(
                        CLIENT_KEY_HASH_SECRET,
                        sealed,
                        keyring.current_version(),
                    )
                    .await?
            }
        };
        let plain = keyring
            .open(&row.sealed, &aad)
            .map_err(|source| VaultError::Keyring {
                name: CLIENT_KEY_HASH_SECRET,
                source,
            })?;
        Ok(HashSecret(Zeroizing::new(plain.expose().to_vec())))
    }

    #[cfg(test)]
    pub fn from_bytes(b: &[u8]) -> Self {
        HashSecret(Zeroizing::new(b.to_vec()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        m.update(domain);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Keyed hash stored for a client key; proxies compute the same over a presented key.
    pub fn client_key_hash(&self, key: &str) -> Vec<u8> {
        // No domain prefix: the proxy computes plain HMAC(secret, key).
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        m.update(key.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// Keyed hash under which a refresh token is stored.
    pub fn refresh_token_hash(&self, token: &str) -> Vec<u8> {
        self.mac(b"llmhub/refresh/v1|", token.as_bytes()).to_vec()
    }

    /// CSRF token bound to a session (double-submit: cookie and header must both carry it).
    pub fn csrf_token(&self, session_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(b"llmhub/csrf/v1|", session_id.as_bytes()))
    }

    /// Key of the audit log's hash chain.
    pub fn audit_key(&self) -> crate::store::AuditKey {
        crate::store::AuditKey(Zeroizing::new(self.mac(b"llmhub/audit/v1|", b"")))
    }

    /// Stable, non-reversible identifier of a provider key for logs and duplicate detection.
    pub fn fingerprint(&self, provider_key: &str) -> String {
        let d = self.mac(b"llmhub/fingerprint/v1|", provider_key.as_bytes());
        format!("fp_{}", hex::encode(&d[..8]))
    }
}

/// A new client key `lh-<43 url-safe chars>` (256 random bits) and its display prefix.
pub fn generate_client_key() -> (Zeroizing<String>, String) {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let key = Zeroizing::new(format!(
        "{CLIENT_KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(raw)
    ));
    let prefix = key[..CLIENT_KEY_PREFIX.len() + 6].to_owned();
    (key, prefix)
}

/// A new opaque refresh token (256 random bits).
pub fn generate_refresh_token() -> Zeroizing<String> {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    Zeroizing::new(format!("lhr_{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// Masked display form: `sk-****abcd`. Reveals at most the last four characters, and nothing for
/// keys shorter than 12 characters.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "****".into();
    }
    let head = if key.starts_with("sk-") { "sk-" } else { "" };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        for (k, m) in [
            ("sk-proj-abcdefghijklmnop1234", "sk-****1234"),
            ("AIzaSyabcdefghijklmnopqrstuvwx", "****uvwx"),
            ("short", "****"),
            ("sk-12345678", "****"),
        ] {
            assert_eq!(mask(k), m, "{k}");
        }
    }

    #[test]
    fn client_keys_are_random_and_prefixed() {
        let (a, pa) = generate_client_key();
        let (b, _) = generate_client_key();
        assert_ne!(*a, *b);
        assert!(a.starts_with("lh-") && a.len() == 46, "{}", a.len());
        assert!(a.starts_with(&pa) && pa.len() == 9);
    }

    #[test]
    fn hashes_are_keyed() {
        let s1 = HashSecret::from_bytes(&[1; 32]);
        let s2 = HashSecret::from_bytes(&[2; 32]);
        assert_ne!(s1.client_key_hash("lh-x"), s2.client_key_hash("lh-x"));
        assert_eq!(s1.fingerprint("sk-a"), s1.fingerprint("sk-a"));
        assert_ne!(s1.fingerprint("sk-a"), s2.fingerprint("sk-a"));
        assert!(!s1.fingerprint("sk-abc").contains("abc"));
    }
}

// ---- the master keyring at run time: switching, reloading, re-wrapping, retiring ----

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keyring::provider_key_aad;
use crate::store::vault_rows::SealedRow;
use crate::store::{Actor, AuditEvent};

/// Sealed setting holding the vault's shared state (current version, retired versions), so every
/// replica and the CLI agree.
pub const VAULT_STATE: &str = "vault_state";

#[derive(Debug, thiserror::Error)]
pub enum VaultAdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    current: u32,
    retired: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapProgress {
    pub running: bool,
    pub target_version: u32,
    pub total: u64,
    pub rewrapped: u64,
    pub failed: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct VaultStatus {
    pub versions: Vec<u32>,
    pub current: u32,
    pub retired: Vec<u32>,
    /// Sealed values (provider keys and settings) per master-key version.
    pub sealed_by_version: BTreeMap<u32, u64>,
    /// Provider keys whose ciphertext failed to open at the last snapshot build.
    pub unreadable_keys: Vec<String>,
    pub rewrap: RewrapProgress,
    /// Whether `reload` can pick up new keys (only when they come from `master_key_file`).
    pub reloadable: bool,
}

/// The keyring as the running control plane uses it. Swapped whole on every change, so readers
/// (snapshot builds, key writes) never see a half-updated keyring.
pub struct Vault {
    keyring: ArcSwap<Keyring>,
    file: Option<PathBuf>,
    retired: Mutex<BTreeSet<u32>>,
    progress: Mutex<RewrapProgress>,
    unreadable: Mutex<BTreeSet<String>>,
    /// Serializes changes of the shared state (switch, retire, reload) with adopting it from the
    /// store (`sync`): a sync that read the stored state just before a change was persisted must
    /// not apply it afterwards and undo the change in memory.
    state_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vault {
    pub fn new(keyring: Keyring, file: Option<PathBuf>) -> Self {
        Vault {
            keyring: ArcSwap::from_pointee(keyring),
            file,
            retired: Mutex::default(),
            progress: Mutex::default(),
            unreadable: Mutex::default(),
            state_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.load_full()
    }

    /// Called by the snapshot build with the ids of keys that failed to open.
    pub fn set_unreadable(&self, ids: BTreeSet<String>) {
        *lock(&self.unreadable) = ids;
    }

    pub fn is_unreadable(&self, id: &str) -> bool {
        lock(&self.unreadable).contains(id)
    }

    /// Refuses to run when any sealed row names a master-key version the keyring lacks: such a
    /// row could never be opened, and the operator must restore the key rather than lose data.
    pub async fn check_versions(&self, store: &Store) -> Result<(), VaultAdminError> {
        let ring = self.keyring();
        let missing: Vec<u32> = store
            .sealed_counts()
            .await?
            .keys()
            .copied()
            .filter(|v| !ring.has_version(*v))
            .collect();
        if !missing.is_empty() {
            return Err(VaultAdminError::Invalid(format!(
                "stored secrets are sealed with master key version(s) {missing:?}, which are not configured"
            )));
        }
        Ok(())
    }

    /// Adopts the shared state (current version, retired versions) from the store.
    pub async fn sync(&self, store: &Store) -> Result<(), VaultAdminError> {
        let _state = self.state_lock.lock().await;
        let Some(row) = store.setting(VAULT_STATE).await? else {
            return Ok(());
        };
        let ring = self.keyring();
        let plain = ring
            .open(&row.sealed, &setting_aad(VAULT_STATE))
            .map_err(|e| VaultAdminError::Invalid(format!("vault state: {e}")))?;
        let state: PersistedState = serde_json::from_slice(plain.expose())
            .map_err(|e| VaultAdminError::Invalid(format!("vault state: {e}")))?;
        if state.current != ring.current_version() {
            match ring.with_current(state.current) {
                Ok(next) => {
                    tracing::info!(
                        version = state.current,
                        "adopting the shared current master key version"
                    );
                    self.keyring.store(Arc::new(next));
                }
                Err(_) => tracing::error!(
                    version = state.current,
                    "the shared current master key version is not configured here; keeping {}",
                    ring.current_version()
                ),
            }
        }
        let retired: BTreeSet<u32> = state.retired.into_iter().collect();
        *lock(&self.retired) = retired;
        Ok(())
    }

    /// Stores the shared state `ring`'s current version and `retired` describe, sealed with
    /// `ring`. Called with the state lock held, before memory changes.
    async fn persist(
        &self,
        store: &Store,
        ring: &Keyring,
        retired: &BTreeSet<u32>,
        audit: AuditEvent,
    ) -> Result<(), VaultAdminError> {
        let state = PersistedState {
            current: ring.current_version(),
            retired: retired.iter().copied().collect(),
        };
        let json = serde_json::to_vec(&state).unwrap_or_default();
        let sealed = ring.seal(&json, &setting_aad(VAULT_STATE));
        store
            .put_setting(VAULT_STATE, sealed, ring.current_version(), Some(audit))
            .await?;
        Ok(())
    }

    pub async fn status(&self, store: &Store) -> Result<VaultStatus, VaultAdminError> {
        // Progress first, counts after: a status that says a re-wrap finished then always shows
        // the counts from after it. (No lock is held across the await.)
        let rewrap = lock(&self.progress).clone();
        let sealed_by_version = store.sealed_counts().await?;
        let ring = self.keyring();
        let retired = lock(&self.retired).iter().copied().collect();
        let unreadable_keys = lock(&self.unreadable).iter().cloned().collect();
        Ok(VaultStatus {
            versions: ring.versions(),
            current: ring.current_version(),
            retired,
            sealed_by_version,
            unreadable_keys,
            rewrap,
            reloadable: self.file.is_some(),
        })
    }

    /// Switches new writes to `version`.
    pub async fn set_current(
        &self,
        store: &Store,
        version: u32,
        actor: &Actor,
    ) -> Result<(), VaultAdminError> {
        let _state = self.state_lock.lock().await;
        let retired = lock(&self.retired).contains(&version);
        if retired {
            return Err(VaultAdminError::Conflict(format!(
                "version {version} is retired"
            )));
        }
        let ring = self.keyring();
        let from = ring.current_version();
        let next = ring
            .with_current(version)
            .map_err(|e| VaultAdminError::Invalid(e.to_string()))?;
        let ev = AuditEvent::new(actor, "vault_current_changed", "vault")
            .target(version.to_string())
            .detail(serde_json::json!({"from": from, "to": version}));
        let retired = lock(&self.retired).clone();
        // Stored first: memory changes only once the shared state says so.
        self.persist(store, &next, &retired, ev).await?;
        self.keyring.store(Arc::new(next));
        Ok(())
    }

    /// Re-reads `master_key_file`. Refused when the new file lacks a version that sealed data (or
    /// the current version) still needs.
    pub async fn reload(&self, store: &Store, actor: &Actor) -> Result<Vec<u32>, VaultAdminError> {
        let _state = self.state_lock.lock().await;
        let path = self.file.as_ref().ok_or_else(|| {
            VaultAdminError::Invalid(
                "master keys come from the environment; restart the control plane to change them"
                    .into(),
            )
        })?;
        let src =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                VaultAdminError::Invalid(format!("cannot read master_key_file: {e}"))
            })?);
        let current = self.keyring().current_version();
        let next = Keyring::parse(&src, Some(current)).map_err(|e| {
            VaultAdminError::Conflict(format!(
                "master_key_file: {e} (the current version must stay)"
            ))
        })?;
        let needed: Vec<u32> = store
            .sealed_counts()
            .await?
            .keys()
            .copied()
            .filter(|v| !next.has_version(*v))
            .collect();
        if !needed.is_empty() {
            return Err(VaultAdminError::Conflict(format!(
                "master_key_file lacks version(s) {needed:?} that stored secrets still use"
            )));
        }
        let versions = next.versions();
        self.keyring.store(Arc::new(next));
        let ev = AuditEvent::new(actor, "vault_reloaded", "vault")
            .detail(serde_json::json!({"versions": versions}));
        store.audit(ev).await?;
        Ok(versions)
    }

    /// Retires `version`: refused while anything is still sealed with it or it is current.
    pub async fn retire(
        &self,
        store: &Store,
        version: u32,
        actor: &Actor,
    ) -> Result<(), VaultAdminError> {
        let _state = self.state_lock.lock().await;
        if self.keyring().current_version() == version {
            return Err(VaultAdminError::Conflict(format!(
                "version {version} is current; switch new writes to another version first"
            )));
        }
        let in_use = store
            .sealed_counts()
            .await?
            .get(&version)
            .copied()
            .unwrap_or(0);
        if in_use > 0 {
            return Err(VaultAdminError::Conflict(format!(
                "{in_use} sealed value(s) still use version {version}; re-wrap them first"
            )));
        }
        let mut retired = lock(&self.retired).clone();
        retired.insert(version);
        let ev =
            AuditEvent::new(actor, "vault_version_retired", "vault").target(version.to_string());
        self.persist(store, &self.keyring(), &retired, ev).await?;
        *lock(&self.retired) = retired;
        Ok(())
    }

    /// Starts a re-wrap unless one is running; returns false when one already is.
    pub fn begin_rewrap(&self) -> bool {
        let mut p = lock(&self.progress);
        if p.running {
            return false;
        }
        *p = RewrapProgress {
            running: true,
            target_version: self.keyring().current_version(),
            started_at: Some(Utc::now()),
            ..Default::default()
        };
        true
    }

    /// Re-seals every value not under the current version, `batch` rows at a time, while the
    /// control plane keeps serving. Each row is swapped only if its ciphertext did not change in
    /// between. Call after [`Vault::begin_rewrap`] returned true.
    pub async fn run_rewrap(
        &self,
        store: &Store,
        batch: u64,
        actor: &Actor,
    ) -> Result<RewrapProgress, VaultAdminError> {
        let result = self.rewrap_rows(store, batch, actor).await;
        let mut p = lock(&self.progress);
        p.running = false;
        p.finished_at = Some(Utc::now());
        let snapshot = p.clone();
        drop(p);
        result.map(|()| snapshot)
    }

    async fn rewrap_rows(
        &self,
        store: &Store,
        batch: u64,
        actor: &Actor,
    ) -> Result<(), VaultAdminError> {
        let ring = self.keyring();
        let target = ring.current_version();
        let total: u64 = store
            .sealed_counts()
            .await?
            .iter()
            .filter(|(v, _)| **v != target)
            .map(|(_, n)| *n)
            .sum();
        lock(&self.progress).total = total;
        store
            .audit(
                AuditEvent::new(actor, "vault_rewrap_started", "vault")
                    .target(target.to_string())
                    .detail(serde_json::json!({"rows": total})),
            )
            .await?;
        let mut failed_ids: BTreeSet<String> = BTreeSet::new();
        loop {
            let rows = store
                .rows_not_under(target, batch + failed_ids.len() as u64)
                .await?;
            let mut progressed = false;
            for row in rows {
                let (id, swapped) = match &row {
                    SealedRow::ProviderKey(k) => {
                        if failed_ids.contains(&k.id) {
                            continue;
                        }
                        let aad =
                            provider_key_aad(&k.id, k.owner_user_id.as_deref(), &k.provider_id);
                        match ring.open(&k.sealed, &aad) {
                            Ok(plain) => {
                                let fresh = ring.seal(plain.expose(), &aad);
                                (
                                    k.id.clone(),
                                    Some(
                                        store
                                            .swap_provider_key_sealed(
                                                &k.id, &k.sealed, fresh, target,
                                            )
                                            .await?,
                                    ),
                                )
                            }
                            Err(e) => {
                                tracing::error!(key_id = %k.id, error = %e, "cannot open provider key for re-wrap");
                                (k.id.clone(), None)
                            }
                        }
                    }
                    SealedRow::Setting(s) => {
                        let key = format!("setting:{}", s.name);
                        if failed_ids.contains(&key) {
                            continue;
                        }
                        let aad = setting_aad(&s.name);
                        match ring.open(&s.sealed, &aad) {
                            Ok(plain) => {
                                let fresh = ring.seal(plain.expose(), &aad);
                                (
                                    key,
                                    Some(
                                        store
                                            .swap_setting_sealed(&s.name, &s.sealed, fresh, target)
                                            .await?,
                                    ),
                                )
                            }
                            Err(e) => {
                                tracing::error!(setting = %s.name, error = %e, "cannot open setting for re-wrap");
                                (key, None)
                            }
                        }
                    }
                };
                match swapped {
                    Some(true) => {
                        lock(&self.progress).rewrapped += 1;
                        progressed = true;
                    }
                    // Changed under us: the next batch reads it again.
                    Some(false) => progressed = true,
                    None => {
                        lock(&self.progress).failed += 1;
                        failed_ids.insert(id);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let p = lock(&self.progress).clone();
        store
            .audit(
                AuditEvent::new(actor, "vault_rewrap_finished", "vault")
                    .target(target.to_string())
                    .detail(serde_json::json!({"rewrapped": p.rewrapped, "failed": p.failed})),
            )
            .await?;
        Ok(())
    }
}
