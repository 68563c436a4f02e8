//! `lease teardown [--stack NAME] --yes [--force]`: deletes exactly what `lease setup`
//! made for the stack in this region (found by name, deleted only when tagged
//! `lease:stack=<name>`), empties the bucket first, and removes the settings section.
//! Refuses while managed instances of the stack still live, unless `--force`.

use std::path::Path;

use lease_common::stack::STACK_TAG;

use crate::aws::Cloud;
use crate::aws::ec2::{Instance, Query};
use crate::cli::TeardownArgs;
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::stack::print_report;
use crate::stack::wanted::Wanted;
use crate::stack::{self, Clients, Outcome, Report};
use crate::targets::{location, stack_name};

/// States in which an instance still depends on the control plane (or can again).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The stack's managed instances that are not terminated.
pub async fn live_instances<C: Cloud>(cloud: &C, stack: &str) -> Result<Vec<Instance>> {
    cloud
        .describe(
            &Query::managed()
                .filter(format!("tag:{STACK_TAG}"), vec![stack.to_string()])
                .filter(
                    "instance-state-name",
                    LIVE_STATES.iter().map(|s| s.to_string()).collect(),
                ),
        )
        .await
}

pub async fn run<C: Cloud>(
    cloud: &C,
    clients: &Clients,
    ctx: &Ctx,
    args: &TeardownArgs,
    settings_path: &Path,
) -> Result<()> {
    let mut settings = Settings::load(settings_path)?;
    let stack = stack_name(args.stack.as_deref(), &settings)?;
    let region = cloud.region().to_string();
    if !ctx.yes {
        return Err(Error::Refused(format!(
            "Teardown deletes every resource of stack '{stack}' in {region}, the bucket's contents included; pass --yes to confirm"
        )));
    }
    let live = live_instances(cloud, stack.name()).await?;
    if !live.is_empty() {
        let ids: Vec<&str> = live.iter().map(|i| i.id.as_str()).collect();
        if !args.force {
            return Err(Error::Refused(format!(
                "Stack '{stack}' in {region} still has {} managed instance(s) ({}): terminate them, or pass --force",
                live.len(),
                ids.join(", ")
            )));
        }
        eprintln!(
            "warning: --force: {} managed instance(s) of stack '{stack}' ({}) lose their queues, bucket and tables",
            live.len(),
            ids.join(", ")
        );
    }
    let at = location(cloud).await?;
    let wanted = Wanted {
        stack: stack.clone(),
        at,
        pools: Vec::new(),
        claude_auth: Default::default(),
    };
    let mut report = Report::default();
    if let Err(e) = stack::remove(clients, &wanted, &mut report).await {
        print_report(ctx.output, ctx.color, &report, None)?;
        return Err(e);
    }
    let outcome = if settings.remove(stack.name(), &region) {
        settings.save(settings_path)?;
        Outcome::Deleted
    } else {
        Outcome::Absent
    };
    report.add(
        "settings",
        format!("{} (section {stack}/{region})", settings_path.display()),
        outcome,
    );
    print_report(ctx.output, ctx.color, &report, None)?;
    let kept = report
        .rows
        .iter()
        .filter(|r| r.outcome == Outcome::Kept)
        .count();
    if kept > 0 {
        eprintln!(
            "Stack '{stack}' in {region} is torn down, except {kept} resource(s) under its names that are not tagged {STACK_TAG}={stack} (listed above)."
        );
    } else {
        eprintln!("Stack '{stack}' in {region} is torn down.");
    }
    Ok(())
}
