//! Passwords (argon2id) and access tokens (HS256 JWT with pinned algorithm and checked claims).

use std::sync::Arc;
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
}

/// Hashes and verifies passwords off the async workers, at most `limit` at a time, so a login
/// flood queues briefly and then gets `Busy` instead of exhausting memory (each hash holds
/// `m_cost` KiB).
#[derive(Clone)]
pub struct PasswordHasherPool {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified for unknown users so their timing matches.
    dummy_hash: Arc<String>,
}

impl PasswordHasherPool {
    /// OWASP's minimum for argon2id: m=19456 KiB, t=2, p=1.
    pub fn new(limit: usize) -> Result<Self, AuthError> {
        let params = Params::new(19_456, 2, 1, None).map_err(|_| AuthError::Hashing)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut random = [0u8; 24];
        rand::fill(&mut random);
        let dummy = argon
            .hash_password(&random)
            .map_err(|_| AuthError::Hashing)?
            .to_string();
        Ok(PasswordHasherPool {
            argon,
            permits: Arc::new(Semaphore::new(limit.max(1))),
            dummy_hash: Arc::new(dummy),
        })
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AuthError> {
        tokio::time::timeout(Duration::from_secs(5), self.permits.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)
    }

    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::Hashing);
        }
        let permit = self.permit().await?;
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

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None` (unknown
    /// user), so both paths cost the same.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let permit = self.permit().await?;
        let argon = self.argon.clone();
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.dummy_hash.as_str().to_owned(), str::to_owned);
        let pw = zeroize::Zeroizing::new(password.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            argon.verify_password(&pw, &parsed).is_ok() && known
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

    pub fn issue(&self, user_id: &str, role: Role) -> Result<String, AuthError> {
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
        let pool = PasswordHasherPool::new(2).unwrap();
        let h = pool.hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            pool.verify("correct horse battery", Some(&h))
                .await
                .unwrap()
        );
        assert!(!pool.verify("wrong", Some(&h)).await.unwrap());
        assert!(!pool.verify("anything", None).await.unwrap());
        assert!(
            !pool
                .verify(&"x".repeat(MAX_PASSWORD_BYTES + 1), Some(&h))
                .await
                .unwrap()
        );
    }

    #[test]
    fn token_round_trip() {
        let t = issuer();
        let tok = t.issue("u1", Role::Admin).unwrap();
        let c = t.verify(&tok).unwrap();
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
            "typ":"access","iat":now,"exp":now+60,"jti":"x"});
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
        ] {
            let mut c = good.clone();
            c[k] = v;
            assert!(t.verify(&sign(c)).is_err(), "{k} accepted");
        }
        // tampered payload
        let tok = t.issue("u1", Role::User).unwrap();
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
