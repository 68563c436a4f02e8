//! One module per subcommand; `dispatch` wires the parsed command line to them.

pub mod act;
pub mod attach;
pub mod download;
pub mod extend;
pub mod iam_policy;
pub mod launch;
pub mod list;
pub mod logs;
pub mod nodes;
pub mod schedule;
pub mod stats;
pub mod status;
pub mod submit;
pub mod tasks;

use chrono::{DateTime, Utc};
use lease_common::aws::{AwsOptions, load_sdk_config};
use lease_common::tags::Action;

use crate::bucket::AwsBucket;
use clap::CommandFactory;

use crate::cli::{Cli, Command, OutputFormat};
use crate::cloud::{AwsCloud, Cloud};
use crate::error::{Error, Result};
use crate::plan::owner_from_arn;
use crate::queue::AwsQueue;
use crate::table::AwsTables;

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
    let opts = AwsOptions {
        profile: g.profile.clone(),
        region: g.regions.first().cloned(),
        endpoint_url: g.endpoint_url.clone(),
    };
    let sdk = load_sdk_config(&opts).await?;
    let cloud = AwsCloud::new(&sdk);
    match &cli.command {
        Command::Launch(a) => launch::run(&cloud, &ctx, a).await,
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
            submit::run(&AwsQueue::new(&sdk), &AwsTables::new(&sdk), &ctx, a).await
        }
        Command::Stats(a) => stats::run(&AwsQueue::new(&sdk), &AwsTables::new(&sdk), &ctx, a).await,
        Command::Tasks(a) => tasks::run(&AwsTables::new(&sdk), &ctx, a).await,
        Command::Nodes(a) => nodes::run(&AwsTables::new(&sdk), &ctx, a).await,
        Command::Logs(a) => logs::run(&AwsBucket::new(&sdk), a).await,
        Command::Download(a) => download::run(&AwsBucket::new(&sdk), &ctx, a).await,
        Command::IamPolicy(a) => iam_policy::run(&cloud, a).await,
        Command::Schedule(a) => {
            schedule::run(&cloud, &crate::scheduler::AwsSchedules::new(&sdk), &ctx, a).await
        }
        Command::Completions { .. } => Ok(()),
    }
}
