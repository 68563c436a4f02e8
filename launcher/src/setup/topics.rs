//! SNS: the command topic and the control bus, and the queues' subscriptions to them.

use aws_sdk_sns::Client;
use aws_sdk_sns::types::Tag;

use super::{Outcome, not_ours, plan};
use crate::error::{Error, Result};

fn name_of(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

fn sns_tag(tag: &(String, String)) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| Error::usage(format!("tag {}: {e}", tag.0)))
}

async fn exists(sns: &Client, arn: &str) -> Result<bool> {
    match sns.get_topic_attributes().topic_arn(arn).send().await {
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

async fn tagged(sns: &Client, arn: &str, tag: &(String, String)) -> Result<bool> {
    let out = sns
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
        .any(|t| t.key() == tag.0 && t.value() == tag.1))
}

/// The topic `arn` names exists and carries the stack's tag.
pub async fn ensure_topic(sns: &Client, arn: &str, tag: &(String, String)) -> Result<Outcome> {
    let name = name_of(arn);
    if !exists(sns, arn).await? {
        let out = sns
            .create_topic()
            .name(name)
            .tags(sns_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create topic '{name}'"), e))?;
        if out.topic_arn() != Some(arn) {
            return Err(Error::Aws {
                what: format!("Topic '{name}'"),
                message: format!(
                    "created as {:?}, not the expected {arn}",
                    out.topic_arn().unwrap_or_default()
                ),
            });
        }
        return Ok(Outcome::Created);
    }
    if tagged(sns, arn, tag).await? {
        return Ok(Outcome::Exists);
    }
    sns.tag_resource()
        .resource_arn(arn)
        .tags(sns_tag(tag)?)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to tag topic '{name}'"), e))?;
    Ok(Outcome::Updated)
}

/// Every subscription of a topic: (subscription ARN, protocol, endpoint).
async fn subscriptions(sns: &Client, topic: &str) -> Result<Vec<(String, String, String)>> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = sns
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
        all.extend(out.subscriptions().iter().map(|s| {
            (
                s.subscription_arn().unwrap_or_default().to_string(),
                s.protocol().unwrap_or_default().to_string(),
                s.endpoint().unwrap_or_default().to_string(),
            )
        }));
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(all);
        }
    }
}

/// `queue_arn` is subscribed to `topic` with raw message delivery (the agent reads the
/// task itself, not an SNS envelope, and keeps the message attributes) and, when given,
/// this filter policy on the message attributes.
pub async fn ensure_subscription(
    sns: &Client,
    topic: &str,
    queue_arn: &str,
    filter: Option<&str>,
) -> Result<Outcome> {
    let what = format!(
        "subscription of queue '{}' to topic '{}'",
        name_of(queue_arn),
        name_of(topic)
    );
    let existing =
        subscriptions(sns, topic)
            .await?
            .into_iter()
            .find(|(arn, protocol, endpoint)| {
                protocol == "sqs" && endpoint == queue_arn && arn.starts_with("arn:")
            });
    let Some((sub_arn, _, _)) = existing else {
        let mut req = sns
            .subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true);
        if let Some(f) = filter {
            req = req.attributes("FilterPolicy", f);
        }
        req.send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create the {what}"), e))?;
        return Ok(Outcome::Created);
    };
    let out = sns
        .get_subscription_attributes()
        .subscription_arn(&sub_arn)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to read the {what}"), e))?;
    let current = out.attributes().cloned().unwrap_or_default();
    let mut wanted = vec![("RawMessageDelivery", "true")];
    if let Some(f) = filter {
        wanted.push(("FilterPolicy", f));
    }
    let mut updated = false;
    for (name, value) in wanted {
        if current
            .get(name)
            .is_some_and(|c| plan::same_value(c, value))
        {
            continue;
        }
        sns.set_subscription_attributes()
            .subscription_arn(&sub_arn)
            .attribute_name(name)
            .attribute_value(value)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to set {name} on the {what}"), e))?;
        updated = true;
    }
    Ok(Outcome::of(false, updated))
}

/// Removes every subscription of the stack's topic (a topic without its tag is left
/// alone); returns how many.
pub async fn remove_subscriptions(
    sns: &Client,
    topic: &str,
    tag: &(String, String),
) -> Result<usize> {
    if !exists(sns, topic).await? || !tagged(sns, topic, tag).await? {
        return Ok(0);
    }
    let mut n = 0;
    for (arn, _, endpoint) in subscriptions(sns, topic).await? {
        // A subscription still pending confirmation has no ARN and cannot be removed;
        // deleting the topic removes it.
        if !arn.starts_with("arn:") {
            continue;
        }
        sns.unsubscribe()
            .subscription_arn(&arn)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!(
                        "Failed to delete the subscription of '{endpoint}' to topic '{}'",
                        name_of(topic)
                    ),
                    e,
                )
            })?;
        n += 1;
    }
    Ok(n)
}

pub async fn remove_topic(
    sns: &Client,
    arn: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    if !exists(sns, arn).await? {
        return Ok((Outcome::Absent, None));
    }
    if !tagged(sns, arn, tag).await? {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    sns.delete_topic()
        .topic_arn(arn)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to delete topic '{}'", name_of(arn)), e))?;
    Ok((Outcome::Deleted, None))
}
