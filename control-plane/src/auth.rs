//! Passwords (argon2id) and access tokens (HS256 JWT with pinned algorithm and checked claims).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub const ISSUER: &str = "llmhub-control";
pub const AUDIENCE: &str = "llmhub-admin";
const ACCESS_TYP: &str = "access";

/// Longest password accepted, checked before any hashing work is done.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("too many concurrent password operations")]
    Busy,
    #[error("password hashing failed")]
    Hashing,
    #[error("{0}")]
    WeakPassword(String),
}

/// argon2id cost. The defaults are OWASP's minimum; configuration may only raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            m_kib: 19_456,
            t: 2,
            p: 1,
        }
    }
}

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// zxcvbn's matcher is quadratic; beyond this length the length alone is strength enough.
const ZXCVBN_MAX_CHARS: usize = 100;

/// Checks a new password: length in characters (any Unicode), the byte bound (before any other
/// work), and zxcvbn's estimate, which refuses common, breached-list and guessable passwords and
/// passwords built from the user's own name or email.
pub fn check_password_policy(password: &str, user_inputs: &[&str]) -> Result<(), AuthError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::WeakPassword(format!(
            "password: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword(format!(
            "password: at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if chars <= ZXCVBN_MAX_CHARS {
        let estimate = zxcvbn::zxcvbn(password, user_inputs);
        if (estimate.score() as u8) < 3 {
            let hint = estimate
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(AuthError::WeakPassword(format!(
                "password: too common or too easy to guess{hint}; a few unrelated words make a strong passphrase"
            )));
        }
    }
    Ok(())
}

/// Counters of hashing work, for operators (and for tests proving oversized input costs none).
#[derive(Debug, Default, serde::Serialize)]
pub struct HashStats {
    pub hashes: u64,
    pub verifications: u64,
    pub rejected_busy: u64,
}

/// Outcome of a password verification.
pub struct Verified {
    pub ok: bool,
    /// The stored hash uses weaker parameters than configured; re-hash it now.
    pub needs_rehash: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub typ: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// Session (refresh-token family) this token belongs to.
    pub sid: String,
    /// The user's token version when issued.
    pub ver: i64,
}

/// Hashes and verifies passwords off the async workers, at most `limit` at a time with a bounded
/// queue behind them, so a login flood gets fast 503s instead of exhausting memory (each hash
/// holds `m_kib` KiB).
#[derive(Clone)]
pub struct PasswordHasherPool {
    argon: Argon2<'static>,
    cost: HashCost,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// A real hash of a random password, verified for unknown users so their timing matches.
    dummy_hash: Arc<String>,
    hashes: Arc<AtomicU64>,
    verifications: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl PasswordHasherPool {
    pub fn new(cost: HashCost, limit: usize) -> Result<Self, AuthError> {
        let params =
            Params::new(cost.m_kib, cost.t, cost.p, None).map_err(|_| AuthError::Hashing)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut random = [0u8; 24];
        rand::fill(&mut random);
        let dummy = argon
            .hash_password(&random)
            .map_err(|_| AuthError::Hashing)?
            .to_string();
        let limit = limit.max(1);
        Ok(PasswordHasherPool {
            argon,
            cost,
            permits: Arc::new(Semaphore::new(limit)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: limit * 16,
            dummy_hash: Arc::new(dummy),
            hashes: Arc::default(),
            verifications: Arc::default(),
            rejected: Arc::default(),
        })
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            hashes: self.hashes.load(Ordering::Relaxed),
            verifications: self.verifications.load(Ordering::Relaxed),
            rejected_busy: self.rejected.load(Ordering::Relaxed),
        }
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AuthError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(AuthError::Busy);
        }
        let r = tokio::time::timeout(Duration::from_secs(5), self.permits.clone().acquire_owned())
            .await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(AuthError::Busy)
            }
        }
    }

    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::Hashing);
        }
        let permit = self.permit().await?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let argon = self.argon.clone();
        let pw = zeroize::Zeroizing::new(password.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            argon.hash_password(&pw).map(|h| h.to_string())
        })
        .await
        .map_err(|_| AuthError::Hashing)?
        .map_err(|_| AuthError::Hashing)
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None` (unknown,
    /// locked or disabled account), so every path costs the same.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<Verified, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(Verified {
                ok: false,
                needs_rehash: false,
            });
        }
        let permit = self.permit().await?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let argon = self.argon.clone();
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.dummy_hash.as_str().to_owned(), str::to_owned);
        let pw = zeroize::Zeroizing::new(password.as_bytes().to_vec());
        let cost = self.cost;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Verified {
                    ok: false,
                    needs_rehash: false,
                };
            };
            let ok = argon.verify_password(&pw, &parsed).is_ok() && known;
            let stored = Params::try_from(&parsed).ok();
            let needs_rehash = ok
                && (parsed.algorithm.as_str() != "argon2id"
                    || stored.is_none_or(|p| {
                        p.m_cost() < cost.m_kib || p.t_cost() < cost.t || p.p_cost() < cost.p
                    }));
            Verified { ok, needs_rehash }
        })
        .await
        .map_err(|_| AuthError::Hashing)
    }
}

/// Issues and checks access tokens. The algorithm is pinned to HS256: a token claiming any other
/// algorithm (including `none`) is rejected before its signature is looked at.
pub struct TokenIssuer {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Self, AuthError> {
        let enc = EncodingKey::from_secret(secret).map_err(|_| AuthError::InvalidToken)?;
        let dec = DecodingKey::from_secret(secret).map_err(|_| AuthError::InvalidToken)?;
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Pinned: the header's `alg` must be exactly this one.
        validation.algorithms = vec![jsonwebtoken::Algorithm::HS256];
        // Off by default in jsonwebtoken: a token is not valid before its `nbf`.
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(TokenIssuer {
            enc,
            dec,
            validation,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        session_id: &str,
        version: i64,
    ) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            typ: ACCESS_TYP.into(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: session_id.to_owned(),
            ver: version,
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.enc,
        )
        .map_err(|_| AuthError::InvalidToken)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| AuthError::InvalidToken)?;
        if data.claims.typ != ACCESS_TYP {
            return Err(AuthError::InvalidToken);
        }
        Ok(data.claims)
    }
}

/// A random password for the bootstrap admin: 24 characters from an unambiguous alphabet.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(&[42u8; 32], Duration::from_secs(900)).unwrap()
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let pool = PasswordHasherPool::new(HashCost::default(), 2).unwrap();
        let h = pool.hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let v = pool
            .verify("correct horse battery", Some(&h))
            .await
            .unwrap();
        assert!(v.ok && !v.needs_rehash);
        assert!(!pool.verify("wrong", Some(&h)).await.unwrap().ok);
        assert!(!pool.verify("anything", None).await.unwrap().ok);
        let before = pool.stats();
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(!pool.verify(&long, Some(&h)).await.unwrap().ok);
        assert_eq!(
            pool.stats().verifications,
            before.verifications,
            "no work for oversized input"
        );
    }

    #[tokio::test]
    async fn stronger_configured_cost_asks_for_rehash() {
        let weak = PasswordHasherPool::new(HashCost::default(), 1).unwrap();
        let h = weak.hash("correct horse battery").await.unwrap();
        let cost = HashCost {
            m_kib: 19_456,
            t: 3,
            p: 1,
        };
        let strong = PasswordHasherPool::new(cost, 1).unwrap();
        let v = strong
            .verify("correct horse battery", Some(&h))
            .await
            .unwrap();
        assert!(v.ok && v.needs_rehash);
        let h2 = strong.hash("correct horse battery").await.unwrap();
        assert!(h2.contains("t=3"), "{h2}");
        let v2 = strong
            .verify("correct horse battery", Some(&h2))
            .await
            .unwrap();
        assert!(v2.ok && !v2.needs_rehash);
    }

    #[test]
    fn password_policy() {
        for bad in [
            "short",
            "password",
            "password123",
            "12345678",
            "qwertyuiop",
            "alice2024!",
        ] {
            assert!(
                check_password_policy(bad, &["alice"]).is_err(),
                "{bad} accepted"
            );
        }
        assert!(check_password_policy("alicealicealice", &["alice"]).is_err());
        assert!(check_password_policy(&"x".repeat(MAX_PASSWORD_BYTES + 1), &[]).is_err());
        for good in [
            "correct horse battery staple",
            "Зелёный слон танцует под дождём в полночь на крыше старого дома у моря",
            "tX9#vQ2!mL7$",
        ] {
            assert!(
                check_password_policy(good, &["alice"]).is_ok(),
                "{good} refused"
            );
        }
    }

    #[test]
    fn token_round_trip() {
        let t = issuer();
        let tok = t.issue("u1", Role::Admin, "s1", 3).unwrap();
        let c = t.verify(&tok).unwrap();
        assert_eq!((c.sid.as_str(), c.ver), ("s1", 3));
        assert_eq!((c.sub.as_str(), c.role), ("u1", Role::Admin));
    }

    fn forge(header: &str, claims: serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            sig
        )
    }

    #[test]
    fn rejects_forged_and_wrong_tokens() {
        let t = issuer();
        let now = jsonwebtoken::get_current_timestamp();
        let good = serde_json::json!({"sub":"u1","role":"admin","iss":ISSUER,"aud":AUDIENCE,
            "typ":"access","iat":now,"exp":now+60,"jti":"x","sid":"s","ver":0});
        // alg none
        assert!(
            t.verify(&forge(r#"{"alg":"none","typ":"JWT"}"#, good.clone(), ""))
                .is_err()
        );
        // another algorithm, signed with the same secret
        let hs512 = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(&[42u8; 32]).unwrap(),
        )
        .unwrap();
        assert!(t.verify(&hs512).is_err());
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(&[42u8; 32]).unwrap(),
            )
            .unwrap()
        };
        assert!(t.verify(&sign(good.clone())).is_ok());
        for (k, v) in [
            ("exp", serde_json::json!(now - 120)),
            ("aud", serde_json::json!("other")),
            ("iss", serde_json::json!("other")),
            ("typ", serde_json::json!("refresh")),
            ("nbf", serde_json::json!(now + 120)),
        ] {
            let mut c = good.clone();
            c[k] = v;
            assert!(t.verify(&sign(c)).is_err(), "{k} accepted");
        }
        // tampered payload
        let tok = t.issue("u1", Role::User, "s", 0).unwrap();
        let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
        let mut c: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        c["role"] = serde_json::json!("admin");
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        assert!(t.verify(&parts.join(".")).is_err());
        // other secret
        let other = TokenIssuer::new(&[7u8; 32], Duration::from_secs(900)).unwrap();
        assert!(other.verify(&tok).is_err());
    }

    #[test]
    fn random_passwords_differ() {
        let a = random_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_password());
    }
}
