//! How a task's run ends: finished (upload, report, record, then delete the message),
//! its results not uploadable (the message given back), or interrupted (partial
//! bundle, requeue with attempt + 1), and the one-shot task's hand-over to the
//! decision loop.

use std::time::Duration;

use lease_common::layout;
use lease_common::messages::{EventKind, MAX_SQS_BODY, TaskPointer};
use lease_common::records::TaskState;
use lease_common::tags::NodeStatus;

use super::Interruption;
use super::lifecycle::{ClaimLost, End, Running};
use super::records::Change;
use super::statefile;
use crate::run::{Exit, Summary};
use crate::upload::BundleDest;

/// A task's record says `uploading` only when its upload is still going after this
/// long: a state nobody could have seen is not worth a write per task.
const UPLOADING_RECORD_AFTER: Duration = Duration::from_secs(1);

impl Running {
    /// The program ended (or could not run): upload, report, record, then delete.
    pub(super) async fn finish(&mut self, end: End) {
        self.pump_output(true).await;
        // Results are final only from the claim's holder: a node that was frozen past
        // its claim keeps what it made as a partial attempt instead.
        if let Err(lost) = self.still_held().await {
            return self.lost_claim(lost).await;
        }
        let cancelled = matches!(end, End::Cancelled);
        // Beside the uploads, and only once they have taken a while: `lease tasks` shows
        // it, nothing waits for it. Conditional, so a late write cannot undo the final one.
        let uploading = self
            .shared
            .deps
            .table
            .clone()
            .filter(|_| !cancelled)
            .map(|table| {
                let (id, clock) = (self.id().to_string(), self.shared.deps.clock.clone());
                let holder = self.holder();
                tokio::spawn(async move {
                    tokio::time::sleep(UPLOADING_RECORD_AFTER).await;
                    let change = Change {
                        state: Some(TaskState::Uploading),
                        if_state: Some(TaskState::Running),
                        holder: Some(holder),
                        ..Change::default()
                    };
                    if let Err(e) = table.update(&id, change, clock.now()).await {
                        tracing::warn!("{e}");
                    }
                })
            });
        // While draining, the decision loop owns the status (interrupted, expiring).
        if self.shared.taking() {
            self.shared.tag(NodeStatus::Uploading, Some(self.id()));
        }
        let dest = BundleDest::finished(&self.shared.settings.instance_id, self.id());
        let uploaded = self.upload_results(dest).await;
        if let Some(write) = uploading {
            write.abort();
        }
        let bundle = match uploaded {
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
        let failure = summary.failure();
        let (state, exit_code, reason) = match &end {
            End::Exited(exit) if exit.success() && !summary.failed() => {
                (TaskState::Complete, Some(exit.code()), None)
            }
            // A Claude session that said why it failed: its words, not the exit status.
            End::Exited(exit) if failure.is_some() => (
                TaskState::Failed,
                Some(exit.code()),
                failure.as_ref().map(|why| format!("claude: {why}")),
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
            // Routed to `lost_claim` before here; written only if that ever changes.
            End::ClaimLost(lost) => (TaskState::Interrupted, None, Some(lost.0.clone())),
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
                permission_denials: summary.permission_denials.clone(),
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
        // The record first: a refused write means another node holds the task, and then
        // neither the event nor the message's delete is this node's to do.
        let recorded = self
            .record(Change {
                state: Some(state),
                exit_code,
                reason: reason.clone(),
                bundle,
                log: log_uri,
                ended: true,
                ..Change::default()
            })
            .await;
        if let Err(lost) = recorded {
            tracing::error!(
                "{}: the results of this copy stay where they were uploaded",
                lost.0
            );
            self.clean_up().await;
            return;
        }
        let published = self.shared.deps.emitter.send(event);
        // Only now, with everything in S3 and recorded, does the message go.
        if let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
            && let Err(e) = queue.delete(self.id(), &receipt).await
        {
            tracing::error!("{e}; a later delivery finds the task finished and is deleted");
        }
        if self.file.one_shot {
            // The lease ends next: the event must not be cut off by the agent's exit.
            // Otherwise it keeps retrying in the background, and the slot is free now.
            let _ = published.await;
        }
        self.clean_up().await;
        if self.file.one_shot {
            self.one_shot_done(state != TaskState::Complete, reason)
                .await;
        }
    }

    /// The results could not be uploaded: the message is not deleted but made visible
    /// again at once, so this or another node runs the task again; said in the record
    /// and a `TaskInterrupted`.
    pub(super) async fn give_back(&mut self, why: &str) {
        let reason = format!("upload failed ({why}); the task returns to the queue");
        tracing::error!("task '{}': {reason}", self.id());
        let recorded = self
            .record(Change {
                state: Some(TaskState::Interrupted),
                reason: Some(reason.clone()),
                ..Change::default()
            })
            .await;
        if let Err(lost) = &recorded {
            tracing::warn!("{}", lost.0);
        }
        if recorded.is_ok()
            && let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
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
    pub(super) async fn requeue(&mut self, i: Interruption) {
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
        let recorded = self
            .record(Change {
                state: Some(TaskState::Interrupted),
                reason: Some(i.reason.clone()),
                bundle: bundle.clone(),
                ..Change::default()
            })
            .await;
        if let Err(lost) = &recorded {
            // The holder requeues it when its own turn comes; a second message would
            // run it twice.
            tracing::warn!("{}: not requeued from here", lost.0);
        }
        if recorded.is_ok()
            && let (Some(queue), Some(receipt)) = (self.shared.deps.queue.clone(), self.receipt())
        {
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
    pub(super) async fn abandon(&mut self, i: &Interruption) {
        let recorded = self
            .record(Change {
                state: Some(TaskState::Interrupted),
                reason: Some(format!("{} before it started", i.reason)),
                ..Change::default()
            })
            .await;
        if let Err(lost) = &recorded {
            tracing::warn!("{}", lost.0);
        }
        if recorded.is_ok()
            && let (Some(queue), Some(receipt)) = (&self.shared.deps.queue, self.receipt())
            && let Err(e) = queue.change_visibility(self.id(), &receipt, 0).await
        {
            tracing::warn!("{e}");
        }
        self.clean_up().await;
    }

    /// Another node holds the task now (this one's claim lapsed while it was frozen or
    /// cut off): this copy, already stopped, leaves its bundle as a partial attempt
    /// under this instance's `attempt-<n>/`, and a `TaskInterrupted` says why. The
    /// record, the log and the message are the holder's: none is touched.
    pub(super) async fn lost_claim(&mut self, lost: ClaimLost) {
        let attempt = self.file.task.attempt;
        tracing::warn!("task '{}': {}", self.id(), lost.0);
        let dest = BundleDest::interrupted(&self.shared.settings.instance_id, self.id(), attempt);
        let bundle = match self.upload(dest, false).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("task '{}': partial results not uploaded: {e}", self.id());
                None
            }
        };
        let _ = self
            .shared
            .deps
            .emitter
            .send(EventKind::TaskInterrupted {
                task_id: self.id().to_string(),
                attempt,
                reason: format!("claim lost: {}", lost.0),
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

    /// The message for the next attempt: a pointer stays a pointer.
    pub(super) fn next_attempt_body(&self) -> String {
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

    pub(super) async fn clean_up(&mut self) {
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

    /// The one-shot task is done: remember it, then tell the lease loop, which ends the
    /// lease as `leased complete` does (tags, events, `lease:on-complete`).
    pub(super) async fn one_shot_done(&self, failed: bool, reason: Option<String>) {
        if let Err(e) = statefile::mark_one_shot_ran(&self.shared.settings.state_dir, self.id()) {
            tracing::error!("{e}");
        }
        // The decision loop writes the final status from here on, and the slot must be
        // gone before it drains the worker.
        self.shared
            .taking
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.shared.release(self.id());
        let message = match reason {
            Some(r) => format!("task '{}': {r}", self.id()),
            None => format!("task '{}' complete", self.id()),
        };
        if !self.shared.deps.lease.task_done(failed, message).await {
            tracing::error!("the decision loop is gone: the lease is not ended");
        }
    }
}
