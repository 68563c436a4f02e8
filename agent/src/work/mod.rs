//! The task worker: takes tasks from the queue (or the config's one-shot task), claims
//! them, runs them through a [`Runner`], keeps their messages hidden while they run,
//! publishes their output, uploads their bundles and logs, and only then deletes their
//! messages. A restarted agent adopts the tasks the previous one left running.
//!
//! - [`queue`]: the SQS queue and its dead-letter queue, behind [`queue::TaskQueue`];
//! - [`records`]: the claim and the task's record, behind [`records::TaskTable`];
//! - [`store`]: task specs, bundles and logs in S3, behind [`store::ResultStore`];
//! - [`statefile`]: what survives a restart, per task;
//! - [`intake`]: what happens to a received message before its task runs;
//! - [`lifecycle`]: one task from start to deleted message;
//! - [`worker`]: the seams to the lease loop, [`TaskWorker`] and [`LeaseEnd`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lease_common::tags::NodeStatus;
use tokio::sync::{Notify, watch};

use crate::BoxFuture;
use crate::clock::Clock;
use crate::events::Emitter;
use crate::run::Runner;
use crate::tagwrite::{StatusTags, Wish};

mod ending;
pub mod intake;
pub mod lifecycle;
pub mod queue;
pub mod records;
pub mod statefile;
pub mod store;
#[cfg(test)]
mod tests;
pub mod worker;

pub use worker::{LeaseEnd, NoopWorker, TaskWorker};

/// Receives in flight at once when more than one task may run: while one waits for
/// its answer, slots freed meanwhile are asked for by the other.
const RECEIVERS: usize = 2;

/// Timings of the worker. Each is a setting only so tests can shorten it.
#[derive(Debug, Clone)]
pub struct WorkSettings {
    pub state_dir: PathBuf,
    pub node_id: String,
    pub instance_id: String,
    /// Tasks at once; never more messages are asked for than there are free slots.
    pub max_concurrent: u32,
    /// SQS long poll: at most 20 s, so an empty queue costs three calls a minute.
    pub receive_wait: Duration,
    /// A running task's message is hidden this long from each extension on.
    pub visibility: Duration,
    /// … and extended this often (half the visibility: one failed call is survived).
    pub extend_every: Duration,
    /// How often a running task's program is polled.
    pub poll_every: Duration,
    /// At most one `TaskOutput` per task per this.
    pub output_every: Duration,
    /// The log is uploaded this often while it grows.
    pub log_upload_every: Duration,
    /// SIGTERM to SIGKILL, at most (less when the interruption's deadline is nearer).
    pub grace: Duration,
}

/// TEST ONLY: how long a claim (and a running task's message visibility) lasts,
/// instead of 2 minutes, so a test can let a claim lapse in seconds (logged).
pub const TEST_CLAIM_ENV: &str = "LEASED_TEST_TASK_CLAIM";

impl WorkSettings {
    /// [`TEST_CLAIM_ENV`] applied, when set to a duration: the claim lasts that long
    /// and is renewed at half of it.
    pub fn with_test_overrides(mut self) -> Self {
        let Ok(text) = std::env::var(TEST_CLAIM_ENV) else {
            return self;
        };
        match text.parse::<lease_common::HumanDuration>() {
            Ok(d) if d.as_secs() >= 2 => {
                tracing::warn!("TEST ONLY: task claims last {d} ({TEST_CLAIM_ENV})");
                self.visibility = d.as_duration();
                self.extend_every = d.as_duration() / 2;
            }
            _ => {
                tracing::warn!("{TEST_CLAIM_ENV}='{text}' is not a duration of 2s or more: ignored")
            }
        }
        self
    }

    pub fn new(state_dir: PathBuf, node_id: String, instance_id: String, max: u32) -> Self {
        Self {
            state_dir,
            node_id,
            instance_id,
            max_concurrent: max.max(1),
            receive_wait: Duration::from_secs(20),
            visibility: Duration::from_secs(120),
            extend_every: Duration::from_secs(60),
            poll_every: Duration::from_millis(100),
            output_every: Duration::from_secs(1),
            log_upload_every: Duration::from_secs(5),
            grace: Duration::from_secs(10),
        }
    }
}

/// What the worker talks to.
#[derive(Debug, Clone)]
pub struct WorkDeps {
    /// `None`: no queue, only the one-shot task (if any).
    pub queue: Option<Arc<dyn queue::TaskQueue>>,
    pub table: Option<Arc<dyn records::TaskTable>>,
    /// `None`: no bucket configured; nothing is uploaded (said once per task).
    pub store: Option<Arc<dyn store::ResultStore>>,
    pub runner: Arc<dyn Runner>,
    pub emitter: Emitter,
    pub clock: Arc<dyn Clock>,
    /// Where `running`, `uploading` and `idle` are written.
    pub status: StatusTags,
    /// The lease loop, told when the one-shot task is done.
    pub lease: Arc<dyn LeaseEnd>,
}

/// Why a running task must stop now and be requeued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interruption {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// A task this worker runs now.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) message_id: Option<String>,
    /// The latest receipt handle of its message (a redelivery of the same message to
    /// this node replaces it).
    pub(crate) receipt: Arc<Mutex<Option<String>>>,
    pub(crate) interrupt: watch::Sender<Option<Interruption>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) deps: WorkDeps,
    pub(crate) settings: WorkSettings,
    pub(crate) slots: Mutex<BTreeMap<String, Slot>>,
    pub(crate) taking: AtomicBool,
    /// Messages asked for by receives in flight: they count against the free slots.
    pub(crate) asked: Mutex<u32>,
    /// A slot was freed, or taking stopped.
    pub(crate) changed: Notify,
    /// The tags the worker wants on the instance (see [`Shared::tag`]).
    pub(crate) tags: watch::Sender<Wish>,
}

/// The real [`TaskWorker`].
#[derive(Debug, Clone)]
pub struct QueueWorker {
    shared: Arc<Shared>,
}

impl QueueWorker {
    pub fn new(deps: WorkDeps, settings: WorkSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                deps,
                settings,
                slots: Mutex::new(BTreeMap::new()),
                taking: AtomicBool::new(true),
                asked: Mutex::new(0),
                changed: Notify::new(),
                tags: watch::channel(None).0,
            }),
        }
    }

    /// Adopts the tasks a previous run left, starts the one-shot task if it has not
    /// run, then takes tasks from the queue (when there is one) until told to stop.
    pub fn start(
        &self,
        one_shot: Option<lease_common::messages::Task>,
    ) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        {
            let shared = shared.clone();
            let wishes = shared.tags.subscribe();
            let status = shared.deps.status.clone();
            tokio::spawn(status.follow(wishes, move || shared.taking()));
        }
        tokio::spawn(async move {
            intake::adopt(&shared).await;
            if let Some(task) = one_shot {
                intake::one_shot(&shared, task).await;
            }
            if shared.deps.queue.is_some() {
                let receivers = if shared.settings.max_concurrent > 1 {
                    RECEIVERS
                } else {
                    1
                };
                let loops: Vec<_> = (0..receivers)
                    .map(|_| tokio::spawn(intake::receive_loop(shared.clone())))
                    .collect();
                for l in loops {
                    let _ = l.await;
                }
            }
        })
    }

    async fn interrupt_all(&self, until: DateTime<Utc>, reason: &str) {
        self.stop_taking_tasks();
        {
            let slots = self.shared.slots_lock();
            for slot in slots.values() {
                let next = Interruption {
                    until,
                    reason: reason.to_string(),
                };
                slot.interrupt.send_if_modified(|cur| {
                    if cur.is_none() {
                        *cur = Some(next);
                        true
                    } else {
                        false
                    }
                });
            }
        }
        let clock = self.shared.deps.clock.clone();
        loop {
            let notified = self.shared.changed.notified();
            if self.shared.slots_lock().is_empty() {
                return;
            }
            let left = (until - clock.now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
        }
    }
}

impl Shared {
    pub(crate) fn slots_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn asked_lock(&self) -> std::sync::MutexGuard<'_, u32> {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes every receive loop waiting for a free slot (and the next one to wait).
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
        self.changed.notify_one();
    }

    pub(crate) fn taking(&self) -> bool {
        self.taking.load(Ordering::SeqCst)
    }

    /// Asks for `lease:status` (and `lease:task`); [`StatusTags::follow`] writes the
    /// latest wish at most once a second, and only while the worker takes tasks (see
    /// [`crate::tagwrite`] for who decides which status).
    pub(crate) fn tag(&self, status: NodeStatus, task: Option<&str>) {
        let wish = Some((status, task.unwrap_or_default().to_string()));
        self.tags.send_if_modified(|cur| {
            if *cur == wish {
                false
            } else {
                *cur = wish;
                true
            }
        });
    }

    /// A task ended: free its slot and, with nothing left to do, say the node is idle.
    pub(crate) fn release(&self, task_id: &str) {
        let now_empty = {
            let mut slots = self.slots_lock();
            slots.remove(task_id);
            slots.is_empty()
        };
        if now_empty && self.taking() {
            self.tag(NodeStatus::Idle, None);
        }
        self.wake();
    }
}

impl Shared {
    /// A slot taken for a task that then was not claimed: free it, say nothing.
    pub(crate) fn unreserve(&self, task_id: &str) {
        self.slots_lock().remove(task_id);
        self.wake();
    }
}

impl TaskWorker for QueueWorker {
    fn current_task(&self) -> Option<String> {
        self.shared.slots_lock().keys().next().cloned()
    }

    fn stop_taking_tasks(&self) {
        self.shared.taking.store(false, Ordering::SeqCst);
        self.shared.wake();
    }

    fn drain(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(self.interrupt_all(until, "the lease is ending"))
    }

    fn checkpoint_and_requeue(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(self.interrupt_all(until, "spot interruption"))
    }
}
