//! The month-end schedule: a 5-field cron expression in UTC, the billing period each firing
//! requests (the calendar month before the firing's month), and which period is due next.
//!
//! Pure: no clock of its own (`now` is an argument), no I/O, so tests run years of firings in
//! microseconds. The `invoicer scheduler` process keeps a [`State`] in a
//! JetStream key-value bucket and asks [`Schedule::due`] what to request.
//!
//! Which firings count: a firing at `t` requests `Period::month_before(t)`. Several firings in
//! one month (a daily cron, say) all name the same period, so only the first of them acts. A
//! period is due when its first firing is at or before `now`, at or after the state's
//! `not_before`, and the period comes after the last one requested. After downtime every
//! missed period is therefore due in turn, oldest first, and each only once.

use crate::domain::period::Period;
use chrono::{DateTime, Months, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};

/// 03:00 UTC on the 1st of every month (CONTRACT.md section 2).
pub const DEFAULT_CRON: &str = "0 3 1 * *";

/// A cron expression that cannot drive the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad cron expression {expr:?}: {reason} (expected 5 fields, minute hour day-of-month \
     month day-of-week, evaluated in UTC; the default is \"{DEFAULT_CRON}\")"
)]
pub struct CronError {
    pub expr: String,
    pub reason: String,
}

/// A parsed cron expression, evaluated in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    expr: String,
}

impl Schedule {
    /// Parses a 5-field expression (or a nickname such as `@monthly`). Seconds are refused:
    /// the contract's expressions have minute granularity, and a sixth field is more likely a
    /// mistake than a wish to bill every second.
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let bad = |reason: String| CronError {
            expr: expr.to_string(),
            reason,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expr.trim())
            .map_err(|e| bad(e.to_string()))?;
        let schedule = Schedule {
            cron,
            expr: expr.trim().to_string(),
        };
        // `0 3 30 2 *` parses but never fires: refuse it at start rather than sleep forever.
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        if schedule.next_firing(epoch).is_none() {
            return Err(bad("it never fires".into()));
        }
        Ok(schedule)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// A human description, e.g. "At 03:00 on day 1 of the month".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// The first firing at or after `from`.
    pub fn next_firing(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&from, true).ok()
    }

    /// Where to look for the next period's firing: no earlier than `not_before`, and not in
    /// the month after the last requested period (its firings name that period again).
    fn search_from(&self, state: &State) -> Option<DateTime<Utc>> {
        match state.last_period {
            None => Some(state.not_before),
            Some(last) => {
                let after = last.end_at().checked_add_months(Months::new(1))?;
                Some(after.max(state.not_before))
            }
        }
    }

    /// The firing of the next period to request, whether or not it has come yet.
    pub fn next(&self, state: &State) -> Option<Firing> {
        let at = self.next_firing(self.search_from(state)?)?;
        Some(Firing {
            at,
            period: Period::month_before(at),
        })
    }

    /// The oldest period that is due at `now` and not yet requested, if any.
    pub fn due(&self, state: &State, now: DateTime<Utc>) -> Option<Firing> {
        self.next(state).filter(|f| f.at <= now)
    }

    /// Every period due at `now`, oldest first, as a scheduler that requests them one by one
    /// would see them.
    pub fn catch_up(&self, state: &State, now: DateTime<Utc>) -> Vec<Firing> {
        let mut state = state.clone();
        let mut out = Vec::new();
        while let Some(firing) = self.due(&state, now) {
            state = state.requested(firing.period);
            out.push(firing);
        }
        out
    }
}

/// One firing of the schedule and the period it requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    pub at: DateTime<Utc>,
    pub period: Period,
}

impl Firing {
    /// `rollup:YYYY-MM`: the request's `Nats-Msg-Id` and `request_id`, so a repeat is dropped
    /// by the stream and, past its duplicate window, is still the same run for the worker.
    pub fn msg_id(&self) -> String {
        msg_id(self.period)
    }

    /// The `billing.rollup.requested` payload.
    pub fn request(&self) -> serde_json::Value {
        serde_json::json!({
            "period_start": self.period.start,
            "period_end": self.period.end,
            "force": false,
            "tenant_ids": null,
            "draft": false,
            "request_id": self.msg_id(),
        })
    }
}

/// `rollup:YYYY-MM` for a monthly period.
pub fn msg_id(period: Period) -> String {
    format!("rollup:{}", period.start.format("%Y-%m"))
}

/// What the scheduler remembers between firings and across restarts and replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last period requested (`"2026-04"`), `null` before the first request.
    #[serde(with = "month_opt")]
    pub last_period: Option<Period>,
    /// Firings before this instant are never acted on: the first start, or the end of the
    /// `--since` month (later firings name that month or a later one). It keeps a first
    /// deployment from billing months that another system already billed.
    pub not_before: DateTime<Utc>,
}

impl State {
    /// The state of a scheduler that has none yet. With `since`, every period from `since` on
    /// whose firing has passed is due at once; without, the first firing at or after
    /// `first_start` is the first to act.
    pub fn initial(since: Option<Period>, first_start: DateTime<Utc>) -> State {
        State {
            last_period: None,
            // Firings from the end of `since` on name `since` or a later month.
            not_before: since.map_or(first_start, |p| p.end_at()),
        }
    }

    /// The state after `period` was requested.
    pub fn requested(&self, period: Period) -> State {
        State {
            last_period: Some(period),
            not_before: self.not_before,
        }
    }
}

/// `Option<Period>` as `"YYYY-MM"` or `null`.
mod month_opt {
    use crate::domain::period::Period;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<Period>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_str(&p.start.format("%Y-%m").to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Period>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|m| Period::parse_month(&m).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn month(s: &str) -> Period {
        Period::parse_month(s).unwrap()
    }

    fn labels(firings: &[Firing]) -> Vec<String> {
        firings.iter().map(|f| f.period.to_string()).collect()
    }

    #[test]
    fn the_default_fires_at_three_on_the_first_for_the_month_just_ended() {
        let s = Schedule::parse(DEFAULT_CRON).unwrap();
        // Every month of a leap year and the January after it.
        let mut state = State::initial(Some(month("2027-12")), ts("2028-01-01T00:00:00Z"));
        let mut seen = Vec::new();
        for m in 1..=13 {
            let firing = s.next(&state).unwrap();
            let (y, mm) = if m == 13 { (2029, 1) } else { (2028, m) };
            assert_eq!(
                firing.at,
                ts(&format!("{y}-{mm:02}-01T03:00:00Z")),
                "firing {m}"
            );
            // A minute before its firing the period is not due; at the firing it is.
            assert_eq!(
                s.due(&state, firing.at - chrono::TimeDelta::minutes(1)),
                None
            );
            assert_eq!(s.due(&state, firing.at), Some(firing));
            seen.push(firing.period);
            state = state.requested(firing.period);
        }
        let got: Vec<String> = seen.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got[0], "2027-12",
            "January bills December of the year before"
        );
        assert_eq!(seen[0].start.to_string(), "2027-12-01");
        assert_eq!(seen[0].end.to_string(), "2028-01-01");
        assert_eq!(got[2], "2028-02");
        assert_eq!(seen[2].days(), 29, "leap February");
        assert_eq!(got[12], "2028-12");
        for (i, p) in seen.iter().enumerate().skip(1) {
            assert_eq!(p.to_string(), format!("2028-{i:02}"));
            assert_eq!(Some(*p), Period::monthly(p.start).ok(), "whole months");
        }
        assert_eq!(msg_id(seen[2]), "rollup:2028-02");
        assert_eq!(msg_id(seen[0]), "rollup:2027-12");
    }

    #[test]
    fn a_plain_february_has_28_days() {
        let s = Schedule::parse(DEFAULT_CRON).unwrap();
        let state = State::initial(Some(month("2026-02")), ts("2026-02-10T00:00:00Z"));
        let f = s.due(&state, ts("2026-03-01T03:00:00Z")).unwrap();
        assert_eq!(
            (f.period.to_string(), f.period.days()),
            ("2026-02".into(), 28)
        );
        assert_eq!(f.request()["period_end"], "2026-03-01");
        assert_eq!(f.request()["request_id"], "rollup:2026-02");
    }

    #[test]
    fn a_custom_cron_fires_when_it_says() {
        // 06:30 on the 2nd.
        let s = Schedule::parse("30 6 2 * *").unwrap();
        let state = State::initial(None, ts("2026-04-15T00:00:00Z"));
        let f = s.next(&state).unwrap();
        assert_eq!(f.at, ts("2026-05-02T06:30:00Z"));
        assert_eq!(f.period, month("2026-04"));
        assert_eq!(s.due(&state, ts("2026-05-02T06:29:59Z")), None);

        // Daily: the first firing of a month requests the month before, the rest of that
        // month's firings name it again and do nothing.
        let daily = Schedule::parse("0 0 * * *").unwrap();
        let state = State::initial(None, ts("2026-04-15T12:00:00Z"));
        let first = daily.due(&state, ts("2026-04-16T00:00:00Z")).unwrap();
        assert_eq!(first.period, month("2026-03"));
        let state = state.requested(first.period);
        assert_eq!(daily.due(&state, ts("2026-04-30T23:59:00Z")), None);
        let next = daily.next(&state).unwrap();
        assert_eq!(
            (next.at, next.period),
            (ts("2026-05-01T00:00:00Z"), month("2026-04"))
        );

        // Nicknames work too.
        let monthly = Schedule::parse("@monthly").unwrap();
        assert_eq!(
            monthly.next_firing(ts("2026-04-15T00:00:00Z")),
            Some(ts("2026-05-01T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        for bad in [
            "",
            "0 3 1 *",
            "0 0 3 1 * *",
            "61 3 1 * *",
            "0 3 1 * * 2026x",
            "nonsense",
            "0 3 30 2 *",
        ] {
            let err = Schedule::parse(bad).unwrap_err().to_string();
            assert!(err.contains("bad cron expression"), "{bad}: {err}");
            assert!(err.contains("5 fields"), "{bad}: {err}");
        }
        assert!(Schedule::parse("0 3 30 2 *")
            .unwrap_err()
            .to_string()
            .contains("never fires"));
    }

    #[test]
    fn after_downtime_every_missed_period_is_due_once_oldest_first() {
        let s = Schedule::parse(DEFAULT_CRON).unwrap();
        let state = State::initial(None, ts("2026-03-20T00:00:00Z")).requested(month("2026-03"));
        // Down from April 20 to June 10: the May 1 and June 1 firings were missed.
        let missed = s.catch_up(&state, ts("2026-06-10T00:00:00Z"));
        assert_eq!(labels(&missed), ["2026-04", "2026-05"]);
        assert_eq!(missed[0].at, ts("2026-05-01T03:00:00Z"));
        // Once both are recorded nothing more is due until July.
        let state = state.requested(month("2026-05"));
        assert!(s.catch_up(&state, ts("2026-06-30T23:59:59Z")).is_empty());
        // Years of downtime: every month once, in order, across year ends.
        let years = s.catch_up(&state, ts("2029-01-01T03:00:00Z"));
        assert_eq!(years.len(), 7 + 12 + 12);
        assert_eq!(years.first().unwrap().period, month("2026-06"));
        assert_eq!(years.last().unwrap().period, month("2028-12"));
        for w in years.windows(2) {
            assert_eq!(Some(w[1].period), Period::monthly(w[0].period.end).ok());
        }
    }

    #[test]
    fn a_first_start_bills_nothing_before_since_or_its_first_firing() {
        let s = Schedule::parse(DEFAULT_CRON).unwrap();
        let now = ts("2026-05-10T08:00:00Z");
        // --since 2026-01: January to April, whose firings have passed.
        let since = State::initial(Some(month("2026-01")), now);
        assert_eq!(
            labels(&s.catch_up(&since, now)),
            ["2026-01", "2026-02", "2026-03", "2026-04"]
        );
        // --since in the future: nothing yet.
        let later = State::initial(Some(month("2026-06")), now);
        assert!(s.catch_up(&later, now).is_empty());
        assert_eq!(s.next(&later).unwrap().period, month("2026-06"));
        // No --since: nothing until the first firing after the first start (June 1, for May).
        let fresh = State::initial(None, now);
        assert!(s.catch_up(&fresh, now).is_empty());
        let first = s.next(&fresh).unwrap();
        assert_eq!(
            (first.at, first.period),
            (ts("2026-06-01T03:00:00Z"), month("2026-05"))
        );
    }

    #[test]
    fn state_round_trips_as_readable_json() {
        let state = State::initial(None, ts("2026-05-10T08:00:00Z")).requested(month("2026-04"));
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"last_period": "2026-04", "not_before": "2026-05-10T08:00:00Z"})
        );
        assert_eq!(serde_json::from_value::<State>(json).unwrap(), state);
        let none: State = serde_json::from_value(
            serde_json::json!({"last_period": null, "not_before": "2026-05-10T08:00:00Z"}),
        )
        .unwrap();
        assert_eq!(none.last_period, None);
    }
}
