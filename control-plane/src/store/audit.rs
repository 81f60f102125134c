//! The audit log: append-only rows chained by a keyed hash.
//!
//! Each row stores `prev_hash` and `hash = HMAC-SHA256(key, prev_hash ‖ canonical(row))`, where the
//! key is derived from the sealed server secret. Editing, deleting or reordering a row breaks the
//! chain, and without the key the chain cannot be recomputed to hide it. Appends run inside the
//! caller's transaction, so a mutation and its audit row commit together.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use super::entities::{audit_head, audit_log};
use super::{Result, Store, StoreError};

/// Key for the audit chain's HMAC; never leaves the control plane.
#[derive(Clone)]
pub struct AuditKey(pub zeroize::Zeroizing<[u8; 32]>);

/// Who did it, from where. Filled by the API layer from the request.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user_id: Option<String>,
    pub ip: String,
    pub user_agent: String,
}

/// One audited event. `detail` holds names and ids only: never a password, token or key.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: Actor,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    pub outcome: &'static str,
    pub detail: Value,
}

impl AuditEvent {
    pub fn new(actor: &Actor, action: &'static str, target_type: &'static str) -> Self {
        AuditEvent {
            actor: actor.clone(),
            action,
            target_type,
            target_id: String::new(),
            outcome: "success",
            detail: Value::Object(Default::default()),
        }
    }

    pub fn target(mut self, id: impl Into<String>) -> Self {
        self.target_id = id.into();
        self
    }

    pub fn failure(mut self) -> Self {
        self.outcome = "failure";
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Timestamps are stored and hashed at microsecond precision, which both backends keep exactly.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn canonical(r: &audit_log::Model) -> Vec<u8> {
    serde_json::json!([
        r.seq,
        r.at.timestamp_micros(),
        r.actor_user_id,
        r.actor_ip,
        r.user_agent,
        r.action,
        r.target_type,
        r.target_id,
        r.outcome,
        r.detail,
    ])
    .to_string()
    .into_bytes()
}

fn chain_hash(key: &AuditKey, prev: &[u8], row: &audit_log::Model) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.0.as_slice()).expect("any key length works");
    mac.update(prev);
    mac.update(&canonical(row));
    mac.finalize().into_bytes().to_vec()
}

/// Appends `ev` to the chain on `conn` (normally the mutation's transaction).
pub async fn append<C: ConnectionTrait>(conn: &C, key: &AuditKey, ev: AuditEvent) -> Result<()> {
    // Taking the head row's write lock first serialises concurrent appenders.
    conn.execute_raw(Statement::from_string(
        conn.get_database_backend(),
        "UPDATE audit_head SET seq = seq + 1 WHERE id = 1",
    ))
    .await?;
    let head = audit_head::Entity::find_by_id(1)
        .one(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    let mut row = audit_log::Model {
        seq: head.seq,
        at: micros(Utc::now()),
        actor_user_id: ev.actor.user_id.clone(),
        actor_ip: clip(&ev.actor.ip, 64),
        user_agent: clip(&ev.actor.user_agent, 256),
        action: ev.action.to_owned(),
        target_type: ev.target_type.to_owned(),
        target_id: clip(&ev.target_id, 64),
        outcome: ev.outcome.to_owned(),
        detail: ev.detail.to_string(),
        prev_hash: head.hash.clone(),
        hash: Vec::new(),
    };
    row.hash = chain_hash(key, &head.hash, &row);
    let new_hash = row.hash.clone();
    audit_log::Entity::insert(audit_log::ActiveModel {
        seq: Set(row.seq),
        at: Set(row.at),
        actor_user_id: Set(row.actor_user_id),
        actor_ip: Set(row.actor_ip),
        user_agent: Set(row.user_agent),
        action: Set(row.action),
        target_type: Set(row.target_type),
        target_id: Set(row.target_id),
        outcome: Set(row.outcome),
        detail: Set(row.detail),
        prev_hash: Set(row.prev_hash),
        hash: Set(row.hash),
    })
    .exec_without_returning(conn)
    .await?;
    audit_head::Entity::update(audit_head::ActiveModel {
        id: Set(1),
        seq: Set(head.seq),
        hash: Set(new_hash),
    })
    .exec(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_user_id: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset pagination: rows with `seq` below this.
    pub before_seq: Option<i64>,
    pub limit: u64,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub rows_checked: u64,
    pub head_seq: i64,
    /// The first row whose link or content does not match.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

impl Store {
    pub async fn audit(&self, ev: AuditEvent) -> Result<()> {
        use sea_orm::TransactionTrait;
        let txn = self.db.begin().await?;
        append(&txn, &self.audit_key, ev).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn audit_rows(&self, f: AuditFilter) -> Result<Vec<audit_log::Model>> {
        let mut q = audit_log::Entity::find();
        if let Some(a) = f.action {
            q = q.filter(audit_log::Column::Action.eq(a));
        }
        if let Some(a) = f.actor_user_id {
            q = q.filter(audit_log::Column::ActorUserId.eq(a));
        }
        if let Some(t) = f.target_id {
            q = q.filter(audit_log::Column::TargetId.eq(t));
        }
        if let Some(o) = f.outcome {
            q = q.filter(audit_log::Column::Outcome.eq(o));
        }
        if let Some(t) = f.since {
            q = q.filter(audit_log::Column::At.gte(t));
        }
        if let Some(t) = f.until {
            q = q.filter(audit_log::Column::At.lt(t));
        }
        if let Some(b) = f.before_seq {
            q = q.filter(audit_log::Column::Seq.lt(b));
        }
        Ok(q.order_by_desc(audit_log::Column::Seq)
            .limit(f.limit)
            .all(&self.db)
            .await?)
    }

    /// Walks the whole chain and reports the first row that does not verify.
    pub async fn verify_audit(&self) -> Result<VerifyReport> {
        let head = audit_head::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut prev = vec![0u8; 32];
        let mut expected_seq = 1i64;
        let mut checked = 0u64;
        let bad = |seq: i64, problem: &str, checked: u64| VerifyReport {
            ok: false,
            rows_checked: checked,
            head_seq: head.seq,
            first_bad_seq: Some(seq),
            problem: Some(problem.to_owned()),
        };
        loop {
            let page = audit_log::Entity::find()
                .filter(audit_log::Column::Seq.gte(expected_seq))
                .order_by_asc(audit_log::Column::Seq)
                .limit(1000)
                .all(&self.db)
                .await?;
            if page.is_empty() {
                break;
            }
            for row in page {
                if row.seq != expected_seq {
                    return Ok(bad(expected_seq, "row missing", checked));
                }
                if row.prev_hash != prev {
                    return Ok(bad(row.seq, "link to previous row broken", checked));
                }
                if chain_hash(&self.audit_key, &prev, &row) != row.hash {
                    return Ok(bad(row.seq, "row content does not match its hash", checked));
                }
                prev = row.hash;
                expected_seq += 1;
                checked += 1;
            }
        }
        if head.seq != expected_seq - 1 || head.hash != prev {
            return Ok(bad(
                expected_seq,
                "chain head does not match the last row",
                checked,
            ));
        }
        Ok(VerifyReport {
            ok: true,
            rows_checked: checked,
            head_seq: head.seq,
            first_bad_seq: None,
            problem: None,
        })
    }
}
