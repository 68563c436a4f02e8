//! `lease launch`: validate everything, resolve the AMI and owner, launch in one call,
//! report every instance launched even when a later step fails.

use std::time::Duration;

use lease_common::config::AgentConfig;
use lease_common::stack::STACK_TAG;
use lease_common::tags::{EXPIRES_AT, MANAGED};

use crate::cli::{LaunchArgs, OutputFormat};
use crate::cloud::{Cloud, Instance, Query};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::plan::{self, LeaseTerms, Resolved};
use crate::profile::StackOutputs;
use crate::userdata::{self, AgentSource};

/// How long `--wait` waits for every instance to be running.
const WAIT_LIMIT: Duration = Duration::from_secs(600);
const WAIT_EVERY: Duration = Duration::from_secs(2);

/// Everything read from local files, checked before any API call.
#[derive(Debug)]
struct LocalInputs {
    terms: LeaseTerms,
    agent_config: AgentConfig,
    extra_user_data: Option<String>,
}

fn read_local(args: &LaunchArgs, yes: bool) -> Result<LocalInputs> {
    let terms = LeaseTerms::from_args(args, yes)?;
    let agent_config = match &args.agent_config {
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
    Ok(LocalInputs {
        terms,
        agent_config,
        extra_user_data,
    })
}

fn agent_source(args: &LaunchArgs, arch: &str) -> Option<AgentSource> {
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
    let mut local = read_local(args, ctx.yes)?;
    let stacked;
    let args = match stack {
        Some(s) => {
            stacked = apply_stack(args, &mut local.agent_config, s)?;
            &stacked
        }
        None => args,
    };
    let stack_tag = |plan: &mut plan::LaunchPlan| {
        if let Some(s) = stack {
            for spec in &mut plan.tag_specifications {
                spec.tags.push(plan::KeyValue {
                    key: STACK_TAG.to_string(),
                    value: s.stack.clone(),
                });
            }
        }
    };
    let client_token = uuid::Uuid::new_v4().to_string();

    if args.dry_run {
        // No API call at all: what AWS would resolve is shown as the placeholder EC2
        // itself accepts (`resolve:ssm:`), and the owner as who it would be.
        let arch = "x86_64";
        let resolved = Resolved {
            image_id: args
                .ami
                .clone()
                .unwrap_or_else(|| format!("resolve:ssm:{}", plan::al2023_parameter(arch))),
            owner: args
                .owner
                .clone()
                .unwrap_or_else(|| "<your AWS identity>".into()),
            user_data: userdata::render(
                &local.agent_config,
                agent_source(args, arch).as_ref(),
                local.extra_user_data.as_deref(),
            )?,
            client_token,
        };
        let mut plan = plan::build(args, &local.terms, resolved, ctx.now)?;
        stack_tag(&mut plan);
        eprintln!(
            "Dry run: this is the RunInstances request lease would send; nothing was called."
        );
        return output::print_json(&plan);
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
    let user_data = userdata::render(
        &local.agent_config,
        agent_source(args, &arch).as_ref(),
        local.extra_user_data.as_deref(),
    )?;
    let mut plan = plan::build(
        args,
        &local.terms,
        Resolved {
            image_id,
            owner,
            user_data,
            client_token,
        },
        ctx.now,
    )?;
    stack_tag(&mut plan);

    let launched = cloud.run_instances(&plan).await?;
    let market = if args.on_demand { "on-demand" } else { "spot" };
    let deadline = plan.tag_specifications[0]
        .tags
        .iter()
        .find(|t| t.key == EXPIRES_AT)
        .map(|t| t.value.clone())
        .unwrap_or_else(|| "none".into());
    eprintln!(
        "Launched {} {market} {} in {} (deadline {deadline}).",
        launched.len(),
        args.instance_type,
        cloud.region()
    );
    // Report what exists before anything else can fail, so no instance goes unreported.
    report(ctx, &launched)?;
    if launched.len() < plan.min_count as usize {
        return Err(Error::Aws {
            what: format!("Launch of {} x {}", plan.min_count, args.instance_type),
            message: format!("EC2 launched only {} (listed above)", launched.len()),
        });
    }
    if args.wait {
        wait_running(cloud, &launched).await?;
    }
    Ok(())
}

fn report(ctx: &Ctx, launched: &[Instance]) -> Result<()> {
    match ctx.output {
        // One id per line: what scripts capture with $(lease launch …).
        OutputFormat::Table => {
            let ids: String = launched.iter().map(|i| format!("{}\n", i.id)).collect();
            output::print(&ids)
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
