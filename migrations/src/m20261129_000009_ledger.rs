//! The usage ledger at scale: routing records keyed by (request id, start time), with the
//! serving attempt's provider, key fingerprint and upstream model as columns of their own, an
//! index per dashboard filter, and `usage_daily`, the per-day rollups maintained on write.
//!
//! On Postgres `routing_records` becomes a table partitioned by range on `started_at`: one
//! partition per UTC day (created ahead by the control plane, which drops whole partitions past
//! the retention) and a default partition for rows outside every daily one. A primary key of a
//! partitioned table must contain the partition key, hence (request_id, started_at): a replayed
//! record carries its original start time, so `ON CONFLICT DO NOTHING` on that key still stores
//! each request once. SQLite (the embedded mode) gets the same columns, key and indexes in a plain
//! table; retention there deletes in batches.
//!
//! Existing rows are moved over (their serving attempt read from `detail`) and summed into the
//! rollups, in one transaction on both backends.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns of the new table, in order (both backends; the copy below relies on it).
const COLUMNS: &str = "request_id, proxy_id, started_at, user_id, client_key_prefix, \
     public_model, status, latency_ms, stream, detail, received_at, prompt_tokens, \
     completion_tokens, cached_tokens, partial, cost_nanos, client_key_id, provider_id, \
     key_fingerprint, upstream_model";

/// Indexes for the records API: newest first within a time range, optionally narrowed by one
/// filter. Each ends in (started_at, request_id), the API's sort order and cursor, so a page is
/// read off the index in order and the scan stops at the page size. Errors get a partial index:
/// they are a few percent of the rows and the dashboard lists them on their own.
const INDEXES: &[(&str, &str)] = &[
    ("idx_rr_started", "(started_at, request_id)"),
    ("idx_rr_user", "(user_id, started_at, request_id)"),
    (
        "idx_rr_client_key",
        "(client_key_id, started_at, request_id)",
    ),
    ("idx_rr_model", "(public_model, started_at, request_id)"),
    ("idx_rr_provider", "(provider_id, started_at, request_id)"),
    (
        "idx_rr_fingerprint",
        "(key_fingerprint, started_at, request_id)",
    ),
    (
        "idx_rr_errors",
        "(started_at, request_id) WHERE status >= 400",
    ),
];

fn create_table(backend: DbBackend, name: &str) -> String {
    let ts = match backend {
        DbBackend::Postgres => "timestamp with time zone",
        _ => "timestamp_with_timezone_text",
    };
    let partitioned = if backend == DbBackend::Postgres {
        " PARTITION BY RANGE (started_at)"
    } else {
        ""
    };
    format!(
        "CREATE TABLE {name} (
            request_id varchar(64) NOT NULL,
            proxy_id varchar(64) NOT NULL,
            started_at {ts} NOT NULL,
            user_id varchar(36) NOT NULL,
            client_key_prefix varchar(16) NOT NULL,
            public_model varchar(128) NOT NULL,
            status integer NOT NULL,
            latency_ms integer NOT NULL,
            stream boolean NOT NULL,
            detail text NOT NULL,
            received_at {ts} NOT NULL,
            prompt_tokens bigint NOT NULL DEFAULT 0,
            completion_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            partial boolean NOT NULL DEFAULT FALSE,
            cost_nanos bigint NULL,
            client_key_id varchar(36) NOT NULL DEFAULT '',
            provider_id varchar(36) NOT NULL DEFAULT '',
            key_fingerprint varchar(64) NOT NULL DEFAULT '',
            upstream_model varchar(128) NOT NULL DEFAULT '',
            PRIMARY KEY (request_id, started_at)
        ){partitioned}"
    )
}

/// The serving (last) attempt's field `f` from the old `detail` JSON, or empty.
fn served(backend: DbBackend, f: &str) -> String {
    match backend {
        DbBackend::Postgres => {
            format!("COALESCE((detail::jsonb -> 'attempts' -> -1) ->> '{f}', '')")
        }
        _ => format!(
            "CASE WHEN json_valid(detail) THEN COALESCE(json_extract(detail, '$.attempts[#-1].{f}'), '') ELSE '' END"
        ),
    }
}

/// `started_at` as the control plane now stores it: in whole microseconds. Postgres already
/// holds microseconds. SQLite holds the text the driver wrote (RFC 3339 with 0, 3, 6 or 9
/// fraction digits, as few as are exact); a 9-digit one is cut to the text the driver writes for
/// the time cut to microseconds, so a record delivered again after the upgrade still matches.
fn stored_start(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "started_at",
        _ => {
            "CASE WHEN length(started_at) = 35 AND substr(started_at, 20, 1) = '.' THEN \
               CASE WHEN substr(started_at, 21, 6) = '000000' \
                      THEN substr(started_at, 1, 19) || substr(started_at, 30) \
                    WHEN substr(started_at, 24, 3) = '000' \
                      THEN substr(started_at, 1, 23) || substr(started_at, 30) \
                    ELSE substr(started_at, 1, 26) || substr(started_at, 30) END \
             ELSE started_at END"
        }
    }
}

/// The day (UTC) of `started_at`.
fn day_of(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "(started_at AT TIME ZONE 'UTC')::date",
        _ => "date(started_at)",
    }
}

/// A sum that cannot fail on overflow: capped at the column's largest value. (SQLite's `SUM`
/// raises an error on overflow, so it sums as a float there, exact up to 2^53.)
fn capped_sum(backend: DbBackend, expr: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("CAST(LEAST(SUM({expr}), 9223372036854775807) AS BIGINT)"),
        _ => format!("CAST(MIN(TOTAL({expr}), 9.2233720368547758e18) AS INTEGER)"),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // SQLite too: the table is rebuilt and its rows copied, all or nothing.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let backend = m.get_database_backend();
        let run = |sql: String| async move { db.execute_unprepared(&sql).await.map(|_| ()) };

        run("ALTER TABLE routing_records RENAME TO routing_records_old".into()).await?;
        // Index and constraint names are per schema on Postgres: free the old ones.
        run("DROP INDEX idx_routing_records_user_started".into()).await?;
        if backend == DbBackend::Postgres {
            run("ALTER TABLE routing_records_old DROP CONSTRAINT routing_records_pkey".into())
                .await?;
        }
        run(create_table(backend, "routing_records")).await?;
        if backend == DbBackend::Postgres {
            run("CREATE TABLE routing_records_default PARTITION OF routing_records DEFAULT".into())
                .await?;
            // A partition for each day the existing rows cover, so they need not be moved out
            // of the default partition later. (The control plane creates the days ahead.)
            let days = db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!(
                        "SELECT to_char(d, 'YYYYMMDD') AS name, to_char(d, 'YYYY-MM-DD') AS day, \
                         to_char(d + 1, 'YYYY-MM-DD') AS next \
                         FROM (SELECT DISTINCT {} AS d FROM routing_records_old) days",
                        day_of(backend)
                    ),
                ))
                .await?;
            for row in days {
                let (name, day, next): (String, String, String) = (
                    row.try_get("", "name")?,
                    row.try_get("", "day")?,
                    row.try_get("", "next")?,
                );
                // Named and bounded as the control plane names them: midnight UTC to midnight.
                run(format!(
                    "CREATE TABLE routing_records_p{name} PARTITION OF routing_records \
                     FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')"
                ))
                .await?;
            }
        }
        for (name, cols) in INDEXES {
            run(format!("CREATE INDEX {name} ON routing_records {cols}")).await?;
        }
        run(format!(
            "INSERT INTO routing_records ({COLUMNS}) SELECT request_id, proxy_id, {}, \
             user_id, client_key_prefix, public_model, status, latency_ms, stream, detail, \
             received_at, prompt_tokens, completion_tokens, cached_tokens, partial, cost_nanos, \
             client_key_id, {}, {}, {} FROM routing_records_old",
            stored_start(backend),
            served(backend, "provider_id"),
            served(backend, "key_fingerprint"),
            served(backend, "upstream_model"),
        ))
        .await?;
        run("DROP TABLE routing_records_old".into()).await?;

        m.create_table(
            Table::create()
                .table(UsageDaily::Table)
                .col(ColumnDef::new(UsageDaily::Day).date().not_null())
                .col(ColumnDef::new(UsageDaily::UserId).string_len(36).not_null())
                .col(
                    ColumnDef::new(UsageDaily::ClientKeyId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(UsageDaily::PublicModel)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(UsageDaily::ProviderId)
                        .string_len(36)
                        .not_null(),
                )
                .col(count(UsageDaily::Requests))
                .col(count(UsageDaily::Errors))
                .col(count(UsageDaily::PromptTokens))
                .col(count(UsageDaily::CompletionTokens))
                .col(count(UsageDaily::CachedTokens))
                .col(count(UsageDaily::CostNanos))
                .col(count(UsageDaily::UnknownCost))
                .primary_key(
                    Index::create()
                        .col(UsageDaily::Day)
                        .col(UsageDaily::UserId)
                        .col(UsageDaily::ClientKeyId)
                        .col(UsageDaily::PublicModel)
                        .col(UsageDaily::ProviderId),
                )
                .to_owned(),
        )
        .await?;
        // Budgets and a user's or a key's charts read one owner over a range of days.
        for (name, col) in [
            ("idx_usage_daily_user", UsageDaily::UserId),
            ("idx_usage_daily_client_key", UsageDaily::ClientKeyId),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(UsageDaily::Table)
                    .col(col)
                    .col(UsageDaily::Day)
                    .to_owned(),
            )
            .await?;
        }
        let sum = |e: &str| capped_sum(backend, e);
        run(format!(
            "INSERT INTO usage_daily (day, user_id, client_key_id, public_model, provider_id, \
             requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost_nanos, \
             unknown_cost) SELECT {day}, user_id, client_key_id, public_model, provider_id, \
             COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), {p}, {c}, {k}, {cost}, \
             SUM(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END) FROM routing_records \
             GROUP BY {day}, user_id, client_key_id, public_model, provider_id",
            day = day_of(backend),
            p = sum("prompt_tokens"),
            c = sum("completion_tokens"),
            k = sum("cached_tokens"),
            cost = sum("COALESCE(cost_nanos, 0)"),
        ))
        .await?;
        Ok(())
    }
}

fn count(col: UsageDaily) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

#[derive(DeriveIden)]
enum UsageDaily {
    Table,
    Day,
    UserId,
    ClientKeyId,
    PublicModel,
    ProviderId,
    Requests,
    Errors,
    PromptTokens,
    CompletionTokens,
    CachedTokens,
    CostNanos,
    UnknownCost,
}
