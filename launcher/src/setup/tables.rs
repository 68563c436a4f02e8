//! DynamoDB: the node registry and the task records, keyed as
//! `lease_common::records` fixes, billed per request, expiring through TTL on
//! `expires`.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus, Tag, TimeToLiveSpecification, TimeToLiveStatus,
};
use lease_common::records::EXPIRES;

use super::{Outcome, not_ours};
use crate::error::{Error, Result};

/// A new table takes seconds to become ACTIVE; TTL cannot be set before. Minutes is
/// the documented worst case.
const ACTIVE_WITHIN: Duration = Duration::from_secs(300);
const ACTIVE_POLL: Duration = Duration::from_secs(1);

fn build_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::usage(format!("{what}: {e}"))
}

async fn describe(db: &Client, table: &str) -> Result<Option<TableDescription>> {
    match db.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("Failed to read table '{table}'"), e)),
    }
}

/// The table's key schema is exactly `key` (S) as its partition key and nothing else.
pub fn key_matches(t: &TableDescription, key: &str) -> bool {
    let schema = t.key_schema();
    schema.len() == 1
        && schema[0].attribute_name() == key
        && schema[0].key_type() == &KeyType::Hash
        && t.attribute_definitions()
            .iter()
            .any(|d| d.attribute_name() == key && d.attribute_type() == &ScalarAttributeType::S)
}

async fn wait_active(db: &Client, table: &str) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        let status = describe(db, table)
            .await?
            .and_then(|t| t.table_status().cloned());
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        if start.elapsed() > ACTIVE_WITHIN {
            return Err(Error::Aws {
                what: format!("Table '{table}'"),
                message: format!("not ACTIVE after {ACTIVE_WITHIN:?} (status {status:?})"),
            });
        }
        tokio::time::sleep(ACTIVE_POLL).await;
    }
}

async fn tagged(db: &Client, table: &str, arn: &str, tag: &(String, String)) -> Result<bool> {
    let out = db
        .list_tags_of_resource()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to read the tags of table '{table}'"), e))?;
    Ok(out
        .tags()
        .iter()
        .any(|t| t.key() == tag.0 && t.value() == tag.1))
}

fn dynamo_tag(tag: &(String, String)) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| build_err("tag", e))
}

/// The table exists with `key` as its partition key, on-demand billing, TTL on
/// `expires` and the stack's tag. A table of that name with another key is an error:
/// keys cannot change, and its items are someone's data.
pub async fn ensure_table(
    db: &Client,
    table: &str,
    key: &str,
    tag: &(String, String),
) -> Result<Outcome> {
    let mut updated = false;
    let created = match describe(db, table).await? {
        None => {
            db.create_table()
                .table_name(table)
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(key)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(|e| build_err("key schema", e))?,
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(key)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| build_err("attribute", e))?,
                )
                .billing_mode(BillingMode::PayPerRequest)
                .tags(dynamo_tag(tag)?)
                .send()
                .await
                .map_err(|e| Error::aws(format!("Failed to create table '{table}'"), e))?;
            true
        }
        Some(t) => {
            if !key_matches(&t, key) {
                return Err(Error::Refused(format!(
                    "Table '{table}' exists with a key other than '{key}' (S): delete or rename it, or use another --stack"
                )));
            }
            let on_demand = t
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
                .is_some_and(|m| m == &BillingMode::PayPerRequest);
            if !on_demand {
                wait_active(db, table).await?;
                db.update_table()
                    .table_name(table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::aws(format!("Failed to switch table '{table}' to on-demand"), e)
                    })?;
                updated = true;
            }
            let arn = t.table_arn().unwrap_or_default().to_string();
            if !tagged(db, table, &arn, tag).await? {
                db.tag_resource()
                    .resource_arn(&arn)
                    .tags(dynamo_tag(tag)?)
                    .send()
                    .await
                    .map_err(|e| Error::aws(format!("Failed to tag table '{table}'"), e))?;
                updated = true;
            }
            false
        }
    };
    wait_active(db, table).await?;
    let ttl = db
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to read the TTL of table '{table}'"), e))?;
    let d = ttl.time_to_live_description();
    let status = d.and_then(|d| d.time_to_live_status());
    let attribute = d.and_then(|d| d.attribute_name());
    match ttl_action(status, attribute) {
        TtlAction::Keep => {}
        TtlAction::Conflict(other) => {
            return Err(Error::Refused(format!(
                "Table '{table}' expires items by '{other}', not '{EXPIRES}': turn its TTL off first"
            )));
        }
        TtlAction::Enable => {
            db.update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(EXPIRES)
                        .build()
                        .map_err(|e| build_err("TTL", e))?,
                )
                .send()
                .await
                .map_err(|e| Error::aws(format!("Failed to turn on TTL for table '{table}'"), e))?;
            updated = true;
        }
    }
    Ok(Outcome::of(created, updated))
}

/// What a table's TTL needs, given what DescribeTimeToLive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlAction {
    Keep,
    Enable,
    /// TTL is on for another attribute: changing it would change which of someone's
    /// items expire, so it is refused, naming that attribute.
    Conflict(String),
}

pub fn ttl_action(status: Option<&TimeToLiveStatus>, attribute: Option<&str>) -> TtlAction {
    match status {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => match attribute {
            Some(EXPIRES) => TtlAction::Keep,
            other => TtlAction::Conflict(other.unwrap_or_default().to_string()),
        },
        _ => TtlAction::Enable,
    }
}

pub async fn remove_table(
    db: &Client,
    table: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    let Some(t) = describe(db, table).await? else {
        return Ok((Outcome::Absent, None));
    };
    if !tagged(db, table, t.table_arn().unwrap_or_default(), tag).await? {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    match db.delete_table().table_name(table).send().await {
        Ok(_) => Ok((Outcome::Deleted, None)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok((Outcome::Absent, None))
        }
        Err(e) => Err(Error::aws(format!("Failed to delete table '{table}'"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_turned_on_for_expires_and_never_moved_from_another_attribute() {
        assert_eq!(
            ttl_action(Some(&TimeToLiveStatus::Enabled), Some(EXPIRES)),
            TtlAction::Keep
        );
        assert_eq!(
            ttl_action(Some(&TimeToLiveStatus::Enabling), Some(EXPIRES)),
            TtlAction::Keep
        );
        assert_eq!(
            ttl_action(Some(&TimeToLiveStatus::Disabled), None),
            TtlAction::Enable
        );
        assert_eq!(ttl_action(None, None), TtlAction::Enable);
        assert_eq!(
            ttl_action(Some(&TimeToLiveStatus::Enabled), Some("ttl")),
            TtlAction::Conflict("ttl".into())
        );
    }
}
