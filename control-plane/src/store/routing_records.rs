//! Routing records: what each proxied request did (attempts, skipped candidates) and used
//! (tokens, cost), as reported by the proxies, and the per-day rollups (`usage_daily`) kept with
//! them. Delivery is at-least-once, so a request is stored once — keyed by (request id, start
//! time), the start time being part of the key because Postgres partitions the table by it — and
//! the rollups count only the records a batch actually inserted, in the same transaction.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, TryInsertResult,
};

use super::entities::{routing_records, usage_daily};
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
    /// The serving (last) attempt's provider, key fingerprint and upstream model; empty when no
    /// attempt was made.
    pub provider_id: String,
    pub key_fingerprint: String,
    pub upstream_model: String,
}

/// Which records a query returns; every field set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Started at or after.
    pub from: Option<DateTime<Utc>>,
    /// Started before.
    pub to: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub client_key_id: Option<String>,
    /// The public model the client asked for.
    pub model: Option<String>,
    /// The serving attempt's provider.
    pub provider_id: Option<String>,
    pub status: Option<StatusFilter>,
    /// The serving attempt's key.
    pub key_fingerprint: Option<String>,
}

/// A status or a range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// From the first up to, not including, the second.
    Range(u16, u16),
}

impl StatusFilter {
    /// `429`, a class (`2xx` … `5xx`) or `error` (400 and above, which includes the 499 of a
    /// client that went away).
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s {
            "error" => Some(StatusFilter::Range(400, 1000)),
            _ => {
                if let Some(class) = s.strip_suffix("xx") {
                    let c: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
                    return Some(StatusFilter::Range(c * 100, c * 100 + 100));
                }
                let code: u16 = s.parse().ok().filter(|c| (100..=599).contains(c))?;
                Some(StatusFilter::Exact(code))
            }
        }
    }
}

/// A place in the records' order (newest first: start time, then request id, both
/// descending): the last record of a page. The next page starts after it, so records stored
/// meanwhile neither shift a page nor appear twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCursor {
    pub started_at: DateTime<Utc>,
    pub request_id: String,
}

impl From<&routing_records::Model> for RecordCursor {
    fn from(r: &routing_records::Model) -> Self {
        RecordCursor {
            started_at: r.started_at,
            request_id: r.request_id.clone(),
        }
    }
}

/// The start time as stored: whole microseconds, Postgres's precision, on both backends, so the
/// keys the insert returns match the ones sent and a cursor means the same everywhere.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Rows per insert statement: 20 columns each stays well under either backend's bound on
/// statement parameters.
const INSERT_CHUNK: usize = 500;

/// The rollup row a record counts in.
type RollupKey = (NaiveDate, String, String, String, String);

/// What a batch adds to one rollup row.
#[derive(Default)]
struct Sums {
    requests: i64,
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    cost_nanos: i64,
    unknown_cost: i64,
}

impl Sums {
    fn add(&mut self, r: &routing_records::Model) {
        self.requests += 1;
        if r.status >= 400 {
            self.errors += 1;
        }
        self.prompt_tokens = self.prompt_tokens.saturating_add(r.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(r.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(r.cached_tokens);
        match r.cost_nanos {
            Some(c) => self.cost_nanos = self.cost_nanos.saturating_add(c),
            None => self.unknown_cost += 1,
        }
    }
}

/// `usage_daily.col + excluded.col`, capped at the column's largest value instead of failing the
/// batch (a failed batch would be sent again forever).
fn add_capped(col: &str) -> Expr {
    Expr::cust(format!(
        "CASE WHEN usage_daily.{col} > 9223372036854775807 - excluded.{col} \
         THEN 9223372036854775807 ELSE usage_daily.{col} + excluded.{col} END"
    ))
}

impl Store {
    /// Stores records, ignoring those already stored (at-least-once delivery: a request id with
    /// its start time is stored once), and adds the ones inserted to the daily rollups in the
    /// same transaction. Returns how many were inserted.
    pub async fn insert_routing_records(&self, records: Vec<NewRoutingRecord>) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        // One row per key, in key order: a batch delivered twice in the same statement would
        // otherwise conflict with itself, and two transactions storing overlapping batches
        // (a proxy resending to another replica) take their row locks in the same order.
        let mut rows: BTreeMap<(String, DateTime<Utc>), routing_records::Model> = BTreeMap::new();
        for r in records {
            let request_id = clip(&r.request_id, 64);
            let started_at = to_micros(r.started_at);
            rows.entry((request_id.clone(), started_at))
                .or_insert(routing_records::Model {
                    request_id,
                    proxy_id: clip(&r.proxy_id, 64),
                    started_at,
                    user_id: clip(&r.user_id, 36),
                    client_key_prefix: clip(&r.client_key_prefix, 16),
                    public_model: clip(&r.public_model, 128),
                    status: i32::try_from(r.status).unwrap_or(0),
                    latency_ms: i32::try_from(r.latency_ms).unwrap_or(i32::MAX),
                    stream: r.stream,
                    detail: r.detail.to_string(),
                    received_at: now,
                    prompt_tokens: big(r.prompt_tokens),
                    completion_tokens: big(r.completion_tokens),
                    cached_tokens: big(r.cached_tokens),
                    partial: r.partial,
                    cost_nanos: r.cost_nanos.map(big),
                    client_key_id: clip(&r.client_key_id, 36),
                    provider_id: clip(&r.provider_id, 36),
                    key_fingerprint: clip(&r.key_fingerprint, 64),
                    upstream_model: clip(&r.upstream_model, 128),
                });
        }
        let rows: Vec<_> = rows.into_values().collect();
        let txn = self.db.begin().await?;
        let mut inserted = HashSet::new();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let models = chunk
                .iter()
                .map(|m| m.clone().into_active_model().reset_all());
            let keys = routing_records::Entity::insert_many(models)
                .on_conflict_do_nothing()
                .exec_with_returning_keys(&txn)
                .await?;
            // Conflicted: every row of the chunk was stored before.
            if let TryInsertResult::Inserted(keys) = keys {
                inserted.extend(keys);
            }
        }
        let mut rollups: BTreeMap<RollupKey, Sums> = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| inserted.contains(&(r.request_id.clone(), r.started_at)))
        {
            let key = (
                r.started_at.date_naive(),
                r.user_id.clone(),
                r.client_key_id.clone(),
                r.public_model.clone(),
                r.provider_id.clone(),
            );
            rollups.entry(key).or_default().add(r);
        }
        add_to_rollups(&txn, rollups).await?;
        txn.commit().await?;
        Ok(inserted.len() as u64)
    }

    /// One page of records, newest first, after `after` (the previous page's last record).
    pub async fn routing_records(
        &self,
        filter: &RecordFilter,
        after: Option<&RecordCursor>,
        limit: u64,
    ) -> Result<Vec<routing_records::Model>> {
        use routing_records::Column as C;
        let mut q = routing_records::Entity::find();
        if let Some(t) = filter.from {
            q = q.filter(C::StartedAt.gte(t));
        }
        if let Some(t) = filter.to {
            q = q.filter(C::StartedAt.lt(t));
        }
        for (col, value) in [
            (C::UserId, &filter.user_id),
            (C::ClientKeyId, &filter.client_key_id),
            (C::PublicModel, &filter.model),
            (C::ProviderId, &filter.provider_id),
            (C::KeyFingerprint, &filter.key_fingerprint),
        ] {
            if let Some(v) = value {
                q = q.filter(col.eq(v.as_str()));
            }
        }
        match filter.status {
            Some(StatusFilter::Exact(s)) => q = q.filter(C::Status.eq(i32::from(s))),
            // `status >= lo` as its own term: the partial index of errors (`status >= 400`)
            // applies to any range from 400 up.
            Some(StatusFilter::Range(lo, hi)) => {
                q = q
                    .filter(C::Status.gte(i32::from(lo)))
                    .filter(C::Status.lt(i32::from(hi)));
            }
            None => {}
        }
        if let Some(c) = after {
            // A row comparison, which both backends match against the (…, started_at,
            // request_id) indexes.
            q = q.filter(
                Expr::tuple([Expr::col(C::StartedAt), Expr::col(C::RequestId)]).lt(Expr::tuple([
                    Expr::val(c.started_at),
                    Expr::val(c.request_id.as_str()),
                ])),
            );
        }
        Ok(q.order_by_desc(C::StartedAt)
            .order_by_desc(C::RequestId)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// Adds a batch's sums to their rollup rows (inserting the rows a day's first record needs).
async fn add_to_rollups(
    txn: &DatabaseTransaction,
    rollups: BTreeMap<RollupKey, Sums>,
) -> Result<()> {
    use usage_daily::Column as C;
    let rows: Vec<usage_daily::ActiveModel> = rollups
        .into_iter()
        .map(
            |((day, user, key, model, provider), s)| usage_daily::ActiveModel {
                day: Set(day),
                user_id: Set(user),
                client_key_id: Set(key),
                public_model: Set(model),
                provider_id: Set(provider),
                requests: Set(s.requests),
                errors: Set(s.errors),
                prompt_tokens: Set(s.prompt_tokens),
                completion_tokens: Set(s.completion_tokens),
                cached_tokens: Set(s.cached_tokens),
                cost_nanos: Set(s.cost_nanos),
                unknown_cost: Set(s.unknown_cost),
            },
        )
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut on_conflict = OnConflict::columns([
            C::Day,
            C::UserId,
            C::ClientKeyId,
            C::PublicModel,
            C::ProviderId,
        ]);
        for (col, name) in [
            (C::Requests, "requests"),
            (C::Errors, "errors"),
            (C::PromptTokens, "prompt_tokens"),
            (C::CompletionTokens, "completion_tokens"),
            (C::CachedTokens, "cached_tokens"),
            (C::CostNanos, "cost_nanos"),
            (C::UnknownCost, "unknown_cost"),
        ] {
            on_conflict.value(col, add_capped(name));
        }
        usage_daily::Entity::insert_many(chunk.iter().cloned())
            .on_conflict(on_conflict)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        for (s, want) in [
            ("429", Some(StatusFilter::Exact(429))),
            ("200", Some(StatusFilter::Exact(200))),
            ("2xx", Some(StatusFilter::Range(200, 300))),
            ("5xx", Some(StatusFilter::Range(500, 600))),
            ("error", Some(StatusFilter::Range(400, 1000))),
            ("6xx", None),
            ("0xx", None),
            ("xx", None),
            ("99", None),
            ("600", None),
            ("-1", None),
            ("errors", None),
            ("", None),
        ] {
            assert_eq!(StatusFilter::parse(s), want, "{s:?}");
        }
    }
}
