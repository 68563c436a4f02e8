//! The reaper's decision for one instance: pure, given the time, the instance's facts
//! and the configuration, so every rule is tested with fixed dates.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::HumanDuration;
use lease_common::tags::{self, Action, LeaseTags, render_time};
use serde::{Deserialize, Serialize};

/// How long the reaper leaves an expired instance to its agent before acting itself.
/// Three runs of a 5-minute schedule: an agent that is alive acts at its deadline (or
/// within a minute or two when it is draining a task), so anything still running a
/// quarter of an hour later has an agent that is dead, hung or was never installed.
pub const DEFAULT_GRACE: HumanDuration = HumanDuration::from_secs(15 * 60);

/// The hard ceiling on any managed instance's age, even with `lease:ttl=none`:
/// a week is longer than any job this tool is for, and short enough that a forgotten
/// instance costs days, not months.
pub const DEFAULT_MAX_AGE: HumanDuration = HumanDuration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReaperConfig {
    /// See [`DEFAULT_GRACE`].
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
    /// See [`DEFAULT_MAX_AGE`].
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
}

fn default_grace() -> HumanDuration {
    DEFAULT_GRACE
}

fn default_max_age() -> HumanDuration {
    DEFAULT_MAX_AGE
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// The instance states the reaper looks at. `shutting-down` and `terminated` are
/// already on their way out and are never listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub const ALL: [InstanceState; 4] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];

    /// EC2's name, as in the `instance-state-name` filter.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    pub fn from_ec2(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What the reaper knows about one instance: all of it from one DescribeInstances page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    pub id: String,
    pub state: InstanceState,
    /// EC2's launch time (AWS's clock, not ours): the anchor for `lease:ttl` and the age cap.
    pub launch_time: Option<DateTime<Utc>>,
    /// Every tag, ours and others'.
    pub tags: BTreeMap<String, String>,
    /// EC2's `InstanceLifecycle`: `spot`, or `on-demand` when EC2 names none. Decides
    /// which actions EC2 accepts (see [`Action::on_market`]).
    pub market: String,
}

impl InstanceFacts {
    pub fn is_managed(&self) -> bool {
        self.tags.get(tags::MANAGED).map(String::as_str) == Some("true")
    }
}

/// What the reaper does to an instance. Hibernation needs a live guest to write RAM to
/// disk, and the reaper acts exactly when the guest may be dead, so `hibernate` is
/// carried out as a plain stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReapAction {
    Terminate,
    Stop,
}

impl ReapAction {
    fn from_on_expiry(a: Action) -> Self {
        match a {
            Action::Terminate => ReapAction::Terminate,
            Action::Stop | Action::Hibernate => ReapAction::Stop,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReapAction::Terminate => "terminate",
            ReapAction::Stop => "stop",
        }
    }
}

impl fmt::Display for ReapAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the reaper acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reason {
    /// The lease's deadline passed more than the grace period ago.
    Expired {
        deadline: DateTime<Utc>,
        grace: HumanDuration,
    },
    /// The instance is older than the age cap, whatever its tags say.
    MaxAge {
        launched: DateTime<Utc>,
        max_age: HumanDuration,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Expired { deadline, grace } => write!(
                f,
                "lease expired at {} and the agent did not act within {grace}",
                render_time(*deadline)
            ),
            Reason::MaxAge { launched, max_age } => write!(
                f,
                "launched at {}, older than the {max_age} age cap",
                render_time(*launched)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    Keep,
    Act { action: ReapAction, reason: Reason },
}

/// Durations longer than this are "never": a century is beyond any lease, and keeping
/// below it keeps date arithmetic far from chrono's range, where it panics.
const FOREVER_SECS: u64 = 100 * 366 * 24 * 3600;

/// `d` as a chrono delta, or `None` for a duration so long it means "never".
fn delta(d: HumanDuration) -> Option<TimeDelta> {
    (d.as_secs() <= FOREVER_SECS).then(|| d.to_chrono())
}

/// [`LeaseTags::deadline`], the agent's rule, made safe for any tag value: a
/// `lease:ttl` longer than a century ends after any `lease:expires-at` and any run of
/// the reaper, so it is left out rather than added to the launch time (which would
/// overflow and panic for absurd values, stopping the backstop for every instance).
fn deadline(mut tags: LeaseTags, launched: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    if tags.ttl.is_some_and(|t| delta(t).is_none()) {
        tags.ttl = None;
    }
    tags.deadline(launched)
}

/// The decision for one instance at `now`.
///
/// - Not `lease:managed=true`: kept, always.
/// - Deadline (the agent's rule: the earlier of `lease:expires-at` and launch time +
///   `lease:ttl`) more than `grace` ago, or launched more than `max_age` ago: the
///   `lease:on-expiry` action (hibernate carried out as stop).
/// - Lease tags that do not parse: the deadline is unknown, so only the age cap applies
///   (the caller reports the bad tag by name); `lease:on-expiry` is still honoured when
///   it alone parses, else terminate, the schema's default.
/// - A stop that is already done or under way (`stopping`, `stopped`) is not repeated,
///   so a second run changes nothing; a terminate still applies to a stopped instance,
///   whose volumes cost money and whose agent cannot act while it is stopped.
pub fn evaluate(now: DateTime<Utc>, facts: &InstanceFacts, config: &ReaperConfig) -> Decision {
    if !facts.is_managed() {
        return Decision::Keep;
    }
    let parsed = LeaseTags::from_map(&facts.tags);
    let on_expiry = match &parsed {
        Ok(t) => t.on_expiry,
        Err(_) => facts
            .tags
            .get(tags::ON_EXPIRY)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
    };
    // A one-time spot instance cannot be stopped: asking would fail every run and
    // leave the instance running, so on spot the reaper terminates.
    let action = ReapAction::from_on_expiry(on_expiry.on_market(&facts.market));
    if action == ReapAction::Stop
        && matches!(
            facts.state,
            InstanceState::Stopping | InstanceState::Stopped
        )
    {
        return Decision::Keep;
    }
    let expired = parsed
        .ok()
        .and_then(|t| deadline(t, facts.launch_time))
        .filter(|deadline| delta(config.grace).is_some_and(|grace| now - *deadline > grace))
        .map(|deadline| Reason::Expired {
            deadline,
            grace: config.grace,
        });
    let too_old = facts
        .launch_time
        .filter(|launched| delta(config.max_age).is_some_and(|max| now - *launched > max))
        .map(|launched| Reason::MaxAge {
            launched,
            max_age: config.max_age,
        });
    match expired.or(too_old) {
        Some(reason) => Decision::Act { action, reason },
        None => Decision::Keep,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap()
    }

    fn facts(state: InstanceState, tags: &[(&str, &str)]) -> InstanceFacts {
        InstanceFacts {
            id: "i-0123456789abcdef0".into(),
            state,
            launch_time: Some(at(23, 10, 0)),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            market: "on-demand".into(),
        }
    }

    fn running(tags: &[(&str, &str)]) -> InstanceFacts {
        facts(InstanceState::Running, tags)
    }

    const MANAGED: (&str, &str) = ("lease:managed", "true");
    const TTL_2H: (&str, &str) = ("lease:ttl", "2h");

    fn config() -> ReaperConfig {
        ReaperConfig::default()
    }

    fn expired(deadline: DateTime<Utc>) -> Reason {
        Reason::Expired {
            deadline,
            grace: DEFAULT_GRACE,
        }
    }

    #[test]
    fn live_and_within_grace_are_kept() {
        let f = running(&[MANAGED, TTL_2H]);
        assert_eq!(evaluate(at(23, 11, 0), &f, &config()), Decision::Keep);
        // At the deadline and up to the grace period after it, the agent still owns it.
        assert_eq!(evaluate(at(23, 12, 0), &f, &config()), Decision::Keep);
        assert_eq!(evaluate(at(23, 12, 15), &f, &config()), Decision::Keep);
    }

    #[test]
    fn expired_beyond_grace_is_terminated_by_default() {
        let f = running(&[MANAGED, TTL_2H]);
        assert_eq!(
            evaluate(at(23, 12, 16), &f, &config()),
            Decision::Act {
                action: ReapAction::Terminate,
                reason: expired(at(23, 12, 0)),
            }
        );
    }

    #[test]
    fn deadline_is_the_earlier_of_expires_at_and_launch_plus_ttl() {
        // A stale or tampered expires-at can only shorten the lease.
        let f = running(&[
            MANAGED,
            TTL_2H,
            ("lease:expires-at", "2026-11-23T11:00:00Z"),
        ]);
        assert_eq!(
            evaluate(at(23, 11, 30), &f, &config()),
            Decision::Act {
                action: ReapAction::Terminate,
                reason: expired(at(23, 11, 0)),
            }
        );
        // expires-at alone (no launch time known) still gives a deadline.
        let mut f = running(&[MANAGED, ("lease:expires-at", "2026-11-23T11:00:00Z")]);
        f.launch_time = None;
        assert!(matches!(
            evaluate(at(23, 11, 30), &f, &config()),
            Decision::Act { .. }
        ));
    }

    #[test]
    fn on_expiry_stop_and_hibernate_stop_and_are_not_repeated() {
        for on_expiry in ["stop", "hibernate"] {
            let tags = [MANAGED, TTL_2H, ("lease:on-expiry", on_expiry)];
            let f = running(&tags);
            assert_eq!(
                evaluate(at(23, 13, 0), &f, &config()),
                Decision::Act {
                    action: ReapAction::Stop,
                    reason: expired(at(23, 12, 0)),
                }
            );
            for state in [InstanceState::Stopping, InstanceState::Stopped] {
                assert_eq!(
                    evaluate(at(23, 13, 0), &facts(state, &tags), &config()),
                    Decision::Keep,
                    "{on_expiry} {state:?}"
                );
            }
        }
    }

    #[test]
    fn on_spot_a_stop_or_hibernate_is_carried_out_as_a_terminate() {
        for on_expiry in ["stop", "hibernate"] {
            let f = InstanceFacts {
                market: "spot".into(),
                ..running(&[MANAGED, TTL_2H, ("lease:on-expiry", on_expiry)])
            };
            assert_eq!(
                evaluate(at(23, 13, 0), &f, &config()),
                Decision::Act {
                    action: ReapAction::Terminate,
                    reason: expired(at(23, 12, 0)),
                },
                "{on_expiry}"
            );
        }
    }

    #[test]
    fn a_stopped_instance_past_its_deadline_is_terminated_when_that_is_the_action() {
        let f = facts(InstanceState::Stopped, &[MANAGED, TTL_2H]);
        assert!(matches!(
            evaluate(at(23, 13, 0), &f, &config()),
            Decision::Act {
                action: ReapAction::Terminate,
                ..
            }
        ));
    }

    #[test]
    fn age_cap_applies_even_without_a_deadline() {
        let f = running(&[MANAGED, ("lease:ttl", "none")]);
        assert_eq!(evaluate(at(30, 10, 0), &f, &config()), Decision::Keep);
        assert_eq!(
            evaluate(at(30, 10, 1), &f, &config()),
            Decision::Act {
                action: ReapAction::Terminate,
                reason: Reason::MaxAge {
                    launched: at(23, 10, 0),
                    max_age: DEFAULT_MAX_AGE,
                },
            }
        );
        let short = ReaperConfig {
            max_age: HumanDuration::from_secs(3600),
            ..config()
        };
        assert!(matches!(
            evaluate(at(23, 11, 1), &f, &short),
            Decision::Act {
                reason: Reason::MaxAge { .. },
                ..
            }
        ));
    }

    #[test]
    fn unmanaged_instances_are_never_touched() {
        let old = at(23, 10, 0) + TimeDelta::days(365);
        for tags in [
            vec![TTL_2H],
            vec![("lease:managed", "false"), TTL_2H],
            vec![("lease:managed", "TRUE"), TTL_2H],
        ] {
            assert_eq!(evaluate(old, &running(&tags), &config()), Decision::Keep);
        }
    }

    #[test]
    fn bad_tags_leave_only_the_age_cap_and_keep_a_parseable_on_expiry() {
        let f = running(&[
            MANAGED,
            ("lease:ttl", "forever"),
            ("lease:on-expiry", "stop"),
        ]);
        assert_eq!(evaluate(at(24, 10, 0), &f, &config()), Decision::Keep);
        assert_eq!(
            evaluate(at(30, 11, 0), &f, &config()),
            Decision::Act {
                action: ReapAction::Stop,
                reason: Reason::MaxAge {
                    launched: at(23, 10, 0),
                    max_age: DEFAULT_MAX_AGE,
                },
            }
        );
        let f = running(&[MANAGED, TTL_2H, ("lease:on-expiry", "explode")]);
        assert!(matches!(
            evaluate(at(30, 11, 0), &f, &config()),
            Decision::Act {
                action: ReapAction::Terminate,
                reason: Reason::MaxAge { .. },
            }
        ));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            expired(at(23, 12, 0)).to_string(),
            "lease expired at 2026-11-23T12:00:00Z and the agent did not act within 15m"
        );
    }

    #[test]
    fn absurd_durations_do_not_panic() {
        // A TTL over a century does not parse: the tags are bad, so only the age cap
        // applies, however the other tags read.
        let f = running(&[MANAGED, ("lease:ttl", "18446744073709551615")]);
        assert_eq!(evaluate(at(24, 10, 0), &f, &config()), Decision::Keep);
        let f = running(&[
            MANAGED,
            ("lease:ttl", "18446744073709551615"),
            ("lease:expires-at", "2026-11-23T11:00:00Z"),
        ]);
        assert_eq!(evaluate(at(23, 12, 0), &f, &config()), Decision::Keep);
        let never = ReaperConfig {
            grace: HumanDuration::from_secs(u64::MAX),
            max_age: HumanDuration::from_secs(u64::MAX),
        };
        let f = running(&[MANAGED, TTL_2H]);
        assert_eq!(evaluate(at(30, 10, 0), &f, &never), Decision::Keep);
    }
}
