//! [`Runner`] on tmux: one session per task, the real programs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lease_common::config::AgentConfig;

use super::ecr::EcrLogin;
use super::{Exit, Launch, RunError, Runner};
use crate::BoxFuture;

/// The tmux session of a task.
pub fn session_name(task_id: &str) -> String {
    format!("lease-{task_id}")
}

/// Runs each task in tmux session `lease-<task-id>`.
#[derive(Debug)]
pub struct TmuxRunner {
    bedrock: bool,
    default_model: Option<String>,
    region: String,
    ecr: Arc<dyn EcrLogin>,
    /// `tmux -L <socket>`: a private server (tests). `None` is the default server, the
    /// one `tmux attach` as root finds.
    socket: Option<String>,
}

impl TmuxRunner {
    pub fn new(config: &AgentConfig, region: String, ecr: Arc<dyn EcrLogin>) -> Self {
        Self {
            bedrock: config.claude.bedrock,
            default_model: config.claude.model.clone(),
            region,
            ecr,
            socket: None,
        }
    }

    /// Uses the tmux server on socket `name` (`tmux -L name`) instead of the default.
    pub fn with_socket(mut self, name: impl Into<String>) -> Self {
        self.socket = Some(name.into());
        self
    }
}

impl Runner for TmuxRunner {
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>> {
        let task_id = launch.task.id.clone();
        Box::pin(async move {
            let _ = (
                &self.bedrock,
                &self.default_model,
                &self.region,
                &self.ecr,
                &self.socket,
            );
            Err(RunError::NotStarted {
                task_id,
                reason: "tmux runner not implemented yet".into(),
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
