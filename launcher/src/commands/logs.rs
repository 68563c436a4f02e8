//! `lease logs ID [-f]`: a task's log from S3; `-f` keeps following it as the agent
//! uploads more, like `tail -f`, until the task ends (when a task table tells) or until
//! interrupted.

use std::io::Write;
use std::time::Duration;

use lease_common::layout::log_key;
use lease_common::records::{TaskState, task};

use crate::bucket::Bucket;
use crate::cli::LogsArgs;
use crate::error::{Error, Result};
use crate::table::{Tables, get_s};

/// The agent uploads the log every few seconds; polling faster only costs requests.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

pub async fn run<B: Bucket, T: Tables>(
    b: &B,
    tables: &T,
    args: &LogsArgs,
    out: &mut impl Write,
) -> Result<()> {
    let bucket = args
        .bucket
        .as_deref()
        .ok_or_else(crate::commands::no_bucket)?;
    let key = log_key(&args.task_id);
    let mut offset = 0u64;
    // Set once the record says the task ended: the agent uploads the whole log before
    // it writes that state, so one more read prints the rest.
    let mut ended = false;
    loop {
        let fresh = b.get_from(bucket, &key, offset).await?;
        if let Some(bytes) = &fresh {
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("Failed to write to stdout", e))?;
            offset += bytes.len() as u64;
        } else if offset == 0 && !args.follow {
            return Err(Error::NotFound(format!(
                "No log for task '{}' at s3://{}/{key} (not started yet, or no such task)",
                args.task_id, bucket
            )));
        }
        if !args.follow || ended {
            return Ok(());
        }
        // Only while the log is quiet: a growing log means the task still runs.
        if fresh.is_none()
            && let Some(table) = &args.tasks_table
        {
            ended = tables
                .task(table, &args.task_id)
                .await?
                .as_ref()
                .and_then(|item| get_s(item, task::STATE))
                .and_then(|s| s.parse::<TaskState>().ok())
                .is_some_and(TaskState::is_final);
            if ended {
                continue;
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::table::fake::FakeTables;
    use crate::table::{Attr, Item};

    /// A log that grows by one line each time it is read, up to `lines`.
    #[derive(Debug, Default)]
    struct GrowingLog {
        lines: usize,
        written: Mutex<String>,
        reads: Mutex<usize>,
    }

    impl Bucket for GrowingLog {
        async fn get(&self, _b: &str, _k: &str) -> Result<Option<Vec<u8>>> {
            unreachable!()
        }
        async fn get_from(&self, _b: &str, _k: &str, offset: u64) -> Result<Option<Vec<u8>>> {
            *self.reads.lock().unwrap() += 1;
            let mut log = self.written.lock().unwrap();
            let n = log.lines().count();
            if n < self.lines {
                log.push_str(&format!("line {n}\n"));
            }
            let rest = log.as_bytes()[offset as usize..].to_vec();
            Ok((!rest.is_empty()).then_some(rest))
        }
        async fn folders(&self, _b: &str, _p: &str) -> Result<Vec<String>> {
            unreachable!()
        }
        async fn download(&self, _b: &str, _k: &str, _d: &Path) -> Result<u64> {
            unreachable!()
        }
    }

    fn args(table: Option<&str>) -> LogsArgs {
        LogsArgs {
            task_id: "t-1".into(),
            follow: true,
            bucket: Some("ctl".into()),
            tasks_table: table.map(str::to_string),
        }
    }

    fn record(state: TaskState) -> Item {
        BTreeMap::from([
            (lease_common::records::TASK_ID.to_string(), Attr::s("t-1")),
            (task::STATE.to_string(), Attr::s(state.as_str())),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn following_ends_once_the_task_ended_and_its_log_is_printed() {
        let log = GrowingLog {
            lines: 3,
            ..GrowingLog::default()
        };
        let tables = FakeTables::with("tasks", vec![record(TaskState::Complete)]);
        let mut out = Vec::new();
        run(&log, &tables, &args(Some("tasks")), &mut out)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "line 0\nline 1\nline 2\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_or_interrupted_task_is_followed_on() {
        for state in [TaskState::Running, TaskState::Interrupted] {
            let log = GrowingLog {
                lines: 1,
                ..GrowingLog::default()
            };
            let tables = FakeTables::with("tasks", vec![record(state)]);
            let mut out = Vec::new();
            let followed = tokio::time::timeout(
                Duration::from_secs(60),
                run(&log, &tables, &args(Some("tasks")), &mut out),
            )
            .await;
            assert!(followed.is_err(), "{state:?}: still following");
            assert!(*log.reads.lock().unwrap() > 20, "{state:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_task_table_it_follows_until_interrupted() {
        let log = GrowingLog {
            lines: 1,
            ..GrowingLog::default()
        };
        let followed = tokio::time::timeout(
            Duration::from_secs(60),
            run(&log, &FakeTables::default(), &args(None), &mut Vec::new()),
        )
        .await;
        assert!(followed.is_err());
    }
}
