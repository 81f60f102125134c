//! The audit log's read API and its integrity check; hashing statistics.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AdminUser, ApiError, ApiQuery, AppState};
use crate::store::entities::audit_log;
use crate::store::{AuditFilter, VerifyReport};

/// One audit row; `hash` is its chain link in hex.
#[derive(Serialize)]
pub(super) struct AuditRowView {
    seq: i64,
    at: DateTime<Utc>,
    actor_user_id: Option<String>,
    ip: String,
    user_agent: String,
    action: String,
    target_type: String,
    target_id: String,
    outcome: String,
    /// Names and ids only (`null` if the stored JSON is unreadable).
    detail: Value,
    hash: String,
}

impl From<audit_log::Model> for AuditRowView {
    fn from(r: audit_log::Model) -> Self {
        AuditRowView {
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
            hash: hex::encode(&r.hash),
            seq: r.seq,
            at: r.at,
            actor_user_id: r.actor_user_id,
            ip: r.actor_ip,
            user_agent: r.user_agent,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            outcome: r.outcome,
        }
    }
}

/// A page of audit rows; `next_before` continues after it (`null` on the last page).
#[derive(Serialize)]
pub(super) struct AuditPage {
    data: Vec<AuditRowView>,
    next_before: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Continue after a page: the `next_before` of the previous response.
    before: Option<i64>,
    limit: Option<u64>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    _a: AdminUser,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = s
        .store
        .audit_rows(AuditFilter {
            action: q.action,
            actor_user_id: q.actor,
            target_id: q.target,
            outcome: q.outcome,
            since: q.since,
            until: q.until,
            before_seq: q.before,
            limit,
        })
        .await?;
    let next_before = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let data = rows.into_iter().map(AuditRowView::from).collect();
    Ok(Json(AuditPage { data, next_before }))
}

pub(super) async fn verify(
    State(s): State<AppState>,
    _a: AdminUser,
) -> Result<Json<VerifyReport>, ApiError> {
    let report = s.store.verify_audit().await?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, problem = ?report.problem, "audit chain verification failed");
    }
    Ok(Json(report))
}

pub(super) async fn stats(State(s): State<AppState>, _a: AdminUser) -> Json<Value> {
    Json(json!({
        "password_hashing": s.hasher.stats(),
        "counters_shared": s.policy.counters_shared,
    }))
}
