//! Client keys: what callers present to the proxies. Only a keyed hash of each key is stored.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::client_keys;
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
}

impl Store {
    pub async fn insert_client_key(
        &self,
        k: NewClientKey,
        audit: AuditEvent,
    ) -> Result<client_keys::Model> {
        let m = client_keys::ActiveModel {
            id: Set(k.id),
            user_id: Set(k.user_id),
            name: Set(k.name),
            key_hash: Set(k.key_hash),
            prefix: Set(k.prefix),
            allowed_models: Set(json_list(&k.allowed_models)),
            enabled: Set(true),
            use_shared_pool: Set(k.use_shared_pool),
            expires_at: Set(k.expires_at),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
        };
        let txn = self.begin().await?;
        let row = client_keys::Entity::insert(m)
            .exec_with_returning(&txn)
            .await?;
        let ev = audit
            .target(&row.id)
            .detail(serde_json::json!({"name": row.name, "prefix": row.prefix}));
        self.commit_audited(txn, ev).await?;
        Ok(row)
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
