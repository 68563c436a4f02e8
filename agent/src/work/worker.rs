//! The seams between the lease loop and the task worker, beside the worker
//! ([`super::QueueWorker`]) that implements them.
//!
//! The lease loop owns the lease's end; the worker owns tasks. Through
//! [`TaskWorker`] the loop tells the worker what is about to happen and how long it
//! has, and never waits past that:
//!
//! - rebalance recommendation → [`TaskWorker::stop_taking_tasks`];
//! - spot interruption → [`TaskWorker::checkpoint_and_requeue`] by the notice's time
//!   minus the configured margin;
//! - lease deadline, idle shutdown, `leased complete`, the machine shutting down →
//!   [`TaskWorker::drain`] by the given instant.
//!
//! Through [`LeaseEnd`] the worker tells the loop the one-shot task is done, which
//! ends the lease.

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

/// The lease loop, as the one-shot task's end reaches it.
pub trait LeaseEnd: Send + Sync + Debug {
    /// The one-shot task is done; `message` says how, for the log. False when the loop
    /// is gone.
    fn task_done(&self, failed: bool, message: String) -> BoxFuture<'_, bool>;
}

/// The worker of a node that takes no tasks: no queue and no one-shot task configured.
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

#[cfg(test)]
pub mod fake {
    //! A worker that records what the loop asked of it.
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::clock::Clock;

    #[derive(Debug)]
    pub struct RecordingWorker {
        inner: NoopWorker,
        clock: Arc<dyn Clock>,
        pub checkpoints: Mutex<Vec<DateTime<Utc>>>,
        pub drains: Mutex<u32>,
        /// (when drain was called, its `until`)
        pub drain_calls: Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
        pub task: Mutex<Option<String>>,
    }

    impl RecordingWorker {
        pub fn new(clock: Arc<dyn Clock>) -> Self {
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

    /// A lease that records the one-shot task's end.
    #[derive(Debug, Default)]
    pub struct RecordingLease {
        pub done: Mutex<Vec<(bool, String)>>,
    }

    impl LeaseEnd for RecordingLease {
        fn task_done(&self, failed: bool, message: String) -> BoxFuture<'_, bool> {
            self.done.lock().unwrap().push((failed, message));
            Box::pin(async { true })
        }
    }
}
