//! SNS, as setup and teardown use it: the stack's topics, tagged, and the queues'
//! subscriptions to them.

use std::collections::HashMap;

use aws_sdk_sns::Client;
use aws_sdk_sns::types::Tag;

use super::StackTag;
use crate::error::{Error, Result};

/// One subscription of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `PendingConfirmation` (not an ARN) until the endpoint confirms.
    pub arn: String,
    pub protocol: String,
    pub endpoint: String,
}

fn name_of(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

pub trait Topics: Sync {
    fn topic_exists(&self, arn: &str) -> impl Future<Output = Result<bool>> + Send;
    fn topic_tags(&self, arn: &str) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// Returns the ARN SNS gave the topic.
    fn create_topic(
        &self,
        name: &str,
        tag: &StackTag,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn tag_topic(&self, arn: &str, tag: &StackTag) -> impl Future<Output = Result<()>> + Send;
    fn delete_topic(&self, arn: &str) -> impl Future<Output = Result<()>> + Send;
    fn subscriptions(&self, topic: &str) -> impl Future<Output = Result<Vec<Subscription>>> + Send;
    /// Subscribes an SQS queue with these subscription attributes.
    fn subscribe_queue(
        &self,
        topic: &str,
        queue_arn: &str,
        attributes: &[(&str, &str)],
    ) -> impl Future<Output = Result<()>> + Send;
    fn subscription_attributes(
        &self,
        arn: &str,
    ) -> impl Future<Output = Result<HashMap<String, String>>> + Send;
    fn set_subscription_attribute(
        &self,
        arn: &str,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn unsubscribe(&self, arn: &str) -> impl Future<Output = Result<()>> + Send;
}

fn sns_tag(tag: &StackTag) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| Error::usage(format!("tag {}: {e}", tag.0)))
}

impl Topics for Client {
    async fn topic_exists(&self, arn: &str) -> Result<bool> {
        match self.get_topic_attributes().topic_arn(arn).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to read topic '{}'", name_of(arn)),
                e,
            )),
        }
    }

    async fn topic_tags(&self, arn: &str) -> Result<Vec<(String, String)>> {
        let out = self
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to read the tags of topic '{}'", name_of(arn)),
                    e,
                )
            })?;
        Ok(out
            .tags()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn create_topic(&self, name: &str, tag: &StackTag) -> Result<Option<String>> {
        let out = self
            .create_topic()
            .name(name)
            .tags(sns_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create topic '{name}'"), e))?;
        Ok(out.topic_arn().map(str::to_string))
    }

    async fn tag_topic(&self, arn: &str, tag: &StackTag) -> Result<()> {
        self.tag_resource()
            .resource_arn(arn)
            .tags(sns_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag topic '{}'", name_of(arn)), e))?;
        Ok(())
    }

    async fn delete_topic(&self, arn: &str) -> Result<()> {
        self.delete_topic()
            .topic_arn(arn)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to delete topic '{}'", name_of(arn)), e))?;
        Ok(())
    }

    async fn subscriptions(&self, topic: &str) -> Result<Vec<Subscription>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .list_subscriptions_by_topic()
                .topic_arn(topic)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    Error::aws(
                        format!(
                            "Failed to list the subscriptions of topic '{}'",
                            name_of(topic)
                        ),
                        e,
                    )
                })?;
            all.extend(out.subscriptions().iter().map(|s| Subscription {
                arn: s.subscription_arn().unwrap_or_default().to_string(),
                protocol: s.protocol().unwrap_or_default().to_string(),
                endpoint: s.endpoint().unwrap_or_default().to_string(),
            }));
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(all);
            }
        }
    }

    async fn subscribe_queue(
        &self,
        topic: &str,
        queue_arn: &str,
        attributes: &[(&str, &str)],
    ) -> Result<()> {
        let mut req = self
            .subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(queue_arn)
            .return_subscription_arn(true);
        for (k, v) in attributes {
            req = req.attributes(*k, *v);
        }
        req.send().await.map_err(|e| {
            Error::aws(
                format!(
                    "Failed to create the subscription of queue '{}' to topic '{}'",
                    name_of(queue_arn),
                    name_of(topic)
                ),
                e,
            )
        })?;
        Ok(())
    }

    async fn subscription_attributes(&self, arn: &str) -> Result<HashMap<String, String>> {
        let out = self
            .get_subscription_attributes()
            .subscription_arn(arn)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read subscription '{arn}'"), e))?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }

    async fn set_subscription_attribute(&self, arn: &str, name: &str, value: &str) -> Result<()> {
        self.set_subscription_attributes()
            .subscription_arn(arn)
            .attribute_name(name)
            .attribute_value(value)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to set {name} on subscription '{arn}'"), e))?;
        Ok(())
    }

    async fn unsubscribe(&self, arn: &str) -> Result<()> {
        self.unsubscribe()
            .subscription_arn(arn)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to delete subscription '{arn}'"), e))?;
        Ok(())
    }
}
