//! Where each command's resources are: the flag (or its environment variable, which
//! clap reads into the flag), else the active stack's value from the settings file.
//! `dispatch` resolves them here, once, before a command runs, and commands take the
//! resolved values. The stack is read only when a command has a value left to default,
//! so a command given every flag never reads the settings file.

use lease_common::config::AgentConfig;
use lease_common::stack::{DEFAULT_STACK, Location, Stack};

use crate::aws::Cloud;

use crate::cli::{
    DownloadArgs, LaunchArgs, LogsArgs, NodesArgs, StatsArgs, SubmitArgs, TasksArgs, WorkArgs,
};
use crate::error::{Error, Result};
use crate::settings::{Settings, StackOutputs};

/// No queue named, and no stack set up to take one from.
pub fn no_queue() -> Error {
    Error::usage(
        "No task queue: pass --queue-url or set LEASE_QUEUE_URL, or run `lease setup` to create a stack",
    )
}

/// No bucket named, and no stack set up to take one from.
pub fn no_bucket() -> Error {
    Error::usage(
        "No bucket: pass --bucket or set LEASE_BUCKET, or run `lease setup` to create a stack",
    )
}

/// The stack recorded by `lease setup` for this region (`LEASE_STACK`, else the
/// default stack).
pub fn stack_in(region: &str) -> Result<Option<StackOutputs>> {
    Ok(crate::settings::active_stack(region)?)
}

/// The DynamoDB tables a command uses: the flag (or its environment variable) when
/// given, else the active stack's. For `lease tasks` / `lease nodes` and the
/// `--tasks-table` / `--nodes-table` flags.
pub fn tables(
    tasks_flag: Option<&str>,
    nodes_flag: Option<&str>,
    stack: Option<&StackOutputs>,
) -> (Option<String>, Option<String>) {
    (
        tasks_flag
            .map(str::to_string)
            .or_else(|| stack.map(|s| s.tasks_table.clone())),
        nodes_flag
            .map(str::to_string)
            .or_else(|| stack.map(|s| s.nodes_table.clone())),
    )
}

/// Where tasks go: a queue named by `--queue-url`, or a stack's command topic, whose
/// subscriptions route each task to its pool's queue by the `pool` attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Queue(String),
    Topic {
        arn: String,
        /// The pools the stack has queues for: a task for any other would be dropped
        /// by every subscription's filter, so it is refused before sending.
        pools: Vec<String>,
    },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Queue(url) => f.write_str(url),
            Destination::Topic { arn, .. } => write!(f, "topic {arn}"),
        }
    }
}

/// Where tasks go and which bucket takes oversized ones: `--queue-url` when given
/// (tasks go straight to that queue), else the stack's command topic; the bucket
/// flag, else the stack's.
pub fn destination(
    work: &WorkArgs,
    stack: Option<&StackOutputs>,
) -> Result<(Destination, Option<String>)> {
    let bucket = work
        .bucket
        .clone()
        .or_else(|| stack.map(|s| s.bucket.clone()));
    let to = match (&work.queue_url, stack) {
        (Some(url), _) => Destination::Queue(url.clone()),
        (None, Some(s)) => Destination::Topic {
            arn: s.command_topic_arn.clone(),
            pools: s.pools.keys().cloned().collect(),
        },
        (None, None) => return Err(no_queue()),
    };
    Ok((to, bucket))
}

/// What a stack from `lease setup` supplies that the flags and `--agent-config` left
/// unset: the instance profile, the bucket with the agent package, and the agent's
/// queue (the `--pool`'s), control bus, log bucket and tables.
pub fn apply_stack(
    args: &LaunchArgs,
    config: &mut AgentConfig,
    stack: &StackOutputs,
) -> Result<LaunchArgs> {
    let pool = args
        .pool
        .clone()
        .unwrap_or_else(|| lease_common::stack::DEFAULT_POOL.to_string());
    let queues = stack.pool(Some(&pool)).ok_or_else(|| {
        Error::usage(format!(
            "--pool '{pool}': stack '{}' has no queue for it (pools: {}); run `lease setup --pool {pool}` first",
            stack.stack,
            stack.pool_names()
        ))
    })?;
    let fill = |field: &mut Option<String>, value: &str| {
        field.get_or_insert_with(|| value.to_string());
    };
    fill(&mut config.queue_url, &queues.queue_url);
    fill(&mut config.topic_arn, &stack.bus_topic_arn);
    fill(&mut config.log_bucket, &stack.bucket);
    fill(&mut config.tasks_table, &stack.tasks_table);
    fill(&mut config.nodes_table, &stack.nodes_table);
    fill(&mut config.pool, &pool);
    fill(&mut config.region, &stack.region);
    let mut args = args.clone();
    fill(&mut args.iam_instance_profile, &stack.instance_profile);
    fill(&mut args.agent_bucket, &stack.bucket);
    Ok(args)
}

/// `lease submit`: the destination, the bucket for oversized tasks and the task table.
pub fn submit(args: &SubmitArgs, region: &str) -> Result<(SubmitArgs, Destination)> {
    let stack = if args.work.queue_url.is_some()
        && args.work.bucket.is_some()
        && args.table.tasks_table.is_some()
    {
        None
    } else {
        stack_in(region)?
    };
    let (to, bucket) = destination(&args.work, stack.as_ref())?;
    let mut args = args.clone();
    args.work.bucket = bucket;
    (args.table.tasks_table, _) = tables(args.table.tasks_table.as_deref(), None, stack.as_ref());
    Ok((args, to))
}

/// `lease stats`: the default pool's queue and the task table.
pub fn stats(args: &StatsArgs, region: &str) -> Result<StatsArgs> {
    let mut args = args.clone();
    if args.work.queue_url.is_none() || args.table.tasks_table.is_none() {
        let stack = stack_in(region)?;
        if args.work.queue_url.is_none() {
            args.work.queue_url = stack
                .as_ref()
                .and_then(|s| s.pool(None).map(|p| p.queue_url.clone()));
        }
        (args.table.tasks_table, _) =
            tables(args.table.tasks_table.as_deref(), None, stack.as_ref());
    }
    Ok(args)
}

/// `lease tasks`: the task table.
pub fn tasks(args: &TasksArgs, region: &str) -> Result<TasksArgs> {
    let mut args = args.clone();
    if args.tasks_table.is_none() {
        (args.tasks_table, _) = tables(None, None, stack_in(region)?.as_ref());
    }
    Ok(args)
}

/// `lease nodes`: the node table.
pub fn nodes(args: &NodesArgs, region: &str) -> Result<NodesArgs> {
    let mut args = args.clone();
    if args.nodes_table.is_none() {
        (_, args.nodes_table) = tables(None, None, stack_in(region)?.as_ref());
    }
    Ok(args)
}

/// `lease logs`: the bucket and the task table.
pub fn logs(args: &LogsArgs, region: &str) -> Result<LogsArgs> {
    let mut args = args.clone();
    let stack = stack_in(region)?;
    if args.bucket.is_none() {
        args.bucket = stack.as_ref().map(|s| s.bucket.clone());
    }
    if args.tasks_table.is_none() {
        (args.tasks_table, _) = tables(None, None, stack.as_ref());
    }
    Ok(args)
}

/// `lease download`: the bucket.
pub fn download(args: &DownloadArgs, region: &str) -> Result<DownloadArgs> {
    let mut args = args.clone();
    if args.bucket.is_none() {
        args.bucket = stack_in(region)?.map(|s| s.bucket);
    }
    Ok(args)
}

/// `--stack`, else the settings' default stack, else `main`; checked.
pub fn stack_name(flag: Option<&str>, settings: &Settings) -> Result<Stack> {
    let name = flag
        .or(settings.default_stack.as_deref())
        .unwrap_or(DEFAULT_STACK);
    Stack::new(name).map_err(|e| Error::usage(e.to_string()))
}

/// Partition and account from the caller's ARN (`arn:aws:sts::123456789012:…`).
pub async fn location<C: Cloud>(cloud: &C) -> Result<Location> {
    if cloud.region().is_empty() {
        return Err(Error::usage(
            "No AWS region: pass --region or set AWS_REGION",
        ));
    }
    let arn = cloud.caller_arn().await?;
    let mut parts = arn.split(':');
    let partition = parts.nth(1).unwrap_or_default();
    let account = parts.nth(2).unwrap_or_default();
    Location::new(partition, account, cloud.region()).map_err(|e| Error::Aws {
        what: format!("Caller identity '{arn}'"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::WorkArgs;
    use crate::settings::PoolOutputs;

    fn stack() -> StackOutputs {
        StackOutputs {
            stack: "main".into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            command_topic_arn: "arn:aws:sns:us-east-1:123456789012:lease-main-commands".into(),
            bus_topic_arn: "arn:aws:sns:us-east-1:123456789012:lease-main-bus".into(),
            pools: [(
                "default".to_string(),
                PoolOutputs {
                    queue_url: "https://q/default".into(),
                    dead_letter_queue_url: "https://q/dlq".into(),
                },
            )]
            .into(),
            events_queue_url: "https://q/events".into(),
            bucket: "stack-bucket".into(),
            nodes_table: "lease-main-nodes".into(),
            tasks_table: "lease-main-tasks".into(),
            agent_role: "lease-main-agent".into(),
            instance_profile: "lease-main-agent".into(),
            agent_packages: vec![],
            reaper_function_arn: None,
            claude_auth: Default::default(),
        }
    }

    fn work(queue: Option<&str>, bucket: Option<&str>) -> WorkArgs {
        WorkArgs {
            queue_url: queue.map(str::to_string),
            bucket: bucket.map(str::to_string),
        }
    }

    #[test]
    fn a_named_queue_wins_and_the_stack_fills_the_rest() {
        let (to, bucket) =
            destination(&work(Some("https://q/mine"), None), Some(&stack())).unwrap();
        assert_eq!(to, Destination::Queue("https://q/mine".into()));
        assert_eq!(bucket.as_deref(), Some("stack-bucket"));

        let (to, bucket) = destination(&work(None, Some("b")), Some(&stack())).unwrap();
        assert_eq!(
            to,
            Destination::Topic {
                arn: "arn:aws:sns:us-east-1:123456789012:lease-main-commands".into(),
                pools: vec!["default".into()],
            }
        );
        assert_eq!(bucket.as_deref(), Some("b"));

        let err = destination(&work(None, None), None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("lease setup"), "{err}");
        let (to, bucket) = destination(&work(Some("https://q/x"), None), None).unwrap();
        assert_eq!(to, Destination::Queue("https://q/x".into()));
        assert_eq!(bucket, None);
    }

    #[test]
    fn table_flags_win_over_the_stack() {
        let o = stack();
        assert_eq!(
            tables(Some("t"), None, Some(&o)),
            (Some("t".into()), Some("lease-main-nodes".into()))
        );
        assert_eq!(tables(None, None, None), (None, None));
    }
}
