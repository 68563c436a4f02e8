//! Simulated task execution (`mock-mode`): no program runs.

use std::path::Path;
use std::time::Duration;

use super::{Exit, Launch, RunError, Runner};
use crate::BoxFuture;

/// Writes realistic output to the log and a small result file into the workdir, then
/// "exits 0" after `duration`.
#[derive(Debug)]
pub struct MockRunner {
    duration: Duration,
}

impl MockRunner {
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }
}

impl Runner for MockRunner {
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>> {
        let task_id = launch.task.id.clone();
        Box::pin(async move {
            let _ = self.duration;
            Err(RunError::NotStarted {
                task_id,
                reason: "mock runner not implemented yet".into(),
            })
        })
    }

    fn poll<'a>(
        &'a self,
        task_id: &'a str,
        _workdir: &'a Path,
    ) -> BoxFuture<'a, Result<Option<Exit>, RunError>> {
        Box::pin(async move {
            Err(RunError::Lost {
                task_id: task_id.to_string(),
            })
        })
    }

    fn interrupt<'a>(
        &'a self,
        _task_id: &'a str,
        _workdir: &'a Path,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async { Ok(()) })
    }

    fn cleanup<'a>(
        &'a self,
        _task_id: &'a str,
        _workdir: &'a Path,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async { Ok(()) })
    }

    fn live_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, RunError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
