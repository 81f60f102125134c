//! Key health as the control plane records it: cooldowns per key × model, disabled keys, and the
//! history of every change.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{key_cooldowns, key_events, provider_keys};
use super::{AuditEvent, KeyState, Result, Store, StoreError, new_id};

/// Who caused a key-health change: a proxy, an admin or the system, and for what a proxy
/// observed, the client key whose request it was.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub client_key: Option<&'a str>,
}

impl<'a> From<&'a str> for Origin<'a> {
    fn from(source: &'a str) -> Self {
        Origin {
            source,
            client_key: None,
        }
    }
}

impl Origin<'_> {
    fn client_key(&self) -> Option<String> {
        self.client_key
            .filter(|k| !k.is_empty())
            .map(|k| k.chars().take(16).collect())
    }
}

async fn event<C: sea_orm::ConnectionTrait>(
    conn: &C,
    key_id: &str,
    event: &str,
    class: &str,
    model: &str,
    until: Option<DateTime<Utc>>,
    origin: Origin<'_>,
) -> Result<()> {
    key_events::Entity::insert(key_events::ActiveModel {
        id: Set(new_id()),
        key_id: Set(key_id.to_owned()),
        at: Set(Utc::now()),
        event: Set(event.to_owned()),
        class: Set(class.chars().take(32).collect()),
        model: Set(model.chars().take(128).collect()),
        until: Set(until),
        source: Set(origin.source.chars().take(64).collect()),
        client_key_prefix: Set(origin.client_key()),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Cooldowns that have not ended yet.
    pub async fn live_cooldowns(&self) -> Result<Vec<key_cooldowns::Model>> {
        Ok(key_cooldowns::Entity::find()
            .filter(key_cooldowns::Column::Until.gt(Utc::now()))
            .all(&self.db)
            .await?)
    }

    pub async fn cooldowns_of(&self, key_id: &str) -> Result<Vec<key_cooldowns::Model>> {
        Ok(key_cooldowns::Entity::find()
            .filter(key_cooldowns::Column::KeyId.eq(key_id))
            .filter(key_cooldowns::Column::Until.gt(Utc::now()))
            .all(&self.db)
            .await?)
    }

    /// Records a cooldown, keeping the later end when one exists. Returns the cooldown in force.
    pub async fn apply_cooldown(
        &self,
        key_id: &str,
        model: &str,
        until: DateTime<Utc>,
        class: &str,
        origin: impl Into<Origin<'_>>,
        audit: Option<AuditEvent>,
    ) -> Result<key_cooldowns::Model> {
        let origin = origin.into();
        let txn = self.begin().await?;
        if provider_keys::Entity::find_by_id(key_id.to_owned())
            .one(&txn)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound);
        }
        let existing = key_cooldowns::Entity::find_by_id((key_id.to_owned(), model.to_owned()))
            .one(&txn)
            .await?;
        let until = existing
            .as_ref()
            .filter(|c| c.until > until && c.until > Utc::now())
            .map_or(until, |c| c.until);
        let row = key_cooldowns::Model {
            key_id: key_id.to_owned(),
            model: model.to_owned(),
            until,
            class: class.to_owned(),
            source: origin.source.chars().take(64).collect(),
            client_key_prefix: origin.client_key(),
            updated_at: Utc::now(),
        };
        key_cooldowns::Entity::insert(key_cooldowns::ActiveModel {
            key_id: Set(row.key_id.clone()),
            model: Set(row.model.clone()),
            until: Set(row.until),
            class: Set(row.class.clone()),
            source: Set(row.source.clone()),
            client_key_prefix: Set(row.client_key_prefix.clone()),
            updated_at: Set(row.updated_at),
        })
        .on_conflict(
            OnConflict::columns([key_cooldowns::Column::KeyId, key_cooldowns::Column::Model])
                .update_columns([
                    key_cooldowns::Column::Until,
                    key_cooldowns::Column::Class,
                    key_cooldowns::Column::Source,
                    key_cooldowns::Column::ClientKeyPrefix,
                    key_cooldowns::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        event(&txn, key_id, "cooldown", class, model, Some(until), origin).await?;
        match audit {
            Some(ev) => self.commit_audited(txn, ev.target(key_id)).await?,
            None => txn.commit().await?,
        }
        Ok(row)
    }

    /// Ends cooldowns of a key: one model's, or (model `None`) all of them and a disabled state.
    /// Returns whether anything changed.
    pub async fn clear_key_health(
        &self,
        key_id: &str,
        model: Option<&str>,
        source: &str,
        audit: Option<AuditEvent>,
    ) -> Result<bool> {
        let txn = self.begin().await?;
        let key = provider_keys::Entity::find_by_id(key_id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut del =
            key_cooldowns::Entity::delete_many().filter(key_cooldowns::Column::KeyId.eq(key_id));
        if let Some(m) = model {
            del = del.filter(key_cooldowns::Column::Model.eq(m));
        }
        let mut changed = del.exec(&txn).await?.rows_affected > 0;
        if model.is_none() && key.key_state() == Some(KeyState::Disabled) {
            let mut m: provider_keys::ActiveModel = key.into();
            m.state = Set(KeyState::Active.as_str().into());
            m.state_reason = Set(None);
            m.updated_at = Set(Utc::now());
            provider_keys::Entity::update(m).exec(&txn).await?;
            changed = true;
        }
        if changed {
            event(
                &txn,
                key_id,
                "cleared",
                "",
                model.unwrap_or(""),
                None,
                source.into(),
            )
            .await?;
        }
        match audit {
            Some(ev) => self.commit_audited(txn, ev.target(key_id)).await?,
            None => txn.commit().await?,
        }
        Ok(changed)
    }

    /// Ends the cooldown of `key_id` × `model` if it has run out (a successful trial request
    /// confirmed the key works again). Returns whether a cooldown was removed.
    pub async fn clear_key_health_if_expired(
        &self,
        key_id: &str,
        model: &str,
        source: &str,
    ) -> Result<bool> {
        let txn = self.begin().await?;
        let res = key_cooldowns::Entity::delete_many()
            .filter(key_cooldowns::Column::KeyId.eq(key_id))
            .filter(key_cooldowns::Column::Model.eq(model))
            .filter(key_cooldowns::Column::Until.lte(Utc::now()))
            .exec(&txn)
            .await?;
        let changed = res.rows_affected > 0;
        if changed {
            event(&txn, key_id, "recovered", "", model, None, source.into()).await?;
        }
        txn.commit().await?;
        Ok(changed)
    }

    /// Disables a key until an admin clears it (an invalid key). Returns false when it already was.
    pub async fn disable_key(
        &self,
        key_id: &str,
        reason: &str,
        origin: impl Into<Origin<'_>>,
    ) -> Result<bool> {
        let origin = origin.into();
        let txn = self.begin().await?;
        let key = provider_keys::Entity::find_by_id(key_id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        if key.key_state() == Some(KeyState::Disabled) {
            return Ok(false);
        }
        let mut m: provider_keys::ActiveModel = key.into();
        m.state = Set(KeyState::Disabled.as_str().into());
        m.state_reason = Set(Some(reason.to_owned()));
        m.last_error_class = Set(Some(reason.to_owned()));
        m.updated_at = Set(Utc::now());
        provider_keys::Entity::update(m).exec(&txn).await?;
        event(&txn, key_id, "disabled", reason, "", None, origin).await?;
        txn.commit().await?;
        Ok(true)
    }

    pub async fn key_history(&self, key_id: &str, limit: u64) -> Result<Vec<key_events::Model>> {
        Ok(key_events::Entity::find()
            .filter(key_events::Column::KeyId.eq(key_id))
            .order_by_desc(key_events::Column::At)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}
