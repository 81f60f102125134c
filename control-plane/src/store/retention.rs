//! Keeping the routing records bounded: on Postgres one partition per UTC day, created ahead and
//! dropped whole once past the retention (no row-by-row delete, so no vacuum storm); on SQLite
//! deletes in small batches. The daily rollups are kept: they are small, and charts and
//! lifetime budgets need them after the records are gone.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use super::{Result, Store};

/// Days ahead of today that have a partition, so a clock a little ahead, or a maintenance run
/// missed, never sends a day's records to the default partition.
pub const DAYS_AHEAD: i64 = 2;

/// Rows deleted per statement (SQLite, and stray rows in Postgres's default partition): each
/// statement holds the write lock only briefly.
const DELETE_BATCH: u64 = 5_000;

/// Serialises partition changes across control-plane replicas (an arbitrary constant, the same
/// in every replica).
const ADVISORY_LOCK: i64 = 0x6c6c_6d68_7562_0001;

const PARTITION_PREFIX: &str = "routing_records_p";

/// What one maintenance run changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Days whose partition was created (Postgres).
    pub created: Vec<NaiveDate>,
    /// Days whose partition was dropped (Postgres).
    pub dropped: Vec<NaiveDate>,
    /// Rows deleted one by one: every expired row on SQLite; on Postgres only expired rows of the
    /// default partition.
    pub deleted: u64,
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

fn partition_name(day: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

/// A timestamp literal for partition bounds (DDL takes no parameters). Built from a date only.
fn bound(day: NaiveDate) -> String {
    format!("'{} 00:00:00+00'", day.format("%Y-%m-%d"))
}

impl Store {
    /// Brings the records in line with the retention as of `now`: records that started before
    /// the UTC midnight `retention_days` days before today's are removed, and (Postgres) the
    /// partitions of today and the next [`DAYS_AHEAD`] days exist. Rows that landed in the
    /// default partition (a start time outside every daily partition: a clock far ahead, or a
    /// late replay of a day without one) are moved into a partition of their own day once that
    /// day is within the retention window.
    pub async fn maintain_records(
        &self,
        now: DateTime<Utc>,
        retention_days: u32,
    ) -> Result<Maintenance> {
        let today = now.date_naive();
        let cutoff = today - Duration::days(i64::from(retention_days));
        match self.db.get_database_backend() {
            DbBackend::Postgres => self.maintain_partitions(today, cutoff).await,
            _ => Ok(Maintenance {
                deleted: self
                    .delete_in_batches(
                        "DELETE FROM routing_records WHERE rowid IN \
                         (SELECT rowid FROM routing_records WHERE started_at < ? LIMIT ?)",
                        midnight(cutoff),
                    )
                    .await?,
                ..Maintenance::default()
            }),
        }
    }

    /// The days that have a partition of their own (Postgres; empty on SQLite), oldest first.
    pub async fn record_partitions(&self) -> Result<Vec<NaiveDate>> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT c.relname AS name FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 JOIN pg_namespace n ON n.oid = p.relnamespace \
                 WHERE p.relname = 'routing_records' AND n.nspname = current_schema()",
            ))
            .await?;
        let mut days: Vec<NaiveDate> = rows
            .iter()
            .filter_map(|r| r.try_get::<String>("", "name").ok())
            .filter_map(|n| {
                NaiveDate::parse_from_str(n.strip_prefix(PARTITION_PREFIX)?, "%Y%m%d").ok()
            })
            .collect();
        days.sort();
        Ok(days)
    }

    async fn maintain_partitions(
        &self,
        today: NaiveDate,
        cutoff: NaiveDate,
    ) -> Result<Maintenance> {
        let mut done = Maintenance::default();
        let existing = self.record_partitions().await?;
        // Today and the days ahead, and the days within the retention that have rows waiting in
        // the default partition.
        let mut wanted: Vec<NaiveDate> = (0..=DAYS_AHEAD)
            .map(|d| today + Duration::days(d))
            .collect();
        let stray = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT DISTINCT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day \
                 FROM routing_records_default WHERE started_at >= $1 AND started_at < $2",
                [
                    midnight(cutoff).into(),
                    midnight(today + Duration::days(DAYS_AHEAD + 1)).into(),
                ],
            ))
            .await?;
        wanted.extend(
            stray
                .iter()
                .filter_map(|r| r.try_get::<String>("", "day").ok())
                .filter_map(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()),
        );
        wanted.sort();
        wanted.dedup();
        // Each step on its own: one that fails (a lock not granted in time) is logged and
        // retried by the next run, and does not hold back the others.
        for day in wanted.into_iter().filter(|d| !existing.contains(d)) {
            match self.create_partition(day).await {
                Ok(true) => done.created.push(day),
                Ok(false) => {}
                Err(e) => tracing::warn!(%day, error = %e, "creating a record partition failed"),
            }
        }
        for day in existing.into_iter().filter(|d| *d < cutoff) {
            match self.drop_partition(day).await {
                Ok(true) => done.dropped.push(day),
                Ok(false) => {}
                Err(e) => tracing::warn!(%day, error = %e, "dropping a record partition failed"),
            }
        }
        done.deleted = self
            .delete_in_batches(
                "DELETE FROM routing_records_default WHERE ctid IN \
                 (SELECT ctid FROM routing_records_default WHERE started_at < $1 LIMIT $2)",
                midnight(cutoff),
            )
            .await?;
        Ok(done)
    }

    /// Opens a partition-changing transaction: one replica at a time, and never waiting long
    /// for a lock behind a slow query. Dropping a partition locks the whole table, and records
    /// being stored queue behind a lock that is waited for; a run that gives up is retried by
    /// the next one. (`DETACH … CONCURRENTLY` would avoid the lock, but Postgres refuses it on a
    /// table with a default partition.)
    async fn partition_txn(&self) -> Result<sea_orm::DatabaseTransaction> {
        let txn = self.db.begin().await?;
        txn.execute_unprepared("SET LOCAL lock_timeout = '1s'")
            .await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [ADVISORY_LOCK.into()],
        ))
        .await?;
        Ok(txn)
    }

    /// Whether a table of this name exists in the current schema.
    async fn table_exists(txn: &sea_orm::DatabaseTransaction, name: &str) -> Result<bool> {
        Ok(txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND n.nspname = current_schema()",
                [name.into()],
            ))
            .await?
            .is_some())
    }

    /// Creates `day`'s partition, moving in the rows the default partition holds for it (a
    /// partition cannot be attached while the default one has rows in its range). Returns
    /// `false` when another replica created it first.
    async fn create_partition(&self, day: NaiveDate) -> Result<bool> {
        let txn = self.partition_txn().await?;
        let name = partition_name(day);
        if Self::table_exists(&txn, &name).await? {
            return Ok(false);
        }
        let (from, to) = (bound(day), bound(day + Duration::days(1)));
        txn.execute_unprepared(&format!(
            "CREATE TABLE {name} (LIKE routing_records INCLUDING DEFAULTS)"
        ))
        .await?;
        txn.execute_unprepared(&format!(
            "WITH moved AS (DELETE FROM routing_records_default \
             WHERE started_at >= {from} AND started_at < {to} RETURNING *) \
             INSERT INTO {name} SELECT * FROM moved"
        ))
        .await?;
        // Attaching builds the partition's key and indexes from the parent's.
        txn.execute_unprepared(&format!(
            "ALTER TABLE routing_records ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"
        ))
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Drops `day`'s partition with its rows. Returns `false` when another replica dropped it
    /// first.
    async fn drop_partition(&self, day: NaiveDate) -> Result<bool> {
        let txn = self.partition_txn().await?;
        let name = partition_name(day);
        if !Self::table_exists(&txn, &name).await? {
            return Ok(false);
        }
        txn.execute_unprepared(&format!("DROP TABLE {name}"))
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Runs `sql` (a delete of at most `LIMIT` rows started before `before`) until it deletes
    /// less than a batch. Returns the rows deleted.
    async fn delete_in_batches(&self, sql: &str, before: DateTime<Utc>) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let mut deleted = 0;
        loop {
            let n = self
                .db
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    sql,
                    [
                        before.into(),
                        i64::try_from(DELETE_BATCH).unwrap_or(i64::MAX).into(),
                    ],
                ))
                .await?
                .rows_affected();
            deleted += n;
            if n < DELETE_BATCH {
                return Ok(deleted);
            }
            // Lets the writes waiting for the connection (SQLite has one) go between batches.
            tokio::task::yield_now().await;
        }
    }
}
