//! Upstream providers: where requests go and how long they may take.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::{EntityTrait, QueryOrder};

use super::entities::providers;
use super::{AuditEvent, Result, Store, StoreError, clamp_i32, new_id};

pub struct NewProvider {
    pub name: String,
    pub kind: &'static str,
    pub base_url: String,
    pub enabled: bool,
    pub request_timeout_ms: u32,
    pub preset: Option<String>,
    pub api_version: Option<String>,
}

impl Store {
    pub async fn create_provider(
        &self,
        p: NewProvider,
        audit: AuditEvent,
    ) -> Result<providers::Model> {
        let now = Utc::now();
        let m = providers::ActiveModel {
            id: Set(new_id()),
            name: Set(p.name),
            kind: Set(p.kind.to_owned()),
            base_url: Set(p.base_url),
            enabled: Set(p.enabled),
            request_timeout_ms: Set(clamp_i32(p.request_timeout_ms)),
            created_at: Set(now),
            updated_at: Set(now),
            preset: Set(p.preset),
            api_version: Set(p.api_version),
        };
        let txn = self.begin().await?;
        let p = providers::Entity::insert(m)
            .exec_with_returning(&txn)
            .await
            .map_err(|e| StoreError::from(e).conflict_as("provider"))?;
        let ev = audit.target(&p.id).detail(
            serde_json::json!({"name": p.name, "kind": p.kind, "base_url": p.base_url, "enabled": p.enabled}),
        );
        self.commit_audited(txn, ev).await?;
        Ok(p)
    }

    pub async fn set_provider_enabled(
        &self,
        id: &str,
        enabled: bool,
        audit: AuditEvent,
    ) -> Result<providers::Model> {
        let txn = self.begin().await?;
        let p = providers::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: providers::ActiveModel = p.into();
        m.enabled = Set(enabled);
        m.updated_at = Set(Utc::now());
        let p = providers::Entity::update(m).exec(&txn).await?;
        let ev = audit
            .target(id)
            .detail(serde_json::json!({"name": p.name, "enabled": enabled}));
        self.commit_audited(txn, ev).await?;
        Ok(p)
    }

    pub async fn providers(&self) -> Result<Vec<providers::Model>> {
        Ok(providers::Entity::find()
            .order_by_asc(providers::Column::Name)
            .all(&self.db)
            .await?)
    }

    pub async fn provider(&self, id: &str) -> Result<providers::Model> {
        providers::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }
}
