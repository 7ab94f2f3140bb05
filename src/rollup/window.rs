//! What a batch writes for a tenant once the grace window is taken into account (CONTRACT.md
//! section 5a). Pure: [`outcome`] turns the rollup's own decision ([`super::decide`]) into the
//! status and `finalizes_at` of the invoice to write, for each of the three kinds of batch:
//!
//! - a **rollup**: a new invoice opens a window when the tenant has one (a draft with
//!   `finalizes_at` = now + window), and is issued at once without one (v1). A `draft` run writes
//!   drafts without a window, as in v1. A `force` re-run recomputes an open draft in place and
//!   keeps its `finalizes_at`: the window is not restarted, so re-running cannot postpone an
//!   invoice indefinitely; a `draft` run's draft re-run without `draft` gets a window from now.
//!   A supersession is issued at once even with a window: the voided tax invoice's replacement
//!   must exist in the same transaction (section 5).
//! - a **refresh** (new usage for a period with an open draft): only open grace drafts are
//!   recomputed, and they stay drafts with their `finalizes_at`.
//! - a **finalization** (the finalizer at `finalizes_at`, or an admin `issue`): only open grace
//!   drafts are recomputed, and they are issued.
//!
//! Nothing else is touched by a refresh or a finalization: an invoice issued, paid or voided in
//! the meantime, or a draft without a window, is skipped.

use super::Action;
use crate::domain::grace::GracePeriod;
use crate::domain::invoice::Status;
use chrono::{DateTime, Utc};

/// Which kind of batch is running, and the platform's default window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grace {
    pub default: GracePeriod,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rollup,
    Refresh,
    /// Issues open drafts due by then, or every open draft it is given with `None`.
    Finalize {
        due_by: Option<DateTime<Utc>>,
    },
    /// An admin's `issue` of a draft, with a window or without (a `draft` run's): recomputed
    /// from all usage stored by now and issued, so usage that arrived while it was a draft is
    /// billed rather than lost between draft and issue.
    IssueDraft,
}

impl Grace {
    pub fn rollup(default: GracePeriod) -> Self {
        Grace {
            default,
            mode: Mode::Rollup,
        }
    }

    /// Refreshes and finalizations never open a window, so they need no default.
    pub fn with_mode(mode: Mode) -> Self {
        Grace {
            default: GracePeriod::zero(),
            mode,
        }
    }
}

/// What to write for one tenant: `action` as `decide` chose it (or `Skip`), with the status and
/// window of the invoice written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    pub status: Status,
    pub finalizes_at: Option<DateTime<Utc>>,
}

impl Outcome {
    fn skip() -> Self {
        Outcome {
            action: Action::Skip,
            status: Status::Draft,
            finalizes_at: None,
        }
    }
}

/// `decided` is the rollup's action, `open` the `finalizes_at` of the tenant's current draft (if
/// it is a grace draft), `tenant_window` the tenant's own window, `draft_run` the request's
/// `draft` flag.
pub fn outcome(
    grace: &Grace,
    draft_run: bool,
    decided: Action,
    open: Option<DateTime<Utc>>,
    tenant_window: Option<&GracePeriod>,
    now: DateTime<Utc>,
) -> Outcome {
    let of = |action, status, finalizes_at| Outcome {
        action,
        status,
        finalizes_at,
    };
    match (grace.mode, decided) {
        (_, Action::Skip) => Outcome::skip(),
        (Mode::Rollup, Action::Supersede(_)) => of(decided, Status::Issued, None),
        (Mode::Rollup, Action::New | Action::RecomputeDraft(_)) => {
            let window = GracePeriod::effective(tenant_window, &grace.default);
            if draft_run {
                // A draft run never opens or closes a window.
                let keep = matches!(decided, Action::RecomputeDraft(_)).then_some(open);
                of(decided, Status::Draft, keep.flatten())
            } else if window.is_zero() {
                of(decided, Status::Issued, None)
            } else {
                let closes = open.unwrap_or_else(|| window.closes(now));
                of(decided, Status::Draft, Some(closes))
            }
        }
        (Mode::Refresh, Action::RecomputeDraft(_)) if open.is_some() => {
            of(decided, Status::Draft, open)
        }
        (Mode::Finalize { due_by }, Action::RecomputeDraft(_))
            if open.is_some_and(|at| due_by.is_none_or(|due| at <= due)) =>
        {
            of(decided, Status::Issued, None)
        }
        (Mode::IssueDraft, Action::RecomputeDraft(_)) => of(decided, Status::Issued, None),
        (Mode::Refresh | Mode::Finalize { .. } | Mode::IssueDraft, _) => Outcome::skip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn each_kind_of_batch_writes_what_the_readme_says() {
        let id = Uuid::nil();
        let now = at("2026-05-01T03:00:00Z");
        let hour = GracePeriod::parse("PT1H").unwrap();
        let zero = GracePeriod::zero();
        let open = Some(at("2026-05-01T04:00:00Z"));
        let later = Some(at("2026-05-01T05:00:00Z"));
        let rollup = |d: &GracePeriod| Grace::rollup(d.clone());
        let refresh = Grace::with_mode(Mode::Refresh);
        let due = Grace::with_mode(Mode::Finalize { due_by: open });
        let early = Grace::with_mode(Mode::Finalize { due_by: None });
        use Action::*;
        use Status::*;
        // (grace, draft run, decided, open window, tenant window, want status, want window)
        let cases = [
            // Zero window: v1.
            (rollup(&zero), false, New, None, None, Some((Issued, None))),
            (rollup(&zero), true, New, None, None, Some((Draft, None))),
            (
                rollup(&zero),
                false,
                RecomputeDraft(id),
                None,
                None,
                Some((Issued, None)),
            ),
            (
                rollup(&zero),
                false,
                Supersede(id),
                None,
                None,
                Some((Issued, None)),
            ),
            (rollup(&zero), false, Skip, None, None, None),
            // A default window, or the tenant's own over a zero default.
            (rollup(&hour), false, New, None, None, Some((Draft, open))),
            (
                rollup(&zero),
                false,
                New,
                None,
                Some(&hour),
                Some((Draft, open)),
            ),
            (
                rollup(&hour),
                false,
                New,
                None,
                Some(&zero),
                Some((Issued, None)),
            ),
            // Force re-runs keep an open window; a draft run's draft gets one.
            (
                rollup(&hour),
                false,
                RecomputeDraft(id),
                later,
                None,
                Some((Draft, later)),
            ),
            (
                rollup(&hour),
                false,
                RecomputeDraft(id),
                None,
                None,
                Some((Draft, open)),
            ),
            (
                rollup(&hour),
                true,
                RecomputeDraft(id),
                later,
                None,
                Some((Draft, later)),
            ),
            (rollup(&hour), true, New, None, None, Some((Draft, None))),
            (
                rollup(&hour),
                false,
                Supersede(id),
                None,
                None,
                Some((Issued, None)),
            ),
            // Refresh: open grace drafts only.
            (
                refresh.clone(),
                true,
                RecomputeDraft(id),
                later,
                None,
                Some((Draft, later)),
            ),
            (refresh.clone(), true, RecomputeDraft(id), None, None, None),
            (refresh.clone(), true, New, None, None, None),
            (refresh, true, Supersede(id), None, None, None),
            // Finalize: open grace drafts that are due; an admin's, any open one.
            (
                due.clone(),
                true,
                RecomputeDraft(id),
                open,
                None,
                Some((Issued, None)),
            ),
            (due.clone(), true, RecomputeDraft(id), later, None, None),
            (due.clone(), true, RecomputeDraft(id), None, None, None),
            (due, true, New, None, None, None),
            (
                early.clone(),
                true,
                RecomputeDraft(id),
                later,
                None,
                Some((Issued, None)),
            ),
            (early, true, RecomputeDraft(id), None, None, None),
            // An admin's issue recomputes any draft, with a window or without.
            (
                Grace::with_mode(Mode::IssueDraft),
                true,
                RecomputeDraft(id),
                None,
                None,
                Some((Issued, None)),
            ),
            (
                Grace::with_mode(Mode::IssueDraft),
                true,
                RecomputeDraft(id),
                open,
                None,
                Some((Issued, None)),
            ),
            (
                Grace::with_mode(Mode::IssueDraft),
                true,
                New,
                None,
                None,
                None,
            ),
        ];
        for (grace, draft_run, decided, open, tenant, want) in cases {
            let got = outcome(&grace, draft_run, decided, open, tenant, now);
            let got = (got.action != Skip).then_some((got.status, got.finalizes_at));
            assert_eq!(
                got, want,
                "{:?} draft={draft_run} {decided:?} {open:?} {tenant:?}",
                grace.mode
            );
        }
    }
}
