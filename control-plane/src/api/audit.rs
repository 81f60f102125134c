//! The audit log's read API and its integrity check; hashing statistics.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminUser, ApiError, AppState};
use crate::store::AuditFilter;

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
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let data: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "seq": r.seq, "at": r.at, "actor_user_id": r.actor_user_id, "ip": r.actor_ip,
                "user_agent": r.user_agent, "action": r.action, "target_type": r.target_type,
                "target_id": r.target_id, "outcome": r.outcome,
                "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
                "hash": hex::encode(&r.hash),
            })
        })
        .collect();
    Ok(Json(json!({ "data": data, "next_before": next_before })))
}

pub(super) async fn verify(
    State(s): State<AppState>,
    _a: AdminUser,
) -> Result<Json<Value>, ApiError> {
    let report = s.store.verify_audit().await?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, problem = ?report.problem, "audit chain verification failed");
    }
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

pub(super) async fn stats(State(s): State<AppState>, _a: AdminUser) -> Json<Value> {
    Json(json!({
        "password_hashing": s.hasher.stats(),
        "counters_shared": s.policy.counters_shared,
    }))
}
