//! The only module that talks SQL. Postgres and SQLite run the same code and the same migrations.
//!
//! `Store` is one connection pool; its queries live in one file per resource, each an
//! `impl Store` block: `users`, `sessions`, `providers`, `provider_keys`, `client_keys`,
//! `routes`, `routing_records` (stored with their daily rollups, and queried), `usage` (the
//! rollups read for charts and budgets), `retention` (daily partitions on Postgres, batched
//! deletes on SQLite), `prices` (the admin's model prices), `health` (key cooldowns and
//! history), `settings`, `vault_rows` (master-key rotation) and `audit`; `limits` holds the
//! limit and budget columns client keys and users share. Every mutation an admin makes commits
//! its audit row in the same transaction through [`Store::commit_audited`].

pub mod audit;
pub mod client_keys;
pub mod entities;
pub mod health;
pub mod limits;
pub mod prices;
pub mod provider_keys;
pub mod providers;
pub mod retention;
pub mod routes;
pub mod routing_records;
pub mod sessions;
pub mod settings;
pub mod usage;
pub mod users;
pub mod vault_rows;

pub use audit::{Actor, AuditEvent, AuditFilter, AuditKey, VerifyReport};
pub use client_keys::{ClientKeyChange, NewClientKey, Rotation};
pub use limits::{Budget, BudgetSetting, Limits, LimitsChange};
pub use prices::NewModelPrice;
pub use provider_keys::{KeyChange, KeyState, NewProviderKey};
pub use providers::{NewProvider, ProviderChange, ProviderDeleted};
pub use retention::Maintenance;
pub use routes::{NewRouteTarget, RouteChange, RouteWithTargets};
pub use routing_records::{NewRoutingRecord, RecordCursor, RecordFilter, StatusFilter};
pub use usage::{SpendOwner, UsageFilter, UsageGroup, UsageRow};
pub use users::{NewUser, UserChange, UserStatus};

use llmhub_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr, SqlErr,
    TransactionTrait,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    /// Other rows still depend on the row: `what` names them (`routes`), `names` lists them.
    #[error("still used by {what}: {}", names.join(", "))]
    InUse {
        what: &'static str,
        names: Vec<String>,
    },
    /// The row was revoked and can no longer change.
    #[error("revoked")]
    Revoked,
    #[error("database error: {0}")]
    Db(DbErr),
    #[error("database file: {0}")]
    Io(String),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict("record"),
            _ => StoreError::Db(e),
        }
    }
}

impl StoreError {
    /// Names the resource in a uniqueness conflict (`user already exists`).
    fn conflict_as(self, what: &'static str) -> Self {
        match self {
            StoreError::Conflict(_) => StoreError::Conflict(what),
            e => e,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    audit_key: AuditKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Parses a JSON list column; a corrupt value reads as empty rather than failing the snapshot.
pub fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

impl Store {
    pub async fn connect(url: &str) -> Result<Self> {
        if let Some(path) = sqlite_file(url) {
            restrict_sqlite_file(&path)?;
        }
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(if url.starts_with("sqlite:") { 1 } else { 10 })
            .sqlx_logging(false);
        let db = Database::connect(opts).await?;
        Ok(Store {
            db,
            audit_key: AuditKey(zeroize::Zeroizing::new([0u8; 32])),
        })
    }

    /// The same store, chaining audit rows under `key` (derived from the sealed server secret).
    pub fn with_audit_key(mut self, key: AuditKey) -> Self {
        self.audit_key = key;
        self
    }

    async fn begin(&self) -> Result<DatabaseTransaction> {
        Ok(self.db.begin().await?)
    }

    /// Appends the audit row for a mutation in its transaction, then commits both.
    async fn commit_audited(&self, txn: DatabaseTransaction, ev: AuditEvent) -> Result<()> {
        audit::append(&txn, &self.audit_key, ev).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Applies pending migrations. Called only by the explicit `migrate` step.
    pub async fn migrate(&self) -> Result<()> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Names of migrations not yet applied; `serve` refuses to start when this is not empty.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        Ok(Migrator::get_pending_migrations(&self.db)
            .await?
            .iter()
            .map(|m| m.name().to_owned())
            .collect())
    }

    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await?;
        Ok(())
    }

    /// The backend in use, for tests and diagnostics.
    pub fn backend(&self) -> sea_orm::DbBackend {
        self.db.get_database_backend()
    }
}

/// The database file of an `sqlite:` URL (`None` for in-memory databases and other backends).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(':')).then(|| std::path::PathBuf::from(path))
}

/// The database file holds sealed keys, password hashes and the audit chain: it is created
/// owner-only before SQLite opens it (SQLite gives its journals the database file's mode), and
/// an existing one that others can read is restricted.
fn restrict_sqlite_file(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                    tracing::warn!(
                        event = "insecure_file",
                        path = %path.display(),
                        "the SQLite database was readable by others; restricted it to its owner"
                    );
                }
            }
            // A missing directory and the like: SQLite reports it in its own words.
            Err(_) => {}
        }
    }
    Ok(())
}
