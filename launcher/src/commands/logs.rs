//! `lease logs ID [-f]`: a task's log from S3; `-f` keeps following it as the agent
//! uploads more, like `tail -f`, until the task ends (when a task table tells) or until
//! interrupted.

use std::io::Write;
use std::time::Duration;

use lease_common::layout::log_key;
use lease_common::records::{TaskState, task};

use crate::aws::dynamodb::{Tables, get_s};
use crate::aws::s3::Bucket;
use crate::cli::LogsArgs;
use crate::error::{Error, Result};

/// The agent uploads the log every few seconds; polling faster only costs requests.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How much of what was printed each poll reads again, to tell that the object still
/// continues it: a requeued attempt rewrites the log from its start, and a 1 KiB
/// stretch of the old log that the new one repeats byte for byte is not to be expected.
const OVERLAP: u64 = 1024;

/// Where the follower is in the log it prints.
#[derive(Debug, Default)]
struct Position {
    /// Bytes printed from the current object.
    offset: u64,
    /// The last bytes printed (at most [`OVERLAP`]), which the next read must begin with.
    tail: Vec<u8>,
}

impl Position {
    /// Where the next read starts: the tail again, then whatever follows it.
    fn read_from(&self) -> u64 {
        self.offset - self.tail.len() as u64
    }

    /// What of `read` (bytes from [`Self::read_from`]) is new, or `None` when the object
    /// no longer continues what was printed: it was rewritten.
    fn fresh<'a>(&self, read: Option<&'a [u8]>) -> Option<&'a [u8]> {
        match read {
            None if self.offset == 0 => Some(&[]),
            None => None,
            Some(bytes) => bytes.strip_prefix(self.tail.as_slice()),
        }
    }

    fn printed(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        let over = self.tail.len().saturating_sub(OVERLAP as usize);
        self.tail.drain(..over);
    }
}

pub async fn run<B: Bucket, T: Tables>(
    b: &B,
    tables: &T,
    args: &LogsArgs,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<()> {
    let bucket = args
        .bucket
        .as_deref()
        .ok_or_else(crate::commands::no_bucket)?;
    let key = log_key(&args.task_id);
    let mut at = Position::default();
    // Set once the record says the task ended: the agent uploads the whole log before
    // it writes that state, so one more read prints the rest.
    let mut ended = false;
    loop {
        let read = b.get_from(bucket, &key, at.read_from()).await?;
        let fresh = match at.fresh(read.as_deref()) {
            Some(f) => f.to_vec(),
            None => {
                // A new attempt began the log again: follow it from its beginning.
                let attempt = match &args.tasks_table {
                    Some(table) => tables
                        .task(table, &args.task_id)
                        .await?
                        .as_ref()
                        .and_then(|item| item.get(task::ATTEMPT))
                        .and_then(|a| a.as_i64()),
                    None => None,
                };
                let which =
                    attempt.map_or_else(|| "a new attempt".to_string(), |n| format!("attempt {n}"));
                writeln!(
                    notes,
                    "lease: the log of task '{}' starts again ({which}); following it from its beginning",
                    args.task_id
                )
                .map_err(|e| Error::io("Failed to write to stderr", e))?;
                at = Position::default();
                b.get_from(bucket, &key, 0).await?.unwrap_or_default()
            }
        };
        if !fresh.is_empty() {
            out.write_all(&fresh)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("Failed to write to stdout", e))?;
            at.printed(&fresh);
        } else if at.offset == 0 && !args.follow {
            return Err(Error::NotFound(format!(
                "No log for task '{}' at s3://{}/{key} (not started yet, or no such task)",
                args.task_id, bucket
            )));
        }
        if !args.follow || ended {
            return Ok(());
        }
        // Only while the log is quiet: a growing log means the task still runs.
        if fresh.is_empty()
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
    use crate::aws::dynamodb::fake::FakeTables;
    use crate::aws::dynamodb::{Attr, Item};

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
        run(
            &log,
            &tables,
            &args(Some("tasks")),
            &mut out,
            &mut Vec::new(),
        )
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
                run(
                    &log,
                    &tables,
                    &args(Some("tasks")),
                    &mut out,
                    &mut Vec::new(),
                ),
            )
            .await;
            assert!(followed.is_err(), "{state:?}: still following");
            assert!(*log.reads.lock().unwrap() > 20, "{state:?}");
        }
    }

    /// The log as each read finds it: one version after another, then the last again.
    #[derive(Debug, Default)]
    struct RewrittenLog {
        versions: Vec<String>,
        reads: Mutex<usize>,
    }

    impl Bucket for RewrittenLog {
        async fn get(&self, _b: &str, _k: &str) -> Result<Option<Vec<u8>>> {
            unreachable!()
        }
        async fn get_from(&self, _b: &str, _k: &str, offset: u64) -> Result<Option<Vec<u8>>> {
            let mut reads = self.reads.lock().unwrap();
            let now = &self.versions[(*reads).min(self.versions.len() - 1)];
            *reads += 1;
            // S3 answers a range past the end with an error, which `get_from` reads as
            // nothing there.
            let rest = now.as_bytes().get(offset as usize..).unwrap_or_default();
            Ok((!rest.is_empty()).then(|| rest.to_vec()))
        }
        async fn folders(&self, _b: &str, _p: &str) -> Result<Vec<String>> {
            unreachable!()
        }
        async fn download(&self, _b: &str, _k: &str, _d: &Path) -> Result<u64> {
            unreachable!()
        }
    }

    async fn follow(versions: &[&str]) -> (String, String) {
        let log = RewrittenLog {
            versions: versions.iter().map(|v| v.to_string()).collect(),
            ..RewrittenLog::default()
        };
        let mut ended = record(TaskState::Complete);
        ended.insert(task::ATTEMPT.to_string(), Attr::n(2));
        let tables = FakeTables::with("tasks", vec![ended]);
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        run(&log, &tables, &args(Some("tasks")), &mut out, &mut notes)
            .await
            .unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(notes).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_attempt_that_rewrites_the_log_is_followed_from_its_beginning() {
        // Attempt 2 rewrites the log, longer than attempt 1's.
        let (out, notes) = follow(&[
            "one: starting\n",
            "one: starting\none: step 1\n",
            "two: resuming from step 1\n",
            "two: resuming from step 1\ntwo: step 2\ntwo: done\n",
        ])
        .await;
        assert_eq!(
            out,
            "one: starting\none: step 1\ntwo: resuming from step 1\ntwo: step 2\ntwo: done\n"
        );
        assert!(notes.contains("starts again (attempt 2)"), "{notes}");
        // Shorter than what was printed of attempt 1.
        let (out, notes) = follow(&[
            "one: starting\none: step 1\none: step 2\n",
            "two\n",
            "two\ndone\n",
        ])
        .await;
        assert_eq!(out, "one: starting\none: step 1\none: step 2\ntwo\ndone\n");
        assert!(notes.contains("attempt 2"), "{notes}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_that_only_grows_is_printed_once_without_a_note() {
        let long = "x".repeat(3000) + "\n";
        let (out, notes) = follow(&[&long, &format!("{long}more\n")]).await;
        assert_eq!(out, format!("{long}more\n"));
        assert_eq!(notes, "");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_task_table_it_follows_until_interrupted() {
        let log = GrowingLog {
            lines: 1,
            ..GrowingLog::default()
        };
        let followed = tokio::time::timeout(
            Duration::from_secs(60),
            run(
                &log,
                &FakeTables::default(),
                &args(None),
                &mut Vec::new(),
                &mut Vec::new(),
            ),
        )
        .await;
        assert!(followed.is_err());
    }
}
