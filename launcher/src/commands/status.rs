//! `lease status`: everything lease knows about one instance.

use chrono::{DateTime, Utc};
use lease_common::tags::LeaseTags;
use serde::Serialize;

use crate::cli::{OutputFormat, TargetArg};
use crate::cloud::{Cloud, Instance};
use crate::commands::Ctx;
use crate::error::Result;
use crate::output::{self, short_duration, time_left};
use crate::resolve::resolve;

#[derive(Debug, Serialize)]
struct Status<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    lease: &'a LeaseTags,
    deadline: Option<DateTime<Utc>>,
    seconds_left: Option<i64>,
}

pub async fn run<C: Cloud>(cloud: &C, ctx: &Ctx, args: &TargetArg) -> Result<()> {
    let found = resolve(cloud, std::slice::from_ref(&args.target)).await?;
    let Some(i) = found.first() else {
        return Ok(());
    };
    let lease = i.lease_tags()?;
    let deadline = lease.deadline(i.launch_time);
    match ctx.output {
        OutputFormat::Json => output::print_json(&Status {
            instance: i,
            lease: &lease,
            deadline,
            seconds_left: deadline.map(|d| (d - ctx.now).num_seconds()),
        }),
        OutputFormat::Table => output::print(&render(i, &lease, ctx.now)),
    }
}

fn render(i: &Instance, lease: &LeaseTags, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let opt = |v: Option<&str>| v.unwrap_or("-").to_string();
    let deadline = lease.deadline(i.launch_time);
    lines.push(("Instance", i.id.clone()));
    lines.push(("Name", opt(i.name())));
    lines.push((
        "Region",
        format!("{} ({})", i.region, opt(i.availability_zone.as_deref())),
    ));
    lines.push(("Type", format!("{} {}", i.instance_type, i.market)));
    lines.push(("State", i.state.clone()));
    lines.push((
        "Agent status",
        lease
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
    ));
    lines.push(("Task", opt(lease.task.as_deref())));
    lines.push(("Owner", opt(lease.owner.as_deref())));
    lines.push(("Job", opt(lease.job.as_deref())));
    lines.push((
        "Launched",
        match i.launch_time {
            Some(l) => format!(
                "{} ({} ago)",
                lease_common::tags::render_time(l),
                short_duration(now - l)
            ),
            None => "-".into(),
        },
    ));
    lines.push((
        "Deadline",
        match deadline {
            Some(d) => format!(
                "{} ({})",
                lease_common::tags::render_time(d),
                time_left(Some(d), false, now).text
            ),
            None if lease.no_deadline => "none (launched with --ttl none)".into(),
            None => "- (no lease tags: the agent applies its default TTL)".into(),
        },
    ));
    lines.push((
        "TTL",
        lease
            .ttl
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
    ));
    lines.push((
        "Idle timeout",
        lease
            .idle_timeout
            .map(|t| format!("{t} then {}", lease.on_idle))
            .unwrap_or_else(|| "-".into()),
    ));
    lines.push(("On expiry", lease.on_expiry.to_string()));
    lines.push(("Private IP", opt(i.private_ip.as_deref())));
    lines.push(("Public IP", opt(i.public_ip.as_deref())));
    lines.push(("Public DNS", opt(i.public_dns.as_deref())));
    lines.push(("AMI", opt(i.image_id.as_deref())));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
