//! `lease submit`: build the tasks, move any too large for SQS to S3, send in batches,
//! and account for every task: sent, or refused with the reason. With a task table,
//! each sent task then gets its `queued` record.
//!
//! The message goes first and the record second. A message without a record is fine:
//! the agent's claim creates the record (`attribute_not_exists`). A record without a
//! message would be a lie, a task listed as queued that no node will ever receive. The
//! record is written only if none exists, so an agent that claimed the task between
//! the send and the write keeps its newer state.

use lease_common::layout::task_spec_key;
use lease_common::messages::{MAX_SQS_BODY, MAX_TASK_SPEC, MESSAGE_VERSION, Task, TaskPointer};
use serde::Serialize;

use crate::aws::dynamodb::{Created, Tables, queued_record};
use crate::aws::s3::Uploads;
use crate::aws::sqs::{Outgoing, TaskQueue};
use crate::cli::{OutputFormat, SubmitArgs, WorkArgs};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::profile::StackOutputs;
use crate::submit;

/// Records written at once: enough to keep a large array quick, few enough to stay far
/// below a table's on-demand write throttling.
const RECORD_CONCURRENCY: usize = 8;

/// SQS takes at most 10 messages per batch call.
const BATCH: usize = 10;

#[derive(Debug, Serialize)]
struct Submitted {
    id: String,
    kind: &'static str,
    message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec_s3: Option<String>,
    #[serde(skip)]
    summary: String,
}

/// The body to send for a task: the task itself, or a pointer to its copy in S3.
async fn body_for<S: Uploads>(
    uploads: &S,
    bucket: Option<&str>,
    task: &Task,
) -> Result<(String, Option<String>)> {
    let json = task.to_json();
    if json.len() <= MAX_SQS_BODY {
        return Ok((json, None));
    }
    if json.len() > MAX_TASK_SPEC {
        // An agent would dead-letter it unread: refuse it here, before anything is sent.
        return Err(Error::usage(format!(
            "task '{}' is {} bytes, more than a task may be ({MAX_TASK_SPEC}); put large inputs in S3 and have the task fetch them",
            task.id,
            json.len()
        )));
    }
    let bucket = bucket.ok_or_else(|| {
        Error::usage(format!(
            "task '{}' is {} bytes, more than SQS takes ({MAX_SQS_BODY}); pass --bucket so it can go to S3",
            task.id,
            json.len()
        ))
    })?;
    let key = task_spec_key(&task.id);
    uploads.put_object(bucket, &key, json.into_bytes()).await?;
    let url = format!("s3://{bucket}/{key}");
    let pointer = TaskPointer {
        v: MESSAGE_VERSION,
        id: task.id.clone(),
        spec_s3: url.clone(),
        attempt: task.attempt,
    };
    let body = serde_json::to_string(&pointer).map_err(|e| Error::usage(e.to_string()))?;
    Ok((body, Some(url)))
}

/// Where tasks go: a queue named by `--queue-url`, or a stack's command topic, whose
/// subscriptions route each task to its pool's queue by the `pool` attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Queue(String),
    Topic {
        arn: String,
        /// The pools the stack has queues for: a task for any other would be dropped
        /// by every subscription's filter, so it is refused before sending.
        pools: Vec<String>,
    },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Queue(url) => f.write_str(url),
            Destination::Topic { arn, .. } => write!(f, "topic {arn}"),
        }
    }
}

async fn send<Q: TaskQueue>(
    q: &Q,
    to: &Destination,
    batch: &[Outgoing],
) -> Result<Vec<(String, std::result::Result<String, String>)>> {
    match to {
        Destination::Queue(url) => q.send_batch(url, batch).await,
        Destination::Topic { arn, .. } => q.publish_batch(arn, batch).await,
    }
}

/// Where tasks go and which bucket takes oversized ones: `--queue-url` when given
/// (tasks go straight to that queue), else the stack's command topic; the bucket
/// flag, else the stack's.
pub fn destination(
    work: &WorkArgs,
    stack: Option<&StackOutputs>,
) -> Result<(Destination, Option<String>)> {
    let bucket = work
        .bucket
        .clone()
        .or_else(|| stack.map(|s| s.bucket.clone()));
    let to = match (&work.queue_url, stack) {
        (Some(url), _) => Destination::Queue(url.clone()),
        (None, Some(s)) => Destination::Topic {
            arn: s.command_topic_arn.clone(),
            pools: s.pools.keys().cloned().collect(),
        },
        (None, None) => return Err(crate::commands::no_queue()),
    };
    Ok((to, bucket))
}

/// Sends to `--queue-url` (or `LEASE_QUEUE_URL`).
pub async fn run<Q: TaskQueue, S: Uploads, T: Tables>(
    q: &Q,
    uploads: &S,
    tables: &T,
    ctx: &Ctx,
    args: &SubmitArgs,
) -> Result<()> {
    let url = args
        .work
        .queue_url
        .clone()
        .ok_or_else(crate::commands::no_queue)?;
    run_to(q, uploads, tables, ctx, args, &Destination::Queue(url)).await
}

pub async fn run_to<Q: TaskQueue, S: Uploads, T: Tables>(
    q: &Q,
    uploads: &S,
    tables: &T,
    ctx: &Ctx,
    args: &SubmitArgs,
    to: &Destination,
) -> Result<()> {
    // Through a topic every task needs a pool, or no subscription takes it.
    let pool = match to {
        Destination::Queue(_) => args.pool.clone(),
        Destination::Topic { pools, .. } => {
            let pool = args
                .pool
                .clone()
                .unwrap_or_else(|| lease_common::stack::DEFAULT_POOL.to_string());
            if !pools.contains(&pool) {
                return Err(Error::usage(format!(
                    "--pool '{pool}': the stack has no queue for it (pools: {}); run `lease setup --pool {pool}` first",
                    pools.join(", ")
                )));
            }
            Some(pool)
        }
    };
    let random = uuid::Uuid::new_v4().simple().to_string();
    let tasks = submit::build(args, ctx.now, &random)?;
    let mut sent: Vec<Submitted> = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for chunk in tasks.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        let mut pointers = Vec::with_capacity(chunk.len());
        for t in chunk {
            let (body, spec_s3) = body_for(uploads, args.work.bucket.as_deref(), t).await?;
            batch.push(Outgoing {
                id: t.id.clone(),
                body,
                pool: pool.clone(),
            });
            pointers.push((t, spec_s3));
        }
        // A batch may be refused whole (size, permissions); then each is sent alone so
        // one bad task does not take nine good ones with it.
        let results = match send(q, to, &batch).await {
            Ok(r) => r,
            Err(_) if batch.len() > 1 => {
                let mut r = Vec::new();
                for one in &batch {
                    match send(q, to, std::slice::from_ref(one)).await {
                        Ok(mut single) => r.append(&mut single),
                        Err(e) => r.push((one.id.clone(), Err(e.to_string()))),
                    }
                }
                r
            }
            Err(e) => return Err(e),
        };
        for (t, spec_s3) in pointers {
            match results.iter().find(|(id, _)| id == &t.id) {
                Some((_, Ok(message_id))) => sent.push(Submitted {
                    summary: submit::summary(&t.spec),
                    id: t.id.clone(),
                    kind: t.spec.kind(),
                    message_id: message_id.clone(),
                    spec_s3,
                }),
                Some((_, Err(reason))) => refused.push((t.id.clone(), reason.clone())),
                None => refused.push((t.id.clone(), "SQS did not report on it".into())),
            }
        }
    }
    match ctx.output {
        OutputFormat::Json => output::print_json(&sent)?,
        OutputFormat::Table => output::print(
            &sent
                .iter()
                .map(|s| format!("{}\n", s.id))
                .collect::<String>(),
        )?,
    }
    eprintln!(
        "Submitted {} of {} tasks to {}.",
        sent.len(),
        tasks.len(),
        to
    );
    let unrecorded = match &args.table.tasks_table {
        Some(table) => record(tables, table, &tasks, &sent, ctx).await,
        None => Vec::new(),
    };
    for (id, reason) in &refused {
        eprintln!("error: task '{id}' was not queued: {reason}");
    }
    for (id, reason) in &unrecorded {
        eprintln!("error: task '{id}' is queued but has no record yet: {reason}");
    }
    if !refused.is_empty() {
        return Err(Error::Aws {
            what: format!("Failed to queue {} of {} tasks", refused.len(), tasks.len()),
            message: "they are listed above; the others are queued".into(),
        });
    }
    if !unrecorded.is_empty() {
        return Err(Error::Aws {
            what: format!(
                "Failed to record {} of {} queued tasks",
                unrecorded.len(),
                sent.len()
            ),
            message: "they will run all the same, and get their record when a node claims them"
                .into(),
        });
    }
    Ok(())
}

/// Writes the `queued` record of every sent task; returns the ones that failed.
async fn record<T: Tables>(
    tables: &T,
    table: &str,
    tasks: &[Task],
    sent: &[Submitted],
    ctx: &Ctx,
) -> Vec<(String, String)> {
    use futures::StreamExt;
    let writes = sent.iter().filter_map(|s| {
        let task = tasks.iter().find(|t| t.id == s.id)?;
        let item = queued_record(task, &s.summary, ctx.now);
        Some(async move {
            match tables.create_task(table, &item).await {
                Ok(Created::Written) => None,
                Ok(Created::Exists) => {
                    tracing::info!(
                        "Task '{}' already has a record (claimed already); left as it is",
                        s.id
                    );
                    None
                }
                Err(e) => Some((s.id.clone(), e.to_string())),
            }
        })
    });
    futures::stream::iter(writes)
        .buffer_unordered(RECORD_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::Parser;
    use lease_common::records::{self, task};

    use super::*;
    use crate::aws::dynamodb::fake::FakeTables;
    use crate::aws::dynamodb::{Attr, Item, get_s};
    use crate::aws::s3::fake::FakeUploads;
    use crate::aws::sqs::QueueCounts;

    /// A queue whose sends an agent answers at once: each sent task is claimed
    /// (recorded `running`) before `lease submit` gets to write its record.
    #[derive(Debug, Default)]
    struct RacingQueue<'a> {
        claims: Option<&'a FakeTables>,
        sent: Mutex<Vec<String>>,
    }

    impl TaskQueue for RacingQueue<'_> {
        async fn send_batch(
            &self,
            _url: &str,
            batch: &[Outgoing],
        ) -> Result<Vec<(String, std::result::Result<String, String>)>> {
            let mut out = Vec::new();
            for m in batch {
                self.sent.lock().unwrap().push(m.id.clone());
                if let Some(t) = self.claims {
                    let item = Item::from([
                        (records::TASK_ID.to_string(), Attr::s(&m.id)),
                        (task::STATE.to_string(), Attr::s("running")),
                    ]);
                    t.insert("tasks", vec![item]);
                }
                out.push((m.id.clone(), Ok(format!("msg-{}", m.id))));
            }
            Ok(out)
        }

        async fn publish_batch(
            &self,
            topic_arn: &str,
            batch: &[Outgoing],
        ) -> Result<Vec<(String, std::result::Result<String, String>)>> {
            self.send_batch(topic_arn, batch).await
        }

        async fn counts(&self, _url: &str) -> Result<QueueCounts> {
            Ok(QueueCounts::default())
        }

        async fn dead_letter_url(&self, _url: &str) -> Result<Option<String>> {
            Ok(None)
        }
    }

    fn args(extra: &[&str]) -> SubmitArgs {
        let mut argv = vec![
            "lease",
            "submit",
            "--queue-url",
            "q",
            "--tasks-table",
            "tasks",
        ];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Submit(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            output: OutputFormat::Json,
            yes: false,
            color: false,
            now: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn records_follow_the_messages_and_never_overwrite_a_claim() {
        let tables = FakeTables::default();
        let q = RacingQueue::default();
        run(
            &q,
            &FakeUploads::default(),
            &tables,
            &ctx(),
            &args(&["--shell", "true", "--array", "12"]),
        )
        .await
        .unwrap();
        let sent = q.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 12);
        for id in &sent {
            let item = tables.get("tasks", id).unwrap();
            assert_eq!(get_s(&item, task::STATE), Some("queued"));
        }

        let claimed = FakeTables::default();
        let q = RacingQueue {
            claims: Some(&claimed),
            ..Default::default()
        };
        run(
            &q,
            &FakeUploads::default(),
            &claimed,
            &ctx(),
            &args(&["--shell", "true", "--array", "3"]),
        )
        .await
        .unwrap();
        for id in q.sent.lock().unwrap().iter() {
            let item = claimed.get("tasks", id).unwrap();
            assert_eq!(
                get_s(&item, task::STATE),
                Some("running"),
                "the claim stands"
            );
        }
    }

    #[tokio::test]
    async fn a_task_larger_than_an_agent_reads_is_refused_before_anything_is_sent() {
        let q = RacingQueue::default();
        let uploads = FakeUploads::default();
        let huge = Task::new(
            "huge-1",
            lease_common::messages::TaskSpec::Shell(lease_common::messages::ShellSpec {
                command: "x".repeat(MAX_TASK_SPEC),
            }),
        );
        let err = body_for(&uploads, Some("ctl"), &huge).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("huge-1")
                && err.to_string().contains("more than a task may be"),
            "{err}"
        );
        assert!(q.sent.lock().unwrap().is_empty());
        assert!(uploads.written.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_written_fails_the_command_after_sending() {
        let tables = FakeTables {
            broken: true,
            ..Default::default()
        };
        let q = RacingQueue::default();
        let err = run(
            &q,
            &FakeUploads::default(),
            &tables,
            &ctx(),
            &args(&["--shell", "true"]),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("record"), "{err}");
        assert_eq!(
            q.sent.lock().unwrap().len(),
            1,
            "the task was queued all the same"
        );
    }
}

#[cfg(test)]
mod destination_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::profile::PoolOutputs;

    fn stack() -> StackOutputs {
        StackOutputs {
            stack: "main".into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            command_topic_arn: "arn:aws:sns:us-east-1:123456789012:lease-main-commands".into(),
            bus_topic_arn: "arn:aws:sns:us-east-1:123456789012:lease-main-bus".into(),
            pools: [(
                "default".to_string(),
                PoolOutputs {
                    queue_url: "https://q/default".into(),
                    dead_letter_queue_url: "https://q/dlq".into(),
                },
            )]
            .into(),
            events_queue_url: "https://q/events".into(),
            bucket: "stack-bucket".into(),
            nodes_table: "lease-main-nodes".into(),
            tasks_table: "lease-main-tasks".into(),
            agent_role: "lease-main-agent".into(),
            instance_profile: "lease-main-agent".into(),
            agent_packages: vec![],
            reaper_function_arn: None,
            claude_auth: Default::default(),
        }
    }

    fn work(queue: Option<&str>, bucket: Option<&str>) -> WorkArgs {
        WorkArgs {
            queue_url: queue.map(str::to_string),
            bucket: bucket.map(str::to_string),
        }
    }

    #[test]
    fn a_named_queue_wins_and_the_stack_fills_the_rest() {
        let (to, bucket) =
            destination(&work(Some("https://q/mine"), None), Some(&stack())).unwrap();
        assert_eq!(to, Destination::Queue("https://q/mine".into()));
        assert_eq!(bucket.as_deref(), Some("stack-bucket"));

        let (to, bucket) = destination(&work(None, Some("b")), Some(&stack())).unwrap();
        assert_eq!(
            to,
            Destination::Topic {
                arn: "arn:aws:sns:us-east-1:123456789012:lease-main-commands".into(),
                pools: vec!["default".into()],
            }
        );
        assert_eq!(bucket.as_deref(), Some("b"));

        let err = destination(&work(None, None), None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("lease setup"), "{err}");
        let (to, bucket) = destination(&work(Some("https://q/x"), None), None).unwrap();
        assert_eq!(to, Destination::Queue("https://q/x".into()));
        assert_eq!(bucket, None);
    }
}
