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

use crate::aws::Cloud;
use crate::aws::ec2::{Instance, Query};
use crate::cli::{LaunchArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table};
use crate::plan::{self, BlockDeviceMapping, ImageInfo, LaunchPlan, LeaseTerms, Resolved};
use crate::profile::StackOutputs;
use crate::quota::{self, LaunchFailure};
use crate::userdata::{self, AgentSource};

/// How long `--wait` waits for every instance to be running.
const WAIT_LIMIT: Duration = Duration::from_secs(600);
const WAIT_EVERY: Duration = Duration::from_secs(2);

/// The pauses between RunInstances attempts while a new instance profile propagates:
/// about a minute in all. IAM usually makes a new profile visible to EC2 within
/// seconds, sometimes tens of seconds; longer than a minute means something else is
/// wrong (the profile does not exist), and the error is then reported as it is.
const PROFILE_RETRY: [Duration; 6] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(15),
];

/// Everything read from local files, checked before any API call.
#[derive(Debug)]
pub struct LocalInputs {
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

pub fn read_local(args: &LaunchArgs, ctx: &Ctx) -> Result<LocalInputs> {
    let terms = LeaseTerms::from_args(args, ctx.yes)?;
    // The tag values too (a --job or --name too long for a tag), with a stand-in for
    // the owner, which is known only once AWS says who the caller is.
    plan::lease_tags(args, &terms, "-", ctx.now)?;
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
    if let Some(slots) = args.slots {
        // The config's default is 1: a file that says anything else said it on purpose.
        let in_file = agent_config.max_concurrent_tasks;
        if in_file != AgentConfig::default().max_concurrent_tasks && in_file != slots {
            return Err(Error::usage(format!(
                "--slots {slots} disagrees with 'max-concurrent-tasks: {in_file}' in --agent-config; give one"
            )));
        }
        agent_config.max_concurrent_tasks = slots;
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

/// The image, its root volume and where the agent comes from: everything a launch
/// resolves from AWS with read-only calls, so `--dry-run` shows the real choice.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub arch: String,
    pub image: ImageInfo,
    /// What the image is and where its id came from, for the line on stderr.
    pub source: String,
    pub root_volume: BlockDeviceMapping,
    /// `None` when the image carries the agent already.
    pub agent: Option<AgentSource>,
}

/// Chooses the image for the type (see [`plan::default_image`]) unless `--ami` names
/// one, sizes its root volume, and finds the agent package for its architecture:
/// refused (exit 4) before anything launches when neither the image nor a package can
/// provide the agent, since an instance without one is never ended but by the reaper.
pub async fn choose<C: Cloud>(cloud: &C, args: &LaunchArgs, terms: &LeaseTerms) -> Result<Chosen> {
    let info = cloud.type_info(&args.instance_type).await?;
    let choice = plan::default_image(&info);
    let (image_id, source) = match &args.ami {
        // EC2's own placeholder for a parameter, resolved here so the image can be
        // looked at (architecture, root device, whether it carries the agent).
        Some(ami) if ami.starts_with("resolve:ssm:") => {
            let param = &ami["resolve:ssm:".len()..];
            (
                cloud.parameter(param).await?,
                format!("--ami, from {param}"),
            )
        }
        Some(ami) => (ami.clone(), "--ami".to_string()),
        None => {
            let ami = cloud.parameter(&choice.parameter).await?;
            let source = format!("latest {}, from {}", choice.description, choice.parameter);
            (ami, source)
        }
    };
    let image = cloud.image(&image_id).await?;
    let arch = match image.architecture.as_deref() {
        Some(a) if !info.architectures.iter().any(|t| t == a) => {
            return Err(Error::usage(format!(
                "image {image_id} is built for {a}, but instance type '{}' runs {}",
                args.instance_type,
                info.architectures.join(", ")
            )));
        }
        Some(a) => a.to_string(),
        None => choice.arch.clone(),
    };
    let root_volume = plan::root_volume(args, terms, &info, &image, choice.root_gib)?;
    let agent = agent_for(cloud, args, &arch, &image).await?;
    Ok(Chosen {
        arch,
        image,
        source,
        root_volume,
        agent,
    })
}

/// Where the agent comes from: nowhere when the image carries it; else the package for
/// `arch` in the bucket named (by `--agent-bucket`, or the stack's), with the digest
/// `lease setup` recorded beside it; else a refusal that says what to do.
async fn agent_for<C: Cloud>(
    cloud: &C,
    args: &LaunchArgs,
    arch: &str,
    image: &ImageInfo,
) -> Result<Option<AgentSource>> {
    if image.carries_agent() {
        return Ok(None);
    }
    if let Some(source) = package(cloud, args, arch).await? {
        return Ok(Some(source));
    }
    let deb_arch = lease_common::layout::deb_arch(arch);
    let wanted = lease_common::layout::agent_deb_key(lease_common::VERSION, deb_arch);
    let place = match &args.agent_bucket {
        Some(bucket) => format!("no agent package for {arch} at s3://{bucket}/{wanted}"),
        None => format!("no agent package for {arch}: no stack or --agent-bucket names a bucket"),
    };
    Err(Error::Refused(format!(
        "{place}, and image {} ({}) does not carry leased: an instance of type {} would boot \
         without an agent, so nothing was launched. Run `lease setup` (it builds and uploads \
         the {deb_arch} package), pass --agent-bucket with a bucket holding {wanted}, or launch \
         an image with leased baked in (see ami/) with --ami",
        image.id,
        if image.name.is_empty() {
            "no name"
        } else {
            image.name.as_str()
        },
        args.instance_type,
    )))
}

/// The agent package for `arch` in `--agent-bucket` (or the stack's bucket) and its
/// recorded digest, when it is there.
async fn package<C: Cloud>(
    cloud: &C,
    args: &LaunchArgs,
    arch: &str,
) -> Result<Option<AgentSource>> {
    let Some(bucket) = args.agent_bucket.as_ref() else {
        return Ok(None);
    };
    let deb_arch = lease_common::layout::deb_arch(arch);
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, deb_arch);
    Ok(cloud
        .agent_package_sha256(bucket, &key)
        .await?
        .map(|sha256| AgentSource {
            bucket: bucket.clone(),
            key,
            sha256,
            arch: deb_arch.to_string(),
        }))
}

/// The RunInstances requests: one for the whole count, or one per instance with its
/// own task. Every user-data is rendered (and size-checked) before any call.
fn plans(
    args: &LaunchArgs,
    local: &LocalInputs,
    chosen: &Chosen,
    owner: &str,
    ctx: &Ctx,
) -> Result<Vec<(LaunchPlan, Option<String>)>> {
    let one = |args: &LaunchArgs, config: &AgentConfig| -> Result<LaunchPlan> {
        let user_data = userdata::render(
            config,
            chosen.agent.as_ref(),
            local.extra_user_data.as_deref(),
        )?;
        plan::build(
            args,
            &local.terms,
            Resolved {
                image_id: chosen.image.id.clone(),
                root_volume: Some(chosen.root_volume.clone()),
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

/// The agent for a scheduled launch, whose image EC2 resolves at each run so it cannot
/// be checked for a baked agent: the package for `arch` with its digest. Without one, a
/// launch on the default AMI is refused (exit 4): the instance would boot without an
/// agent and nothing but the reaper would end it.
pub(crate) async fn agent_source<C: Cloud>(
    cloud: &C,
    args: &LaunchArgs,
    arch: &str,
) -> Result<Option<AgentSource>> {
    let Some(bucket) = args.agent_bucket.as_ref() else {
        return Ok(None);
    };
    if let Some(source) = package(cloud, args, arch).await? {
        return Ok(Some(source));
    }
    let deb_arch = lease_common::layout::deb_arch(arch);
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, deb_arch);
    if args.ami.is_some() {
        // An image of the user's own may carry the agent (ami/ bakes one); the
        // user-data then only starts it.
        eprintln!(
            "No agent package at s3://{bucket}/{key}: the instances start the agent only if \
             --ami carries it"
        );
        return Ok(None);
    }
    Err(Error::Refused(format!(
        "no agent package for {arch} ({deb_arch}) at s3://{bucket}/{key}: an instance of \
         type {} would boot without an agent. Run `lease setup` from a checkout of this \
         lease version (it builds and uploads the package), or pass --ami with an image \
         that carries leased",
        args.instance_type
    )))
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
    let local = read_local(args, ctx)?;
    run_prepared(cloud, ctx, args, stack, local).await
}

/// [`run_in_stack`] with the local inputs already read and checked: `dispatch` reads
/// them before it loads any AWS configuration, so a bad flag is reported first, not
/// after a missing region or credentials.
pub async fn run_prepared<C: Cloud>(
    cloud: &C,
    ctx: &Ctx,
    args: &LaunchArgs,
    stack: Option<&StackOutputs>,
    mut local: LocalInputs,
) -> Result<()> {
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

    // Read-only calls from here until RunInstances, so a dry run makes them too and
    // shows the image, volume and agent a launch would really get.
    let chosen = choose(cloud, args, &local.terms).await?;
    eprintln!(
        "Image {} ({}, {}; {}), root volume {} GiB {}{}.",
        chosen.image.id,
        if chosen.image.name.is_empty() {
            "no name"
        } else {
            chosen.image.name.as_str()
        },
        chosen.arch,
        chosen.source,
        chosen.root_volume.ebs.volume_size,
        chosen.root_volume.ebs.volume_type,
        if chosen.root_volume.ebs.encrypted {
            " encrypted"
        } else {
            ""
        },
    );
    let owner = match &args.owner {
        Some(o) => o.clone(),
        None => plan::owner_from_arn(&cloud.caller_arn().await?),
    };
    let mut plans = plans(args, &local, &chosen, &owner, ctx)?;
    stack_tag(&mut plans);
    if args.dry_run {
        eprintln!(
            "Dry run: this is the RunInstances request lease would send; nothing was launched."
        );
        return match plans.as_slice() {
            [(plan, _)] => output::print_json(plan),
            many => output::print_json(&many.iter().map(|(p, _)| p).collect::<Vec<_>>()),
        };
    }

    let mut launched: Vec<Launched> = Vec::new();
    let mut failure = None;
    for (plan, task_id) in &plans {
        match run_instances(cloud, plan).await {
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

/// RunInstances, retried (bounded, saying why on stderr) while a new instance profile
/// propagates; a quota or capacity failure comes back with what to do about it.
async fn run_instances<C: Cloud>(cloud: &C, plan: &LaunchPlan) -> Result<Vec<Instance>> {
    let mut pauses = PROFILE_RETRY.iter();
    loop {
        let (what, message) = match cloud.run_instances(plan).await {
            Err(Error::Aws { what, message }) => (what, message),
            other => return other,
        };
        let failure = quota::classify(&message);
        if failure == LaunchFailure::ProfilePropagating {
            if let Some(pause) = pauses.next() {
                let profile = plan
                    .iam_instance_profile
                    .as_ref()
                    .and_then(|p| p.name.clone().or_else(|| p.arn.clone()))
                    .unwrap_or_default();
                eprintln!(
                    "Instance profile '{profile}' is not visible to EC2 yet (IAM takes up to a \
                     minute to propagate a new one); trying again in {}s",
                    pause.as_secs()
                );
                tokio::time::sleep(*pause).await;
                continue;
            }
            let waited: u64 = PROFILE_RETRY.iter().map(Duration::as_secs).sum();
            return Err(Error::Aws {
                what,
                message: format!(
                    "{message} (still after {waited}s of retries: check that the profile \
                     exists; `lease setup` creates the stack's)"
                ),
            });
        }
        let spot = plan.instance_market_options.is_some();
        let message = match quota::advice(&failure, &plan.instance_type, spot, cloud.region()) {
            Some(advice) => format!("{message}\n{advice}"),
            None => message,
        };
        return Err(Error::Aws { what, message });
    }
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
    let start = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        let query = Query {
            ids: ids.clone(),
            filters: vec![(format!("tag:{MANAGED}"), vec!["true".into()])],
        };
        let now = match cloud.describe(&query).await {
            Ok(now) => now,
            // EC2 is eventually consistent: for a few seconds after RunInstances the new
            // ids may be unknown to DescribeInstances. They are pending, not gone.
            Err(Error::Aws { message, .. })
                if message.starts_with("InvalidInstanceID.NotFound") =>
            {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
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
    use crate::aws::fake::FakeCloud;
    use crate::cli::Cli;
    use clap::Parser;
    use std::sync::Mutex;

    fn launch_args(extra: &[&str]) -> LaunchArgs {
        let mut argv = vec![
            "lease",
            "launch",
            "-t",
            "t3.micro",
            "--agent-bucket",
            "agents",
        ];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            crate::cli::Command::Launch(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// The flags without `--agent-bucket`, as a launch into a stack is given.
    fn bare_args(extra: &[&str]) -> LaunchArgs {
        LaunchArgs {
            agent_bucket: None,
            ..launch_args(extra)
        }
    }

    pub(super) fn ctx() -> Ctx {
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
        let args = apply_stack(&bare_args(&["--pool", "gpu"]), &mut config, &stack()).unwrap();
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
            &bare_args(&["--iam-instance-profile", "other"]),
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

    fn install_step(plan: &LaunchPlan) -> Option<String> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&plan.user_data).unwrap();
        doc["runcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c[1].as_str() == Some(userdata::INSTALL_SCRIPT_PATH))
            .map(|c| format!("s3://{}/{}", c[2].as_str().unwrap(), c[3].as_str().unwrap()))
    }

    #[tokio::test]
    async fn no_agent_for_the_architecture_refuses_before_run_instances() {
        let cloud = FakeCloud::new("us-east-1");
        // No stack, no --agent-bucket, and Amazon Linux does not carry leased.
        let err = run(&cloud, &ctx(), &bare_args(&[])).await.unwrap_err();
        assert_eq!(err.exit_code(), 4);
        let text = err.to_string();
        assert!(
            text.contains("x86_64") && text.contains("ami-fake") && text.contains("lease setup"),
            "{text}"
        );

        // A stack without the package for this architecture: refused, naming it.
        let s = stack();
        let arm64 = lease_common::layout::agent_deb_key(lease_common::VERSION, "arm64");
        let mut cloud = FakeCloud {
            agent_packages: [((s.bucket.clone(), arm64), "ab".repeat(32))].into(),
            ..FakeCloud::new("us-east-1")
        };
        let err = run_in_stack(&cloud, &ctx(), &bare_args(&[]), Some(&s))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(
            err.to_string().contains(&format!(
                "no agent package for x86_64 at s3://{}/agent/",
                s.bucket
            )),
            "{err}"
        );
        assert!(err.to_string().contains("_amd64.deb"), "{err}");
        // --dry-run is refused the same way: it shows what a launch would do.
        let err = run(&cloud, &ctx(), &bare_args(&["--dry-run"]))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(cloud.launched.lock().unwrap().is_empty());

        // With the package recorded, the install step fetches exactly that key.
        let amd64 = lease_common::layout::agent_deb_key(lease_common::VERSION, "amd64");
        cloud
            .agent_packages
            .insert((s.bucket.clone(), amd64.clone()), "ab".repeat(32));
        run_in_stack(&cloud, &ctx(), &bare_args(&[]), Some(&s))
            .await
            .unwrap();
        let plans = cloud.launched.lock().unwrap();
        let step = install_step(&plans[0]).unwrap();
        assert!(
            step.contains(&format!("s3://{}/{amd64}", s.bucket)),
            "{step}"
        );
    }

    #[tokio::test]
    async fn an_image_that_carries_the_agent_needs_no_package() {
        let mut image = crate::aws::ec2::fake::al2023_image("ami-baked");
        image.name = "lease-leased-0.1.0-x86_64-20261101-120000".into();
        let cloud = FakeCloud {
            images: [("ami-baked".to_string(), image)].into(),
            ..FakeCloud::new("us-east-1")
        };
        run(&cloud, &ctx(), &bare_args(&["--ami", "ami-baked"]))
            .await
            .unwrap();
        let first = cloud.launched.lock().unwrap()[0].clone();
        assert_eq!(first.image_id, "ami-baked");
        assert_eq!(install_step(&first), None);
        assert!(
            cloud.parameters_read.lock().unwrap().is_empty(),
            "--ami reads no parameter"
        );
        // EC2's placeholder for a parameter is resolved, so the image can be looked at.
        let cloud = FakeCloud {
            params: [("/team/leased-ami".to_string(), "ami-baked".to_string())].into(),
            ..cloud
        };
        run(
            &cloud,
            &ctx(),
            &bare_args(&["--ami", "resolve:ssm:/team/leased-ami"]),
        )
        .await
        .unwrap();
        let plans = cloud.launched.lock().unwrap();
        assert_eq!(plans.last().unwrap().image_id, "ami-baked");
        assert_eq!(install_step(plans.last().unwrap()), None);
    }

    #[tokio::test]
    async fn gpu_and_graviton_types_get_their_image_and_package() {
        let g5 = plan::TypeInfo {
            nvidia_gpus: 1,
            memory_mib: 16384,
            hibernation_supported: false,
            ..crate::aws::ec2::fake::plain_type("g5.xlarge")
        };
        let m7g = plan::TypeInfo {
            architectures: vec!["arm64".into()],
            ..crate::aws::ec2::fake::plain_type("m7g.large")
        };
        let mut dlami = crate::aws::ec2::fake::al2023_image("ami-dlami");
        dlami.name = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20261006".into();
        dlami.root_device_name = "/dev/sda1".into();
        dlami.root_size_gib = 75;
        let mut arm = crate::aws::ec2::fake::al2023_image("ami-fake");
        arm.architecture = Some("arm64".into());
        let cloud = FakeCloud {
            types: [
                ("g5.xlarge".to_string(), g5),
                ("m7g.large".to_string(), m7g),
            ]
            .into(),
            images: [("ami-dlami".to_string(), dlami)].into(),
            ..FakeCloud::new("us-east-1")
        };
        let mut a = launch_args(&[]);
        a.instance_type = "g5.xlarge".into();
        run(&cloud, &ctx(), &a).await.unwrap();
        {
            let plans = cloud.launched.lock().unwrap();
            assert_eq!(plans[0].image_id, "ami-dlami");
            let root = &plans[0].block_device_mappings[0];
            assert_eq!(root.device_name, "/dev/sda1");
            assert_eq!((root.ebs.volume_size, root.ebs.encrypted), (100, true));
            assert!(install_step(&plans[0]).unwrap().contains("_amd64.deb"));
        }
        assert_eq!(
            cloud.parameters_read.lock().unwrap().last().unwrap(),
            &plan::dlami_parameter("x86_64")
        );

        let cloud = FakeCloud {
            images: [("ami-fake".to_string(), arm)].into(),
            ..cloud
        };
        let mut a = launch_args(&[]);
        a.instance_type = "m7g.large".into();
        run(&cloud, &ctx(), &a).await.unwrap();
        let last = cloud.launched.lock().unwrap().last().cloned().unwrap();
        assert!(install_step(&last).unwrap().contains("_arm64.deb"));
        assert_eq!(
            cloud.parameters_read.lock().unwrap().last().unwrap(),
            &plan::al2023_parameter("arm64")
        );
        // An image for another architecture than the type's is named before any launch.
        let mut a = launch_args(&["--ami", "ami-fake"]);
        a.instance_type = "t3.micro".into();
        let err = run(&cloud, &ctx(), &a).await.unwrap_err();
        assert!(err.to_string().contains("built for arm64"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn run_instances_waits_while_a_new_instance_profile_propagates() {
        let propagating = "InvalidParameterValue: Value (lease-main-agent) for parameter \
                           iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name";
        let cloud = FakeCloud {
            run_errors: Mutex::new(vec![propagating.to_string(); 3].into()),
            ..FakeCloud::new("us-east-1")
        };
        let start = tokio::time::Instant::now();
        run(
            &cloud,
            &ctx(),
            &launch_args(&["--iam-instance-profile", "lease-main-agent"]),
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2 + 4 + 8));
        assert_eq!(cloud.instances.lock().unwrap().len(), 1);
        let tokens: Vec<String> = cloud
            .launched
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.client_token.clone())
            .collect();
        assert_eq!(tokens.len(), 1, "only the accepted call is recorded");

        // Bounded: a profile that never appears is reported after about a minute.
        let cloud = FakeCloud {
            run_errors: Mutex::new(vec![propagating.to_string(); 99].into()),
            ..FakeCloud::new("us-east-1")
        };
        let start = tokio::time::Instant::now();
        let err = run(&cloud, &ctx(), &launch_args(&[])).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(59));
        assert!(err.to_string().contains("still after 59s"), "{err}");
        assert_eq!(cloud.run_errors.lock().unwrap().len(), 99 - 7);
        assert!(cloud.instances.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_quota_failure_names_the_quota_and_its_page() {
        let cloud = FakeCloud {
            run_errors: Mutex::new(
                vec!["MaxSpotInstanceCountExceeded: Max spot instance count exceeded".to_string()]
                    .into(),
            ),
            types: [(
                "g5.xlarge".to_string(),
                plan::TypeInfo {
                    nvidia_gpus: 1,
                    ..crate::aws::ec2::fake::plain_type("g5.xlarge")
                },
            )]
            .into(),
            ..FakeCloud::new("eu-west-1")
        };
        let mut a = launch_args(&[]);
        a.instance_type = "g5.xlarge".into();
        let err = run(&cloud, &ctx(), &a).await.unwrap_err().to_string();
        assert!(err.contains("MaxSpotInstanceCountExceeded"), "{err}");
        assert!(
            err.contains("L-3819A6DF")
                && err.contains("eu-west-1.console.aws.amazon.com/servicequotas"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_treats_not_found_as_pending() {
        let cloud = FakeCloud {
            describe_misses: Mutex::new(3),
            ..FakeCloud::new("us-east-1")
        };
        let mut a = launch_args(&["--wait"]);
        a.on_demand = true;
        let ctx = ctx();
        let launching = run(&cloud, &ctx, &a);
        let running = async {
            // The fake's instances start pending; EC2 would bring them up.
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if *cloud.describe_misses.lock().unwrap() == 0 {
                    for i in cloud.instances.lock().unwrap().iter_mut() {
                        i.state = "running".into();
                    }
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(launching, running);
        result.unwrap();
        assert_eq!(
            *cloud.describe_misses.lock().unwrap(),
            0,
            "three misses were read and waited out"
        );
    }

    #[tokio::test]
    async fn the_agent_package_and_its_digest_go_into_the_user_data_or_the_launch_is_refused() {
        let key = lease_common::layout::agent_deb_key(lease_common::VERSION, "amd64");
        // No package for the architecture, default AMI: refused before RunInstances.
        let args = LaunchArgs {
            agent_bucket: Some("ctl".into()),
            ..bare_args(&[])
        };
        let cloud = FakeCloud::new("us-east-1");
        let err = run(&cloud, &ctx(), &args).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("s3://ctl/{key}")) && text.contains("lease setup"),
            "{text}"
        );
        assert!(cloud.launched.lock().unwrap().is_empty());

        // With the package: the user-data installs it and carries its digest.
        let digest = "0123456789abcdef".repeat(4);
        let cloud = FakeCloud {
            agent_packages: [(("ctl".to_string(), key.clone()), digest.clone())].into(),
            ..FakeCloud::new("us-east-1")
        };
        run(&cloud, &ctx(), &args).await.unwrap();
        let plans = cloud.launched.lock().unwrap().clone();
        let ud = &plans[0].user_data;
        assert!(
            ud.contains(&format!("\"ctl\", \"{key}\", \"{digest}\", \"amd64\"")),
            "{ud}"
        );
    }
}

#[cfg(test)]
mod slots_tests {
    use super::tests::ctx;
    use super::*;
    use crate::aws::fake::FakeCloud;
    use crate::cli::Cli;
    use clap::Parser;

    fn parse(extra: &[&str]) -> std::result::Result<LaunchArgs, clap::Error> {
        // With an agent package: without one, and on an image that does not carry the
        // agent, a launch is refused.
        let mut argv = vec![
            "lease",
            "launch",
            "-t",
            "t3.micro",
            "--agent-bucket",
            "agents",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            crate::cli::Command::Launch(a) => Ok(*a),
            other => panic!("{other:?}"),
        }
    }

    /// The agent config a launch wrote into its user-data.
    async fn launched_config(args: &LaunchArgs) -> Result<AgentConfig> {
        let cloud = FakeCloud::new("us-east-1");
        run(&cloud, &ctx(), args).await?;
        let plans = cloud.launched.lock().unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&plans[0].user_data).unwrap();
        let content = doc["write_files"][0]["content"].as_str().unwrap();
        Ok(AgentConfig::from_yaml(std::path::Path::new("user-data"), content).unwrap())
    }

    #[tokio::test]
    async fn slots_become_the_agents_max_concurrent_tasks() {
        let config = launched_config(&parse(&["--slots", "4"]).unwrap())
            .await
            .unwrap();
        assert_eq!(config.max_concurrent_tasks, 4);
        let config = launched_config(&parse(&[]).unwrap()).await.unwrap();
        assert_eq!(config.max_concurrent_tasks, 1, "one slot by default");
    }

    #[test]
    fn slots_out_of_range_are_refused_naming_the_flag() {
        for bad in ["0", "65", "many"] {
            let err = parse(&["--slots", bad]).unwrap_err().to_string();
            assert!(err.contains("--slots"), "{bad}: {err}");
        }
        assert!(parse(&["--slots", "64"]).is_ok());
    }

    #[tokio::test]
    async fn slots_and_an_agent_config_that_disagree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "max-concurrent-tasks: 3\n").unwrap();
        let file = path.to_str().unwrap();
        let err = launched_config(&parse(&["--slots", "2", "--agent-config", file]).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("--slots 2")
                && err.to_string().contains("max-concurrent-tasks: 3"),
            "{err}"
        );
        // Agreeing, or the file alone, is fine.
        for extra in [&["--slots", "3"][..], &[]] {
            let mut argv = extra.to_vec();
            argv.extend(["--agent-config", file]);
            let config = launched_config(&parse(&argv).unwrap()).await.unwrap();
            assert_eq!(config.max_concurrent_tasks, 3);
        }
    }
}
