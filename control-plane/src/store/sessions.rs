//! Sign-in sessions and their rotating refresh tokens.
//!
//! A session is one sign-in; its refresh tokens form a family. Each refresh token can be
//! exchanged once: the exchange marks it used and issues the next one. Presenting a used token
//! again means it was copied, so the whole session is revoked.

use chrono::{Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::entities::{refresh_tokens, sessions};
use super::{AuditEvent, Result, Store, new_id};

pub async fn revoke_all_for_user<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    reason: &str,
) -> Result<u64> {
    let res = sessions::Entity::update_many()
        .set(sessions::ActiveModel {
            revoked_at: Set(Some(Utc::now())),
            revoked_reason: Set(Some(reason.to_owned())),
            ..Default::default()
        })
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}

async fn revoke<C: ConnectionTrait>(conn: &C, session_id: &str, reason: &str) -> Result<bool> {
    let res = sessions::Entity::update_many()
        .set(sessions::ActiveModel {
            revoked_at: Set(Some(Utc::now())),
            revoked_reason: Set(Some(reason.to_owned())),
            ..Default::default()
        })
        .filter(sessions::Column::Id.eq(session_id))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(res.rows_affected > 0)
}

async fn insert_refresh<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
    token_hash: Vec<u8>,
    ttl: Duration,
) -> Result<()> {
    let now = Utc::now();
    refresh_tokens::Entity::insert(refresh_tokens::ActiveModel {
        id: Set(new_id()),
        session_id: Set(session_id.to_owned()),
        token_hash: Set(token_hash),
        created_at: Set(now),
        expires_at: Set(now + ttl),
        used_at: Set(None),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

pub enum RefreshOutcome {
    Rotated(sessions::Model),
    /// A used token was presented again; the session is now revoked.
    Reused(sessions::Model),
    Invalid,
}

impl Store {
    /// Starts a session with its first refresh token; `audit` (the successful login) commits
    /// with it.
    pub async fn create_session(
        &self,
        user_id: &str,
        ip: &str,
        user_agent: &str,
        ttl: Duration,
        refresh_hash: Vec<u8>,
        audit: AuditEvent,
    ) -> Result<sessions::Model> {
        let now = Utc::now();
        let txn = self.begin().await?;
        let s = sessions::Entity::insert(sessions::ActiveModel {
            id: Set(new_id()),
            user_id: Set(user_id.to_owned()),
            created_at: Set(now),
            last_used_at: Set(now),
            expires_at: Set(now + ttl),
            revoked_at: Set(None),
            revoked_reason: Set(None),
            ip: Set(ip.chars().take(64).collect()),
            user_agent: Set(user_agent.chars().take(256).collect()),
        })
        .exec_with_returning(&txn)
        .await?;
        insert_refresh(&txn, &s.id, refresh_hash, ttl).await?;
        let ev = audit.detail(serde_json::json!({"session_id": s.id}));
        self.commit_audited(txn, ev).await?;
        Ok(s)
    }

    pub async fn session(&self, id: &str) -> Result<Option<sessions::Model>> {
        Ok(sessions::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?)
    }

    /// Exchanges a refresh token for the next one. `reuse_audit` is recorded (with the session
    /// revocation, in one transaction) when the token was already used.
    pub async fn rotate_refresh(
        &self,
        presented_hash: &[u8],
        next_hash: Vec<u8>,
        reuse_audit: AuditEvent,
    ) -> Result<RefreshOutcome> {
        let now = Utc::now();
        let txn = self.begin().await?;
        let Some(token) = refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(presented_hash.to_vec()))
            .one(&txn)
            .await?
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        let Some(session) = sessions::Entity::find_by_id(token.session_id.clone())
            .one(&txn)
            .await?
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        if session.revoked_at.is_some() || session.expires_at <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        // Claim the token; only one exchange can win.
        let claimed = refresh_tokens::Entity::update_many()
            .set(refresh_tokens::ActiveModel {
                used_at: Set(Some(now)),
                ..Default::default()
            })
            .filter(refresh_tokens::Column::Id.eq(token.id.clone()))
            .filter(refresh_tokens::Column::UsedAt.is_null())
            .exec(&txn)
            .await?;
        if claimed.rows_affected == 0 {
            revoke(&txn, &session.id, "refresh_reuse").await?;
            let ev = reuse_audit
                .target(&session.user_id)
                .detail(serde_json::json!({"session_id": session.id}));
            self.commit_audited(txn, ev).await?;
            return Ok(RefreshOutcome::Reused(session));
        }
        if token.expires_at <= now {
            txn.commit().await?;
            return Ok(RefreshOutcome::Invalid);
        }
        let remaining = session.expires_at - now;
        insert_refresh(&txn, &session.id, next_hash, remaining).await?;
        sessions::Entity::update_many()
            .set(sessions::ActiveModel {
                last_used_at: Set(now),
                ..Default::default()
            })
            .filter(sessions::Column::Id.eq(session.id.clone()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(RefreshOutcome::Rotated(session))
    }

    /// Ends one session (logout). Returns false when it was already ended.
    pub async fn revoke_session(&self, id: &str, reason: &str, audit: AuditEvent) -> Result<bool> {
        let txn = self.begin().await?;
        let changed = revoke(&txn, id, reason).await?;
        let ev = audit.detail(serde_json::json!({"session_id": id}));
        self.commit_audited(txn, ev).await?;
        Ok(changed)
    }
}

impl Store {
    /// The session a refresh token belongs to, without using it (for the CSRF check).
    pub async fn session_for_refresh(&self, token_hash: &[u8]) -> Result<Option<String>> {
        Ok(refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(token_hash.to_vec()))
            .one(&self.db)
            .await?
            .map(|t| t.session_id))
    }
}
