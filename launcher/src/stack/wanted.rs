//! What a stack should look like, as data: queue attributes, access policies,
//! subscription filters (the roles' trust policies are in [`super::role`]). Pure, so the choices are tested
//! without AWS and `setup` only compares what exists with what these return.

use std::collections::BTreeMap;

use lease_common::stack::{ClaudeAuth, Location, STACK_TAG, Stack};
use serde_json::{Value, json};

/// A task whose message has been received this many times without being deleted (the
/// agent crashed or the node vanished each time) goes to the dead-letter queue rather
/// than taking down node after node.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// How long a received task stays hidden from other nodes. The agent extends it while
/// the task runs, so this is only how long a task waits after its node died: short
/// enough to be picked up again soon, long enough for the first extension.
pub const POOL_VISIBILITY_TIMEOUT_SECS: u32 = 300;
/// Queued tasks and dead letters are kept the maximum SQS allows (14 days), so work
/// queued for a pool with no nodes yet is not silently lost after the default 4 days.
pub const RETENTION_SECS: u32 = 14 * 24 * 3_600;
/// Events are only interesting while fresh (`lease logs -f`, `lease nodes`).
pub const EVENTS_RETENTION_SECS: u32 = 24 * 3_600;
/// Long polling: a receive waits up to 20 s for a message instead of returning empty.
pub const RECEIVE_WAIT_SECS: u32 = 20;
/// The message attribute `lease submit` sets and the pool subscriptions filter on.
pub const POOL_ATTRIBUTE: &str = "pool";
/// Start of the inline policies on the agents' role, one per region. IAM is global,
/// so a stack set up in two regions shares its role; each region's policy grants
/// that region's queues, bucket and tables, and teardown in one region removes only
/// its own.
pub const AGENT_POLICY_PREFIX: &str = "lease-agent-";

pub fn agent_policy_name(region: &str) -> String {
    format!("{AGENT_POLICY_PREFIX}{region}")
}

/// A stack as it should be.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub stack: Stack,
    pub at: Location,
    /// Every pool, sorted, the default pool among them.
    pub pools: Vec<String>,
    /// How Claude Code tasks authenticate: what the agents' role is granted for it.
    pub claude_auth: ClaudeAuth,
}

impl Wanted {
    /// The tag on everything setup creates; teardown deletes only what carries it.
    pub fn tag(&self) -> (String, String) {
        (STACK_TAG.to_string(), self.stack.name().to_string())
    }

    pub fn topic_arn(&self, name: &str) -> String {
        self.at.arn("sns", name)
    }

    pub fn queue_arn(&self, name: &str) -> String {
        self.at.arn("sqs", name)
    }

    pub fn bucket(&self) -> String {
        self.stack.bucket(&self.at.account, &self.at.region)
    }
}

/// The pools to set up: the default pool (where `lease submit` sends tasks that name
/// none), those asked for, and those a previous setup made (setup never removes one).
pub fn pools(asked: &[String], existing: &[String]) -> Vec<String> {
    let mut all: Vec<String> = std::iter::once(lease_common::stack::DEFAULT_POOL.to_string())
        .chain(asked.iter().cloned())
        .chain(existing.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Lets one SNS topic, and nothing else, deliver to a queue.
pub fn queue_policy(queue_arn: &str, topic_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TopicDelivers",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } },
        }],
    })
}

pub fn redrive_policy(dead_letter_arn: &str) -> Value {
    json!({ "deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": MAX_RECEIVE_COUNT })
}

/// The command topic delivers a task to a pool's queue only when its `pool` message
/// attribute names that pool.
pub fn filter_policy(pool: &str) -> Value {
    json!({ POOL_ATTRIBUTE: [pool] })
}

/// Attribute name to value, as SQS takes them.
pub type Attributes = BTreeMap<String, String>;

pub fn pool_queue_attributes(
    queue_arn: &str,
    dead_letter_arn: &str,
    topic_arn: &str,
) -> Attributes {
    [
        (
            "VisibilityTimeout",
            POOL_VISIBILITY_TIMEOUT_SECS.to_string(),
        ),
        ("MessageRetentionPeriod", RETENTION_SECS.to_string()),
        (
            "ReceiveMessageWaitTimeSeconds",
            RECEIVE_WAIT_SECS.to_string(),
        ),
        ("RedrivePolicy", redrive_policy(dead_letter_arn).to_string()),
        ("Policy", queue_policy(queue_arn, topic_arn).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn dead_letter_attributes() -> Attributes {
    [(
        "MessageRetentionPeriod".to_string(),
        RETENTION_SECS.to_string(),
    )]
    .into()
}

pub fn events_queue_attributes(queue_arn: &str, bus_arn: &str) -> Attributes {
    [
        ("MessageRetentionPeriod", EVENTS_RETENTION_SECS.to_string()),
        (
            "ReceiveMessageWaitTimeSeconds",
            RECEIVE_WAIT_SECS.to_string(),
        ),
        ("Policy", queue_policy(queue_arn, bus_arn).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Numbers as strings, recursively: AWS hands `maxReceiveCount` back as `5` or `"5"`
/// depending on the service and version, and either means the same.
fn normalise(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        other => other,
    }
}

/// Reads a policy document as AWS returns it: IAM percent-encodes its documents,
/// the other services do not.
pub fn parse_document(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok().or_else(|| {
        let decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .ok()?;
        serde_json::from_str(&decoded).ok()
    })
}

/// True when `current` (as AWS returned it) says what `wanted` says: equal JSON
/// documents regardless of spacing, key order and number quoting, or equal text.
pub fn same_value(current: &str, wanted: &str) -> bool {
    if current == wanted {
        return true;
    }
    match (parse_document(current), parse_document(wanted)) {
        (Some(c @ (Value::Object(_) | Value::Array(_))), Some(w)) => normalise(c) == normalise(w),
        _ => false,
    }
}

/// The attributes whose current value differs from the wanted one (missing counts as
/// different), in name order.
pub fn differing(current: &BTreeMap<String, String>, wanted: &Attributes) -> Vec<String> {
    wanted
        .iter()
        .filter(|(k, v)| !current.get(*k).is_some_and(|c| same_value(c, v)))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The version and Debian architecture of an agent package named as
/// `packaging/build-deb.sh` names it: `leased_<version>_<arch>.deb`.
pub fn deb_name_parts(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_prefix("leased_")?.strip_suffix(".deb")?;
    let (version, arch) = stem.rsplit_once('_')?;
    (!version.is_empty() && !arch.is_empty()).then(|| (version.to_string(), arch.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            stack: Stack::new("dev").unwrap(),
            at: Location::new("aws", "123456789012", "eu-west-1").unwrap(),
            pools: pools(&[], &[]),
            claude_auth: ClaudeAuth::None,
        }
    }

    #[test]
    fn the_default_pool_is_always_there_and_pools_are_never_dropped() {
        assert_eq!(pools(&[], &[]), ["default"]);
        assert_eq!(
            pools(&["gpu".into()], &["cpu".into(), "gpu".into()]),
            ["cpu", "default", "gpu"]
        );
    }

    #[test]
    fn pool_queue_redrives_to_its_dead_letters_and_admits_only_the_command_topic() {
        let w = wanted();
        let q = w.queue_arn("lease-dev-pool-gpu");
        let dlq = w.queue_arn("lease-dev-dlq-gpu");
        let topic = w.topic_arn("lease-dev-commands");
        let a = pool_queue_attributes(&q, &dlq, &topic);
        let redrive: Value = serde_json::from_str(&a["RedrivePolicy"]).unwrap();
        assert_eq!(redrive["deadLetterTargetArn"], dlq.as_str());
        assert_eq!(redrive["maxReceiveCount"], 5);
        let policy: Value = serde_json::from_str(&a["Policy"]).unwrap();
        let s = &policy["Statement"][0];
        assert_eq!(s["Principal"]["Service"], "sns.amazonaws.com");
        assert_eq!(s["Action"], "sqs:SendMessage");
        assert_eq!(s["Resource"], q.as_str());
        assert_eq!(s["Condition"]["ArnEquals"]["aws:SourceArn"], topic.as_str());
        assert_eq!(a["ReceiveMessageWaitTimeSeconds"], "20");
        assert_eq!(w.tag(), ("lease:stack".into(), "dev".into()));
        assert_eq!(w.bucket(), "lease-dev-123456789012-eu-west-1");
    }

    #[test]
    fn documents_compare_by_meaning() {
        let wanted = redrive_policy("arn:aws:sqs:eu-west-1:123456789012:d").to_string();
        let moto_style = r#"{"maxReceiveCount": "5", "deadLetterTargetArn": "arn:aws:sqs:eu-west-1:123456789012:d"}"#;
        assert!(same_value(moto_style, &wanted));
        assert!(!same_value(&moto_style.replace('5', "3"), &wanted));
        let iam_style = "%7B%22Version%22%3A%20%222012-10-17%22%2C%20%22Statement%22%3A%20%5B%7B%22Effect%22%3A%20%22Allow%22%2C%20%22Principal%22%3A%20%7B%22Service%22%3A%20%22ec2.amazonaws.com%22%7D%2C%20%22Action%22%3A%20%22sts%3AAssumeRole%22%7D%5D%7D";
        assert!(same_value(
            iam_style,
            &crate::stack::role::agent_trust().to_string()
        ));
        assert!(same_value("300", "300"));
        assert!(!same_value("30", "300"));
    }

    #[test]
    fn policies_read_back_url_encoded_or_not() {
        let doc = serde_json::json!({"Version": "2012-10-17", "Statement": []});
        assert_eq!(parse_document(&doc.to_string()), Some(doc.clone()));
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(parse_document(encoded), Some(doc));
        assert_eq!(parse_document("%ZZ"), None);
    }

    #[test]
    fn differing_names_missing_and_changed_attributes() {
        let w = dead_letter_attributes();
        assert_eq!(differing(&BTreeMap::new(), &w), ["MessageRetentionPeriod"]);
        let same: BTreeMap<String, String> =
            [("MessageRetentionPeriod".to_string(), "1209600".to_string())].into();
        assert!(differing(&same, &w).is_empty());
    }

    #[test]
    fn deb_names() {
        assert_eq!(
            deb_name_parts("leased_0.1.0_amd64.deb"),
            Some(("0.1.0".into(), "amd64".into()))
        );
        assert_eq!(
            deb_name_parts("leased_0.1.0-1_arm64.deb"),
            Some(("0.1.0-1".into(), "arm64".into()))
        );
        assert_eq!(deb_name_parts("other_0.1.0_amd64.deb"), None);
        assert_eq!(deb_name_parts("leased_amd64.deb"), None);
    }
}
