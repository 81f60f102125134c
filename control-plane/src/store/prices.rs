//! Model prices an admin set: overrides of the built-in list prices (`crate::prices`) and
//! models the list lacks. Deleting a row reverts its model to the built-in price, if any.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::model_prices;
use super::{AuditEvent, Result, Store, StoreError};

/// A price to store, in nano-US-dollars per token (the API bounds it).
pub struct NewModelPrice {
    pub model: String,
    pub input_nanos_per_token: u64,
    pub output_nanos_per_token: u64,
    pub cached_input_nanos_per_token: u64,
    /// The admin's user id.
    pub updated_by: String,
}

fn nanos(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Every stored price, by model.
    pub async fn model_prices(&self) -> Result<Vec<model_prices::Model>> {
        Ok(model_prices::Entity::find()
            .order_by_asc(model_prices::Column::Model)
            .all(&self.db)
            .await?)
    }

    /// Sets a model's price (creating or replacing it), audited in the same transaction.
    pub async fn set_model_price(
        &self,
        p: NewModelPrice,
        audit: AuditEvent,
    ) -> Result<model_prices::Model> {
        let row = model_prices::Model {
            model: p.model,
            input_nanos_per_token: nanos(p.input_nanos_per_token),
            output_nanos_per_token: nanos(p.output_nanos_per_token),
            cached_input_nanos_per_token: nanos(p.cached_input_nanos_per_token),
            updated_at: Utc::now(),
            updated_by: p.updated_by,
        };
        let txn = self.begin().await?;
        model_prices::Entity::insert(model_prices::ActiveModel {
            model: Set(row.model.clone()),
            input_nanos_per_token: Set(row.input_nanos_per_token),
            output_nanos_per_token: Set(row.output_nanos_per_token),
            cached_input_nanos_per_token: Set(row.cached_input_nanos_per_token),
            updated_at: Set(row.updated_at),
            updated_by: Set(row.updated_by.clone()),
        })
        .on_conflict(
            OnConflict::column(model_prices::Column::Model)
                .update_columns([
                    model_prices::Column::InputNanosPerToken,
                    model_prices::Column::OutputNanosPerToken,
                    model_prices::Column::CachedInputNanosPerToken,
                    model_prices::Column::UpdatedAt,
                    model_prices::Column::UpdatedBy,
                ])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        let ev = audit.target(&row.model).detail(serde_json::json!({
            "input_nanos_per_token": row.input_nanos_per_token,
            "output_nanos_per_token": row.output_nanos_per_token,
            "cached_input_nanos_per_token": row.cached_input_nanos_per_token,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    /// Removes an admin's price; `NotFound` when the model has none.
    pub async fn delete_model_price(&self, model: &str, audit: AuditEvent) -> Result<()> {
        let txn = self.begin().await?;
        let res = model_prices::Entity::delete_many()
            .filter(model_prices::Column::Model.eq(model))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound);
        }
        self.commit_audited(txn, audit.target(model)).await
    }
}
