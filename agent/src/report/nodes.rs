//! The node registry (DynamoDB): this node's item, written at registration, at each
//! heartbeat and once more, `deregistered`, when the agent ends. Failures are logged
//! and never stop enforcement.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lease_common::records::DEREGISTERED;
use lease_common::sdk_error;
use tokio::sync::watch;

use crate::BoxFuture;
use crate::clock::Clock;
use crate::lease::Snapshot;

#[derive(Debug, thiserror::Error)]
#[error("Failed to write node '{node}' to table '{table}': {reason}")]
pub struct NodeTableError {
    pub node: String,
    pub table: String,
    pub reason: String,
}

/// The node's item as `lease nodes` reads it: `lease_common`'s, one encoding for both.
pub use lease_common::records::NodeRecord;

/// The record of the node the decision loop's snapshot describes, as of a heartbeat
/// at `now`.
pub fn node_record(
    s: &Snapshot,
    (pool, slots): (Option<String>, u32),
    registered_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> NodeRecord {
    let mut r = NodeRecord {
        node_id: s.node_id.clone(),
        node_name: Some(s.node_name.clone()),
        instance_id: Some(s.instance_id.clone()),
        instance_type: Some(s.instance_type.clone()),
        market: Some(s.market.clone()),
        region: Some(s.region.clone()),
        pool,
        status: Some(s.status.to_string()),
        task_id: s.task.clone(),
        slots: Some(slots),
        version: Some(s.version.clone()),
        registered_at: Some(registered_at),
        deadline: Some(s.deadline),
        ..NodeRecord::default()
    };
    r.heartbeat(now);
    r
}

pub trait NodeTable: Send + Sync + Debug {
    fn put<'a>(&'a self, record: &'a NodeRecord) -> BoxFuture<'a, Result<(), NodeTableError>>;
}

#[derive(Debug, Clone)]
pub struct DynamoNodeTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoNodeTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

impl NodeTable for DynamoNodeTable {
    fn put<'a>(&'a self, r: &'a NodeRecord) -> BoxFuture<'a, Result<(), NodeTableError>> {
        Box::pin(async move {
            let req = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(r.to_sdk_item()));
            req.send().await.map(|_| ()).map_err(|e| NodeTableError {
                node: r.node_id.clone(),
                table: self.table.clone(),
                reason: sdk_error::render(&e),
            })
        })
    }
}

/// Writes the node's item now and every `every` from the decision loop's snapshot,
/// until the loop is gone.
pub async fn keep_registered(
    table: Arc<dyn NodeTable>,
    snapshot: watch::Receiver<Snapshot>,
    clock: Arc<dyn Clock>,
    (pool, slots): (Option<String>, u32),
    every: Duration,
) {
    let registered_at = clock.now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if snapshot.has_changed().is_err() {
            return;
        }
        let s = snapshot.borrow().clone();
        let r = node_record(&s, (pool.clone(), slots), registered_at, clock.now());
        if let Err(e) = table.put(&r).await {
            tracing::warn!("{e}");
        }
    }
}

/// The last write: the node is gone (the item expires a day later).
pub async fn deregister(table: &dyn NodeTable, mut last: NodeRecord, now: DateTime<Utc>) {
    last.status = Some(DEREGISTERED.to_string());
    last.task_id = None;
    last.heartbeat(now);
    match tokio::time::timeout(Duration::from_secs(3), table.put(&last)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(_) => tracing::warn!("marking node '{}' deregistered timed out", last.node_id),
    }
}
