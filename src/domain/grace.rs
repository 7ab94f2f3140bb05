//! The grace window (CONTRACT.md section 5a): how long a rollup's invoice stays a draft, so that
//! usage metered late still reaches it before it is issued.
//!
//! A window is an ISO 8601 duration (`PT1H`, `P3D`, `P1DT12H`), parsed with `jiff` and kept as
//! whole seconds plus its canonical text (what `tenants.put` returns). Years and months are
//! refused: their length depends on the date, and a billing window that silently means 28 or 31
//! days would surprise whoever set it. Weeks and days are exact (a day is 24 hours, UTC).

use chrono::{DateTime, TimeDelta, Utc};
use jiff::{fmt::temporal::SpanParser, SpanRelativeTo};
use std::fmt;
use std::str::FromStr;

/// The longest window the contract allows: `P31D`.
pub const MAX_SECONDS: i64 = 31 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraceError {
    #[error("grace_period {0:?} is not an ISO 8601 duration such as PT1H or P3D: {1}")]
    Malformed(String, String),
    #[error(
        "grace_period {0:?} uses years or months, whose length varies; use days (P30D) or hours"
    )]
    Calendar(String),
    #[error("grace_period {0:?} must not be negative")]
    Negative(String),
    #[error("grace_period {0:?} must be whole seconds")]
    Fractional(String),
    #[error("grace_period {0:?} is longer than P31D")]
    TooLong(String),
}

/// A validated window, zero to `P31D`, in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracePeriod {
    seconds: i64,
    text: String,
}

impl GracePeriod {
    /// No window: a rollup issues at once (v1).
    pub fn zero() -> Self {
        GracePeriod {
            seconds: 0,
            text: "PT0S".into(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, GraceError> {
        let clip = || s.chars().take(40).collect::<String>();
        let span = SpanParser::new()
            .parse_span(s)
            .map_err(|e| GraceError::Malformed(clip(), e.to_string()))?;
        if span.get_years() != 0 || span.get_months() != 0 {
            return Err(GraceError::Calendar(clip()));
        }
        if span.is_negative() {
            return Err(GraceError::Negative(clip()));
        }
        let exact = span
            .to_duration(SpanRelativeTo::days_are_24_hours())
            .map_err(|_| GraceError::TooLong(clip()))?;
        if exact.subsec_nanos() != 0 {
            return Err(GraceError::Fractional(clip()));
        }
        if exact.as_secs() > MAX_SECONDS {
            return Err(GraceError::TooLong(clip()));
        }
        Ok(GracePeriod {
            seconds: exact.as_secs(),
            text: span.to_string(),
        })
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    pub fn is_zero(&self) -> bool {
        self.seconds == 0
    }

    /// When a draft written at `at` with this window is issued.
    pub fn closes(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at + TimeDelta::seconds(self.seconds)
    }

    /// The window that applies to a tenant: its own, or the platform default.
    pub fn effective<'a>(tenant: Option<&'a GracePeriod>, default: &'a GracePeriod) -> &'a Self {
        tenant.unwrap_or(default)
    }
}

impl Default for GracePeriod {
    fn default() -> Self {
        GracePeriod::zero()
    }
}

impl FromStr for GracePeriod {
    type Err = GraceError;
    fn from_str(s: &str) -> Result<Self, GraceError> {
        GracePeriod::parse(s)
    }
}

impl fmt::Display for GracePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso_8601_durations_up_to_31_days() {
        let cases = [
            ("PT0S", 0, "PT0S"),
            ("P0D", 0, "PT0S"),
            ("PT2S", 2, "PT2S"),
            ("PT1H", 3600, "PT1H"),
            ("pt90m", 5400, "PT90M"),
            ("P1DT12H", 129_600, "P1DT12H"),
            ("P3D", 259_200, "P3D"),
            ("P1W", 604_800, "P1W"),
            ("P31D", MAX_SECONDS, "P31D"),
            ("PT744H", MAX_SECONDS, "PT744H"),
            ("P4W3D", MAX_SECONDS, "P4W3D"),
        ];
        for (input, seconds, text) in cases {
            let g = GracePeriod::parse(input).unwrap();
            assert_eq!(
                (g.seconds(), g.to_string().as_str()),
                (seconds, text),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_window() {
        type Check = fn(&GraceError) -> bool;
        let cases: [(&str, Check); 11] = [
            ("", |e| matches!(e, GraceError::Malformed(..))),
            ("1h", |e| matches!(e, GraceError::Malformed(..))),
            ("P", |e| matches!(e, GraceError::Malformed(..))),
            ("PT", |e| matches!(e, GraceError::Malformed(..))),
            (" PT1H", |e| matches!(e, GraceError::Malformed(..))),
            ("P1M", |e| matches!(e, GraceError::Calendar(..))),
            ("P1Y", |e| matches!(e, GraceError::Calendar(..))),
            ("-PT1H", |e| matches!(e, GraceError::Negative(..))),
            ("PT0.5S", |e| matches!(e, GraceError::Fractional(..))),
            ("P32D", |e| matches!(e, GraceError::TooLong(..))),
            ("PT744H1S", |e| matches!(e, GraceError::TooLong(..))),
        ];
        for (input, want) in cases {
            let e = GracePeriod::parse(input).unwrap_err();
            assert!(want(&e), "{input}: {e}");
        }
    }

    #[test]
    fn a_window_closes_its_length_after_it_opens() {
        let at = DateTime::parse_from_rfc3339("2026-05-01T03:00:00Z")
            .unwrap()
            .to_utc();
        let g = GracePeriod::parse("P1DT1H").unwrap();
        assert_eq!(g.closes(at).to_rfc3339(), "2026-05-02T04:00:00+00:00");
        let default = GracePeriod::zero();
        assert_eq!(GracePeriod::effective(Some(&g), &default), &g);
        assert_eq!(GracePeriod::effective(None, &default), &default);
    }
}
