//! Client keys: what callers present to the proxies. Only a keyed hash of each key is stored;
//! after a rotation the replaced key's hash is kept until its grace period ends.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::client_keys;
use super::limits::{Columns, LimitsChange};
use super::{AuditEvent, Result, Store, StoreError, json_list};

pub struct NewClientKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub prefix: String,
    pub allowed_models: Vec<String>,
    pub use_shared_pool: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// The owner's limits and budget for the key (applied to none).
    pub limits: LimitsChange,
}

/// Fields of a client key its owner (or an admin) may change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ClientKeyChange {
    pub name: Option<String>,
    pub allowed_models: Option<Vec<String>>,
    /// `Some(None)`: the key no longer expires.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub limits: LimitsChange,
}

/// A new secret for a client key; the old one stays valid for `grace` (zero: not at all).
pub struct Rotation {
    pub key_hash: Vec<u8>,
    pub prefix: String,
    pub grace: chrono::Duration,
}

impl Store {
    pub async fn insert_client_key(
        &self,
        k: NewClientKey,
        audit: AuditEvent,
    ) -> Result<client_keys::Model> {
        let now = Utc::now();
        let mut limits = Columns::none();
        limits.apply(&k.limits, now);
        let mut m = client_keys::ActiveModel {
            id: Set(k.id),
            user_id: Set(k.user_id),
            name: Set(k.name),
            key_hash: Set(k.key_hash),
            prefix: Set(k.prefix),
            allowed_models: Set(json_list(&k.allowed_models)),
            enabled: Set(true),
            use_shared_pool: Set(k.use_shared_pool),
            expires_at: Set(k.expires_at),
            created_at: Set(now),
            revoked_at: Set(None),
            previous_key_hash: Set(None),
            previous_valid_until: Set(None),
            rotated_at: Set(None),
            ..Default::default()
        };
        let audit_limits = limits.audit_value();
        m.set_limit_columns(limits);
        let txn = self.begin().await?;
        let row = client_keys::Entity::insert(m)
            .exec_with_returning(&txn)
            .await?;
        let ev = audit.target(&row.id).detail(serde_json::json!({
            "name": row.name, "prefix": row.prefix, "limits": audit_limits,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn client_key(&self, id: &str) -> Result<client_keys::Model> {
        client_keys::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn client_keys(&self) -> Result<Vec<client_keys::Model>> {
        Ok(client_keys::Entity::find()
            .order_by_asc(client_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    pub async fn client_keys_of(&self, user_id: &str) -> Result<Vec<client_keys::Model>> {
        Ok(client_keys::Entity::find()
            .filter(client_keys::Column::UserId.eq(user_id))
            .order_by_asc(client_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// The key `id` of `owner` for a change: `NotFound` when it does not exist or belongs to
    /// someone else, `Revoked` when it was revoked (a revoked key never changes again).
    async fn changeable_client_key(
        txn: &sea_orm::DatabaseTransaction,
        id: &str,
        owner: &str,
    ) -> Result<client_keys::Model> {
        let row = client_keys::Entity::find_by_id(id.to_owned())
            .one(txn)
            .await?
            .filter(|k| k.user_id == owner)
            .ok_or(StoreError::NotFound)?;
        if row.revoked_at.is_some() {
            return Err(StoreError::Revoked);
        }
        Ok(row)
    }

    /// Edits a client key of `owner` (another user's key is `NotFound`). An admin's edit passes
    /// the owner the API looked up, so the change applies to exactly the key it checked.
    pub async fn update_client_key(
        &self,
        id: &str,
        owner: &str,
        change: ClientKeyChange,
        audit: AuditEvent,
    ) -> Result<client_keys::Model> {
        let now = Utc::now();
        let txn = self.begin().await?;
        let row = Self::changeable_client_key(&txn, id, owner).await?;
        let mut limits = row.limit_columns();
        let before = limits.audit_value();
        let mut changed = limits.apply(&change.limits, now);
        let mut m: client_keys::ActiveModel = row.into();
        if let Some(n) = change.name {
            m.name = Set(n);
            changed.push("name");
        }
        if let Some(models) = change.allowed_models {
            m.allowed_models = Set(json_list(&models));
            changed.push("allowed_models");
        }
        if let Some(e) = change.expires_at {
            m.expires_at = Set(e);
            changed.push("expires_at");
        }
        let after = limits.audit_value();
        m.set_limit_columns(limits);
        let row = client_keys::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "prefix": row.prefix,
            "owner": row.user_id,
            "changed": changed,
            "limits": {"from": before, "to": after},
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    /// Replaces the key's secret (hash and display prefix). The replaced hash stays valid until
    /// `now + grace`; a zero grace ends it at once. Only the owner rotates: the new secret is
    /// returned to the caller, and an admin must not obtain a working key of another user.
    pub async fn rotate_client_key(
        &self,
        id: &str,
        owner: &str,
        rotation: Rotation,
        audit: AuditEvent,
    ) -> Result<client_keys::Model> {
        let now = Utc::now();
        let txn = self.begin().await?;
        let row = Self::changeable_client_key(&txn, id, owner).await?;
        let old_prefix = row.prefix.clone();
        let old_hash = row.key_hash.clone();
        let mut m: client_keys::ActiveModel = row.into();
        // Only one previous key: a second rotation within a grace ends the first secret now.
        let keep_old = rotation.grace > chrono::Duration::zero();
        m.previous_key_hash = Set(keep_old.then_some(old_hash));
        m.previous_valid_until = Set(keep_old.then(|| now + rotation.grace));
        m.key_hash = Set(rotation.key_hash);
        m.prefix = Set(rotation.prefix);
        m.rotated_at = Set(Some(now));
        let row = client_keys::Entity::update(m)
            .exec(&txn)
            .await
            .map_err(|e| StoreError::from(e).conflict_as("client key"))?;
        let ev = audit.target(id).detail(serde_json::json!({
            "prefix": {"from": old_prefix, "to": row.prefix},
            "grace_seconds": rotation.grace.num_seconds(),
            "previous_valid_until": row.previous_valid_until,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    /// Revokes a client key owned by `user_id`; another user's key is `NotFound`.
    pub async fn revoke_client_key(
        &self,
        user_id: &str,
        id: &str,
        audit: AuditEvent,
    ) -> Result<()> {
        let m = client_keys::ActiveModel {
            enabled: Set(false),
            revoked_at: Set(Some(Utc::now())),
            ..Default::default()
        };
        let txn = self.begin().await?;
        let res = client_keys::Entity::update_many()
            .set(m)
            .filter(client_keys::Column::Id.eq(id))
            .filter(client_keys::Column::UserId.eq(user_id))
            .filter(client_keys::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound);
        }
        self.commit_audited(txn, audit.target(id)).await
    }
}
