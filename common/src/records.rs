//! The DynamoDB records: the task table (claims and task state, read by `lease tasks`
//! and `lease stats`) and the node table (the registry `lease nodes` reads). Attribute
//! names and state values are the contract between the agent, which writes them, and
//! the launcher, which reads them; both build their items from these constants.
//!
//! Task table `lease-<stack>-tasks`: partition key [`TASK_ID`] (S), no sort key.
//! Node table `lease-<stack>-nodes`: partition key [`NODE_ID`] (S), no sort key.
//! Both carry [`EXPIRES`] (N, epoch seconds) as their DynamoDB TTL attribute.
//!
//! [`TaskRecord`] and [`NodeRecord`] are the items, typed, with the one encoding both
//! binaries write and read (`to_item`/`from_item`); conditional writes still name the
//! attributes themselves, through the constants here.

mod attr;
mod node_record;
mod task_record;

pub use attr::{Attr, Item, SdkItem, from_sdk_item, get_n, get_s, get_time, to_sdk_item};
pub use node_record::{DEREGISTERED, NodeRecord};
pub use task_record::{RecordedState, TaskRecord};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Partition key of the task table.
pub const TASK_ID: &str = "task_id";
/// Partition key of the node table.
pub const NODE_ID: &str = "node_id";

/// Task attributes. Times are RFC 3339 UTC strings (S) unless marked N.
pub mod task {
    /// [`super::TaskState`] as its lowercase name.
    pub const STATE: &str = "state";
    /// `claude` | `docker` | `shell`.
    pub const KIND: &str = "kind";
    /// The pool the task was submitted to.
    pub const POOL: &str = "pool";
    /// N: the attempt now claimed or running (1 for the first).
    pub const ATTEMPT: &str = "attempt";
    /// The node and instance that claimed it.
    pub const NODE_ID: &str = "node_id";
    pub const INSTANCE_ID: &str = "instance_id";
    pub const SUBMITTED_AT: &str = "submitted_at";
    pub const STARTED_AT: &str = "started_at";
    pub const ENDED_AT: &str = "ended_at";
    pub const UPDATED_AT: &str = "updated_at";
    /// N: epoch seconds until which the claimer holds the task. The claimer moves it
    /// forward each time it extends the message's visibility; a claim whose holder
    /// stopped renewing it (the node died) may be taken over once it has passed.
    pub const CLAIM_UNTIL: &str = "claim_until";
    /// N: the program's exit status, once it ended.
    pub const EXIT_CODE: &str = "exit_code";
    /// Why a task failed, was interrupted or cancelled, in a sentence.
    pub const REASON: &str = "reason";
    /// `s3://bucket/jobs/<instance>/<task>/bundle/` once uploaded.
    pub const BUNDLE: &str = "bundle";
    /// `s3://bucket/logs/<task>.log`.
    pub const LOG: &str = "log";
    /// A one-line summary: the shell command, the image, or the prompt's start.
    pub const SUMMARY: &str = "summary";
}

/// Node attributes (the node table), written at registration and each heartbeat.
pub mod node {
    pub const NODE_NAME: &str = "node_name";
    pub const INSTANCE_ID: &str = "instance_id";
    pub const INSTANCE_TYPE: &str = "instance_type";
    pub const MARKET: &str = "market";
    pub const REGION: &str = "region";
    pub const POOL: &str = "pool";
    /// `lease:status` vocabulary (`idle`, `running`, …) or `deregistered`.
    pub const STATUS: &str = "status";
    /// The task running now, absent when none.
    pub const TASK_ID: &str = "task_id";
    /// N: how many tasks the node runs at once (`max-concurrent-tasks`).
    pub const SLOTS: &str = "slots";
    pub const VERSION: &str = "version";
    pub const REGISTERED_AT: &str = "registered_at";
    pub const LAST_HEARTBEAT: &str = "last_heartbeat";
    /// The lease's deadline, RFC 3339, absent for `lease:ttl=none`.
    pub const DEADLINE: &str = "deadline";
}

/// N, epoch seconds: DynamoDB's TTL attribute on both tables. Nodes: a day after the
/// last heartbeat; tasks: 30 days after they end.
pub const EXPIRES: &str = "expires";
/// How long a finished task's record is kept.
pub const TASK_RETENTION_SECS: i64 = 30 * 86_400;
/// How long a node's record outlives its last heartbeat.
pub const NODE_RETENTION_SECS: i64 = 86_400;

/// Where a task is in its life. `queued` is written by `lease submit`; the agent writes
/// every other state except `cancelled` (`lease tasks cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Uploading,
    Complete,
    Failed,
    Interrupted,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Uploading,
        TaskState::Complete,
        TaskState::Failed,
        TaskState::Interrupted,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Uploading => "uploading",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Interrupted => "interrupted",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// A task in a final state is never run again: a later delivery of its message is
    /// deleted without running it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task state '{0}' (expected one of queued, running, uploading, complete, failed, interrupted, cancelled)"
)]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_string()))
    }
}

/// The condition under which a node may claim a task (DynamoDB `ConditionExpression`
/// on a `PutItem`/`UpdateItem` of the task item), with the names and values it uses:
/// nobody has it, it is only queued or was interrupted, or its claim lapsed — and it
/// is not in a final state. Placeholders: `#state`, `#claim`, `:now` (N), and
/// `:complete`, `:failed`, `:cancelled`, `:queued`, `:interrupted` (S).
pub const CLAIM_CONDITION: &str = "attribute_not_exists(task_id) OR \
     (NOT #state IN (:complete, :failed, :cancelled) AND \
      (#state IN (:queued, :interrupted) OR attribute_not_exists(#claim) OR #claim < :now))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_finality() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(TaskState::Complete.is_final());
        assert!(!TaskState::Interrupted.is_final());
        assert!("done".parse::<TaskState>().is_err());
    }
}
