//! The decision loop: the one place that decides to end the lease. Watchers (tag
//! refresh, idle sampler, spot poller, control socket) send [`Input`]s on one channel;
//! the deadline is a timer inside the loop; shutdown is a future passed in. Each
//! decision is a pure function ([`deadline::evaluate`], [`idle::evaluate`]) of the
//! clock's `now` and the loop's state; this file is the I/O shell around them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::HumanDuration;
use lease_common::config::{AgentConfig, IdleConfig};
use lease_common::messages::EventKind;
use lease_common::tags::{self, Action, LeaseTags, NodeStatus};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{self, Clock, MAX_NAP};
use crate::control::{Reply, Request};
use crate::deadline::{self, DeadlineSource, EarlyDrain, Step};
use crate::ec2::Ec2Api;
use crate::events::Emitter;
use crate::idle::{self, Activity, IdleTracker};
use crate::imds::InstanceIdentity;
use crate::notify::{self, Notifier};
use crate::power::PowerOff;
use crate::spot;
use crate::state::{self, SavedState};
use crate::tagread::{Budget, TagSource};
use crate::worker::TaskWorker;

/// The worker's share of the one second between the deadline and the action.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(300);
/// How long the final events may hold up the action; they keep retrying after it.
pub const PUBLISH_WAIT: Duration = Duration::from_millis(250);
/// How long the final events may keep retrying after the action, before the agent exits.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(5);
/// Attempts at the EC2 action before falling back to a poweroff.
pub const ACT_ATTEMPTS: u32 = 4;
/// One attempt's hard limit.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGTERM waits for `NodeDeregistered` before the agent exits.
pub const STOP_PUBLISH_WAIT: Duration = Duration::from_secs(3);

/// Something a watcher observed.
#[derive(Debug)]
pub enum Input {
    /// The instance's tags, re-read (or why they could not be).
    Tags(Result<BTreeMap<String, String>, String>),
    Idle(idle::Sample),
    Spot(spot::InstanceAction),
    Rebalance(spot::Rebalance),
    Control(Request, oneshot::Sender<Reply>),
}

/// Why the agent was asked to stop (SIGTERM, SIGINT, a test's channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Expired,
    Idle,
    Complete,
    Failed,
}

impl EndReason {
    /// The `NodeDeregistered` reason and the `lease:end-reason` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Complete => "complete",
            EndReason::Failed => "failed",
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal: deregistered, the instance left running.
    Stopped(StopReason),
    /// The lease ended and the action was taken (`acted`), or every way of taking it
    /// failed (the process then exits non-zero so systemd restarts it to try again).
    Ended {
        reason: EndReason,
        action: Action,
        acted: bool,
    },
}

/// What the loop needs from the outside world.
#[derive(Debug, Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub ec2: Arc<dyn Ec2Api>,
    pub tags: Arc<dyn TagSource>,
    pub emitter: Emitter,
    pub worker: Arc<dyn TaskWorker>,
    pub power: Arc<dyn PowerOff>,
    pub notifier: Notifier,
    /// Re-reads the config file for `leased reload`; `None` when there is no file.
    pub reload: Option<Reloader>,
    /// After a successful terminate, how long to wait for the machine to go away before
    /// powering it off (only where a poweroff is allowed at all).
    pub terminate_grace: Duration,
    /// Message logged-in terminals with `wall` on warnings.
    pub wall: bool,
}

/// Loads and validates the config again.
#[derive(Clone)]
pub struct Reloader(pub Arc<dyn Fn() -> Result<AgentConfig, String> + Send + Sync>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// The settings the loop uses, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_ttl: HumanDuration,
    pub interruption_margin: HumanDuration,
    /// How long before the deadline a running task starts draining.
    pub drain_lead: HumanDuration,
    pub idle: IdleConfig,
    pub state_dir: PathBuf,
}

impl Settings {
    pub fn from_config(c: &AgentConfig) -> Self {
        Self {
            default_ttl: c.default_ttl,
            interruption_margin: c.interruption_margin,
            drain_lead: c.drain_lead,
            idle: c.idle.clone(),
            state_dir: c.state_dir.clone(),
        }
    }
}

/// What `leased status`, heartbeats and `STATUS=` show. Published by the loop on a
/// watch channel after every change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub node_id: String,
    pub node_name: String,
    pub instance_id: String,
    pub instance_type: String,
    pub market: String,
    pub region: String,
    pub status: NodeStatus,
    pub deadline: DateTime<Utc>,
    pub deadline_source: DeadlineSource,
    pub on_expiry: Action,
    pub idle: bool,
    pub idle_since: Option<DateTime<Utc>>,
    /// Which signal kept the machine active at the last sample.
    pub active_because: Option<String>,
    pub idle_timeout: Option<HumanDuration>,
    pub on_idle: Action,
    pub task: Option<String>,
    pub spot_notice: Option<String>,
    pub rebalance_recommended: bool,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
}

impl Snapshot {
    pub fn time_left(&self, now: DateTime<Utc>) -> TimeDelta {
        self.deadline - now
    }

    /// The one-line `STATUS=` and the first line of `leased status`.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        let idle = match (self.idle_since, self.idle) {
            (Some(s), true) => format!("idle for {}", deadline::human_span(now - s)),
            _ => "active".to_string(),
        };
        let task = self
            .task
            .as_ref()
            .map_or("no task".to_string(), |t| format!("task {t}"));
        format!(
            "lease ends in {} ({}, then {}) · {idle} · {task}",
            deadline::human_left(self.time_left(now)),
            tags::render_time(self.deadline),
            self.on_expiry
        )
    }
}

/// The loop's state.
#[derive(Debug)]
pub struct DecisionLoop {
    deps: Deps,
    settings: Settings,
    identity: InstanceIdentity,
    node_id: String,
    node_name: String,
    started_at: DateTime<Utc>,
    lease: LeaseTags,
    deadline: DateTime<Utc>,
    source: DeadlineSource,
    warned: BTreeSet<u64>,
    idle: IdleTracker,
    last_sample: Option<idle::Sample>,
    status: NodeStatus,
    spot_notice: Option<String>,
    rebalance_notice: Option<String>,
    snapshot: watch::Sender<Snapshot>,
    told_default_ttl: bool,
    /// False while `new` sets the first deadline, so that is not logged as a change.
    initialised: bool,
    /// The EC2 API accepted the action (as opposed to the poweroff fallback taking it).
    acted_through_api: bool,
    /// The deadline for which running tasks were told to drain ahead of time, so the
    /// drain starts once per deadline (an extend past it arms it again).
    early_drain_for: Option<DateTime<Utc>>,
}

impl DecisionLoop {
    /// `tags` are the tags read at start, if they could be; `saved` is the previous
    /// run's state, used for the deadline only when the tags could not be read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        deps: Deps,
        settings: Settings,
        identity: InstanceIdentity,
        node_id: String,
        node_name: String,
        tags: Option<BTreeMap<String, String>>,
        saved: Option<SavedState>,
    ) -> (Self, watch::Receiver<Snapshot>) {
        let now = deps.clock.now();
        let saved = saved.filter(|s| s.identity.instance_id == identity.instance_id);
        let (placeholder, _) = deadline::resolve(
            &LeaseTags::default(),
            identity.launched_at,
            settings.default_ttl,
            now,
        );
        let snapshot = Snapshot {
            version: lease_common::VERSION.to_string(),
            node_id: node_id.clone(),
            node_name: node_name.clone(),
            instance_id: identity.instance_id.clone(),
            instance_type: identity.instance_type.clone(),
            market: identity.market.clone(),
            region: identity.region.clone(),
            status: NodeStatus::Idle,
            deadline: placeholder,
            deadline_source: DeadlineSource::DefaultTtl,
            on_expiry: Action::Terminate,
            idle: false,
            idle_since: None,
            active_because: None,
            idle_timeout: None,
            on_idle: Action::Terminate,
            task: None,
            spot_notice: None,
            rebalance_recommended: false,
            cpu_percent: None,
            memory_percent: None,
        };
        let (tx, rx) = watch::channel(snapshot);
        let mut l = Self {
            deps,
            settings,
            identity,
            node_id,
            node_name,
            started_at: now,
            lease: LeaseTags::default(),
            deadline: placeholder,
            source: DeadlineSource::DefaultTtl,
            warned: BTreeSet::new(),
            idle: IdleTracker::default(),
            last_sample: None,
            status: NodeStatus::Idle,
            spot_notice: saved.as_ref().and_then(|s| s.spot_notice.clone()),
            rebalance_notice: saved.as_ref().and_then(|s| s.rebalance_notice.clone()),
            snapshot: tx,
            told_default_ttl: false,
            initialised: false,
            acted_through_api: false,
            early_drain_for: None,
        };
        match (tags, saved) {
            (Some(map), _) => l.apply_tags(&map),
            (None, Some(s)) => {
                tracing::warn!(
                    "tags unreadable at start; enforcing the saved deadline {} ({})",
                    tags::render_time(s.deadline),
                    s.deadline_source
                );
                l.deadline = s.deadline;
                l.source = DeadlineSource::Saved;
            }
            (None, None) => {
                tracing::warn!(
                    "tags unreadable at start and no saved state; enforcing the default TTL \
                     {} from launch until the tags can be read: deadline {}",
                    l.settings.default_ttl,
                    tags::render_time(l.deadline)
                );
            }
        }
        l.initialised = true;
        l.persist();
        l.publish_snapshot();
        (l, rx)
    }

    pub fn deadline(&self) -> DateTime<Utc> {
        self.deadline
    }

    /// Runs until the lease ends or `shutdown` resolves.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        shutdown: impl Future<Output = StopReason>,
    ) -> Outcome {
        tokio::pin!(shutdown);
        let mut inputs_open = true;
        let watchdog_every = self.deps.notifier.watchdog_every();
        let mut last_ping = tokio::time::Instant::now();
        let mut last_status = String::new();
        self.deps
            .notifier
            .ready(&self.current_snapshot().line(self.deps.clock.now()));
        crate::memory::release_free_memory();
        tracing::info!(
            "enforcing deadline {} ({}; then {})",
            tags::render_time(self.deadline),
            self.source,
            self.lease.on_expiry
        );
        // `lease list` shows `starting` until an agent runs; say that one does. Any
        // other status (running, interrupted, …) was set for a reason and stays.
        if matches!(self.lease.status, None | Some(NodeStatus::Starting)) {
            self.set_status_tag(NodeStatus::Idle);
        }
        loop {
            let now = self.deps.clock.now();
            let wake = match deadline::evaluate(now, self.deadline, &self.warned) {
                Step::Expire => {
                    if let Some(outcome) = self.expire().await {
                        return self.after_end(outcome, shutdown.as_mut()).await;
                    }
                    continue;
                }
                Step::Warn {
                    minutes_left,
                    thresholds,
                } => {
                    self.warn(minutes_left, &thresholds);
                    continue;
                }
                Step::WaitUntil(t) => t,
            };
            let wake = match deadline::early_drain(
                now,
                self.deadline,
                self.settings.drain_lead.to_chrono(),
                self.deps.worker.current_task().is_some(),
                self.early_drain_for == Some(self.deadline),
            ) {
                EarlyDrain::Nothing => wake,
                EarlyDrain::LookAt(t) => wake.min(t),
                EarlyDrain::Start => {
                    self.start_early_drain();
                    continue;
                }
            };
            let mut nap = clock::nap_towards(now, wake, MAX_NAP);
            if let Some(every) = watchdog_every {
                nap = nap.min(every);
            }
            tokio::select! {
                biased;
                reason = &mut shutdown => return self.stop(reason).await,
                input = recv_or_pending(&mut inputs, inputs_open) => match input {
                    Some(input) => {
                        if let Some(outcome) = self.handle(input).await {
                            return self.after_end(outcome, shutdown.as_mut()).await;
                        }
                    }
                    None => {
                        tracing::warn!("every watcher has stopped; still enforcing the deadline");
                        inputs_open = false;
                    }
                },
                () = tokio::time::sleep(nap) => {}
            }
            if let Some(every) = watchdog_every
                && last_ping.elapsed() >= every
            {
                self.deps.notifier.watchdog();
                last_ping = tokio::time::Instant::now();
            }
            let line = self.current_snapshot().line(self.deps.clock.now());
            // STATUS= changes every second of the countdown; say it at most every nap.
            if line != last_status {
                self.deps.notifier.status(&line);
                last_status = line;
            }
        }
    }

    fn current_snapshot(&self) -> Snapshot {
        let sample = self.last_sample.as_ref();
        Snapshot {
            version: lease_common::VERSION.to_string(),
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            instance_id: self.identity.instance_id.clone(),
            instance_type: self.identity.instance_type.clone(),
            market: self.identity.market.clone(),
            region: self.identity.region.clone(),
            status: self.status,
            deadline: self.deadline,
            deadline_source: self.source,
            on_expiry: self.lease.on_expiry,
            idle: self.idle.idle_since.is_some(),
            idle_since: self.idle.idle_since,
            active_because: self.idle.last_reason.clone(),
            idle_timeout: self.lease.idle_timeout,
            on_idle: self.lease.on_idle,
            task: self.deps.worker.current_task(),
            spot_notice: self.spot_notice.clone(),
            rebalance_recommended: self.rebalance_notice.is_some(),
            cpu_percent: sample.and_then(|s| s.cpu_percent.clone().ok().flatten()),
            memory_percent: sample.and_then(|s| s.memory_percent),
        }
    }

    fn publish_snapshot(&self) {
        let s = self.current_snapshot();
        self.snapshot.send_if_modified(|old| {
            if *old == s {
                false
            } else {
                *old = s;
                true
            }
        });
    }

    fn persist(&self) {
        let mut s = SavedState::new(self.identity.clone(), self.deadline, self.source);
        s.spot_notice = self.spot_notice.clone();
        s.rebalance_notice = self.rebalance_notice.clone();
        if let Err(e) = state::save(&self.settings.state_dir, &s) {
            tracing::error!("{e}; a restart will re-read the deadline from the tags");
        }
    }

    /// Takes in freshly read tags: the deadline, the actions and the idle timeout.
    fn apply_tags(&mut self, map: &BTreeMap<String, String>) {
        let lease = match LeaseTags::from_map(map) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    "instance '{}': {e}; keeping the lease settings read before",
                    self.identity.instance_id
                );
                return;
            }
        };
        let now = self.deps.clock.now();
        let (deadline, source) = deadline::resolve(
            &lease,
            self.identity.launched_at,
            self.settings.default_ttl,
            self.started_at,
        );
        if source == DeadlineSource::DefaultTtl && !self.told_default_ttl {
            tracing::warn!(
                "instance '{}' has no lease:expires-at or lease:ttl tag; enforcing the \
                 config's default-ttl {} from launch: deadline {}",
                self.identity.instance_id,
                self.settings.default_ttl,
                tags::render_time(deadline)
            );
            self.told_default_ttl = true;
        }
        if source == DeadlineSource::Tags {
            self.told_default_ttl = false;
        }
        let moved = deadline != self.deadline;
        if moved && self.initialised {
            tracing::info!(
                "deadline {} -> {} (from {source})",
                tags::render_time(self.deadline),
                tags::render_time(deadline)
            );
            deadline::rewarn_after_change(now, deadline, &mut self.warned);
        }
        if lease.name.is_some() && self.node_name == self.identity.instance_id {
            self.node_name = lease.name.clone().unwrap_or_default();
        }
        self.lease = lease;
        self.deadline = deadline;
        let source_changed = self.source != source;
        self.source = source;
        if moved || source_changed {
            self.persist();
        }
        self.publish_snapshot();
    }

    fn warn(&mut self, minutes_left: u64, thresholds: &[u64]) {
        self.warned.extend(thresholds.iter().copied());
        let left = deadline::human_left(self.deadline - self.deps.clock.now());
        let msg = format!(
            "lease: this instance ({}) will {} in {left}, at {} (extend with: lease extend {} 1h)",
            self.identity.instance_id,
            self.lease.on_expiry,
            tags::render_time(self.deadline),
            self.identity.instance_id,
        );
        tracing::warn!("{msg}");
        self.deps.emitter.send(EventKind::LeaseExpiring {
            expires_at: self.deadline,
            minutes_left,
        });
        if self.deps.wall {
            notify::wall(msg);
        }
    }

    /// A task runs and the deadline is less than `drain-lead` away: the worker
    /// interrupts it, uploads what it produced and requeues it, in the background,
    /// with the deadline as its limit; the action still comes at the deadline.
    fn start_early_drain(&mut self) {
        let until = self.deadline;
        self.early_drain_for = Some(until);
        tracing::warn!(
            "lease ends at {} and a task runs: interrupting it now ({} ahead) so its \
             partial results are uploaded and it is requeued in time",
            tags::render_time(until),
            self.settings.drain_lead
        );
        let worker = self.deps.worker.clone();
        let limit = (until - self.deps.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            if tokio::time::timeout(limit, worker.drain(until))
                .await
                .is_err()
            {
                tracing::error!(
                    "task worker did not drain by the deadline {}",
                    tags::render_time(until)
                );
            }
        });
    }

    async fn expire(&mut self) -> Option<Outcome> {
        // Re-read the tags right before acting, so an extend that landed a moment ago
        // wins. Bounded: the action must still come within a second of the deadline.
        match self.deps.tags.read(Budget::BEFORE_ACTING).await {
            Ok((map, _)) => {
                self.apply_tags(&map);
                if self.deadline > self.deps.clock.now() {
                    tracing::info!(
                        "lease extended at the last moment to {}",
                        tags::render_time(self.deadline)
                    );
                    return None;
                }
            }
            Err(e) => tracing::warn!("{e}; acting on the deadline already known"),
        }
        let action = self.lease.on_expiry;
        tracing::warn!(
            "lease of instance '{}' expired at {}; {}",
            self.identity.instance_id,
            tags::render_time(self.deadline),
            action
        );
        Some(self.end(EndReason::Expired, action).await)
    }

    async fn handle(&mut self, input: Input) -> Option<Outcome> {
        match input {
            Input::Tags(Ok(map)) => self.apply_tags(&map),
            Input::Tags(Err(e)) => tracing::debug!("tag refresh failed: {e}"),
            Input::Idle(sample) => return self.on_sample(sample).await,
            Input::Spot(n) => self.on_spot(n),
            Input::Rebalance(n) => self.on_rebalance(n),
            Input::Control(req, reply) => return self.on_control(req, reply).await,
        }
        None
    }

    async fn on_sample(&mut self, mut sample: idle::Sample) -> Option<Outcome> {
        let now = self.deps.clock.now();
        sample.task = self.deps.worker.current_task();
        let activity = idle::evaluate(&sample, &self.settings.idle);
        match &activity {
            Activity::Active(why) => tracing::debug!("active: {why}"),
            Activity::Idle => {
                tracing::debug!("idle for {}s", self.idle.idle_for(now).num_seconds())
            }
        }
        self.idle.observe(now, activity);
        self.last_sample = Some(sample);
        self.publish_snapshot();
        let timeout = self.lease.idle_timeout.map(HumanDuration::as_duration);
        if !self.idle.expired(now, timeout) {
            return None;
        }
        // The tags decide: an idle-timeout removed or lengthened a moment ago wins.
        if let Ok((map, _)) = self.deps.tags.read(Budget::BEFORE_ACTING).await {
            self.apply_tags(&map);
        }
        let timeout = self.lease.idle_timeout.map(HumanDuration::as_duration);
        if !self.idle.expired(self.deps.clock.now(), timeout) {
            return None;
        }
        let action = self.lease.on_idle;
        tracing::warn!(
            "instance '{}' idle for {}s (idle-timeout {}); {action}",
            self.identity.instance_id,
            self.idle.idle_for(now).num_seconds(),
            self.lease.idle_timeout.unwrap_or_default()
        );
        Some(self.end(EndReason::Idle, action).await)
    }

    fn on_spot(&mut self, n: spot::InstanceAction) {
        if self.spot_notice.as_deref() == Some(n.raw.as_str()) {
            tracing::debug!("spot notice already handled: {}", n.raw);
            return;
        }
        let now = self.deps.clock.now();
        tracing::warn!(
            "spot interruption notice: {} at {} ({}s from now)",
            n.action,
            tags::render_time(n.time),
            (n.time - now).num_seconds()
        );
        self.spot_notice = Some(n.raw.clone());
        self.status = NodeStatus::Interrupted;
        self.persist();
        self.publish_snapshot();
        self.deps.emitter.send(EventKind::SpotInterruption {
            action: n.action.clone(),
            time: n.time,
        });
        self.set_status_tag(NodeStatus::Interrupted);
        let until = n.time - self.settings.interruption_margin.to_chrono();
        let worker = self.deps.worker.clone();
        let limit = (until - now).to_std().unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            if tokio::time::timeout(limit, worker.checkpoint_and_requeue(until))
                .await
                .is_err()
            {
                tracing::error!(
                    "task worker did not checkpoint and requeue by {}",
                    tags::render_time(until)
                );
            }
        });
    }

    fn on_rebalance(&mut self, n: spot::Rebalance) {
        if self.rebalance_notice.as_deref() == Some(n.raw.as_str()) {
            return;
        }
        tracing::warn!(
            "rebalance recommendation at {}: taking no new tasks",
            tags::render_time(n.notice_time)
        );
        self.rebalance_notice = Some(n.raw.clone());
        self.persist();
        self.publish_snapshot();
        self.deps.worker.stop_taking_tasks();
        self.deps.emitter.send(EventKind::RebalanceRecommendation {
            notice_time: n.notice_time,
        });
    }

    async fn on_control(&mut self, req: Request, reply: oneshot::Sender<Reply>) -> Option<Outcome> {
        match req {
            Request::Status => {
                let _ = reply.send(Reply::status(
                    &self.current_snapshot(),
                    self.deps.clock.now(),
                ));
                None
            }
            Request::Reload => {
                let result = match &self.deps.reload {
                    None => Err("no config file to reload".to_string()),
                    Some(r) => (r.0)(),
                };
                match result {
                    Ok(c) => {
                        self.settings.default_ttl = c.default_ttl;
                        self.settings.interruption_margin = c.interruption_margin;
                        self.settings.drain_lead = c.drain_lead;
                        self.settings.idle = c.idle.clone();
                        if let Ok((map, _)) = self.deps.tags.read(Budget::ROUTINE).await {
                            self.apply_tags(&map);
                        }
                        tracing::info!("config reloaded");
                        let _ = reply.send(Reply::message("config reloaded; tags re-read"));
                    }
                    Err(e) => {
                        tracing::error!("reload refused: {e}");
                        let _ = reply.send(Reply::error(e));
                    }
                }
                None
            }
            Request::Complete { failed, message } => {
                let (reason, status) = if failed {
                    (EndReason::Failed, NodeStatus::Failed)
                } else {
                    (EndReason::Complete, NodeStatus::Complete)
                };
                let action = self.lease.on_complete;
                tracing::warn!(
                    "workload reported {}{}; {action}",
                    status,
                    message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
                let _ = reply.send(Reply::message(&format!(
                    "recorded {status}; the instance will {action}"
                )));
                self.status = status;
                Some(self.end(reason, action).await)
            }
        }
    }

    fn set_status_tag(&self, status: NodeStatus) -> tokio::task::JoinHandle<()> {
        self.write_tags(vec![(tags::STATUS.to_string(), status.to_string())])
    }

    fn write_tags(&self, tags: Vec<(String, String)>) -> tokio::task::JoinHandle<()> {
        let ec2 = self.deps.ec2.clone();
        let id = self.identity.instance_id.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(ACT_TIMEOUT, ec2.create_tags(&id, tags)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(_) => tracing::warn!("tagging instance '{id}' timed out"),
            }
        })
    }

    /// Ends the lease: the worker drains, the final events go out (waited for only
    /// briefly), then the action on the instance, then the events get a few more
    /// seconds to finish.
    async fn end(&mut self, reason: EndReason, action: Action) -> Outcome {
        let _pinging = self.keep_watchdog_fed();
        // EC2 refuses to stop or hibernate a one-time spot instance: asking would only
        // burn the retries before the poweroff fallback, so spot ends with a terminate.
        let wanted = action;
        let action = wanted.on_market(&self.identity.market);
        if action != wanted {
            tracing::warn!(
                "{wanted} is not possible on a {} instance; terminating instead",
                self.identity.market
            );
        }
        let now = self.deps.clock.now();
        if reason == EndReason::Expired || reason == EndReason::Idle {
            self.status = NodeStatus::Expiring;
        }
        self.publish_snapshot();
        self.deps
            .notifier
            .status(&format!("lease ended ({reason:?}); {action} in progress"));
        let until = now + TimeDelta::from_std(DRAIN_BUDGET).unwrap_or_default();
        if tokio::time::timeout(DRAIN_BUDGET, self.deps.worker.drain(until))
            .await
            .is_err()
        {
            tracing::warn!("task worker did not drain in {DRAIN_BUDGET:?}; going on");
        }
        let first = match reason {
            EndReason::Expired => Some(EventKind::LeaseExpired {
                expires_at: self.deadline,
                action: action.to_string(),
            }),
            EndReason::Idle => Some(EventKind::IdleShutdown {
                idle_for_secs: u64::try_from(self.idle.idle_for(now).num_seconds()).unwrap_or(0),
                action: action.to_string(),
            }),
            EndReason::Complete | EndReason::Failed => None,
        };
        let mut pending = Vec::new();
        if let Some(kind) = first {
            pending.push(self.deps.emitter.send(kind));
        }
        pending.push(self.deps.emitter.send(EventKind::NodeDeregistered {
            reason: reason.as_str().to_string(),
        }));
        // The reason beside the status, in one call: once the instance is gone,
        // `lease list` shows how it ended rather than the `expiring` it passed through.
        let tagged = self.write_tags(vec![
            (tags::STATUS.to_string(), self.status.to_string()),
            (tags::END_REASON.to_string(), reason.as_str().to_string()),
        ]);
        let all = futures::future::join_all(pending);
        tokio::pin!(all);
        let early = tokio::time::timeout(PUBLISH_WAIT, &mut all).await.is_ok();
        let acted = self.act(action).await;
        if !early {
            let _ = tokio::time::timeout(PUBLISH_DRAIN, &mut all).await;
        }
        let _ = tokio::time::timeout(PUBLISH_DRAIN, tagged).await;
        Outcome::Ended {
            reason,
            action,
            acted,
        }
    }

    /// The action through the EC2 API, with retries; then the poweroff fallback where
    /// it is allowed.
    async fn act(&mut self, action: Action) -> bool {
        let id = self.identity.instance_id.clone();
        let id = id.as_str();
        let mut pause = Duration::from_millis(250);
        let mut done = false;
        for attempt in 1..=ACT_ATTEMPTS {
            match tokio::time::timeout(ACT_TIMEOUT, self.deps.ec2.act(id, action)).await {
                Ok(Ok(())) => {
                    tracing::warn!("{action} of instance '{id}' accepted by EC2");
                    done = true;
                    self.acted_through_api = true;
                    break;
                }
                Ok(Err(e)) => tracing::error!("{e} (attempt {attempt}/{ACT_ATTEMPTS})"),
                Err(_) => tracing::error!(
                    "Failed to {action} instance '{id}': no answer in {ACT_TIMEOUT:?} \
                     (attempt {attempt}/{ACT_ATTEMPTS})"
                ),
            }
            if attempt < ACT_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        match (done, action, self.deps.power.allowed()) {
            // After a terminate, `after_end` waits for the machine to go down.
            // Stop and hibernate are never followed by a poweroff: with shutdown
            // behaviour `terminate` it would destroy the instance they keep.
            (true, _, _) => true,
            (false, _, Ok(())) => {
                tracing::error!("every {action} attempt failed; falling back to a poweroff");
                match self.deps.power.power_off().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("{e}");
                        false
                    }
                }
            }
            (false, _, Err(why)) => {
                tracing::error!(
                    "every {action} attempt on instance '{id}' failed and no poweroff here \
                     ({why}); exiting so the service manager restarts the agent to try again"
                );
                false
            }
        }
    }

    /// After a successful terminate: EC2 takes the machine down within seconds, and
    /// systemd then stops the agent (SIGTERM), which ends this wait at once. Still
    /// running after the grace period means the call did not take (or this is not
    /// really that instance): power off, which the shutdown behaviour the launcher sets
    /// turns into a termination on EC2. Only where a poweroff is allowed at all.
    async fn after_end(
        &self,
        outcome: Outcome,
        shutdown: Pin<&mut impl Future<Output = StopReason>>,
    ) -> Outcome {
        let terminated = matches!(
            outcome,
            Outcome::Ended {
                acted: true,
                action: Action::Terminate,
                ..
            }
        );
        if !terminated || !self.acted_through_api || self.deps.power.allowed().is_err() {
            return outcome;
        }
        let _pinging = self.keep_watchdog_fed();
        tokio::select! {
            reason = shutdown => {
                tracing::info!("stopping ({}) after the terminate: the machine is going down", reason.0);
            }
            () = tokio::time::sleep(self.deps.terminate_grace) => {
                tracing::warn!(
                    "still running {:?} after terminating; powering off",
                    self.deps.terminate_grace
                );
                if let Err(e) = self.deps.power.power_off().await {
                    tracing::error!("{e}");
                }
            }
        }
        outcome
    }

    /// Pings the systemd watchdog in the background while the loop is busy ending the
    /// lease (retries, grace periods), so a slow ending is not mistaken for a hang.
    fn keep_watchdog_fed(&self) -> Option<AbortOnDrop> {
        let every = self.deps.notifier.watchdog_every()?;
        let notifier = self.deps.notifier.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                notifier.watchdog();
                tokio::time::sleep(every).await;
            }
        })))
    }

    async fn stop(&mut self, reason: StopReason) -> Outcome {
        let _pinging = self.keep_watchdog_fed();
        tracing::info!(
            "stopping ({}): deregistering; the instance keeps running",
            reason.0
        );
        self.deps
            .notifier
            .stopping(&format!("stopping ({})", reason.0));
        if crate::power::system_is_stopping().await {
            tracing::warn!("the machine is shutting down: interrupting running tasks");
            let until = self.deps.clock.now() + TimeDelta::seconds(60);
            let _ =
                tokio::time::timeout(Duration::from_secs(60), self.deps.worker.drain(until)).await;
        }
        let h = self.deps.emitter.send(EventKind::NodeDeregistered {
            reason: format!("agent stopped ({})", reason.0),
        });
        let _ = tokio::time::timeout(STOP_PUBLISH_WAIT, h).await;
        Outcome::Stopped(reason)
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn recv_or_pending(rx: &mut mpsc::Receiver<Input>, open: bool) -> Option<Input> {
    if open {
        rx.recv().await
    } else {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use crate::clock::TokioClock;
    use crate::ec2::Ec2Error;
    use crate::events::fake::RecordingPublisher;
    use crate::power::NeverPowerOff;
    use crate::tagread::{TagOrigin, TagReadError};
    use crate::worker::NoopWorker;
    use chrono::TimeZone;
    use std::sync::Mutex;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    type TagMap = Arc<Mutex<Option<BTreeMap<String, String>>>>;

    #[derive(Debug)]
    struct FakeEc2 {
        clock: Arc<dyn Clock>,
        acts: Mutex<Vec<(Action, DateTime<Utc>)>>,
        tagged: Mutex<Vec<(String, String)>>,
        fail_acts: Mutex<u32>,
    }

    impl Ec2Api for FakeEc2 {
        fn describe_tags<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<BTreeMap<String, String>, Ec2Error>> {
            Box::pin(async move {
                Err(Ec2Error::DescribeTags {
                    instance_id: id.into(),
                    reason: "not used".into(),
                })
            })
        }
        fn create_tags<'a>(
            &'a self,
            _id: &'a str,
            tags: Vec<(String, String)>,
        ) -> BoxFuture<'a, Result<(), Ec2Error>> {
            self.tagged.lock().unwrap().extend(tags);
            Box::pin(async { Ok(()) })
        }
        fn act<'a>(&'a self, id: &'a str, action: Action) -> BoxFuture<'a, Result<(), Ec2Error>> {
            let mut fail = self.fail_acts.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Box::pin(async move {
                    Err(Ec2Error::Act {
                        instance_id: id.into(),
                        action,
                        reason: "injected".into(),
                    })
                });
            }
            self.acts.lock().unwrap().push((action, self.clock.now()));
            Box::pin(async { Ok(()) })
        }
    }

    #[derive(Debug)]
    struct FakeTags(TagMap);

    impl TagSource for FakeTags {
        fn read(&self, _budget: Budget) -> BoxFuture<'_, crate::tagread::TagRead> {
            let r = self.0.lock().unwrap().clone();
            Box::pin(async move {
                r.map(|t| (t, TagOrigin::Metadata)).ok_or(TagReadError {
                    instance_id: "i-1".into(),
                    imds: "down".into(),
                    ec2: "down".into(),
                })
            })
        }
    }

    #[derive(Debug)]
    struct RecordingWorker {
        inner: NoopWorker,
        clock: Arc<dyn Clock>,
        checkpoints: Mutex<Vec<DateTime<Utc>>>,
        drains: Mutex<u32>,
        /// (when drain was called, its `until`)
        drain_calls: Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
        task: Mutex<Option<String>>,
    }

    impl RecordingWorker {
        fn new(clock: Arc<dyn Clock>) -> Self {
            Self {
                inner: NoopWorker::default(),
                clock,
                checkpoints: Mutex::default(),
                drains: Mutex::default(),
                drain_calls: Mutex::default(),
                task: Mutex::default(),
            }
        }
    }

    impl TaskWorker for RecordingWorker {
        fn current_task(&self) -> Option<String> {
            self.task.lock().unwrap().clone()
        }
        fn stop_taking_tasks(&self) {
            self.inner.stop_taking_tasks();
        }
        fn drain(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()> {
            *self.drains.lock().unwrap() += 1;
            self.drain_calls
                .lock()
                .unwrap()
                .push((self.clock.now(), until));
            Box::pin(async {})
        }
        fn checkpoint_and_requeue(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()> {
            self.checkpoints.lock().unwrap().push(until);
            Box::pin(async {})
        }
    }

    /// A poweroff that is "allowed" and only counts.
    #[derive(Debug, Default)]
    struct CountingPowerOff(Mutex<u32>);

    impl PowerOff for CountingPowerOff {
        fn allowed(&self) -> Result<(), String> {
            Ok(())
        }
        fn power_off(&self) -> BoxFuture<'_, Result<(), crate::power::PowerError>> {
            *self.0.lock().unwrap() += 1;
            Box::pin(async { Ok(()) })
        }
    }

    struct Rig {
        power: Arc<dyn PowerOff>,
        clock: Arc<TokioClock>,
        ec2: Arc<FakeEc2>,
        tags: TagMap,
        publisher: Arc<RecordingPublisher>,
        worker: Arc<RecordingWorker>,
        state_dir: tempfile::TempDir,
        market: &'static str,
    }

    fn tags(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// An on-demand instance unless a test says otherwise: on spot every end is a
    /// terminate, which would hide the stop and hibernate paths.
    fn identity() -> InstanceIdentity {
        identity_on("on-demand")
    }

    fn identity_on(market: &str) -> InstanceIdentity {
        InstanceIdentity {
            instance_id: "i-0abc".into(),
            region: "us-east-1".into(),
            instance_type: "t3.micro".into(),
            market: market.into(),
            launched_at: Some(t0()),
        }
    }

    impl Rig {
        fn new(initial: Option<BTreeMap<String, String>>) -> Self {
            let clock = Arc::new(TokioClock::starting_at(t0()));
            Self {
                ec2: Arc::new(FakeEc2 {
                    clock: clock.clone(),
                    acts: Mutex::default(),
                    tagged: Mutex::default(),
                    fail_acts: Mutex::new(0),
                }),
                clock: clock.clone(),
                power: Arc::new(NeverPowerOff::default()),
                tags: Arc::new(Mutex::new(initial)),
                publisher: Arc::new(RecordingPublisher::default()),
                worker: Arc::new(RecordingWorker::new(clock.clone())),
                state_dir: tempfile::tempdir().unwrap(),
                market: "on-demand",
            }
        }

        fn build(&self, saved: Option<SavedState>) -> (DecisionLoop, watch::Receiver<Snapshot>) {
            let deps = Deps {
                clock: self.clock.clone(),
                ec2: self.ec2.clone(),
                tags: Arc::new(FakeTags(self.tags.clone())),
                emitter: Emitter::new(
                    self.publisher.clone(),
                    self.clock.clone(),
                    "node-1".into(),
                    "i-0abc".into(),
                ),
                worker: self.worker.clone(),
                power: self.power.clone(),
                notifier: Notifier::disabled(),
                reload: None,
                terminate_grace: Duration::from_secs(60),
                wall: false,
            };
            let mut settings = Settings::from_config(&AgentConfig::default());
            settings.state_dir = self.state_dir.path().to_path_buf();
            let initial = self.tags.lock().unwrap().clone();
            DecisionLoop::new(
                deps,
                settings,
                identity_on(self.market),
                "node-1".into(),
                "i-0abc".into(),
                initial,
                saved,
            )
        }

        fn acts(&self) -> Vec<(Action, DateTime<Utc>)> {
            self.ec2.acts.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_line_says_time_left_idle_and_task() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T15:59:00Z")]));
        let (_l, snap) = rig.build(None);
        let mut s = snap.borrow().clone();
        assert_eq!(
            s.line(t0()),
            "lease ends in 3h59m (2026-11-23T15:59:00Z, then terminate) · active · no task"
        );
        s.idle = true;
        s.idle_since = Some(t0() - TimeDelta::seconds(90));
        s.task = Some("t-7".into());
        assert_eq!(
            s.line(t0()),
            "lease ends in 3h59m (2026-11-23T15:59:00Z, then terminate) · idle for 1m30s · task t-7"
        );
    }

    fn never() -> impl Future<Output = StopReason> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn warns_at_15_5_1_minutes_then_terminates_at_the_deadline() {
        let rig = Rig::new(tags(&[
            (tags::EXPIRES_AT, "2026-11-23T12:20:00Z"),
            (tags::TTL, "2h"),
        ]));
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l.run(rx, never()).await;
        assert_eq!(
            outcome,
            Outcome::Ended {
                reason: EndReason::Expired,
                action: Action::Terminate,
                acted: true
            }
        );
        let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
        let acts = rig.acts();
        assert_eq!(acts.len(), 1);
        assert_eq!(acts[0].0, Action::Terminate);
        let late = acts[0].1 - deadline;
        assert!(
            late >= TimeDelta::zero() && late < TimeDelta::milliseconds(50),
            "acted {late} after the deadline"
        );
        let events = rig.publisher.events.lock().unwrap().clone();
        let expiring: Vec<(u64, DateTime<Utc>)> = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::LeaseExpiring { minutes_left, .. } => Some((minutes_left, e.at)),
                _ => None,
            })
            .collect();
        assert_eq!(
            expiring.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            vec![15, 5, 1]
        );
        assert_eq!(expiring[0].1, deadline - TimeDelta::minutes(15));
        let types = rig.publisher.types();
        let expired = types.iter().position(|t| *t == "LeaseExpired").unwrap();
        let dereg = types.iter().position(|t| *t == "NodeDeregistered").unwrap();
        assert!(expired > 0 && dereg > 0);
        assert_eq!(*rig.worker.drains.lock().unwrap(), 1);
        assert!(
            rig.ec2
                .tagged
                .lock()
                .unwrap()
                .contains(&(tags::STATUS.into(), "expiring".into()))
        );
        assert!(
            rig.ec2
                .tagged
                .lock()
                .unwrap()
                .contains(&(tags::END_REASON.into(), "expired".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_task_is_drained_the_lead_before_the_deadline() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
        *rig.worker.task.lock().unwrap() = Some("t-1".into());
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l.run(rx, never()).await;
        assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
        let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
        let calls = rig.worker.drain_calls.lock().unwrap().clone();
        // The default lead is a minute: the drain starts then, limited by the deadline;
        // the usual short drain at the deadline follows, and the action is on time.
        assert_eq!(calls[0], (deadline - TimeDelta::seconds(60), deadline));
        assert_eq!(calls.len(), 2, "{calls:?}");
        let late = rig.acts()[0].1 - deadline;
        assert!(late >= TimeDelta::zero() && late < TimeDelta::milliseconds(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_started_inside_the_lead_is_drained_within_a_second() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let worker = rig.worker.clone();
        let clock = rig.clock.clone();
        let starts_at = Utc.with_ymd_and_hms(2026, 11, 23, 12, 19, 30).unwrap();
        tokio::spawn(async move {
            clock::sleep_until(clock.as_ref(), starts_at).await;
            *worker.task.lock().unwrap() = Some("t-2".into());
        });
        l.run(rx, never()).await;
        let calls = rig.worker.drain_calls.lock().unwrap().clone();
        let (at, until) = calls[0];
        assert_eq!(until, starts_at + TimeDelta::seconds(30));
        assert!(
            at >= starts_at && at - starts_at <= TimeDelta::seconds(1),
            "drain started at {at}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_task_the_deadline_alone_drains() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        l.run(rx, never()).await;
        let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
        let calls = rig.worker.drain_calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(calls[0].0 >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn an_extend_a_second_before_the_deadline_wins() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:30Z")]));
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let map = rig.tags.clone();
        let clock = rig.clock.clone();
        tokio::spawn(async move {
            let at = t0() + TimeDelta::seconds(29);
            clock::sleep_until(clock.as_ref(), at).await;
            map.lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .insert(tags::EXPIRES_AT.into(), "2026-11-23T12:10:00Z".into());
        });
        let outcome = l.run(rx, never()).await;
        assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
        let acts = rig.acts();
        assert_eq!(acts.len(), 1);
        assert_eq!(
            acts[0].1.timestamp(),
            Utc.with_ymd_and_hms(2026, 11, 23, 12, 10, 0)
                .unwrap()
                .timestamp()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_tag_means_the_default_ttl_from_launch() {
        let rig = Rig::new(tags(&[(tags::MANAGED, "true"), (tags::ON_EXPIRY, "stop")]));
        let (l, snap) = rig.build(None);
        assert_eq!(l.deadline(), t0() + TimeDelta::hours(4));
        assert_eq!(snap.borrow().deadline_source, DeadlineSource::DefaultTtl);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l.run(rx, never()).await;
        assert_eq!(
            outcome,
            Outcome::Ended {
                reason: EndReason::Expired,
                action: Action::Stop,
                acted: true
            }
        );
        assert_eq!(
            rig.acts()[0].1.timestamp(),
            (t0() + TimeDelta::hours(4)).timestamp()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_tags_fall_back_to_the_saved_deadline() {
        let rig = Rig::new(None);
        let saved = SavedState::new(
            identity(),
            t0() + TimeDelta::seconds(42),
            DeadlineSource::Tags,
        );
        let (l, _snap) = rig.build(Some(saved));
        assert_eq!(l.deadline(), t0() + TimeDelta::seconds(42));
        let (_tx, rx) = mpsc::channel(8);
        l.run(rx, never()).await;
        assert_eq!(
            rig.acts()[0].1.timestamp(),
            (t0() + TimeDelta::seconds(42)).timestamp()
        );
        // The state it leaves behind names the same deadline, for the next restart.
        let again = state::load(rig.state_dir.path()).unwrap();
        assert_eq!(again.deadline, t0() + TimeDelta::seconds(42));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spot_notice_is_handled_once() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")]));
        let (l, snap) = rig.build(None);
        let (tx, rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(l.run(rx, async move {
            let _ = stop_rx.await;
            StopReason("test".into())
        }));
        let body = r#"{"action": "terminate", "time": "2026-11-23T12:02:00Z"}"#;
        for _ in 0..2 {
            tx.send(Input::Spot(spot::parse_instance_action(body).unwrap()))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(()).unwrap();
        assert_eq!(
            run.await.unwrap(),
            Outcome::Stopped(StopReason("test".into()))
        );
        let types = rig.publisher.types();
        assert_eq!(
            types.iter().filter(|t| **t == "SpotInterruption").count(),
            1
        );
        assert_eq!(
            *rig.worker.checkpoints.lock().unwrap(),
            vec![Utc.with_ymd_and_hms(2026, 11, 23, 12, 1, 45).unwrap()]
        );
        assert!(
            rig.ec2
                .tagged
                .lock()
                .unwrap()
                .contains(&(tags::STATUS.into(), "interrupted".into()))
        );
        assert_eq!(snap.borrow().status, NodeStatus::Interrupted);
        assert!(
            rig.acts().is_empty(),
            "a spot notice leaves the ending to EC2"
        );
        // A restart remembers it.
        let saved = state::load(rig.state_dir.path()).unwrap();
        assert_eq!(saved.spot_notice.as_deref(), Some(body));
    }

    fn quiet_sample() -> idle::Sample {
        idle::Sample {
            cpu_percent: Ok(Some(0.5)),
            net_bytes_per_sec: Ok(Some(10.0)),
            disk_iops: Ok(Some(0.0)),
            active_sessions: Ok(0),
            ssm_sessions: Ok(0),
            gpu_percent: None,
            task: None,
            memory_percent: Some(20.0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_the_idle_timeout_takes_the_idle_action() {
        let rig = Rig::new(tags(&[
            (tags::EXPIRES_AT, "2026-11-23T14:00:00Z"),
            (tags::IDLE_TIMEOUT, "30s"),
            (tags::ON_IDLE, "stop"),
        ]));
        let (l, _snap) = rig.build(None);
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            // Busy once (resets), then quiet every 10 s.
            let busy = idle::Sample {
                cpu_percent: Ok(Some(80.0)),
                ..quiet_sample()
            };
            let _ = tx.send(Input::Idle(busy)).await;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if tx.send(Input::Idle(quiet_sample())).await.is_err() {
                    return;
                }
            }
        });
        let outcome = l.run(rx, never()).await;
        assert_eq!(
            outcome,
            Outcome::Ended {
                reason: EndReason::Idle,
                action: Action::Stop,
                acted: true
            }
        );
        // First quiet sample at 10 s, idle for 30 s at 40 s.
        assert_eq!(
            rig.acts()[0].1.timestamp(),
            (t0() + TimeDelta::seconds(40)).timestamp()
        );
        assert!(rig.publisher.types().contains(&"IdleShutdown"));
    }

    #[tokio::test(start_paused = true)]
    async fn sigterm_deregisters_and_leaves_the_instance_alone() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")]));
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l
            .run(rx, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StopReason("SIGTERM".into())
            })
            .await;
        assert_eq!(outcome, Outcome::Stopped(StopReason("SIGTERM".into())));
        assert!(rig.acts().is_empty());
        assert_eq!(rig.publisher.types(), vec!["NodeDeregistered"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_ec2_api_is_retried_and_reported() {
        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
        *rig.ec2.fail_acts.lock().unwrap() = 2;
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        assert!(matches!(
            l.run(rx, never()).await,
            Outcome::Ended { acted: true, .. }
        ));
        assert_eq!(rig.acts().len(), 1);

        let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
        *rig.ec2.fail_acts.lock().unwrap() = 99;
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        assert!(matches!(
            l.run(rx, never()).await,
            Outcome::Ended { acted: false, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn complete_ends_the_lease_with_the_on_complete_action() {
        let rig = Rig::new(tags(&[
            (tags::EXPIRES_AT, "2026-11-23T14:00:00Z"),
            (tags::ON_COMPLETE, "stop"),
        ]));
        let (l, _snap) = rig.build(None);
        let (tx, rx) = mpsc::channel(8);
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.send(Input::Control(
            Request::Complete {
                failed: true,
                message: Some("boom".into()),
            },
            reply_tx,
        ))
        .await
        .unwrap();
        let outcome = l.run(rx, never()).await;
        assert_eq!(
            outcome,
            Outcome::Ended {
                reason: EndReason::Failed,
                action: Action::Stop,
                acted: true
            }
        );
        assert!(reply_rx.await.unwrap().ok);
        assert!(
            rig.ec2
                .tagged
                .lock()
                .unwrap()
                .contains(&(tags::STATUS.into(), "failed".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn where_allowed_a_terminate_that_does_not_take_is_followed_by_a_poweroff() {
        let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
        let power = Arc::new(CountingPowerOff::default());
        rig.power = power.clone();
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let started = tokio::time::Instant::now();
        assert!(matches!(
            l.run(rx, never()).await,
            Outcome::Ended { acted: true, .. }
        ));
        assert_eq!(*power.0.lock().unwrap(), 1);
        assert!(
            started.elapsed() >= Duration::from_secs(70),
            "10 s + the 60 s grace"
        );

        // SIGTERM during the grace (the machine going down) ends it without a poweroff.
        let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
        let power = Arc::new(CountingPowerOff::default());
        rig.power = power.clone();
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l
            .run(rx, async {
                tokio::time::sleep(Duration::from_secs(15)).await;
                StopReason("SIGTERM".into())
            })
            .await;
        assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
        assert_eq!(*power.0.lock().unwrap(), 0);

        // Every API attempt failing: the poweroff is the action.
        let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
        *rig.ec2.fail_acts.lock().unwrap() = 99;
        let power = Arc::new(CountingPowerOff::default());
        rig.power = power.clone();
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        assert!(matches!(
            l.run(rx, never()).await,
            Outcome::Ended { acted: true, .. }
        ));
        assert_eq!(*power.0.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_is_never_followed_by_a_poweroff() {
        let mut rig = Rig::new(tags(&[
            (tags::EXPIRES_AT, "2026-11-23T12:00:10Z"),
            (tags::ON_EXPIRY, "stop"),
        ]));
        let power = Arc::new(CountingPowerOff::default());
        rig.power = power.clone();
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        l.run(rx, never()).await;
        assert_eq!(rig.acts()[0].0, Action::Stop);
        assert_eq!(*power.0.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_spot_a_stop_becomes_a_terminate() {
        let mut rig = Rig::new(tags(&[
            (tags::EXPIRES_AT, "2026-11-23T12:00:10Z"),
            (tags::ON_EXPIRY, "stop"),
        ]));
        rig.market = "spot";
        let (l, _snap) = rig.build(None);
        let (_tx, rx) = mpsc::channel(8);
        let outcome = l.run(rx, never()).await;
        assert!(
            matches!(
                outcome,
                Outcome::Ended {
                    action: Action::Terminate,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(rig.acts()[0].0, Action::Terminate);
    }
}
