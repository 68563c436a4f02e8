//! The batcher between the [`super::Emitter`] and the topic. Events sent within
//! [`BATCH_LINGER`] of the first one waiting share one call (at most [`MAX_BATCH`]
//! events and [`MAX_BATCH_BYTES`]): a busy node sends its task events in a few calls
//! instead of three or more per task. An event that says the machine is going away
//! does not wait: it leaves at once with whatever is already queued. Up to
//! [`MAX_IN_FLIGHT`] calls run at once, so a batch that is slow or retrying never holds
//! up the next one.

use std::sync::Arc;
use std::time::Duration;

use lease_common::messages::{Event, EventKind};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    PUBLISH_ATTEMPTS, PUBLISH_BACKOFF, PUBLISH_TIMEOUT, PublishError, Publisher, type_names,
};

/// SNS takes at most ten messages per `PublishBatch`.
pub const MAX_BATCH: usize = 10;
/// SNS's limit on a batch's messages and attributes together is 256 KiB; a margin is
/// kept for the attribute's encoding. One event larger than this still goes alone.
pub const MAX_BATCH_BYTES: usize = 248 * 1024;
/// How long the first event of a batch waits for company. Small beside every deadline
/// an event serves (a spot notice's two minutes, the second between a deadline and the
/// terminate) and long enough to gather what one moment of work produces.
pub const BATCH_LINGER: Duration = Duration::from_millis(20);
/// Batches on their way at once.
const MAX_IN_FLIGHT: usize = 4;

/// An event waiting to be published, and who wants to know how it went.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) event: Event,
    pub(super) done: oneshot::Sender<bool>,
}

/// Events whose subscribers (or the agent, before it acts) should not wait even the
/// linger: the machine is about to go.
fn urgent(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::SpotInterruption { .. }
            | EventKind::LeaseExpired { .. }
            | EventKind::IdleShutdown { .. }
            | EventKind::NodeDeregistered { .. }
    )
}

/// What an event weighs against [`MAX_BATCH_BYTES`]: its body and its `type` attribute.
fn weight(event: &Event) -> usize {
    event.to_json().len() + "type".len() + "String".len() + event.type_name().len()
}

/// Gathers and sends batches until every emitter is gone and the channel is empty.
pub(super) async fn run(
    publisher: Arc<dyn Publisher>,
    mut events: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match events.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Events that arrive while every slot is busy join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = weight(&first.event);
        let mut hurry = urgent(&first.event);
        let mut batch = vec![first];
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            let next = if hurry {
                events.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    p = events.recv() => p,
                    () = &mut linger => None,
                }
            };
            let Some(p) = next else { break };
            hurry |= urgent(&p.event);
            let w = weight(&p.event);
            if bytes + w > MAX_BATCH_BYTES {
                carried = Some(p);
                break;
            }
            bytes += w;
            batch.push(p);
        }
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publish_with_retry(publisher.as_ref(), batch).await;
            drop(slot);
        });
    }
}

/// Publishes `batch`, sending again what failed for a reason that may pass, with
/// backoff, and tells each event's sender whether it got through. Never panics,
/// never returns an error: the caller's duty ends at trying.
pub(super) async fn publish_with_retry(publisher: &dyn Publisher, batch: Vec<Pending>) {
    let (mut events, mut dones): (Vec<Event>, Vec<oneshot::Sender<bool>>) =
        batch.into_iter().map(|p| (p.event, p.done)).unzip();
    let mut pause = PUBLISH_BACKOFF;
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let last = attempt == PUBLISH_ATTEMPTS;
        let answer = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish_batch(&events))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::Timeout {
                    events: type_names(&events),
                    timeout: PUBLISH_TIMEOUT,
                })
            });
        let outcomes = match answer {
            Ok(outcomes) => outcomes,
            Err(e) => {
                if last {
                    tracing::error!("{e}; giving up after {PUBLISH_ATTEMPTS} attempts");
                } else {
                    tracing::warn!(attempt, "{e}; retrying in {pause:?}");
                }
                Vec::new()
            }
        };
        let mut outcomes = outcomes.into_iter();
        let (mut again, mut again_done) = (Vec::new(), Vec::new());
        for (event, done) in events.into_iter().zip(dones) {
            match outcomes.next() {
                Some(Ok(())) => {
                    tracing::debug!(event = event.type_name(), attempt, "published");
                    let _ = done.send(true);
                }
                Some(Err(refused)) if refused.permanent || last => {
                    tracing::error!(
                        "SNS refused {} after {attempt} attempt(s): {}",
                        event.type_name(),
                        refused.reason
                    );
                    let _ = done.send(false);
                }
                Some(Err(refused)) => {
                    tracing::warn!(
                        attempt,
                        "SNS refused {}: {}",
                        event.type_name(),
                        refused.reason
                    );
                    again.push(event);
                    again_done.push(done);
                }
                // The whole call failed: already logged above.
                None if last => {
                    let _ = done.send(false);
                }
                None => {
                    again.push(event);
                    again_done.push(done);
                }
            }
        }
        if again.is_empty() {
            return;
        }
        (events, dones) = (again, again_done);
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use crate::events::Refused;
    use crate::events::fake::RecordingPublisher;
    use lease_common::messages::EventKind;
    use std::sync::Mutex;

    /// A task's output line: an event that may wait for company.
    fn event(line: &str) -> Event {
        Event::new(
            "n",
            "i-1",
            chrono::Utc::now(),
            EventKind::TaskOutput {
                task_id: "t".into(),
                seq: 0,
                lines: vec![line.into()],
            },
        )
    }

    fn pending(line: &str) -> (Pending, oneshot::Receiver<bool>) {
        let (done, rx) = oneshot::channel();
        (
            Pending {
                event: event(line),
                done,
            },
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_publish_is_retried_then_delivered_or_given_up() {
        let p = RecordingPublisher::default();
        *p.fail_next.lock().unwrap() = 2;
        let (a, a_rx) = pending("a");
        publish_with_retry(&p, vec![a]).await;
        assert_eq!(a_rx.await, Ok(true));
        assert_eq!(p.types(), vec!["TaskOutput"]);
        *p.fail_next.lock().unwrap() = 99;
        let (b, b_rx) = pending("b");
        publish_with_retry(&p, vec![b]).await;
        assert_eq!(b_rx.await, Ok(false));
    }

    /// Answers each batch call as scripted: the outcome of every entry, by its reason.
    #[derive(Debug, Default)]
    struct Scripted {
        calls: Mutex<Vec<Vec<String>>>,
        /// Reasons refused once, retryably; and refused always, permanently.
        flaky: Mutex<Vec<String>>,
        bad: Vec<String>,
    }

    fn reason(e: &Event) -> String {
        match &e.kind {
            EventKind::TaskOutput { lines, .. } => lines.concat(),
            other => other.type_name().to_string(),
        }
    }

    impl Publisher for Scripted {
        fn publish<'a>(&'a self, _e: &'a Event) -> BoxFuture<'a, Result<(), PublishError>> {
            unreachable!("batches only")
        }
        fn publish_batch<'a>(
            &'a self,
            events: &'a [Event],
        ) -> BoxFuture<'a, Result<Vec<Result<(), Refused>>, PublishError>> {
            let names: Vec<String> = events.iter().map(reason).collect();
            self.calls.lock().unwrap().push(names.clone());
            let mut flaky = self.flaky.lock().unwrap();
            let outcomes = names
                .iter()
                .map(|n| {
                    if self.bad.contains(n) {
                        Err(Refused {
                            reason: "InvalidParameter".into(),
                            permanent: true,
                        })
                    } else if let Some(i) = flaky.iter().position(|f| f == n) {
                        flaky.remove(i);
                        Err(Refused {
                            reason: "InternalError".into(),
                            permanent: false,
                        })
                    } else {
                        Ok(())
                    }
                })
                .collect();
            Box::pin(async move { Ok(outcomes) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_refused_entries_are_sent_again_and_a_sender_fault_never() {
        let p = Scripted {
            flaky: Mutex::new(vec!["b".into()]),
            bad: vec!["c".into()],
            ..Scripted::default()
        };
        let (batch, rxs): (Vec<_>, Vec<_>) = ["a", "b", "c"].map(pending).into_iter().unzip();
        publish_with_retry(&p, batch).await;
        let mut got = Vec::new();
        for rx in rxs {
            got.push(rx.await.unwrap());
        }
        assert_eq!(got, vec![true, true, false]);
        assert_eq!(
            *p.calls.lock().unwrap(),
            vec![vec!["a", "b", "c"], vec!["b"]]
        );
    }

    /// A batcher over a [`Scripted`] publisher, and the channel into it.
    fn batcher() -> (Arc<Scripted>, mpsc::UnboundedSender<Pending>) {
        let p = Arc::new(Scripted::default());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(p.clone(), rx));
        (p, tx)
    }

    /// Sends one output event per line at once, waits until every one got through,
    /// and returns the size of each call the publisher saw.
    async fn publish_all(
        p: &Scripted,
        tx: &mpsc::UnboundedSender<Pending>,
        lines: impl Iterator<Item = String>,
    ) -> Vec<usize> {
        let mut waits = Vec::new();
        for line in lines {
            let (pending, done) = pending(&line);
            tx.send(pending).unwrap();
            waits.push(done);
        }
        for w in waits {
            assert_eq!(w.await, Ok(true));
        }
        p.calls.lock().unwrap().iter().map(Vec::len).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn events_sent_together_share_a_call_and_a_lone_one_waits_only_the_linger() {
        let (p, tx) = batcher();
        let sizes = publish_all(&p, &tx, (0..13).map(|i| format!("t{i}"))).await;
        assert_eq!(sizes, vec![10, 3]);
        let started = tokio::time::Instant::now();
        let (lone, done) = pending("lone");
        tx.send(lone).unwrap();
        assert_eq!(done.await, Ok(true));
        assert_eq!(started.elapsed(), BATCH_LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_of_the_machine_going_away_leaves_at_once_with_what_is_queued() {
        let (p, tx) = batcher();
        let started = tokio::time::Instant::now();
        let (output, _) = pending("last words");
        let (done, gone) = oneshot::channel();
        let leaving = Pending {
            event: Event::new(
                "n",
                "i-1",
                chrono::Utc::now(),
                EventKind::SpotInterruption {
                    action: "terminate".into(),
                    time: chrono::Utc::now(),
                },
            ),
            done,
        };
        tx.send(output).unwrap();
        tx.send(leaving).unwrap();
        assert_eq!(gone.await, Ok(true));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            *p.calls.lock().unwrap(),
            vec![vec!["last words", "SpotInterruption"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_stays_under_the_size_limit() {
        let (p, tx) = batcher();
        let big = "x".repeat(100 * 1024);
        let sizes = publish_all(&p, &tx, (0..5).map(|i| format!("{i}{big}"))).await;
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
