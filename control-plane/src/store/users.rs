//! Accounts: creation, lookup by login, role/status/shared-pool changes (which end every session)
//! and password hashes.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};

use super::entities::users;
use super::limits::{Columns, LimitsChange};
use super::{AuditEvent, Result, Store, StoreError, new_id, sessions};

/// Where an account stands. Stored as its `as_str` form in `users.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// May sign in and use client keys.
    Active,
    /// Registered while registration needs approval; an admin's `active` approves it.
    Pending,
    /// Turned off by an admin: no sign-in, and the user's client keys leave the snapshot.
    Disabled,
}

impl UserStatus {
    pub const ALL: [UserStatus; 3] = [
        UserStatus::Active,
        UserStatus::Pending,
        UserStatus::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Pending => "pending",
            UserStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        UserStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl users::Model {
    /// The stored status; an unknown value reads as `None` (and is treated as not active).
    pub fn user_status(&self) -> Option<UserStatus> {
        UserStatus::parse(&self.status)
    }

    pub fn is_active(&self) -> bool {
        self.user_status() == Some(UserStatus::Active)
    }
}

pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: &'static str,
    pub status: UserStatus,
}

/// Fields an admin may change on a user; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserChange<'a> {
    pub role: Option<&'a str>,
    pub status: Option<UserStatus>,
    pub shared_pool_access: Option<bool>,
}

impl Store {
    pub async fn count_users(&self) -> Result<u64> {
        Ok(users::Entity::find().count(&self.db).await?)
    }

    pub async fn count_active_admins(&self) -> Result<u64> {
        Ok(users::Entity::find()
            .filter(users::Column::Role.eq("admin"))
            .filter(users::Column::Status.eq(UserStatus::Active.as_str()))
            .count(&self.db)
            .await?)
    }

    pub async fn create_user(&self, new: NewUser, audit: AuditEvent) -> Result<users::Model> {
        let now = Utc::now();
        let mut m = users::ActiveModel {
            id: Set(new_id()),
            username: Set(new.username),
            email: Set(new.email),
            password_hash: Set(new.password_hash),
            role: Set(new.role.to_owned()),
            status: Set(new.status.as_str().to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            token_version: Set(0),
            shared_pool_access: Set(true),
            ..Default::default()
        };
        m.set_limit_columns(Columns::none());
        let txn = self.begin().await?;
        let user = users::Entity::insert(m)
            .exec_with_returning(&txn)
            .await
            .map_err(|e| StoreError::from(e).conflict_as("user"))?;
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
            m.status = Set(st.as_str().to_owned());
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

    /// Sets a user's limits and budget (admins only, checked by the API). Unlike other user
    /// changes this ends no session: it changes what the user's client keys may do, not who the
    /// user is.
    pub async fn set_user_limits(
        &self,
        id: &str,
        change: LimitsChange,
        audit: AuditEvent,
    ) -> Result<users::Model> {
        let txn = self.begin().await?;
        let user = users::Entity::find_by_id(id.to_owned())
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut limits = user.limit_columns();
        let before = limits.audit_value();
        let changed = limits.apply(&change, Utc::now());
        let after = limits.audit_value();
        let mut m: users::ActiveModel = user.into();
        m.set_limit_columns(limits);
        m.updated_at = Set(Utc::now());
        let updated = users::Entity::update(m).exec(&txn).await?;
        let ev = audit.target(id).detail(serde_json::json!({
            "username": updated.username,
            "changed": changed,
            "limits": {"from": before, "to": after},
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_status_round_trips_as_the_stored_strings() {
        for (s, stored) in [
            (UserStatus::Active, "active"),
            (UserStatus::Pending, "pending"),
            (UserStatus::Disabled, "disabled"),
        ] {
            assert_eq!(s.as_str(), stored);
            assert_eq!(UserStatus::parse(stored), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), stored);
            assert_eq!(
                serde_json::from_value::<UserStatus>(stored.into()).unwrap(),
                s
            );
        }
        assert_eq!(UserStatus::parse("locked"), None);
        assert_eq!(UserStatus::parse("Active"), None);
    }
}
