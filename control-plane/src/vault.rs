//! Provider-key sealing and client-key hashing on top of the keyring and the store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
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
        Ok(HashSecret(plain))
    }

    #[cfg(test)]
    pub fn from_bytes(b: &[u8]) -> Self {
        HashSecret(Zeroizing::new(b.to_vec()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        m.update(domain);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Keyed hash stored for a client key; proxies compute the same over a presented key.
    pub fn client_key_hash(&self, key: &str) -> Vec<u8> {
        // No domain prefix: the proxy computes plain HMAC(secret, key).
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
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
