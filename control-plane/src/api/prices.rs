//! Model prices: the effective table any signed-in user may read (with where each price comes
//! from), and an admin's overrides. Changes are audited and reach the proxies in the next
//! snapshot; a request's cost uses the price its proxy held when it finished.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AdminUser, ApiError, ApiJson, AppState, AuthUser, List, valid_name};
use crate::prices::{Effective, MAX_NANOS_PER_TOKEN, Price, Source};
use crate::store::{AuditEvent, NewModelPrice};

/// A model's effective price in nano-US-dollars per token (US dollars per billion tokens).
#[derive(Serialize)]
pub(super) struct PriceView {
    model: String,
    input_nanos_per_token: u64,
    output_nanos_per_token: u64,
    cached_input_nanos_per_token: u64,
    /// `default` (the built-in list price) or `custom` (set by an admin).
    source: Source,
    /// The built-in price, when the model has one (what `DELETE` reverts to).
    default: Option<Price>,
    updated_at: Option<DateTime<Utc>>,
}

impl From<Effective> for PriceView {
    fn from(e: Effective) -> Self {
        PriceView {
            model: e.model,
            input_nanos_per_token: e.price.input_nanos_per_token,
            output_nanos_per_token: e.price.output_nanos_per_token,
            cached_input_nanos_per_token: e.price.cached_input_nanos_per_token,
            source: e.source,
            default: e.default,
            updated_at: e.updated_at,
        }
    }
}

async fn effective(s: &AppState) -> Result<Vec<Effective>, ApiError> {
    Ok(crate::prices::effective(s.store.model_prices().await?))
}

pub(super) async fn list(
    State(s): State<AppState>,
    _u: AuthUser,
) -> Result<Json<List<PriceView>>, ApiError> {
    Ok(Json(List::of(effective(&s).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetPrice {
    input_nanos_per_token: i64,
    output_nanos_per_token: i64,
    /// Defaults to the input price (no cache discount).
    cached_input_nanos_per_token: Option<i64>,
}

/// A price field within `0..=MAX_NANOS_PER_TOKEN`, or a 400 naming it.
fn bounded(field: &str, v: i64) -> Result<u64, ApiError> {
    u64::try_from(v)
        .ok()
        .filter(|v| *v <= MAX_NANOS_PER_TOKEN)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{field}: must be between 0 and {MAX_NANOS_PER_TOKEN} nano-dollars per token \
                 (US dollars per billion tokens; $2.50 per million tokens is 2500)"
            ))
        })
}

fn valid_model(model: &str) -> Result<(), ApiError> {
    if valid_name(model, 128) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "model: 1-128 characters of letters, digits, '-', '_', '.', ':', '/'".into(),
        ))
    }
}

/// Sets a model's price: overrides its built-in price, or prices a model the list lacks.
pub(super) async fn set(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(model): Path<String>,
    ApiJson(body): ApiJson<SetPrice>,
) -> Result<Json<PriceView>, ApiError> {
    valid_model(&model)?;
    let input = bounded("input_nanos_per_token", body.input_nanos_per_token)?;
    let output = bounded("output_nanos_per_token", body.output_nanos_per_token)?;
    let cached = match body.cached_input_nanos_per_token {
        None => input,
        Some(v) => bounded("cached_input_nanos_per_token", v)?,
    };
    s.store
        .set_model_price(
            NewModelPrice {
                model: model.clone(),
                input_nanos_per_token: input,
                output_nanos_per_token: output,
                cached_input_nanos_per_token: cached,
                updated_by: admin.id.clone(),
            },
            AuditEvent::new(&admin.actor(), "price_set", "model_price"),
        )
        .await?;
    s.hub.rebuild().await?;
    let view = effective(&s)
        .await?
        .into_iter()
        .find(|e| e.model == model)
        .ok_or_else(|| ApiError::Internal("a price just set is missing".into()))?;
    Ok(Json(view.into()))
}

/// Removes an admin's price: the model reverts to its built-in price, or (a model the list
/// lacks) has no price again. 404 when the admin had not set one.
pub(super) async fn remove(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(model): Path<String>,
) -> Result<http::StatusCode, ApiError> {
    valid_model(&model)?;
    s.store
        .delete_model_price(
            &model,
            AuditEvent::new(&admin.actor(), "price_deleted", "model_price"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(http::StatusCode::NO_CONTENT)
}
