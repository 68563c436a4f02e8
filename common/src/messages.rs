//! Task (SQS) and event (SNS) message bodies. Every body is JSON with `"v": 1`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// The only message version this build reads and writes.
pub const MESSAGE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message body is not JSON: {0}")]
    NotJson(String),
    #[error("message has no 'v' field")]
    MissingVersion,
    #[error("message version {0} is not supported (this build reads v {MESSAGE_VERSION})")]
    UnsupportedVersion(u64),
    #[error("task has unknown kind '{0}' (expected claude, docker or shell)")]
    UnknownKind(String),
    #[error("invalid task: {0}")]
    InvalidTask(String),
}

/// One unit of work, as it travels through SQS. Unknown fields are ignored (serde
/// cannot refuse them through `flatten`), so a newer launcher's extra field does not
/// send a task to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub v: u32,
    pub id: String,
    #[serde(flatten)]
    pub spec: TaskSpec,
    /// Stop the task and report it failed after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Directory whose contents become the result bundle; relative paths are under the
    /// task's own working directory, which is also the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// 1 for the first delivery; a requeue after an interruption adds one.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Pool of nodes the task is meant for (matched by the command topic's filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// SQS refuses bodies larger than this (256 KiB, the default and the most a queue can
/// be set to before 2025; newer queues may take more, but a task must fit every queue).
pub const MAX_SQS_BODY: usize = 256 * 1024;

/// The largest task a pointer may name (its JSON in S3). A task is a command, a prompt
/// or an image with its arguments; 16 MiB is far beyond any real one, and it bounds
/// what an agent reads into memory for one message. `lease submit` refuses a larger
/// task; an agent dead-letters a pointer to one.
pub const MAX_TASK_SPEC: usize = 16 * 1024 * 1024;

/// A body too large for SQS is stored in S3 and the message carries this instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPointer {
    pub v: u32,
    pub id: String,
    /// `s3://bucket/key` of the full task JSON.
    pub spec_s3: String,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

/// What an SQS body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskMessage {
    Inline(Task),
    /// Fetch the task from S3, then parse it with [`Task::parse`].
    Pointer(TaskPointer),
}

impl TaskMessage {
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
        if value.get("spec_s3").is_some() {
            check_version(&value)?;
            return serde_json::from_value(value)
                .map(TaskMessage::Pointer)
                .map_err(|e| MessageError::InvalidTask(e.to_string()));
        }
        Task::parse(body).map(TaskMessage::Inline)
    }
}

fn first_attempt() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskSpec {
    Claude(ClaudeSpec),
    Docker(DockerSpec),
    Shell(ShellSpec),
}

impl TaskSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            TaskSpec::Claude(_) => "claude",
            TaskSpec::Docker(_) => "docker",
            TaskSpec::Shell(_) => "shell",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ClaudeSpec {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerSpec {
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellSpec {
    pub command: String,
}

impl Task {
    pub fn new(id: impl Into<String>, spec: TaskSpec) -> Self {
        Self {
            v: MESSAGE_VERSION,
            id: id.into(),
            spec,
            timeout: None,
            bundle: None,
            attempt: 1,
            pool: None,
        }
    }

    /// Parses an SQS body, telling apart the reasons a body can be refused so the
    /// `TaskFailed` event for the dead-letter queue names the real one.
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
        check_version(&value)?;
        if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
            && !["claude", "docker", "shell"].contains(&kind)
        {
            return Err(MessageError::UnknownKind(kind.to_string()));
        }
        let task: Task =
            serde_json::from_value(value).map_err(|e| MessageError::InvalidTask(e.to_string()))?;
        if task.id.trim().is_empty() {
            return Err(MessageError::InvalidTask("'id' is empty".into()));
        }
        if !task
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            // The id names a tmux session, a file and an S3 key; keep it to safe characters.
            return Err(MessageError::InvalidTask(format!(
                "'id' {:?} may contain only letters, digits, '-' and '_'",
                task.id
            )));
        }
        Ok(task)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data structures with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn check_version(value: &serde_json::Value) -> Result<(), MessageError> {
    match value.get("v") {
        None => Err(MessageError::MissingVersion),
        Some(v) => match v.as_u64() {
            Some(n) if n == u64::from(MESSAGE_VERSION) => Ok(()),
            Some(n) => Err(MessageError::UnsupportedVersion(n)),
            None => Err(MessageError::InvalidTask(format!(
                "'v' is not a number: {v}"
            ))),
        },
    }
}

/// An event on the SNS control bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub node_id: String,
    pub instance_id: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(
        node_id: impl Into<String>,
        instance_id: impl Into<String>,
        at: DateTime<Utc>,
        kind: EventKind,
    ) -> Self {
        Self {
            v: MESSAGE_VERSION,
            node_id: node_id.into(),
            instance_id: instance_id.into(),
            at,
            kind,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
        check_version(&value)?;
        serde_json::from_value(value).map_err(|e| MessageError::InvalidTask(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    NodeRegistered {
        node_name: String,
        instance_type: String,
        market: String,
        region: String,
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    NodeHeartbeat {
        node_name: String,
        instance_type: String,
        market: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_left_secs: Option<i64>,
        idle: bool,
        idle_for_secs: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        cpu_percent: f64,
        memory_percent: f64,
    },
    NodeDeregistered {
        reason: String,
    },
    TaskStarted {
        task_id: String,
        kind: String,
        attempt: u32,
    },
    TaskOutput {
        task_id: String,
        /// Increases by one per event of a task, so a subscriber can order and dedupe.
        seq: u64,
        lines: Vec<String>,
    },
    TaskCompleted {
        task_id: String,
        exit_code: i32,
        duration_secs: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turns: Option<u32>,
        /// Tools a Claude task asked for and was refused, by name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        permission_denials: Vec<String>,
    },
    TaskFailed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<String>,
    },
    TaskInterrupted {
        task_id: String,
        attempt: u32,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<String>,
    },
    SpotInterruption {
        action: String,
        time: DateTime<Utc>,
    },
    RebalanceRecommendation {
        notice_time: DateTime<Utc>,
    },
    LeaseExpiring {
        expires_at: DateTime<Utc>,
        minutes_left: u64,
    },
    LeaseExpired {
        expires_at: DateTime<Utc>,
        action: String,
    },
    IdleShutdown {
        idle_for_secs: u64,
        action: String,
    },
}

impl EventKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::NodeRegistered { .. } => "NodeRegistered",
            EventKind::NodeHeartbeat { .. } => "NodeHeartbeat",
            EventKind::NodeDeregistered { .. } => "NodeDeregistered",
            EventKind::TaskStarted { .. } => "TaskStarted",
            EventKind::TaskOutput { .. } => "TaskOutput",
            EventKind::TaskCompleted { .. } => "TaskCompleted",
            EventKind::TaskFailed { .. } => "TaskFailed",
            EventKind::TaskInterrupted { .. } => "TaskInterrupted",
            EventKind::SpotInterruption { .. } => "SpotInterruption",
            EventKind::RebalanceRecommendation { .. } => "RebalanceRecommendation",
            EventKind::LeaseExpiring { .. } => "LeaseExpiring",
            EventKind::LeaseExpired { .. } => "LeaseExpired",
            EventKind::IdleShutdown { .. } => "IdleShutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn task_round_trips_with_kind_and_version() {
        let mut t = Task::new(
            "t-1",
            TaskSpec::Shell(ShellSpec {
                command: "echo hi".into(),
            }),
        );
        t.timeout = Some(HumanDuration::from_secs(600));
        let json = t.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "shell");
        assert_eq!(v["command"], "echo hi");
        assert_eq!(v["timeout"], "10m");
        assert_eq!(Task::parse(&json).unwrap(), t);
    }

    #[test]
    fn docker_and_claude_specs_parse() {
        let t = Task::parse(
            r#"{"v":1,"id":"a","kind":"docker","image":"trainer:1","args":["--epochs","2"],"env":{"LR":"0.1"},"gpus":"all"}"#,
        )
        .unwrap();
        assert!(matches!(t.spec, TaskSpec::Docker(ref d) if d.gpus.as_deref() == Some("all")));
        assert_eq!(t.attempt, 1);
        let t = Task::parse(
            r#"{"v":1,"id":"b","kind":"claude","prompt":"fix it","max_turns":3,"attempt":2}"#,
        )
        .unwrap();
        assert!(matches!(t.spec, TaskSpec::Claude(ref c) if c.max_turns == Some(3)));
        assert_eq!(t.attempt, 2);
    }

    #[test]
    fn bad_bodies_say_why() {
        assert!(matches!(Task::parse("nope"), Err(MessageError::NotJson(_))));
        assert_eq!(
            Task::parse(r#"{"id":"a","kind":"shell","command":"x"}"#),
            Err(MessageError::MissingVersion)
        );
        assert_eq!(
            Task::parse(r#"{"v":2,"id":"a","kind":"shell","command":"x"}"#),
            Err(MessageError::UnsupportedVersion(2))
        );
        assert_eq!(
            Task::parse(r#"{"v":1,"id":"a","kind":"fortran","src":"x"}"#),
            Err(MessageError::UnknownKind("fortran".into()))
        );
        let err = Task::parse(r#"{"v":1,"id":"a","kind":"shell"}"#).unwrap_err();
        assert!(err.to_string().contains("command"), "{err}");
        let err = Task::parse(r#"{"v":1,"id":"../x","kind":"shell","command":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
    }

    #[test]
    fn pointer_messages_are_recognised() {
        let body = r#"{"v":1,"id":"big","spec_s3":"s3://b/tasks/big.json"}"#;
        match TaskMessage::parse(body).unwrap() {
            TaskMessage::Pointer(p) => {
                assert_eq!(p.spec_s3, "s3://b/tasks/big.json");
                assert_eq!(p.attempt, 1);
            }
            other => panic!("{other:?}"),
        }
        let inline = r#"{"v":1,"id":"a","kind":"shell","command":"true"}"#;
        assert!(matches!(
            TaskMessage::parse(inline),
            Ok(TaskMessage::Inline(_))
        ));
        assert_eq!(
            TaskMessage::parse(r#"{"v":3,"id":"a","spec_s3":"s3://b/k"}"#),
            Err(MessageError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn events_carry_type_and_identity() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 1, 2, 3).unwrap();
        let e = Event::new(
            "node-1",
            "i-0abc",
            at,
            EventKind::SpotInterruption {
                action: "terminate".into(),
                time: at,
            },
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "SpotInterruption");
        assert_eq!(v["v"], 1);
        assert_eq!(v["node_id"], "node-1");
        assert_eq!(v["instance_id"], "i-0abc");
        assert_eq!(v["at"], "2026-11-23T01:02:03Z");
        assert_eq!(Event::parse(&e.to_json()).unwrap(), e);
        assert_eq!(e.type_name(), "SpotInterruption");
    }
}
