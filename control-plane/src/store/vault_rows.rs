//! Row access for master-key rotation: counting ciphertexts by master-key version and swapping a
//! row's ciphertext for its re-wrapped form.

use std::collections::BTreeMap;

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{provider_keys, settings};
use super::{AuditEvent, Result, Store};

/// A sealed row awaiting re-wrap.
pub enum SealedRow {
    ProviderKey(Box<provider_keys::Model>),
    Setting(settings::Model),
}

impl Store {
    /// How many sealed values (provider keys and settings) each master-key version protects.
    pub async fn sealed_counts(&self) -> Result<BTreeMap<u32, u64>> {
        let mut out = BTreeMap::new();
        let keys: Vec<i32> = provider_keys::Entity::find()
            .select_only()
            .column(provider_keys::Column::KeyVersion)
            .into_tuple()
            .all(&self.db)
            .await?;
        let sets: Vec<i32> = settings::Entity::find()
            .select_only()
            .column(settings::Column::KeyVersion)
            .into_tuple()
            .all(&self.db)
            .await?;
        for v in keys.into_iter().chain(sets) {
            *out.entry(u32::try_from(v).unwrap_or(0)).or_default() += 1;
        }
        Ok(out)
    }

    /// Up to `limit` sealed rows not yet under `version`.
    pub async fn rows_not_under(&self, version: u32, limit: u64) -> Result<Vec<SealedRow>> {
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        let mut out: Vec<SealedRow> = provider_keys::Entity::find()
            .filter(provider_keys::Column::KeyVersion.ne(v))
            .order_by_asc(provider_keys::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|k| SealedRow::ProviderKey(Box::new(k)))
            .collect();
        let room = limit.saturating_sub(out.len() as u64);
        if room > 0 {
            out.extend(
                settings::Entity::find()
                    .filter(settings::Column::KeyVersion.ne(v))
                    .limit(room)
                    .all(&self.db)
                    .await?
                    .into_iter()
                    .map(SealedRow::Setting),
            );
        }
        Ok(out)
    }

    /// Replaces a provider key's ciphertext only if it is still `old` (a concurrent edit wins;
    /// the next batch picks the row up again). Returns whether the row was swapped.
    pub async fn swap_provider_key_sealed(
        &self,
        id: &str,
        old: &[u8],
        new: Vec<u8>,
        version: u32,
    ) -> Result<bool> {
        let res = provider_keys::Entity::update_many()
            .set(provider_keys::ActiveModel {
                sealed: Set(new),
                key_version: Set(i32::try_from(version).unwrap_or(i32::MAX)),
                ..Default::default()
            })
            .filter(provider_keys::Column::Id.eq(id))
            .filter(provider_keys::Column::Sealed.eq(old.to_vec()))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    pub async fn swap_setting_sealed(
        &self,
        name: &str,
        old: &[u8],
        new: Vec<u8>,
        version: u32,
    ) -> Result<bool> {
        let res = settings::Entity::update_many()
            .set(settings::ActiveModel {
                sealed: Set(new),
                key_version: Set(i32::try_from(version).unwrap_or(i32::MAX)),
                updated_at: Set(Utc::now()),
                ..Default::default()
            })
            .filter(settings::Column::Name.eq(name))
            .filter(settings::Column::Sealed.eq(old.to_vec()))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Writes a sealed setting (insert or replace), with its audit row when given.
    pub async fn put_setting(
        &self,
        name: &str,
        sealed: Vec<u8>,
        version: u32,
        audit: Option<AuditEvent>,
    ) -> Result<()> {
        let txn = self.begin().await?;
        settings::Entity::insert(settings::ActiveModel {
            name: Set(name.to_owned()),
            sealed: Set(sealed),
            key_version: Set(i32::try_from(version).unwrap_or(i32::MAX)),
            updated_at: Set(Utc::now()),
        })
        .on_conflict(
            OnConflict::column(settings::Column::Name)
                .update_columns([
                    settings::Column::Sealed,
                    settings::Column::KeyVersion,
                    settings::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        match audit {
            Some(ev) => self.commit_audited(txn, ev).await,
            None => Ok(txn.commit().await?),
        }
    }
}
