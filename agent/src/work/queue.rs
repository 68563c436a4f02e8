//! The task queue (SQS) behind the one small trait the worker uses, and its
//! dead-letter queue, found from the source queue's redrive policy.

use std::fmt::Debug;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use lease_common::sdk_error;
use tokio::sync::OnceCell;

use crate::BoxFuture;

/// SQS answers at most ten messages per receive.
pub const MAX_RECEIVE: u32 = 10;
/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY_SECS: i32 = 43_200;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("Failed to receive from queue '{queue}': {reason}")]
    Receive { queue: String, reason: String },
    #[error("Failed to delete message for task '{task}' from queue '{queue}': {reason}")]
    Delete {
        task: String,
        queue: String,
        reason: String,
    },
    #[error("Failed to change the visibility of the message for task '{task}': {reason}")]
    Visibility { task: String, reason: String },
    #[error("Failed to send the message for task '{task}' to queue '{queue}': {reason}")]
    Send {
        task: String,
        queue: String,
        reason: String,
    },
    #[error("Failed to find the dead-letter queue of '{queue}': {reason}")]
    DeadLetterQueue { queue: String, reason: String },
}

/// One message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// How many times SQS has handed this message out, this time included.
    pub receive_count: u32,
}

/// What the worker does with its queue. `task` arguments only name the task in errors.
pub trait TaskQueue: Send + Sync + Debug {
    /// Up to `max` messages, waiting at most `wait` for the first; each is hidden for
    /// `visibility` from the receive on (so a task needs no call of its own to hide
    /// its message before its first extension).
    fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, QueueError>>;
    fn delete<'a>(
        &'a self,
        task: &'a str,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
    fn change_visibility<'a>(
        &'a self,
        task: &'a str,
        receipt: &'a str,
        secs: i32,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
    fn send<'a>(&'a self, task: &'a str, body: &'a str) -> BoxFuture<'a, Result<(), QueueError>>;
    /// Sends `body` to the dead-letter queue with a `reason` attribute. `Ok(false)`: the
    /// queue has no dead-letter queue.
    fn dead_letter<'a>(
        &'a self,
        task: &'a str,
        body: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, QueueError>>;
}

#[derive(Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// The dead-letter queue's URL (`None`: the queue has none), looked up once.
    dlq: OnceCell<Option<String>>,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self {
            client,
            url,
            dlq: OnceCell::new(),
        }
    }

    async fn dlq_url(&self) -> Result<Option<String>, QueueError> {
        self.dlq
            .get_or_try_init(|| async {
                let err = |reason: String| QueueError::DeadLetterQueue {
                    queue: self.url.clone(),
                    reason,
                };
                let out = self
                    .client
                    .get_queue_attributes()
                    .queue_url(&self.url)
                    .attribute_names(QueueAttributeName::RedrivePolicy)
                    .send()
                    .await
                    .map_err(|e| err(sdk_error::render(&e)))?;
                let Some(policy) = out
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
                else {
                    return Ok(None);
                };
                let arn = dead_letter_arn(policy).map_err(err)?;
                let (account, name) = arn_account_and_name(&arn)
                    .ok_or_else(|| err(format!("'{arn}' is not an SQS queue ARN")))?;
                let url = self
                    .client
                    .get_queue_url()
                    .queue_name(name)
                    .queue_owner_aws_account_id(account)
                    .send()
                    .await
                    .map_err(|e| err(sdk_error::render(&e)))?
                    .queue_url()
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("no URL for '{arn}'")))?;
                Ok(Some(url))
            })
            .await
            .cloned()
    }
}

/// `deadLetterTargetArn` of a redrive policy (JSON).
pub fn dead_letter_arn(policy: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(policy)
        .map_err(|e| format!("its RedrivePolicy is not JSON ({e}): {policy}"))?;
    v.get("deadLetterTargetArn")
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("its RedrivePolicy names no deadLetterTargetArn: {policy}"))
}

/// `arn:aws:sqs:<region>:<account>:<name>` → (account, name).
pub fn arn_account_and_name(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", _, account, name] if !name.is_empty() => Some((account, name)),
        _ => None,
    }
}

impl TaskQueue for SqsQueue {
    fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        Box::pin(async move {
            let visibility = i32::try_from(visibility.as_secs())
                .unwrap_or(MAX_VISIBILITY_SECS)
                .min(MAX_VISIBILITY_SECS);
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::try_from(max.clamp(1, MAX_RECEIVE)).unwrap_or(1))
                .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
                .visibility_timeout(visibility)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| QueueError::Receive {
                    queue: self.url.clone(),
                    reason: sdk_error::render(&e),
                })?;
            Ok(out
                .messages()
                .iter()
                .filter_map(|m| {
                    Some(Received {
                        message_id: m.message_id()?.to_string(),
                        receipt: m.receipt_handle()?.to_string(),
                        body: m.body().unwrap_or_default().to_string(),
                        receive_count: m
                            .attributes()
                            .and_then(|a| {
                                a.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                            })
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(1),
                    })
                })
                .collect())
        })
    }

    fn delete<'a>(
        &'a self,
        task: &'a str,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| QueueError::Delete {
                    task: task.to_string(),
                    queue: self.url.clone(),
                    reason: sdk_error::render(&e),
                })
        })
    }

    fn change_visibility<'a>(
        &'a self,
        task: &'a str,
        receipt: &'a str,
        secs: i32,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .visibility_timeout(secs.clamp(0, MAX_VISIBILITY_SECS))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| QueueError::Visibility {
                    task: task.to_string(),
                    reason: sdk_error::render(&e),
                })
        })
    }

    fn send<'a>(&'a self, task: &'a str, body: &'a str) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| QueueError::Send {
                    task: task.to_string(),
                    queue: self.url.clone(),
                    reason: sdk_error::render(&e),
                })
        })
    }

    fn dead_letter<'a>(
        &'a self,
        task: &'a str,
        body: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let Some(url) = self.dlq_url().await? else {
                return Ok(false);
            };
            let err = |reason: String| QueueError::Send {
                task: task.to_string(),
                queue: url.clone(),
                reason,
            };
            let attr = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(reason)
                .build()
                .map_err(|e| err(e.to_string()))?;
            self.client
                .send_message()
                .queue_url(&url)
                .message_body(body)
                .message_attributes("reason", attr)
                .send()
                .await
                .map_err(|e| err(sdk_error::render(&e)))?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_queue_is_read_from_the_redrive_policy() {
        let arn = dead_letter_arn(
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:lease-main-dlq-default","maxReceiveCount":"5"}"#,
        )
        .unwrap();
        assert_eq!(
            arn_account_and_name(&arn),
            Some(("123456789012", "lease-main-dlq-default"))
        );
        assert!(
            dead_letter_arn("{}")
                .unwrap_err()
                .contains("deadLetterTargetArn")
        );
        assert!(dead_letter_arn("nope").unwrap_err().contains("not JSON"));
        assert_eq!(arn_account_and_name("arn:aws:sns:us-east-1:1:x"), None);
    }
}
