//! What survives an agent restart for each task: `<state-dir>/tasks/<id>/task.json`,
//! written atomically (a temporary file renamed over it), so a restarted agent adopts
//! the task where the last one left it and finishes it exactly once.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use lease_common::messages::{Task, TaskPointer};
use serde::{Deserialize, Serialize};

const FILE: &str = "task.json";
const VERSION: u32 = 1;
/// Marks that the one-shot task of the config has run, so a restart does not run it
/// again.
const ONE_SHOT_DONE: &str = "one-shot-done";

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("Failed to write the state of task '{task}' to '{path}': {source}")]
    Write {
        task: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Failed to remove the files of task '{task}' in '{path}': {source}")]
    Remove {
        task: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One task's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFile {
    pub v: u32,
    pub task: Task,
    /// The message carried a pointer to this task in S3: a requeue sends the pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<TaskPointer>,
    /// Its SQS message; `None` for the one-shot task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The latest receipt handle of its message; `None` for the one-shot task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    pub started_at: DateTime<Utc>,
    /// How far the log has been read into `TaskOutput` events.
    pub log_offset: u64,
    /// The next `TaskOutput` sequence number.
    pub seq: u64,
    /// The one-shot task of the config (no queue, ends the lease when done).
    #[serde(default)]
    pub one_shot: bool,
    /// `s3://<bucket>/<prefix>` of the partial bundle the previous attempt left, when
    /// the claim took over from one: the task sees it as `LEASE_PREVIOUS_ATTEMPT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl TaskFile {
    pub fn new(
        task: Task,
        pointer: Option<TaskPointer>,
        receipt: Option<String>,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            v: VERSION,
            task,
            pointer,
            message_id: None,
            receipt,
            started_at,
            log_offset: 0,
            seq: 0,
            one_shot: false,
            previous: None,
        }
    }
}

/// `<state-dir>/tasks`.
pub fn tasks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tasks")
}

/// `<state-dir>/tasks/<id>`: the task's own directory (state, work, log).
pub fn task_dir(state_dir: &Path, task_id: &str) -> PathBuf {
    tasks_dir(state_dir).join(task_id)
}

/// Where the program runs; the default bundle.
pub fn workdir(state_dir: &Path, task_id: &str) -> PathBuf {
    task_dir(state_dir, task_id).join("work")
}

/// The task's log, beside its workdir (so it is not in the bundle).
pub fn log_path(state_dir: &Path, task_id: &str) -> PathBuf {
    task_dir(state_dir, task_id).join("output.log")
}

/// The directory uploaded as the bundle: `task.bundle` (relative: under the workdir),
/// else the workdir.
pub fn bundle_dir(state_dir: &Path, task: &Task) -> PathBuf {
    let work = workdir(state_dir, &task.id);
    match task.bundle.as_deref() {
        Some(b) if Path::new(b).is_absolute() => PathBuf::from(b),
        Some(b) if !b.is_empty() => work.join(b),
        _ => work,
    }
}

pub fn save(state_dir: &Path, file: &TaskFile) -> Result<(), StateFileError> {
    let dir = task_dir(state_dir, &file.task.id);
    let path = dir.join(FILE);
    let err = |source| StateFileError::Write {
        task: file.task.id.clone(),
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(file).map_err(|e| err(std::io::Error::other(e)))?;
    // The spec's env may hold tokens, and tasks (the task user) can reach this folder;
    // a leftover temporary file would keep its own mode.
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)
}

/// Every task a previous run left, oldest first. Unreadable files are reported and
/// skipped (their task's message returns to the queue when its visibility lapses).
pub fn load_all(state_dir: &Path) -> Vec<TaskFile> {
    let Ok(entries) = std::fs::read_dir(tasks_dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<TaskFile> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join(FILE))
        .filter(|p| p.exists())
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| tracing::error!("cannot read task state '{}': {e}", p.display()))
                .ok()?;
            serde_json::from_str(&text)
                .map_err(|e| tracing::error!("task state '{}' is unreadable: {e}", p.display()))
                .ok()
        })
        .collect();
    out.sort_by_key(|f: &TaskFile| f.started_at);
    out
}

/// Removes the task's directory once everything is uploaded and recorded.
pub fn remove(state_dir: &Path, task_id: &str) -> Result<(), StateFileError> {
    let dir = task_dir(state_dir, task_id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateFileError::Remove {
            task: task_id.to_string(),
            path: dir,
            source,
        }),
    }
}

/// The one-shot task with this id has run (on this machine, in any earlier run).
pub fn one_shot_ran(state_dir: &Path, task_id: &str) -> bool {
    std::fs::read_to_string(state_dir.join(ONE_SHOT_DONE)).is_ok_and(|t| t.trim() == task_id)
}

pub fn mark_one_shot_ran(state_dir: &Path, task_id: &str) -> Result<(), StateFileError> {
    let path = state_dir.join(ONE_SHOT_DONE);
    let err = |source| StateFileError::Write {
        task: task_id.to_string(),
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join(format!("{ONE_SHOT_DONE}.tmp"));
    std::fs::write(&tmp, task_id).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_common::messages::{ShellSpec, TaskSpec};

    #[test]
    fn a_saved_task_is_found_again_and_removed_once_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Task::new(
            "t-1",
            TaskSpec::Shell(ShellSpec {
                command: "true".into(),
            }),
        );
        t.bundle = Some("out".into());
        let mut f = TaskFile::new(t.clone(), None, Some("rh".into()), Utc::now());
        f.log_offset = 42;
        save(dir.path(), &f).unwrap();
        assert_eq!(load_all(dir.path()), vec![f]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(task_dir(dir.path(), "t-1").join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o600,
            "the task's spec and env are root's alone"
        );
        assert_eq!(
            bundle_dir(dir.path(), &t),
            workdir(dir.path(), "t-1").join("out")
        );
        remove(dir.path(), "t-1").unwrap();
        assert!(load_all(dir.path()).is_empty());
        assert!(!one_shot_ran(dir.path(), "t-1"));
        mark_one_shot_ran(dir.path(), "t-1").unwrap();
        assert!(one_shot_ran(dir.path(), "t-1"));
    }
}
