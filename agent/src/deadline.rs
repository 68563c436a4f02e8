//! The lease deadline: where it comes from, and what to do about it at a given time.
//! Everything here is pure; the decision loop reads the clock and acts.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::HumanDuration;
use lease_common::tags::LeaseTags;
use serde::{Deserialize, Serialize};

/// Minutes before the deadline at which `LeaseExpiring` is published and logged-in
/// terminals are told.
pub const WARNING_MINUTES: [u64; 3] = [15, 5, 1];

/// Where the deadline being enforced came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadlineSource {
    /// `lease:expires-at` and/or launch time + `lease:ttl`.
    Tags,
    /// No deadline tag: launch time + the config's `default-ttl`.
    DefaultTtl,
    /// Tags could not be read; the deadline saved by an earlier run.
    Saved,
}

impl fmt::Display for DeadlineSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadlineSource::Tags => "tags",
            DeadlineSource::DefaultTtl => "default-ttl",
            DeadlineSource::Saved => "saved",
        })
    }
}

/// The deadline for these tags: the earlier of `lease:expires-at` and launch time +
/// `lease:ttl`; with neither, launch time (or, unknown, `started_at`) + `default_ttl`.
/// Never "no deadline".
pub fn resolve(
    tags: &LeaseTags,
    launched_at: Option<DateTime<Utc>>,
    default_ttl: HumanDuration,
    started_at: DateTime<Utc>,
) -> (DateTime<Utc>, DeadlineSource) {
    match tags.deadline(launched_at) {
        Some(d) => (d, DeadlineSource::Tags),
        None => (
            launched_at.unwrap_or(started_at) + default_ttl.to_chrono(),
            DeadlineSource::DefaultTtl,
        ),
    }
}

/// What the deadline asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do before `next` (the next warning or the deadline itself).
    WaitUntil(DateTime<Utc>),
    /// Publish a warning. `thresholds` are every warning now due (marked done together,
    /// so a lease that starts with 30 s left warns once, not three times).
    Warn {
        minutes_left: u64,
        thresholds: Vec<u64>,
    },
    /// The deadline has come.
    Expire,
}

pub fn evaluate(now: DateTime<Utc>, deadline: DateTime<Utc>, warned: &BTreeSet<u64>) -> Step {
    if now >= deadline {
        return Step::Expire;
    }
    let left = deadline - now;
    let due: Vec<u64> = WARNING_MINUTES
        .iter()
        .copied()
        .filter(|m| !warned.contains(m) && left <= minutes(*m))
        .collect();
    if !due.is_empty() {
        // Round up: 4m10s left is "5 minutes left", as a person reads it.
        let secs = u64::try_from(left.num_seconds()).unwrap_or(0);
        return Step::Warn {
            minutes_left: secs.div_ceil(60).max(1),
            thresholds: due,
        };
    }
    let next_warning = WARNING_MINUTES
        .iter()
        .filter(|m| !warned.contains(m))
        .map(|m| deadline - minutes(*m))
        .filter(|t| *t > now)
        .min();
    Step::WaitUntil(next_warning.map_or(deadline, |w| w.min(deadline)))
}

/// What a running task needs from the deadline: its drain starts `lead` before the
/// deadline (with the deadline as its limit), so the partial bundle is uploaded and the
/// task requeued while the action at the deadline still comes on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyDrain {
    /// Nothing to do (no lead, already started, or the deadline itself has come).
    Nothing,
    /// Look again at this time (the lead window opens, or a task may start in it).
    LookAt(DateTime<Utc>),
    /// A task runs inside the lead window: start draining it now.
    Start,
}

/// How often, inside the lead window with no task running, the loop looks again for one
/// that started (a task can start in the window; it must still be drained in time).
pub const EARLY_DRAIN_RECHECK: TimeDelta = TimeDelta::seconds(1);

pub fn early_drain(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    lead: TimeDelta,
    task_running: bool,
    started: bool,
) -> EarlyDrain {
    if started || lead <= TimeDelta::zero() || now >= deadline {
        return EarlyDrain::Nothing;
    }
    let opens = deadline - lead;
    if now < opens {
        return EarlyDrain::LookAt(opens);
    }
    if task_running {
        EarlyDrain::Start
    } else {
        EarlyDrain::LookAt((now + EARLY_DRAIN_RECHECK).min(deadline))
    }
}

/// After the deadline moves, keep only the warnings already inside the new window, so
/// an extended lease warns again when it next comes close.
pub fn rewarn_after_change(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    warned: &mut BTreeSet<u64>,
) {
    let left = deadline - now;
    warned.retain(|m| left <= minutes(*m));
}

fn minutes(m: u64) -> TimeDelta {
    TimeDelta::minutes(i64::try_from(m).unwrap_or(i64::MAX / 60_000))
}

/// Human text for a span of time: `3h59m`, `42s`, `0s` (negative spans too).
pub fn human_span(span: TimeDelta) -> String {
    HumanDuration::from_secs(u64::try_from(span.num_seconds()).unwrap_or(0)).to_string()
}

/// Human text for a span of time left: `3h59m`, `42s`, `expired`.
pub fn human_left(left: TimeDelta) -> String {
    match u64::try_from(left.num_seconds()) {
        Ok(0) | Err(_) => "expired".into(),
        Ok(s) => HumanDuration::from_secs(s).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use lease_common::tags::Action;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
    }

    #[test]
    fn deadline_from_tags_is_the_earlier_of_the_two() {
        let tags = LeaseTags {
            ttl: Some(HumanDuration::from_secs(3_600)),
            expires_at: Some(at(12, 0, 0)),
            ..Default::default()
        };
        let d = resolve(
            &tags,
            Some(at(10, 0, 0)),
            HumanDuration::from_secs(60),
            at(10, 5, 0),
        );
        assert_eq!(d, (at(11, 0, 0), DeadlineSource::Tags));
    }

    #[test]
    fn no_tags_means_default_ttl_from_launch_never_no_deadline() {
        let tags = LeaseTags {
            on_expiry: Action::Stop,
            ..Default::default()
        };
        let ttl = HumanDuration::from_secs(4 * 3_600);
        assert_eq!(
            resolve(&tags, Some(at(10, 0, 0)), ttl, at(10, 30, 0)),
            (at(14, 0, 0), DeadlineSource::DefaultTtl)
        );
        // Launch time unknown: from when the agent started.
        assert_eq!(
            resolve(&tags, None, ttl, at(10, 30, 0)),
            (at(14, 30, 0), DeadlineSource::DefaultTtl)
        );
    }

    #[test]
    fn a_running_task_drains_the_lead_before_the_deadline() {
        let d = at(12, 0, 0);
        let lead = TimeDelta::seconds(60);
        assert_eq!(
            early_drain(at(11, 0, 0), d, lead, true, false),
            EarlyDrain::LookAt(at(11, 59, 0))
        );
        assert_eq!(
            early_drain(at(11, 59, 0), d, lead, true, false),
            EarlyDrain::Start
        );
        // Once started, or with no lead, or at the deadline itself: nothing more.
        assert_eq!(
            early_drain(at(11, 59, 30), d, lead, true, true),
            EarlyDrain::Nothing
        );
        assert_eq!(
            early_drain(at(11, 59, 30), d, TimeDelta::zero(), true, false),
            EarlyDrain::Nothing
        );
        assert_eq!(early_drain(d, d, lead, true, false), EarlyDrain::Nothing);
        // No task in the window: look again soon, a task may start in it.
        assert_eq!(
            early_drain(at(11, 59, 30), d, lead, false, false),
            EarlyDrain::LookAt(at(11, 59, 31))
        );
        assert_eq!(
            early_drain(
                at(11, 59, 59) + TimeDelta::milliseconds(500),
                d,
                lead,
                false,
                false
            ),
            EarlyDrain::LookAt(d)
        );
    }

    #[test]
    fn waits_for_the_next_warning_then_the_deadline() {
        let d = at(12, 0, 0);
        let mut warned = BTreeSet::new();
        assert_eq!(
            evaluate(at(10, 0, 0), d, &warned),
            Step::WaitUntil(at(11, 45, 0))
        );
        assert_eq!(
            evaluate(at(11, 45, 0), d, &warned),
            Step::Warn {
                minutes_left: 15,
                thresholds: vec![15]
            }
        );
        warned.insert(15);
        assert_eq!(
            evaluate(at(11, 45, 0), d, &warned),
            Step::WaitUntil(at(11, 55, 0))
        );
        warned.insert(5);
        assert_eq!(
            evaluate(at(11, 56, 0), d, &warned),
            Step::WaitUntil(at(11, 59, 0))
        );
        assert_eq!(
            evaluate(at(11, 59, 30), d, &warned),
            Step::Warn {
                minutes_left: 1,
                thresholds: vec![1]
            }
        );
        warned.insert(1);
        assert_eq!(evaluate(at(11, 59, 30), d, &warned), Step::WaitUntil(d));
        assert_eq!(evaluate(d, d, &warned), Step::Expire);
        assert_eq!(evaluate(at(12, 0, 1), d, &warned), Step::Expire);
    }

    #[test]
    fn a_short_lease_warns_once_with_what_is_left() {
        let d = at(12, 0, 5);
        assert_eq!(
            evaluate(at(12, 0, 0), d, &BTreeSet::new()),
            Step::Warn {
                minutes_left: 1,
                thresholds: vec![15, 5, 1]
            }
        );
        assert_eq!(
            evaluate(at(11, 55, 50), at(12, 0, 0), &BTreeSet::new()),
            Step::Warn {
                minutes_left: 5,
                thresholds: vec![15, 5]
            }
        );
    }

    #[test]
    fn an_extension_rearms_warnings_outside_the_new_window() {
        let mut warned: BTreeSet<u64> = [15, 5, 1].into();
        rewarn_after_change(at(11, 59, 30), at(12, 3, 0), &mut warned);
        assert_eq!(warned, [15, 5].into());
        rewarn_after_change(at(11, 59, 30), at(14, 0, 0), &mut warned);
        assert!(warned.is_empty());
    }

    #[test]
    fn time_left_reads_well() {
        assert_eq!(human_left(TimeDelta::seconds(14_340)), "3h59m");
        assert_eq!(human_left(TimeDelta::seconds(42)), "42s");
        assert_eq!(human_left(TimeDelta::seconds(-3)), "expired");
    }
}
