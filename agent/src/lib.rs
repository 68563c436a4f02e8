//! `leased`, the agent on every instance `lease` launches: it enforces the lease's
//! deadline, shuts idle machines down, reacts to spot interruption notices, and reports
//! to the control bus. `main.rs` is wiring; everything else is here, with its
//! dependencies passed in so tests can hand it fakes.
//!
//! Shape: watchers ([`watchers`], [`spot`], [`control`]) feed one channel; the
//! [`decide::DecisionLoop`] is the only place that decides to end the lease; every
//! decision is a pure function of the clock's time and the loop's state.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lease_common::aws::{AwsConfigError, AwsOptions, load_sdk_config};
use lease_common::config::AgentConfig;
use lease_common::messages::EventKind;
use tokio::sync::mpsc;

pub mod clock;
pub mod config;
pub mod control;
pub mod deadline;
pub mod decide;
pub mod ec2;
pub mod events;
pub mod idle;
pub mod imds;
pub mod memory;
pub mod notify;
pub mod power;
pub mod run;
pub mod spot;
pub mod state;
pub mod tagread;
pub mod upload;
pub mod watchers;
pub mod work;
pub mod worker;

pub use decide::{Outcome, StopReason};

/// A boxed future, for the traits the decision loop holds as `dyn` (async functions in
/// traits are not object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// After a successful terminate, how long the agent waits for the machine to go away
/// before powering it off (where that is allowed at all). EC2 shuts a terminating
/// instance down within seconds; SIGTERM from that shutdown ends the wait early.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(30);
/// How long the identity is retried at start before a saved identity is used instead.
const IDENTITY_PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Imds(#[from] imds::ImdsError),
    #[error(transparent)]
    Aws(#[from] AwsConfigError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// What `leased run` runs with.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: AgentConfig,
    /// The file the config came from, re-read by `leased reload`.
    pub config_file: Option<PathBuf>,
    /// The command-line layer, applied again on reload.
    pub overrides: config::Overrides,
    /// `LEASED_TMUX_SOCKET`: the tmux server's socket path over the config's
    /// `tmux-socket` (tests running side by side each use their own).
    pub tmux_socket: Option<PathBuf>,
}

/// Runs the daemon until the lease ends or `shutdown` resolves.
pub async fn run(
    opts: RunOptions,
    shutdown: impl Future<Output = StopReason>,
) -> Result<Outcome, AgentError> {
    tokio::pin!(shutdown);
    let config = opts.config.clone();
    let clock: Arc<dyn clock::Clock> = Arc::new(clock::SystemClock);
    let metadata: Arc<dyn imds::Metadata> = Arc::new(imds::Imds::from_env()?);
    let saved = state::load(&config.state_dir);

    let identity = tokio::select! {
        reason = &mut shutdown => return Ok(Outcome::Stopped(reason)),
        id = acquire_identity(metadata.as_ref(), saved.as_ref()) => id,
    };
    tracing::info!(
        instance = %identity.instance_id,
        region = %identity.region,
        market = %identity.market,
        "identity read"
    );

    let region = config
        .region
        .clone()
        .unwrap_or_else(|| identity.region.clone());
    let sdk = load_sdk_config(&AwsOptions {
        profile: config.profile.clone(),
        region: Some(region),
        endpoint_url: None,
    })
    .await?;
    let ec2: Arc<dyn ec2::Ec2Api> = Arc::new(ec2::SdkEc2::new(aws_sdk_ec2::Client::new(&sdk)));
    let publisher: Arc<dyn events::Publisher> = match &config.topic_arn {
        Some(arn) => Arc::new(events::SnsPublisher::new(
            aws_sdk_sns::Client::new(&sdk),
            arn.clone(),
        )),
        None => {
            tracing::warn!("no topic-arn configured: events are logged, not published");
            Arc::new(events::LogPublisher)
        }
    };
    // One API call now, in the background: it fills the SDK's credential cache (the
    // instance role's credentials come from IMDS), so an IMDS outage at the deadline
    // cannot also take away the credentials the terminate needs; and a role that
    // cannot act on this instance is reported at start, not at the deadline.
    {
        let ec2 = ec2.clone();
        let id = identity.instance_id.clone();
        tokio::spawn(async move {
            if let Err(e) = ec2.describe_tags(&id).await {
                tracing::error!(
                    "{e}: the instance role needs ec2:DescribeTags, ec2:CreateTags, \
                     ec2:TerminateInstances and ec2:StopInstances on this instance"
                );
            }
        });
    }
    let tags: Arc<dyn tagread::TagSource> = Arc::new(tagread::TagReader {
        metadata: metadata.clone(),
        ec2: ec2.clone(),
        instance_id: identity.instance_id.clone(),
    });
    let initial_tags = match tags.read(tagread::Budget::ROUTINE).await {
        Ok((t, origin)) => {
            tracing::debug!(?origin, count = t.len(), "tags read");
            Some(t)
        }
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| identity.instance_id.clone());
    let node_name = config
        .node_name
        .clone()
        .or_else(|| {
            initial_tags
                .as_ref()
                .and_then(|t| t.get(lease_common::tags::NAME).cloned())
        })
        .unwrap_or_else(|| identity.instance_id.clone());
    let emitter = events::Emitter::new(
        publisher,
        clock.clone(),
        node_id.clone(),
        identity.instance_id.clone(),
    );
    let (tx, rx) = mpsc::channel(64);
    let (worker, queue_worker) = match build_worker(
        &opts,
        &sdk,
        &identity.instance_id,
        &node_id,
        ec2.clone(),
        emitter.clone(),
        clock.clone(),
        tx.clone(),
    ) {
        Some(w) => (Arc::new(w.clone()) as Arc<dyn worker::TaskWorker>, Some(w)),
        None => (
            Arc::new(worker::NoopWorker::default()) as Arc<dyn worker::TaskWorker>,
            None,
        ),
    };
    let reload = opts.config_file.clone().map(|file| {
        let overrides = opts.overrides.clone();
        decide::Reloader(Arc::new(move || {
            config::resolve(Some(&file), &overrides).map_err(|e| e.to_string())
        }))
    });
    let deps = decide::Deps {
        clock: clock.clone(),
        ec2: ec2.clone(),
        tags: tags.clone(),
        emitter: emitter.clone(),
        worker,
        power: Arc::new(power::SystemdPowerOff),
        notifier: notify::Notifier::from_env(),
        reload,
        terminate_grace: TERMINATE_GRACE,
        // Messages to logged-in terminals are for the instance's users; a run by hand
        // or from a test must not write to a workstation's terminals. systemd sets
        // INVOCATION_ID for every unit it starts.
        wall: std::env::var_os("INVOCATION_ID").is_some(),
    };
    let (decision_loop, snapshot) = decide::DecisionLoop::new(
        deps,
        decide::Settings::from_config(&config),
        identity.clone(),
        node_id,
        node_name.clone(),
        initial_tags,
        saved,
    );

    let listener = control::bind(&config.runtime_dir).await?;
    let node_table: Option<Arc<dyn work::nodes::NodeTable>> = config.nodes_table.clone().map(|t| {
        Arc::new(work::nodes::DynamoNodeTable::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            t,
        )) as Arc<dyn work::nodes::NodeTable>
    });
    let registry_snapshot = snapshot.clone();
    let mut watchers = vec![
        tokio::spawn(spot::watch(
            metadata.clone(),
            config.spot_poll_interval.as_duration(),
            tx.clone(),
        )),
        tokio::spawn(watchers::refresh_tags(
            tags,
            config.tag_refresh_interval.as_duration(),
            tx.clone(),
        )),
        tokio::spawn(watchers::sample_idle(config.idle.clone(), tx.clone())),
        tokio::spawn(watchers::heartbeat(
            emitter.clone(),
            snapshot.clone(),
            clock.clone(),
            config.heartbeat_interval.as_duration(),
        )),
        tokio::spawn(control::serve(
            listener,
            snapshot,
            tx.clone(),
            clock.clone(),
        )),
    ];
    if let Some(table) = &node_table {
        watchers.push(tokio::spawn(work::nodes::keep_registered(
            table.clone(),
            registry_snapshot.clone(),
            clock.clone(),
            (config.pool.clone(), config.max_concurrent_tasks),
            config.heartbeat_interval.as_duration(),
        )));
    }
    if let Some(w) = &queue_worker {
        watchers.push(w.start(config.task.clone()));
    }
    drop(tx);
    emitter.send(EventKind::NodeRegistered {
        node_name,
        instance_type: identity.instance_type.clone(),
        market: identity.market.clone(),
        region: identity.region.clone(),
        version: lease_common::VERSION.to_string(),
        expires_at: Some(decision_loop.deadline()),
    });

    let registered_at = clock.now();
    let outcome = decision_loop.run(rx, shutdown).await;
    for w in watchers {
        w.abort();
    }
    if let Some(table) = &node_table {
        let last = work::nodes::node_record(
            &registry_snapshot.borrow(),
            (config.pool.clone(), config.max_concurrent_tasks),
            registered_at,
            clock.now(),
        );
        work::nodes::deregister(table.as_ref(), last, clock.now()).await;
    }
    let _ = std::fs::remove_file(control::socket_path(&config.runtime_dir));
    Ok(outcome)
}

/// The task worker, when there is work to take: a queue, or a one-shot task.
#[allow(clippy::too_many_arguments)]
fn build_worker(
    opts: &RunOptions,
    sdk: &aws_types::SdkConfig,
    instance_id: &str,
    node_id: &str,
    ec2: Arc<dyn ec2::Ec2Api>,
    emitter: events::Emitter,
    clock: Arc<dyn clock::Clock>,
    to_loop: mpsc::Sender<decide::Input>,
) -> Option<work::QueueWorker> {
    let config = &opts.config;
    if config.queue_url.is_none() && config.task.is_none() {
        return None;
    }
    // Each client only where its setting is: an agent without a worker, or with part
    // of one, does not carry (in memory) the code of what it never calls.
    let runner: Arc<dyn run::Runner> = if config.mock_mode {
        Arc::new(run::MockRunner::default())
    } else {
        let ecr = Arc::new(run::SdkEcr::new(aws_sdk_ecr::Client::new(sdk)));
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
        let mut tmux = run::TmuxRunner::new(config, region, ecr);
        if let Some(socket) = &opts.tmux_socket {
            tmux = tmux.with_socket(socket.clone());
        }
        if let Some(name) = &config.claude.api_key_parameter {
            let ssm = run::SdkSsm::new(aws_sdk_ssm::Client::new(sdk));
            tmux = tmux.with_api_key_parameter(name.clone(), Arc::new(ssm));
        }
        Arc::new(tmux)
    };
    let deps = work::WorkDeps {
        queue: config.queue_url.clone().map(|url| {
            Arc::new(work::queue::SqsQueue::new(
                aws_sdk_sqs::Client::new(sdk),
                url,
            )) as Arc<dyn work::queue::TaskQueue>
        }),
        table: config.tasks_table.clone().map(|t| {
            Arc::new(work::records::DynamoTaskTable::new(
                aws_sdk_dynamodb::Client::new(sdk),
                t,
            )) as Arc<dyn work::records::TaskTable>
        }),
        store: config.log_bucket.clone().map(|b| {
            Arc::new(work::store::S3Store::new(
                lease_common::aws::s3_client(sdk),
                b,
            )) as Arc<dyn work::store::ResultStore>
        }),
        runner,
        emitter,
        clock,
        ec2,
        to_loop,
    };
    let settings = work::WorkSettings::new(
        config.state_dir.clone(),
        node_id.to_string(),
        instance_id.to_string(),
        config.max_concurrent_tasks,
    )
    .with_test_overrides();
    Some(work::QueueWorker::new(deps, settings))
}

/// Reads the identity from IMDS, retrying. After [`IDENTITY_PATIENCE`] without an
/// answer, a saved identity from an earlier run is used (IMDS outage across a restart);
/// without one, it keeps trying, since nothing can be enforced on an unknown instance.
async fn acquire_identity(
    metadata: &dyn imds::Metadata,
    saved: Option<&state::SavedState>,
) -> imds::InstanceIdentity {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match imds::read_identity(metadata).await {
            Ok(id) => return id,
            Err(e) => {
                if let Some(s) = saved
                    && started.elapsed() >= IDENTITY_PATIENCE
                {
                    tracing::warn!(
                        "{e}; using the identity saved by the previous run ({})",
                        s.identity.instance_id
                    );
                    return s.identity.clone();
                }
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(
                        "cannot read the instance identity yet (attempt {attempt}): {e}"
                    );
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}
