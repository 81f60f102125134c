//! Master-key administration: status, switching the write version, reloading keys from the
//! mounted file, re-wrapping every sealed value, retiring an unused version. Every step audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{AdminUser, ApiError, ApiJson, AppState};
use crate::vault::VaultAdminError;

impl From<VaultAdminError> for ApiError {
    fn from(e: VaultAdminError) -> Self {
        match e {
            VaultAdminError::Invalid(m) => ApiError::BadRequest(m),
            VaultAdminError::Conflict(m) => ApiError::Conflict(m),
            VaultAdminError::Store(e) => e.into(),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Json<Value> {
    Json(serde_json::to_value(v).unwrap_or(Value::Null))
}

pub(super) async fn status(
    State(s): State<AppState>,
    _a: AdminUser,
) -> Result<Json<Value>, ApiError> {
    Ok(to_json(&s.vault.status(&s.store).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionBody {
    version: u32,
}

pub(super) async fn set_current(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    s.vault
        .set_current(&s.store, body.version, &admin.actor())
        .await?;
    Ok(to_json(&s.vault.status(&s.store).await?))
}

pub(super) async fn reload(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
) -> Result<Json<Value>, ApiError> {
    s.vault.reload(&s.store, &admin.actor()).await?;
    Ok(to_json(&s.vault.status(&s.store).await?))
}

pub(super) async fn retire(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    s.vault
        .retire(&s.store, body.version, &admin.actor())
        .await?;
    Ok(to_json(&s.vault.status(&s.store).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RewrapBody {
    batch_size: Option<u64>,
}

/// Starts re-wrapping in the background (202); progress shows in `GET /api/v1/vault`.
pub(super) async fn rewrap(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<RewrapBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let batch = body.batch_size.unwrap_or(100).clamp(1, 10_000);
    if !s.vault.begin_rewrap() {
        return Err(ApiError::Conflict("a re-wrap is already running".into()));
    }
    let (vault, store, actor) = (Arc::clone(&s.vault), s.store.clone(), admin.actor());
    tokio::spawn(async move {
        if let Err(e) = vault.run_rewrap(&store, batch, &actor).await {
            tracing::error!(error = %e, "re-wrap failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        to_json(&s.vault.status(&s.store).await?),
    ))
}
