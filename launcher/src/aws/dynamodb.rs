//! The DynamoDB task and node tables, behind a trait shaped around what `lease` does with
//! them: create a task's `queued` record, read every task or node, read one task, and
//! cancel one. Items are plain maps of [`Attr`]s named by `lease_common::records`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_types::SdkConfig;
use chrono::{DateTime, Utc};
use lease_common::records::{self, TaskRecord, TaskState, from_sdk_item, task, to_sdk_item};

use crate::error::{Error, Result};

/// The admin calls setup and teardown make on the stack's tables.
mod admin;
pub use admin::{TableAdmin, TableInfo, TtlInfo};

/// Items are `lease_common`'s: one encoding for the launcher and the agent.
pub use lease_common::records::{Attr, Item, get_s, get_time};

/// What creating a task record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Written,
    /// A record with that id exists already (an agent claimed the task first); it is
    /// left as it is, since its state is newer than `queued`.
    Exists,
}

/// The `reason` a cancelled task's record carries.
pub const CANCEL_REASON: &str = "cancelled with `lease tasks cancel`";

/// What a cancel found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// Now cancelled; the record as it was before.
    Cancelled(Item),
    /// Already in a final state, so left alone; the record as it is.
    Final(Item),
    /// No record with that id.
    Missing,
}

pub trait Tables: Sync {
    /// Writes a task record unless one with its id exists.
    fn create_task(&self, table: &str, item: &Item)
    -> impl Future<Output = Result<Created>> + Send;
    /// Every item of a table (task or node table), following Scan's pages.
    fn scan(&self, table: &str) -> impl Future<Output = Result<Vec<Item>>> + Send;
    /// One task's record.
    fn task(&self, table: &str, id: &str) -> impl Future<Output = Result<Option<Item>>> + Send;
    /// Sets a task `cancelled` unless it is already final, in one conditional write, so
    /// an agent finishing the task at the same moment is never overwritten.
    fn cancel_task(
        &self,
        table: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Cancel>> + Send;
}

/// The `queued` record `lease submit` writes for a task (records.rs attributes).
pub fn queued_record(
    task: &lease_common::messages::Task,
    summary: &str,
    now: DateTime<Utc>,
) -> Item {
    let pool = task
        .pool
        .clone()
        .unwrap_or_else(|| lease_common::stack::DEFAULT_POOL.to_string());
    TaskRecord {
        state: Some(TaskState::Queued.into()),
        kind: Some(task.spec.kind().to_string()),
        pool: Some(pool),
        attempt: Some(task.attempt),
        submitted_at: Some(now),
        updated_at: Some(now),
        summary: Some(summary.to_string()),
        // A queued task cannot outlive its message (SQS keeps one 14 days at most), so
        // the retention counted from submission covers it; the agent moves it once the
        // task ends.
        expires: Some(TaskRecord::expires_after(now)),
        ..TaskRecord::new(&task.id)
    }
    .to_item()
}

#[derive(Debug, Clone)]
pub struct AwsTables {
    ddb: aws_sdk_dynamodb::Client,
}

impl AwsTables {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            ddb: aws_sdk_dynamodb::Client::new(config),
        }
    }
}

fn is_condition_failure<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// The final states, as the `:complete`, `:failed`, `:cancelled` placeholders.
fn final_values() -> [(&'static str, AttributeValue); 3] {
    [
        (
            ":complete",
            AttributeValue::S(TaskState::Complete.as_str().into()),
        ),
        (
            ":failed",
            AttributeValue::S(TaskState::Failed.as_str().into()),
        ),
        (
            ":cancelled",
            AttributeValue::S(TaskState::Cancelled.as_str().into()),
        ),
    ]
}

impl Tables for AwsTables {
    async fn create_task(&self, table: &str, item: &Item) -> Result<Created> {
        let id = get_s(item, records::TASK_ID)
            .unwrap_or_default()
            .to_string();
        let result = self
            .ddb
            .put_item()
            .table_name(table)
            .set_item(Some(to_sdk_item(item)))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", records::TASK_ID)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::Written),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(Created::Exists),
            Err(e) => Err(Error::aws(
                format!("Failed to record task '{id}' in table '{table}'"),
                e,
            )),
        }
    }

    async fn scan(&self, table: &str) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| Error::aws(format!("Failed to read table '{table}'"), e))?;
            items.extend(out.items().iter().map(from_sdk_item));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    async fn task(&self, table: &str, id: &str) -> Result<Option<Item>> {
        let out = self
            .ddb
            .get_item()
            .table_name(table)
            .key(records::TASK_ID, AttributeValue::S(id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read task '{id}' from '{table}'"), e))?;
        Ok(out.item().map(from_sdk_item))
    }

    async fn cancel_task(&self, table: &str, id: &str, at: DateTime<Utc>) -> Result<Cancel> {
        let now = lease_common::tags::render_time(at);
        let mut req = self
            .ddb
            .update_item()
            .table_name(table)
            .key(records::TASK_ID, AttributeValue::S(id.to_string()))
            .update_expression(
                "SET #state = :cancelled, #updated = :now, #reason = :reason, \
                 #ended = if_not_exists(#ended, :now), #expires = :expires",
            )
            .condition_expression(
                "attribute_exists(#id) AND NOT #state IN (:complete, :failed, :cancelled)",
            )
            .expression_attribute_names("#id", records::TASK_ID)
            .expression_attribute_names("#state", task::STATE)
            .expression_attribute_names("#updated", task::UPDATED_AT)
            .expression_attribute_names("#reason", task::REASON)
            .expression_attribute_names("#ended", task::ENDED_AT)
            .expression_attribute_names("#expires", records::EXPIRES)
            .expression_attribute_values(":now", AttributeValue::S(now))
            .expression_attribute_values(":reason", AttributeValue::S(CANCEL_REASON.into()))
            .expression_attribute_values(
                ":expires",
                AttributeValue::N(TaskRecord::expires_after(at).to_string()),
            )
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (k, v) in final_values() {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(out) => Ok(Cancel::Cancelled(
                out.attributes().map(from_sdk_item).unwrap_or_default(),
            )),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => {
                // Read it back rather than trusting the error to carry the item: an
                // emulator or an older API may not return it.
                match self.task(table, id).await? {
                    Some(item) => Ok(Cancel::Final(item)),
                    None => Ok(Cancel::Missing),
                }
            }
            Err(e) => Err(Error::aws(
                format!("Failed to cancel task '{id}' in '{table}'"),
                e,
            )),
        }
    }
}

/// An in-memory [`Tables`] with DynamoDB's semantics for the calls lease makes.
#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeTables {
        /// Table name → key → item.
        pub tables: Mutex<BTreeMap<String, BTreeMap<String, Item>>>,
        /// Every call fails, as a table without permissions would.
        pub broken: bool,
    }

    impl FakeTables {
        pub fn with(table: &str, items: Vec<Item>) -> Self {
            let fake = Self::default();
            fake.insert(table, items);
            fake
        }

        pub fn insert(&self, table: &str, items: Vec<Item>) {
            let mut tables = self.tables.lock().unwrap();
            let t = tables.entry(table.to_string()).or_default();
            for item in items {
                let key = get_s(&item, records::TASK_ID)
                    .or_else(|| get_s(&item, records::NODE_ID))
                    .unwrap_or_default()
                    .to_string();
                t.insert(key, item);
            }
        }

        pub fn get(&self, table: &str, id: &str) -> Option<Item> {
            self.tables.lock().unwrap().get(table)?.get(id).cloned()
        }

        fn check(&self, table: &str) -> Result<()> {
            if self.broken {
                return Err(Error::Aws {
                    what: format!("Failed to read table '{table}'"),
                    message: "AccessDeniedException: not allowed".into(),
                });
            }
            Ok(())
        }
    }

    impl Tables for FakeTables {
        async fn create_task(&self, table: &str, item: &Item) -> Result<Created> {
            self.check(table)?;
            let id = get_s(item, records::TASK_ID)
                .unwrap_or_default()
                .to_string();
            let mut tables = self.tables.lock().unwrap();
            let t = tables.entry(table.to_string()).or_default();
            if t.contains_key(&id) {
                return Ok(Created::Exists);
            }
            t.insert(id, item.clone());
            Ok(Created::Written)
        }

        async fn scan(&self, table: &str) -> Result<Vec<Item>> {
            self.check(table)?;
            Ok(self
                .tables
                .lock()
                .unwrap()
                .get(table)
                .map(|t| t.values().cloned().collect())
                .unwrap_or_default())
        }

        async fn task(&self, table: &str, id: &str) -> Result<Option<Item>> {
            self.check(table)?;
            Ok(self.get(table, id))
        }

        async fn cancel_task(&self, table: &str, id: &str, at: DateTime<Utc>) -> Result<Cancel> {
            self.check(table)?;
            let mut tables = self.tables.lock().unwrap();
            let Some(item) = tables.get_mut(table).and_then(|t| t.get_mut(id)) else {
                return Ok(Cancel::Missing);
            };
            let state = get_s(item, task::STATE).and_then(|s| s.parse::<TaskState>().ok());
            if state.is_some_and(TaskState::is_final) {
                return Ok(Cancel::Final(item.clone()));
            }
            let before = item.clone();
            let now = lease_common::tags::render_time(at);
            item.insert(task::STATE.into(), Attr::s(TaskState::Cancelled.as_str()));
            item.insert(task::UPDATED_AT.into(), Attr::s(&now));
            item.insert(task::REASON.into(), Attr::s(CANCEL_REASON));
            item.entry(task::ENDED_AT.into()).or_insert(Attr::s(&now));
            item.insert(
                records::EXPIRES.into(),
                Attr::n(TaskRecord::expires_after(at)),
            );
            Ok(Cancel::Cancelled(before))
        }
    }
}
