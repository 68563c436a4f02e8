//! [`Runner`] on tmux: one session per task, the real programs.

use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lease_common::config::AgentConfig;
use lease_common::messages::TaskSpec;
use lease_common::session::task_session;
use tokio::time::Instant;

use super::command::{self, Settings, ecr_registry};
use super::ecr::EcrLogin;
use super::process::{self, Finished};
use super::secret::SecretStore;
use super::tools::{self, Exec, Processes};
use super::user::{TaskUser, merge_env};
use super::wrapper::{
    self, GO, KIND, LOG, PID, PROMPT, SCRIPT, Script, log_complete, read_exit, runner_dir,
};
use super::{Exit, Launch, RunError, Runner};
use crate::BoxFuture;

/// A tmux command answers in milliseconds; this only stops a wedged server from
/// wedging the agent.
const TMUX_LIMIT: Duration = Duration::from_secs(10);
/// `docker login` talks to the registry over the network.
const LOGIN_LIMIT: Duration = Duration::from_secs(60);
/// How long the wrapper may take to record its pid once the session exists.
const START_LIMIT: Duration = Duration::from_secs(10);
/// `docker stop` waits the grace itself; this is what it may take beyond that.
const DOCKER_STOP_SLACK: Duration = Duration::from_secs(30);
/// After SIGKILL, how long the pane may take to show the task's end.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a wait re-reads the task's state.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Runs each task in tmux session `lease-<task-id>`.
#[derive(Debug)]
pub struct TmuxRunner {
    settings: Settings,
    ecr: Arc<dyn EcrLogin>,
    /// `tmux -S <socket>`: the agent's own server, run as the task user.
    socket: PathBuf,
    /// Who tasks run as (when the agent is root).
    user: String,
    /// Set for every task over the base environment (the config's `task-env`).
    env: Vec<(String, String)>,
    /// `claude.api-key-parameter` and where to read it.
    api_key: Option<(String, Arc<dyn SecretStore>)>,
    /// `claude.cli-version`: what the installer installs when the CLI is missing.
    claude_version: Option<String>,
    /// Runs the CLI's installer.
    tools: Arc<dyn Exec>,
    /// One install at a time: tasks starting together must not race in `~/.local`.
    install: tokio::sync::Mutex<()>,
}

/// What tmux says about a session's pane.
#[derive(Debug, PartialEq, Eq)]
enum Pane {
    Missing,
    Running,
    Dead(Exit),
    /// Ended, but tmux has no status for it: it marks a pane dead when its terminal
    /// closes, and records the status only once it has reaped the process, which
    /// tmux 3.3a here failed to do for about one pane in three on a new server.
    DeadUnknown,
}

impl TmuxRunner {
    pub fn new(config: &AgentConfig, region: String, ecr: Arc<dyn EcrLogin>) -> Self {
        Self {
            settings: Settings {
                bedrock: config.claude.bedrock,
                default_model: config.claude.model.clone(),
                region,
                claude_program: "claude".into(),
            },
            ecr,
            socket: config.tmux_socket.clone(),
            user: config.task_user.clone(),
            env: config
                .task_env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            api_key: None,
            claude_version: config.claude.cli_version.clone(),
            tools: Arc::new(Processes),
            install: tokio::sync::Mutex::new(()),
        }
    }

    /// Claude tasks get `ANTHROPIC_API_KEY` from the SSM parameter `name`, read from
    /// `store` when each starts (so a rotated key reaches the next task).
    pub fn with_api_key_parameter(
        mut self,
        name: impl Into<String>,
        store: Arc<dyn SecretStore>,
    ) -> Self {
        self.api_key = Some((name.into(), store));
        self
    }

    /// Runs Claude Code from `program` (a path, or a name looked up on PATH) instead
    /// of `claude` on the agent's PATH.
    pub fn with_claude_program(mut self, program: impl Into<String>) -> Self {
        self.settings.claude_program = program.into();
        self
    }

    /// Installs missing tools (the Claude Code CLI) through `exec` instead of real
    /// processes.
    pub fn with_installer(mut self, exec: Arc<dyn Exec>) -> Self {
        self.tools = exec;
        self
    }

    /// Sets `key=value` for every task, over the base environment (as `task-env` does).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Uses the tmux server on socket `path` (`tmux -S path`) instead of the config's.
    pub fn with_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = path.into();
        self
    }

    async fn task_user(&self, session: &str) -> Result<TaskUser, RunError> {
        TaskUser::resolve(&self.user)
            .await
            .map_err(|message| RunError::Command {
                command: "getent passwd".into(),
                session: session.to_string(),
                message,
            })
    }

    /// A tmux command on the agent's server, run as the task user: the server a
    /// `new-session` starts is then that user's, and so is every task in it.
    async fn tmux(&self, session: &str, args: &[&str]) -> Result<Finished, RunError> {
        let user = self.task_user(session).await?;
        let mut all: Vec<String> = vec!["-S".into(), self.socket.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let (program, all) = user.command("tmux", &all);
        process::run(&program, &all, session, None, TMUX_LIMIT).await
    }

    /// The socket's directory, private to the task user (tmux refuses a socket
    /// others can reach). Only a directory the agent creates is given to the user: a
    /// socket configured in a shared directory such as `/tmp` must not hand it over.
    fn prepare_socket_dir(&self, user: &TaskUser, task_id: &str) -> Result<(), RunError> {
        let Some(dir) = self.socket.parent() else {
            return Ok(());
        };
        let fail = |source| RunError::File {
            task_id: task_id.to_string(),
            path: dir.to_path_buf(),
            source,
        };
        match std::fs::metadata(dir) {
            Ok(m) if user.switch && m.uid() != user.uid => Err(RunError::NotStarted {
                task_id: task_id.to_string(),
                reason: format!(
                    "the tmux socket's directory '{}' belongs to uid {}, not to the task \
                     user '{}': give tmux-socket a directory of its own",
                    dir.display(),
                    m.uid(),
                    user.name
                ),
            }),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent).map_err(fail)?;
                }
                std::fs::create_dir(dir).map_err(fail)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(fail)?;
                user.give(dir).map_err(fail)
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// Runs tasks as `name` instead of the config's `task-user`.
    pub fn with_task_user(mut self, name: impl Into<String>) -> Self {
        self.user = name.into();
        self
    }

    async fn has_session(&self, session: &str) -> Result<bool, RunError> {
        let target = format!("={session}");
        Ok(self
            .tmux(session, &["has-session", "-t", &target])
            .await?
            .success)
    }

    async fn pane(&self, session: &str) -> Result<Pane, RunError> {
        let target = format!("={session}:");
        let out = self
            .tmux(
                session,
                &[
                    "display-message",
                    "-p",
                    "-t",
                    &target,
                    "#{session_name}|#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}",
                ],
            )
            .await?;
        if !out.success {
            if is_missing(&out.stderr) {
                return Ok(Pane::Missing);
            }
            return Err(process::failed(
                "tmux",
                &["display-message".into()],
                session,
                &out,
            ));
        }
        // A server on its way out answers for a session it no longer has with empty
        // fields, so the answer must name the session to count.
        let fields: Vec<&str> = out.stdout.trim().split('|').collect();
        let unexpected = || RunError::Command {
            command: "tmux display-message".into(),
            session: session.to_string(),
            message: format!("unexpected answer {:?}", out.stdout.trim()),
        };
        match fields.as_slice() {
            [name, ..] if *name != session => Ok(Pane::Missing),
            [_, "0", _, _] => Ok(Pane::Running),
            // tmux gives a signal for a pane killed by one, else the exit status.
            [_, "1", "", ""] => Ok(Pane::DeadUnknown),
            [_, "1", status, signal] => match (signal.parse::<i32>(), status.parse::<i32>()) {
                (Ok(sig), _) if sig > 0 => Ok(Pane::Dead(Exit::Signal(sig))),
                (_, Ok(code)) => Ok(Pane::Dead(Exit::from_shell_status(code))),
                _ => Err(unexpected()),
            },
            _ => Err(unexpected()),
        }
    }

    async fn kill_session(&self, session: &str) -> Result<(), RunError> {
        let target = format!("={session}");
        let out = self.tmux(session, &["kill-session", "-t", &target]).await?;
        if out.success || is_missing(&out.stderr) {
            Ok(())
        } else {
            Err(process::failed(
                "tmux",
                &["kill-session".into()],
                session,
                &out,
            ))
        }
    }

    async fn docker_login(&self, task_id: &str, registry: &str) -> Result<(), RunError> {
        let login_error = |reason: String| RunError::RegistryLogin {
            task_id: task_id.to_string(),
            registry: registry.to_string(),
            reason,
        };
        let creds = self
            .ecr
            .credentials(registry)
            .await
            .map_err(|e| login_error(e.to_string()))?;
        let args: Vec<String> = [
            "login",
            "--username",
            &creds.username,
            "--password-stdin",
            registry,
        ]
        .map(String::from)
        .to_vec();
        // As the task user, whose `docker run` then finds the login in its own
        // ~/.docker/config.json.
        let user = self.task_user(&task_session(task_id)).await?;
        let (program, args) = user.command("docker", &args);
        let out = process::run(
            &program,
            &args,
            &task_session(task_id),
            Some(&creds.password),
            LOGIN_LIMIT,
        )
        .await?;
        if out.success {
            Ok(())
        } else {
            Err(login_error(out.stderr))
        }
    }

    async fn start_task(&self, launch: &Launch) -> Result<(), RunError> {
        let task_id = launch.task.id.as_str();
        let session = task_session(task_id);
        let not_started = |reason: String| RunError::NotStarted {
            task_id: task_id.to_string(),
            reason,
        };
        let plan =
            command::plan(&launch.task, &launch.workdir, &self.settings).map_err(not_started)?;
        let mut plan = command::with_task_vars(plan, &launch.task.spec, &launch.env);
        if let (TaskSpec::Claude(_), Some((name, store)), false) =
            (&launch.task.spec, &self.api_key, self.settings.bedrock)
        {
            let key = store.parameter(name).await.map_err(|e| {
                not_started(format!("its Anthropic API key could not be read: {e}"))
            })?;
            plan.env.push(("ANTHROPIC_API_KEY".into(), key));
        }
        if let Some((bad, _)) = self
            .env
            .iter()
            .chain(&launch.env)
            .find(|(k, _)| !is_shell_name(k))
        {
            return Err(not_started(format!(
                "the runner's environment has an invalid variable name {bad:?}"
            )));
        }
        if !launch.workdir.is_dir() {
            return Err(not_started(format!(
                "its working directory '{}' does not exist",
                launch.workdir.display()
            )));
        }
        if self.has_session(&session).await? {
            return Err(not_started(format!(
                "tmux session '{session}' already exists (adopt it instead)"
            )));
        }

        let dir = runner_dir(&launch.workdir);
        let prepare = |path: &Path, source| RunError::File {
            task_id: task_id.to_string(),
            path: path.to_path_buf(),
            source,
        };
        // An earlier attempt's exit status would end this one at its first poll.
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(prepare(&dir, e)),
            _ => {}
        }
        std::fs::create_dir_all(&dir).map_err(|e| prepare(&dir, e))?;
        if let Some(parent) = launch.log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| prepare(parent, e))?;
        }
        // The task user's tmux writes the log, and the task its workdir and the
        // runner's files (its pid and exit status).
        let user = self.task_user(&session).await?;
        self.prepare_socket_dir(&user, task_id)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log_path)
            .map_err(|e| prepare(&launch.log_path, e))?;
        user.give(&launch.log_path)
            .map_err(|e| prepare(&launch.log_path, e))?;
        user.give_tree(&launch.workdir)
            .map_err(|e| prepare(&launch.workdir, e))?;
        user.give(&dir).map_err(|e| prepare(&dir, e))?;

        if let TaskSpec::Claude(_) = &launch.task.spec {
            // The task's environment without its secrets: the installer's command
            // line is visible to every user in `ps`.
            let env = merge_env(&[&user.base_env(), &self.env]);
            let _one = self.install.lock().await;
            tools::ensure_claude(
                self.tools.as_ref(),
                &user,
                &env,
                &self.settings.claude_program,
                self.claude_version.as_deref(),
                &session,
                tools::INSTALL_LIMIT,
            )
            .await
            .map_err(not_started)?;
        }

        if let TaskSpec::Docker(d) = &launch.task.spec
            && let Some(registry) = ecr_registry(&d.image)
        {
            self.docker_login(task_id, registry).await?;
        }

        let stdin = match &plan.stdin {
            Some(text) => {
                let path = dir.join(PROMPT);
                write_private(&path, text).map_err(|e| prepare(&path, e))?;
                user.give(&path).map_err(|e| prepare(&path, e))?;
                Some(path)
            }
            None => None,
        };
        let script = Script {
            task_id: task_id.to_string(),
            dir: dir.clone(),
            workdir: launch.workdir.clone(),
            env: merge_env(&[&user.base_env(), &self.env, &plan.env]),
            preamble: plan.preamble,
            argv: plan.argv,
            stdin,
        };
        let script_path = dir.join(SCRIPT);
        write_private(&script_path, &script.render()).map_err(|e| prepare(&script_path, e))?;
        user.give(&script_path)
            .map_err(|e| prepare(&script_path, e))?;
        let log_path = dir.join(LOG);
        std::fs::write(&log_path, launch.log_path.as_os_str().as_bytes())
            .map_err(|e| prepare(&log_path, e))?;
        let kind_path = dir.join(KIND);
        std::fs::write(&kind_path, launch.task.spec.kind()).map_err(|e| prepare(&kind_path, e))?;

        // One tmux command, so the pane never exists without its options: the script
        // cannot finish (and the pane close) before remain-on-exit is on, and nothing
        // it prints is missed by the pipe.
        let target = format!("={session}:");
        let pipe = format!(
            "exec cat >> {}",
            wrapper::quote(&launch.log_path.to_string_lossy())
        );
        let workdir = launch.workdir.to_string_lossy();
        let script_arg = script_path.to_string_lossy();
        let out = self
            .tmux(
                &session,
                &[
                    "new-session",
                    "-d",
                    "-s",
                    &session,
                    "-c",
                    &workdir,
                    "-x",
                    "200",
                    "-y",
                    "50",
                    // Nothing of the server's environment reaches the task: the script
                    // exports all it gets.
                    "env",
                    "-i",
                    "sh",
                    &script_arg,
                    ";",
                    "set-option",
                    "-w",
                    "-t",
                    &target,
                    "remain-on-exit",
                    "on",
                    ";",
                    "pipe-pane",
                    "-o",
                    "-t",
                    &target,
                    &pipe,
                ],
            )
            .await?;
        if !out.success {
            // new-session may have succeeded before a later command failed.
            let _ = self.kill_session(&session).await;
            return Err(process::failed(
                "tmux",
                &["new-session".into()],
                &session,
                &out,
            ));
        }

        let pid_path = dir.join(PID);
        let started = Instant::now();
        while !pid_path.exists() {
            if started.elapsed() > START_LIMIT {
                let _ = self.kill_session(&session).await;
                return Err(not_started(format!(
                    "its wrapper script did not start within {START_LIMIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let go = dir.join(GO);
        std::fs::write(&go, "").map_err(|e| prepare(&go, e))?;
        tracing::info!(task = task_id, %session, kind = launch.task.spec.kind(), "task started");
        Ok(())
    }

    async fn poll_task(&self, task_id: &str, workdir: &Path) -> Result<Option<Exit>, RunError> {
        let dir = runner_dir(workdir);
        if let Some(exit) = read_exit(task_id, &dir)? {
            return Ok(log_complete(&dir).then_some(exit));
        }
        let session = task_session(task_id);
        match self.pane(&session).await? {
            Pane::Running => {
                // An agent that died between creating the session and the go signal:
                // the pane is ready (it was set up in the same tmux command), so the
                // start it asked for goes ahead.
                if dir.join(PID).exists() && !dir.join(GO).exists() {
                    let go = dir.join(GO);
                    std::fs::write(&go, "").map_err(|source| RunError::File {
                        task_id: task_id.to_string(),
                        path: go,
                        source,
                    })?;
                }
                Ok(None)
            }
            // The status file is written just before the script exits; read it again
            // now the pane has gone.
            Pane::Dead(exit) => match read_exit(task_id, &dir)? {
                Some(recorded) => Ok(log_complete(&dir).then_some(recorded)),
                None => Ok(Some(exit)),
            },
            Pane::Missing | Pane::DeadUnknown => {
                read_exit(task_id, &dir)?
                    .map(Some)
                    .ok_or_else(|| RunError::Lost {
                        task_id: task_id.to_string(),
                    })
            }
        }
    }

    /// Polls until the task has ended or `limit` passed; true if it ended.
    async fn wait_end(&self, task_id: &str, workdir: &Path, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            match self.poll_task(task_id, workdir).await {
                Ok(Some(_)) | Err(RunError::Lost { .. }) => return true,
                Ok(None) | Err(_) => {}
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Sends `signal` to the task's process group (the wrapper's pid).
    async fn signal_group(&self, task_id: &str, dir: &Path, signal: &str) -> Result<(), RunError> {
        let session = task_session(task_id);
        let pid_path = dir.join(PID);
        let pid: u32 = match std::fs::read_to_string(&pid_path) {
            Ok(text) => text.trim().parse().map_err(|_| RunError::BadStatus {
                task_id: task_id.to_string(),
                path: pid_path.clone(),
                content: text.clone(),
            })?,
            // No wrapper ran: closing the session is all there is to do.
            Err(e) if e.kind() == ErrorKind::NotFound => return self.kill_session(&session).await,
            Err(source) => {
                return Err(RunError::File {
                    task_id: task_id.to_string(),
                    path: pid_path,
                    source,
                });
            }
        };
        let args: Vec<String> = ["-s", signal, "--", &format!("-{pid}")]
            .map(String::from)
            .to_vec();
        // Failure means the group is gone already: nothing left to signal.
        let out = process::run("kill", &args, &session, None, TMUX_LIMIT).await?;
        if !out.success {
            tracing::debug!(task = task_id, signal, "kill: {}", out.stderr);
        }
        Ok(())
    }

    async fn interrupt_task(
        &self,
        task_id: &str,
        workdir: &Path,
        grace: Duration,
    ) -> Result<(), RunError> {
        match self.poll_task(task_id, workdir).await {
            Ok(Some(_)) | Err(RunError::Lost { .. }) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let dir = runner_dir(workdir);
        let session = task_session(task_id);
        let docker = std::fs::read_to_string(dir.join(KIND)).is_ok_and(|k| k == "docker");
        let mut stopped = false;
        let mut patience = grace;
        if docker {
            // docker stop sends the image's stop signal (SIGTERM by default), waits
            // the grace, then SIGKILL; the `docker run` in the pane then returns.
            let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
            let args: Vec<String> = ["stop", "-t", &secs.to_string(), &session]
                .map(String::from)
                .to_vec();
            let out =
                process::run("docker", &args, &session, None, grace + DOCKER_STOP_SLACK).await?;
            stopped = out.success;
            if stopped {
                // The grace was spent inside docker stop; the client only has to return.
                patience = KILL_WAIT;
            } else {
                // No container yet (still pulling): the client in the pane is stopped
                // like any other task.
                tracing::debug!(task = task_id, "docker stop: {}", out.stderr);
            }
        }
        if !stopped {
            self.signal_group(task_id, &dir, "TERM").await?;
        }
        if self.wait_end(task_id, workdir, patience).await {
            return Ok(());
        }
        tracing::warn!(
            task = task_id,
            ?grace,
            "task still runs after SIGTERM: SIGKILL"
        );
        self.signal_group(task_id, &dir, "KILL").await?;
        self.wait_end(task_id, workdir, KILL_WAIT).await;
        Ok(())
    }

    async fn cleanup_task(&self, task_id: &str, workdir: &Path) -> Result<(), RunError> {
        let session = task_session(task_id);
        let dir = runner_dir(workdir);
        if std::fs::read_to_string(dir.join(KIND)).is_ok_and(|k| k == "docker") {
            // A container whose client was killed keeps running; it must not outlive
            // its task. Usually `--rm` has removed it already.
            let args: Vec<String> = ["rm", "-f", &session].map(String::from).to_vec();
            let _ = process::run("docker", &args, &session, None, TMUX_LIMIT).await;
        }
        self.kill_session(&session).await?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(RunError::File {
                task_id: task_id.to_string(),
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    async fn sessions(&self) -> Result<Vec<String>, RunError> {
        let out = self
            .tmux("lease-*", &["list-sessions", "-F", "#{session_name}"])
            .await?;
        if !out.success {
            if is_missing(&out.stderr) {
                return Ok(Vec::new());
            }
            return Err(process::failed(
                "tmux",
                &["list-sessions".into()],
                "lease-*",
                &out,
            ));
        }
        Ok(out
            .stdout
            .lines()
            .filter_map(|name| name.strip_prefix("lease-"))
            .map(str::to_string)
            .collect())
    }
}

/// A name `export` takes: letters, digits and `_`, not starting with a digit.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// tmux's ways of saying there is no such session (or no server at all: the server
/// exits with its last session, and a command can race that exit).
fn is_missing(stderr: &str) -> bool {
    [
        "can't find",
        "no server running",
        "error connecting",
        "no current",
        "server exited",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Writes a file only its owner can read (root, then the task user it is given to):
/// a prompt or a script may hold secrets.
fn write_private(path: &PathBuf, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Runner for TmuxRunner {
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>> {
        let launch = launch.clone();
        Box::pin(async move { self.start_task(&launch).await })
    }

    fn poll<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<Option<Exit>, RunError>> {
        Box::pin(self.poll_task(task_id, workdir))
    }

    fn interrupt<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(self.interrupt_task(task_id, workdir, grace))
    }

    fn cleanup<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(self.cleanup_task(task_id, workdir))
    }

    fn live_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, RunError>> {
        Box::pin(self.sessions())
    }
}
