//! Simulated task execution (`mock-mode`): no program runs, yet the log, the result
//! file and the exit look like a real run's, so the worker's pipeline (events, log
//! upload, bundle upload) is exercised unchanged. Demos and benchmarks use it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lease_common::messages::{Task, TaskSpec};

use super::{Exit, Launch, RunError, Runner};
use crate::BoxFuture;

/// The simulated run's default length: long enough that output arrives in steps like
/// a real task's, short enough for benchmarks of many tasks a second.
pub const DEFAULT_MOCK_DURATION: Duration = Duration::from_millis(30);
/// The file a simulated run leaves in its working directory.
pub const MOCK_RESULT_FILE: &str = "result.json";

/// Writes realistic output to the log, spread over `duration`, and
/// [`MOCK_RESULT_FILE`] into the workdir, then "exits 0". Zero `duration` does it all
/// inside `start`.
#[derive(Debug)]
pub struct MockRunner {
    duration: Duration,
    tasks: Mutex<HashMap<String, Simulation>>,
}

#[derive(Debug)]
struct Simulation {
    exit: Arc<Mutex<Option<Exit>>>,
    log: PathBuf,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl MockRunner {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Simulation>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MockRunner {
    fn default() -> Self {
        Self::new(DEFAULT_MOCK_DURATION)
    }
}

/// What the simulated program prints, by kind. A Claude task prints stream-json, so
/// the output parser yields lines and a summary as for a real session.
fn script(task: &Task, workdir: &Path) -> Vec<String> {
    let id = &task.id;
    match &task.spec {
        TaskSpec::Shell(s) => vec![
            format!("+ {}", s.command),
            format!("mock-mode: simulating task {id} (attempt {})", task.attempt),
            "step 1/3: preparing inputs".into(),
            "step 2/3: working".into(),
            "step 3/3: writing result.json".into(),
            "done".into(),
        ],
        TaskSpec::Docker(d) => vec![
            format!("mock-mode: simulating `docker run {}`", d.image),
            "epoch 1/3 loss=0.6931 acc=0.512".into(),
            "epoch 2/3 loss=0.4127 acc=0.803".into(),
            "epoch 3/3 loss=0.2875 acc=0.889".into(),
            "saved /out/result.json".into(),
        ],
        TaskSpec::Claude(c) => {
            let session = format!("mock-{id}");
            let file = workdir.join(MOCK_RESULT_FILE);
            let model = c.model.clone().unwrap_or_else(|| "mock".into());
            [
                serde_json::json!({"type": "system", "subtype": "init", "session_id": session,
                    "cwd": workdir, "model": model, "tools": ["Read", "Write", "Bash"],
                    "mcp_servers": [], "permissionMode": "default"}),
                serde_json::json!({"type": "assistant", "session_id": session, "message": {
                    "role": "assistant", "content": [{"type": "text",
                    "text": format!("mock-mode: simulating a session for task {id}.")}]}}),
                serde_json::json!({"type": "assistant", "session_id": session, "message": {
                    "role": "assistant", "content": [{"type": "tool_use", "id": "toolu_mock",
                    "name": "Write", "input": {"file_path": file, "content": "{}"}}]}}),
                serde_json::json!({"type": "user", "session_id": session, "message": {
                    "role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock",
                    "content": "File created successfully"}]}}),
                serde_json::json!({"type": "result", "subtype": "success", "is_error": false,
                    "num_turns": 2, "result": "mock-mode: wrote result.json",
                    "total_cost_usd": 0.0, "session_id": session}),
            ]
            .iter()
            .map(|v| v.to_string())
            .collect()
        }
    }
}

fn append(log: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    f.write_all(format!("{line}\n").as_bytes())
}

fn result_file(task: &Task) -> String {
    serde_json::json!({
        "task_id": task.id,
        "kind": task.spec.kind(),
        "attempt": task.attempt,
        "mock": true,
    })
    .to_string()
}

impl Runner for MockRunner {
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>> {
        let launch = launch.clone();
        Box::pin(async move {
            let task_id = launch.task.id.clone();
            let prepare = |path: &Path, source| RunError::File {
                task_id: task_id.clone(),
                path: path.to_path_buf(),
                source,
            };
            if !launch.workdir.is_dir() {
                return Err(RunError::NotStarted {
                    task_id: task_id.clone(),
                    reason: format!(
                        "its working directory '{}' does not exist",
                        launch.workdir.display()
                    ),
                });
            }
            if let Some(sim) = self.tasks().get(&task_id)
                && sim
                    .exit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_none()
            {
                return Err(RunError::NotStarted {
                    task_id: task_id.clone(),
                    reason: "its simulation is running already".into(),
                });
            }
            if let Some(parent) = launch.log_path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| prepare(parent, e))?;
            }
            let lines = script(&launch.task, &launch.workdir);
            let result = result_file(&launch.task);
            let result_path = launch.workdir.join(MOCK_RESULT_FILE);
            let exit = Arc::new(Mutex::new(None));
            let handle = if self.duration.is_zero() {
                for line in &lines {
                    append(&launch.log_path, line).map_err(|e| prepare(&launch.log_path, e))?;
                }
                std::fs::write(&result_path, &result).map_err(|e| prepare(&result_path, e))?;
                *exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(Exit::Code(0));
                None
            } else {
                let step = self.duration / u32::try_from(lines.len()).unwrap_or(1).max(1);
                let exit = exit.clone();
                let log = launch.log_path.clone();
                Some(tokio::spawn(async move {
                    let mut code = 0;
                    for line in &lines {
                        if append(&log, line).is_err() {
                            code = 1;
                        }
                        tokio::time::sleep(step).await;
                    }
                    if std::fs::write(&result_path, &result).is_err() {
                        code = 1;
                    }
                    *exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(Exit::Code(code));
                }))
            };
            self.tasks().insert(
                task_id,
                Simulation {
                    exit,
                    log: launch.log_path.clone(),
                    handle,
                },
            );
            Ok(())
        })
    }

    fn poll<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<Option<Exit>, RunError>> {
        Box::pin(async move {
            if let Some(sim) = self.tasks().get(task_id) {
                return Ok(*sim.exit.lock().unwrap_or_else(PoisonError::into_inner));
            }
            // Started by an earlier agent: the result file is its last act.
            if workdir.join(MOCK_RESULT_FILE).exists() {
                Ok(Some(Exit::Code(0)))
            } else {
                Err(RunError::Lost {
                    task_id: task_id.to_string(),
                })
            }
        })
    }

    fn interrupt<'a>(
        &'a self,
        task_id: &'a str,
        _workdir: &'a Path,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async move {
            let tasks = self.tasks();
            let Some(sim) = tasks.get(task_id) else {
                return Ok(());
            };
            let mut exit = sim.exit.lock().unwrap_or_else(PoisonError::into_inner);
            if exit.is_none() {
                if let Some(h) = &sim.handle {
                    h.abort();
                }
                let _ = append(&sim.log, "mock-mode: interrupted (SIGTERM)");
                *exit = Some(Exit::Signal(15));
            }
            Ok(())
        })
    }

    fn cleanup<'a>(
        &'a self,
        task_id: &'a str,
        _workdir: &'a Path,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async move {
            if let Some(Simulation {
                handle: Some(h), ..
            }) = self.tasks().remove(task_id)
            {
                h.abort();
            }
            Ok(())
        })
    }

    fn live_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, RunError>> {
        Box::pin(async move {
            Ok(self
                .tasks()
                .iter()
                .filter(|(_, s)| {
                    s.exit
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_none()
                })
                .map(|(id, _)| id.clone())
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{LogTail, OutputParser};
    use lease_common::messages::{ClaudeSpec, ShellSpec};

    fn launch(dir: &Path, spec: TaskSpec) -> Launch {
        let workdir = dir.join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        Launch {
            task: Task::new("m1", spec),
            workdir,
            log_path: dir.join("logs/m1.log"),
            env: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_run_writes_output_over_its_duration_then_exits_0() {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(
            tmp.path(),
            TaskSpec::Shell(ShellSpec {
                command: "make".into(),
            }),
        );
        let runner = MockRunner::new(Duration::from_secs(6));
        runner.start(&l).await.unwrap();
        assert_eq!(runner.poll("m1", &l.workdir).await.unwrap(), None);
        assert_eq!(
            runner.live_sessions().await.unwrap(),
            vec!["m1".to_string()]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut tail = LogTail::new(&l.log_path, 0);
        let early = tail.read_lines().unwrap();
        assert!(!early.is_empty() && early.len() < 6, "{early:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            runner.poll("m1", &l.workdir).await.unwrap(),
            Some(Exit::Code(0))
        );
        assert_eq!(early.len() + tail.read_lines().unwrap().len(), 6);
        let result = std::fs::read_to_string(l.workdir.join(MOCK_RESULT_FILE)).unwrap();
        assert!(result.contains("\"mock\":true"), "{result}");

        // A new instance (a restarted agent) learns the end from the result file.
        let after_restart = MockRunner::new(Duration::ZERO);
        assert_eq!(
            after_restart.poll("m1", &l.workdir).await.unwrap(),
            Some(Exit::Code(0))
        );
        assert!(matches!(
            after_restart.poll("other", &l.workdir.join("x")).await,
            Err(RunError::Lost { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_mock_claude_session_parses_into_a_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TaskSpec::Claude(ClaudeSpec {
            prompt: "p".into(),
            model: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            max_turns: None,
        });
        let l = launch(tmp.path(), spec.clone());
        let runner = MockRunner::new(Duration::ZERO);
        runner.start(&l).await.unwrap();
        assert_eq!(
            runner.poll("m1", &l.workdir).await.unwrap(),
            Some(Exit::Code(0))
        );
        let mut parser = OutputParser::for_spec(&spec);
        let lines: Vec<String> = LogTail::new(&l.log_path, 0)
            .read_lines()
            .unwrap()
            .iter()
            .flat_map(|l| parser.push(l))
            .collect();
        assert!(
            lines.iter().any(|l| l.starts_with("[tool] Write: ")),
            "{lines:?}"
        );
        let summary = parser.summary();
        assert_eq!(summary.turns, Some(2));
        assert_eq!(
            summary.result.as_deref(),
            Some("mock-mode: wrote result.json")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_ends_the_simulation_by_sigterm() {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(
            tmp.path(),
            TaskSpec::Shell(ShellSpec {
                command: "sleep".into(),
            }),
        );
        let runner = MockRunner::new(Duration::from_secs(60));
        runner.start(&l).await.unwrap();
        let twice = runner.start(&l).await.unwrap_err().to_string();
        assert!(
            twice.contains("'m1'") && twice.contains("running already"),
            "{twice}"
        );
        runner
            .interrupt("m1", &l.workdir, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            runner.poll("m1", &l.workdir).await.unwrap(),
            Some(Exit::Signal(15))
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!l.workdir.join(MOCK_RESULT_FILE).exists());
        let log = std::fs::read_to_string(&l.log_path).unwrap();
        assert!(log.ends_with("mock-mode: interrupted (SIGTERM)\n"), "{log}");
        runner.cleanup("m1", &l.workdir).await.unwrap();
        assert!(runner.live_sessions().await.unwrap().is_empty());
    }
}
