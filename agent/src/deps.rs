//! What [`run`](crate::run) talks to, passed in rather than built inside it: `main`
//! builds the real ones with [`Deps::system`]; a test may hand in others.
//!
//! The AWS clients need the instance's region, known only once the identity is read, so
//! they come from a [`Connect`] that `run` calls then. Each client is made only where
//! its setting is: an agent without a worker, or with part of one, does not carry (in
//! memory) the code of what it never calls.

use std::path::PathBuf;
use std::sync::Arc;

use lease_common::aws::{AwsConfigError, AwsOptions, load_sdk_config};
use lease_common::config::AgentConfig;

use crate::BoxFuture;
use crate::clock::{Clock, SystemClock};
use crate::ec2::{Ec2Api, SdkEc2};
use crate::events::{LogPublisher, Publisher, SnsPublisher};
use crate::imds::{Imds, ImdsError, Metadata};
use crate::notify::Notifier;
use crate::power::{PowerOff, SystemdPowerOff};
use crate::report::nodes::{DynamoNodeTable, NodeTable};
use crate::run::{MockRunner, Runner, SdkEcr, SdkSsm, TmuxRunner};
use crate::work::queue::{SqsQueue, TaskQueue};
use crate::work::records::{DynamoTaskTable, TaskTable};
use crate::work::store::{ResultStore, S3Store};

/// The machine and the instance, and the means to reach AWS.
#[derive(Debug, Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub metadata: Arc<dyn Metadata>,
    pub power: Arc<dyn PowerOff>,
    pub notifier: Notifier,
    /// Message logged-in terminals with `wall` on warnings.
    pub wall: bool,
    pub connect: Arc<dyn Connect>,
}

impl Deps {
    /// The real ones. `tmux_socket` is `LEASED_TMUX_SOCKET`: the tmux server's socket
    /// over the config's `tmux-socket` (tests running side by side each use their own).
    pub fn system(tmux_socket: Option<PathBuf>) -> Result<Self, ImdsError> {
        Ok(Self {
            clock: Arc::new(SystemClock),
            metadata: Arc::new(Imds::from_env()?),
            power: Arc::new(SystemdPowerOff),
            notifier: Notifier::from_env(),
            // Messages to logged-in terminals are for the instance's users; a run by
            // hand or from a test must not write to a workstation's terminals. systemd
            // sets INVOCATION_ID for every unit it starts.
            wall: std::env::var_os("INVOCATION_ID").is_some(),
            connect: Arc::new(Aws { tmux_socket }),
        })
    }
}

/// Makes the AWS clients for a region.
pub trait Connect: Send + Sync + std::fmt::Debug {
    fn connect<'a>(
        &'a self,
        config: &'a AgentConfig,
        region: String,
    ) -> BoxFuture<'a, Result<Clients, AwsConfigError>>;
}

/// The AWS side of the agent.
#[derive(Debug)]
pub struct Clients {
    pub ec2: Arc<dyn Ec2Api>,
    pub publisher: Arc<dyn Publisher>,
    /// `None` without a `nodes-table`.
    pub node_table: Option<Arc<dyn NodeTable>>,
    /// `None` when there is no work to take: no queue and no one-shot task.
    pub work: Option<WorkClients>,
}

/// What the task worker talks to.
#[derive(Debug)]
pub struct WorkClients {
    pub queue: Option<Arc<dyn TaskQueue>>,
    pub table: Option<Arc<dyn TaskTable>>,
    pub store: Option<Arc<dyn ResultStore>>,
    pub runner: Arc<dyn Runner>,
}

/// The AWS SDK, with the instance role's credentials (or the config's profile).
#[derive(Debug)]
pub struct Aws {
    tmux_socket: Option<PathBuf>,
}

impl Connect for Aws {
    fn connect<'a>(
        &'a self,
        config: &'a AgentConfig,
        region: String,
    ) -> BoxFuture<'a, Result<Clients, AwsConfigError>> {
        Box::pin(async move {
            let sdk = load_sdk_config(&AwsOptions {
                profile: config.profile.clone(),
                region: Some(region),
                endpoint_url: None,
            })
            .await?;
            let publisher: Arc<dyn Publisher> = match &config.topic_arn {
                Some(arn) => Arc::new(SnsPublisher::new(
                    aws_sdk_sns::Client::new(&sdk),
                    arn.clone(),
                )),
                None => {
                    tracing::warn!("no topic-arn configured: events are logged, not published");
                    Arc::new(LogPublisher)
                }
            };
            Ok(Clients {
                ec2: Arc::new(SdkEc2::new(aws_sdk_ec2::Client::new(&sdk))),
                publisher,
                node_table: config.nodes_table.clone().map(|t| {
                    Arc::new(DynamoNodeTable::new(aws_sdk_dynamodb::Client::new(&sdk), t))
                        as Arc<dyn NodeTable>
                }),
                work: self.work(config, &sdk),
            })
        })
    }
}

impl Aws {
    fn work(&self, config: &AgentConfig, sdk: &aws_types::SdkConfig) -> Option<WorkClients> {
        if config.queue_url.is_none() && config.task.is_none() {
            return None;
        }
        let runner: Arc<dyn Runner> = if config.mock_mode {
            Arc::new(MockRunner::default())
        } else {
            let ecr = Arc::new(SdkEcr::new(aws_sdk_ecr::Client::new(sdk)));
            let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
            let mut tmux = TmuxRunner::new(config, region, ecr);
            if let Some(socket) = &self.tmux_socket {
                tmux = tmux.with_socket(socket.clone());
            }
            if let Some(name) = &config.claude.api_key_parameter {
                let ssm = SdkSsm::new(aws_sdk_ssm::Client::new(sdk));
                tmux = tmux.with_api_key_parameter(name.clone(), Arc::new(ssm));
            }
            Arc::new(tmux)
        };
        Some(WorkClients {
            queue: config.queue_url.clone().map(|url| {
                Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url)) as Arc<dyn TaskQueue>
            }),
            table: config.tasks_table.clone().map(|t| {
                Arc::new(DynamoTaskTable::new(aws_sdk_dynamodb::Client::new(sdk), t))
                    as Arc<dyn TaskTable>
            }),
            store: config.log_bucket.clone().map(|b| {
                Arc::new(S3Store::new(lease_common::aws::s3_client(sdk), b)) as Arc<dyn ResultStore>
            }),
            runner,
        })
    }
}
