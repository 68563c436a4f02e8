//! The lease's state and every decision about it, without I/O: each method takes the
//! state, what came in and the time, and returns the [`Effect`]s the loop carries out
//! (in [`super`]). So a decision is tested by asserting on the effects it returns, with
//! no fake EC2, bus or worker.
//!
//! The enum is `Effect` rather than `Action` because `Action` already names what ends
//! an instance (terminate, stop, hibernate) throughout the project.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use lease_common::HumanDuration;
use lease_common::config::{AgentConfig, IdleConfig};
use lease_common::messages::EventKind;
use lease_common::tags::{self, Action, LeaseTags, NodeStatus};

use super::input::{EndReason, Snapshot};
use crate::control::protocol::{Reply, Request};
use crate::deadline::{self, DeadlineSource, EarlyDrain, Step};
use crate::idle::{self, Activity, IdleTracker};
use crate::imds::InstanceIdentity;
use crate::spot;
use crate::state::SavedState;

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

/// One thing for the loop to do, in the order returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Save the deadline and the notices seen, for a restart.
    Persist,
    /// Publish the snapshot (`leased status`, heartbeats, the node registry).
    Publish,
    Emit(EventKind),
    /// Write these tags on the instance, in the background.
    Tag(Vec<(String, String)>),
    /// Tell the logged-in terminals (where the agent may).
    Wall(String),
    StopTakingTasks,
    /// Interrupt running tasks now, in the background, and stop waiting at `until`.
    Drain {
        until: DateTime<Utc>,
    },
    /// Checkpoint and requeue running tasks, in the background, by `until`.
    Checkpoint {
        until: DateTime<Utc>,
    },
    /// Answer the control request being handled.
    Reply(Reply),
    /// Answer the control request with the snapshot.
    ReplyStatus,
    /// Re-read the tags within the second allowed, then [`LeaseState::confirm`]: an
    /// extend or an idle-timeout changed a moment ago wins over the ending.
    Confirm(Pending),
    /// Load the config again and re-read the tags, then [`LeaseState::reloaded`].
    Reload,
    /// End the lease: drain, final events and tags, the action on the instance.
    End {
        reason: EndReason,
        action: Action,
    },
}

/// An ending waiting for the tags' last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Expiry,
    Idle,
}

/// What the loop does next when nothing comes in.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Act(Vec<Effect>),
    WaitUntil(DateTime<Utc>),
}

/// The tags as read: the map, or why it could not be read.
pub type TagRead = Result<BTreeMap<String, String>, String>;

/// The lease as the agent knows it.
#[derive(Debug)]
pub struct LeaseState {
    pub(super) settings: Settings,
    pub(super) identity: InstanceIdentity,
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
    told_default_ttl: bool,
    /// False while `new` sets the first deadline, so that is not logged as a change.
    initialised: bool,
    /// The deadline for which running tasks were told to drain ahead of time, so the
    /// drain starts once per deadline (an extend past it arms it again).
    early_drain_for: Option<DateTime<Utc>>,
}

impl LeaseState {
    /// `tags` are the tags read at start, if they could be; `saved` is the previous
    /// run's state, used for the deadline only when the tags could not be read.
    pub fn new(
        settings: Settings,
        identity: InstanceIdentity,
        (node_id, node_name): (String, String),
        tags: Option<BTreeMap<String, String>>,
        saved: Option<SavedState>,
        now: DateTime<Utc>,
    ) -> Self {
        let saved = saved.filter(|s| s.identity.instance_id == identity.instance_id);
        let (placeholder, _) = deadline::resolve(
            &LeaseTags::default(),
            identity.launched_at,
            settings.default_ttl,
            now,
        );
        let mut s = Self {
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
            told_default_ttl: false,
            initialised: false,
            early_drain_for: None,
        };
        match (tags, saved) {
            (Some(map), _) => {
                // Persisted and published below, once the state is complete.
                let _ = s.apply_tags(&map, now);
            }
            (None, Some(saved)) => {
                tracing::warn!(
                    "tags unreadable at start; enforcing the saved deadline {} ({})",
                    tags::render_time(saved.deadline),
                    saved.deadline_source
                );
                s.deadline = saved.deadline;
                s.source = DeadlineSource::Saved;
            }
            (None, None) => {
                tracing::warn!(
                    "tags unreadable at start and no saved state; enforcing the default TTL \
                     {} from launch until the tags can be read: deadline {}",
                    s.settings.default_ttl,
                    tags::render_time(s.deadline)
                );
            }
        }
        s.initialised = true;
        s
    }

    pub fn deadline(&self) -> DateTime<Utc> {
        self.deadline
    }

    /// What the running loop does first. `lease list` shows `starting` until an agent
    /// runs: say that one does. Any other status (running, interrupted, …) was set for
    /// a reason and stays.
    pub fn start(&self) -> Vec<Effect> {
        tracing::info!(
            "enforcing deadline {} ({}; then {})",
            tags::render_time(self.deadline),
            self.source,
            self.lease.on_expiry
        );
        if matches!(self.lease.status, None | Some(NodeStatus::Starting)) {
            vec![status_tag(NodeStatus::Idle)]
        } else {
            Vec::new()
        }
    }

    /// The snapshot, with `task` the worker's current task.
    pub fn snapshot(&self, task: Option<String>) -> Snapshot {
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
            task,
            spot_notice: self.spot_notice.clone(),
            rebalance_recommended: self.rebalance_notice.is_some(),
            cpu_percent: sample.and_then(|s| s.cpu_percent.clone().ok().flatten()),
            memory_percent: sample.and_then(|s| s.memory_percent),
        }
    }

    /// What a restart needs to know.
    pub fn saved(&self) -> SavedState {
        let mut s = SavedState::new(self.identity.clone(), self.deadline, self.source);
        s.spot_notice = self.spot_notice.clone();
        s.rebalance_notice = self.rebalance_notice.clone();
        s
    }

    /// With nothing coming in: the deadline's warnings and expiry, the early drain of a
    /// running task, or when to look again.
    pub fn next(&mut self, now: DateTime<Utc>, task_running: bool) -> Next {
        let wake = match deadline::evaluate(now, self.deadline, &self.warned) {
            Step::Expire => return Next::Act(vec![Effect::Confirm(Pending::Expiry)]),
            Step::Warn {
                minutes_left,
                thresholds,
            } => return Next::Act(self.warn(now, minutes_left, &thresholds)),
            Step::WaitUntil(t) => t,
        };
        match deadline::early_drain(
            now,
            self.deadline,
            self.settings.drain_lead.to_chrono(),
            task_running,
            self.early_drain_for == Some(self.deadline),
        ) {
            EarlyDrain::Nothing => Next::WaitUntil(wake),
            EarlyDrain::LookAt(t) => Next::WaitUntil(wake.min(t)),
            EarlyDrain::Start => Next::Act(self.start_early_drain()),
        }
    }

    /// Takes in freshly read tags: the deadline, the actions and the idle timeout.
    pub fn apply_tags(
        &mut self,
        map: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let lease = match LeaseTags::from_map(map) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    "instance '{}': {e}; keeping the lease settings read before",
                    self.identity.instance_id
                );
                return Vec::new();
            }
        };
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
        let mut effects = Vec::new();
        if moved || source_changed {
            effects.push(Effect::Persist);
        }
        effects.push(Effect::Publish);
        effects
    }

    /// A source's input. Control requests are answered through [`Effect::Reply`] and
    /// [`Effect::ReplyStatus`].
    pub fn on_tags(&mut self, read: TagRead, now: DateTime<Utc>) -> Vec<Effect> {
        match read {
            Ok(map) => self.apply_tags(&map, now),
            Err(e) => {
                tracing::debug!("tag refresh failed: {e}");
                Vec::new()
            }
        }
    }

    fn warn(&mut self, now: DateTime<Utc>, minutes_left: u64, thresholds: &[u64]) -> Vec<Effect> {
        self.warned.extend(thresholds.iter().copied());
        let left = deadline::human_left(self.deadline - now);
        let msg = format!(
            "lease: this instance ({}) will {} in {left}, at {} (extend with: lease extend {} 1h)",
            self.identity.instance_id,
            self.lease.on_expiry,
            tags::render_time(self.deadline),
            self.identity.instance_id,
        );
        tracing::warn!("{msg}");
        vec![
            Effect::Emit(EventKind::LeaseExpiring {
                expires_at: self.deadline,
                minutes_left,
            }),
            Effect::Wall(msg),
        ]
    }

    /// A task runs and the deadline is less than `drain-lead` away: the worker
    /// interrupts it, uploads what it produced and requeues it, in the background,
    /// with the deadline as its limit; the action still comes at the deadline.
    fn start_early_drain(&mut self) -> Vec<Effect> {
        let until = self.deadline;
        self.early_drain_for = Some(until);
        tracing::warn!(
            "lease ends at {} and a task runs: interrupting it now ({} ahead) so its \
             partial results are uploaded and it is requeued in time",
            tags::render_time(until),
            self.settings.drain_lead
        );
        vec![Effect::Drain { until }]
    }

    /// The tags' last word on an ending ([`Effect::Confirm`]): `read` is the re-read
    /// and `now` the time after it.
    pub fn confirm(&mut self, pending: Pending, read: TagRead, now: DateTime<Utc>) -> Vec<Effect> {
        match pending {
            Pending::Expiry => self.confirm_expiry(read, now),
            Pending::Idle => self.confirm_idle(read, now),
        }
    }

    fn confirm_expiry(&mut self, read: TagRead, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        match read {
            Ok(map) => {
                effects = self.apply_tags(&map, now);
                if self.deadline > now {
                    tracing::info!(
                        "lease extended at the last moment to {}",
                        tags::render_time(self.deadline)
                    );
                    return effects;
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
        effects.push(Effect::End {
            reason: EndReason::Expired,
            action,
        });
        effects
    }

    /// A sample of the idle signals, its `task` filled in with the worker's.
    pub fn on_sample(&mut self, sample: idle::Sample, now: DateTime<Utc>) -> Vec<Effect> {
        let activity = idle::evaluate(&sample, &self.settings.idle);
        match &activity {
            Activity::Active(why) => tracing::debug!("active: {why}"),
            Activity::Idle => {
                tracing::debug!("idle for {}s", self.idle.idle_for(now).num_seconds())
            }
        }
        self.idle.observe(now, activity);
        self.last_sample = Some(sample);
        let mut effects = vec![Effect::Publish];
        if self.idle_expired(now) {
            effects.push(Effect::Confirm(Pending::Idle));
        }
        effects
    }

    fn idle_expired(&self, now: DateTime<Utc>) -> bool {
        let timeout = self.lease.idle_timeout.map(HumanDuration::as_duration);
        self.idle.expired(now, timeout)
    }

    fn confirm_idle(&mut self, read: TagRead, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = match read {
            Ok(map) => self.apply_tags(&map, now),
            Err(_) => Vec::new(),
        };
        if !self.idle_expired(now) {
            return effects;
        }
        let action = self.lease.on_idle;
        tracing::warn!(
            "instance '{}' idle for {}s (idle-timeout {}); {action}",
            self.identity.instance_id,
            self.idle.idle_for(now).num_seconds(),
            self.lease.idle_timeout.unwrap_or_default()
        );
        effects.push(Effect::End {
            reason: EndReason::Idle,
            action,
        });
        effects
    }

    /// A spot interruption notice: handled once (also across a restart). EC2 ends the
    /// instance; the agent checkpoints the tasks by the notice's time minus the margin.
    pub fn on_spot(&mut self, n: spot::InstanceAction, now: DateTime<Utc>) -> Vec<Effect> {
        if self.spot_notice.as_deref() == Some(n.raw.as_str()) {
            tracing::debug!("spot notice already handled: {}", n.raw);
            return Vec::new();
        }
        tracing::warn!(
            "spot interruption notice: {} at {} ({}s from now)",
            n.action,
            tags::render_time(n.time),
            (n.time - now).num_seconds()
        );
        self.spot_notice = Some(n.raw.clone());
        self.status = NodeStatus::Interrupted;
        vec![
            Effect::Persist,
            Effect::Publish,
            Effect::Emit(EventKind::SpotInterruption {
                action: n.action.clone(),
                time: n.time,
            }),
            status_tag(NodeStatus::Interrupted),
            Effect::Checkpoint {
                until: n.time - self.settings.interruption_margin.to_chrono(),
            },
        ]
    }

    /// A rebalance recommendation: no new tasks; handled once.
    pub fn on_rebalance(&mut self, n: spot::Rebalance) -> Vec<Effect> {
        if self.rebalance_notice.as_deref() == Some(n.raw.as_str()) {
            return Vec::new();
        }
        tracing::warn!(
            "rebalance recommendation at {}: taking no new tasks",
            tags::render_time(n.notice_time)
        );
        self.rebalance_notice = Some(n.raw.clone());
        vec![
            Effect::Persist,
            Effect::Publish,
            Effect::StopTakingTasks,
            Effect::Emit(EventKind::RebalanceRecommendation {
                notice_time: n.notice_time,
            }),
        ]
    }

    /// A request on the control socket.
    pub fn on_control(&mut self, req: Request) -> Vec<Effect> {
        match req {
            Request::Status => vec![Effect::ReplyStatus],
            Request::Reload => vec![Effect::Reload],
            Request::Complete { failed, message } => {
                let (status, action) = self.complete(failed, message.as_deref());
                vec![
                    Effect::Reply(Reply::message(&format!(
                        "recorded {status}; the instance will {action}"
                    ))),
                    self.end_complete(failed),
                ]
            }
        }
    }

    /// The one-shot task is done: as `leased complete`, with no one to answer.
    pub fn on_task_done(&mut self, failed: bool, message: String) -> Vec<Effect> {
        self.complete(failed, Some(&message));
        vec![self.end_complete(failed)]
    }

    /// The workload reported its end: the status it ends with, and the action.
    fn complete(&mut self, failed: bool, message: Option<&str>) -> (NodeStatus, Action) {
        let status = if failed {
            NodeStatus::Failed
        } else {
            NodeStatus::Complete
        };
        let action = self.lease.on_complete;
        tracing::warn!(
            "workload reported {}{}; {action}",
            status,
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        self.status = status;
        (status, action)
    }

    fn end_complete(&self, failed: bool) -> Effect {
        Effect::End {
            reason: if failed {
                EndReason::Failed
            } else {
                EndReason::Complete
            },
            action: self.lease.on_complete,
        }
    }

    /// After [`Effect::Reload`]: the config loaded again (or why not) and, when it
    /// loaded, the tags re-read.
    pub fn reloaded(
        &mut self,
        config: Result<AgentConfig, String>,
        read: Option<TagRead>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        match config {
            Ok(c) => {
                self.settings.default_ttl = c.default_ttl;
                self.settings.interruption_margin = c.interruption_margin;
                self.settings.drain_lead = c.drain_lead;
                self.settings.idle = c.idle.clone();
                let mut effects = match read {
                    Some(Ok(map)) => self.apply_tags(&map, now),
                    _ => Vec::new(),
                };
                tracing::info!("config reloaded");
                effects.push(Effect::Reply(Reply::message(
                    "config reloaded; tags re-read",
                )));
                effects
            }
            Err(e) => {
                tracing::error!("reload refused: {e}");
                vec![Effect::Reply(Reply::error(e))]
            }
        }
    }
}

impl LeaseState {
    /// What an ending decided with `reason` and `wanted` says and does: the action the
    /// market allows, the final events and the final tags. The status becomes
    /// `expiring` when the lease ran out (a workload's own end keeps its status).
    pub fn ending(&mut self, reason: EndReason, wanted: Action, now: DateTime<Utc>) -> Ending {
        // EC2 refuses to stop or hibernate a one-time spot instance: asking would only
        // burn the retries before the poweroff fallback, so spot ends with a terminate.
        let action = wanted.on_market(&self.identity.market);
        if action != wanted {
            tracing::warn!(
                "{wanted} is not possible on a {} instance; terminating instead",
                self.identity.market
            );
        }
        if reason == EndReason::Expired || reason == EndReason::Idle {
            self.status = NodeStatus::Expiring;
        }
        let mut events = Vec::new();
        match reason {
            EndReason::Expired => events.push(EventKind::LeaseExpired {
                expires_at: self.deadline,
                action: action.to_string(),
            }),
            EndReason::Idle => events.push(EventKind::IdleShutdown {
                idle_for_secs: u64::try_from(self.idle.idle_for(now).num_seconds()).unwrap_or(0),
                action: action.to_string(),
            }),
            EndReason::Complete | EndReason::Failed => {}
        }
        events.push(EventKind::NodeDeregistered {
            reason: reason.as_str().to_string(),
        });
        Ending {
            action,
            events,
            // The reason beside the status, in one call: once the instance is gone,
            // `lease list` shows how it ended rather than the `expiring` it passed
            // through.
            tags: vec![
                (tags::STATUS.to_string(), self.status.to_string()),
                (tags::END_REASON.to_string(), reason.as_str().to_string()),
            ],
        }
    }
}

/// The last words of an ending, for [`super::ending`] to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub action: Action,
    pub events: Vec<EventKind>,
    pub tags: Vec<(String, String)>,
}

/// `lease:status` set to `status`.
pub fn status_tag(status: NodeStatus) -> Effect {
    Effect::Tag(vec![(tags::STATUS.to_string(), status.to_string())])
}
