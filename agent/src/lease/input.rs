//! What the lease loop takes in and gives out: the [`Input`]s its sources send on one
//! channel, the [`Snapshot`] it publishes, and how it ends. A leaf beside the loop, so
//! the sources, the control server's wiring and the reporters can name these types
//! without naming the loop.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::HumanDuration;
use lease_common::tags::{self, Action, NodeStatus};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::control::protocol::{Reply, Request};
use crate::deadline::{self, DeadlineSource};
use crate::idle;
use crate::spot;

/// Something a source observed.
#[derive(Debug)]
pub enum Input {
    /// The instance's tags, re-read (or why they could not be).
    Tags(Result<BTreeMap<String, String>, String>),
    Idle(idle::Sample),
    Spot(spot::InstanceAction),
    Rebalance(spot::Rebalance),
    Control(Request, oneshot::Sender<Reply>),
    /// The one-shot task is done: the lease ends as `lease:on-complete` says, as after
    /// `leased complete`.
    TaskDone {
        failed: bool,
        message: String,
    },
}

/// Why the agent was asked to stop (SIGTERM, SIGINT, a test's channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Expired,
    Idle,
    Complete,
    Failed,
}

impl EndReason {
    /// The `NodeDeregistered` reason and the `lease:end-reason` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Complete => "complete",
            EndReason::Failed => "failed",
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal: deregistered, the instance left running.
    Stopped(StopReason),
    /// The lease ended and the action was taken (`acted`), or every way of taking it
    /// failed (the process then exits non-zero so systemd restarts it to try again).
    Ended {
        reason: EndReason,
        action: Action,
        acted: bool,
    },
}

/// What `leased status`, heartbeats and `STATUS=` show. Published by the loop on a
/// watch channel after every change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub node_id: String,
    pub node_name: String,
    pub instance_id: String,
    pub instance_type: String,
    pub market: String,
    pub region: String,
    pub status: NodeStatus,
    pub deadline: DateTime<Utc>,
    pub deadline_source: DeadlineSource,
    pub on_expiry: Action,
    pub idle: bool,
    pub idle_since: Option<DateTime<Utc>>,
    /// Which signal kept the machine active at the last sample.
    pub active_because: Option<String>,
    pub idle_timeout: Option<HumanDuration>,
    pub on_idle: Action,
    pub task: Option<String>,
    pub spot_notice: Option<String>,
    pub rebalance_recommended: bool,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
}

impl Snapshot {
    pub fn time_left(&self, now: DateTime<Utc>) -> TimeDelta {
        self.deadline - now
    }

    /// The one-line `STATUS=` and the first line of `leased status`.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        let idle = match (self.idle_since, self.idle) {
            (Some(s), true) => format!("idle for {}", deadline::human_span(now - s)),
            _ => "active".to_string(),
        };
        let task = self
            .task
            .as_ref()
            .map_or("no task".to_string(), |t| format!("task {t}"));
        format!(
            "lease ends in {} ({}, then {}) · {idle} · {task}",
            deadline::human_left(self.time_left(now)),
            tags::render_time(self.deadline),
            self.on_expiry
        )
    }

    /// `leased status`'s answer: the snapshot plus `time_left_secs`, the one-line
    /// summary and the time it was asked at.
    pub fn reply(&self, now: DateTime<Utc>) -> Reply {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "time_left_secs".into(),
                serde_json::Value::from(self.time_left(now).num_seconds()),
            );
            o.insert("summary".into(), serde_json::Value::from(self.line(now)));
            o.insert(
                "now".into(),
                serde_json::Value::from(tags::render_time(now)),
            );
        }
        Reply::status(v)
    }
}
