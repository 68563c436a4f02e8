//! The seam between the decision loop and the task worker (issue 4 implements it).
//!
//! The decision loop owns shutdown; the worker owns tasks. The loop tells the worker
//! what is about to happen and how long it has, and never waits past that:
//!
//! - rebalance recommendation → [`TaskWorker::stop_taking_tasks`];
//! - spot interruption → [`TaskWorker::checkpoint_and_requeue`] by the notice's time
//!   minus the configured margin;
//! - lease deadline, idle shutdown, `leased complete`, the machine shutting down →
//!   [`TaskWorker::drain`] by the given instant.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use crate::BoxFuture;

pub trait TaskWorker: Send + Sync + Debug {
    /// The id of the task running now, for heartbeats, `STATUS=` and the idle check.
    fn current_task(&self) -> Option<String>;

    /// Take no new tasks from now on; running ones carry on. Must return at once.
    fn stop_taking_tasks(&self);

    /// Stop taking tasks and interrupt running ones (each gets SIGTERM, its partial
    /// bundle uploaded and its message made visible again) before `until`. The loop
    /// stops waiting at `until` whatever happens.
    fn drain(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()>;

    /// A spot interruption: checkpoint running tasks and requeue them (attempt + 1)
    /// before `until`. The loop runs this beside itself and does not wait for it.
    fn checkpoint_and_requeue(&self, until: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The worker while this node takes no tasks (no queue configured; this issue).
#[derive(Debug)]
pub struct NoopWorker {
    taking_tasks: AtomicBool,
}

impl Default for NoopWorker {
    fn default() -> Self {
        Self {
            taking_tasks: AtomicBool::new(true),
        }
    }
}

impl NoopWorker {
    pub fn taking_tasks(&self) -> bool {
        self.taking_tasks.load(Ordering::Relaxed)
    }
}

impl TaskWorker for NoopWorker {
    fn current_task(&self) -> Option<String> {
        None
    }

    fn stop_taking_tasks(&self) {
        self.taking_tasks.store(false, Ordering::Relaxed);
    }

    fn drain(&self, _until: DateTime<Utc>) -> BoxFuture<'_, ()> {
        self.stop_taking_tasks();
        Box::pin(async {})
    }

    fn checkpoint_and_requeue(&self, _until: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
