//! The task table (DynamoDB): the claim that keeps a duplicate delivery from running
//! beside the first, and the task's state as `lease tasks` and `lease stats` read it.
//! Attribute names and states are `lease_common::records`' contract.

use std::collections::HashMap;
use std::fmt::Debug;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};
use lease_common::messages::{Task, TaskSpec};
use lease_common::records::{self, CLAIM_CONDITION, EXPIRES, TASK_ID, TaskState, task};
use lease_common::tags::render_time;

use crate::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("Failed to claim task '{task}' in table '{table}': {reason}")]
    Claim {
        task: String,
        table: String,
        reason: String,
    },
    #[error("Failed to update task '{task}' in table '{table}': {reason}")]
    Update {
        task: String,
        table: String,
        reason: String,
    },
    /// The record no longer names this node and attempt: the claim lapsed and another
    /// node took the task over. Nothing was written.
    #[error(
        "Task '{task}' in table '{table}' is no longer this node's (attempt {attempt}): {holder} holds it now"
    )]
    ClaimLost {
        task: String,
        table: String,
        attempt: u32,
        /// The record's node and attempt, in words.
        holder: String,
    },
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the task now. `previous`: the earlier attempt the record named
    /// (interrupted, or its claim lapsed), whose partial bundle the task may resume from.
    Claimed { previous: Option<PreviousAttempt> },
    /// The task already ended (complete, failed, cancelled): its message is a duplicate.
    Finished(TaskState),
    /// Another live claim holds it, until this time (epoch seconds) when known.
    Held { until: Option<i64> },
}

/// An earlier attempt of a task: the instance that ran it and its number, which
/// together name its partial bundle (`lease_common::layout::attempt_bundle_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousAttempt {
    pub instance_id: String,
    pub attempt: u32,
}

/// The earlier attempt `old` (the record before the claim) names, when it names an
/// instance and an attempt lower than `attempt`; the same attempt again is a
/// duplicate delivery, not a resumption.
pub fn previous_attempt(
    old: &HashMap<String, AttributeValue>,
    attempt: u32,
) -> Option<PreviousAttempt> {
    let instance_id = old.get(task::INSTANCE_ID)?.as_s().ok()?;
    let old_attempt: u32 = old.get(task::ATTEMPT)?.as_n().ok()?.parse().ok()?;
    (!instance_id.is_empty() && old_attempt < attempt).then(|| PreviousAttempt {
        instance_id: instance_id.clone(),
        attempt: old_attempt,
    })
}

/// Who claims a task, and until when.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    pub node_id: &'a str,
    pub instance_id: &'a str,
    pub now: DateTime<Utc>,
    pub claim_until: DateTime<Utc>,
}

/// The claim a write is made under: the node and attempt the record must still name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node_id: String,
    pub attempt: u32,
}

/// Placeholders: `#task_id`, `#node`, `#attempt`, `:holder_node` (S),
/// `:holder_attempt` (N). A record that does not exist is written (a one-shot task whose
/// claim could not be written, a record expired): only another holder refuses it.
pub const HOLDER_CONDITION: &str =
    "(attribute_not_exists(#task_id) OR (#node = :holder_node AND #attempt = :holder_attempt))";

/// A change of a task's record. Fields left `None` are not written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub state: Option<TaskState>,
    pub claim_until: Option<DateTime<Utc>>,
    pub attempt: Option<u32>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub bundle: Option<String>,
    pub log: Option<String>,
    /// Sets `ended_at` and the record's retention (`expires`).
    pub ended: bool,
    /// Written only while the record is in this state; otherwise nothing changes and
    /// the update answers `Ok(None)`. For a write that may arrive after a later one.
    pub if_state: Option<TaskState>,
    /// Written only while the record still names this node and attempt; otherwise
    /// nothing changes and the update answers [`RecordError::ClaimLost`]. Every write
    /// after the claim carries it, so a node whose claim lapsed (frozen, cut off) cannot
    /// overwrite the record of the node that took the task over.
    pub holder: Option<Holder>,
}

pub trait TaskTable: Send + Sync + Debug {
    fn claim<'a>(
        &'a self,
        task: &'a Task,
        by: Claimant<'a>,
    ) -> BoxFuture<'a, Result<Claim, RecordError>>;
    /// Writes `change` at `now` and returns the state the record holds afterwards (so
    /// a `lease tasks cancel` shows up on the next visibility extension).
    fn update<'a>(
        &'a self,
        task_id: &'a str,
        change: Change,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<TaskState>, RecordError>>;
}

#[derive(Debug, Clone)]
pub struct DynamoTaskTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTaskTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// One line naming what the task does, for `lease tasks`.
pub fn summary(spec: &TaskSpec) -> String {
    let text = match spec {
        TaskSpec::Shell(s) => s.command.clone(),
        TaskSpec::Docker(d) => d.image.clone(),
        TaskSpec::Claude(c) => c.prompt.clone(),
    };
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

fn state_of(item: &HashMap<String, AttributeValue>) -> Option<TaskState> {
    item.get(task::STATE)
        .and_then(|v| v.as_s().ok())
        .and_then(|v| v.parse().ok())
}

impl TaskTable for DynamoTaskTable {
    fn claim<'a>(
        &'a self,
        t: &'a Task,
        by: Claimant<'a>,
    ) -> BoxFuture<'a, Result<Claim, RecordError>> {
        Box::pin(async move {
            let err = |reason: String| RecordError::Claim {
                task: t.id.clone(),
                table: self.table.clone(),
                reason,
            };
            let mut set = vec![
                "#state = :running",
                "#attempt = :attempt",
                "#node = :node",
                "#instance = :instance",
                "#claim = :claim_until",
                "#started = :at",
                "#updated = :at",
                "#kind = :kind",
                "#summary = :summary",
            ];
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(TASK_ID, s(&t.id))
                .condition_expression(CLAIM_CONDITION)
                .expression_attribute_names("#state", task::STATE)
                .expression_attribute_names("#claim", task::CLAIM_UNTIL)
                .expression_attribute_names("#attempt", task::ATTEMPT)
                .expression_attribute_names("#node", task::NODE_ID)
                .expression_attribute_names("#instance", task::INSTANCE_ID)
                .expression_attribute_names("#started", task::STARTED_AT)
                .expression_attribute_names("#updated", task::UPDATED_AT)
                .expression_attribute_names("#kind", task::KIND)
                .expression_attribute_names("#summary", task::SUMMARY)
                .expression_attribute_values(":now", n(by.now.timestamp()))
                .expression_attribute_values(":running", s(TaskState::Running.as_str()))
                .expression_attribute_values(":complete", s(TaskState::Complete.as_str()))
                .expression_attribute_values(":failed", s(TaskState::Failed.as_str()))
                .expression_attribute_values(":cancelled", s(TaskState::Cancelled.as_str()))
                .expression_attribute_values(":queued", s(TaskState::Queued.as_str()))
                .expression_attribute_values(":interrupted", s(TaskState::Interrupted.as_str()))
                .expression_attribute_values(":attempt", n(t.attempt))
                .expression_attribute_values(":node", s(by.node_id))
                .expression_attribute_values(":instance", s(by.instance_id))
                .expression_attribute_values(":claim_until", n(by.claim_until.timestamp()))
                .expression_attribute_values(":at", s(render_time(by.now)))
                .expression_attribute_values(":kind", s(t.spec.kind()))
                .expression_attribute_values(":summary", s(summary(&t.spec)));
            if let Some(pool) = &t.pool {
                set.push("#pool = :pool");
                req = req
                    .expression_attribute_names("#pool", task::POOL)
                    .expression_attribute_values(":pool", s(pool));
            }
            // The old record names the attempt this one takes over, if any.
            let result = req
                .update_expression(format!("SET {}", set.join(", ")))
                .return_values(ReturnValue::AllOld)
                .send()
                .await;
            match result {
                Ok(out) => Ok(Claim::Claimed {
                    previous: out
                        .attributes()
                        .and_then(|old| previous_attempt(old, t.attempt)),
                }),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                {
                    let item = self
                        .client
                        .get_item()
                        .table_name(&self.table)
                        .key(TASK_ID, s(&t.id))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| err(DisplayErrorContext(&e).to_string()))?;
                    let item = item.item().cloned().unwrap_or_default();
                    match state_of(&item) {
                        Some(st) if st.is_final() => Ok(Claim::Finished(st)),
                        _ => Ok(Claim::Held {
                            until: item
                                .get(task::CLAIM_UNTIL)
                                .and_then(|v| v.as_n().ok())
                                .and_then(|v| v.parse().ok()),
                        }),
                    }
                }
                Err(e) => Err(err(DisplayErrorContext(&e).to_string())),
            }
        })
    }

    fn update<'a>(
        &'a self,
        task_id: &'a str,
        change: Change,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<TaskState>, RecordError>> {
        Box::pin(async move {
            let mut u = UpdateBuilder::default();
            u.set("updated", task::UPDATED_AT, s(render_time(now)));
            if let Some(st) = change.state {
                u.set("state", task::STATE, s(st.as_str()));
            }
            if let Some(c) = change.claim_until {
                u.set("claim", task::CLAIM_UNTIL, n(c.timestamp()));
            }
            if let Some(a) = change.attempt {
                u.set("attempt", task::ATTEMPT, n(a));
            }
            if let Some(c) = change.exit_code {
                u.set("exit", task::EXIT_CODE, n(c));
            }
            if let Some(r) = change.reason {
                u.set("reason", task::REASON, s(r));
            }
            if let Some(b) = change.bundle {
                u.set("bundle", task::BUNDLE, s(b));
            }
            if let Some(l) = change.log {
                u.set("log", task::LOG, s(l));
            }
            if change.ended {
                u.set("ended", task::ENDED_AT, s(render_time(now)));
                u.set(
                    "expires",
                    EXPIRES,
                    n(now.timestamp() + records::TASK_RETENTION_SECS),
                );
            }
            let UpdateBuilder { set, names, values } = u;
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(TASK_ID, s(task_id))
                .update_expression(format!("SET {}", set.join(", ")))
                .return_values(ReturnValue::AllNew);
            let mut conditions = Vec::new();
            if let Some(st) = change.if_state {
                conditions.push("#if_state = :if_state");
                req = req
                    .expression_attribute_names("#if_state", task::STATE)
                    .expression_attribute_values(":if_state", s(st.as_str()));
            }
            if let Some(h) = &change.holder {
                conditions.push(HOLDER_CONDITION);
                req = req
                    .expression_attribute_names("#task_id", TASK_ID)
                    .expression_attribute_names("#node", task::NODE_ID)
                    .expression_attribute_names("#attempt", task::ATTEMPT)
                    .expression_attribute_values(":holder_node", s(&h.node_id))
                    .expression_attribute_values(":holder_attempt", n(h.attempt))
                    // What the record holds instead, to tell a lost claim from a state
                    // that moved on.
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
            }
            if !conditions.is_empty() {
                req = req.condition_expression(conditions.join(" AND "));
            }
            // `#attempt` may be both written and checked: the same name, set twice.
            for (k, v) in names {
                req = req.expression_attribute_names(k, v);
            }
            for (k, v) in values {
                req = req.expression_attribute_values(k, v);
            }
            match req.send().await {
                Ok(out) => Ok(out.attributes().and_then(state_of)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                {
                    let found = e
                        .as_service_error()
                        .and_then(|se| match se {
                            UpdateItemError::ConditionalCheckFailedException(c) => c.item(),
                            _ => None,
                        })
                        .cloned()
                        .unwrap_or_default();
                    match &change.holder {
                        Some(h) if !holds(&found, h) => Err(RecordError::ClaimLost {
                            task: task_id.to_string(),
                            table: self.table.clone(),
                            attempt: h.attempt,
                            holder: holder_of(&found),
                        }),
                        // The holder's own record, in another state than `if_state`.
                        _ => Ok(None),
                    }
                }
                Err(e) => Err(RecordError::Update {
                    task: task_id.to_string(),
                    table: self.table.clone(),
                    reason: DisplayErrorContext(&e).to_string(),
                }),
            }
        })
    }
}

/// Whether `item` (the record as it is) still names `h`; a record that is gone counts,
/// as [`HOLDER_CONDITION`] has it.
fn holds(item: &HashMap<String, AttributeValue>, h: &Holder) -> bool {
    if item.is_empty() {
        return true;
    }
    let node = item.get(task::NODE_ID).and_then(|v| v.as_s().ok());
    let attempt = item
        .get(task::ATTEMPT)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<u32>().ok());
    node == Some(&h.node_id) && attempt == Some(h.attempt)
}

/// "node 'X' (attempt 2)", as far as the record says.
fn holder_of(item: &HashMap<String, AttributeValue>) -> String {
    let node = item
        .get(task::NODE_ID)
        .and_then(|v| v.as_s().ok())
        .map_or("another node".to_string(), |n| format!("node '{n}'"));
    match item.get(task::ATTEMPT).and_then(|v| v.as_n().ok()) {
        Some(a) => format!("{node} (attempt {a})"),
        None => node,
    }
}

/// A `SET a = :a, …` expression with its names and values.
#[derive(Debug, Default)]
struct UpdateBuilder {
    set: Vec<String>,
    names: Vec<(String, &'static str)>,
    values: Vec<(String, AttributeValue)>,
}

impl UpdateBuilder {
    fn set(&mut self, placeholder: &str, attr: &'static str, value: AttributeValue) {
        self.set.push(format!("#{placeholder} = :{placeholder}"));
        self.names.push((format!("#{placeholder}"), attr));
        self.values.push((format!(":{placeholder}"), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_common::messages::ShellSpec;

    #[test]
    fn only_a_lower_attempt_of_a_named_instance_is_a_previous_one() {
        let old = |instance: Option<&str>, attempt: Option<&str>| {
            let mut m = HashMap::new();
            if let Some(i) = instance {
                m.insert(task::INSTANCE_ID.to_string(), s(i));
            }
            if let Some(a) = attempt {
                m.insert(task::ATTEMPT.to_string(), AttributeValue::N(a.into()));
            }
            m
        };
        assert_eq!(
            previous_attempt(&old(Some("i-0"), Some("1")), 2),
            Some(PreviousAttempt {
                instance_id: "i-0".into(),
                attempt: 1
            })
        );
        assert_eq!(previous_attempt(&old(Some("i-0"), Some("2")), 2), None);
        assert_eq!(previous_attempt(&old(None, Some("1")), 2), None);
        assert_eq!(previous_attempt(&old(Some("i-0"), None), 2), None);
        assert_eq!(previous_attempt(&HashMap::new(), 1), None, "a new record");
    }

    #[test]
    fn a_record_is_held_only_by_its_node_and_attempt() {
        let h = Holder {
            node_id: "i-a".into(),
            attempt: 2,
        };
        let item = |node: &str, attempt: &str| {
            HashMap::from([
                (task::NODE_ID.to_string(), s(node)),
                (task::ATTEMPT.to_string(), AttributeValue::N(attempt.into())),
            ])
        };
        assert!(holds(&item("i-a", "2"), &h));
        assert!(!holds(&item("i-b", "2"), &h), "another node took it over");
        assert!(!holds(&item("i-a", "3"), &h), "a later attempt, even here");
        assert!(
            holds(&HashMap::new(), &h),
            "no record: nobody else holds it"
        );
        assert_eq!(holder_of(&item("i-b", "2")), "node 'i-b' (attempt 2)");
    }

    #[test]
    fn the_summary_is_the_first_line_cut_short() {
        let spec = TaskSpec::Shell(ShellSpec {
            command: format!("{}\nsecond line", "x".repeat(300)),
        });
        assert_eq!(summary(&spec), "x".repeat(120));
    }
}
