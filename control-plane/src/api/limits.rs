//! Limits and budgets in the admin API: the request fields client keys and users share, their
//! validation, and their view. Budgets travel as US dollars (`{"usd": 25.5, "period":
//! "monthly"}`) and are stored exactly, in nano-dollars.

use chrono::{DateTime, Utc};
use llmhub_providers::BudgetPeriod;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::store::{Budget, BudgetSetting, Limits, LimitsChange};

/// Largest requests-per-minute limit (beyond it a limit means nothing).
pub const MAX_RPM: u32 = 1_000_000;
/// Largest tokens-per-minute limit.
pub const MAX_TPM: u32 = 2_000_000_000;
/// Largest concurrent-requests limit.
pub const MAX_CONCURRENT: u32 = 100_000;
/// Largest budget, one billion dollars: in nano-dollars it still fits the signed 64-bit column.
pub const MAX_BUDGET_NANOS: u64 = 1_000_000_000 * NANOS_PER_USD;
const NANOS_PER_USD: u64 = 1_000_000_000;

/// A budget as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BudgetInput {
    /// US dollars, at most 9 decimal places.
    usd: serde_json::Number,
    /// `none`, `daily`, `weekly` or `monthly`.
    period: String,
    expires_at: Option<DateTime<Utc>>,
}

/// The limit fields of a request, each absent (leave), `null` (remove) or a value.
pub(super) struct LimitFields {
    pub rpm_limit: Option<Option<u32>>,
    pub tpm_limit: Option<Option<u32>>,
    pub max_concurrent: Option<Option<u32>>,
    pub budget: Option<Option<BudgetInput>>,
}

fn check_limit(
    field: &str,
    v: Option<Option<u32>>,
    max: u32,
) -> Result<Option<Option<u32>>, ApiError> {
    match v {
        Some(Some(n)) if !(1..=max).contains(&n) => Err(ApiError::BadRequest(format!(
            "{field}: must be between 1 and {max}, or null for no limit"
        ))),
        v => Ok(v),
    }
}

impl LimitFields {
    /// Validates the fields into a store change; messages name the field.
    pub fn check(self, now: DateTime<Utc>) -> Result<LimitsChange, ApiError> {
        let budget = match self.budget {
            None => None,
            Some(None) => Some(None),
            Some(Some(b)) => Some(Some(check_budget(b, now)?)),
        };
        Ok(LimitsChange {
            rpm: check_limit("rpm_limit", self.rpm_limit, MAX_RPM)?,
            tpm: check_limit("tpm_limit", self.tpm_limit, MAX_TPM)?,
            max_concurrent: check_limit("max_concurrent", self.max_concurrent, MAX_CONCURRENT)?,
            budget,
        })
    }
}

fn check_budget(b: BudgetInput, now: DateTime<Utc>) -> Result<BudgetSetting, ApiError> {
    let limit_nanos = usd_to_nanos(&b.usd.to_string())
        .map_err(|why| ApiError::BadRequest(format!("budget.usd: {why}")))?;
    let period = BudgetPeriod::parse(&b.period).ok_or_else(|| {
        ApiError::BadRequest("budget.period: must be none, daily, weekly or monthly".into())
    })?;
    if b.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::BadRequest(
            "budget.expires_at: must be in the future".into(),
        ));
    }
    Ok(BudgetSetting {
        limit_nanos,
        period,
        expires_at: b.expires_at,
    })
}

/// Converts a decimal number as JSON writes it (`25.5`, `3`, `1e-7`) to nano-dollars exactly:
/// no floating-point rounding, so `0.1` is 100,000,000 and not one nano-dollar off. Refuses
/// what cannot be a budget: zero or less, finer than a nano-dollar, beyond [`MAX_BUDGET_NANOS`].
pub(super) fn usd_to_nanos(text: &str) -> Result<u64, &'static str> {
    const BAD: &str = "must be a decimal number of US dollars";
    const TOO_FINE: &str = "at most 9 decimal places (nano-dollars)";
    const RANGE: &str = "must be more than 0 and at most 1000000000";
    if text.starts_with('-') {
        return Err(RANGE);
    }
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        None => (text, 0i64),
        Some((m, e)) => (m, e.parse::<i64>().map_err(|_| BAD)?),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(BAD);
    }
    let digits: String = int.chars().chain(frac.chars()).collect();
    let digits = digits.trim_start_matches('0');
    // More significant digits than any budget in range can have (plus nine decimals).
    if digits.len() > 30 {
        return Err(RANGE);
    }
    let value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| BAD)?
    };
    let frac_len = i64::try_from(frac.len()).map_err(|_| BAD)?;
    let scale = exp - frac_len + 9;
    let nanos = if scale >= 0 {
        u32::try_from(scale)
            .ok()
            .and_then(|s| 10u128.checked_pow(s))
            .and_then(|p| value.checked_mul(p))
            .ok_or(RANGE)?
    } else {
        match u32::try_from(-scale)
            .ok()
            .and_then(|s| 10u128.checked_pow(s))
        {
            Some(div) if value.is_multiple_of(div) => value / div,
            _ if value == 0 => 0,
            _ => return Err(TOO_FINE),
        }
    };
    match u64::try_from(nanos) {
        Ok(n) if (1..=MAX_BUDGET_NANOS).contains(&n) => Ok(n),
        _ => Err(RANGE),
    }
}

/// A budget as the API shows it: dollars for people, nano-dollars exactly, and the current
/// period's start as the proxies count it.
#[derive(Debug, Serialize)]
pub(super) struct BudgetView {
    usd: f64,
    limit_nanos: u64,
    period: &'static str,
    period_start: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

impl BudgetView {
    fn of(b: Budget, now: DateTime<Utc>) -> Self {
        BudgetView {
            // Exact enough for display: the quotient is correctly rounded, and JSON prints the
            // shortest form that reads back as it (25500000000 → 25.5).
            usd: b.limit_nanos as f64 / NANOS_PER_USD as f64,
            limit_nanos: b.limit_nanos,
            period: b.period.as_str(),
            period_start: b.period.start_at(now, b.anchor),
            expires_at: b.expires_at,
        }
    }
}

/// Limits and budget in a view (flattened into the key's or the user's object).
#[derive(Debug, Serialize)]
pub(super) struct LimitsView {
    rpm_limit: Option<u32>,
    tpm_limit: Option<u32>,
    max_concurrent: Option<u32>,
    budget: Option<BudgetView>,
}

impl LimitsView {
    pub fn of(limits: Limits, budget: Option<Budget>) -> Self {
        LimitsView {
            rpm_limit: limits.rpm,
            tpm_limit: limits.tpm,
            max_concurrent: limits.max_concurrent,
            budget: budget.map(|b| BudgetView::of(b, Utc::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_convert_exactly() {
        for (text, nanos) in [
            ("25.5", 25_500_000_000),
            ("0.1", 100_000_000),
            ("19.99", 19_990_000_000),
            ("3", 3_000_000_000),
            ("0.000000001", 1),
            ("1e-9", 1),
            ("1e-7", 100),
            ("2.5E1", 25_000_000_000),
            ("1000000000", MAX_BUDGET_NANOS),
            ("1000000000.0", MAX_BUDGET_NANOS),
            ("007.50", 7_500_000_000),
        ] {
            assert_eq!(usd_to_nanos(text), Ok(nanos), "{text}");
        }
        for bad in [
            "0",
            "0.0",
            "-1",
            "0.0000000001",
            "1e-10",
            "1000000000.000000001",
            "1e21",
            "1e99999999999",
            "",
            ".",
            "1.2.3",
            "abc",
            "1e",
        ] {
            assert!(usd_to_nanos(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_from_json_convert_as_written() {
        for (json, nanos) in [("25.5", 25_500_000_000u64), ("0.3", 300_000_000)] {
            let n: serde_json::Number = serde_json::from_str(json).unwrap();
            assert_eq!(usd_to_nanos(&n.to_string()), Ok(nanos), "{json}");
        }
    }

    #[test]
    fn limits_are_bounded_and_null_removes() {
        let now = Utc::now();
        let fields = |rpm| LimitFields {
            rpm_limit: rpm,
            tpm_limit: None,
            max_concurrent: None,
            budget: None,
        };
        assert!(fields(Some(Some(0))).check(now).is_err());
        assert!(fields(Some(Some(MAX_RPM + 1))).check(now).is_err());
        assert_eq!(
            fields(Some(Some(60))).check(now).unwrap().rpm,
            Some(Some(60))
        );
        assert_eq!(fields(Some(None)).check(now).unwrap().rpm, Some(None));
        assert!(fields(None).check(now).unwrap().is_empty());
        let budget = |period: &str, expires: Option<DateTime<Utc>>| LimitFields {
            rpm_limit: None,
            tpm_limit: None,
            max_concurrent: None,
            budget: Some(Some(BudgetInput {
                usd: serde_json::Number::from(5),
                period: period.into(),
                expires_at: expires,
            })),
        };
        let e = budget("yearly", None).check(now).unwrap_err().to_string();
        assert!(e.starts_with("budget.period"), "{e}");
        let e = budget("daily", Some(now - chrono::Duration::seconds(1)))
            .check(now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("budget.expires_at"), "{e}");
        let ok = budget("weekly", None).check(now).unwrap().budget;
        assert_eq!(
            ok,
            Some(Some(BudgetSetting {
                limit_nanos: 5_000_000_000,
                period: BudgetPeriod::Weekly,
                expires_at: None,
            }))
        );
    }
}
