//! Upstream providers: where requests go and how long they may take.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{provider_keys, providers, route_targets, routes};
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

/// Settings an admin may change on a provider; `None` leaves a field as it is. The kind (and the
/// preset it came from) cannot change: the stored keys were checked against the kind's format.
#[derive(Debug, Default)]
pub struct ProviderChange {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub enabled: Option<bool>,
    pub request_timeout_ms: Option<u32>,
    pub api_version: Option<Option<String>>,
}

/// What a provider deletion took with it.
#[derive(Debug)]
pub struct ProviderDeleted {
    /// Ids of the provider keys deleted with the provider.
    pub keys: Vec<String>,
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

    /// Changes a provider's settings. A changed base URL is where its keys are sent from now
    /// on, so the audit row records both URLs.
    pub async fn update_provider(
        &self,
        id: &str,
        change: ProviderChange,
        audit: AuditEvent,
    ) -> Result<providers::Model> {
        let txn = self.begin().await?;
        let before = providers::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: providers::ActiveModel = before.clone().into();
        let mut changed = Vec::new();
        if let Some(n) = change.name {
            m.name = Set(n);
            changed.push("name");
        }
        if let Some(u) = change.base_url {
            m.base_url = Set(u);
            changed.push("base_url");
        }
        if let Some(e) = change.enabled {
            m.enabled = Set(e);
            changed.push("enabled");
        }
        if let Some(t) = change.request_timeout_ms {
            m.request_timeout_ms = Set(clamp_i32(t));
            changed.push("request_timeout_ms");
        }
        if let Some(v) = change.api_version {
            m.api_version = Set(v);
            changed.push("api_version");
        }
        m.updated_at = Set(Utc::now());
        let p = providers::Entity::update(m)
            .exec(&txn)
            .await
            .map_err(|e| StoreError::from(e).conflict_as("provider"))?;
        let ev = audit.target(id).detail(serde_json::json!({
            "name": p.name,
            "changed": changed,
            "enabled": p.enabled,
            "base_url": {"from": before.base_url, "to": p.base_url},
        }));
        self.commit_audited(txn, ev).await?;
        Ok(p)
    }

    /// Deletes a provider. Refused (`InUse`) while a route targets it: deleting would silently
    /// change what those routes serve. Its provider keys are useless without it; they are
    /// deleted with it only when `delete_keys` says so (otherwise `InUse` names them), each with
    /// an audit row of its own. Cooldowns and key history go with the keys; routing records
    /// keep the provider id they were written with.
    pub async fn delete_provider(
        &self,
        id: &str,
        delete_keys: bool,
        audit: AuditEvent,
    ) -> Result<ProviderDeleted> {
        let txn = self.begin().await?;
        // The row lock makes a concurrent route or key creation for this provider wait (its
        // foreign-key check needs the row) and then fail, instead of landing between the checks
        // below and the delete. SQLite has one writer at a time and needs no lock.
        let p = providers::Entity::find_by_id(id.to_owned())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let target_routes: Vec<String> = route_targets::Entity::find()
            .filter(route_targets::Column::ProviderId.eq(id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|t| t.route_id)
            .collect();
        if !target_routes.is_empty() {
            let mut names: Vec<String> = routes::Entity::find()
                .filter(routes::Column::Id.is_in(target_routes))
                .all(&txn)
                .await?
                .into_iter()
                .map(|r| r.public_model)
                .collect();
            names.sort();
            return Err(StoreError::InUse {
                what: "routes",
                names,
            });
        }
        let keys = provider_keys::Entity::find()
            .filter(provider_keys::Column::ProviderId.eq(id))
            .order_by_asc(provider_keys::Column::CreatedAt)
            .all(&txn)
            .await?;
        if !keys.is_empty() && !delete_keys {
            return Err(StoreError::InUse {
                what: "provider keys",
                names: keys.into_iter().map(|k| k.id).collect(),
            });
        }
        let mut deleted = Vec::with_capacity(keys.len());
        for k in keys {
            provider_keys::Entity::delete_by_id(k.id.clone())
                .exec(&txn)
                .await?;
            let key_event = AuditEvent::new(&audit.actor, "provider_key_deleted", "provider_key")
                .target(&k.id)
                .detail(serde_json::json!({
                    "provider_id": k.provider_id, "fingerprint": k.fingerprint,
                    "reason": "provider_deleted",
                }));
            super::audit::append(&txn, &self.audit_key, key_event).await?;
            deleted.push(k.id);
        }
        providers::Entity::delete_by_id(id.to_owned())
            .exec(&txn)
            .await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "name": p.name, "kind": p.kind, "base_url": p.base_url, "keys_deleted": deleted.len(),
        }));
        self.commit_audited(txn, ev).await?;
        Ok(ProviderDeleted { keys: deleted })
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
