//! Billing periods: half-open ranges of UTC dates, and the daily proration rule.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// The longest period a rollup accepts; longer is almost certainly a typo.
pub const MAX_PERIOD_DAYS: i64 = 366;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("period_end {end} must be after period_start {start}")]
    Empty { start: NaiveDate, end: NaiveDate },
    #[error("period of {0} days is longer than {MAX_PERIOD_DAYS}")]
    TooLong(i64),
    #[error("{0:?} is not a month (expected YYYY-MM)")]
    BadMonth(String),
}

/// `[start, end)` in UTC calendar dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Period {
    pub fn new(start: NaiveDate, end: NaiveDate) -> Result<Self, PeriodError> {
        let days = (end - start).num_days();
        if days <= 0 {
            return Err(PeriodError::Empty { start, end });
        }
        if days > MAX_PERIOD_DAYS {
            return Err(PeriodError::TooLong(days));
        }
        Ok(Period { start, end })
    }

    /// One calendar month from `start` (the contract's default `period_end`).
    pub fn monthly(start: NaiveDate) -> Result<Self, PeriodError> {
        let end = start
            .checked_add_months(Months::new(1))
            .ok_or(PeriodError::Empty { start, end: start })?;
        Period::new(start, end)
    }

    /// Parses `"2026-04"` into April 2026.
    pub fn parse_month(s: &str) -> Result<Self, PeriodError> {
        let bad = || PeriodError::BadMonth(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        let start = NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(bad)?;
        Period::monthly(start)
    }

    /// The calendar month before the one containing `now` (what the scheduler bills).
    pub fn month_before(now: DateTime<Utc>) -> Self {
        let first = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("valid month");
        let start = first - Months::new(1);
        Period { start, end: first }
    }

    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days()
    }

    pub fn start_at(&self) -> DateTime<Utc> {
        self.start.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
    }

    pub fn end_at(&self) -> DateTime<Utc> {
        self.end.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
    }

    /// `YYYY-MM` label when the period is exactly one calendar month.
    pub fn month_label(&self) -> Option<String> {
        (self.start.day() == 1 && Period::monthly(self.start).ok() == Some(*self))
            .then(|| self.start.format("%Y-%m").to_string())
    }

    /// Calendar days of this period on which `[from, to)` is active for any part of the day.
    /// `to = None` means open-ended. Zero when the window misses the period.
    pub fn active_days(&self, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> i64 {
        let first = from.date_naive().max(self.start);
        // The last active day is the day of the last instant before `to`.
        let last = match to {
            Some(to) => (to - TimeDelta::nanoseconds(1))
                .date_naive()
                .min(self.end - TimeDelta::days(1)),
            None => self.end - TimeDelta::days(1),
        };
        if let Some(to) = to {
            if to <= from {
                return 0;
            }
        }
        ((last - first).num_days() + 1).max(0)
    }

    /// The days of this period a subscription `[from, to)` is charged for: its active days,
    /// less the day it ends on when the deployment's next subscription begins that same day
    /// (`next_from`). A deployment is charged for a day once, and on the day of a plan change
    /// the day belongs to the new subscription (CONTRACT.md section 4, v2).
    pub fn billed_days(
        &self,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
        next_from: Option<DateTime<Utc>>,
    ) -> i64 {
        let days = self.active_days(from, to);
        days - i64::from(days > 0 && self.cedes_last_day(to, next_from))
    }

    /// Whether a subscription ending at `to` gives its last day of this period to the next
    /// subscription, which begins at `next_from`, on that same day.
    pub fn cedes_last_day(
        &self,
        to: Option<DateTime<Utc>>,
        next_from: Option<DateTime<Utc>>,
    ) -> bool {
        let (Some(to), Some(next)) = (to, next_from) else {
            return false;
        };
        let last = (to - TimeDelta::nanoseconds(1)).date_naive();
        next >= to && next.date_naive() == last && (self.start..self.end).contains(&last)
    }

    /// Whether `[from, to)` overlaps this period at all.
    pub fn overlaps(&self, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> bool {
        from < self.end_at() && to.is_none_or(|to| to > self.start_at() && to > from)
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.month_label() {
            Some(m) => f.write_str(&m),
            None => write!(f, "{}..{}", self.start, self.end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn april() -> Period {
        Period::parse_month("2026-04").unwrap()
    }

    #[test]
    fn months() {
        let p = april();
        assert_eq!(p.start.to_string(), "2026-04-01");
        assert_eq!(p.end.to_string(), "2026-05-01");
        assert_eq!(p.days(), 30);
        assert_eq!(Period::parse_month("2026-02").unwrap().days(), 28);
        assert_eq!(Period::parse_month("2028-02").unwrap().days(), 29);
        assert_eq!(
            Period::parse_month("2026-12").unwrap().end.to_string(),
            "2027-01-01"
        );
        for bad in ["2026-13", "2026-4", "26-04", "april", "2026-00"] {
            assert!(Period::parse_month(bad).is_err(), "{bad}");
        }
        assert_eq!(Period::month_before(ts("2026-05-01T03:00:00Z")), april());
        assert_eq!(
            Period::month_before(ts("2026-01-15T00:00:00Z")).to_string(),
            "2025-12"
        );
    }

    #[test]
    fn rejects_empty_and_huge_periods() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert!(Period::new(d("2026-04-01"), d("2026-04-01")).is_err());
        assert!(Period::new(d("2026-04-02"), d("2026-04-01")).is_err());
        assert!(Period::new(d("2026-01-01"), d("2027-06-01")).is_err());
    }

    #[test]
    fn active_days_count_any_part_of_a_day() {
        let p = april();
        let cases = [
            ("2026-01-01T00:00:00Z", None, 30),
            ("2026-04-01T00:00:00Z", Some("2026-05-01T00:00:00Z"), 30),
            ("2026-04-16T00:00:00Z", None, 15),
            ("2026-04-15T23:59:59Z", None, 16),
            ("2026-04-01T00:00:00Z", Some("2026-04-16T00:00:00Z"), 15),
            ("2026-04-01T00:00:00Z", Some("2026-04-16T00:00:01Z"), 16),
            ("2026-04-10T12:00:00Z", Some("2026-04-10T13:00:00Z"), 1),
            ("2026-05-01T00:00:00Z", None, 0),
            ("2026-03-01T00:00:00Z", Some("2026-04-01T00:00:00Z"), 0),
            ("2026-04-30T23:00:00Z", None, 1),
        ];
        for (from, to, want) in cases {
            assert_eq!(p.active_days(ts(from), to.map(ts)), want, "{from} {to:?}");
            assert_eq!(p.overlaps(ts(from), to.map(ts)), want > 0, "{from} {to:?}");
        }
    }

    #[test]
    fn the_day_of_a_plan_change_belongs_to_the_next_subscription() {
        let p = april();
        // (from, to, next subscription's start, days billed)
        let cases = [
            // A change at noon on the 16th: 15 days, then 15 for the next plan.
            (
                "2026-01-01T00:00:00Z",
                "2026-04-16T12:00:00Z",
                Some("2026-04-16T12:00:00Z"),
                15,
            ),
            ("2026-04-16T12:00:00Z", "2026-06-01T00:00:00Z", None, 15),
            // A change at midnight shares no day: nothing is ceded.
            (
                "2026-01-01T00:00:00Z",
                "2026-04-16T00:00:00Z",
                Some("2026-04-16T00:00:00Z"),
                15,
            ),
            // Ended without a successor, or the next one starts another day: the day is billed.
            ("2026-01-01T00:00:00Z", "2026-04-16T12:00:00Z", None, 16),
            (
                "2026-01-01T00:00:00Z",
                "2026-04-16T12:00:00Z",
                Some("2026-04-17T08:00:00Z"),
                16,
            ),
            // A gap inside the day still makes it the new subscription's day.
            (
                "2026-01-01T00:00:00Z",
                "2026-04-16T08:00:00Z",
                Some("2026-04-16T20:00:00Z"),
                15,
            ),
            // A subscription living inside one day that another follows the same day: none.
            (
                "2026-04-10T08:00:00Z",
                "2026-04-10T16:00:00Z",
                Some("2026-04-10T16:00:00Z"),
                0,
            ),
            // The changed day outside the period is not this period's to cede.
            (
                "2026-01-01T00:00:00Z",
                "2026-05-01T12:00:00Z",
                Some("2026-05-01T12:00:00Z"),
                30,
            ),
            (
                "2026-01-01T00:00:00Z",
                "2026-04-01T12:00:00Z",
                Some("2026-04-01T12:00:00Z"),
                0,
            ),
        ];
        for (from, to, next, want) in cases {
            assert_eq!(
                p.billed_days(ts(from), Some(ts(to)), next.map(ts)),
                want,
                "{from} {to} {next:?}"
            );
        }
    }
}
