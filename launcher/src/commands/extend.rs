//! `lease extend`: move deadlines forward.

use chrono::{DateTime, Utc};
use lease_common::HumanDuration;
use lease_common::tags::{EXPIRES_AT, TTL, ceil_to_second, render_time};
use serde::Serialize;

use crate::aws::Cloud;
use crate::aws::ec2::Instance;
use crate::cli::{ExtendArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::resolve::resolve;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Extension {
    pub id: String,
    pub old_deadline: Option<DateTime<Utc>>,
    pub new_deadline: DateTime<Utc>,
    pub ttl: HumanDuration,
}

/// The new deadline and TTL. Extending adds to the current deadline, or to now if it
/// already passed (an instance outliving its deadline is one whose agent is late, and
/// "two more hours" then means two hours from now). The agent enforces the earlier of
/// `lease:expires-at` and launch time + `lease:ttl`, so both move.
pub fn extension(i: &Instance, by: HumanDuration, now: DateTime<Utc>) -> Result<Extension> {
    if i.is_gone() {
        return Err(Error::Refused(format!(
            "Instance '{}' is {}; it cannot be extended",
            i.id, i.state
        )));
    }
    let tags = i.lease_tags()?;
    if tags.no_deadline {
        return Err(Error::Refused(format!(
            "Instance '{}' has no deadline (launched with --ttl none)",
            i.id
        )));
    }
    let old = tags.deadline(i.launch_time);
    let base = old.map_or(now, |d| d.max(now));
    // Whole seconds, rounded up: tags hold seconds, and the lease must not shrink.
    let new_deadline = ceil_to_second(base + by.to_chrono());
    // The TTL grows by as much as the deadline moved, so `2h` extended by `1h` reads
    // `3h` even when EC2's launch second differs from the launcher's clock; and never
    // less than launch → new deadline, or the agent would keep the old one.
    let secs = |d: chrono::TimeDelta| u64::try_from(d.num_seconds()).unwrap_or(0);
    let grown = tags
        .ttl
        .zip(old)
        .map(|(ttl, old)| ttl.as_secs() + secs(new_deadline - old))
        .unwrap_or(0);
    let needed = secs(new_deadline - i.launch_time.unwrap_or(now));
    let ttl = HumanDuration::from_secs(grown.max(needed).max(1));
    Ok(Extension {
        id: i.id.clone(),
        old_deadline: old,
        new_deadline,
        ttl,
    })
}

pub async fn run<C: Cloud>(cloud: &C, ctx: &Ctx, args: &ExtendArgs) -> Result<()> {
    let Some((by, targets)) = args.args.split_last() else {
        return Err(Error::usage("usage: lease extend <id|name>... <duration>"));
    };
    let by: HumanDuration = by
        .parse()
        .map_err(|e| Error::usage(format!("extend: {e}")))?;
    if by.as_secs() == 0 {
        return Err(Error::usage(
            "extend: the duration must be longer than zero",
        ));
    }
    let instances = resolve(cloud, targets).await?;
    // Every instance is checked before any is changed.
    let plans: Vec<Extension> = instances
        .iter()
        .map(|i| extension(i, by, ctx.now))
        .collect::<Result<_>>()?;
    for p in &plans {
        cloud
            .create_tags(
                std::slice::from_ref(&p.id),
                &[
                    (EXPIRES_AT.to_string(), render_time(p.new_deadline)),
                    (TTL.to_string(), p.ttl.to_string()),
                ],
            )
            .await?;
    }
    match ctx.output {
        OutputFormat::Json => output::print_json(&plans),
        OutputFormat::Table => {
            let mut t = Table::new(["ID", "OLD DEADLINE", "NEW DEADLINE", "TTL"]);
            for p in &plans {
                t.row(vec![
                    Cell::from(p.id.clone()),
                    Cell::from(
                        p.old_deadline
                            .map(render_time)
                            .unwrap_or_else(|| "-".into()),
                    ),
                    Cell::from(render_time(p.new_deadline)),
                    Cell::from(p.ttl.to_string()),
                ]);
            }
            output::print(&t.render(ctx.color))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    fn instance(state: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            state: state.into(),
            launch_time: Some(at(10, 0)),
            ..crate::aws::ec2::fake::instance("i-0123456789abcdef0", tags)
        }
    }

    #[test]
    fn adds_to_the_deadline_and_keeps_ttl_consistent() {
        let i = instance(
            "running",
            &[
                ("lease:ttl", "2h"),
                ("lease:expires-at", "2026-11-23T12:00:00Z"),
            ],
        );
        let e = extension(&i, HumanDuration::from_secs(3_600), at(11, 0)).unwrap();
        assert_eq!(e.old_deadline, Some(at(12, 0)));
        assert_eq!(e.new_deadline, at(13, 0));
        assert_eq!(e.ttl.to_string(), "3h");
    }

    #[test]
    fn ttl_grows_by_the_extension_even_when_launch_lags_the_tag() {
        // Launched a second after the launcher computed expires-at.
        let i = Instance {
            launch_time: Some(at(10, 0) + chrono::TimeDelta::seconds(1)),
            ..instance(
                "running",
                &[
                    ("lease:ttl", "1h"),
                    ("lease:expires-at", "2026-11-23T11:00:00Z"),
                ],
            )
        };
        let e = extension(&i, HumanDuration::from_secs(1_800), at(10, 10)).unwrap();
        assert_eq!(e.new_deadline, at(11, 30));
        assert_eq!(e.ttl.to_string(), "1h30m");
    }

    #[test]
    fn a_passed_deadline_extends_from_now() {
        let i = instance(
            "running",
            &[
                ("lease:ttl", "1h"),
                ("lease:expires-at", "2026-11-23T11:00:00Z"),
            ],
        );
        let e = extension(&i, HumanDuration::from_secs(1_800), at(11, 20)).unwrap();
        assert_eq!(e.new_deadline, at(11, 50));
        assert_eq!(e.ttl.to_string(), "1h50m");
    }

    #[test]
    fn refuses_terminated_and_unlimited() {
        let i = instance("terminated", &[("lease:ttl", "1h")]);
        let err = extension(&i, HumanDuration::from_secs(60), at(10, 30)).unwrap_err();
        assert!(err.to_string().contains("terminated"), "{err}");
        let i = instance("running", &[("lease:ttl", "none")]);
        assert!(extension(&i, HumanDuration::from_secs(60), at(10, 30)).is_err());
    }
}
