//! Running the helper programs (tmux, docker, kill) with a time limit, naming the
//! session they act for in every error.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::RunError;
use super::wrapper::UNIT_VARIABLES;

/// What a finished helper said.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` for `session`, feeding `stdin` if given, and kills it after
/// `limit`. A non-zero exit is not an error here: callers decide what it means.
pub async fn run(
    program: &str,
    args: &[String],
    session: &str,
    stdin: Option<&str>,
    limit: Duration,
) -> Result<Finished, RunError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A tmux server the agent starts inherits this environment; the unit's variables
    // belong to the agent alone. TMUX would point tmux at another server.
    for var in UNIT_VARIABLES.iter().chain(&["TMUX"]) {
        cmd.env_remove(var);
    }
    let spawn_error = |source| RunError::Spawn {
        program: program.to_string(),
        session: session.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(spawn_error)?;
        // Dropping the pipe closes it: the program sees the end of its input.
    }
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| RunError::CommandTimeout {
            program: program.to_string(),
            session: session.to_string(),
            limit,
        })?
        .map_err(spawn_error)?;
    Ok(Finished {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The error for a helper that ran and failed.
pub fn failed(program: &str, args: &[String], session: &str, out: &Finished) -> RunError {
    RunError::Command {
        command: format!(
            "{program} {}",
            args.first().map(String::as_str).unwrap_or("")
        ),
        session: session.to_string(),
        message: if out.stderr.is_empty() {
            "it exited with an error and said nothing".to_string()
        } else {
            out.stderr.clone()
        },
    }
}
