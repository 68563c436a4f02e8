//! `lease status`: everything lease knows about one instance.

use chrono::{DateTime, Utc};
use lease_common::tags::LeaseTags;
use serde::Serialize;

use crate::aws::Cloud;
use crate::aws::ec2::Instance;
use crate::cli::{OutputFormat, TargetArg};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_missing_secs: Option<i64>,
    /// The end of the console output, for an instance whose agent never reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    console_tail: Option<String>,
}

/// How much of the console output `lease status` shows: enough for cloud-init's
/// failing step and its error, short enough to read.
const CONSOLE_TAIL_LINES: usize = 25;

/// The end of the console output, only for an instance whose agent never came up: the
/// console says why (cloud-init's failing step, the install's error), nothing else does.
async fn console_tail<C: Cloud>(cloud: &C, i: &Instance, now: DateTime<Utc>) -> Option<String> {
    i.agent_missing_for(now)?;
    Some(match cloud.console_output(&i.id).await {
        Ok(Some(text)) => tail(&text, CONSOLE_TAIL_LINES),
        Ok(None) => "(EC2 has no console output for it yet)".to_string(),
        Err(e) => format!("({e})"),
    })
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn run<C: Cloud>(cloud: &C, ctx: &Ctx, args: &TargetArg) -> Result<()> {
    let found = resolve(cloud, std::slice::from_ref(&args.target)).await?;
    let Some(i) = found.first() else {
        return Ok(());
    };
    let lease = i.lease_tags()?;
    let deadline = lease.deadline(i.launch_time);
    let missing = i.agent_missing_for(ctx.now);
    let console_tail = console_tail(cloud, i, ctx.now).await;
    match ctx.output {
        OutputFormat::Json => output::print_json(&Status {
            instance: i,
            lease: &lease,
            deadline,
            seconds_left: deadline.map(|d| (d - ctx.now).num_seconds()),
            agent_missing_secs: missing.map(|d| d.num_seconds()),
            console_tail,
        }),
        OutputFormat::Table => {
            let mut text = render(i, &lease, ctx.now);
            if let Some(tail) = console_tail {
                text.push_str(&format!(
                    "\nConsole output (last {CONSOLE_TAIL_LINES} lines):\n{tail}\n"
                ));
            }
            output::print(&text)
        }
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
        match i.agent_missing_for(now) {
            Some(d) => format!(
                "starting, with no agent {} after launch (a boot takes under {}): the install \
                 or the agent failed; see the console output below",
                short_duration(d),
                short_duration(crate::aws::ec2::BOOT_LIMIT)
            ),
            None => lease
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_start_shows_the_end_of_the_console() {
        let now = Utc::now();
        let mut i = crate::aws::ec2::fake::instance(
            "i-1",
            &[("lease:managed", "true"), ("lease:status", "starting")],
        );
        i.launch_time = Some(now - chrono::TimeDelta::minutes(15));
        let text = render(&i, &i.lease_tags().unwrap(), now);
        assert!(
            text.contains("starting, with no agent 15m after launch"),
            "{text}"
        );
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[tokio::test]
    async fn the_console_is_read_only_for_a_stuck_start() {
        let cloud = crate::aws::fake::FakeCloud::new("us-east-1");
        let now = Utc::now();
        let mut i = crate::aws::ec2::fake::instance(
            "i-1",
            &[("lease:managed", "true"), ("lease:status", "starting")],
        );
        i.launch_time = Some(now - chrono::TimeDelta::minutes(15));
        let shown = console_tail(&cloud, &i, now).await.unwrap();
        assert!(
            shown.ends_with("leased.service: Failed with result 'exit-code'."),
            "{shown}"
        );
        i.launch_time = Some(now - chrono::TimeDelta::minutes(2));
        assert_eq!(console_tail(&cloud, &i, now).await, None);
    }
}
