//! What a launch is made of before its RunInstances call, shared by `lease launch` and
//! `lease schedule create`: the local inputs (flags and the files they name, checked
//! before any AWS call) and the agent package an instance installs at boot.

use chrono::{DateTime, Utc};
use lease_common::config::AgentConfig;
use lease_common::messages::Task;

use crate::aws::s3::AgentPackages;
use crate::cli::LaunchArgs;
use crate::error::{Error, Result};
use crate::model::launch_plan::{self, LeaseTerms};
use crate::model::userdata::AgentSource;

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

/// `yes` is `--yes` (it confirms a long lease); `now` is the invocation's time.
pub fn read_local(args: &LaunchArgs, yes: bool, now: DateTime<Utc>) -> Result<LocalInputs> {
    let terms = LeaseTerms::from_args(args, yes)?;
    // The tag values too (a --job or --name too long for a tag), with a stand-in for
    // the owner, which is known only once AWS says who the caller is.
    launch_plan::lease_tags(args, &terms, "-", now)?;
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
            crate::model::task::per_instance(&args.task, args.count as usize, now, &random)?
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

/// The agent package for `arch` in `--agent-bucket` (or the stack's bucket) and its
/// recorded digest, when it is there.
pub async fn package<P: AgentPackages>(
    packages: &P,
    args: &LaunchArgs,
    arch: &str,
) -> Result<Option<AgentSource>> {
    let Some(bucket) = args.agent_bucket.as_ref() else {
        return Ok(None);
    };
    let deb_arch = lease_common::layout::deb_arch(arch);
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, deb_arch);
    Ok(packages
        .agent_package_sha256(bucket, &key)
        .await?
        .map(|sha256| AgentSource {
            bucket: bucket.clone(),
            key,
            sha256,
            arch: deb_arch.to_string(),
        }))
}

/// The agent for a scheduled launch, whose image EC2 resolves at each run so it cannot
/// be checked for a baked agent: the package for `arch` with its digest. Without one, a
/// launch on the default AMI is refused (exit 4): the instance would boot without an
/// agent and nothing but the reaper would end it.
pub async fn agent_source<P: AgentPackages>(
    packages: &P,
    args: &LaunchArgs,
    arch: &str,
) -> Result<Option<AgentSource>> {
    let Some(bucket) = args.agent_bucket.as_ref() else {
        return Ok(None);
    };
    if let Some(source) = package(packages, args, arch).await? {
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
