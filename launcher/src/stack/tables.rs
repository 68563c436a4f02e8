//! DynamoDB: the node registry and the task records, keyed as
//! `lease_common::records` fixes, billed per request, expiring through TTL on
//! `expires`.

use std::time::Duration;

use lease_common::records::EXPIRES;

use super::{Outcome, not_ours};
use crate::aws::StackTag;
use crate::aws::dynamodb::{TableAdmin, TableInfo, TtlInfo};
use crate::error::{Error, Result};

/// A new table takes seconds to become ACTIVE; TTL cannot be set before. Minutes is
/// the documented worst case.
const ACTIVE_WITHIN: Duration = Duration::from_secs(300);
const ACTIVE_POLL: Duration = Duration::from_secs(1);

/// The table's key schema is exactly `key` (S) as its partition key and nothing else.
pub fn key_matches(t: &TableInfo, key: &str) -> bool {
    t.string_key.as_deref() == Some(key)
}

async fn wait_active<D: TableAdmin>(db: &D, table: &str) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        let t = db.table(table).await?;
        if t.as_ref().is_some_and(|t| t.active) {
            return Ok(());
        }
        if start.elapsed() > ACTIVE_WITHIN {
            return Err(Error::Aws {
                what: format!("Table '{table}'"),
                message: format!(
                    "not ACTIVE after {ACTIVE_WITHIN:?} (status {:?})",
                    t.and_then(|t| t.status)
                ),
            });
        }
        tokio::time::sleep(ACTIVE_POLL).await;
    }
}

/// The table exists with `key` as its partition key, on-demand billing, TTL on
/// `expires` and the stack's tag. A table of that name with another key is an error:
/// keys cannot change, and its items are someone's data.
pub async fn ensure_table<D: TableAdmin>(
    db: &D,
    table: &str,
    key: &str,
    tag: &StackTag,
) -> Result<Outcome> {
    let mut updated = false;
    let created = match db.table(table).await? {
        None => {
            db.create_table(table, key, tag).await?;
            true
        }
        Some(t) => {
            if !key_matches(&t, key) {
                return Err(Error::Refused(format!(
                    "Table '{table}' exists with a key other than '{key}' (S): delete or rename it, or use another --stack"
                )));
            }
            if !t.on_demand {
                wait_active(db, table).await?;
                db.set_on_demand(table).await?;
                updated = true;
            }
            if !db.table_tags(table, &t.arn).await?.contains(tag) {
                db.tag_table(table, &t.arn, tag).await?;
                updated = true;
            }
            false
        }
    };
    wait_active(db, table).await?;
    match ttl_action(&db.ttl(table).await?) {
        TtlAction::Keep => {}
        TtlAction::Conflict(other) => {
            return Err(Error::Refused(format!(
                "Table '{table}' expires items by '{other}', not '{EXPIRES}': turn its TTL off first"
            )));
        }
        TtlAction::Enable => {
            db.enable_ttl(table, EXPIRES).await?;
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

pub fn ttl_action(ttl: &TtlInfo) -> TtlAction {
    let on = matches!(ttl.status.as_deref(), Some("ENABLED" | "ENABLING"));
    if !on {
        return TtlAction::Enable;
    }
    match ttl.attribute.as_deref() {
        Some(EXPIRES) => TtlAction::Keep,
        other => TtlAction::Conflict(other.unwrap_or_default().to_string()),
    }
}

pub async fn remove_table<D: TableAdmin>(
    db: &D,
    table: &str,
    tag: &StackTag,
) -> Result<(Outcome, Option<String>)> {
    let Some(t) = db.table(table).await? else {
        return Ok((Outcome::Absent, None));
    };
    if !db.table_tags(table, &t.arn).await?.contains(tag) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    if db.delete_table(table).await? {
        Ok((Outcome::Deleted, None))
    } else {
        Ok((Outcome::Absent, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_turned_on_for_expires_and_never_moved_from_another_attribute() {
        let ttl = |status: Option<&str>, attribute: Option<&str>| TtlInfo {
            status: status.map(str::to_string),
            attribute: attribute.map(str::to_string),
        };
        assert_eq!(
            ttl_action(&ttl(Some("ENABLED"), Some(EXPIRES))),
            TtlAction::Keep
        );
        assert_eq!(
            ttl_action(&ttl(Some("ENABLING"), Some(EXPIRES))),
            TtlAction::Keep
        );
        assert_eq!(ttl_action(&ttl(Some("DISABLED"), None)), TtlAction::Enable);
        assert_eq!(ttl_action(&ttl(None, None)), TtlAction::Enable);
        assert_eq!(
            ttl_action(&ttl(Some("ENABLED"), Some("ttl"))),
            TtlAction::Conflict("ttl".into())
        );
    }

    #[test]
    fn a_table_is_ours_only_keyed_by_one_string_key() {
        let t = TableInfo {
            string_key: Some("node_id".into()),
            ..TableInfo::default()
        };
        assert!(key_matches(&t, "node_id"));
        assert!(!key_matches(&t, "task_id"));
        assert!(!key_matches(&TableInfo::default(), "node_id"));
    }
}
