//! Provider-key rows: sealed secrets with their non-secret identifiers (mask, fingerprint), pool
//! owner, routing settings, last use and last test. Health (cooldowns, disabling) is in `health`;
//! ciphertext swaps for master-key rotation in `vault_rows`.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};

use super::entities::provider_keys;
use super::{AuditEvent, Result, Store, StoreError, clamp_i32, json_list};

/// A provider key's state. `provider_keys.state` stores `active` or `disabled`; `cooling_down` is
/// derived from live cooldowns (the key list shows it, and proxies receive it as key health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    CoolingDown,
    /// Until an admin clears it (an invalid key).
    Disabled,
}

impl KeyState {
    pub const ALL: [KeyState; 3] = [KeyState::Active, KeyState::CoolingDown, KeyState::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::CoolingDown => "cooling_down",
            KeyState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        KeyState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl provider_keys::Model {
    /// The stored state; an unknown value reads as `None`.
    pub fn key_state(&self) -> Option<KeyState> {
        KeyState::parse(&self.state)
    }
}

/// A new provider-key row; `sealed` was produced with this row's id, owner and provider as AAD.
pub struct NewProviderKey {
    pub id: String,
    pub provider_id: String,
    pub owner_user_id: Option<String>,
    pub sealed: Vec<u8>,
    pub key_version: u32,
    pub fingerprint: String,
    pub mask: String,
    pub label: String,
    pub weight: u32,
    pub allowed_models: Vec<String>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u32>,
}

/// Fields an owner may change on a provider key; `None` leaves a field as it is.
#[derive(Default)]
pub struct KeyChange {
    pub label: Option<String>,
    pub weight: Option<u32>,
    pub allowed_models: Option<Vec<String>>,
    /// `Some(None)` removes the limit.
    pub rpm_limit: Option<Option<u32>>,
    pub tpm_limit: Option<Option<u32>>,
}

impl Store {
    pub async fn insert_provider_key(
        &self,
        k: NewProviderKey,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let now = Utc::now();
        let m = provider_keys::ActiveModel {
            id: Set(k.id),
            provider_id: Set(k.provider_id),
            owner_user_id: Set(k.owner_user_id),
            sealed: Set(k.sealed),
            key_version: Set(clamp_i32(k.key_version)),
            fingerprint: Set(k.fingerprint),
            mask: Set(k.mask),
            label: Set(k.label),
            weight: Set(clamp_i32(k.weight)),
            allowed_models: Set(json_list(&k.allowed_models)),
            state: Set(KeyState::Active.as_str().into()),
            last_used_at: Set(None),
            last_error_class: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            rpm_limit: Set(k.rpm_limit.map(clamp_i32)),
            tpm_limit: Set(k.tpm_limit.map(clamp_i32)),
            last_tested_at: Set(None),
            last_test_result: Set(None),
            state_reason: Set(None),
        };
        let txn = self.begin().await?;
        let row = provider_keys::Entity::insert(m)
            .exec_with_returning(&txn)
            .await?;
        let ev = audit.target(&row.id).detail(serde_json::json!({
            "provider_id": row.provider_id, "fingerprint": row.fingerprint,
            "pool": if row.owner_user_id.is_some() { "user" } else { "shared" },
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn provider_key(&self, id: &str) -> Result<provider_keys::Model> {
        provider_keys::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_provider_key(
        &self,
        id: &str,
        change: KeyChange,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: provider_keys::ActiveModel = row.into();
        let mut changed = Vec::new();
        if let Some(l) = change.label {
            m.label = Set(l);
            changed.push("label");
        }
        if let Some(w) = change.weight {
            m.weight = Set(clamp_i32(w));
            changed.push("weight");
        }
        if let Some(models) = change.allowed_models {
            m.allowed_models = Set(json_list(&models));
            changed.push("allowed_models");
        }
        if let Some(r) = change.rpm_limit {
            m.rpm_limit = Set(r.map(clamp_i32));
            changed.push("rpm_limit");
        }
        if let Some(t) = change.tpm_limit {
            m.tpm_limit = Set(t.map(clamp_i32));
            changed.push("tpm_limit");
        }
        m.updated_at = Set(Utc::now());
        let row = provider_keys::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "fingerprint": row.fingerprint, "changed": changed,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    /// Records the outcome of a key test (and its audit row).
    pub async fn record_key_test(
        &self,
        id: &str,
        result: &str,
        error_class: Option<&str>,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: provider_keys::ActiveModel = row.into();
        m.last_tested_at = Set(Some(Utc::now()));
        m.last_test_result = Set(Some(result.chars().take(32).collect()));
        if let Some(c) = error_class {
            m.last_error_class = Set(Some(c.to_owned()));
        }
        let row = provider_keys::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "fingerprint": row.fingerprint, "result": result,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn delete_provider_key(&self, id: &str, audit: AuditEvent) -> Result<()> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        provider_keys::Entity::delete_by_id(id.to_owned())
            .exec(&txn)
            .await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "provider_id": row.provider_id, "fingerprint": row.fingerprint,
        }));
        self.commit_audited(txn, ev).await
    }

    pub async fn provider_keys(&self) -> Result<Vec<provider_keys::Model>> {
        Ok(provider_keys::Entity::find()
            .order_by_asc(provider_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    pub async fn provider_keys_of(&self, provider_id: &str) -> Result<Vec<provider_keys::Model>> {
        Ok(provider_keys::Entity::find()
            .filter(provider_keys::Column::ProviderId.eq(provider_id))
            .order_by_asc(provider_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Records the latest outcome a proxy reported for a key.
    pub async fn touch_provider_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
        error_class: Option<&str>,
    ) -> Result<()> {
        let m = provider_keys::ActiveModel {
            last_used_at: Set(Some(at)),
            last_error_class: Set(error_class.map(str::to_owned)),
            ..Default::default()
        };
        provider_keys::Entity::update_many()
            .set(m)
            .filter(provider_keys::Column::Id.eq(key_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_state_round_trips_as_the_stored_strings() {
        for (s, stored) in [
            (KeyState::Active, "active"),
            (KeyState::CoolingDown, "cooling_down"),
            (KeyState::Disabled, "disabled"),
        ] {
            assert_eq!(s.as_str(), stored);
            assert_eq!(KeyState::parse(stored), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), stored);
            assert_eq!(
                serde_json::from_value::<KeyState>(stored.into()).unwrap(),
                s
            );
        }
        assert_eq!(KeyState::parse("unreadable"), None);
    }
}
