//! Running a task's program: each in its own tmux session `lease-<task-id>` whose
//! output is piped to the task's log, so `lease attach` shows it live and a restart of
//! the agent leaves it running. The worker drives a [`Runner`]; [`TmuxRunner`] runs the
//! real programs, [`MockRunner`] simulates them for demos and benchmarks.
//!
//! A task's life on tmux: `start` writes a wrapper script into [`runner_dir`] (beside
//! the workdir, out of the bundle) and opens the session with `remain-on-exit` and
//! `pipe-pane` set in the same tmux command; the script waits for the go signal, runs
//! the program, prints an end line and writes the exit status atomically. `poll`
//! reads that status (once the end line is in the log, so the last output is not
//! missed), or tmux's `#{pane_dead_status}` if the script was killed; both survive the
//! agent, so a restarted agent adopts its tasks by `live_sessions` and `poll`.
//!
//! Helpers for the worker's output events: [`LogTail`] reads complete new lines from
//! the log, [`OutputParser`] turns a kind's raw lines into readable ones (and a Claude
//! session's final result into a [`Summary`]), [`batch_lines`] cuts them into
//! `TaskOutput`-sized chunks.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lease_common::messages::Task;

use crate::BoxFuture;

mod batch;
mod command;
pub mod ecr;
mod mock;
mod parse;
mod process;
mod secret;
mod tail;
mod tmux;
mod tools;
mod user;
mod wrapper;

pub use batch::{OUTPUT_BATCH_BYTES, batch_lines};
pub use command::ecr_registry;
pub use ecr::{Credentials, EcrError, EcrLogin, SdkEcr};
pub use mock::{DEFAULT_MOCK_DURATION, MOCK_RESULT_FILE, MockRunner};
pub use parse::{OutputParser, Summary};
pub use process::Finished;
pub use secret::{SdkSsm, SecretError, SecretStore};
pub use tail::LogTail;
pub use tmux::TmuxRunner;
pub use tools::{Exec, INSTALL_LIMIT, Processes};
pub use user::TaskUser;
pub use wrapper::runner_dir;

/// What the worker hands the runner to start a task.
#[derive(Debug, Clone)]
pub struct Launch {
    pub task: Task,
    /// The task's working directory: the program runs here, and it is the default
    /// bundle. It must exist. The runner keeps its own files beside it, in
    /// [`runner_dir`], never inside it, so they do not end up in the bundle.
    pub workdir: PathBuf,
    /// Everything the program writes to its terminal is appended here.
    pub log_path: PathBuf,
    /// Variables that tell the task who it is (`LEASE_TASK_ID`, …), set over the
    /// runner's own.
    pub env: Vec<(String, String)>,
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The exit code a shell would report (128 + signal for a signal), for
    /// `TaskCompleted`/`TaskFailed`.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    /// What a shell's `$?` means: 128 + n is "killed by signal n" (for the signal
    /// numbers that exist). A program that exits with such a code on its own is
    /// reported as killed; shells cannot tell the two apart either.
    pub fn from_shell_status(status: i32) -> Self {
        match status {
            129..=192 => Exit::Signal(status - 128),
            n => Exit::Code(n),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Failed to use '{path}' for task '{task_id}': {source}")]
    File {
        task_id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Failed to run '{program}' for session '{session}': {source}")]
    Spawn {
        program: String,
        session: String,
        source: std::io::Error,
    },
    #[error("'{program}' for session '{session}' did not finish within {limit:?}")]
    CommandTimeout {
        program: String,
        session: String,
        limit: Duration,
    },
    #[error("'{command}' for session '{session}' failed: {message}")]
    Command {
        command: String,
        session: String,
        message: String,
    },
    #[error("Task '{task_id}' did not start: {reason}")]
    NotStarted { task_id: String, reason: String },
    #[error("Task '{task_id}' has no session and left no exit status: its outcome is lost")]
    Lost { task_id: String },
    #[error("Task '{task_id}' recorded an unreadable exit status in '{path}': {content:?}")]
    BadStatus {
        task_id: String,
        path: PathBuf,
        content: String,
    },
    #[error("Failed to log in to registry '{registry}' for task '{task_id}': {reason}")]
    RegistryLogin {
        task_id: String,
        registry: String,
        reason: String,
    },
}

/// Runs tasks' programs. One instance serves every task of the agent; every method
/// names the task, so a restarted agent's new instance can carry on with tasks an
/// earlier one started.
pub trait Runner: Send + Sync + Debug {
    /// Starts the program in session `lease-<task-id>`; returns once it runs (or failed
    /// to start).
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>>;
    /// `None` while it runs; `Some(exit)` once it ended (also for a task started by an
    /// earlier agent).
    fn poll<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<Option<Exit>, RunError>>;
    /// SIGTERM (docker: `docker stop`), SIGKILL after `grace`; returns when the program
    /// has ended or the grace has passed.
    fn interrupt<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RunError>>;
    /// Removes the session and the runner's files beside `workdir`, after the worker
    /// has uploaded everything. The workdir and the log are the worker's.
    fn cleanup<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<(), RunError>>;
    /// Task ids of the `lease-*` sessions (adoption after an agent restart), including
    /// those whose program has ended (remain-on-exit keeps them): polling them tells
    /// how they ended.
    fn live_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, RunError>>;
}
