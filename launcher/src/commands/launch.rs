//! `lease launch`: validate everything, resolve the AMI and owner, launch in one call,
//! report every instance launched even when a later step fails.
//!
//! With a task (`--shell`, `--image`, `--claude`) every instance runs one task of its
//! own, carried in its user-data's agent config. Each gets its own task id, because the
//! id keys the task's record, log and claim; user-data differs per instance, so a task
//! launch is one RunInstances call per instance rather than one for all.

use std::time::Duration;

use lease_common::config::AgentConfig;
use lease_common::messages::Task;
use lease_common::stack::STACK_TAG;
use lease_common::tags::{EXPIRES_AT, MANAGED};
use serde::Serialize;

use crate::cli::{LaunchArgs, OutputFormat};
use crate::cloud::{Cloud, Instance, Query};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::plan::{self, LaunchPlan, LeaseTerms, Resolved};
use crate::profile::StackOutputs;
use crate::userdata::{self, AgentSource};

/// How long `--wait` waits for every instance to be running.
const WAIT_LIMIT: Duration = Duration::from_secs(600);
const WAIT_EVERY: Duration = Duration::from_secs(2);

/// Everything read from local files, checked before any API call.
#[derive(Debug)]
pub(crate) struct LocalInputs {
    pub(crate) terms: LeaseTerms,
    pub(crate) agent_config: AgentConfig,
    pub(crate) extra_user_data: Option<String>,
    /// One per instance, in launch order; empty for a launch without a task. A task
    /// from `--agent-config` is moved here, so both ways follow the same rules.
    pub(crate) tasks: Vec<Task>,
}

/// A flag that also fills an agent config key: both given and different is an error,
/// rather than one silently winning.
fn merge(
    key: &str,
    flag: &str,
    from_file: &mut Option<String>,
    from_flag: Option<&String>,
) -> Result<()> {
    match (from_file.as_ref(), from_flag) {
        (Some(a), Some(b)) if a != b => Err(Error::usage(format!(
            "{flag} '{b}' disagrees with '{key}: {a}' in --agent-config; give one"
        ))),
        (None, Some(b)) => {
            *from_file = Some(b.clone());
            Ok(())
        }
        _ => Ok(()),
    }
}

pub(crate) fn read_local(args: &LaunchArgs, ctx: &Ctx) -> Result<LocalInputs> {
    let terms = LeaseTerms::from_args(args, ctx.yes)?;
    let mut agent_config = match &args.agent_config {
        Some(path) => {
            AgentConfig::load(path).map_err(|e| Error::usage(format!("--agent-config: {e}")))?
        }
        None => AgentConfig::default(),
    };
    let extra_user_data = args
        .user_data
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| {
                Error::io(
                    format!("Failed to read --user-data file '{}'", p.display()),
                    e,
                )
            })
        })
        .transpose()?;
    if let Some(job) = &args.job
        && job.trim().is_empty()
    {
        return Err(Error::usage("--job must not be empty"));
    }
    let from_file = agent_config.task.take();
    if from_file.is_some() && args.task.is_given() {
        return Err(Error::usage(
            "--agent-config already has a 'task'; give the task either there or as flags",
        ));
    }
    if from_file.is_some() && args.count > 1 {
        return Err(Error::usage(
            "--agent-config has a 'task' and --count is more than 1: each instance needs a \
             task id of its own, so give the task as flags (--shell, --image or --claude)",
        ));
    }
    let tasks = match from_file {
        Some(task) => vec![task],
        None if args.task.is_given() => {
            let random = uuid::Uuid::new_v4().simple().to_string();
            crate::submit::per_instance(&args.task, args.count as usize, ctx.now, &random)?
        }
        None => Vec::new(),
    };
    if !tasks.is_empty() {
        merge(
            "log-bucket",
            "--bucket",
            &mut agent_config.log_bucket,
            args.bucket.as_ref(),
        )?;
        merge(
            "tasks-table",
            "--tasks-table",
            &mut agent_config.tasks_table,
            args.tasks_table.as_ref(),
        )?;
    }
    Ok(LocalInputs {
        terms,
        agent_config,
        extra_user_data,
        tasks,
    })
}

/// The RunInstances requests: one for the whole count, or one per instance with its
/// own task. Every user-data is rendered (and size-checked) before any call.
fn plans(
    args: &LaunchArgs,
    local: &LocalInputs,
    arch: &str,
    image_id: &str,
    owner: &str,
    ctx: &Ctx,
) -> Result<Vec<(LaunchPlan, Option<String>)>> {
    let one = |args: &LaunchArgs, config: &AgentConfig| -> Result<LaunchPlan> {
        let user_data = userdata::render(
            config,
            agent_source(args, arch).as_ref(),
            local.extra_user_data.as_deref(),
        )?;
        plan::build(
            args,
            &local.terms,
            Resolved {
                image_id: image_id.to_string(),
                owner: owner.to_string(),
                user_data,
                client_token: uuid::Uuid::new_v4().to_string(),
            },
            ctx.now,
        )
    };
    if local.tasks.is_empty() {
        return Ok(vec![(one(args, &local.agent_config)?, None)]);
    }
    let single = LaunchArgs {
        count: 1,
        ..args.clone()
    };
    local
        .tasks
        .iter()
        .map(|task| {
            let config = AgentConfig {
                task: Some(task.clone()),
                ..local.agent_config.clone()
            };
            Ok((one(&single, &config)?, Some(task.id.clone())))
        })
        .collect()
}

pub(crate) fn agent_source(args: &LaunchArgs, arch: &str) -> Option<AgentSource> {
    args.agent_bucket.as_ref().map(|bucket| AgentSource {
        bucket: bucket.clone(),
        key: lease_common::layout::agent_deb_key(
            lease_common::VERSION,
            lease_common::layout::deb_arch(arch),
        ),
    })
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

pub async fn run<C: Cloud>(cloud: &C, ctx: &Ctx, args: &LaunchArgs) -> Result<()> {
    run_in_stack(cloud, ctx, args, None).await
}

/// Launches into `stack` when there is one (see [`apply_stack`]); the instances then
/// carry `lease:stack` too, so `lease teardown` knows they depend on it.
pub async fn run_in_stack<C: Cloud>(
    cloud: &C,
    ctx: &Ctx,
    args: &LaunchArgs,
    stack: Option<&StackOutputs>,
) -> Result<()> {
    let mut local = read_local(args, ctx)?;
    let stacked;
    let args = match stack {
        Some(s) => {
            stacked = apply_stack(args, &mut local.agent_config, s)?;
            &stacked
        }
        None => args,
    };
    if !local.tasks.is_empty() && local.agent_config.log_bucket.is_none() {
        return Err(Error::usage(
            "a launch with a task needs a bucket for the task's log and result bundle: \
             pass --bucket or set LEASE_BUCKET, or run `lease setup`",
        ));
    }
    let stack_tag = |plans: &mut Vec<(LaunchPlan, Option<String>)>| {
        if let Some(s) = stack {
            for (plan, _) in plans.iter_mut() {
                for spec in &mut plan.tag_specifications {
                    spec.tags.push(plan::KeyValue {
                        key: STACK_TAG.to_string(),
                        value: s.stack.clone(),
                    });
                }
            }
        }
    };

    if args.dry_run {
        // No API call at all: what AWS would resolve is shown as the placeholder EC2
        // itself accepts (`resolve:ssm:`), and the owner as who it would be.
        let arch = "x86_64";
        let image_id = args
            .ami
            .clone()
            .unwrap_or_else(|| format!("resolve:ssm:{}", plan::al2023_parameter(arch)));
        let owner = args
            .owner
            .clone()
            .unwrap_or_else(|| "<your AWS identity>".into());
        let mut plans = plans(args, &local, arch, &image_id, &owner, ctx)?;
        stack_tag(&mut plans);
        eprintln!(
            "Dry run: this is the RunInstances request lease would send; nothing was called."
        );
        return match plans.as_slice() {
            [(plan, _)] => output::print_json(plan),
            many => output::print_json(&many.iter().map(|(p, _)| p).collect::<Vec<_>>()),
        };
    }

    let archs = cloud.architectures(&args.instance_type).await?;
    let arch = plan::pick_arch(&archs).to_string();
    let image_id = match &args.ami {
        Some(ami) => ami.clone(),
        None => {
            let param = plan::al2023_parameter(&arch);
            let ami = cloud.parameter(&param).await?;
            tracing::info!("Using the latest Amazon Linux 2023 AMI {ami} ({arch}) from {param}");
            ami
        }
    };
    let owner = match &args.owner {
        Some(o) => o.clone(),
        None => plan::owner_from_arn(&cloud.caller_arn().await?),
    };
    let mut plans = plans(args, &local, &arch, &image_id, &owner, ctx)?;
    stack_tag(&mut plans);

    let mut launched: Vec<Launched> = Vec::new();
    let mut failure = None;
    for (plan, task_id) in &plans {
        match cloud.run_instances(plan).await {
            Ok(instances) => launched.extend(instances.into_iter().map(|instance| Launched {
                instance,
                task_id: task_id.clone(),
            })),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let wanted = args.count as usize;
    let market = if args.on_demand { "on-demand" } else { "spot" };
    let deadline = plans[0].0.tag_specifications[0]
        .tags
        .iter()
        .find(|t| t.key == EXPIRES_AT)
        .map(|t| t.value.clone())
        .unwrap_or_else(|| "none".into());
    if !launched.is_empty() {
        eprintln!(
            "Launched {} {market} {} in {} (deadline {deadline}).",
            launched.len(),
            args.instance_type,
            cloud.region()
        );
    }
    // Report what exists before anything else can fail, so no instance goes unreported.
    report(ctx, &launched)?;
    if let Some(e) = failure {
        if launched.is_empty() {
            return Err(e);
        }
        return Err(Error::Aws {
            what: format!("Launch of {wanted} x {}", args.instance_type),
            message: format!("stopped after {} (listed above): {e}", launched.len()),
        });
    }
    if launched.len() < wanted {
        return Err(Error::Aws {
            what: format!("Launch of {wanted} x {}", args.instance_type),
            message: format!("EC2 launched only {} (listed above)", launched.len()),
        });
    }
    if let Some(bucket) = local.agent_config.log_bucket.as_deref()
        && !local.tasks.is_empty()
    {
        eprintln!(
            "Each instance runs its task once, uploads the log and bundle to s3://{bucket}/, \
             then ends its lease ({}). Follow one with `lease logs TASK -f`.",
            args.on_complete
        );
    }
    if args.wait {
        let instances: Vec<Instance> = launched.into_iter().map(|l| l.instance).collect();
        wait_running(cloud, &instances).await?;
    }
    Ok(())
}

/// One launched instance, and the task it runs when launched with one.
#[derive(Debug, Serialize)]
struct Launched {
    #[serde(flatten)]
    instance: Instance,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
}

fn report(ctx: &Ctx, launched: &[Launched]) -> Result<()> {
    match ctx.output {
        // One id per line, and its task beside it: what scripts capture with
        // $(lease launch …) or `lease launch … | while read instance task`.
        OutputFormat::Table => {
            let lines: String = launched
                .iter()
                .map(|l| match &l.task_id {
                    Some(t) => format!("{} {t}\n", l.instance.id),
                    None => format!("{}\n", l.instance.id),
                })
                .collect();
            output::print(&lines)
        }
        OutputFormat::Json => output::print_json(&launched),
    }
}

async fn wait_running<C: Cloud>(cloud: &C, launched: &[Instance]) -> Result<()> {
    let ids: Vec<String> = launched.iter().map(|i| i.id.clone()).collect();
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let now = cloud
            .describe(&Query {
                ids: ids.clone(),
                filters: vec![(format!("tag:{MANAGED}"), vec!["true".into()])],
            })
            .await?;
        let running = now.iter().filter(|i| i.state == "running").count();
        let failed: Vec<&Instance> = now.iter().filter(|i| i.is_gone()).collect();
        let progress = format!("{running}/{} running", ids.len());
        if progress != last {
            eprintln!("{progress}");
            last = progress;
        }
        if !failed.is_empty() {
            let mut t = Table::new(["ID", "STATE"]);
            for f in &failed {
                t.row(vec![Cell::from(f.id.clone()), Cell::from(f.state.clone())]);
            }
            eprint!("{}", t.render(false));
            return Err(Error::Aws {
                what: "Waiting for instances to run".into(),
                message: format!(
                    "{} of {} instances ended before running (spot capacity reclaimed?)",
                    failed.len(),
                    ids.len()
                ),
            });
        }
        if running == ids.len() {
            return Ok(());
        }
        if start.elapsed() > WAIT_LIMIT {
            return Err(Error::Aws {
                what: "Waiting for instances to run".into(),
                message: format!(
                    "only {running} of {} running after {WAIT_LIMIT:?}",
                    ids.len()
                ),
            });
        }
        tokio::time::sleep(WAIT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::fake::FakeCloud;
    use clap::Parser;

    fn launch_args(extra: &[&str]) -> LaunchArgs {
        let mut argv = vec!["lease", "launch", "-t", "t3.micro"];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            crate::cli::Command::Launch(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            output: OutputFormat::Json,
            yes: false,
            color: false,
            now: chrono::Utc::now(),
        }
    }

    fn stack() -> StackOutputs {
        let pool = |p: &str| crate::profile::PoolOutputs {
            queue_url: format!("https://sqs/lease-main-pool-{p}"),
            dead_letter_queue_url: format!("https://sqs/lease-main-dlq-{p}"),
        };
        StackOutputs {
            stack: "main".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            command_topic_arn: "arn:aws:sns:eu-west-1:123456789012:lease-main-commands".into(),
            bus_topic_arn: "arn:aws:sns:eu-west-1:123456789012:lease-main-bus".into(),
            pools: [
                ("default".into(), pool("default")),
                ("gpu".into(), pool("gpu")),
            ]
            .into(),
            events_queue_url: "https://sqs/lease-main-events".into(),
            bucket: "lease-main-123456789012-eu-west-1".into(),
            nodes_table: "lease-main-nodes".into(),
            tasks_table: "lease-main-tasks".into(),
            agent_role: "lease-main-agent".into(),
            instance_profile: "lease-main-agent".into(),
            agent_packages: vec![],
            reaper_function_arn: None,
            claude_auth: Default::default(),
        }
    }

    #[test]
    fn a_stack_fills_only_what_flags_and_agent_config_left_unset() {
        let mut config = AgentConfig {
            log_bucket: Some("mine".into()),
            ..Default::default()
        };
        let args = apply_stack(&launch_args(&["--pool", "gpu"]), &mut config, &stack()).unwrap();
        assert_eq!(
            args.iam_instance_profile.as_deref(),
            Some("lease-main-agent")
        );
        assert_eq!(
            args.agent_bucket.as_deref(),
            Some("lease-main-123456789012-eu-west-1")
        );
        assert_eq!(
            config.queue_url.as_deref(),
            Some("https://sqs/lease-main-pool-gpu")
        );
        assert_eq!(config.log_bucket.as_deref(), Some("mine"));
        assert_eq!(config.pool.as_deref(), Some("gpu"));
        assert_eq!(config.tasks_table.as_deref(), Some("lease-main-tasks"));

        let mut config = AgentConfig::default();
        let args = apply_stack(
            &launch_args(&["--iam-instance-profile", "other"]),
            &mut config,
            &stack(),
        )
        .unwrap();
        assert_eq!(args.iam_instance_profile.as_deref(), Some("other"));
        assert_eq!(
            config.queue_url.as_deref(),
            Some("https://sqs/lease-main-pool-default")
        );

        let err = apply_stack(&launch_args(&["--pool", "tpu"]), &mut config, &stack()).unwrap_err();
        assert!(
            err.to_string().contains("'tpu'") && err.to_string().contains("default, gpu"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_short_launch_is_reported_and_fails() {
        let cloud = FakeCloud {
            launch_limit: Some(2),
            ..FakeCloud::new("us-east-1")
        };
        let err = run(&cloud, &ctx(), &launch_args(&["--count", "3"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only 2"), "{err}");
        // The two that did launch carry every lease tag: nothing is left untagged.
        let all = cloud.instances.lock().unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .all(|i| i.tags.get(MANAGED).map(String::as_str) == Some("true")
                    && i.tags.contains_key(EXPIRES_AT))
        );
    }

    #[tokio::test]
    async fn bad_input_launches_nothing() {
        let cloud = FakeCloud::new("us-east-1");
        for bad in [&["--ttl", "soon"][..], &["--ttl", "none"], &["--job", ""]] {
            assert!(run(&cloud, &ctx(), &launch_args(bad)).await.is_err());
        }
        let mut a = launch_args(&[]);
        a.user_data = Some("/nonexistent/user-data.sh".into());
        let err = run(&cloud, &ctx(), &a).await.unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/user-data.sh"),
            "{err}"
        );
        assert!(cloud.launched.lock().unwrap().is_empty());
    }

    fn task_in(plan: &LaunchPlan) -> Task {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&plan.user_data).unwrap();
        let content = doc["write_files"][0]["content"].as_str().unwrap();
        let config = AgentConfig::from_yaml(std::path::Path::new("user-data"), content).unwrap();
        assert_eq!(config.log_bucket.as_deref(), Some("ctl"));
        config.task.unwrap()
    }

    #[tokio::test]
    async fn each_instance_gets_a_task_of_its_own() {
        let cloud = FakeCloud::new("us-east-1");
        let a = launch_args(&["--count", "3", "--shell", "make", "--bucket", "ctl"]);
        run(&cloud, &ctx(), &a).await.unwrap();
        let plans = cloud.launched.lock().unwrap();
        assert_eq!(plans.len(), 3, "one call per instance");
        let ids: std::collections::BTreeSet<String> = plans.iter().map(|p| task_in(p).id).collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert!(plans.iter().all(|p| p.min_count == 1 && p.max_count == 1));
        let tokens: std::collections::BTreeSet<&str> =
            plans.iter().map(|p| p.client_token.as_str()).collect();
        assert_eq!(
            tokens.len(),
            3,
            "a retry of one launch never repeats another"
        );
    }

    #[tokio::test]
    async fn a_task_launch_without_a_bucket_launches_nothing() {
        let cloud = FakeCloud::new("us-east-1");
        let err = run(&cloud, &ctx(), &launch_args(&["--shell", "make"]))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--bucket"), "{err}");
        let huge = "x".repeat(userdata::MAX_USER_DATA);
        let err = run(
            &cloud,
            &ctx(),
            &launch_args(&["--shell", &huge, "--bucket", "ctl"]),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("lease submit"), "{err}");
        assert!(cloud.launched.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_task_in_the_agent_config_follows_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "task:\n  v: 1\n  id: nightly\n  kind: shell\n  command: make\n",
        )
        .unwrap();
        let cloud = FakeCloud::new("us-east-1");
        let with = |extra: &[&str]| {
            let mut a = launch_args(extra);
            a.agent_config = Some(path.clone());
            a
        };
        for (flags, needle) in [
            (&["--count", "2", "--bucket", "ctl"][..], "--count"),
            (&[], "--bucket"),
            (
                &["--bucket", "ctl", "--shell", "x"],
                "either there or as flags",
            ),
        ] {
            let err = run(&cloud, &ctx(), &with(flags)).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{flags:?}: {err}");
        }
        assert!(cloud.launched.lock().unwrap().is_empty());
        run(&cloud, &ctx(), &with(&["--bucket", "ctl"]))
            .await
            .unwrap();
        assert_eq!(task_in(&cloud.launched.lock().unwrap()[0]).id, "nightly");
    }

    #[tokio::test]
    async fn owner_defaults_to_the_callers_identity() {
        let cloud = FakeCloud::new("us-east-1");
        run(&cloud, &ctx(), &launch_args(&[])).await.unwrap();
        let plans = cloud.launched.lock().unwrap();
        let owner = plans[0].tag_specifications[0]
            .tags
            .iter()
            .find(|t| t.key == lease_common::tags::OWNER)
            .map(|t| t.value.clone());
        assert_eq!(owner.as_deref(), Some("tester"));
        assert_eq!(plans[0].image_id, "ami-fake");
    }
}
