//! Limits and budgets as stored on client keys and users: the same seven columns on both tables
//! (`rpm_limit`, `tpm_limit`, `max_concurrent`, `budget_nanos`, `budget_period`, `budget_anchor`,
//! `budget_expires_at`), read and changed through one set of types so the two cannot drift.
//!
//! A budget exists when `budget_nanos` is set. Its anchor is when it was set: the start of a
//! `none` budget's one period, kept while later edits leave the period unchanged (raising a
//! lifetime budget must not forget what was already spent). Enforcement is the proxy's; the store
//! only keeps the values.

use chrono::{DateTime, Utc};
use llmhub_providers::BudgetPeriod;

use super::clamp_i32;
use super::entities::{client_keys, users};

/// Limits on requests; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A stored budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Nano-US-dollars per period.
    pub limit_nanos: u64,
    pub period: BudgetPeriod,
    /// When the budget was set (with this period).
    pub anchor: DateTime<Utc>,
    /// After it the budget no longer applies.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A budget as a caller sets it; the store chooses the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSetting {
    pub limit_nanos: u64,
    pub period: BudgetPeriod,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A change of limits and budget: `None` leaves a field as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsChange {
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub max_concurrent: Option<Option<u32>>,
    pub budget: Option<Option<BudgetSetting>>,
}

impl LimitsChange {
    pub fn is_empty(&self) -> bool {
        *self == LimitsChange::default()
    }
}

/// The seven columns as one value, read from and written back to either table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Columns {
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i32>,
    pub max_concurrent: Option<i32>,
    pub budget_nanos: Option<i64>,
    pub budget_period: Option<String>,
    pub budget_anchor: Option<DateTime<Utc>>,
    pub budget_expires_at: Option<DateTime<Utc>>,
}

fn positive(v: Option<i32>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

impl Columns {
    /// No limits and no budget.
    pub fn none() -> Self {
        Columns {
            rpm_limit: None,
            tpm_limit: None,
            max_concurrent: None,
            budget_nanos: None,
            budget_period: None,
            budget_anchor: None,
            budget_expires_at: None,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            rpm: positive(self.rpm_limit),
            tpm: positive(self.tpm_limit),
            max_concurrent: positive(self.max_concurrent),
        }
    }

    pub fn budget(&self) -> Option<Budget> {
        let limit_nanos = u64::try_from(self.budget_nanos?).unwrap_or(0);
        // The API stores only known periods and always an anchor. Should a row say otherwise,
        // read it as the strictest budget (one period since the epoch, never starting over)
        // rather than as no budget.
        let known = self.budget_period.as_deref().and_then(BudgetPeriod::parse);
        let (period, anchor) = match (known, self.budget_anchor) {
            (Some(p), Some(a)) => (p, a),
            _ => (BudgetPeriod::None, DateTime::UNIX_EPOCH),
        };
        Some(Budget {
            limit_nanos,
            period,
            anchor,
            expires_at: self.budget_expires_at,
        })
    }

    /// Applies `change` at `now`; returns the names of the fields it changed, for the audit row.
    pub fn apply(&mut self, change: &LimitsChange, now: DateTime<Utc>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if let Some(v) = change.rpm {
            self.rpm_limit = v.map(clamp_i32);
            changed.push("rpm_limit");
        }
        if let Some(v) = change.tpm {
            self.tpm_limit = v.map(clamp_i32);
            changed.push("tpm_limit");
        }
        if let Some(v) = change.max_concurrent {
            self.max_concurrent = v.map(clamp_i32);
            changed.push("max_concurrent");
        }
        if let Some(b) = change.budget {
            let before = self.budget();
            match b {
                None => {
                    self.budget_nanos = None;
                    self.budget_period = None;
                    self.budget_anchor = None;
                    self.budget_expires_at = None;
                }
                Some(b) => {
                    let anchor = match before {
                        Some(old) if old.period == b.period => old.anchor,
                        _ => now,
                    };
                    self.budget_nanos = Some(i64::try_from(b.limit_nanos).unwrap_or(i64::MAX));
                    self.budget_period = Some(b.period.as_str().to_owned());
                    self.budget_anchor = Some(anchor);
                    self.budget_expires_at = b.expires_at;
                }
            }
            changed.push("budget");
        }
        changed
    }

    /// What the audit row says about the values (never anything secret: these are numbers).
    pub fn audit_value(&self) -> serde_json::Value {
        let l = self.limits();
        serde_json::json!({
            "rpm_limit": l.rpm,
            "tpm_limit": l.tpm,
            "max_concurrent": l.max_concurrent,
            "budget": self.budget().map(|b| serde_json::json!({
                "limit_nanos": b.limit_nanos,
                "period": b.period.as_str(),
                "expires_at": b.expires_at,
            })),
        })
    }
}

/// Both tables carry the same columns; one macro keeps the two mappings identical.
macro_rules! limit_columns {
    ($entity:ident) => {
        impl $entity::Model {
            pub(super) fn limit_columns(&self) -> Columns {
                Columns {
                    rpm_limit: self.rpm_limit,
                    tpm_limit: self.tpm_limit,
                    max_concurrent: self.max_concurrent,
                    budget_nanos: self.budget_nanos,
                    budget_period: self.budget_period.clone(),
                    budget_anchor: self.budget_anchor,
                    budget_expires_at: self.budget_expires_at,
                }
            }

            pub fn limits(&self) -> Limits {
                self.limit_columns().limits()
            }

            pub fn budget(&self) -> Option<Budget> {
                self.limit_columns().budget()
            }
        }

        impl $entity::ActiveModel {
            pub(super) fn set_limit_columns(&mut self, c: Columns) {
                use sea_orm::ActiveValue::Set;
                self.rpm_limit = Set(c.rpm_limit);
                self.tpm_limit = Set(c.tpm_limit);
                self.max_concurrent = Set(c.max_concurrent);
                self.budget_nanos = Set(c.budget_nanos);
                self.budget_period = Set(c.budget_period);
                self.budget_anchor = Set(c.budget_anchor);
                self.budget_expires_at = Set(c.budget_expires_at);
            }
        }
    };
}

limit_columns!(client_keys);
limit_columns!(users);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn absent_leaves_null_clears_and_the_anchor_follows_the_period() {
        let mut c = Columns::none();
        assert!(c.limits().is_empty() && c.budget().is_none());
        let t0 = at("2025-01-01T00:00:00Z");
        let t1 = at("2025-02-01T00:00:00Z");
        let changed = c.apply(
            &LimitsChange {
                rpm: Some(Some(60)),
                budget: Some(Some(BudgetSetting {
                    limit_nanos: 5_000_000_000,
                    period: BudgetPeriod::None,
                    expires_at: None,
                })),
                ..Default::default()
            },
            t0,
        );
        assert_eq!(changed, ["rpm_limit", "budget"]);
        assert_eq!(c.limits().rpm, Some(60));
        assert_eq!(c.budget().unwrap().anchor, t0);

        // Raising a lifetime budget keeps its anchor; other fields stay as they were.
        c.apply(
            &LimitsChange {
                tpm: Some(Some(1000)),
                budget: Some(Some(BudgetSetting {
                    limit_nanos: 9_000_000_000,
                    period: BudgetPeriod::None,
                    expires_at: Some(t1),
                })),
                ..Default::default()
            },
            t1,
        );
        let b = c.budget().unwrap();
        assert_eq!(
            (b.limit_nanos, b.anchor, b.expires_at),
            (9_000_000_000, t0, Some(t1))
        );
        assert_eq!((c.limits().rpm, c.limits().tpm), (Some(60), Some(1000)));

        // A new period starts a new anchor; null clears.
        c.apply(
            &LimitsChange {
                budget: Some(Some(BudgetSetting {
                    limit_nanos: 1,
                    period: BudgetPeriod::Daily,
                    expires_at: None,
                })),
                rpm: Some(None),
                ..Default::default()
            },
            t1,
        );
        assert_eq!(c.budget().unwrap().anchor, t1);
        assert_eq!(c.limits().rpm, None);
        c.apply(
            &LimitsChange {
                budget: Some(None),
                ..Default::default()
            },
            t1,
        );
        assert_eq!(c, {
            let mut n = Columns::none();
            n.tpm_limit = Some(1000);
            n
        });
    }

    #[test]
    fn an_unreadable_budget_reads_as_the_strictest() {
        let mut c = Columns::none();
        c.budget_nanos = Some(10);
        c.budget_period = Some("fortnightly".into());
        let b = c.budget().unwrap();
        assert_eq!(
            (b.period, b.anchor, b.limit_nanos),
            (BudgetPeriod::None, DateTime::UNIX_EPOCH, 10)
        );
    }
}
