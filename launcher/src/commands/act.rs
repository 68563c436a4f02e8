//! `lease terminate | stop | hibernate`.

use std::io::{BufRead, IsTerminal, Write};

use lease_common::tags::{Action, JOB};
use serde::Serialize;

use crate::aws::Cloud;
use crate::aws::ec2::{Instance, Query};
use crate::cli::{ActionArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::resolve::resolve;

#[derive(Debug, Serialize)]
struct Change {
    id: String,
    previous_state: String,
    state: String,
}

async fn targets<C: Cloud>(cloud: &C, args: &ActionArgs) -> Result<Vec<Instance>> {
    let mut found = resolve(cloud, &args.targets).await?;
    if let Some(job) = &args.job {
        let live = ["pending", "running", "stopping", "stopped"]
            .map(String::from)
            .to_vec();
        let of_job = cloud
            .describe(
                &Query::managed()
                    .filter(format!("tag:{JOB}"), vec![job.clone()])
                    .filter("instance-state-name", live),
            )
            .await?;
        if of_job.is_empty() {
            return Err(Error::NotFound(format!(
                "No live managed instance of job '{job}' in {}",
                cloud.region()
            )));
        }
        found.extend(of_job);
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    Ok(found)
}

/// More than one instance needs --yes, or a "y" typed at a terminal.
fn confirm(ctx: &Ctx, action: Action, instances: &[Instance]) -> Result<()> {
    if instances.len() <= 1 || ctx.yes {
        return Ok(());
    }
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    let question = format!(
        "{} {} instances ({})?",
        capitalised(action),
        ids.len(),
        ids.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        return Err(Error::Refused(format!(
            "Would {action} {} instances ({}); pass --yes to confirm",
            ids.len(),
            ids.join(", ")
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("Failed to read the answer", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Refused("Nothing done.".into()))
    }
}

fn capitalised(a: Action) -> String {
    let s = a.as_str();
    s[..1].to_uppercase() + &s[1..]
}

/// Stop and hibernate are refused for spot instances before any call, naming them:
/// EC2 cannot stop or hibernate a one-time spot instance (the only spot kind lease
/// launches), and a batch would otherwise fail halfway through.
fn check_market(action: Action, instances: &[Instance]) -> Result<()> {
    let spot: Vec<&str> = instances
        .iter()
        .filter(|i| action.on_market(&i.market) != action)
        .map(|i| i.id.as_str())
        .collect();
    if spot.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "Cannot {action} {}: a one-time spot instance can only be terminated; nothing was done",
        spot.join(", ")
    )))
}

pub async fn run<C: Cloud>(cloud: &C, ctx: &Ctx, args: &ActionArgs, action: Action) -> Result<()> {
    if args.targets.is_empty() && args.job.is_none() {
        return Err(Error::usage(format!(
            "{action}: name instances (ids or names) or --job"
        )));
    }
    let instances = targets(cloud, args).await?;
    check_market(action, &instances)?;
    confirm(ctx, action, &instances)?;
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    let changed = cloud.change_state(&ids, action).await?;
    let changes: Vec<Change> = instances
        .iter()
        .map(|i| Change {
            id: i.id.clone(),
            previous_state: i.state.clone(),
            state: changed
                .iter()
                .find(|(id, _)| id == &i.id)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| "unknown".into()),
        })
        .collect();
    match ctx.output {
        OutputFormat::Json => output::print_json(&changes),
        OutputFormat::Table => {
            let mut t = Table::new(["ID", "PREVIOUS", "NOW"]);
            for c in &changes {
                t.row(vec![
                    Cell::from(c.id.clone()),
                    Cell::from(c.previous_state.clone()),
                    Cell::from(c.state.clone()),
                ]);
            }
            output::print(&t.render(ctx.color))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_hibernate_are_refused_for_spot_instances() {
        let spot = crate::aws::ec2::fake::instance("i-1", &[]);
        let on_demand = Instance {
            market: "on-demand".into(),
            ..crate::aws::ec2::fake::instance("i-2", &[])
        };
        let both = [spot, on_demand.clone()];
        for action in [Action::Stop, Action::Hibernate] {
            let err = check_market(action, &both).unwrap_err();
            assert_eq!(err.exit_code(), 4);
            assert!(
                err.to_string().contains(&format!("Cannot {action} i-1:")),
                "{err}"
            );
            assert!(check_market(action, std::slice::from_ref(&on_demand)).is_ok());
        }
        assert!(check_market(Action::Terminate, &both).is_ok());
    }
}
