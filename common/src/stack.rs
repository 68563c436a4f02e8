//! How the control plane's AWS resources are named, so `lease setup` creates them,
//! `lease iam-policy` grants on them and every other command finds them by the same
//! rule, from a stack name alone (plus the account and region for ARNs).
//!
//! Every name starts with `lease-<stack>-`. A stack name is lowercase letters and
//! digits only — no hyphen — so that prefix is unambiguous: the wildcard
//! `lease-dev-pool-*` can never match a resource of a stack called `dev-pool`.
//!
//! | resource | name |
//! | --- | --- |
//! | SNS control bus (events) | `lease-<stack>-bus` |
//! | SNS command topic (tasks, filtered by pool) | `lease-<stack>-commands` |
//! | SQS node queue of a pool | `lease-<stack>-pool-<pool>` |
//! | its dead-letter queue | `lease-<stack>-dlq-<pool>` |
//! | SQS events queue (subscribed to the bus) | `lease-<stack>-events` |
//! | S3 bucket | `lease-<stack>-<account>-<region>` (bucket names are global) |
//! | DynamoDB node registry / task records | `lease-<stack>-nodes` / `lease-<stack>-tasks` |
//! | agents' IAM role and instance profile | `lease-<stack>-agent` |
//! | reaper Lambda function and its role | `lease-<stack>-reaper` |
//! | role EventBridge Scheduler invokes the reaper with | `lease-<stack>-reaper-invoke` |
//! | role `lease schedule` targets run with | `lease-<stack>-schedules` |
//! | EventBridge Scheduler schedule group | `lease-<stack>` |
//! | the reaper's schedule, in that group | `reaper` |
//!
//! Dead-letter queues are `dlq-<pool>`, not `pool-<pool>-dlq`, so the agents' grant on
//! `lease-<stack>-pool-*` does not reach them.

use std::fmt;

/// Tag on every resource `lease setup` creates (value: the stack name), and on every
/// instance launched into a stack; `lease teardown` deletes only what carries it.
pub const STACK_TAG: &str = "lease:stack";

/// The stack `lease setup` creates when no `--stack` is given.
pub const DEFAULT_STACK: &str = "main";
/// The pool a task goes to, and a node serves, when none is named.
pub const DEFAULT_POOL: &str = "default";
/// The partition of the commercial regions; `aws-cn` and `aws-us-gov` are the others.
pub const DEFAULT_PARTITION: &str = "aws";

/// Longest stack name. The bucket is the longest name: `lease-` (6) + stack + `-` +
/// 12-digit account + `-` + region (at most 16 today, e.g. `ap-southeast-5`, with room
/// to spare) must fit S3's 63; 20 leaves that margin and keeps role names (64) short.
pub const MAX_STACK_LEN: usize = 20;
/// Longest pool name: SQS allows 80 characters, and `lease-<stack>-pool-` takes up
/// to 31 of them.
pub const MAX_POOL_LEN: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error(
        "invalid stack name '{0}': use 1 to {MAX_STACK_LEN} lowercase letters and digits, starting with a letter"
    )]
    Name(String),
    #[error(
        "invalid pool name '{0}': use 1 to {MAX_POOL_LEN} lowercase letters, digits and hyphens, starting with a letter or digit"
    )]
    Pool(String),
    #[error("invalid AWS account id '{0}': expected 12 digits")]
    Account(String),
    #[error("invalid AWS region '{0}': expected something like us-east-1")]
    Region(String),
    #[error("invalid AWS partition '{0}': expected aws, aws-cn or aws-us-gov")]
    Partition(String),
}

/// A validated stack name and the resource names derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    name: String,
}

impl Default for Stack {
    fn default() -> Self {
        Self {
            name: DEFAULT_STACK.to_string(),
        }
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Stack {
    pub fn new(name: &str) -> Result<Self, StackError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_STACK_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(StackError::Name(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `lease-<stack>`: the start of every resource name, and the schedule group.
    pub fn prefix(&self) -> String {
        format!("lease-{}", self.name)
    }

    fn named(&self, suffix: &str) -> String {
        format!("lease-{}-{suffix}", self.name)
    }

    pub fn bus_topic(&self) -> String {
        self.named("bus")
    }

    pub fn command_topic(&self) -> String {
        self.named("commands")
    }

    pub fn pool_queue(&self, pool: &str) -> Result<String, StackError> {
        validate_pool(pool)?;
        Ok(self.named(&format!("pool-{pool}")))
    }

    /// Matches every pool queue of this stack and nothing else (not the dead letters).
    pub fn pool_queue_pattern(&self) -> String {
        self.named("pool-*")
    }

    pub fn dead_letter_queue(&self, pool: &str) -> Result<String, StackError> {
        validate_pool(pool)?;
        Ok(self.named(&format!("dlq-{pool}")))
    }

    /// Matches every dead-letter queue of this stack and nothing else.
    pub fn dead_letter_queue_pattern(&self) -> String {
        self.named("dlq-*")
    }

    /// Matches every queue of this stack: pools, dead letters and events.
    pub fn queue_pattern(&self) -> String {
        self.named("*")
    }

    pub fn events_queue(&self) -> String {
        self.named("events")
    }

    /// Bucket names are global across all accounts, hence the account and region.
    pub fn bucket(&self, account: &Account, region: &AwsRegion) -> String {
        self.named(&format!("{}-{}", account.0, region.0))
    }

    pub fn nodes_table(&self) -> String {
        self.named("nodes")
    }

    pub fn tasks_table(&self) -> String {
        self.named("tasks")
    }

    /// The agents' role; the instance profile has the same name.
    pub fn agent_role(&self) -> String {
        self.named("agent")
    }

    /// The reaper's Lambda function; its execution role has the same name.
    pub fn reaper_function(&self) -> String {
        self.named("reaper")
    }

    pub fn schedule_group(&self) -> String {
        self.prefix()
    }

    /// The role EventBridge Scheduler assumes to invoke the reaper, and nothing else.
    pub fn reaper_invoke_role(&self) -> String {
        self.named("reaper-invoke")
    }

    /// The role the targets of `lease schedule` run with (publish a task, launch).
    pub fn schedules_role(&self) -> String {
        self.named("schedules")
    }

    /// The stack's Systems Manager parameters live under this path (`/lease/<stack>/`),
    /// and the agents' role may read only there.
    pub fn parameter_path(&self) -> String {
        format!("/lease/{}/", self.name)
    }

    /// The SecureString parameter holding the Anthropic API key that Claude Code tasks
    /// use when the stack's [`ClaudeAuth`] is `api-key`: kept in Parameter Store, read by
    /// the agent with the instance role, never written into user-data or tags.
    pub fn anthropic_key_parameter(&self) -> String {
        format!("{}anthropic-api-key", self.parameter_path())
    }
}

/// How Claude Code tasks on a stack's nodes authenticate, chosen once per stack (`lease
/// setup --claude-auth`); the agents' role gets exactly what the choice needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaudeAuth {
    /// No Claude tasks: no Bedrock and no parameter grant.
    #[default]
    None,
    /// Amazon Bedrock with the instance role (`CLAUDE_CODE_USE_BEDROCK=1`).
    Bedrock,
    /// An Anthropic API key in the stack's parameter [`Stack::anthropic_key_parameter`].
    ApiKey,
}

impl ClaudeAuth {
    pub const ALL: [ClaudeAuth; 3] = [ClaudeAuth::None, ClaudeAuth::Bedrock, ClaudeAuth::ApiKey];

    /// The name `--claude-auth` and the settings file use.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaudeAuth::None => "none",
            ClaudeAuth::Bedrock => "bedrock",
            ClaudeAuth::ApiKey => "api-key",
        }
    }

    pub fn is_none(&self) -> bool {
        *self == ClaudeAuth::None
    }
}

impl fmt::Display for ClaudeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ClaudeAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("invalid Claude auth '{s}': expected none, bedrock or api-key"))
    }
}

/// The reaper's schedule in the stack's group; `lease schedule` refuses the name.
pub const REAPER_SCHEDULE: &str = "reaper";

pub fn validate_pool(pool: &str) -> Result<(), StackError> {
    let ok = !pool.is_empty()
        && pool.len() <= MAX_POOL_LEN
        && pool.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && pool
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(StackError::Pool(pool.to_string()))
    }
}

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account(String);

impl Account {
    pub fn new(id: &str) -> Result<Self, StackError> {
        if id.len() == 12 && id.chars().all(|c| c.is_ascii_digit()) {
            Ok(Self(id.to_string()))
        } else {
            Err(StackError::Account(id.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A region name as it appears in ARNs: `us-east-1`, `cn-north-1`, `us-gov-west-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRegion(String);

impl AwsRegion {
    pub fn new(region: &str) -> Result<Self, StackError> {
        let ok = region.len() <= 25
            && region.split('-').count() >= 3
            && region.split('-').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            });
        if ok {
            Ok(Self(region.to_string()))
        } else {
            Err(StackError::Region(region.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a stack lives, for its resources' ARNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub partition: String,
    pub account: Account,
    pub region: AwsRegion,
}

impl Location {
    pub fn new(partition: &str, account: &str, region: &str) -> Result<Self, StackError> {
        let ok = !partition.is_empty()
            && partition
                .split('-')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
            && partition.starts_with("aws");
        if !ok {
            return Err(StackError::Partition(partition.to_string()));
        }
        Ok(Self {
            partition: partition.to_string(),
            account: Account::new(account)?,
            region: AwsRegion::new(region)?,
        })
    }

    /// `arn:<partition>:<service>:<region>:<account>:<resource>`, for the regional
    /// services (SNS, SQS, DynamoDB, EC2, SSM).
    pub fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition, self.region.0, self.account.0
        )
    }

    /// S3 ARNs carry neither region nor account: `key` is `bucket` or `bucket/prefix*`.
    pub fn s3_arn(&self, key: &str) -> String {
        format!("arn:{}:s3:::{key}", self.partition)
    }

    /// IAM is global: no region.
    pub fn iam_arn(&self, resource: &str) -> String {
        format!("arn:{}:iam::{}:{resource}", self.partition, self.account.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        let s = Stack::new("dev").unwrap();
        let account = Account::new("123456789012").unwrap();
        let region = AwsRegion::new("eu-west-1").unwrap();
        assert_eq!(s.prefix(), "lease-dev");
        assert_eq!(s.bus_topic(), "lease-dev-bus");
        assert_eq!(s.command_topic(), "lease-dev-commands");
        assert_eq!(s.pool_queue("gpu").unwrap(), "lease-dev-pool-gpu");
        assert_eq!(s.dead_letter_queue("gpu").unwrap(), "lease-dev-dlq-gpu");
        assert_eq!(s.events_queue(), "lease-dev-events");
        assert_eq!(
            s.bucket(&account, &region),
            "lease-dev-123456789012-eu-west-1"
        );
        assert_eq!(s.nodes_table(), "lease-dev-nodes");
        assert_eq!(s.tasks_table(), "lease-dev-tasks");
        assert_eq!(s.agent_role(), "lease-dev-agent");
        assert_eq!(s.reaper_function(), "lease-dev-reaper");
        assert_eq!(s.schedule_group(), "lease-dev");
        assert_eq!(s.reaper_invoke_role(), "lease-dev-reaper-invoke");
        assert_eq!(s.schedules_role(), "lease-dev-schedules");
        assert_eq!(Stack::default().bus_topic(), "lease-main-bus");
    }

    #[test]
    fn the_pool_pattern_matches_pool_queues_only() {
        let s = Stack::new("dev").unwrap();
        let pattern = s.pool_queue_pattern();
        let prefix = pattern.strip_suffix('*').unwrap();
        assert!(s.pool_queue(DEFAULT_POOL).unwrap().starts_with(prefix));
        assert!(s.pool_queue("gpu-a100").unwrap().starts_with(prefix));
        assert!(!s.dead_letter_queue("gpu").unwrap().starts_with(prefix));
        assert!(!s.events_queue().starts_with(prefix));
        // Another stack can never fall under this stack's patterns.
        assert!(Stack::new("dev-pool").is_err());
        let other = Stack::new("devpool").unwrap();
        assert!(!other.pool_queue("x").unwrap().starts_with("lease-dev-"));
    }

    #[test]
    fn bad_names_are_refused_by_name() {
        for bad in ["", "Dev", "dev-1", "1dev", "dev_1", &"a".repeat(21)] {
            let err = Stack::new(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
        assert!(Stack::new(&"a".repeat(20)).is_ok());
        for bad in ["", "GPU", "-gpu", "a/b", &"a".repeat(41)] {
            assert!(Stack::default().pool_queue(bad).is_err(), "{bad}");
        }
        assert!(Account::new("12345678901").is_err());
        assert!(Account::new("12345678901a").is_err());
        assert!(AwsRegion::new("useast1").is_err());
        assert!(AwsRegion::new("us-east-1").is_ok());
        assert!(AwsRegion::new("us-gov-west-1").is_ok());
        assert!(Location::new("gcp", "123456789012", "us-east-1").is_err());
        assert!(Location::new("aws-cn", "123456789012", "cn-north-1").is_ok());
    }

    #[test]
    fn the_longest_bucket_name_fits_s3() {
        let s = Stack::new(&"a".repeat(MAX_STACK_LEN)).unwrap();
        let bucket = s.bucket(
            &Account::new("123456789012").unwrap(),
            &AwsRegion::new("ap-southeast-5").unwrap(),
        );
        assert!(bucket.len() <= 63, "{bucket} is {} long", bucket.len());
        let role = s.agent_role();
        assert!(role.len() <= 64);
        let queue = s.dead_letter_queue(&"p".repeat(MAX_POOL_LEN)).unwrap();
        assert!(queue.len() <= 80, "{queue}");
    }

    #[test]
    fn arns() {
        let l = Location::new("aws-us-gov", "123456789012", "us-gov-west-1").unwrap();
        assert_eq!(
            l.arn("sns", "lease-dev-bus"),
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:lease-dev-bus"
        );
        assert_eq!(l.s3_arn("b/jobs/*"), "arn:aws-us-gov:s3:::b/jobs/*");
        assert_eq!(
            l.iam_arn("role/lease-dev-agent"),
            "arn:aws-us-gov:iam::123456789012:role/lease-dev-agent"
        );
    }
}
