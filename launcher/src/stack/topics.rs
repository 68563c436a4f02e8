//! SNS: the command topic and the control bus, and the queues' subscriptions to them.

use std::collections::HashMap;

use super::wanted::same_value;
use super::{Outcome, not_ours};
use crate::aws::StackTag;
use crate::aws::sns::{Subscription, Topics};
use crate::error::{Error, Result};

fn name_of(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

fn tagged(tags: &[(String, String)], tag: &StackTag) -> bool {
    tags.iter().any(|t| t == tag)
}

/// The topic `arn` names exists and carries the stack's tag.
pub async fn ensure_topic<S: Topics>(sns: &S, arn: &str, tag: &StackTag) -> Result<Outcome> {
    let name = name_of(arn);
    if !sns.topic_exists(arn).await? {
        let created = sns.create_topic(name, tag).await?;
        if created.as_deref() != Some(arn) {
            return Err(Error::Aws {
                what: format!("Topic '{name}'"),
                message: format!(
                    "created as {:?}, not the expected {arn}",
                    created.unwrap_or_default()
                ),
            });
        }
        return Ok(Outcome::Created);
    }
    if tagged(&sns.topic_tags(arn).await?, tag) {
        return Ok(Outcome::Exists);
    }
    sns.tag_topic(arn, tag).await?;
    Ok(Outcome::Updated)
}

/// The queue's confirmed subscription among a topic's (a pending one has no ARN yet).
pub fn subscription_of<'a>(subs: &'a [Subscription], queue_arn: &str) -> Option<&'a Subscription> {
    subs.iter()
        .find(|s| s.protocol == "sqs" && s.endpoint == queue_arn && s.arn.starts_with("arn:"))
}

/// The subscription attributes setup sets: raw message delivery (the agent reads the
/// task itself, not an SNS envelope, and keeps the message attributes) and, when
/// given, the filter policy on the message attributes.
pub fn subscription_attributes(filter: Option<&str>) -> Vec<(&'static str, &str)> {
    let mut wanted = vec![("RawMessageDelivery", "true")];
    if let Some(f) = filter {
        wanted.push(("FilterPolicy", f));
    }
    wanted
}

/// The wanted attributes a subscription does not have (documents compared by meaning).
pub fn attributes_to_set<'a>(
    current: &HashMap<String, String>,
    wanted: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    wanted
        .iter()
        .filter(|(name, value)| !current.get(*name).is_some_and(|c| same_value(c, value)))
        .copied()
        .collect()
}

/// `queue_arn` is subscribed to `topic` with [`subscription_attributes`].
pub async fn ensure_subscription<S: Topics>(
    sns: &S,
    topic: &str,
    queue_arn: &str,
    filter: Option<&str>,
) -> Result<Outcome> {
    let wanted = subscription_attributes(filter);
    let subs = sns.subscriptions(topic).await?;
    let Some(sub) = subscription_of(&subs, queue_arn) else {
        sns.subscribe_queue(topic, queue_arn, &wanted).await?;
        return Ok(Outcome::Created);
    };
    let current = sns.subscription_attributes(&sub.arn).await?;
    let to_set = attributes_to_set(&current, &wanted);
    for (name, value) in &to_set {
        sns.set_subscription_attribute(&sub.arn, name, value)
            .await?;
    }
    Ok(Outcome::of(false, !to_set.is_empty()))
}

/// Removes every subscription of the stack's topic (a topic without its tag is left
/// alone); returns how many.
pub async fn remove_subscriptions<S: Topics>(
    sns: &S,
    topic: &str,
    tag: &StackTag,
) -> Result<usize> {
    if !sns.topic_exists(topic).await? || !tagged(&sns.topic_tags(topic).await?, tag) {
        return Ok(0);
    }
    let mut n = 0;
    for sub in sns.subscriptions(topic).await? {
        // A subscription still pending confirmation has no ARN and cannot be removed;
        // deleting the topic removes it.
        if !sub.arn.starts_with("arn:") {
            continue;
        }
        sns.unsubscribe(&sub.arn).await?;
        n += 1;
    }
    Ok(n)
}

pub async fn remove_topic<S: Topics>(
    sns: &S,
    arn: &str,
    tag: &StackTag,
) -> Result<(Outcome, Option<String>)> {
    if !sns.topic_exists(arn).await? {
        return Ok((Outcome::Absent, None));
    }
    if !tagged(&sns.topic_tags(arn).await?, tag) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    sns.delete_topic(arn).await?;
    Ok((Outcome::Deleted, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_the_queues_confirmed_one_and_only_differing_attributes_are_set() {
        let q = "arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-gpu";
        let sub = |arn: &str, endpoint: &str| Subscription {
            arn: arn.into(),
            protocol: "sqs".into(),
            endpoint: endpoint.into(),
        };
        let subs = [
            sub("PendingConfirmation", q),
            sub("arn:aws:sns:x:1:t:other", "arn:other"),
            sub("arn:aws:sns:x:1:t:ours", q),
        ];
        assert_eq!(
            subscription_of(&subs, q).map(|s| s.arn.as_str()),
            Some("arn:aws:sns:x:1:t:ours")
        );
        assert!(subscription_of(&subs[..2], q).is_none());

        let filter = r#"{"pool":["gpu"]}"#;
        let wanted = subscription_attributes(Some(filter));
        let current: HashMap<String, String> = [
            ("RawMessageDelivery".to_string(), "true".to_string()),
            (
                "FilterPolicy".to_string(),
                r#"{"pool": ["gpu"]}"#.to_string(),
            ),
        ]
        .into();
        assert!(attributes_to_set(&current, &wanted).is_empty());
        assert_eq!(
            attributes_to_set(&HashMap::new(), &wanted),
            [("RawMessageDelivery", "true"), ("FilterPolicy", filter)]
        );
        assert_eq!(
            subscription_attributes(None),
            [("RawMessageDelivery", "true")]
        );
    }
}
