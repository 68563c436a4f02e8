//! The control bus itself: an SNS topic, one event per `Publish` or up to ten per
//! `PublishBatch` (authorised by the same `sns:Publish` action).

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use lease_common::messages::Event;

use super::{PublishError, Publisher, Refused, type_names};
use crate::BoxFuture;

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

    fn type_attribute(&self, event: &Event) -> Result<MessageAttributeValue, PublishError> {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(event.type_name())
            .build()
            .map_err(|e| self.failed(std::slice::from_ref(event), e.to_string()))
    }

    fn failed(&self, events: &[Event], reason: String) -> PublishError {
        PublishError::Sns {
            events: type_names(events),
            topic: self.topic_arn.clone(),
            reason,
        }
    }
}

/// A batch entry's id: its index in the batch (ids must be unique within a call).
fn entry_id(i: usize) -> String {
    format!("e{i}")
}

/// The index an entry id names, if it is one of ours.
fn entry_index(id: &str) -> Option<usize> {
    id.strip_prefix('e')?.parse().ok()
}

impl Publisher for SnsPublisher {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.client
                .publish()
                .topic_arn(&self.topic_arn)
                .message(event.to_json())
                .message_attributes("type", self.type_attribute(event)?)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    self.failed(
                        std::slice::from_ref(event),
                        lease_common::sdk_error::render(&e),
                    )
                })
        })
    }

    fn publish_batch<'a>(
        &'a self,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<Vec<Result<(), Refused>>, PublishError>> {
        Box::pin(async move {
            if let [event] = events {
                return self.publish(event).await.map(|()| vec![Ok(())]);
            }
            let mut req = self.client.publish_batch().topic_arn(&self.topic_arn);
            for (i, event) in events.iter().enumerate() {
                let entry = PublishBatchRequestEntry::builder()
                    .id(entry_id(i))
                    .message(event.to_json())
                    .message_attributes("type", self.type_attribute(event)?)
                    .build()
                    .map_err(|e| self.failed(&events[i..=i], e.to_string()))?;
                req = req.publish_batch_request_entries(entry);
            }
            let out = req
                .send()
                .await
                .map_err(|e| self.failed(events, lease_common::sdk_error::render(&e)))?;
            // An entry the answer does not mention is sent again.
            let mut outcomes = vec![
                Err(Refused {
                    reason: "not in SNS's answer".into(),
                    permanent: false,
                });
                events.len()
            ];
            for ok in out.successful() {
                if let Some(o) = ok
                    .id()
                    .and_then(entry_index)
                    .and_then(|i| outcomes.get_mut(i))
                {
                    *o = Ok(());
                }
            }
            for f in out.failed() {
                if let Some(o) = entry_index(f.id()).and_then(|i| outcomes.get_mut(i)) {
                    *o = Err(Refused {
                        reason: format!("{}: {}", f.code(), f.message().unwrap_or("refused")),
                        permanent: f.sender_fault(),
                    });
                }
            }
            Ok(outcomes)
        })
    }
}
