//! The master keyring: seals provider keys and other secrets with XChaCha20-Poly1305.
//!
//! Sealed format: `version (u32 big-endian) ‖ nonce (24 bytes) ‖ ciphertext+tag`. The version tag
//! names the master key that sealed the value, so keys can be rotated without guessing. Every
//! seal binds its associated data (the row identity: key id, owner and provider) so a ciphertext
//! copied into another row fails to open. There is no plaintext mode: a missing key is a start-up
//! error, never a fallback.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 4 + NONCE_LEN;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("no master keys given")]
    Empty,
    #[error("entry {0}: expected VERSION:BASE64 with a 32-byte key")]
    BadEntry(usize),
    #[error("master key version {0} appears twice")]
    DuplicateVersion(u32),
    #[error("current master key version {0} is not in the keyring")]
    UnknownCurrent(u32),
    #[error("sealed value names master key version {0}, which the keyring lacks")]
    MissingVersion(u32),
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value failed authentication (tampered, or bound to another row)")]
    Authentication,
}

/// An opened secret (a provider key, a sealed setting). Zeroized on drop; `Debug` is redacted and
/// there is no `Display` or `Serialize`: the bytes are reachable only through [`Plaintext::expose`].
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for keys that are headers (provider API keys are ASCII).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plaintext([redacted])")
    }
}

/// Master keys by version. Debug prints versions only.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, XChaCha20Poly1305>,
    current: u32,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

/// Base64 form of a master key, as written to `master.key` files.
pub fn encode_key(key: &[u8]) -> String {
    B64.encode(key)
}

/// A fresh random 32-byte master key entry `VERSION:BASE64`.
pub fn generate_entry(version: u32) -> Zeroizing<String> {
    let mut key = [0u8; KEY_LEN];
    rand::fill(&mut key);
    let s = Zeroizing::new(format!("{version}:{}", encode_key(&key)));
    key.zeroize();
    s
}

impl Keyring {
    /// Parses `VERSION:BASE64` entries separated by commas, whitespace or newlines.
    pub fn parse(src: &str, current: Option<u32>) -> Result<Self, KeyringError> {
        let mut keys = BTreeMap::new();
        for (i, entry) in src
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (v, k) = entry.split_once(':').ok_or(KeyringError::BadEntry(i + 1))?;
            let version: u32 = v
                .trim()
                .parse()
                .map_err(|_| KeyringError::BadEntry(i + 1))?;
            let bytes = Zeroizing::new(
                B64.decode(k.trim())
                    .map_err(|_| KeyringError::BadEntry(i + 1))?,
            );
            if bytes.len() != KEY_LEN {
                return Err(KeyringError::BadEntry(i + 1));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| KeyringError::BadEntry(i + 1))?;
            if keys.insert(version, cipher).is_some() {
                return Err(KeyringError::DuplicateVersion(version));
            }
        }
        let Some((&highest, _)) = keys.last_key_value() else {
            return Err(KeyringError::Empty);
        };
        let current = current.unwrap_or(highest);
        if !keys.contains_key(&current) {
            return Err(KeyringError::UnknownCurrent(current));
        }
        Ok(Keyring { keys, current })
    }

    pub fn current_version(&self) -> u32 {
        self.current
    }

    pub fn has_version(&self, v: u32) -> bool {
        self.keys.contains_key(&v)
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The same keys with another version sealing new writes.
    pub fn with_current(&self, v: u32) -> Result<Keyring, KeyringError> {
        if !self.keys.contains_key(&v) {
            return Err(KeyringError::UnknownCurrent(v));
        }
        Ok(Keyring {
            keys: self.keys.clone(),
            current: v,
        })
    }

    /// Seals `plaintext` with the current master key, binding `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = &self.keys[&self.current];
        let nonce = XNonce::generate();
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a sealed value; the plaintext is zeroized when dropped.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Plaintext, KeyringError> {
        let version = sealed_version(sealed)?;
        let cipher = self
            .keys
            .get(&version)
            .ok_or(KeyringError::MissingVersion(version))?;
        let nonce =
            XNonce::try_from(&sealed[4..HEADER_LEN]).map_err(|_| KeyringError::Malformed)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad,
                },
            )
            .map(|p| Plaintext(Zeroizing::new(p)))
            .map_err(|_| KeyringError::Authentication)
    }
}

/// The master-key version a sealed value names, without opening it.
pub fn sealed_version(sealed: &[u8]) -> Result<u32, KeyringError> {
    if sealed.len() < HEADER_LEN + 16 {
        return Err(KeyringError::Malformed);
    }
    Ok(u32::from_be_bytes([
        sealed[0], sealed[1], sealed[2], sealed[3],
    ]))
}

/// Associated data for a provider key row.
pub fn provider_key_aad(key_id: &str, owner: Option<&str>, provider_id: &str) -> Vec<u8> {
    format!(
        "llmhub/provider_key/v1|{key_id}|{}|{provider_id}",
        owner.unwrap_or("shared")
    )
    .into_bytes()
}

/// Associated data for a row of the `settings` table.
pub fn setting_aad(name: &str) -> Vec<u8> {
    format!("llmhub/setting/v1|{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(entries: &[(u32, u8)], current: Option<u32>) -> Keyring {
        let src: Vec<String> = entries
            .iter()
            .map(|(v, b)| format!("{v}:{}", encode_key(&[*b; 32])))
            .collect();
        Keyring::parse(&src.join(","), current).unwrap()
    }

    #[test]
    fn round_trip_and_random_nonce() {
        let k = ring(&[(1, 1)], None);
        let a = k.seal(b"sk-secret", b"row-1");
        let b = k.seal(b"sk-secret", b"row-1");
        assert_ne!(a, b, "nonce must be random per encryption");
        assert_eq!(k.open(&a, b"row-1").unwrap().expose(), b"sk-secret");
        assert_eq!(
            format!("{:?}", k.open(&a, b"row-1").unwrap()),
            "Plaintext([redacted])"
        );
    }

    #[test]
    fn aad_binds_the_row() {
        let k = ring(&[(1, 1)], None);
        let a = k.seal(b"sk-secret", &provider_key_aad("k1", Some("u1"), "p1"));
        for other in [
            provider_key_aad("k2", Some("u1"), "p1"),
            provider_key_aad("k1", Some("u2"), "p1"),
            provider_key_aad("k1", None, "p1"),
            provider_key_aad("k1", Some("u1"), "p2"),
        ] {
            assert_eq!(
                k.open(&a, &other).unwrap_err(),
                KeyringError::Authentication
            );
        }
    }

    #[test]
    fn every_flipped_bit_fails_closed() {
        let k = ring(&[(1, 1)], None);
        let sealed = k.seal(b"sk-secret", b"aad");
        // Every bit of the nonce, the ciphertext and the tag.
        for i in 4..sealed.len() {
            for bit in [0u8, 7] {
                let mut t = sealed.clone();
                t[i] ^= 1 << bit;
                assert_eq!(
                    k.open(&t, b"aad").unwrap_err(),
                    KeyringError::Authentication
                );
            }
        }
        assert_eq!(
            k.open(&sealed[..20], b"aad").unwrap_err(),
            KeyringError::Malformed
        );
    }

    #[test]
    fn versions_are_tagged_and_required() {
        let old = ring(&[(1, 1)], None);
        let both = ring(&[(1, 1), (2, 2)], None);
        assert_eq!(both.current_version(), 2);
        let s1 = old.seal(b"x", b"a");
        assert_eq!(sealed_version(&s1).unwrap(), 1);
        assert_eq!(both.open(&s1, b"a").unwrap().expose(), b"x");
        let s2 = both.seal(b"y", b"a");
        assert_eq!(sealed_version(&s2).unwrap(), 2);
        assert_eq!(
            old.open(&s2, b"a").unwrap_err(),
            KeyringError::MissingVersion(2)
        );
        let pinned = ring(&[(1, 1), (2, 2)], Some(1));
        assert_eq!(sealed_version(&pinned.seal(b"z", b"a")).unwrap(), 1);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Keyring::parse("", None).unwrap_err(), KeyringError::Empty);
        assert_eq!(
            Keyring::parse("1:abc", None).unwrap_err(),
            KeyringError::BadEntry(1)
        );
        let e = encode_key(&[1; 32]);
        assert_eq!(
            Keyring::parse(&format!("1:{e},1:{e}"), None).unwrap_err(),
            KeyringError::DuplicateVersion(1)
        );
        assert_eq!(
            Keyring::parse(&format!("1:{e}"), Some(2)).unwrap_err(),
            KeyringError::UnknownCurrent(2)
        );
        assert!(Keyring::parse(&format!("1:{e}\n2:{}\n", encode_key(&[2; 32])), None).is_ok());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = ring(&[(3, 9)], None);
        let s = format!("{k:?}");
        assert!(s.contains('3') && !s.contains(&encode_key(&[9; 32])), "{s}");
    }
}
