//! Admin user management: list, create, change role or status (approve, disable), limits and
//! budget, delete, and login lockouts.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::limits::{BudgetInput, LimitFields, LimitsView};
use super::session::validate_new_account;
use super::{AdminUser, ApiError, ApiJson, AppState, List, present};
use crate::auth::Role;
use crate::store::entities::users;
use crate::store::{AuditEvent, NewUser, UserChange, UserStatus};

/// A user as admins see it: never the password hash or token version.
#[derive(Serialize)]
pub(super) struct UserView {
    id: String,
    username: String,
    email: Option<String>,
    role: String,
    status: String,
    shared_pool_access: bool,
    /// Limits and budget across all of the user's client keys (admins set them).
    #[serde(flatten)]
    limits: LimitsView,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<users::Model> for UserView {
    fn from(u: users::Model) -> Self {
        UserView {
            limits: LimitsView::of(u.limits(), u.budget()),
            id: u.id,
            username: u.username,
            email: u.email,
            role: u.role,
            status: u.status,
            shared_pool_access: u.shared_pool_access,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

pub(super) async fn list(
    State(s): State<AppState>,
    _a: AdminUser,
) -> Result<Json<List<UserView>>, ApiError> {
    Ok(Json(List::of(s.store.users().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    username: Option<String>,
    email: Option<String>,
    password: String,
    #[serde(default = "user_role")]
    role: String,
}

fn user_role() -> String {
    "user".into()
}

pub(super) async fn create(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::BadRequest("role: must be admin or user".into()))?;
    let (username, email) = validate_new_account(
        body.username.as_deref(),
        body.email.as_deref(),
        &body.password,
    )?;
    let hash = s.hasher.hash(&body.password).await?;
    let user = s
        .store
        .create_user(
            NewUser {
                username,
                email,
                password_hash: hash,
                role: role.as_str(),
                status: UserStatus::Active,
            },
            AuditEvent::new(&admin.actor(), "user_created", "user"),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    role: Option<String>,
    /// `active` (also approves a pending registration) or `disabled`.
    status: Option<String>,
    /// Whether the user's requests may draw on the shared key pool.
    shared_pool_access: Option<bool>,
}

/// Refuses a change that would leave no active admin.
async fn keep_an_admin(
    s: &AppState,
    target: &users::Model,
    stays_active_admin: bool,
) -> Result<(), ApiError> {
    let is_active_admin = target.role == Role::Admin.as_str() && target.is_active();
    if is_active_admin && !stays_active_admin && s.store.count_active_admins().await? <= 1 {
        return Err(ApiError::Conflict("this is the last active admin".into()));
    }
    Ok(())
}

pub(super) async fn update(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    let target = s.store.user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    let role = match body.role.as_deref() {
        None => None,
        Some(r) => Some(
            Role::parse(r)
                .ok_or_else(|| ApiError::BadRequest("role: must be admin or user".into()))?,
        ),
    };
    let status = match body.status.as_deref().map(UserStatus::parse) {
        None => None,
        Some(Some(st @ (UserStatus::Active | UserStatus::Disabled))) => Some(st),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "status: must be active or disabled".into(),
            ));
        }
    };
    if role.is_none() && status.is_none() && body.shared_pool_access.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give role, status and/or shared_pool_access".into(),
        ));
    }
    let new_role = role.map_or(target.role.clone(), |r| r.as_str().to_owned());
    let new_status = status.or(target.user_status());
    keep_an_admin(
        &s,
        &target,
        new_role == Role::Admin.as_str() && new_status == Some(UserStatus::Active),
    )
    .await?;
    let action = match (role.is_some() && new_role != target.role, status) {
        (true, _) => "user_role_changed",
        (false, Some(UserStatus::Disabled)) => "user_disabled",
        (false, Some(UserStatus::Active)) if target.user_status() == Some(UserStatus::Pending) => {
            "user_approved"
        }
        (false, Some(UserStatus::Active)) => "user_enabled",
        _ if body.shared_pool_access.is_some() => "user_shared_pool_changed",
        _ => "user_updated",
    };
    let updated = s
        .store
        .update_user(
            &id,
            UserChange {
                role: role.map(Role::as_str),
                status,
                shared_pool_access: body.shared_pool_access,
            },
            AuditEvent::new(&admin.actor(), action, "user"),
        )
        .await?;
    // A disabled user's client keys leave the proxies' snapshot.
    s.hub.rebuild().await?;
    Ok(Json(updated.into()))
}

/// A change of a user's limits and budget: absent fields stay, `null` removes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserLimits {
    #[serde(default, deserialize_with = "present")]
    rpm_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    tpm_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    max_concurrent: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<BudgetInput>>,
}

/// Sets the limits and budget that cap all of a user's client keys together. Admins only: a
/// user restricts their own keys (`PATCH /api/v1/client-keys/{id}`) but cannot lift what an
/// admin set here. Sessions stay: this changes what the keys may do, not who the user is.
pub(super) async fn set_limits(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserLimits>,
) -> Result<Json<UserView>, ApiError> {
    let change = LimitFields {
        rpm_limit: body.rpm_limit,
        tpm_limit: body.tpm_limit,
        max_concurrent: body.max_concurrent,
        budget: body.budget,
    }
    .check(Utc::now())?;
    if change.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to change: give rpm_limit, tpm_limit, max_concurrent or budget".into(),
        ));
    }
    let updated = s
        .store
        .set_user_limits(
            &id,
            change,
            AuditEvent::new(&admin.actor(), "user_limits_changed", "user"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(updated.into()))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id == admin.id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    let target = s.store.user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    keep_an_admin(&s, &target, false).await?;
    s.store
        .delete_user(&id, AuditEvent::new(&admin.actor(), "user_deleted", "user"))
        .await?;
    s.hub.rebuild().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn lockouts(
    State(s): State<AppState>,
    _a: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<List<crate::limits::Lockout>>, ApiError> {
    s.store.user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    let data = s.login_guard.lockouts(&id).await?;
    Ok(Json(List { data }))
}

pub(super) async fn clear_lockouts(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    s.login_guard.clear(&id).await?;
    s.store
        .audit(AuditEvent::new(&admin.actor(), "lockouts_cleared", "user").target(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
