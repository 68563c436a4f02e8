//! Events on the SNS control bus. Publishing is best effort with retries: a failed
//! publish is logged and never stops enforcement, and no caller waits on the network
//! longer than it chooses to. Events go out in batches ([`batch`]): what is sent within
//! a few milliseconds of each other shares one call.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use lease_common::messages::{Event, EventKind};
use tokio::sync::{mpsc, oneshot};

use crate::BoxFuture;
use crate::clock::Clock;

mod batch;
mod sns;

pub use batch::{BATCH_LINGER, MAX_BATCH, MAX_BATCH_BYTES};
pub use sns::SnsPublisher;

/// Attempts per event before it is given up (logged as an error).
pub const PUBLISH_ATTEMPTS: u32 = 5;
/// First pause between attempts; doubles each time (0.2 + 0.4 + 0.8 + 1.6 s).
pub const PUBLISH_BACKOFF: Duration = Duration::from_millis(200);
/// One attempt's hard limit, so a hung connection cannot hold an event for minutes.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Failed to publish {events} to topic '{topic}': {reason}")]
    Sns {
        events: String,
        topic: String,
        reason: String,
    },
    #[error("Publishing {events} timed out after {timeout:?}")]
    Timeout { events: String, timeout: Duration },
}

/// `TaskStarted` or `TaskStarted, TaskOutput`: what a failed call was carrying.
pub fn type_names(events: &[Event]) -> String {
    events
        .iter()
        .map(Event::type_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why one event of a batch was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// The service blamed the request (SNS's `SenderFault`): sending it again cannot help.
    pub permanent: bool,
}

pub trait Publisher: Send + Sync + Debug {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Publishes up to [`MAX_BATCH`] events in one call; one outcome per event, in
    /// order. `Err`: the call itself failed and none was published. The default sends
    /// them one by one.
    fn publish_batch<'a>(
        &'a self,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<Vec<Result<(), Refused>>, PublishError>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(events.len());
            for e in events {
                outcomes.push(self.publish(e).await.map_err(|e| Refused {
                    reason: e.to_string(),
                    permanent: false,
                }));
            }
            Ok(outcomes)
        })
    }
}

/// Used when no topic is configured: events are only logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogPublisher;

impl Publisher for LogPublisher {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>> {
        tracing::info!(event = %event.to_json(), "event (no topic-arn configured, not published)");
        Box::pin(async { Ok(()) })
    }
}

/// Whether an event got through, for the few callers that wait a bounded time for it.
/// Resolves to `Ok(false)` when it was given up, `Err` if the agent is going away.
pub type Published = oneshot::Receiver<bool>;

/// Builds events stamped with this node's identity and the clock's time, and hands
/// them to the batcher.
#[derive(Debug, Clone)]
pub struct Emitter {
    clock: Arc<dyn Clock>,
    node_id: String,
    instance_id: String,
    to_batcher: mpsc::UnboundedSender<batch::Pending>,
}

impl Emitter {
    /// Starts the batcher that publishes through `publisher`; it runs until every
    /// clone of the emitter is gone. Needs a Tokio runtime.
    pub fn new(
        publisher: Arc<dyn Publisher>,
        clock: Arc<dyn Clock>,
        node_id: String,
        instance_id: String,
    ) -> Self {
        let (to_batcher, from_emitters) = mpsc::unbounded_channel();
        tokio::spawn(batch::run(publisher, from_emitters));
        Self {
            clock,
            node_id,
            instance_id,
            to_batcher,
        }
    }

    pub fn event(&self, kind: EventKind) -> Event {
        Event::new(
            self.node_id.clone(),
            self.instance_id.clone(),
            self.clock.now(),
            kind,
        )
    }

    /// Publishes in the background, with retries.
    pub fn send(&self, kind: EventKind) -> Published {
        let event = self.event(kind);
        let (done, published) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.to_batcher.send(batch::Pending { event, done })
        {
            // Only when the runtime is shutting down.
            tracing::warn!(
                "event {} not published: the agent is stopping",
                p.event.type_name()
            );
        }
        published
    }
}

#[cfg(test)]
pub mod fake {
    //! A publisher that records events and can be told to fail.
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct RecordingPublisher {
        pub events: Mutex<Vec<Event>>,
        pub fail_next: Mutex<u32>,
    }

    impl RecordingPublisher {
        pub fn types(&self) -> Vec<&'static str> {
            self.events
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.type_name())
                .collect()
        }
    }

    impl Publisher for RecordingPublisher {
        fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>> {
            Box::pin(async move {
                {
                    let mut fail = self.fail_next.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return Err(PublishError::Sns {
                            events: event.type_name().into(),
                            topic: "arn:aws:sns:us-east-1:123456789012:bus".into(),
                            reason: "injected failure".into(),
                        });
                    }
                }
                self.events.lock().unwrap().push(event.clone());
                Ok(())
            })
        }
    }
}
