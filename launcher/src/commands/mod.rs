//! One module per subcommand; `dispatch` wires the parsed command line to them.

pub mod act;
pub mod attach;
pub mod doctor;
pub mod download;
pub mod extend;
pub mod iam_policy;
pub mod launch;
pub mod list;
pub mod logs;
pub mod nodes;
pub mod schedule;
pub mod setup;
pub mod stats;
pub mod status;
pub mod submit;
pub mod tasks;
pub mod teardown;

use chrono::{DateTime, Utc};
use lease_common::aws::{AwsOptions, load_sdk_config};
use lease_common::tags::Action;

use crate::aws::s3::AwsBucket;
use clap::CommandFactory;

use crate::aws::AwsCloud;
use crate::aws::dynamodb::AwsTables;
use crate::aws::ec2::Ec2;
use crate::aws::sqs::AwsQueue;
use crate::aws::sts::Identity;
use crate::cli::{Cli, Command, OutputFormat};
use crate::error::{Error, Result};
use crate::model::launch_plan::owner_from_arn;
use crate::targets;

/// What every command needs besides AWS: how to print, whether to ask, and the time.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub output: OutputFormat,
    pub yes: bool,
    pub color: bool,
    /// Taken once per invocation, so every row of a listing agrees on "now".
    pub now: DateTime<Utc>,
}

pub async fn dispatch(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let ctx = Ctx {
        output: g.output,
        yes: g.yes,
        color: crate::output::stdout_color(),
        now: Utc::now(),
    };
    if let Command::Completions { shell } = &cli.command {
        // Needs no AWS: printed before any configuration is loaded.
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "lease", &mut out);
        return crate::output::print(&String::from_utf8_lossy(&out));
    }
    if !matches!(cli.command, Command::List(_)) && g.regions.len() > 1 {
        return Err(Error::usage(
            "--region may be given more than once only for `lease list`",
        ));
    }
    // Every flag and local file a launch needs is checked before any AWS configuration
    // is loaded: a bad --ttl is reported as such, not after "no region configured".
    let launch_inputs = match &cli.command {
        Command::Launch(a) => Some(crate::launch_inputs::read_local(a, ctx.yes, ctx.now)?),
        _ => None,
    };
    let opts = AwsOptions {
        profile: g.profile.clone(),
        region: g.regions.first().cloned(),
        endpoint_url: g.endpoint_url.clone(),
    };
    let sdk = load_sdk_config(&opts).await?;
    let cloud = AwsCloud::new(&sdk);
    match &cli.command {
        Command::Launch(a) => {
            let stack = targets::stack_in(cloud.region())?;
            match launch_inputs {
                Some(local) => launch::run_prepared(&cloud, &ctx, a, stack.as_ref(), local).await,
                None => launch::run_in_stack(&cloud, &ctx, a, stack.as_ref()).await,
            }
        }
        Command::List(a) => {
            let regions: Vec<String> = if a.all_regions {
                cloud.enabled_regions().await?
            } else if g.regions.is_empty() {
                vec![cloud.region().to_string()]
            } else {
                g.regions.clone()
            };
            let clouds: Vec<AwsCloud> = regions
                .iter()
                .map(|r| AwsCloud::in_region(&sdk, r))
                .collect();
            let owner = match (&a.owner, a.all) {
                (Some(o), _) => Some(o.clone()),
                (None, true) => None,
                (None, false) => Some(owner_from_arn(&cloud.caller_arn().await?)),
            };
            list::run(&clouds, &ctx, a, owner).await
        }
        Command::Status(a) => status::run(&cloud, &ctx, a).await,
        Command::Extend(a) => extend::run(&cloud, &ctx, a).await,
        Command::Terminate(a) => act::run(&cloud, &ctx, a, Action::Terminate).await,
        Command::Stop(a) => act::run(&cloud, &ctx, a, Action::Stop).await,
        Command::Hibernate(a) => act::run(&cloud, &ctx, a, Action::Hibernate).await,
        Command::Attach(a) => {
            attach::run(&cloud, a, g.profile.as_deref(), sdk.endpoint_url()).await
        }
        Command::Submit(a) => {
            let (a, to) = targets::submit(a, cloud.region())?;
            submit::run_to(
                &AwsQueue::new(&sdk),
                &AwsBucket::new(&sdk),
                &AwsTables::new(&sdk),
                &ctx,
                &a,
                &to,
            )
            .await
        }
        Command::Stats(a) => {
            let a = targets::stats(a, cloud.region())?;
            stats::run(&AwsQueue::new(&sdk), &AwsTables::new(&sdk), &ctx, &a).await
        }
        Command::Tasks(a) => {
            let a = targets::tasks(a, cloud.region())?;
            tasks::run(&AwsTables::new(&sdk), &ctx, &a).await
        }
        Command::Nodes(a) => {
            let a = targets::nodes(a, cloud.region())?;
            nodes::run(&AwsTables::new(&sdk), &ctx, &a).await
        }
        Command::Logs(a) => {
            let a = targets::logs(a, cloud.region())?;
            logs::run(
                &AwsBucket::new(&sdk),
                &AwsTables::new(&sdk),
                &a,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
        Command::Download(a) => {
            let a = targets::download(a, cloud.region())?;
            download::run(&AwsBucket::new(&sdk), &ctx, &a).await
        }
        Command::IamPolicy(a) => {
            iam_policy::run(&cloud, a, &crate::settings::default_path()?).await
        }
        Command::Schedule(a) => {
            schedule::run(
                &cloud,
                &crate::aws::scheduler::AwsSchedules::new(&sdk),
                &ctx,
                a,
            )
            .await
        }
        Command::Setup(a) => {
            let path = crate::settings::default_path()?;
            setup::run(&cloud, &crate::stack::Clients::new(&sdk), &ctx, a, &path).await
        }
        Command::Doctor(a) => {
            let path = crate::settings::default_path()?;
            let clients = crate::doctor::Clients::new(&sdk);
            doctor::run(
                &cloud,
                &clients,
                &ctx,
                a,
                &path,
                sdk.endpoint_url().is_some(),
            )
            .await
        }
        Command::Teardown(a) => {
            let path = crate::settings::default_path()?;
            teardown::run(&cloud, &crate::stack::Clients::new(&sdk), &ctx, a, &path).await
        }
        Command::Completions { .. } => Ok(()),
    }
}
