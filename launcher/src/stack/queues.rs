//! SQS: each pool's queue and dead-letter queue, and the events queue.

use lease_common::stack::Stack;

use super::wanted::{self, Attributes};
use super::{Outcome, not_ours};
use crate::aws::StackTag;
use crate::aws::sqs::QueueAdmin;
use crate::error::Result;

/// What to send to an existing queue: the attributes that differ, and whether it
/// lacks the stack's tag.
pub fn queue_diff(
    current: &Attributes,
    tags: &std::collections::HashMap<String, String>,
    wanted: &Attributes,
    tag: &StackTag,
) -> (Attributes, bool) {
    let differ: Attributes = wanted::differing(current, wanted)
        .into_iter()
        .filter_map(|k| wanted.get(&k).map(|v| (k, v.clone())))
        .collect();
    (differ, tags.get(&tag.0) != Some(&tag.1))
}

/// The queue exists with these attributes and the stack's tag; returns its URL.
pub async fn ensure_queue<Q: QueueAdmin>(
    sqs: &Q,
    name: &str,
    attrs: &Attributes,
    tag: &StackTag,
) -> Result<(String, Outcome)> {
    let Some(url) = sqs.queue_url(name).await? else {
        let url = sqs.create_queue(name, attrs, tag).await?;
        return Ok((url, Outcome::Created));
    };
    let current = sqs.queue_attributes(name, &url).await?;
    let tags = sqs.queue_tags(name, &url).await?;
    let (differ, untagged) = queue_diff(&current, &tags, attrs, tag);
    if !differ.is_empty() {
        let names: Vec<&str> = differ.keys().map(String::as_str).collect();
        tracing::info!("Queue '{name}': correcting {}", names.join(", "));
        sqs.set_queue_attributes(name, &url, &differ).await?;
    }
    if untagged {
        sqs.tag_queue(name, &url, tag).await?;
    }
    Ok((url, Outcome::of(false, !differ.is_empty() || untagged)))
}

/// Every queue of the stack, by name and URL: pools, dead letters and events — also
/// pools a settings file no longer lists.
pub async fn stack_queues<Q: QueueAdmin>(sqs: &Q, stack: &Stack) -> Result<Vec<(String, String)>> {
    let prefix = format!("{}-", stack.prefix());
    let mut found: Vec<(String, String)> = sqs
        .queues_named(&prefix)
        .await?
        .into_iter()
        .map(|url| (url.rsplit('/').next().unwrap_or(&url).to_string(), url))
        .filter(|(name, _)| is_stack_queue(stack, name))
        .collect();
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

pub async fn remove_queue<Q: QueueAdmin>(
    sqs: &Q,
    url: &str,
    tag: &StackTag,
) -> Result<(Outcome, Option<String>)> {
    let name = url.rsplit('/').next().unwrap_or(url);
    if sqs.queue_tags(name, url).await?.get(&tag.0) != Some(&tag.1) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    if sqs.delete_queue(name, url).await? {
        Ok((Outcome::Deleted, None))
    } else {
        Ok((Outcome::Absent, None))
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

    #[test]
    fn only_differing_attributes_are_set_and_a_missing_tag_is_added() {
        let tag: StackTag = ("lease:stack".into(), "main".into());
        let wanted = wanted::dead_letter_attributes();
        let stale: Attributes =
            [("MessageRetentionPeriod".to_string(), "345600".to_string())].into();
        let tags: std::collections::HashMap<String, String> = [tag.clone()].into();
        let (differ, untagged) = queue_diff(&stale, &tags, &wanted, &tag);
        assert_eq!(differ, wanted);
        assert!(!untagged);
        let (differ, untagged) = queue_diff(&wanted, &Default::default(), &wanted, &tag);
        assert!(differ.is_empty());
        assert!(untagged);
    }
}
