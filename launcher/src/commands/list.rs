//! `lease list`: managed instances across one or more regions, queried concurrently.

use chrono::{DateTime, Utc};
use lease_common::tags::{self, JOB, NodeStatus, OWNER};
use serde::Serialize;

use crate::aws::Cloud;
use crate::aws::ec2::{Instance, Query};
use crate::cli::{ListArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table, short_duration, time_left};

pub const STATES: [&str; 6] = [
    "pending",
    "running",
    "stopping",
    "stopped",
    "shutting-down",
    "terminated",
];

/// Builds the DescribeInstances query. Filtering happens in EC2, not here, so a big
/// account returns only what is shown.
pub fn query(args: &ListArgs, owner: Option<&str>) -> Result<Query> {
    for s in &args.states {
        if !STATES.contains(&s.as_str()) {
            return Err(Error::usage(format!(
                "--state '{s}' is not one of {}",
                STATES.join(", ")
            )));
        }
    }
    let states: Vec<String> = if args.states.is_empty() {
        STATES[..5].iter().map(|s| s.to_string()).collect()
    } else {
        args.states.clone()
    };
    let mut q = Query::managed().filter("instance-state-name", states);
    if let Some(job) = &args.job {
        q = q.filter(format!("tag:{JOB}"), vec![job.clone()]);
    }
    if let Some(owner) = owner {
        q = q.filter(format!("tag:{OWNER}"), vec![owner.to_string()]);
    }
    Ok(q)
}

/// One row of `lease list -o json`.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub region: &'a str,
    pub instance_type: &'a str,
    pub market: &'a str,
    pub state: &'a str,
    pub launch_time: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub seconds_left: Option<i64>,
    pub job: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Seconds since launch of a running instance whose agent never reported (see
    /// [`Instance::agent_missing_for`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_missing_secs: Option<i64>,
}

pub fn row<'a>(i: &'a Instance, now: DateTime<Utc>) -> Row<'a> {
    let deadline = i.deadline();
    Row {
        id: &i.id,
        name: i.name(),
        region: &i.region,
        instance_type: &i.instance_type,
        market: &i.market,
        state: &i.state,
        launch_time: i.launch_time,
        deadline,
        seconds_left: deadline.map(|d| (d - now).num_seconds()),
        job: i.tags.get(JOB).map(String::as_str),
        owner: i.tags.get(OWNER).map(String::as_str),
        status: status_of(i),
        agent_missing_secs: i.agent_missing_for(now).map(|d| d.num_seconds()),
    }
}

/// The STATUS column. While the instance is pending or running, the agent's
/// `lease:status`. Once it has stopped or gone, how it ended as the agent last wrote
/// it: `lease:end-reason` (`expired`, `idle`, `complete`, `failed`), else a status that
/// is itself an ending (`complete`, `failed`, `interrupted`); any other status is what
/// the agent was doing when something else ended the instance (`lease terminate`, the
/// reaper, a crash), so nothing is shown.
pub fn status_of(i: &Instance) -> Option<&str> {
    let status = i.tags.get(tags::STATUS).map(String::as_str);
    if matches!(i.state.as_str(), "pending" | "running") {
        return status;
    }
    if let Some(reason) = i.tags.get(tags::END_REASON).filter(|r| !r.is_empty()) {
        return Some(reason);
    }
    status.filter(|s| {
        [
            NodeStatus::Complete,
            NodeStatus::Failed,
            NodeStatus::Interrupted,
        ]
        .iter()
        .any(|end| end.as_str() == *s)
    })
}

pub fn table(instances: &[Instance], now: DateTime<Utc>, show_region: bool) -> Table {
    let mut headers = vec![
        "ID", "NAME", "TYPE", "MARKET", "STATE", "AGE", "TTL LEFT", "JOB", "OWNER", "STATUS",
    ];
    if show_region {
        headers.insert(1, "REGION");
    }
    let mut t = Table::new(headers);
    let dash = |s: Option<&str>| Cell::from(s.unwrap_or("-").to_string());
    for i in instances {
        let r = row(i, now);
        let no_deadline = i.lease_tags().map(|t| t.no_deadline).unwrap_or(false);
        let mut cells = vec![
            Cell::from(r.id),
            dash(r.name),
            Cell::from(r.instance_type),
            Cell::from(r.market),
            Cell::from(r.state),
            Cell::from(
                r.launch_time
                    .map(|l| short_duration(now - l))
                    .unwrap_or_else(|| "-".into()),
            ),
            if i.is_gone() {
                Cell::from("-")
            } else {
                time_left(r.deadline, no_deadline, now)
            },
            dash(r.job),
            dash(r.owner),
            match i.agent_missing_for(now) {
                Some(d) => Cell::from(format!("no agent after {}", short_duration(d))),
                None => dash(r.status),
            },
        ];
        if show_region {
            cells.insert(1, Cell::from(r.region));
        }
        t.row(cells);
    }
    t
}

pub async fn run<C: Cloud>(
    clouds: &[C],
    ctx: &Ctx,
    args: &ListArgs,
    owner: Option<String>,
) -> Result<()> {
    let q = query(args, owner.as_deref())?;
    let results = futures::future::join_all(clouds.iter().map(|c| c.describe(&q))).await;
    let mut instances = Vec::new();
    let mut failures = Vec::new();
    for (cloud, result) in clouds.iter().zip(results) {
        match result {
            Ok(found) => instances.extend(found),
            Err(e) => failures.push((cloud.region().to_string(), e)),
        }
    }
    instances
        .sort_by(|a, b| (a.launch_time, &a.region, &a.id).cmp(&(b.launch_time, &b.region, &b.id)));
    match ctx.output {
        OutputFormat::Json => {
            let rows: Vec<Row> = instances.iter().map(|i| row(i, ctx.now)).collect();
            output::print_json(&rows)?;
        }
        OutputFormat::Table => {
            let t = table(&instances, ctx.now, clouds.len() > 1);
            if t.is_empty() {
                eprintln!(
                    "No managed instances{}.",
                    if owner.is_some() {
                        " of yours (use --all for everyone's)"
                    } else {
                        ""
                    }
                );
            } else {
                output::print(&t.render(ctx.color))?;
            }
            let stuck: Vec<&str> = instances
                .iter()
                .filter(|i| i.agent_missing_for(ctx.now).is_some())
                .map(|i| i.id.as_str())
                .collect();
            if !stuck.is_empty() {
                eprintln!(
                    "{} still starting with no agent, longer than a boot takes: `lease status ID` \
                     shows the end of its console output.",
                    stuck.join(", ")
                );
            }
        }
    }
    // A region that failed is reported, never silently left out of the list.
    if failures.is_empty() {
        return Ok(());
    }
    for (region, e) in &failures {
        eprintln!("error: region {region}: {e}");
    }
    let regions: Vec<&str> = failures.iter().map(|(r, _)| r.as_str()).collect();
    Err(Error::Aws {
        what: format!("Failed to list instances in {}", regions.join(", ")),
        message: "the list above is incomplete".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn list_args(extra: &[&str]) -> ListArgs {
        let mut argv = vec!["lease", "list"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::List(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn default_query_is_mine_and_not_terminated() {
        let q = query(&list_args(&[]), Some("alice")).unwrap();
        assert!(
            q.filters
                .contains(&("tag:lease:managed".into(), vec!["true".into()]))
        );
        assert!(
            q.filters
                .contains(&("tag:lease:owner".into(), vec!["alice".into()]))
        );
        let states = &q
            .filters
            .iter()
            .find(|(n, _)| n == "instance-state-name")
            .unwrap()
            .1;
        assert!(!states.contains(&"terminated".to_string()));
        assert_eq!(states.len(), 5);
    }

    #[test]
    fn job_and_state_filters() {
        let q = query(
            &list_args(&["--job", "sweep", "--state", "terminated"]),
            None,
        )
        .unwrap();
        assert!(
            q.filters
                .contains(&("tag:lease:job".into(), vec!["sweep".into()]))
        );
        assert!(
            q.filters
                .contains(&("instance-state-name".into(), vec!["terminated".into()]))
        );
        assert!(!q.filters.iter().any(|(n, _)| n == "tag:lease:owner"));
        let err = query(&list_args(&["--state", "asleep"]), None).unwrap_err();
        assert!(err.to_string().contains("asleep"));
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    fn instance(state: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            id: "i-0123456789abcdef0".into(),
            region: "eu-west-1".into(),
            instance_type: "t3.micro".into(),
            state: state.into(),
            market: "spot".into(),
            launch_time: None,
            availability_zone: None,
            private_ip: None,
            public_ip: None,
            public_dns: None,
            architecture: None,
            image_id: None,
            key_name: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn shown(i: &Instance) -> String {
        let t = table(std::slice::from_ref(i), Utc::now(), false).render(false);
        let row = t.lines().nth(1).expect("a row");
        row.split_whitespace()
            .last()
            .expect("a STATUS cell")
            .to_string()
    }

    #[test]
    fn a_lease_that_expired_shows_expired_once_terminated_not_expiring() {
        let tags = [(tags::STATUS, "expiring"), (tags::END_REASON, "expired")];
        assert_eq!(shown(&instance("terminated", &tags)), "expired");
        assert_eq!(shown(&instance("shutting-down", &tags)), "expired");
        assert_eq!(shown(&instance("stopped", &tags)), "expired");
        let idle = [(tags::STATUS, "expiring"), (tags::END_REASON, "idle")];
        assert_eq!(shown(&instance("terminated", &idle)), "idle");
        // While it still runs, the agent's status is what it is doing.
        assert_eq!(shown(&instance("running", &tags)), "expiring");
    }

    #[test]
    fn an_ending_status_is_shown_as_it_was_written() {
        for status in ["complete", "failed", "interrupted"] {
            let i = instance("terminated", &[(tags::STATUS, status)]);
            assert_eq!(shown(&i), status);
        }
    }

    #[test]
    fn an_instance_that_ended_without_its_agent_shows_a_dash() {
        for status in ["running", "idle", "starting", "uploading", "expiring"] {
            let i = instance("terminated", &[(tags::STATUS, status)]);
            assert_eq!(shown(&i), "-", "status {status}");
            assert_eq!(row(&i, Utc::now()).status, None);
        }
        assert_eq!(shown(&instance("terminated", &[])), "-");
    }
}

#[cfg(test)]
mod region_tests {
    use super::*;
    use crate::aws::fake::FakeCloud;
    use crate::cli::Cli;
    use clap::Parser;

    fn ctx() -> Ctx {
        Ctx {
            output: OutputFormat::Json,
            yes: false,
            color: false,
            now: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_failing_region_is_reported_not_dropped() {
        let good = FakeCloud::new("eu-west-1");
        let bad = FakeCloud {
            broken: true,
            ..FakeCloud::new("ap-south-1")
        };
        let args = match Cli::parse_from(["lease", "list", "--all"]).command {
            crate::cli::Command::List(a) => a,
            other => panic!("{other:?}"),
        };
        let err = run(&[good, bad], &ctx(), &args, None).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ap-south-1"), "{text}");
        assert!(!text.contains("eu-west-1"), "{text}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn an_instance_starting_too_long_is_flagged() {
        let now = Utc::now();
        let mut i = crate::aws::ec2::fake::instance("i-1", &[("lease:status", "starting")]);
        i.launch_time = Some(now - chrono::TimeDelta::minutes(12));
        let r = row(&i, now);
        assert_eq!(r.agent_missing_secs, Some(12 * 60));
        let t = table(std::slice::from_ref(&i), now, false).render(false);
        assert!(t.contains("no agent after 12m"), "{t}");
        // Within a boot's time, or once the agent reported, nothing is flagged.
        i.launch_time = Some(now - chrono::TimeDelta::minutes(3));
        assert_eq!(row(&i, now).agent_missing_secs, None);
        i.launch_time = Some(now - chrono::TimeDelta::minutes(12));
        i.tags.insert("lease:status".into(), "idle".into());
        assert_eq!(row(&i, now).agent_missing_secs, None);
    }
}
