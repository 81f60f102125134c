//! The only module that talks SQL. Postgres and SQLite run the same code and the same migrations.

pub mod audit;
pub mod entities;
pub mod health;
pub mod sessions;
pub mod vault_rows;

pub use audit::{Actor, AuditEvent, AuditFilter, AuditKey, VerifyReport};

use chrono::{DateTime, Utc};
use llmhub_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, Database, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, SqlErr,
    TransactionTrait,
};

use entities::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(DbErr),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict("record"),
            _ => StoreError::Db(e),
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

/// A new provider-key row; `sealed` was produced with this row's id, owner and provider as AAD.
pub struct NewProviderKey {
    pub id: String,
    pub provider_id: String,
    pub owner_user_id: Option<String>,
    pub sealed: Vec<u8>,
    pub key_version: u32,
    pub fingerprint: String,
    pub mask: String,
    pub label: String,
    pub weight: u32,
    pub allowed_models: Vec<String>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u32>,
}

pub struct NewProvider {
    pub name: String,
    pub kind: &'static str,
    pub base_url: String,
    pub enabled: bool,
    pub request_timeout_ms: u32,
    pub preset: Option<String>,
    pub api_version: Option<String>,
}

/// Fields an admin may change on a user; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserChange<'a> {
    pub role: Option<&'a str>,
    pub status: Option<&'a str>,
    pub shared_pool_access: Option<bool>,
}

/// Fields an owner may change on a provider key; `None` leaves a field as it is.
#[derive(Default)]
pub struct KeyChange {
    pub label: Option<String>,
    pub weight: Option<u32>,
    pub allowed_models: Option<Vec<String>>,
    /// `Some(None)` removes the limit.
    pub rpm_limit: Option<Option<u32>>,
    pub tpm_limit: Option<Option<u32>>,
}

pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: &'static str,
    pub status: &'static str,
}

pub struct NewClientKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub prefix: String,
    pub allowed_models: Vec<String>,
    pub use_shared_pool: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct NewRouteTarget {
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
}

pub struct RouteWithTargets {
    pub route: routes::Model,
    pub targets: Vec<route_targets::Model>,
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

/// Parses a JSON list column; a corrupt value reads as empty rather than failing the snapshot.
pub fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

impl Store {
    pub async fn connect(url: &str) -> Result<Self> {
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

    // ---- users ----

    pub async fn count_users(&self) -> Result<u64> {
        Ok(users::Entity::find().count(&self.db).await?)
    }

    pub async fn count_active_admins(&self) -> Result<u64> {
        Ok(users::Entity::find()
            .filter(users::Column::Role.eq("admin"))
            .filter(users::Column::Status.eq("active"))
            .count(&self.db)
            .await?)
    }

    pub async fn create_user(&self, new: NewUser, audit: AuditEvent) -> Result<users::Model> {
        let now = Utc::now();
        let m = users::ActiveModel {
            id: Set(new_id()),
            username: Set(new.username),
            email: Set(new.email),
            password_hash: Set(new.password_hash),
            role: Set(new.role.to_owned()),
            status: Set(new.status.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            token_version: Set(0),
            shared_pool_access: Set(true),
        };
        let txn = self.begin().await?;
        let user = users::Entity::insert(m)
            .exec_with_returning(&txn)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict("user"),
                e => e,
            })?;
        let ev = audit
            .target(&user.id)
            .detail(serde_json::json!({"username": user.username, "role": user.role, "status": user.status}));
        self.commit_audited(txn, ev).await?;
        Ok(user)
    }

    /// Finds a user by username or, failing that, by email.
    pub async fn user_by_login(&self, login: &str) -> Result<Option<users::Model>> {
        if let Some(u) = users::Entity::find()
            .filter(users::Column::Username.eq(login))
            .one(&self.db)
            .await?
        {
            return Ok(Some(u));
        }
        Ok(users::Entity::find()
            .filter(users::Column::Email.eq(login.to_lowercase()))
            .one(&self.db)
            .await?)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<users::Model>> {
        Ok(users::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?)
    }

    pub async fn users(&self) -> Result<Vec<users::Model>> {
        Ok(users::Entity::find()
            .order_by_asc(users::Column::Username)
            .all(&self.db)
            .await?)
    }

    /// Changes role and/or status. Any change bumps the token version and revokes every session,
    /// so the user's existing tokens stop working at once.
    pub async fn update_user(
        &self,
        id: &str,
        change: UserChange<'_>,
        audit: AuditEvent,
    ) -> Result<users::Model> {
        let UserChange {
            role,
            status,
            shared_pool_access,
        } = change;
        let txn = self.begin().await?;
        let user = users::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: users::ActiveModel = user.clone().into();
        if let Some(r) = role {
            m.role = Set(r.to_owned());
        }
        if let Some(st) = status {
            m.status = Set(st.to_owned());
        }
        if let Some(shared) = shared_pool_access {
            m.shared_pool_access = Set(shared);
        }
        m.token_version = Set(user.token_version + 1);
        m.updated_at = Set(Utc::now());
        let updated = users::Entity::update(m).exec(&txn).await?;
        sessions::revoke_all_for_user(&txn, id, "user_changed").await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "username": updated.username,
            "role": {"from": user.role, "to": updated.role},
            "status": {"from": user.status, "to": updated.status},
            "shared_pool_access": {"from": user.shared_pool_access, "to": updated.shared_pool_access},
        }));
        self.commit_audited(txn, ev).await?;
        Ok(updated)
    }

    /// Replaces the password hash; `end_sessions` also bumps the token version and revokes every
    /// session (a password change), while a transparent re-hash at login leaves them alone.
    pub async fn set_password_hash(
        &self,
        id: &str,
        hash: &str,
        end_sessions: bool,
        audit: Option<AuditEvent>,
    ) -> Result<()> {
        let txn = self.begin().await?;
        let user = users::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let version = user.token_version;
        let mut m: users::ActiveModel = user.into();
        m.password_hash = Set(hash.to_owned());
        m.updated_at = Set(Utc::now());
        if end_sessions {
            m.token_version = Set(version + 1);
        }
        users::Entity::update(m).exec(&txn).await?;
        if end_sessions {
            sessions::revoke_all_for_user(&txn, id, "password_changed").await?;
        }
        match audit {
            Some(ev) => self.commit_audited(txn, ev.target(id)).await,
            None => Ok(txn.commit().await?),
        }
    }

    pub async fn delete_user(&self, id: &str, audit: AuditEvent) -> Result<()> {
        let txn = self.begin().await?;
        let user = users::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        users::Entity::delete_by_id(id.to_owned())
            .exec(&txn)
            .await?;
        let ev = audit
            .target(id)
            .detail(serde_json::json!({"username": user.username, "role": user.role}));
        self.commit_audited(txn, ev).await
    }

    // ---- providers ----

    pub async fn create_provider(
        &self,
        p: NewProvider,
        audit: AuditEvent,
    ) -> Result<providers::Model> {
        let now = Utc::now();
        let m = providers::ActiveModel {
            id: Set(new_id()),
            name: Set(p.name),
            kind: Set(p.kind.to_owned()),
            base_url: Set(p.base_url),
            enabled: Set(p.enabled),
            request_timeout_ms: Set(i32::try_from(p.request_timeout_ms).unwrap_or(i32::MAX)),
            created_at: Set(now),
            updated_at: Set(now),
            preset: Set(p.preset),
            api_version: Set(p.api_version),
        };
        let txn = self.begin().await?;
        let p = providers::Entity::insert(m)
            .exec_with_returning(&txn)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict("provider"),
                e => e,
            })?;
        let ev = audit.target(&p.id).detail(
            serde_json::json!({"name": p.name, "kind": p.kind, "base_url": p.base_url, "enabled": p.enabled}),
        );
        self.commit_audited(txn, ev).await?;
        Ok(p)
    }

    pub async fn set_provider_enabled(
        &self,
        id: &str,
        enabled: bool,
        audit: AuditEvent,
    ) -> Result<providers::Model> {
        let txn = self.begin().await?;
        let p = providers::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: providers::ActiveModel = p.into();
        m.enabled = Set(enabled);
        m.updated_at = Set(Utc::now());
        let p = providers::Entity::update(m).exec(&txn).await?;
        let ev = audit
            .target(id)
            .detail(serde_json::json!({"name": p.name, "enabled": enabled}));
        self.commit_audited(txn, ev).await?;
        Ok(p)
    }

    pub async fn providers(&self) -> Result<Vec<providers::Model>> {
        Ok(providers::Entity::find()
            .order_by_asc(providers::Column::Name)
            .all(&self.db)
            .await?)
    }

    pub async fn provider(&self, id: &str) -> Result<providers::Model> {
        providers::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }

    // ---- provider keys ----

    pub async fn insert_provider_key(
        &self,
        k: NewProviderKey,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let now = Utc::now();
        let m = provider_keys::ActiveModel {
            id: Set(k.id),
            provider_id: Set(k.provider_id),
            owner_user_id: Set(k.owner_user_id),
            sealed: Set(k.sealed),
            key_version: Set(i32::try_from(k.key_version).unwrap_or(i32::MAX)),
            fingerprint: Set(k.fingerprint),
            mask: Set(k.mask),
            label: Set(k.label),
            weight: Set(i32::try_from(k.weight).unwrap_or(i32::MAX)),
            allowed_models: Set(json_list(&k.allowed_models)),
            state: Set("active".into()),
            last_used_at: Set(None),
            last_error_class: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            rpm_limit: Set(k.rpm_limit.map(clamp_i32)),
            tpm_limit: Set(k.tpm_limit.map(clamp_i32)),
            last_tested_at: Set(None),
            last_test_result: Set(None),
            state_reason: Set(None),
        };
        let txn = self.begin().await?;
        let row = provider_keys::Entity::insert(m)
            .exec_with_returning(&txn)
            .await?;
        let ev = audit.target(&row.id).detail(serde_json::json!({
            "provider_id": row.provider_id, "fingerprint": row.fingerprint,
            "pool": if row.owner_user_id.is_some() { "user" } else { "shared" },
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn provider_key(&self, id: &str) -> Result<provider_keys::Model> {
        provider_keys::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_provider_key(
        &self,
        id: &str,
        change: KeyChange,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: provider_keys::ActiveModel = row.into();
        let mut changed = Vec::new();
        if let Some(l) = change.label {
            m.label = Set(l);
            changed.push("label");
        }
        if let Some(w) = change.weight {
            m.weight = Set(clamp_i32(w));
            changed.push("weight");
        }
        if let Some(models) = change.allowed_models {
            m.allowed_models = Set(json_list(&models));
            changed.push("allowed_models");
        }
        if let Some(r) = change.rpm_limit {
            m.rpm_limit = Set(r.map(clamp_i32));
            changed.push("rpm_limit");
        }
        if let Some(t) = change.tpm_limit {
            m.tpm_limit = Set(t.map(clamp_i32));
            changed.push("tpm_limit");
        }
        m.updated_at = Set(Utc::now());
        let row = provider_keys::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "fingerprint": row.fingerprint, "changed": changed,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    /// Records the outcome of a key test (and its audit row).
    pub async fn record_key_test(
        &self,
        id: &str,
        result: &str,
        error_class: Option<&str>,
        audit: AuditEvent,
    ) -> Result<provider_keys::Model> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut m: provider_keys::ActiveModel = row.into();
        m.last_tested_at = Set(Some(Utc::now()));
        m.last_test_result = Set(Some(result.chars().take(32).collect()));
        if let Some(c) = error_class {
            m.last_error_class = Set(Some(c.to_owned()));
        }
        let row = provider_keys::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "fingerprint": row.fingerprint, "result": result,
        }));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn delete_provider_key(&self, id: &str, audit: AuditEvent) -> Result<()> {
        let txn = self.begin().await?;
        let row = provider_keys::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        provider_keys::Entity::delete_by_id(id.to_owned())
            .exec(&txn)
            .await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "provider_id": row.provider_id, "fingerprint": row.fingerprint,
        }));
        self.commit_audited(txn, ev).await
    }

    pub async fn provider_keys(&self) -> Result<Vec<provider_keys::Model>> {
        Ok(provider_keys::Entity::find()
            .order_by_asc(provider_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    pub async fn provider_keys_of(&self, provider_id: &str) -> Result<Vec<provider_keys::Model>> {
        Ok(provider_keys::Entity::find()
            .filter(provider_keys::Column::ProviderId.eq(provider_id))
            .order_by_asc(provider_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Records the latest outcome a proxy reported for a key.
    pub async fn touch_provider_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
        error_class: Option<&str>,
    ) -> Result<()> {
        let m = provider_keys::ActiveModel {
            last_used_at: Set(Some(at)),
            last_error_class: Set(error_class.map(str::to_owned)),
            ..Default::default()
        };
        provider_keys::Entity::update_many()
            .set(m)
            .filter(provider_keys::Column::Id.eq(key_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    // ---- client keys ----

    pub async fn insert_client_key(
        &self,
        k: NewClientKey,
        audit: AuditEvent,
    ) -> Result<client_keys::Model> {
        let m = client_keys::ActiveModel {
            id: Set(k.id),
            user_id: Set(k.user_id),
            name: Set(k.name),
            key_hash: Set(k.key_hash),
            prefix: Set(k.prefix),
            allowed_models: Set(json_list(&k.allowed_models)),
            enabled: Set(true),
            use_shared_pool: Set(k.use_shared_pool),
            expires_at: Set(k.expires_at),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
        };
        let txn = self.begin().await?;
        let row = client_keys::Entity::insert(m)
            .exec_with_returning(&txn)
            .await?;
        let ev = audit
            .target(&row.id)
            .detail(serde_json::json!({"name": row.name, "prefix": row.prefix}));
        self.commit_audited(txn, ev).await?;
        Ok(row)
    }

    pub async fn client_keys(&self) -> Result<Vec<client_keys::Model>> {
        Ok(client_keys::Entity::find()
            .order_by_asc(client_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    pub async fn client_keys_of(&self, user_id: &str) -> Result<Vec<client_keys::Model>> {
        Ok(client_keys::Entity::find()
            .filter(client_keys::Column::UserId.eq(user_id))
            .order_by_asc(client_keys::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Revokes a client key owned by `user_id`; another user's key is `NotFound`.
    pub async fn revoke_client_key(
        &self,
        user_id: &str,
        id: &str,
        audit: AuditEvent,
    ) -> Result<()> {
        let m = client_keys::ActiveModel {
            enabled: Set(false),
            revoked_at: Set(Some(Utc::now())),
            ..Default::default()
        };
        let txn = self.begin().await?;
        let res = client_keys::Entity::update_many()
            .set(m)
            .filter(client_keys::Column::Id.eq(id))
            .filter(client_keys::Column::UserId.eq(user_id))
            .filter(client_keys::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound);
        }
        self.commit_audited(txn, audit.target(id)).await
    }

    // ---- routes ----

    pub async fn create_route(
        &self,
        public_model: &str,
        strategy: &str,
        aliases: &[String],
        targets: Vec<NewRouteTarget>,
        audit: AuditEvent,
    ) -> Result<RouteWithTargets> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let route = routes::Entity::insert(routes::ActiveModel {
            id: Set(new_id()),
            public_model: Set(public_model.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            strategy: Set(strategy.to_owned()),
            aliases: Set(json_list(aliases)),
        })
        .exec_with_returning(&txn)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict("route"),
            e => e,
        })?;
        let mut rows = Vec::with_capacity(targets.len());
        for t in targets {
            let row = route_targets::Entity::insert(route_targets::ActiveModel {
                id: Set(new_id()),
                route_id: Set(route.id.clone()),
                provider_id: Set(t.provider_id),
                upstream_model: Set(t.upstream_model),
                weight: Set(i32::try_from(t.weight).unwrap_or(i32::MAX)),
                priority: Set(i32::try_from(t.priority).unwrap_or(i32::MAX)),
            })
            .exec_with_returning(&txn)
            .await?;
            rows.push(row);
        }
        let ev = audit
            .target(&route.id)
            .detail(serde_json::json!({"public_model": route.public_model, "targets": rows.len()}));
        self.commit_audited(txn, ev).await?;
        Ok(RouteWithTargets {
            route,
            targets: rows,
        })
    }

    pub async fn routes(&self) -> Result<Vec<RouteWithTargets>> {
        let routes = routes::Entity::find()
            .order_by_asc(routes::Column::PublicModel)
            .all(&self.db)
            .await?;
        let mut targets = route_targets::Entity::find()
            .order_by_asc(route_targets::Column::Priority)
            .all(&self.db)
            .await?;
        Ok(routes
            .into_iter()
            .map(|route| {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    targets.drain(..).partition(|t| t.route_id == route.id);
                targets = rest;
                RouteWithTargets {
                    route,
                    targets: mine,
                }
            })
            .collect())
    }

    // ---- settings (sealed) ----

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
            key_version: Set(i32::try_from(key_version).unwrap_or(i32::MAX)),
            updated_at: Set(Utc::now()),
        };
        settings::Entity::insert(m)
            .on_conflict_do_nothing()
            .exec(&self.db)
            .await?;
        self.setting(name).await?.ok_or(StoreError::NotFound)
    }

    // ---- routing records ----

    /// Stores records, ignoring request ids already stored (at-least-once delivery).
    pub async fn insert_routing_records(
        &self,
        records: Vec<routing_records::ActiveModel>,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        for r in records {
            routing_records::Entity::insert(r)
                .on_conflict_do_nothing()
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    pub async fn routing_records(
        &self,
        user_id: Option<&str>,
        limit: u64,
    ) -> Result<Vec<routing_records::Model>> {
        let mut q = routing_records::Entity::find();
        if let Some(u) = user_id {
            q = q.filter(routing_records::Column::UserId.eq(u));
        }
        use sea_orm::QuerySelect;
        Ok(q.order_by_desc(routing_records::Column::StartedAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The backend in use, for tests and diagnostics.
    pub fn backend(&self) -> sea_orm::DbBackend {
        self.db.get_database_backend()
    }
}
