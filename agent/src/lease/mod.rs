//! The lease loop: the one place that decides to end the lease. Sources (tag refresh,
//! idle sampler, spot poller, control socket, the one-shot task) send [`Input`]s on one
//! channel; the deadline is a timer inside the loop; shutdown is a future passed in.
//!
//! - [`input`]: what comes in and goes out (a leaf the sources name);
//! - [`state`]: every decision, pure: state + input + now → [`Effect`]s;
//! - this file: the loop, which carries the effects out;
//! - [`ending`]: the ending, with its retries, the poweroff fallback and the stop.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lease_common::config::AgentConfig;
use tokio::sync::{mpsc, oneshot, watch};

use crate::BoxFuture;
use crate::clock::{self, Clock, MAX_NAP};
use crate::control::protocol::Reply;
use crate::ec2::Ec2Api;
use crate::events::Emitter;
use crate::imds::InstanceIdentity;
use crate::notify::{self, Notifier};
use crate::power::PowerOff;
use crate::state::SavedState;
use crate::tagread::{Budget, TagSource};
use crate::tagwrite::StatusTags;
use crate::work::{LeaseEnd, TaskWorker};

mod ending;
pub mod input;
pub mod state;
#[cfg(test)]
mod tests;

pub use ending::{
    ACT_ATTEMPTS, ACT_TIMEOUT, DRAIN_BUDGET, PUBLISH_DRAIN, PUBLISH_WAIT, STOP_PUBLISH_WAIT,
};
pub use input::{EndReason, Input, Outcome, Snapshot, StopReason};
pub use state::{Effect, LeaseState, Next, Pending, Settings};

/// What the loop needs from the outside world.
#[derive(Debug, Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    /// The action on the instance.
    pub ec2: Arc<dyn Ec2Api>,
    /// `lease:status` and `lease:end-reason`.
    pub status: StatusTags,
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

/// The one-shot task's end reaches the loop as an input like any other, so the lease
/// ends the way `leased complete` ends it.
impl LeaseEnd for mpsc::Sender<Input> {
    fn task_done(&self, failed: bool, message: String) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.send(Input::TaskDone { failed, message }).await.is_ok() })
    }
}

/// The loop: the lease's state and the means to carry out its effects.
#[derive(Debug)]
pub struct DecisionLoop {
    deps: Deps,
    state: LeaseState,
    snapshot: watch::Sender<Snapshot>,
    /// The EC2 API accepted the action (as opposed to the poweroff fallback taking it).
    acted_through_api: bool,
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
        let state = LeaseState::new(settings, identity, (node_id, node_name), tags, saved, now);
        let (snapshot, rx) = watch::channel(state.snapshot(deps.worker.current_task()));
        let l = Self {
            deps,
            state,
            snapshot,
            acted_through_api: false,
        };
        l.persist();
        (l, rx)
    }

    pub fn deadline(&self) -> DateTime<Utc> {
        self.state.deadline()
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
        let first = self.state.start();
        if let Some(outcome) = self.carry_out(first, None).await {
            return self.after_end(outcome, shutdown.as_mut()).await;
        }
        loop {
            let now = self.deps.clock.now();
            let task_running = self.deps.worker.current_task().is_some();
            let wake = match self.state.next(now, task_running) {
                Next::Act(effects) => {
                    if let Some(outcome) = self.carry_out(effects, None).await {
                        return self.after_end(outcome, shutdown.as_mut()).await;
                    }
                    continue;
                }
                Next::WaitUntil(t) => t,
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

    /// Hands the input to the state and carries out what it decides.
    async fn handle(&mut self, input: Input) -> Option<Outcome> {
        let now = self.deps.clock.now();
        let mut reply = None;
        let effects = match input {
            Input::Tags(read) => self.state.on_tags(read, now),
            Input::Idle(mut sample) => {
                sample.task = self.deps.worker.current_task();
                self.state.on_sample(sample, now)
            }
            Input::Spot(n) => self.state.on_spot(n, now),
            Input::Rebalance(n) => self.state.on_rebalance(n),
            Input::Control(req, tx) => {
                reply = Some(tx);
                self.state.on_control(req)
            }
            Input::TaskDone { failed, message } => self.state.on_task_done(failed, message),
        };
        self.carry_out(effects, reply).await
    }

    /// Carries the effects out in order; `Some` once the lease has ended. `reply` is
    /// where the control request being handled, if any, is answered.
    async fn carry_out(
        &mut self,
        effects: Vec<Effect>,
        mut reply: Option<oneshot::Sender<Reply>>,
    ) -> Option<Outcome> {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            // Effects that need I/O before the state can go on decide again here; what
            // they decide comes before the effects still queued.
            let more = match effect {
                Effect::Persist => {
                    self.persist();
                    continue;
                }
                Effect::Publish => {
                    self.publish_snapshot();
                    continue;
                }
                Effect::Emit(kind) => {
                    self.deps.emitter.send(kind);
                    continue;
                }
                Effect::Tag(tags) => {
                    self.write_tags(tags);
                    continue;
                }
                Effect::Wall(message) => {
                    if self.deps.wall {
                        notify::wall(message);
                    }
                    continue;
                }
                Effect::StopTakingTasks => {
                    self.deps.worker.stop_taking_tasks();
                    continue;
                }
                Effect::Drain { until } => {
                    self.drain_in_background(until);
                    continue;
                }
                Effect::Checkpoint { until } => {
                    self.checkpoint_in_background(until);
                    continue;
                }
                Effect::Reply(r) => {
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(r);
                    }
                    continue;
                }
                Effect::ReplyStatus => {
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(self.current_snapshot().reply(self.deps.clock.now()));
                    }
                    continue;
                }
                Effect::Confirm(pending) => {
                    let read = self.read_tags(Budget::BEFORE_ACTING).await;
                    self.state.confirm(pending, read, self.deps.clock.now())
                }
                Effect::Reload => {
                    let config = match &self.deps.reload {
                        None => Err("no config file to reload".to_string()),
                        Some(r) => (r.0)(),
                    };
                    let read = if config.is_ok() {
                        Some(self.read_tags(Budget::ROUTINE).await)
                    } else {
                        None
                    };
                    self.state.reloaded(config, read, self.deps.clock.now())
                }
                Effect::End { reason, action } => return Some(self.end(reason, action).await),
            };
            for e in more.into_iter().rev() {
                queue.push_front(e);
            }
        }
        None
    }

    async fn read_tags(&self, budget: Budget) -> state::TagRead {
        self.deps
            .tags
            .read(budget)
            .await
            .map(|(map, _)| map)
            .map_err(|e| e.to_string())
    }

    fn current_snapshot(&self) -> Snapshot {
        self.state.snapshot(self.deps.worker.current_task())
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
        if let Err(e) = crate::state::save(&self.state.settings.state_dir, &self.state.saved()) {
            tracing::error!("{e}; a restart will re-read the deadline from the tags");
        }
    }

    fn write_tags(&self, tags: Vec<(String, String)>) -> tokio::task::JoinHandle<()> {
        self.deps.status.write(tags)
    }

    /// The early drain: the worker interrupts running tasks beside the loop, which
    /// stops waiting for it at the deadline.
    fn drain_in_background(&self, until: DateTime<Utc>) {
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
                    lease_common::tags::render_time(until)
                );
            }
        });
    }

    fn checkpoint_in_background(&self, until: DateTime<Utc>) {
        let worker = self.deps.worker.clone();
        let limit = (until - self.deps.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            if tokio::time::timeout(limit, worker.checkpoint_and_requeue(until))
                .await
                .is_err()
            {
                tracing::error!(
                    "task worker did not checkpoint and requeue by {}",
                    lease_common::tags::render_time(until)
                );
            }
        });
    }
}

async fn recv_or_pending(rx: &mut mpsc::Receiver<Input>, open: bool) -> Option<Input> {
    if open {
        rx.recv().await
    } else {
        std::future::pending().await
    }
}
