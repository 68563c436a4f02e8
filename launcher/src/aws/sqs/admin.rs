//! SQS as setup and teardown use it: the stack's queues, created with their
//! attributes and tag, corrected, listed by prefix and deleted. A second trait
//! beside the everyday one of [`super`], with its own SDK implementation.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::StackTag;
use crate::error::{Error, Result};

/// Attribute name to value, as SQS takes them.
pub type Attributes = BTreeMap<String, String>;

pub trait QueueAdmin: Sync {
    /// `None` when there is no such queue.
    fn queue_url(&self, name: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Returns the new queue's URL.
    fn create_queue(
        &self,
        name: &str,
        attributes: &Attributes,
        tag: &StackTag,
    ) -> impl Future<Output = Result<String>> + Send;
    fn queue_attributes(
        &self,
        name: &str,
        url: &str,
    ) -> impl Future<Output = Result<Attributes>> + Send;
    fn set_queue_attributes(
        &self,
        name: &str,
        url: &str,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<()>> + Send;
    fn queue_tags(
        &self,
        name: &str,
        url: &str,
    ) -> impl Future<Output = Result<HashMap<String, String>>> + Send;
    fn tag_queue(
        &self,
        name: &str,
        url: &str,
        tag: &StackTag,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The URLs of every queue whose name starts with `prefix`.
    fn queues_named(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// `false` when there was nothing to delete.
    fn delete_queue(&self, name: &str, url: &str) -> impl Future<Output = Result<bool>> + Send;
}

fn sdk(attrs: &Attributes) -> HashMap<QueueAttributeName, String> {
    attrs
        .iter()
        .map(|(k, v)| (QueueAttributeName::from(k.as_str()), v.clone()))
        .collect()
}

impl QueueAdmin for Client {
    async fn queue_url(&self, name: &str) -> Result<Option<String>> {
        match self.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_string)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::aws(format!("Failed to look up queue '{name}'"), e)),
        }
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: &Attributes,
        tag: &StackTag,
    ) -> Result<String> {
        let out = self
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(sdk(attributes)))
            .tags(&tag.0, &tag.1)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create queue '{name}'"), e))?;
        out.queue_url()
            .map(str::to_string)
            .ok_or_else(|| Error::Aws {
                what: format!("Queue '{name}'"),
                message: "created, but SQS returned no URL".into(),
            })
    }

    async fn queue_attributes(&self, name: &str, url: &str) -> Result<Attributes> {
        let out = self
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read queue '{name}'"), e))?;
        Ok(out
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_queue_attributes(
        &self,
        name: &str,
        url: &str,
        attributes: &Attributes,
    ) -> Result<()> {
        self.set_queue_attributes()
            .queue_url(url)
            .set_attributes(Some(sdk(attributes)))
            .send()
            .await
            .map_err(|e| {
                let names: Vec<&str> = attributes.keys().map(String::as_str).collect();
                Error::aws(
                    format!("Failed to set {} on queue '{name}'", names.join(", ")),
                    e,
                )
            })?;
        Ok(())
    }

    async fn queue_tags(&self, name: &str, url: &str) -> Result<HashMap<String, String>> {
        let out = self
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read the tags of queue '{name}'"), e))?;
        Ok(out.tags().cloned().unwrap_or_default())
    }

    async fn tag_queue(&self, name: &str, url: &str, tag: &StackTag) -> Result<()> {
        self.tag_queue()
            .queue_url(url)
            .tags(&tag.0, &tag.1)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag queue '{name}'"), e))?;
        Ok(())
    }

    async fn queues_named(&self, prefix: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .list_queues()
                .queue_name_prefix(prefix)
                .set_next_token(token)
                .max_results(1000)
                .send()
                .await
                .map_err(|e| Error::aws(format!("Failed to list queues named '{prefix}*'"), e))?;
            found.extend(out.queue_urls().iter().cloned());
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(found);
            }
        }
    }

    async fn delete_queue(&self, name: &str, url: &str) -> Result<bool> {
        match self.delete_queue().queue_url(url).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(format!("Failed to delete queue '{name}'"), e)),
        }
    }
}
