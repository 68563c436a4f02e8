//! SQS: each pool's queue and dead-letter queue, and the events queue.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::stack::Stack;

use super::plan::{self, Attributes};
use super::{Outcome, not_ours};
use crate::error::{Error, Result};

fn sdk_attributes(attrs: &Attributes, names: &[String]) -> HashMap<QueueAttributeName, String> {
    names
        .iter()
        .filter_map(|n| {
            attrs
                .get(n)
                .map(|v| (QueueAttributeName::from(n.as_str()), v.clone()))
        })
        .collect()
}

async fn url_of(sqs: &Client, name: &str) -> Result<Option<String>> {
    match sqs.get_queue_url().queue_name(name).send().await {
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

async fn tags_of(sqs: &Client, name: &str, url: &str) -> Result<HashMap<String, String>> {
    let out = sqs
        .list_queue_tags()
        .queue_url(url)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to read the tags of queue '{name}'"), e))?;
    Ok(out.tags().cloned().unwrap_or_default())
}

/// The queue exists with these attributes and the stack's tag; returns its URL.
pub async fn ensure_queue(
    sqs: &Client,
    name: &str,
    attrs: &Attributes,
    tag: &(String, String),
) -> Result<(String, Outcome)> {
    let Some(url) = url_of(sqs, name).await? else {
        let names: Vec<String> = attrs.keys().cloned().collect();
        let out = sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(sdk_attributes(attrs, &names)))
            .tags(&tag.0, &tag.1)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create queue '{name}'"), e))?;
        let url = out.queue_url().ok_or_else(|| Error::Aws {
            what: format!("Queue '{name}'"),
            message: "created, but SQS returned no URL".into(),
        })?;
        return Ok((url.to_string(), Outcome::Created));
    };
    let out = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to read queue '{name}'"), e))?;
    let current: BTreeMap<String, String> = out
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let differ = plan::differing(&current, attrs);
    if !differ.is_empty() {
        tracing::info!("Queue '{name}': correcting {}", differ.join(", "));
        sqs.set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(sdk_attributes(attrs, &differ)))
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to set {} on queue '{name}'", differ.join(", ")),
                    e,
                )
            })?;
    }
    let untagged = tags_of(sqs, name, &url).await?.get(&tag.0) != Some(&tag.1);
    if untagged {
        sqs.tag_queue()
            .queue_url(&url)
            .tags(&tag.0, &tag.1)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag queue '{name}'"), e))?;
    }
    Ok((url, Outcome::of(false, !differ.is_empty() || untagged)))
}

/// Every queue of the stack, by name and URL: pools, dead letters and events — also
/// pools a settings file no longer lists.
pub async fn stack_queues(sqs: &Client, stack: &Stack) -> Result<Vec<(String, String)>> {
    let prefix = format!("{}-", stack.prefix());
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = sqs
            .list_queues()
            .queue_name_prefix(&prefix)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to list queues named '{prefix}*'"), e))?;
        for url in out.queue_urls() {
            let name = url.rsplit('/').next().unwrap_or(url).to_string();
            if is_stack_queue(stack, &name) {
                found.push((name, url.clone()));
            }
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    // Pools before their dead letters: a queue is never left redriving to nothing.
    found.sort_by_key(|(name, _)| (name.contains("-dlq-"), name.clone()));
    Ok(found)
}

/// Only the names setup gives queues: a stranger's `lease-main-foo` is not ours.
fn is_stack_queue(stack: &Stack, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("{}-", stack.prefix())) else {
        return false;
    };
    rest == "events"
        || ["pool-", "dlq-"].iter().any(|p| {
            rest.strip_prefix(p)
                .is_some_and(|pool| lease_common::stack::validate_pool(pool).is_ok())
        })
}

pub async fn remove_queue(
    sqs: &Client,
    url: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    let name = url.rsplit('/').next().unwrap_or(url);
    if tags_of(sqs, name, url).await?.get(&tag.0) != Some(&tag.1) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    match sqs.delete_queue().queue_url(url).send().await {
        Ok(_) => Ok((Outcome::Deleted, None)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_does_not_exist()) =>
        {
            Ok((Outcome::Absent, None))
        }
        Err(e) => Err(Error::aws(format!("Failed to delete queue '{name}'"), e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_setups_names_are_the_stacks_queues() {
        let s = Stack::new("main").unwrap();
        for ours in [
            "lease-main-events",
            "lease-main-pool-gpu",
            "lease-main-dlq-default",
        ] {
            assert!(is_stack_queue(&s, ours), "{ours}");
        }
        for theirs in [
            "lease-main-other",
            "lease-mainx-pool-gpu",
            "lease-main-pool-",
            "lease-main-pool-GPU",
            "lease-main-events-2",
        ] {
            assert!(!is_stack_queue(&s, theirs), "{theirs}");
        }
    }
}
