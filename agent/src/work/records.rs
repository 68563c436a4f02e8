//! The task table (DynamoDB): the claim that keeps a duplicate delivery from running
//! beside the first, and the task's state as `lease tasks` and `lease stats` read it.
//! Attribute names and states are `lease_common::records`' contract.

use std::fmt::Debug;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};
use lease_common::messages::{Task, TaskSpec};
use lease_common::records::{CLAIM_CONDITION, SdkItem, TASK_ID, TaskRecord, TaskState, task};
use lease_common::sdk_error;

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
pub fn previous_attempt(old: &TaskRecord, attempt: u32) -> Option<PreviousAttempt> {
    let instance_id = old.instance_id.as_ref()?;
    let old_attempt = old.attempt?;
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

fn state_of(item: &SdkItem) -> Option<TaskState> {
    TaskRecord::from_sdk_item(item).task_state()
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
            let claimed = TaskRecord {
                state: Some(TaskState::Running.into()),
                attempt: Some(t.attempt),
                node_id: Some(by.node_id.to_string()),
                instance_id: Some(by.instance_id.to_string()),
                claim_until: Some(by.claim_until.timestamp()),
                started_at: Some(by.now),
                updated_at: Some(by.now),
                kind: Some(t.spec.kind().to_string()),
                summary: Some(summary(&t.spec)),
                pool: t.pool.clone(),
                ..TaskRecord::default()
            };
            let set = SetExpression::of(&claimed);
            let req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(TASK_ID, s(&t.id))
                .condition_expression(CLAIM_CONDITION)
                .expression_attribute_names("#state", task::STATE)
                .expression_attribute_names("#claim", task::CLAIM_UNTIL)
                .expression_attribute_values(":now", n(by.now.timestamp()))
                .expression_attribute_values(":complete", s(TaskState::Complete.as_str()))
                .expression_attribute_values(":failed", s(TaskState::Failed.as_str()))
                .expression_attribute_values(":cancelled", s(TaskState::Cancelled.as_str()))
                .expression_attribute_values(":queued", s(TaskState::Queued.as_str()))
                .expression_attribute_values(":interrupted", s(TaskState::Interrupted.as_str()));
            // The old record names the attempt this one takes over, if any.
            let result = set
                .apply(req)
                .return_values(ReturnValue::AllOld)
                .send()
                .await;
            match result {
                Ok(out) => Ok(Claim::Claimed {
                    previous: out.attributes().and_then(|old| {
                        previous_attempt(&TaskRecord::from_sdk_item(old), t.attempt)
                    }),
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
                        .map_err(|e| err(sdk_error::render(&e)))?;
                    let record = item
                        .item()
                        .map(TaskRecord::from_sdk_item)
                        .unwrap_or_default();
                    match record.task_state() {
                        Some(st) if st.is_final() => Ok(Claim::Finished(st)),
                        _ => Ok(Claim::Held {
                            until: record.claim_until,
                        }),
                    }
                }
                Err(e) => Err(err(sdk_error::render(&e))),
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
            let changed = TaskRecord {
                updated_at: Some(now),
                state: change.state.map(Into::into),
                claim_until: change.claim_until.map(|c| c.timestamp()),
                attempt: change.attempt,
                exit_code: change.exit_code,
                reason: change.reason,
                bundle: change.bundle,
                log: change.log,
                ended_at: change.ended.then_some(now),
                expires: change.ended.then(|| TaskRecord::expires_after(now)),
                ..TaskRecord::default()
            };
            let set = SetExpression::of(&changed);
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(TASK_ID, s(task_id))
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
            match set.apply(req).send().await {
                Ok(out) => Ok(out.attributes().and_then(state_of)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                {
                    // No item (or an empty one): the record is gone.
                    let found = e
                        .as_service_error()
                        .and_then(|se| match se {
                            UpdateItemError::ConditionalCheckFailedException(c) => c.item(),
                            _ => None,
                        })
                        .filter(|item| !item.is_empty())
                        .map(TaskRecord::from_sdk_item);
                    match &change.holder {
                        Some(h) if !holds(found.as_ref(), h) => Err(RecordError::ClaimLost {
                            task: task_id.to_string(),
                            table: self.table.clone(),
                            attempt: h.attempt,
                            holder: found.as_ref().map_or("another node".into(), holder_of),
                        }),
                        // The holder's own record, in another state than `if_state`.
                        _ => Ok(None),
                    }
                }
                Err(e) => Err(RecordError::Update {
                    task: task_id.to_string(),
                    table: self.table.clone(),
                    reason: sdk_error::render(&e),
                }),
            }
        })
    }
}

/// Whether `found` (the record as it is) still names `h`; a record that is gone counts,
/// as [`HOLDER_CONDITION`] has it.
fn holds(found: Option<&TaskRecord>, h: &Holder) -> bool {
    found.is_none_or(|r| r.node_id.as_deref() == Some(&h.node_id) && r.attempt == Some(h.attempt))
}

/// "node 'X' (attempt 2)", as far as the record says.
fn holder_of(r: &TaskRecord) -> String {
    let node = r
        .node_id
        .as_ref()
        .map_or("another node".to_string(), |n| format!("node '{n}'"));
    match r.attempt {
        Some(a) => format!("{node} (attempt {a})"),
        None => node,
    }
}

/// `SET #a = :a, …` for each attribute a partial record sets, encoded as the record
/// encodes it. The placeholders are the attribute names, so a condition that names
/// the same attribute under the same placeholder (`#attempt`) refers to the same one.
#[derive(Debug)]
struct SetExpression {
    set: Vec<String>,
    values: Vec<(String, AttributeValue)>,
}

impl SetExpression {
    fn of(record: &TaskRecord) -> Self {
        let mut set = Vec::new();
        let mut values = Vec::new();
        for (name, value) in record.to_item() {
            set.push(format!("#{name} = :{name}"));
            values.push((name, value.to_sdk()));
        }
        Self { set, values }
    }

    fn apply(
        self,
        mut req: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        req = req.update_expression(format!("SET {}", self.set.join(", ")));
        for (name, value) in self.values {
            req = req
                .expression_attribute_names(format!("#{name}"), &name)
                .expression_attribute_values(format!(":{name}"), value);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_common::messages::ShellSpec;

    #[test]
    fn only_a_lower_attempt_of_a_named_instance_is_a_previous_one() {
        // As the old item reads back: attributes absent unless given.
        let old = |instance: Option<&str>, attempt: Option<&str>| {
            let mut m = SdkItem::new();
            if let Some(i) = instance {
                m.insert(task::INSTANCE_ID.to_string(), s(i));
            }
            if let Some(a) = attempt {
                m.insert(task::ATTEMPT.to_string(), AttributeValue::N(a.into()));
            }
            TaskRecord::from_sdk_item(&m)
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
        assert_eq!(
            previous_attempt(&TaskRecord::default(), 1),
            None,
            "a new record"
        );
    }

    #[test]
    fn a_record_is_held_only_by_its_node_and_attempt() {
        let h = Holder {
            node_id: "i-a".into(),
            attempt: 2,
        };
        let item = |node: &str, attempt: &str| {
            TaskRecord::from_sdk_item(&SdkItem::from([
                (task::NODE_ID.to_string(), s(node)),
                (task::ATTEMPT.to_string(), AttributeValue::N(attempt.into())),
            ]))
        };
        assert!(holds(Some(&item("i-a", "2")), &h));
        assert!(
            !holds(Some(&item("i-b", "2")), &h),
            "another node took it over"
        );
        assert!(
            !holds(Some(&item("i-a", "3")), &h),
            "a later attempt, even here"
        );
        assert!(holds(None, &h), "no record: nobody else holds it");
        assert_eq!(holder_of(&item("i-b", "2")), "node 'i-b' (attempt 2)");
    }

    #[test]
    fn a_change_sets_each_attribute_it_carries_under_its_own_name() {
        let change = TaskRecord {
            attempt: Some(2),
            exit_code: Some(0),
            ..TaskRecord::default()
        };
        let set = SetExpression::of(&change);
        assert_eq!(set.set, ["#attempt = :attempt", "#exit_code = :exit_code"]);
        assert_eq!(
            set.values,
            [
                ("attempt".to_string(), AttributeValue::N("2".into())),
                ("exit_code".to_string(), AttributeValue::N("0".into())),
            ]
        );
    }

    #[test]
    fn the_summary_is_the_first_line_cut_short() {
        let spec = TaskSpec::Shell(ShellSpec {
            command: format!("{}\nsecond line", "x".repeat(300)),
        });
        assert_eq!(summary(&spec), "x".repeat(120));
    }
}
