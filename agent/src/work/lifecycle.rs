//! One task from start to deleted message: run, keep the message hidden and the claim
//! alive, publish output, upload the log as it grows, then upload the bundle, report,
//! record, and only then delete the message. An interruption (spot, the lease ending)
//! instead uploads a partial bundle and requeues the task with attempt + 1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::messages::{EventKind, MAX_SQS_BODY, TaskPointer};
use lease_common::records::TaskState;
use lease_common::tags::NodeStatus;
use lease_common::{HumanDuration, layout};
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::Change;
use super::statefile::{self, TaskFile};
use super::{Interruption, Shared};
use crate::control::Request;
use crate::decide::Input;
use crate::run::{Exit, Launch, LogTail, OutputParser, RunError, Summary, batch_lines};
use crate::upload::{BundleDest, ManifestMeta};

/// A `TaskOutput` event stays well under SNS's 256 KiB, leaving room for the envelope.
pub const MAX_OUTPUT_BYTES: usize = 200 * 1024;
/// Lines waiting to be published are capped; beyond this the oldest are dropped (the
/// log in S3 has them all).
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Attempts at each upload before the task's message is given back.
const UPLOAD_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Claimed just now: start the program.
    Fresh,
    /// Left running by a previous run of the agent.
    Adopted,
}

/// How the running phase ended.
#[derive(Debug)]
enum End {
    Exited(Exit),
    TimedOut(HumanDuration),
    Cancelled,
    Lost(String),
    Interrupted(Interruption),
}

struct Running {
    shared: Arc<Shared>,
    file: TaskFile,
    receipt: Arc<Mutex<Option<String>>>,
    tail: LogTail,
    parser: OutputParser,
    pending: Vec<String>,
    pending_bytes: usize,
    last_output: Option<Instant>,
    uploaded_log_len: u64,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    file: TaskFile,
    start: Start,
    interrupts: watch::Receiver<Option<Interruption>>,
    receipt: Arc<Mutex<Option<String>>>,
) {
    let id = file.task.id.clone();
    let dir = shared.settings.state_dir.clone();
    let tail = LogTail::new(statefile::log_path(&dir, &id), file.log_offset);
    let parser = OutputParser::for_spec(&file.task.spec);
    let mut r = Running {
        shared: shared.clone(),
        file,
        receipt,
        tail,
        parser,
        pending: Vec::new(),
        pending_bytes: 0,
        last_output: None,
        uploaded_log_len: 0,
    };
    let before_start = interrupts.borrow().clone();
    if start == Start::Fresh
        && let Some(i) = before_start
    {
        // Interrupted between the claim and the start: nothing ran, nothing to upload.
        r.abandon(&i).await;
    } else if let Err(reason) = r.begin(start).await {
        r.finish(End::Lost(reason)).await;
    } else {
        let end = r.watch(interrupts).await;
        match end {
            End::Interrupted(i) => r.requeue(i).await,
            other => r.finish(other).await,
        }
    }
    shared.release(&id);
}

impl Running {
    fn id(&self) -> &str {
        &self.file.task.id
    }

    fn workdir(&self) -> std::path::PathBuf {
        statefile::workdir(&self.shared.settings.state_dir, self.id())
    }

    fn log_path(&self) -> std::path::PathBuf {
        statefile::log_path(&self.shared.settings.state_dir, self.id())
    }

    fn receipt(&self) -> Option<String> {
        self.receipt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn save(&mut self) {
        self.file.receipt = self.receipt();
        self.file.log_offset = self.tail.offset();
        if let Err(e) = statefile::save(&self.shared.settings.state_dir, &self.file) {
            tracing::error!("{e}");
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.shared.deps.clock.now()
    }

    async fn record(&self, change: Change) -> Option<TaskState> {
        let table = self.shared.deps.table.as_ref()?;
        match table.update(self.id(), change, self.now()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// Starts (or finds) the program. `Err`: it cannot run; the reason is reported.
    async fn begin(&mut self, start: Start) -> Result<(), String> {
        let runner = self.shared.deps.runner.clone();
        let launch = Launch {
            task: self.file.task.clone(),
            workdir: self.workdir(),
            log_path: self.log_path(),
        };
        if start == Start::Adopted {
            match runner.poll(self.id(), &launch.workdir).await {
                Ok(_) => {
                    self.shared.tag(NodeStatus::Running, Some(self.id()));
                    return Ok(());
                }
                // Killed between saving its state and starting it: start it now.
                Err(RunError::Lost { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        std::fs::create_dir_all(&launch.workdir)
            .map_err(|e| format!("cannot create '{}': {e}", launch.workdir.display()))?;
        self.save();
        runner.start(&launch).await.map_err(|e| e.to_string())?;
        tracing::info!(
            "task '{}' started (attempt {})",
            self.id(),
            self.file.task.attempt
        );
        self.shared.deps.emitter.send(EventKind::TaskStarted {
            task_id: self.id().to_string(),
            kind: self.file.task.spec.kind().to_string(),
            attempt: self.file.task.attempt,
        });
        self.shared.tag(NodeStatus::Running, Some(self.id()));
        Ok(())
    }

    /// Runs until the program ends, times out, is cancelled or interrupted.
    async fn watch(&mut self, mut interrupts: watch::Receiver<Option<Interruption>>) -> End {
        let s = self.shared.settings.clone();
        let runner = self.shared.deps.runner.clone();
        let workdir = self.workdir();
        let timeout_at = self
            .file
            .task
            .timeout
            .map(|t| (t, self.file.started_at + t.to_chrono()));
        let mut next_extend = Instant::now() + s.extend_every;
        let mut next_log_upload = Instant::now() + s.log_upload_every;
        loop {
            if let Some(i) = interrupts.borrow_and_update().clone() {
                return End::Interrupted(i);
            }
            tokio::select! {
                _ = interrupts.changed() => continue,
                () = tokio::time::sleep(s.poll_every) => {}
            }
            match runner.poll(self.id(), &workdir).await {
                Ok(Some(exit)) => return End::Exited(exit),
                Ok(None) => {}
                Err(e) => return End::Lost(e.to_string()),
            }
            self.pump_output(false).await;
            if Instant::now() >= next_log_upload {
                next_log_upload = Instant::now() + s.log_upload_every;
                self.upload_log_if_grown().await;
            }
            if Instant::now() >= next_extend {
                next_extend = Instant::now() + s.extend_every;
                if self.extend().await == Some(TaskState::Cancelled) {
                    tracing::warn!("task '{}' was cancelled: stopping it", self.id());
                    self.stop_program(s.grace).await;
                    return End::Cancelled;
                }
            }
            if let Some((limit, at)) = timeout_at
                && self.now() >= at
            {
                tracing::warn!("task '{}' timed out after {limit}: stopping it", self.id());
                self.stop_program(s.grace).await;
                return End::TimedOut(limit);
            }
        }
    }

    async fn stop_program(&self, grace: Duration) {
        if let Err(e) = self
            .shared
            .deps
            .runner
            .interrupt(self.id(), &self.workdir(), grace)
            .await
        {
            tracing::warn!("{e}");
        }
    }

    /// Keeps the message hidden and the claim alive; returns the record's state.
    async fn extend(&mut self) -> Option<TaskState> {
        let s = self.shared.settings.clone();
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt()) {
            let secs = i32::try_from(s.visibility.as_secs()).unwrap_or(120);
            if let Err(e) = queue.change_visibility(self.id(), &receipt, secs).await {
                tracing::warn!("{e}");
            }
        }
        self.save();
        let until = self.now() + TimeDelta::from_std(s.visibility).unwrap_or_default();
        self.record(Change {
            claim_until: Some(until),
            ..Change::default()
        })
        .await
    }

    /// New log lines → `TaskOutput`, at most one event per `output_every`; `all`
    /// publishes everything left (the task ended), still spaced by `output_every`.
    async fn pump_output(&mut self, all: bool) {
        match self.tail.read_lines() {
            Ok(lines) => {
                for raw in lines {
                    for line in self.parser.push(&raw) {
                        self.pending_bytes += line.len();
                        self.pending.push(line);
                    }
                }
            }
            Err(e) => tracing::debug!("reading the log of task '{}': {e}", self.id()),
        }
        if self.pending_bytes > MAX_PENDING_BYTES {
            let mut dropped = 0;
            while self.pending_bytes > MAX_PENDING_BYTES / 2 && !self.pending.is_empty() {
                let l = self.pending.remove(0);
                self.pending_bytes -= l.len();
                dropped += 1;
            }
            self.pending.insert(
                0,
                format!("[lease: {dropped} lines not shown here; the log has them]"),
            );
        }
        let every = self.shared.settings.output_every;
        loop {
            if self.pending.is_empty() {
                return;
            }
            if let Some(last) = self.last_output
                && last.elapsed() < every
            {
                if !all {
                    return;
                }
                tokio::time::sleep_until(last + every).await;
            }
            let lines = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            let mut batches = batch_lines(lines, MAX_OUTPUT_BYTES).into_iter();
            if let Some(first) = batches.next() {
                let seq = self.file.seq;
                self.file.seq += 1;
                self.shared.deps.emitter.send(EventKind::TaskOutput {
                    task_id: self.id().to_string(),
                    seq,
                    lines: first,
                });
                self.last_output = Some(Instant::now());
                self.save();
            }
            for rest in batches {
                self.pending_bytes += rest.iter().map(String::len).sum::<usize>();
                self.pending.extend(rest);
            }
            if !all {
                return;
            }
        }
    }

    async fn upload_log_if_grown(&mut self) {
        let Some(store) = self.shared.deps.store.clone() else {
            return;
        };
        let path = self.log_path();
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len == self.uploaded_log_len {
            return;
        }
        match store
            .upload_log(self.id(), &path, &layout::log_key(self.id()))
            .await
        {
            Ok(()) => self.uploaded_log_len = len,
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Uploads the log and the bundle to `dest`, retrying; `Ok(bundle uri)`, `Ok(None)`
    /// with no bucket configured.
    async fn upload_results(&mut self, dest: BundleDest) -> Result<Option<String>, String> {
        let Some(store) = self.shared.deps.store.clone() else {
            tracing::warn!(
                "no log-bucket configured: the bundle and log of task '{}' stay on this machine",
                self.id()
            );
            return Ok(None);
        };
        let bundle = statefile::bundle_dir(&self.shared.settings.state_dir, &self.file.task);
        if let Err(e) = std::fs::create_dir_all(&bundle) {
            tracing::warn!("cannot create bundle directory '{}': {e}", bundle.display());
        }
        let log = self.log_path();
        if !log.exists()
            && let Err(e) = std::fs::write(&log, b"")
        {
            tracing::warn!("cannot create log '{}': {e}", log.display());
        }
        let mut last = String::new();
        for attempt in 1..=UPLOAD_ATTEMPTS {
            let log_key = layout::log_key(self.id());
            let meta = ManifestMeta {
                task_id: self.id().to_string(),
                instance_id: self.shared.settings.instance_id.clone(),
                attempt: self.file.task.attempt,
            };
            let (log_result, bundle_result) = tokio::join!(
                store.upload_log(self.id(), &log, &log_key),
                store.upload_bundle(&bundle, dest.clone(), meta)
            );
            let result = log_result.and(bundle_result);
            match result {
                Ok(up) => {
                    if !up.skipped.is_empty() {
                        tracing::warn!(
                            "task '{}': not uploaded: {}",
                            self.id(),
                            up.skipped.join("; ")
                        );
                    }
                    tracing::info!(
                        "task '{}': {} files, {} bytes uploaded to {}",
                        self.id(),
                        up.files,
                        up.bytes,
                        up.uri
                    );
                    return Ok(Some(up.uri));
                }
                Err(e) => {
                    tracing::warn!("{e} (attempt {attempt}/{UPLOAD_ATTEMPTS})");
                    last = e.to_string();
                    if attempt < UPLOAD_ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
        }
        Err(last)
    }

    fn duration_secs(&self) -> f64 {
        (self.now() - self.file.started_at).num_milliseconds() as f64 / 1000.0
    }

    /// The program ended (or could not run): upload, report, record, then delete.
    async fn finish(&mut self, end: End) {
        self.pump_output(true).await;
        let cancelled = matches!(end, End::Cancelled);
        if !cancelled && let Some(table) = self.shared.deps.table.clone() {
            // Beside the uploads: `lease tasks` shows it, nothing waits for it.
            let (id, now) = (self.id().to_string(), self.now());
            tokio::spawn(async move {
                let change = Change {
                    state: Some(TaskState::Uploading),
                    ..Change::default()
                };
                if let Err(e) = table.update(&id, change, now).await {
                    tracing::warn!("{e}");
                }
            });
        }
        // While draining, the decision loop owns the status (interrupted, expiring).
        if self.shared.taking() {
            self.shared.tag(NodeStatus::Uploading, Some(self.id()));
        }
        let dest = BundleDest::finished(&self.shared.settings.instance_id, self.id());
        let bundle = match self.upload_results(dest).await {
            Ok(b) => b,
            Err(reason) => return self.give_back(&reason).await,
        };
        let log_uri = self
            .shared
            .deps
            .store
            .as_ref()
            .map(|s| s.uri(&layout::log_key(self.id())));
        let summary: Summary = self.parser.summary();
        let (state, exit_code, reason) = match &end {
            End::Exited(exit) if exit.success() && !summary.is_error => {
                (TaskState::Complete, Some(exit.code()), None)
            }
            End::Exited(exit) if exit.success() => (
                TaskState::Failed,
                Some(exit.code()),
                Some(format!(
                    "claude reported an error: {}",
                    summary.result.clone().unwrap_or_default()
                )),
            ),
            End::Exited(exit) => (
                TaskState::Failed,
                Some(exit.code()),
                Some(match exit {
                    Exit::Code(c) => format!("exited with status {c}"),
                    Exit::Signal(s) => format!("killed by signal {s}"),
                }),
            ),
            End::TimedOut(limit) => (
                TaskState::Failed,
                None,
                Some(format!("timed out after {limit}")),
            ),
            End::Cancelled => (TaskState::Cancelled, None, Some("cancelled".to_string())),
            End::Lost(why) => (TaskState::Failed, None, Some(why.clone())),
            End::Interrupted(i) => (TaskState::Interrupted, None, Some(i.reason.clone())),
        };
        let duration_secs = self.duration_secs();
        let event = if state == TaskState::Complete {
            EventKind::TaskCompleted {
                task_id: self.id().to_string(),
                exit_code: exit_code.unwrap_or(0),
                duration_secs,
                bundle: bundle.clone(),
                result: summary.result.clone(),
                cost_usd: summary.cost_usd,
                turns: summary.turns,
            }
        } else {
            EventKind::TaskFailed {
                task_id: Some(self.id().to_string()),
                reason: reason.clone().unwrap_or_default(),
                exit_code,
                duration_secs: Some(duration_secs),
                bundle: bundle.clone(),
            }
        };
        tracing::info!(
            "task '{}' {state}{}",
            self.id(),
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        let published = self.shared.deps.emitter.send(event);
        self.record(Change {
            state: Some(state),
            exit_code,
            reason: reason.clone(),
            bundle,
            log: log_uri,
            ended: true,
            ..Change::default()
        })
        .await;
        // Only now, with everything in S3 and recorded, does the message go.
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
            && let Err(e) = queue.delete(self.id(), &receipt).await
        {
            tracing::error!("{e}; a later delivery finds the task finished and is deleted");
        }
        let _ = published.await;
        self.clean_up().await;
        if self.file.one_shot {
            self.one_shot_done(state != TaskState::Complete, reason)
                .await;
        }
    }

    /// The results could not be uploaded: the message is not deleted but made visible
    /// again at once, so this or another node runs the task again; said in the record
    /// and a `TaskInterrupted`.
    async fn give_back(&mut self, why: &str) {
        let reason = format!("upload failed ({why}); the task returns to the queue");
        tracing::error!("task '{}': {reason}", self.id());
        self.record(Change {
            state: Some(TaskState::Interrupted),
            reason: Some(reason.clone()),
            ..Change::default()
        })
        .await;
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
            && let Err(e) = queue.change_visibility(self.id(), &receipt, 0).await
        {
            tracing::warn!("{e}");
        }
        let _ = self
            .shared
            .deps
            .emitter
            .send(EventKind::TaskInterrupted {
                task_id: self.id().to_string(),
                attempt: self.file.task.attempt,
                reason,
                bundle: None,
            })
            .await;
        self.clean_up().await;
    }

    /// Stops the program, uploads what it produced under `attempt-<n>/`, records it
    /// interrupted and puts it back on the queue with attempt + 1, all by `i.until`.
    async fn requeue(&mut self, i: Interruption) {
        tracing::warn!(
            "interrupting task '{}' ({}), to be done by {}",
            self.id(),
            i.reason,
            lease_common::tags::render_time(i.until)
        );
        let left = (i.until - self.now()).to_std().unwrap_or(Duration::ZERO);
        self.stop_program(self.shared.settings.grace.min(left / 3))
            .await;
        self.pump_output(false).await;
        let attempt = self.file.task.attempt;
        let dest = BundleDest::interrupted(&self.shared.settings.instance_id, self.id(), attempt);
        let bundle = match self.upload_results(dest).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("task '{}': partial results not uploaded: {e}", self.id());
                None
            }
        };
        self.record(Change {
            state: Some(TaskState::Interrupted),
            reason: Some(i.reason.clone()),
            bundle: bundle.clone(),
            ..Change::default()
        })
        .await;
        if let (Some(queue), Some(receipt)) = (self.shared.deps.queue.clone(), self.receipt()) {
            let body = self.next_attempt_body();
            match queue.send(self.id(), &body).await {
                Ok(()) => {
                    if let Err(e) = queue.delete(self.id(), &receipt).await {
                        tracing::warn!("{e}");
                    }
                }
                Err(e) => {
                    // The old message returns by itself once its visibility lapses;
                    // make that now.
                    tracing::error!("{e}; giving the old message back instead");
                    if let Err(e) = queue.change_visibility(self.id(), &receipt, 0).await {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
        let _ = self
            .shared
            .deps
            .emitter
            .send(EventKind::TaskInterrupted {
                task_id: self.id().to_string(),
                attempt,
                reason: i.reason.clone(),
                bundle,
            })
            .await;
        self.clean_up().await;
        if self.file.one_shot
            && let Err(e) = statefile::mark_one_shot_ran(&self.shared.settings.state_dir, self.id())
        {
            tracing::error!("{e}");
        }
    }

    /// Interrupted before it started: the claim is given up and the message made
    /// visible again at once, with the same attempt (this one never ran).
    async fn abandon(&mut self, i: &Interruption) {
        self.record(Change {
            state: Some(TaskState::Interrupted),
            reason: Some(format!("{} before it started", i.reason)),
            ..Change::default()
        })
        .await;
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
            && let Err(e) = queue.change_visibility(self.id(), &receipt, 0).await
        {
            tracing::warn!("{e}");
        }
        self.clean_up().await;
    }

    /// The message for the next attempt: a pointer stays a pointer.
    fn next_attempt_body(&self) -> String {
        let attempt = self.file.task.attempt + 1;
        match &self.file.pointer {
            Some(p) => serde_json::to_string(&TaskPointer {
                attempt,
                ..p.clone()
            })
            .unwrap_or_default(),
            None => {
                let mut t = self.file.task.clone();
                t.attempt = attempt;
                let body = t.to_json();
                if body.len() > MAX_SQS_BODY {
                    tracing::error!(
                        "task '{}' no longer fits a message ({} bytes)",
                        t.id,
                        body.len()
                    );
                }
                body
            }
        }
    }

    async fn clean_up(&mut self) {
        if let Err(e) = self
            .shared
            .deps
            .runner
            .cleanup(self.id(), &self.workdir())
            .await
        {
            tracing::warn!("{e}");
        }
        if let Err(e) = statefile::remove(&self.shared.settings.state_dir, self.id()) {
            tracing::warn!("{e}");
        }
    }

    /// The one-shot task is done: remember it, then end the lease through the decision
    /// loop's `leased complete` path (tags, events, `lease:on-complete`).
    async fn one_shot_done(&self, failed: bool, reason: Option<String>) {
        if let Err(e) = statefile::mark_one_shot_ran(&self.shared.settings.state_dir, self.id()) {
            tracing::error!("{e}");
        }
        // The decision loop writes the final status from here on, and the slot must be
        // gone before it drains the worker.
        self.shared
            .taking
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.shared.release(self.id());
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let request = Request::Complete {
            failed,
            message: Some(match reason {
                Some(r) => format!("task '{}': {r}", self.id()),
                None => format!("task '{}' complete", self.id()),
            }),
        };
        if self
            .shared
            .deps
            .to_loop
            .send(Input::Control(request, tx))
            .await
            .is_err()
        {
            tracing::error!("the decision loop is gone: the lease is not ended");
        }
    }
}
