//! Routing records: what each proxied request did (attempts, skipped candidates) and used
//! (tokens, cost), as reported by the proxies. Delivery is at-least-once, so a request id is
//! stored once.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};

use super::entities::routing_records;
use super::{Result, Store, clip};

/// One reported request. Text longer than its column is cut to fit.
pub struct NewRoutingRecord {
    pub request_id: String,
    pub proxy_id: String,
    pub started_at: DateTime<Utc>,
    pub user_id: String,
    pub client_key_prefix: String,
    pub public_model: String,
    pub status: u32,
    pub latency_ms: u32,
    pub stream: bool,
    /// Attempts and skipped candidates.
    pub detail: serde_json::Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub partial: bool,
    /// `None`: no price was known for the model.
    pub cost_nanos: Option<u64>,
    pub client_key_id: String,
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores records, ignoring request ids already stored (at-least-once delivery).
    pub async fn insert_routing_records(&self, records: Vec<NewRoutingRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let txn = self.db.begin().await?;
        for r in records {
            let row = routing_records::ActiveModel {
                request_id: Set(clip(&r.request_id, 64)),
                proxy_id: Set(clip(&r.proxy_id, 64)),
                started_at: Set(r.started_at),
                user_id: Set(clip(&r.user_id, 36)),
                client_key_prefix: Set(clip(&r.client_key_prefix, 16)),
                public_model: Set(clip(&r.public_model, 128)),
                status: Set(i32::try_from(r.status).unwrap_or(0)),
                latency_ms: Set(i32::try_from(r.latency_ms).unwrap_or(i32::MAX)),
                stream: Set(r.stream),
                detail: Set(r.detail.to_string()),
                received_at: Set(now),
                prompt_tokens: Set(big(r.prompt_tokens)),
                completion_tokens: Set(big(r.completion_tokens)),
                cached_tokens: Set(big(r.cached_tokens)),
                partial: Set(r.partial),
                cost_nanos: Set(r.cost_nanos.map(big)),
                client_key_id: Set(clip(&r.client_key_id, 36)),
            };
            routing_records::Entity::insert(row)
                .on_conflict_do_nothing()
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// The newest `limit` records (by start time), only `user_id`'s when given.
    pub async fn routing_records(
        &self,
        user_id: Option<&str>,
        limit: u64,
    ) -> Result<Vec<routing_records::Model>> {
        let mut q = routing_records::Entity::find();
        if let Some(u) = user_id {
            q = q.filter(routing_records::Column::UserId.eq(u));
        }
        Ok(q.order_by_desc(routing_records::Column::StartedAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}
