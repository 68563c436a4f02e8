//! Events on the SNS control bus. Publishing is best effort with retries: a failed
//! publish is logged and never stops enforcement, and no caller waits on the network
//! longer than it chooses to.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sns::types::MessageAttributeValue;
use lease_common::messages::{Event, EventKind};

use crate::BoxFuture;
use crate::clock::Clock;

/// Attempts per event before it is given up (logged as an error).
pub const PUBLISH_ATTEMPTS: u32 = 5;
/// First pause between attempts; doubles each time (0.2 + 0.4 + 0.8 + 1.6 s).
pub const PUBLISH_BACKOFF: Duration = Duration::from_millis(200);
/// One attempt's hard limit, so a hung connection cannot hold an event for minutes.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Failed to publish {event} to topic '{topic}': {reason}")]
    Sns {
        event: &'static str,
        topic: String,
        reason: String,
    },
    #[error("Publishing {event} timed out after {timeout:?}")]
    Timeout {
        event: &'static str,
        timeout: Duration,
    },
}

pub trait Publisher: Send + Sync + Debug {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// Publishes to an SNS topic, with the event type as the `type` message attribute so
/// subscribers can filter (`{"type": ["SpotInterruption"]}`).
#[derive(Debug, Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { client, topic_arn }
    }
}

impl Publisher for SnsPublisher {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let type_name = event.type_name();
            let attr = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(type_name)
                .build()
                .map_err(|e| PublishError::Sns {
                    event: type_name,
                    topic: self.topic_arn.clone(),
                    reason: e.to_string(),
                })?;
            self.client
                .publish()
                .topic_arn(&self.topic_arn)
                .message(event.to_json())
                .message_attributes("type", attr)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| PublishError::Sns {
                    event: type_name,
                    topic: self.topic_arn.clone(),
                    reason: aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                })
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

/// Publishes with retries and backoff; returns whether it got through. Never panics,
/// never returns an error: the caller's duty ends at trying.
pub async fn publish_with_retry(publisher: &dyn Publisher, event: &Event) -> bool {
    let mut pause = PUBLISH_BACKOFF;
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let result = match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(event)).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout {
                event: event.type_name(),
                timeout: PUBLISH_TIMEOUT,
            }),
        };
        match result {
            Ok(()) => {
                tracing::debug!(event = event.type_name(), attempt, "published");
                return true;
            }
            Err(e) if attempt < PUBLISH_ATTEMPTS => {
                tracing::warn!(attempt, "{e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => tracing::error!("{e}; giving up after {PUBLISH_ATTEMPTS} attempts"),
        }
    }
    false
}

/// Builds events stamped with this node's identity and the clock's time.
#[derive(Debug, Clone)]
pub struct Emitter {
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    node_id: String,
    instance_id: String,
}

impl Emitter {
    pub fn new(
        publisher: Arc<dyn Publisher>,
        clock: Arc<dyn Clock>,
        node_id: String,
        instance_id: String,
    ) -> Self {
        Self {
            publisher,
            clock,
            node_id,
            instance_id,
        }
    }

    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.publisher
    }

    pub fn event(&self, kind: EventKind) -> Event {
        Event::new(
            self.node_id.clone(),
            self.instance_id.clone(),
            self.clock.now(),
            kind,
        )
    }

    /// Publishes in the background, with retries; the returned handle says whether it
    /// got through, for the few callers that wait a bounded time for it.
    pub fn send(&self, kind: EventKind) -> tokio::task::JoinHandle<bool> {
        let event = self.event(kind);
        let publisher = self.publisher.clone();
        tokio::spawn(async move { publish_with_retry(publisher.as_ref(), &event).await })
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
                            event: event.type_name(),
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

    #[tokio::test(start_paused = true)]
    async fn a_failed_publish_is_retried_then_delivered() {
        let p = RecordingPublisher::default();
        *p.fail_next.lock().unwrap() = 2;
        let e = Event::new(
            "n",
            "i-1",
            chrono::Utc::now(),
            EventKind::NodeDeregistered { reason: "x".into() },
        );
        assert!(publish_with_retry(&p, &e).await);
        assert_eq!(p.types(), vec!["NodeDeregistered"]);
        *p.fail_next.lock().unwrap() = 99;
        assert!(!publish_with_retry(&p, &e).await);
    }
}
