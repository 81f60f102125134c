//! Budget periods: which spending window a budget counts in. The control plane computes a
//! budget's current period start for the snapshot; a proxy computes it again from its own clock,
//! so a budget rolls over exactly at the boundary even before the next snapshot arrives. Both use
//! these functions, so they cannot disagree on where a period starts.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

/// How often a budget starts over. Every boundary is at 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    /// One period from the budget's anchor (when it was set) on; it never starts over.
    None,
    /// The UTC calendar day.
    Daily,
    /// The ISO week, starting Monday.
    Weekly,
    /// The calendar month.
    Monthly,
}

impl BudgetPeriod {
    pub const ALL: [BudgetPeriod; 4] = [
        BudgetPeriod::None,
        BudgetPeriod::Daily,
        BudgetPeriod::Weekly,
        BudgetPeriod::Monthly,
    ];

    /// The name used in the admin API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::None => "none",
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<BudgetPeriod> {
        BudgetPeriod::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Start of the period that contains `now`; for [`BudgetPeriod::None`] the anchor (the one
    /// period never ends).
    pub fn start_at(self, now: DateTime<Utc>, anchor: DateTime<Utc>) -> DateTime<Utc> {
        let day = now.date_naive();
        let start = match self {
            BudgetPeriod::None => return anchor,
            BudgetPeriod::Daily => day,
            BudgetPeriod::Weekly => {
                day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
            }
            BudgetPeriod::Monthly => day.with_day(1).unwrap_or(day),
        };
        midnight(start)
    }

    /// The first period boundary after `now` (`None` for a budget that never starts over).
    pub fn next_start(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start_at(now, now).date_naive();
        let next = match self {
            BudgetPeriod::None => return None,
            BudgetPeriod::Daily => start + Duration::days(1),
            BudgetPeriod::Weekly => start + Duration::days(7),
            BudgetPeriod::Monthly => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(start)
            }
        };
        Some(midnight(next))
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn names_round_trip() {
        for p in BudgetPeriod::ALL {
            assert_eq!(BudgetPeriod::parse(p.as_str()), Some(p));
        }
        assert_eq!(BudgetPeriod::parse("yearly"), None);
        assert_eq!(BudgetPeriod::parse("Daily"), None);
    }

    #[test]
    fn period_starts_and_boundaries() {
        let anchor = t("2025-03-01T10:00:00Z");
        // (period, now, start, next)
        let cases = [
            (
                BudgetPeriod::Daily,
                "2025-03-05T17:30:00Z",
                "2025-03-05T00:00:00Z",
                Some("2025-03-06T00:00:00Z"),
            ),
            (
                BudgetPeriod::Daily,
                "2025-03-05T00:00:00Z",
                "2025-03-05T00:00:00Z",
                Some("2025-03-06T00:00:00Z"),
            ),
            // 2025-03-05 is a Wednesday; its ISO week starts Monday 2025-03-03.
            (
                BudgetPeriod::Weekly,
                "2025-03-05T17:30:00Z",
                "2025-03-03T00:00:00Z",
                Some("2025-03-10T00:00:00Z"),
            ),
            // A Sunday still belongs to the week that began the Monday before.
            (
                BudgetPeriod::Weekly,
                "2025-03-09T23:59:59Z",
                "2025-03-03T00:00:00Z",
                Some("2025-03-10T00:00:00Z"),
            ),
            (
                BudgetPeriod::Weekly,
                "2025-03-10T00:00:00Z",
                "2025-03-10T00:00:00Z",
                Some("2025-03-17T00:00:00Z"),
            ),
            (
                BudgetPeriod::Monthly,
                "2025-02-28T23:00:00Z",
                "2025-02-01T00:00:00Z",
                Some("2025-03-01T00:00:00Z"),
            ),
            (
                BudgetPeriod::Monthly,
                "2025-12-31T12:00:00Z",
                "2025-12-01T00:00:00Z",
                Some("2026-01-01T00:00:00Z"),
            ),
            (
                BudgetPeriod::None,
                "2027-01-01T00:00:00Z",
                "2025-03-01T10:00:00Z",
                None,
            ),
        ];
        for (period, now, start, next) in cases {
            assert_eq!(
                period.start_at(t(now), anchor),
                t(start),
                "{period:?} {now}"
            );
            assert_eq!(period.next_start(t(now)), next.map(t), "{period:?} {now}");
        }
    }
}
