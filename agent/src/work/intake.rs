//! What happens to a message before its task runs: parse (or dead-letter), resolve an
//! S3 pointer, recognise a duplicate, claim; and the two other ways tasks arrive:
//! adoption after a restart, and the config's one-shot task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_common::layout::attempt_bundle_prefix;
use lease_common::messages::{EventKind, Task, TaskMessage, TaskPointer};
use tokio::sync::watch;

use super::lifecycle::{self, Start};
use super::queue::{MAX_RECEIVE, MAX_VISIBILITY_SECS, Received};
use super::records::{Claim, Claimant, PreviousAttempt};
use super::statefile::{self, TaskFile};
use super::store;
use super::{Shared, Slot};

/// After a failed receive, wait this long before the next (the error is logged each time).
const RECEIVE_BACKOFF: Duration = Duration::from_secs(5);
/// While the worker is full, how often it looks again even without a slot freed
/// (a safety net; a freed slot wakes it at once).
const FULL_RECHECK: Duration = Duration::from_secs(1);
/// A second message for a task that runs here comes back after this long: by then the
/// task may have ended, and the claim then finds it finished and deletes the duplicate.
const LOCAL_DUPLICATE_WAIT_SECS: i32 = 10;

/// Takes messages while the worker takes tasks, asking for no more than it has free
/// slots. Several of these may run side by side (a receive takes a round trip, and
/// slots free up meanwhile); together they never ask for more than is free.
pub(crate) async fn receive_loop(shared: Arc<Shared>) {
    let Some(queue) = shared.deps.queue.clone() else {
        return;
    };
    loop {
        if !shared.taking() {
            tracing::info!("taking no more tasks");
            return;
        }
        let notified = shared.changed.notified();
        let ask = {
            let slots = shared.slots_lock();
            let mut asked = shared.asked_lock();
            let taken = u32::try_from(slots.len()).unwrap_or(u32::MAX);
            let free = shared
                .settings
                .max_concurrent
                .saturating_sub(taken.saturating_add(*asked));
            let ask = free.min(MAX_RECEIVE);
            *asked += ask;
            ask
        };
        if ask == 0 {
            let _ = tokio::time::timeout(FULL_RECHECK, notified).await;
            continue;
        }
        let received = queue
            .receive(
                ask,
                shared.settings.receive_wait,
                shared.settings.visibility,
            )
            .await;
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                *shared.asked_lock() -= ask;
                shared.wake();
                tracing::warn!("{e}; retrying in {RECEIVE_BACKOFF:?}");
                tokio::time::sleep(RECEIVE_BACKOFF).await;
                continue;
            }
        };
        for m in messages {
            if shared.taking() {
                take(&shared, m).await;
            } else {
                // Told to stop while the receive was in flight: hand it straight back.
                if let Err(e) = queue.change_visibility(&m.message_id, &m.receipt, 0).await {
                    tracing::warn!("{e}");
                }
            }
        }
        // Each message now holds a slot of its own (or was refused).
        *shared.asked_lock() -= ask;
        shared.wake();
    }
}

/// The `id` of a body that does not parse as a task, when one can be read at all.
pub fn guess_task_id(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("id")?.as_str().map(str::to_string)
}

async fn take(shared: &Arc<Shared>, m: Received) {
    let (task, pointer) = match TaskMessage::parse(&m.body) {
        Err(e) => return dead_letter(shared, &m, guess_task_id(&m.body), e.to_string()).await,
        Ok(TaskMessage::Inline(t)) => (t, None),
        Ok(TaskMessage::Pointer(p)) => match resolve_pointer(shared, &p).await {
            Ok(t) => (t, Some(p)),
            Err(Some(reason)) => return dead_letter(shared, &m, Some(p.id.clone()), reason).await,
            // Not readable now: the message returns when its visibility lapses.
            Err(None) => return,
        },
    };
    if let Some(queue) = &shared.deps.queue {
        let local = {
            let slots = shared.slots_lock();
            slots.get(&task.id).map(|s| {
                (
                    s.message_id.as_deref() == Some(m.message_id.as_str()),
                    s.receipt.clone(),
                )
            })
        };
        if let Some((same_message, receipt)) = local {
            if same_message {
                // Our own running task's message came back (its visibility lapsed while
                // the agent restarted): keep the newest receipt, which is the one SQS
                // wants for the delete.
                *receipt
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(m.receipt.clone());
            }
            let secs = if same_message {
                i32::try_from(shared.settings.visibility.as_secs()).unwrap_or(120)
            } else {
                LOCAL_DUPLICATE_WAIT_SECS
            };
            tracing::info!(
                "task '{}' already runs here; its message waits {secs}s",
                task.id
            );
            if let Err(e) = queue.change_visibility(&task.id, &m.receipt, secs).await {
                tracing::warn!("{e}");
            }
            return;
        }
    }
    // The slot is taken before the claim, so the next receive asks only for what is
    // still free, and the claim runs beside the next message's intake.
    let mut file = TaskFile {
        message_id: Some(m.message_id.clone()),
        ..TaskFile::new(
            task,
            pointer,
            Some(m.receipt.clone()),
            shared.deps.clock.now(),
        )
    };
    let (rx, receipt) = reserve(shared, &file);
    let shared = shared.clone();
    tokio::spawn(async move {
        match claim(&shared, &file.task, &m).await {
            Some(previous) => {
                file.previous = previous_uri(&shared, &file.task.id, previous);
                lifecycle::run(shared, file, Start::Fresh, rx, receipt).await;
            }
            None => shared.unreserve(&file.task.id),
        }
    });
}

/// `Err(Some(reason))`: the pointer can never be resolved (dead-letter it);
/// `Err(None)`: not now.
async fn resolve_pointer(shared: &Shared, p: &TaskPointer) -> Result<Task, Option<String>> {
    let Some(store) = &shared.deps.store else {
        return Err(Some(format!(
            "task '{}' is stored at '{}' and this node has no bucket configured",
            p.id, p.spec_s3
        )));
    };
    let fetched = store
        .fetch_task(&p.spec_s3)
        .await
        .and_then(|bytes| store::task_from_object(&p.spec_s3, &bytes));
    let mut task = match fetched {
        Ok(t) => t,
        Err(e) if e.is_permanent() => return Err(Some(e.to_string())),
        Err(e) => {
            tracing::warn!("{e}; the message returns to the queue");
            return Err(None);
        }
    };
    if task.id != p.id {
        return Err(Some(format!(
            "the message names task '{}' but '{}' holds task '{}'",
            p.id, p.spec_s3, task.id
        )));
    }
    task.attempt = p.attempt;
    Ok(task)
}

/// Where the previous attempt's partial bundle is, `s3://<bucket>/<prefix>`; `None`
/// without a previous attempt or without a bucket to name.
fn previous_uri(
    shared: &Shared,
    task_id: &str,
    previous: Option<PreviousAttempt>,
) -> Option<String> {
    let p = previous?;
    let store = shared.deps.store.as_ref()?;
    Some(store.uri(&attempt_bundle_prefix(&p.instance_id, task_id, p.attempt)))
}

/// `Some` when this node may run the task, with the earlier attempt it takes over
/// from, if any. Without a task table every delivery runs.
async fn claim(shared: &Shared, task: &Task, m: &Received) -> Option<Option<PreviousAttempt>> {
    let Some(table) = &shared.deps.table else {
        return Some(None);
    };
    let now = shared.deps.clock.now();
    let by = Claimant {
        node_id: &shared.settings.node_id,
        instance_id: &shared.settings.instance_id,
        now,
        claim_until: now
            + chrono::TimeDelta::from_std(shared.settings.visibility).unwrap_or_default(),
    };
    let queue = shared.deps.queue.as_ref();
    match table.claim(task, by).await {
        Ok(Claim::Claimed { previous }) => Some(previous),
        Ok(Claim::Finished(state)) => {
            tracing::info!(
                "task '{}' is already {state}: deleting its duplicate message",
                task.id
            );
            if let Some(q) = queue
                && let Err(e) = q.delete(&task.id, &m.receipt).await
            {
                tracing::warn!("{e}");
            }
            None
        }
        Ok(Claim::Held { until }) => {
            // Hide it until the other claim would lapse: if its holder dies, the
            // message comes back just as the claim can be taken over.
            let secs = until
                .map_or(0, |u| u - now.timestamp())
                .clamp(30, i64::from(MAX_VISIBILITY_SECS));
            tracing::info!(
                "task '{}' is claimed by another node; its message waits {secs}s",
                task.id
            );
            if let Some(q) = queue
                && let Err(e) = q
                    .change_visibility(&task.id, &m.receipt, i32::try_from(secs).unwrap_or(30))
                    .await
            {
                tracing::warn!("{e}");
            }
            None
        }
        Err(e) => {
            tracing::warn!("{e}; the message returns to the queue");
            None
        }
    }
}

/// A body that can never run: to the dead-letter queue with its reason, and a
/// `TaskFailed` naming it. Without a dead-letter queue the message is hidden for the
/// longest time SQS allows (12 h) and never deleted, so nothing is lost and the
/// worker is not handed it again and again.
async fn dead_letter(shared: &Shared, m: &Received, task_id: Option<String>, reason: String) {
    let Some(queue) = &shared.deps.queue else {
        return;
    };
    let name = task_id.clone().unwrap_or_else(|| m.message_id.clone());
    tracing::warn!("message '{}' refused: {reason}", m.message_id);
    match queue.dead_letter(&name, &m.body, &reason).await {
        Ok(true) => {
            if let Err(e) = queue.delete(&name, &m.receipt).await {
                tracing::warn!("{e}");
            }
        }
        Ok(false) => {
            tracing::warn!(
                "the queue has no dead-letter queue: message '{}' stays in it, hidden for 12h",
                m.message_id
            );
            if let Err(e) = queue
                .change_visibility(&name, &m.receipt, MAX_VISIBILITY_SECS)
                .await
            {
                tracing::warn!("{e}");
            }
        }
        Err(e) => {
            tracing::error!("{e}; the message returns to the queue");
            return;
        }
    }
    shared.deps.emitter.send(EventKind::TaskFailed {
        task_id,
        reason: format!("message '{}' refused: {reason}", m.message_id),
        exit_code: None,
        duration_secs: None,
        bundle: None,
    });
}

/// Carries on with the tasks a previous run of the agent left behind.
pub(crate) async fn adopt(shared: &Arc<Shared>) {
    for file in statefile::load_all(&shared.settings.state_dir) {
        tracing::warn!(
            "adopting task '{}' (attempt {}) left by the previous run",
            file.task.id,
            file.task.attempt
        );
        spawn(shared, file, Start::Adopted);
    }
}

/// The config's one task, run once per machine.
pub(crate) async fn one_shot(shared: &Arc<Shared>, task: Task) {
    let dir = &shared.settings.state_dir;
    if statefile::one_shot_ran(dir, &task.id) {
        tracing::info!("one-shot task '{}' has already run here", task.id);
        return;
    }
    if shared.slots_lock().contains_key(&task.id) {
        return; // adopted: it runs already
    }
    let file = TaskFile {
        one_shot: true,
        ..TaskFile::new(task, None, None, shared.deps.clock.now())
    };
    // The claim writes the task's record (node, kind, attempt) for `lease tasks`; a
    // record already final means it ran here before the marker could be written.
    if let Some(table) = &shared.deps.table {
        let now = shared.deps.clock.now();
        let by = Claimant {
            node_id: &shared.settings.node_id,
            instance_id: &shared.settings.instance_id,
            now,
            claim_until: now
                + chrono::TimeDelta::from_std(shared.settings.visibility).unwrap_or_default(),
        };
        match table.claim(&file.task, by).await {
            Ok(Claim::Finished(state)) => {
                tracing::warn!("one-shot task '{}' is already {state}", file.task.id);
                if let Err(e) = statefile::mark_one_shot_ran(dir, &file.task.id) {
                    tracing::error!("{e}");
                }
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}; running the one-shot task anyway"),
        }
    }
    spawn(shared, file, Start::Fresh);
}

type Reservation = (
    watch::Receiver<Option<super::Interruption>>,
    Arc<Mutex<Option<String>>>,
);

/// Takes a slot for the task.
fn reserve(shared: &Shared, file: &TaskFile) -> Reservation {
    let (tx, rx) = watch::channel(None);
    let receipt = Arc::new(Mutex::new(file.receipt.clone()));
    shared.slots_lock().insert(
        file.task.id.clone(),
        Slot {
            message_id: file.message_id.clone(),
            receipt: receipt.clone(),
            interrupt: tx,
        },
    );
    (rx, receipt)
}

fn spawn(shared: &Arc<Shared>, file: TaskFile, start: Start) {
    let (rx, receipt) = reserve(shared, &file);
    tokio::spawn(lifecycle::run(shared.clone(), file, start, rx, receipt));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_read_from_a_refused_body_when_there_is_one() {
        assert_eq!(
            guess_task_id(r#"{"v":9,"id":"t-1","kind":"x"}"#).as_deref(),
            Some("t-1")
        );
        assert_eq!(guess_task_id("not json"), None);
        assert_eq!(guess_task_id(r#"{"id":3}"#), None);
    }
}
