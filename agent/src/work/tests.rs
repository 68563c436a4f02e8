//! The worker's decisions against small fakes of its AWS parts (the programs run in
//! the mock runner), in paused time: claims that find the task finished or held,
//! cancellation, and an upload that fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use lease_common::messages::{EventKind, ShellSpec, Task, TaskSpec};
use lease_common::records::TaskState;
use lease_common::tags::Action;

use super::TaskWorker;
use super::queue::{QueueError, Received, TaskQueue};
use super::records::{Change, Claim, Claimant, PreviousAttempt, RecordError, TaskTable};
use super::store::{ResultStore, StoreError};
use super::{QueueWorker, WorkDeps, WorkSettings};
use crate::BoxFuture;
use crate::clock::TokioClock;
use crate::ec2::{Ec2Api, Ec2Error};
use crate::events::Emitter;
use crate::events::fake::RecordingPublisher;
use crate::run::{Exit, Launch, MockRunner, RunError, Runner};
use crate::tagwrite::StatusTags;
use crate::upload::{BundleDest, BundleUpload, ManifestMeta};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

#[derive(Debug, Default)]
struct FakeQueue {
    inbox: Mutex<Vec<Received>>,
    deleted: Mutex<Vec<String>>,
    visibility: Mutex<Vec<(String, i32)>>,
    sent: Mutex<Vec<String>>,
}

impl TaskQueue for FakeQueue {
    fn receive(
        &self,
        max: u32,
        wait: Duration,
        _visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        Box::pin(async move {
            let batch: Vec<Received> = {
                let mut inbox = self.inbox.lock().unwrap();
                let n = inbox.len().min(max as usize);
                inbox.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::time::sleep(wait).await;
            }
            Ok(batch)
        })
    }
    fn delete<'a>(
        &'a self,
        _t: &'a str,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.deleted.lock().unwrap().push(receipt.to_string());
        Box::pin(async { Ok(()) })
    }
    fn change_visibility<'a>(
        &'a self,
        _t: &'a str,
        receipt: &'a str,
        secs: i32,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.visibility
            .lock()
            .unwrap()
            .push((receipt.to_string(), secs));
        Box::pin(async { Ok(()) })
    }
    fn send<'a>(&'a self, _t: &'a str, body: &'a str) -> BoxFuture<'a, Result<(), QueueError>> {
        self.sent.lock().unwrap().push(body.to_string());
        Box::pin(async { Ok(()) })
    }
    fn dead_letter<'a>(
        &'a self,
        _t: &'a str,
        _b: &'a str,
        _r: &'a str,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async { Ok(false) })
    }
}

#[derive(Debug)]
struct FakeTable {
    claim: Mutex<Claim>,
    /// What the record holds (the launcher may set `cancelled`).
    state: Mutex<Option<TaskState>>,
    changes: Mutex<Vec<Change>>,
    /// Another node took the task over: every write under a claim is refused.
    taken_over: Mutex<bool>,
}

impl FakeTable {
    fn new(claim: Claim) -> Self {
        Self {
            claim: Mutex::new(claim),
            state: Mutex::default(),
            changes: Mutex::default(),
            taken_over: Mutex::default(),
        }
    }
    fn states(&self) -> Vec<TaskState> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| c.state)
            .collect()
    }
}

impl TaskTable for FakeTable {
    fn claim<'a>(
        &'a self,
        _t: &'a Task,
        _by: Claimant<'a>,
    ) -> BoxFuture<'a, Result<Claim, RecordError>> {
        let c = self.claim.lock().unwrap().clone();
        if matches!(c, Claim::Claimed { .. }) {
            *self.state.lock().unwrap() = Some(TaskState::Running);
        }
        Box::pin(async move { Ok(c) })
    }
    fn update<'a>(
        &'a self,
        id: &'a str,
        change: Change,
        _now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<TaskState>, RecordError>> {
        if let Some(h) = &change.holder
            && *self.taken_over.lock().unwrap()
        {
            let lost = RecordError::ClaimLost {
                task: id.to_string(),
                table: "tasks".into(),
                attempt: h.attempt,
                holder: "node 'other' (attempt 1)".into(),
            };
            return Box::pin(async move { Err(lost) });
        }
        let mut state = self.state.lock().unwrap();
        if change.if_state.is_some() && change.if_state != *state {
            return Box::pin(async { Ok(None) });
        }
        // A cancelled record stays cancelled, as the launcher left it.
        if *state != Some(TaskState::Cancelled)
            && let Some(s) = change.state
        {
            *state = Some(s);
        }
        self.changes.lock().unwrap().push(change);
        let now = *state;
        Box::pin(async move { Ok(now) })
    }
}

#[derive(Debug, Default)]
struct FakeStore {
    fail: bool,
    /// Each bundle upload takes this long.
    delay: Duration,
    bundles: Mutex<Vec<String>>,
}

impl ResultStore for FakeStore {
    fn fetch_task<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            Err(StoreError::Missing {
                uri: uri.to_string(),
            })
        })
    }
    fn upload_bundle<'a>(
        &'a self,
        _dir: &'a Path,
        dest: BundleDest,
        meta: ManifestMeta,
    ) -> BoxFuture<'a, Result<BundleUpload, StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(StoreError::Upload {
                    what: "the bundle",
                    task: meta.task_id,
                    reason: "injected".into(),
                });
            }
            self.bundles.lock().unwrap().push(dest.files_prefix.clone());
            Ok(BundleUpload {
                files: 1,
                bytes: 1,
                skipped: Vec::new(),
                uri: format!("s3://b/{}", dest.files_prefix),
                manifest_key: dest.manifest_key,
            })
        })
    }
    fn upload_log<'a>(
        &'a self,
        _task: &'a str,
        _path: &'a Path,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn uri(&self, key: &str) -> String {
        format!("s3://b/{key}")
    }
}

/// The mock runner, keeping the environment each start was given.
#[derive(Debug)]
struct EnvRunner {
    inner: MockRunner,
    envs: Mutex<Vec<Vec<(String, String)>>>,
}

impl Runner for EnvRunner {
    fn start(&self, launch: &Launch) -> BoxFuture<'_, Result<(), RunError>> {
        self.envs.lock().unwrap().push(launch.env.clone());
        self.inner.start(launch)
    }
    fn poll<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<Option<Exit>, RunError>> {
        self.inner.poll(task_id, workdir)
    }
    fn interrupt<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        self.inner.interrupt(task_id, workdir, grace)
    }
    fn cleanup<'a>(
        &'a self,
        task_id: &'a str,
        workdir: &'a Path,
    ) -> BoxFuture<'a, Result<(), RunError>> {
        self.inner.cleanup(task_id, workdir)
    }
    fn live_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, RunError>> {
        self.inner.live_sessions()
    }
}

#[derive(Debug, Default)]
struct QuietEc2;

impl Ec2Api for QuietEc2 {
    fn describe_tags<'a>(
        &'a self,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, Ec2Error>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
    fn create_tags<'a>(
        &'a self,
        _id: &'a str,
        _tags: Vec<(String, String)>,
    ) -> BoxFuture<'a, Result<(), Ec2Error>> {
        Box::pin(async { Ok(()) })
    }
    fn act<'a>(&'a self, _id: &'a str, _a: Action) -> BoxFuture<'a, Result<(), Ec2Error>> {
        Box::pin(async { Ok(()) })
    }
}

struct Rig {
    queue: Arc<FakeQueue>,
    table: Arc<FakeTable>,
    store: Arc<FakeStore>,
    publisher: Arc<RecordingPublisher>,
    runner: Arc<EnvRunner>,
    worker: QueueWorker,
    _dir: tempfile::TempDir,
}

fn rig(claim: Claim, store: FakeStore, program: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TokioClock::starting_at(t0()));
    let queue = Arc::new(FakeQueue::default());
    let table = Arc::new(FakeTable::new(claim));
    let store = Arc::new(store);
    let publisher = Arc::new(RecordingPublisher::default());
    let runner = Arc::new(EnvRunner {
        inner: MockRunner::new(program),
        envs: Mutex::default(),
    });
    let deps = WorkDeps {
        queue: Some(queue.clone()),
        table: Some(table.clone()),
        store: Some(store.clone()),
        runner: runner.clone(),
        emitter: Emitter::new(publisher.clone(), clock.clone(), "n".into(), "i-1".into()),
        clock,
        status: StatusTags::new(Arc::new(QuietEc2), "i-1".into()),
        lease: Arc::new(super::worker::fake::RecordingLease::default()),
    };
    let mut settings = WorkSettings::new(dir.path().to_path_buf(), "n".into(), "i-1".into(), 1);
    settings.extend_every = Duration::from_secs(1);
    Rig {
        queue,
        table,
        store,
        publisher,
        runner,
        worker: QueueWorker::new(deps, settings),
        _dir: dir,
    }
}

fn message(id: &str) -> Received {
    let task = Task::new(
        id,
        TaskSpec::Shell(ShellSpec {
            command: "true".into(),
        }),
    );
    Received {
        message_id: format!("m-{id}"),
        receipt: format!("r-{id}"),
        body: task.to_json(),
        receive_count: 1,
    }
}

/// Steps paused time until `done` holds (at most ten minutes of it).
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..6_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_finished_task_has_its_duplicate_deleted_unrun() {
    let r = rig(
        Claim::Finished(TaskState::Complete),
        FakeStore::default(),
        Duration::ZERO,
    );
    r.queue.inbox.lock().unwrap().push(message("t-1"));
    r.worker.start(None);
    until("the duplicate deleted", || {
        !r.queue.deleted.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*r.queue.deleted.lock().unwrap(), vec!["r-t-1"]);
    assert!(r.publisher.types().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_task_held_elsewhere_waits_until_that_claim_lapses() {
    let until_secs = t0().timestamp() + 300;
    let r = rig(
        Claim::Held {
            until: Some(until_secs),
        },
        FakeStore::default(),
        Duration::ZERO,
    );
    r.queue.inbox.lock().unwrap().push(message("t-2"));
    r.worker.start(None);
    until("the message hidden", || {
        !r.queue.visibility.lock().unwrap().is_empty()
    })
    .await;
    let (receipt, secs) = r.queue.visibility.lock().unwrap()[0].clone();
    assert_eq!(receipt, "r-t-2");
    assert!((299..=300).contains(&secs), "{secs}");
    assert!(r.queue.deleted.lock().unwrap().is_empty());
    assert!(r.publisher.types().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_task_is_stopped_recorded_and_its_message_deleted() {
    let r = rig(
        Claim::Claimed { previous: None },
        FakeStore::default(),
        Duration::from_secs(600),
    );
    r.queue.inbox.lock().unwrap().push(message("t-3"));
    r.worker.start(None);
    until("the task running", || r.worker.current_task().is_some()).await;
    *r.table.state.lock().unwrap() = Some(TaskState::Cancelled);
    until("the message deleted", || {
        !r.queue.deleted.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(r.table.states().last(), Some(&TaskState::Cancelled));
    let events = r.publisher.events.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::TaskFailed { reason, .. } if reason == "cancelled"
    )));
    assert_eq!(
        *r.store.bundles.lock().unwrap(),
        vec!["jobs/i-1/t-3/bundle/"]
    );
    until("the slot freed", || r.worker.current_task().is_none()).await;
}

/// `uploading` is recorded only for an upload that lasts, and never after the end.
#[tokio::test(start_paused = true)]
async fn a_long_upload_is_recorded_as_uploading_and_a_short_one_is_not() {
    for (delay, want) in [
        (Duration::from_millis(200), vec![TaskState::Complete]),
        (
            Duration::from_secs(5),
            vec![TaskState::Uploading, TaskState::Complete],
        ),
    ] {
        let store = FakeStore {
            delay,
            ..FakeStore::default()
        };
        let r = rig(
            Claim::Claimed { previous: None },
            store,
            Duration::from_millis(30),
        );
        r.queue.inbox.lock().unwrap().push(message("t-5"));
        r.worker.start(None);
        until("the message deleted", || {
            !r.queue.deleted.lock().unwrap().is_empty()
        })
        .await;
        // Long enough for a forgotten `uploading` write to land.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(r.table.states(), want, "upload of {delay:?}");
        assert_eq!(*r.table.state.lock().unwrap(), Some(TaskState::Complete));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_upload_gives_the_message_back_instead_of_deleting_it() {
    let store = FakeStore {
        fail: true,
        ..FakeStore::default()
    };
    let r = rig(
        Claim::Claimed { previous: None },
        store,
        Duration::from_millis(30),
    );
    r.queue.inbox.lock().unwrap().push(message("t-4"));
    r.worker.start(None);
    until("the message given back", || {
        r.queue
            .visibility
            .lock()
            .unwrap()
            .contains(&("r-t-4".to_string(), 0))
    })
    .await;
    until("the slot freed", || r.worker.current_task().is_none()).await;
    assert!(r.queue.deleted.lock().unwrap().is_empty());
    assert_eq!(r.table.states().last(), Some(&TaskState::Interrupted));
    let types = r.publisher.types();
    assert!(types.contains(&"TaskInterrupted"), "{types:?}");
    assert!(!types.contains(&"TaskCompleted"), "{types:?}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_requeues_the_running_task_with_the_next_attempt() {
    let r = rig(
        Claim::Claimed { previous: None },
        FakeStore::default(),
        Duration::from_secs(600),
    );
    r.queue.inbox.lock().unwrap().push(message("t-5"));
    r.worker.start(None);
    until("the task running", || r.worker.current_task().is_some()).await;
    r.worker
        .drain(t0() + chrono::TimeDelta::seconds(3_600))
        .await;
    assert!(r.worker.current_task().is_none());
    let sent = r.queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(Task::parse(&sent[0]).unwrap().attempt, 2);
    assert_eq!(*r.queue.deleted.lock().unwrap(), vec!["r-t-5"]);
    assert_eq!(
        *r.store.bundles.lock().unwrap(),
        vec!["jobs/i-1/t-5/attempt-1/bundle/"]
    );
    assert_eq!(r.table.states().last(), Some(&TaskState::Interrupted));
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_queue_a_bad_body_stays_hidden_and_is_reported() {
    let r = rig(
        Claim::Claimed { previous: None },
        FakeStore::default(),
        Duration::ZERO,
    );
    r.queue.inbox.lock().unwrap().push(Received {
        message_id: "m-bad".into(),
        receipt: "r-bad".into(),
        body: r#"{"v":1,"id":"bad-1","kind":"fortran"}"#.into(),
        receive_count: 1,
    });
    r.worker.start(None);
    until("the message hidden", || {
        !r.queue.visibility.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        r.queue.visibility.lock().unwrap()[0],
        ("r-bad".to_string(), super::queue::MAX_VISIBILITY_SECS)
    );
    until("the TaskFailed event", || !r.publisher.types().is_empty()).await;
    assert!(r.queue.deleted.lock().unwrap().is_empty());
    let events = r.publisher.events.lock().unwrap().clone();
    assert!(matches!(
        &events[0].kind,
        EventKind::TaskFailed { task_id: Some(id), reason, .. }
            if id == "bad-1" && reason.contains("fortran")
    ));
    assert!(r.worker.current_task().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_claim_was_taken_over_is_stopped_and_kept_as_a_partial_attempt() {
    let r = rig(
        Claim::Claimed { previous: None },
        FakeStore::default(),
        Duration::from_secs(600),
    );
    r.queue.inbox.lock().unwrap().push(message("t-6"));
    r.worker.start(None);
    until("the task running", || r.worker.current_task().is_some()).await;
    until("the claim renewed once", || {
        r.table
            .changes
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.claim_until.is_some())
    })
    .await;
    // Every write after the claim names this node and attempt.
    assert!(r.table.changes.lock().unwrap().iter().all(|c| c.holder
        == Some(super::records::Holder {
            node_id: "n".into(),
            attempt: 1
        })));
    let hidden = r.queue.visibility.lock().unwrap().len();
    let written = r.table.changes.lock().unwrap().len();
    *r.table.taken_over.lock().unwrap() = true;
    until("the slot freed", || r.worker.current_task().is_none()).await;
    // Its output kept as a partial attempt; the record, the message are the holder's.
    assert_eq!(
        *r.store.bundles.lock().unwrap(),
        vec!["jobs/i-1/t-6/attempt-1/bundle/"]
    );
    assert_eq!(r.table.changes.lock().unwrap().len(), written);
    assert_eq!(r.queue.visibility.lock().unwrap().len(), hidden);
    assert!(r.queue.deleted.lock().unwrap().is_empty());
    assert!(r.queue.sent.lock().unwrap().is_empty());
    let events = r.publisher.events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(
            &e.kind,
            EventKind::TaskInterrupted { reason, attempt: 1, .. }
                if reason.contains("claim lost") && reason.contains("node 'other'")
        )),
        "{events:?}"
    );
    let types = r.publisher.types();
    assert!(!types.contains(&"TaskCompleted"), "{types:?}");
    assert!(!types.contains(&"TaskFailed"), "{types:?}");
}

/// A claim that takes over from an earlier attempt tells the task where that
/// attempt's partial bundle is; a first attempt gets no such variable.
#[tokio::test(start_paused = true)]
async fn a_task_taking_over_an_earlier_attempt_is_told_where_its_bundle_is() {
    for (previous, want) in [
        (
            Some(PreviousAttempt {
                instance_id: "i-0".into(),
                attempt: 1,
            }),
            Some("s3://b/jobs/i-0/t-9/attempt-1/bundle/".to_string()),
        ),
        (None, None),
    ] {
        let r = rig(
            Claim::Claimed { previous },
            FakeStore::default(),
            Duration::ZERO,
        );
        r.queue.inbox.lock().unwrap().push(message("t-9"));
        r.worker.start(None);
        until("the task started", || {
            !r.runner.envs.lock().unwrap().is_empty()
        })
        .await;
        let env = r.runner.envs.lock().unwrap()[0].clone();
        let got = env
            .iter()
            .find(|(k, _)| k == "LEASE_PREVIOUS_ATTEMPT")
            .map(|(_, v)| v.clone());
        assert_eq!(got, want);
        assert!(env.iter().any(|(k, v)| k == "LEASE_TASK_ID" && v == "t-9"));
    }
}
