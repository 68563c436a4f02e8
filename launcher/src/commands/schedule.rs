//! `lease schedule create|list|delete|pause|resume`: EventBridge Scheduler schedules in
//! the stack's group `lease-<stack>` that run a `lease submit` (a task published to the
//! command topic) or a `lease launch` (RunInstances) on a cron or rate expression.
//! Everything local — name, expression, time zone, the scheduled command's own flags —
//! is checked before the first AWS call.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use lease_common::messages::{MAX_SQS_BODY, Task};
use lease_common::stack::{Location, Stack};
use serde::Serialize;

use crate::aws::Cloud;
use crate::aws::scheduler::{NewSchedule, Schedules};
use crate::cli::{
    LaunchArgs, OutputFormat, ScheduleCommand, ScheduleCreateArgs, ScheduleNameArgs, SubmitArgs,
};
use crate::commands::Ctx;
use crate::commands::launch::{LocalInputs, agent_source, read_local};
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::plan::{self, Resolved};
use crate::schedule;
use crate::{submit, userdata};

/// What may follow `--`: the `submit` and `launch` commands, with the very flag
/// definitions `lease submit` and `lease launch` use.
#[derive(Debug, Parser)]
#[command(name = "lease", no_binary_name = true)]
enum Scheduled {
    Submit(Box<SubmitArgs>),
    Launch(Box<LaunchArgs>),
}

/// clap's message for the scheduled command, without its own `error: ` (ours is added).
fn clap_usage(e: &clap::Error) -> Error {
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    Error::usage(format!("the scheduled command: {}", text.trim_end()))
}

fn parse_scheduled(words: &[String]) -> Result<Scheduled> {
    // A scheduled task goes to the command topic, never to a queue: the queue URL that
    // `lease submit` requires is not asked for here, and refused when given.
    let command = Scheduled::command().mut_subcommand("submit", |c| {
        c.mut_arg("queue_url", |a| a.required(false).default_value(""))
    });
    let matches = command
        .try_get_matches_from(words)
        .map_err(|e| clap_usage(&e))?;
    if let Some(("submit", sub)) = matches.subcommand() {
        for flag in ["queue_url", "bucket"] {
            if sub.value_source(flag) == Some(ValueSource::CommandLine) {
                return Err(Error::usage(format!(
                    "--{} does not apply to a scheduled submit: its task is published to the stack's command topic",
                    flag.replace('_', "-")
                )));
            }
        }
    }
    Scheduled::from_arg_matches(&matches).map_err(|e| clap_usage(&e))
}

/// The stack and the schedule's expression and time zone, checked.
fn checked(args: &ScheduleCreateArgs) -> Result<(Stack, String)> {
    schedule::validate_name(&args.name)?;
    let stack = Stack::new(&args.stack.stack).map_err(|e| Error::usage(e.to_string()))?;
    let expression = match (&args.cron, &args.rate) {
        (Some(cron), None) => schedule::cron_expression(cron)?,
        (None, Some(rate)) => schedule::rate_expression(rate)?,
        _ => return Err(Error::usage("give exactly one of --cron and --rate")),
    };
    if let Some(tz) = &args.timezone {
        schedule::validate_timezone(tz)?;
    }
    Ok((stack, expression))
}

/// The caller's ARN, and the partition and account in it, for the stack's ARNs.
async fn location<C: Cloud>(cloud: &C) -> Result<(Location, String)> {
    let arn = cloud.caller_arn().await?;
    let parts: Vec<&str> = arn.split(':').collect();
    let (Some(partition), Some(account)) = (parts.get(1), parts.get(4)) else {
        return Err(Error::Aws {
            what: "Reading your AWS identity".into(),
            message: format!("'{arn}' is not an ARN"),
        });
    };
    let at = Location::new(partition, account, cloud.region())
        .map_err(|e| Error::usage(e.to_string()))?;
    Ok((at, arn))
}

/// The one task each run of a scheduled submit publishes, its id made unique per run.
fn scheduled_task(name: &str, args: &SubmitArgs, ctx: &Ctx) -> Result<Task> {
    if args.array.is_some() || !args.param.is_empty() {
        return Err(Error::usage(
            "--array and --param do not apply to a scheduled submit: each run publishes one task (create one schedule per variant)",
        ));
    }
    let mut task = submit::build(args, ctx.now, "scheduled")?
        .pop()
        .ok_or_else(|| Error::usage("submit: no task to schedule"))?;
    task.id = schedule::task_id(name);
    if let Some(pool) = &task.pool {
        lease_common::stack::validate_pool(pool).map_err(|e| Error::usage(e.to_string()))?;
    }
    Ok(task)
}

/// A scheduled command, checked and built as far as it can be without AWS.
enum Prepared {
    Submit(Task),
    Launch(Box<(LaunchArgs, LocalInputs)>),
}

#[derive(Debug, Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    schedule: &'a NewSchedule,
    kind: &'static str,
}

async fn create<C: Cloud, S: Schedules>(
    cloud: &C,
    schedules: &S,
    ctx: &Ctx,
    args: &ScheduleCreateArgs,
) -> Result<()> {
    let (stack, expression) = checked(args)?;
    let prepared = match parse_scheduled(&args.command)? {
        Scheduled::Submit(a) => Prepared::Submit(scheduled_task(&args.name, &a, ctx)?),
        Scheduled::Launch(a) => {
            if a.wait || a.dry_run {
                return Err(Error::usage(
                    "--wait and --dry-run do not apply to a scheduled launch",
                ));
            }
            let local = read_local(&a, ctx)?;
            if !local.tasks.is_empty() {
                // Each run would need fresh task ids, and a RunInstances input is fixed.
                return Err(Error::usage(
                    "a scheduled launch cannot carry a task (--shell/--image/--claude or task: \
                     in --agent-config); schedule `submit` for the task instead",
                ));
            }
            Prepared::Launch(Box::new((*a, local)))
        }
    };

    // Local checks are done: from here on, AWS.
    let (at, caller) = location(cloud).await?;
    let group = stack.schedule_group();
    let (kind, target_arn, input) = match prepared {
        Prepared::Submit(task) => {
            let topic = args
                .topic_arn
                .clone()
                .unwrap_or_else(|| at.arn("sns", &stack.command_topic()));
            let input = schedule::publish_input(&topic, &task).to_string();
            if input.len() > MAX_SQS_BODY {
                return Err(Error::usage(format!(
                    "the scheduled task is {} bytes, more than a message takes ({MAX_SQS_BODY})",
                    input.len()
                )));
            }
            ("submit", schedule::publish_target(&at.partition), input)
        }
        Prepared::Launch(launch) => {
            let (a, local) = *launch;
            let choice = plan::default_image(&cloud.type_info(&a.instance_type).await?);
            let arch = choice.arch.clone();
            let agent = agent_source(cloud, &a, &arch).await?;
            let resolved = Resolved {
                root_volume: None,
                // Resolved by EC2 at each run, so every run gets the latest AMI.
                image_id: a
                    .ami
                    .clone()
                    .unwrap_or_else(|| format!("resolve:ssm:{}", choice.parameter)),
                owner: a
                    .owner
                    .clone()
                    .unwrap_or_else(|| plan::owner_from_arn(&caller)),
                user_data: userdata::render(
                    &local.agent_config,
                    agent.as_ref(),
                    local.extra_user_data.as_deref(),
                )?,
                client_token: String::new(),
            };
            let plan = plan::build(&a, &local.terms, resolved, ctx.now)?;
            let token = schedule::client_token(&group, &args.name);
            let input = schedule::run_instances_input(&plan, &token)?.to_string();
            (
                "launch",
                schedule::run_instances_target(&at.partition),
                input,
            )
        }
    };
    if !schedules.group_exists(&group).await? {
        return Err(Error::NotFound(format!(
            "the schedule group '{group}' does not exist: run `lease setup --stack {}` first",
            stack.name()
        )));
    }
    let new = NewSchedule {
        group: group.clone(),
        name: args.name.clone(),
        expression,
        timezone: args.timezone.clone(),
        description: format!("lease schedule: {}", args.command.join(" ")),
        target_arn,
        role_arn: args
            .role_arn
            .clone()
            .unwrap_or_else(|| at.iam_arn(&format!("role/{}", stack.schedules_role()))),
        input,
    };
    schedules.create(&new).await?;
    match ctx.output {
        OutputFormat::Json => output::print_json(&Created {
            schedule: &new,
            kind,
        })?,
        OutputFormat::Table => output::print(&format!("{}\n", new.name))?,
    }
    eprintln!(
        "Created schedule '{}' in group '{group}': {kind} on {}{}.",
        new.name,
        new.expression,
        new.timezone
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn group_of(stack: &str) -> Result<String> {
    Ok(Stack::new(stack)
        .map_err(|e| Error::usage(e.to_string()))?
        .schedule_group())
}

async fn set_enabled<S: Schedules>(s: &S, a: &ScheduleNameArgs, enabled: bool) -> Result<()> {
    let group = group_of(&a.stack.stack)?;
    s.set_enabled(&group, &a.name, enabled).await?;
    eprintln!(
        "Schedule '{}' in group '{group}' is {}.",
        a.name,
        if enabled { "enabled" } else { "paused" }
    );
    Ok(())
}

pub async fn run<C: Cloud, S: Schedules>(
    cloud: &C,
    schedules: &S,
    ctx: &Ctx,
    command: &ScheduleCommand,
) -> Result<()> {
    match command {
        ScheduleCommand::Create(a) => create(cloud, schedules, ctx, a).await,
        ScheduleCommand::List(a) => {
            let group = group_of(&a.stack)?;
            let all = schedules.list(&group).await?;
            match ctx.output {
                OutputFormat::Json => output::print_json(&all),
                OutputFormat::Table => {
                    let mut t = Table::new(["NAME", "STATE", "KIND", "EXPRESSION", "TIMEZONE"]);
                    for s in &all {
                        t.row(vec![
                            Cell::from(s.name.clone()),
                            Cell {
                                text: s.state.clone(),
                                warn: s.state != "ENABLED",
                            },
                            Cell::from(s.kind.to_string()),
                            Cell::from(s.expression.clone()),
                            Cell::from(s.timezone.clone()),
                        ]);
                    }
                    output::print(&t.render(ctx.color))
                }
            }
        }
        ScheduleCommand::Delete(a) => {
            let group = group_of(&a.stack.stack)?;
            schedules.delete(&group, &a.name).await?;
            eprintln!("Deleted schedule '{}' from group '{group}'.", a.name);
            Ok(())
        }
        ScheduleCommand::Pause(a) => set_enabled(schedules, a, false).await,
        ScheduleCommand::Resume(a) => set_enabled(schedules, a, true).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_scheduled_command_uses_submit_and_launch_flags() {
        match parse_scheduled(&words(&["submit", "--shell", "make", "--pool", "gpu"])).unwrap() {
            Scheduled::Submit(a) => {
                assert_eq!(a.task.shell.as_deref(), Some("make"));
                assert_eq!(a.pool.as_deref(), Some("gpu"));
            }
            other => panic!("{other:?}"),
        }
        match parse_scheduled(&words(&["launch", "-t", "t3.micro", "--ttl", "2h"])).unwrap() {
            Scheduled::Launch(a) => assert_eq!(a.ttl, "2h"),
            other => panic!("{other:?}"),
        }
        for (bad, needle) in [
            (
                &["submit", "--queue-url", "http://q", "--shell", "x"][..],
                "--queue-url",
            ),
            (&["submit", "--bucket", "b", "--shell", "x"], "--bucket"),
            (&["submit", "--nope"], "--nope"),
            (&["stats"], "stats"),
            (&["launch"], "--instance-type"),
        ] {
            let err = parse_scheduled(&words(bad)).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }
}
