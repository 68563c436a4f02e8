//! `leased`, the agent on every instance `lease` launches: it enforces the lease's
//! deadline, shuts idle machines down, reacts to spot interruption notices, and reports
//! to the control bus. `main.rs` is wiring; everything else is here, with its
//! dependencies passed in ([`Deps`]) so tests can hand it fakes.
//!
//! Shape: sources ([`sources`], [`control`], the one-shot task's end) feed one channel;
//! the [`lease::DecisionLoop`] is the only place that decides to end the lease; every
//! decision is a pure function of the loop's state, its input and the clock's time
//! ([`lease::state`]), which returns the effects the loop then carries out.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lease_common::aws::AwsConfigError;
use lease_common::config::AgentConfig;
use lease_common::messages::EventKind;
use tokio::sync::mpsc;

pub mod clock;
pub mod config;
pub mod control;
pub mod deadline;
pub mod deps;
pub mod ec2;
pub mod events;
pub mod idle;
pub mod imds;
pub mod lease;
pub mod memory;
pub mod notify;
pub mod power;
pub mod report;
pub mod run;
pub mod sources;
pub mod spot;
pub mod state;
pub mod tagread;
pub mod tagwrite;
pub mod upload;
pub mod work;

pub use deps::Deps;
pub use lease::{Outcome, StopReason};

/// A boxed future, for the traits the lease loop holds as `dyn` (async functions in
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
}

/// Runs the daemon until the lease ends or `shutdown` resolves.
pub async fn run(
    opts: RunOptions,
    deps: Deps,
    shutdown: impl Future<Output = StopReason>,
) -> Result<Outcome, AgentError> {
    tokio::pin!(shutdown);
    let config = opts.config.clone();
    let clock = deps.clock.clone();
    let metadata = deps.metadata.clone();
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
    let clients = deps.connect.connect(&config, region).await?;
    let ec2 = clients.ec2.clone();
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
        clients.publisher.clone(),
        clock.clone(),
        node_id.clone(),
        identity.instance_id.clone(),
    );
    let status_tags = tagwrite::StatusTags::new(ec2.clone(), identity.instance_id.clone());
    let (tx, rx) = mpsc::channel(64);
    let queue_worker = clients.work.map(|w| {
        let deps = work::WorkDeps {
            queue: w.queue,
            table: w.table,
            store: w.store,
            runner: w.runner,
            emitter: emitter.clone(),
            clock: clock.clone(),
            status: status_tags.clone(),
            lease: Arc::new(tx.clone()),
        };
        let settings = work::WorkSettings::new(
            config.state_dir.clone(),
            node_id.clone(),
            identity.instance_id.clone(),
            config.max_concurrent_tasks,
        )
        .with_test_overrides();
        work::QueueWorker::new(deps, settings)
    });
    let worker: Arc<dyn work::TaskWorker> = match &queue_worker {
        Some(w) => Arc::new(w.clone()) as Arc<dyn work::TaskWorker>,
        None => Arc::new(work::NoopWorker::default()) as Arc<dyn work::TaskWorker>,
    };
    let reload = opts.config_file.clone().map(|file| {
        let overrides = opts.overrides.clone();
        lease::Reloader(Arc::new(move || {
            config::resolve(Some(&file), &overrides).map_err(|e| e.to_string())
        }))
    });
    let lease_deps = lease::Deps {
        clock: clock.clone(),
        ec2: ec2.clone(),
        status: status_tags,
        tags: tags.clone(),
        emitter: emitter.clone(),
        worker,
        power: deps.power.clone(),
        notifier: deps.notifier.clone(),
        reload,
        terminate_grace: TERMINATE_GRACE,
        wall: deps.wall,
    };
    let (decision_loop, snapshot) = lease::DecisionLoop::new(
        lease_deps,
        lease::Settings::from_config(&config),
        identity.clone(),
        node_id,
        node_name.clone(),
        initial_tags,
        saved,
    );

    let listener = control::bind(&config.runtime_dir).await?;
    let node_table = clients.node_table;
    let registry_snapshot = snapshot.clone();
    let mut watchers = vec![
        tokio::spawn(sources::spot::watch(
            metadata.clone(),
            config.spot_poll_interval.as_duration(),
            tx.clone(),
        )),
        tokio::spawn(sources::tags::refresh_tags(
            tags,
            config.tag_refresh_interval.as_duration(),
            tx.clone(),
        )),
        tokio::spawn(sources::idle::sample_idle(config.idle.clone(), tx.clone())),
        tokio::spawn(report::heartbeat(
            emitter.clone(),
            snapshot.clone(),
            clock.clone(),
            config.heartbeat_interval.as_duration(),
        )),
        tokio::spawn(control::serve(
            listener,
            status_reply(snapshot, clock.clone()),
            tx.clone(),
            lease::Input::Control,
        )),
    ];
    if let Some(table) = &node_table {
        watchers.push(tokio::spawn(report::nodes::keep_registered(
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
        let last = report::nodes::node_record(
            &registry_snapshot.borrow(),
            (config.pool.clone(), config.max_concurrent_tasks),
            registered_at,
            clock.now(),
        );
        report::nodes::deregister(table.as_ref(), last, clock.now()).await;
    }
    let _ = std::fs::remove_file(control::socket_path(&config.runtime_dir));
    Ok(outcome)
}

/// `leased status`'s answer, from the loop's latest snapshot without disturbing it.
fn status_reply(
    snapshot: tokio::sync::watch::Receiver<lease::Snapshot>,
    clock: Arc<dyn clock::Clock>,
) -> control::server::StatusFn {
    Arc::new(move || snapshot.borrow().reply(clock.now()))
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
