//! The work queue (and the stack's command topic that feeds it), behind a trait shaped
//! around what `lease submit` and `lease stats` do with them.

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_types::SdkConfig;

use crate::error::{Error, Result};

/// The admin calls setup and teardown make on the stack's queues.
mod admin;
pub use admin::{Attributes, QueueAdmin};

/// A message to send: the task id (also the batch entry id) and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub id: String,
    pub body: String,
    pub pool: Option<String>,
}

/// Approximate counts, as SQS reports them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

pub trait TaskQueue: Sync {
    /// Sends up to 10 messages in one call; each id maps to `Ok(message id)` or the
    /// reason SQS gave for refusing it.
    fn send_batch(
        &self,
        queue_url: &str,
        batch: &[Outgoing],
    ) -> impl Future<Output = Result<Vec<(String, std::result::Result<String, String>)>>> + Send;
    /// Publishes up to 10 messages to an SNS topic in one call, with the `pool`
    /// attribute the topic's subscriptions filter on; results as for `send_batch`.
    fn publish_batch(
        &self,
        topic_arn: &str,
        batch: &[Outgoing],
    ) -> impl Future<Output = Result<Vec<(String, std::result::Result<String, String>)>>> + Send;
    fn counts(&self, queue_url: &str) -> impl Future<Output = Result<QueueCounts>> + Send;
    /// The dead-letter queue named by the queue's redrive policy, if any.
    fn dead_letter_url(
        &self,
        queue_url: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}

#[derive(Debug, Clone)]
pub struct AwsQueue {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
}

impl AwsQueue {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
        }
    }
}

fn count(
    attrs: Option<&std::collections::HashMap<QueueAttributeName, String>>,
    name: QueueAttributeName,
) -> u64 {
    attrs
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One outcome per entry of a batch call (SQS SendMessageBatch and SNS PublishBatch
/// answer alike): the message id, or the service's code and reason.
fn batch_outcomes<'a>(
    sent: impl Iterator<Item = (&'a str, &'a str)>,
    failed: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> Vec<(String, std::result::Result<String, String>)> {
    sent.map(|(id, message_id)| (id.to_string(), Ok(message_id.to_string())))
        .chain(failed.map(|(id, code, message)| {
            (
                id.to_string(),
                Err(format!("{code}: {}", message.unwrap_or("refused"))),
            )
        }))
        .collect()
}

impl TaskQueue for AwsQueue {
    async fn send_batch(
        &self,
        queue_url: &str,
        batch: &[Outgoing],
    ) -> Result<Vec<(String, std::result::Result<String, String>)>> {
        let mut entries = Vec::with_capacity(batch.len());
        for m in batch {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(&m.id)
                .message_body(&m.body);
            if let Some(pool) = &m.pool {
                e = e.message_attributes(
                    "pool",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(pool)
                        .build()
                        .map_err(|e| Error::usage(format!("--pool '{pool}': {e}")))?,
                );
            }
            entries.push(
                e.build()
                    .map_err(|e| Error::usage(format!("task '{}': {e}", m.id)))?,
            );
        }
        let out = self
            .sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to send tasks to queue '{queue_url}'"), e))?;
        Ok(batch_outcomes(
            out.successful().iter().map(|s| (s.id(), s.message_id())),
            out.failed().iter().map(|f| (f.id(), f.code(), f.message())),
        ))
    }

    async fn publish_batch(
        &self,
        topic_arn: &str,
        batch: &[Outgoing],
    ) -> Result<Vec<(String, std::result::Result<String, String>)>> {
        use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
        let mut entries = Vec::with_capacity(batch.len());
        for m in batch {
            let mut e = PublishBatchRequestEntry::builder()
                .id(&m.id)
                .message(&m.body);
            if let Some(pool) = &m.pool {
                e = e.message_attributes(
                    "pool",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(pool)
                        .build()
                        .map_err(|e| Error::usage(format!("--pool '{pool}': {e}")))?,
                );
            }
            entries.push(
                e.build()
                    .map_err(|e| Error::usage(format!("task '{}': {e}", m.id)))?,
            );
        }
        let out = self
            .sns
            .publish_batch()
            .topic_arn(topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                Error::aws(format!("Failed to publish tasks to topic '{topic_arn}'"), e)
            })?;
        Ok(batch_outcomes(
            out.successful().iter().map(|s| {
                (
                    s.id().unwrap_or_default(),
                    s.message_id().unwrap_or_default(),
                )
            }),
            out.failed().iter().map(|f| (f.id(), f.code(), f.message())),
        ))
    }

    async fn counts(&self, queue_url: &str) -> Result<QueueCounts> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read queue '{queue_url}'"), e))?;
        let attrs = out.attributes();
        Ok(QueueCounts {
            visible: count(attrs, QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(
                attrs,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            delayed: count(
                attrs,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ),
        })
    }

    async fn dead_letter_url(&self, queue_url: &str) -> Result<Option<String>> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read queue '{queue_url}'"), e))?;
        let Some(policy) = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        let arn = serde_json::from_str::<serde_json::Value>(policy)
            .ok()
            .and_then(|v| v["deadLetterTargetArn"].as_str().map(str::to_string))
            .ok_or_else(|| Error::Aws {
                what: format!("Queue '{queue_url}'"),
                message: format!("redrive policy without deadLetterTargetArn: {policy}"),
            })?;
        // arn:aws:sqs:region:account:name
        let mut parts = arn.rsplitn(2, ':');
        let name = parts.next().unwrap_or_default();
        let account = arn.split(':').nth(4).unwrap_or_default();
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to find dead-letter queue '{arn}'"), e))?;
        Ok(out.queue_url().map(str::to_string))
    }
}
