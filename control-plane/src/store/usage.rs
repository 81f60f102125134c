//! Reading the daily rollups (`usage_daily`): usage and spend per day, model, client key, user
//! or provider for the dashboard's charts, and the spend of budgets in their current period.
//! Neither reads the records themselves, except for the part of a day before a lifetime
//! budget's start.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbBackend, Order};

use super::entities::{routing_records, usage_daily};
use super::{Result, Store};

/// What usage is summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Day,
    Model,
    ClientKey,
    User,
    Provider,
}

impl UsageGroup {
    pub const ALL: [UsageGroup; 5] = [
        UsageGroup::Day,
        UsageGroup::Model,
        UsageGroup::ClientKey,
        UsageGroup::User,
        UsageGroup::Provider,
    ];

    /// The name the usage API takes (`group_by`).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroup::Day => "day",
            UsageGroup::Model => "model",
            UsageGroup::ClientKey => "client_key",
            UsageGroup::User => "user",
            UsageGroup::Provider => "provider",
        }
    }

    pub fn parse(s: &str) -> Option<UsageGroup> {
        UsageGroup::ALL.into_iter().find(|g| g.as_str() == s)
    }

    fn column(self) -> usage_daily::Column {
        use usage_daily::Column as C;
        match self {
            UsageGroup::Day => C::Day,
            UsageGroup::Model => C::PublicModel,
            UsageGroup::ClientKey => C::ClientKeyId,
            UsageGroup::User => C::UserId,
            UsageGroup::Provider => C::ProviderId,
        }
    }
}

/// Which rollups to sum: the UTC days `first..=last`, narrowed by every field set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub user_id: Option<String>,
    pub client_key_id: Option<String>,
    pub model: Option<String>,
    pub provider_id: Option<String>,
}

/// One group's sums. Counts past the largest 64-bit value are capped there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The day (`YYYY-MM-DD`), model, client key id, user id or provider id.
    pub key: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    /// Nano-US-dollars of the requests whose cost is known.
    pub cost_nanos: i64,
    /// Requests whose cost is unknown (no price).
    pub unknown_cost: i64,
}

/// Whose spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOwner {
    ClientKey,
    User,
}

/// Ids per `IN (…)` list: well within either backend's bound on statement parameters.
const IDS_PER_QUERY: usize = 500;

/// `SUM(expr)` that cannot fail: capped at the largest 64-bit value. Postgres sums a `bigint`
/// column as `numeric`; SQLite's integer `SUM` raises an error on overflow, so it sums as a
/// float there (exact up to 2^53, far beyond any real total).
fn capped_sum(backend: DbBackend, expr: &str) -> Expr {
    Expr::cust(match backend {
        DbBackend::Postgres => format!("CAST(LEAST(SUM({expr}), 9223372036854775807) AS BIGINT)"),
        _ => format!("CAST(MIN(TOTAL({expr}), 9.2233720368547758e18) AS INTEGER)"),
    })
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

impl Store {
    /// Usage summed per group over the filter's days, from the rollups: requests, errors,
    /// tokens and cost. Groups without requests are absent; the order is the key's.
    pub async fn usage(&self, filter: &UsageFilter, group: UsageGroup) -> Result<Vec<UsageRow>> {
        use usage_daily::Column as C;
        let backend = self.db.get_database_backend();
        let mut q = Query::select();
        q.from(usage_daily::Entity)
            .expr_as(Expr::col(group.column()), Alias::new("k"))
            .and_where(Expr::col(C::Day).gte(filter.first_day))
            .and_where(Expr::col(C::Day).lte(filter.last_day));
        for (col, value) in [
            (C::UserId, &filter.user_id),
            (C::ClientKeyId, &filter.client_key_id),
            (C::PublicModel, &filter.model),
            (C::ProviderId, &filter.provider_id),
        ] {
            if let Some(v) = value {
                q.and_where(Expr::col(col).eq(v.as_str()));
            }
        }
        for name in [
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_nanos",
            "unknown_cost",
        ] {
            q.expr_as(capped_sum(backend, name), Alias::new(name));
        }
        q.group_by_col(group.column())
            .order_by(group.column(), Order::Asc);
        let rows = self.db.query_all(&q).await?;
        rows.into_iter()
            .map(|row| {
                let key = match group {
                    UsageGroup::Day => row.try_get::<NaiveDate>("", "k")?.to_string(),
                    _ => row.try_get::<String>("", "k")?,
                };
                let n = |name: &str| row.try_get::<i64>("", name);
                Ok(UsageRow {
                    key,
                    requests: n("requests")?,
                    errors: n("errors")?,
                    prompt_tokens: n("prompt_tokens")?,
                    completion_tokens: n("completion_tokens")?,
                    cached_tokens: n("cached_tokens")?,
                    cost_nanos: n("cost_nanos")?,
                    unknown_cost: n("unknown_cost")?,
                })
            })
            .collect()
    }

    /// What each of `ids` (client keys or users) spent from `since` on, in nano-US-dollars
    /// (unknown costs count as nothing); ids that spent nothing are absent. Whole days come from
    /// the rollups, which are exact as of the last stored batch; a `since` that is not a UTC
    /// midnight (a lifetime budget's start) adds that day's remainder from the records, which
    /// count only while the retention keeps them.
    pub async fn spend_since(
        &self,
        owner: SpendOwner,
        ids: &[String],
        since: DateTime<Utc>,
    ) -> Result<HashMap<String, u64>> {
        let backend = self.db.get_database_backend();
        let day = since.date_naive();
        let whole_days_from = if midnight(day) == since {
            day
        } else {
            day.succ_opt().unwrap_or(day)
        };
        let mut spent: HashMap<String, u64> = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let (col, rec_col) = match owner {
                SpendOwner::ClientKey => (
                    usage_daily::Column::ClientKeyId,
                    routing_records::Column::ClientKeyId,
                ),
                SpendOwner::User => (usage_daily::Column::UserId, routing_records::Column::UserId),
            };
            let mut whole = Query::select();
            whole
                .from(usage_daily::Entity)
                .expr_as(Expr::col(col), Alias::new("owner"))
                .expr_as(capped_sum(backend, "cost_nanos"), Alias::new("spent"))
                .and_where(Expr::col(col).is_in(chunk.iter().map(String::as_str)))
                .and_where(Expr::col(usage_daily::Column::Day).gte(whole_days_from))
                .group_by_col(col);
            let mut queries: Vec<SelectStatement> = vec![whole];
            if whole_days_from != day {
                let mut part = Query::select();
                part.from(routing_records::Entity)
                    .expr_as(Expr::col(rec_col), Alias::new("owner"))
                    .expr_as(
                        capped_sum(backend, "COALESCE(cost_nanos, 0)"),
                        Alias::new("spent"),
                    )
                    .and_where(Expr::col(rec_col).is_in(chunk.iter().map(String::as_str)))
                    .and_where(Expr::col(routing_records::Column::StartedAt).gte(since))
                    .and_where(
                        Expr::col(routing_records::Column::StartedAt).lt(midnight(whole_days_from)),
                    )
                    .group_by_col(rec_col);
                queries.push(part);
            }
            for q in queries {
                for row in self.db.query_all(&q).await? {
                    let id: String = row.try_get("", "owner")?;
                    let v = u64::try_from(row.try_get::<i64>("", "spent")?).unwrap_or(0);
                    let e = spent.entry(id).or_default();
                    *e = e.saturating_add(v);
                }
            }
        }
        spent.retain(|_, v| *v > 0);
        Ok(spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_as_the_api_names() {
        for g in UsageGroup::ALL {
            assert_eq!(UsageGroup::parse(g.as_str()), Some(g));
        }
        assert_eq!(UsageGroup::parse("client_key"), Some(UsageGroup::ClientKey));
        assert_eq!(UsageGroup::parse("week"), None);
        assert_eq!(UsageGroup::parse(""), None);
    }
}
