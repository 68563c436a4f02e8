//! One task while it runs: start (or adopt) the program, keep the message hidden and
//! the claim alive, publish output, upload the log as it grows, and notice the end,
//! a timeout, a cancellation or an interruption. [`super::ending`] takes it from there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::messages::EventKind;
use lease_common::records::TaskState;
use lease_common::tags::NodeStatus;
use lease_common::{HumanDuration, layout};
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::{Change, Holder, RecordError};
use super::statefile::{self, TaskFile};
use super::{Interruption, Shared};
use crate::run::{Exit, Launch, LogTail, OutputParser, RunError, batch_lines};
use crate::upload::{BundleDest, ManifestMeta};

/// A `TaskOutput` event stays well under SNS's 256 KiB, leaving room for the envelope.
pub const MAX_OUTPUT_BYTES: usize = 200 * 1024;
/// Lines waiting to be published are capped; beyond this the oldest are dropped (the
/// log in S3 has them all).
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Attempts at each upload before the task's message is given back.
const UPLOAD_ATTEMPTS: u32 = 3;
/// Before a finished task's results are uploaded as final, the claim is renewed first
/// when it would lapse within this long: another node may have taken the task over
/// while this one was frozen or cut off. Generous against the clocks of two nodes
/// differing and the write's own time; a claim renewed less long ago is not checked,
/// so a short task costs no extra write.
const CLAIM_MARGIN: TimeDelta = TimeDelta::seconds(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Claimed just now: start the program.
    Fresh,
    /// Left running by a previous run of the agent.
    Adopted,
}

/// How the running phase ended.
#[derive(Debug)]
pub(super) enum End {
    Exited(Exit),
    TimedOut(HumanDuration),
    Cancelled,
    Lost(String),
    Interrupted(Interruption),
    /// The record names another node or attempt now: this copy was stopped.
    ClaimLost(ClaimLost),
}

/// A write after the claim was refused: the task is another node's now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClaimLost(pub(super) String);

pub(super) struct Running {
    pub(super) shared: Arc<Shared>,
    pub(super) file: TaskFile,
    pub(super) receipt: Arc<Mutex<Option<String>>>,
    pub(super) tail: LogTail,
    pub(super) parser: OutputParser,
    pub(super) pending: Vec<String>,
    pub(super) pending_bytes: usize,
    pub(super) last_output: Option<Instant>,
    pub(super) uploaded_log_len: u64,
    /// Until when this node's claim holds, as far as it knows (the last write of
    /// `claim_until`); `None` when not known (an adopted task).
    pub(super) claim_until: Option<DateTime<Utc>>,
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
    // A fresh task was claimed after it was received, so this is never later than the
    // claim's real end.
    let claim_until = (start == Start::Fresh).then(|| {
        file.started_at + TimeDelta::from_std(shared.settings.visibility).unwrap_or_default()
    });
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
        claim_until,
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
            End::ClaimLost(lost) => r.lost_claim(lost).await,
            other => r.finish(other).await,
        }
    }
    shared.release(&id);
}

impl Running {
    pub(super) fn id(&self) -> &str {
        &self.file.task.id
    }

    pub(super) fn workdir(&self) -> std::path::PathBuf {
        statefile::workdir(&self.shared.settings.state_dir, self.id())
    }

    pub(super) fn log_path(&self) -> std::path::PathBuf {
        statefile::log_path(&self.shared.settings.state_dir, self.id())
    }

    pub(super) fn receipt(&self) -> Option<String> {
        self.receipt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn save(&mut self) {
        self.file.receipt = self.receipt();
        self.file.log_offset = self.tail.offset();
        if let Err(e) = statefile::save(&self.shared.settings.state_dir, &self.file) {
            tracing::error!("{e}");
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.shared.deps.clock.now()
    }

    /// The claim every write after it is made under.
    pub(super) fn holder(&self) -> Holder {
        Holder {
            node_id: self.shared.settings.node_id.clone(),
            attempt: self.file.task.attempt,
        }
    }

    /// Writes `change` under this node's claim; the record's state afterwards (`None`
    /// without a table or when the write failed, which is logged). `Err`: the claim is
    /// lost and nothing was written.
    pub(super) async fn record(&self, change: Change) -> Result<Option<TaskState>, ClaimLost> {
        let Some(table) = self.shared.deps.table.as_ref() else {
            return Ok(None);
        };
        let change = Change {
            holder: Some(self.holder()),
            ..change
        };
        match table.update(self.id(), change, self.now()).await {
            Ok(s) => Ok(s),
            Err(e @ RecordError::ClaimLost { .. }) => Err(ClaimLost(e.to_string())),
            Err(e) => {
                tracing::warn!("{e}");
                Ok(None)
            }
        }
    }

    /// Starts (or finds) the program. `Err`: it cannot run; the reason is reported.
    pub(super) async fn begin(&mut self, start: Start) -> Result<(), String> {
        let runner = self.shared.deps.runner.clone();
        let launch = Launch {
            task: self.file.task.clone(),
            workdir: self.workdir(),
            log_path: self.log_path(),
            env: task_env(
                &self.file.task,
                &self.workdir(),
                &self.shared.settings.instance_id,
                &self.shared.settings.node_id,
                self.file.previous.as_deref(),
            ),
        };
        if start == Start::Adopted {
            self.hide_message().await;
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
    pub(super) async fn watch(
        &mut self,
        mut interrupts: watch::Receiver<Option<Interruption>>,
    ) -> End {
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
            // The claim first: a node that wakes from a freeze must learn that the task
            // is another's before it uploads a log over the new holder's.
            if Instant::now() >= next_extend {
                next_extend = Instant::now() + s.extend_every;
                match self.extend().await {
                    Ok(Some(TaskState::Cancelled)) => {
                        tracing::warn!("task '{}' was cancelled: stopping it", self.id());
                        self.stop_program(s.grace).await;
                        return End::Cancelled;
                    }
                    Ok(_) => {}
                    Err(lost) => {
                        tracing::warn!("{}: stopping this copy", lost.0);
                        self.stop_program(s.grace).await;
                        return End::ClaimLost(lost);
                    }
                }
            }
            if Instant::now() >= next_log_upload {
                next_log_upload = Instant::now() + s.log_upload_every;
                self.upload_log_if_grown().await;
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

    pub(super) async fn stop_program(&self, grace: Duration) {
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

    /// Keeps the claim alive and the message hidden; returns the record's state. The
    /// claim first: once it is lost, the message belongs to the node that holds it.
    pub(super) async fn extend(&mut self) -> Result<Option<TaskState>, ClaimLost> {
        let s = self.shared.settings.clone();
        let until = self.now() + TimeDelta::from_std(s.visibility).unwrap_or_default();
        let state = self
            .record(Change {
                claim_until: Some(until),
                ..Change::default()
            })
            .await?;
        if self.shared.deps.table.is_some() {
            self.claim_until = Some(until);
        }
        self.hide_message().await;
        self.save();
        Ok(state)
    }

    /// Renews the claim when it could have lapsed (see [`CLAIM_MARGIN`]).
    pub(super) async fn still_held(&mut self) -> Result<(), ClaimLost> {
        if self.shared.deps.table.is_none()
            || self
                .claim_until
                .is_some_and(|until| self.now() + CLAIM_MARGIN < until)
        {
            return Ok(());
        }
        self.extend().await.map(|_| ())
    }

    /// Hides the message for `visibility` from now. A fresh task's message was hidden
    /// that long by its receive; an adopted one's is hidden again at once, since the
    /// agent may have been down for most of it.
    pub(super) async fn hide_message(&self) {
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt()) {
            let secs = i32::try_from(self.shared.settings.visibility.as_secs()).unwrap_or(120);
            if let Err(e) = queue.change_visibility(self.id(), &receipt, secs).await {
                tracing::warn!("{e}");
            }
        }
    }

    /// New log lines → `TaskOutput`, at most one event per `output_every`; `all`
    /// publishes everything left (the task ended), still spaced by `output_every`.
    pub(super) async fn pump_output(&mut self, all: bool) {
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

    pub(super) async fn upload_log_if_grown(&mut self) {
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
    pub(super) async fn upload_results(
        &mut self,
        dest: BundleDest,
    ) -> Result<Option<String>, String> {
        self.upload(dest, true).await
    }

    /// [`Self::upload_results`]; the log too only with `log` (the log's key is the
    /// task's, not the attempt's: only the claim's holder may write it).
    pub(super) async fn upload(
        &mut self,
        dest: BundleDest,
        log: bool,
    ) -> Result<Option<String>, String> {
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
        let with_log = log;
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
                async {
                    if with_log {
                        store.upload_log(self.id(), &log, &log_key).await
                    } else {
                        Ok(())
                    }
                },
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

    pub(super) fn duration_secs(&self) -> f64 {
        (self.now() - self.file.started_at).num_milliseconds() as f64 / 1000.0
    }
}

/// The variables that tell a task who it is: its id and attempt, where its bundle is,
/// and the instance and node running it, so a script can name its outputs, find its
/// own checkpoint and log with its id; and, when this attempt takes over from an
/// earlier one, where that attempt's partial bundle is (`previous`), to resume from.
pub(super) fn task_env(
    task: &lease_common::messages::Task,
    workdir: &std::path::Path,
    instance_id: &str,
    node_id: &str,
    previous: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("LEASE_TASK_ID".into(), task.id.clone()),
        ("LEASE_ATTEMPT".into(), task.attempt.to_string()),
        ("LEASE_BUNDLE_DIR".into(), workdir.display().to_string()),
        ("LEASE_INSTANCE_ID".into(), instance_id.to_string()),
        ("LEASE_NODE_ID".into(), node_id.to_string()),
    ];
    if let Some(p) = previous {
        env.push(("LEASE_PREVIOUS_ATTEMPT".into(), p.to_string()));
    }
    env
}
