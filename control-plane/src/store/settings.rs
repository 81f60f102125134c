//! Sealed settings: server secrets and the shared vault state, each under a master-key version.
//! Writing and re-wrapping them is in `vault_rows`.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::EntityTrait;

use super::entities::settings;
use super::{Result, Store, StoreError, clamp_i32};

impl Store {
    pub async fn setting(&self, name: &str) -> Result<Option<settings::Model>> {
        Ok(settings::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?)
    }

    /// Inserts a setting unless one exists (several replicas may race at first start; the first
    /// writer wins and everyone reads back the same row).
    pub async fn insert_setting_if_absent(
        &self,
        name: &str,
        sealed: Vec<u8>,
        key_version: u32,
    ) -> Result<settings::Model> {
        let m = settings::ActiveModel {
            name: Set(name.to_owned()),
            sealed: Set(sealed),
            key_version: Set(clamp_i32(key_version)),
            updated_at: Set(Utc::now()),
        };
        settings::Entity::insert(m)
            .on_conflict_do_nothing()
            .exec(&self.db)
            .await?;
        self.setting(name).await?.ok_or(StoreError::NotFound)
    }
}
