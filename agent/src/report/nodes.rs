//! The node registry (DynamoDB): this node's item, written at registration, at each
//! heartbeat and once more, `deregistered`, when the agent ends. Failures are logged
//! and never stop enforcement.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use lease_common::records::{self, EXPIRES, NODE_ID, node};
use lease_common::tags::render_time;
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

/// The node's item as `lease nodes` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub node_id: String,
    pub node_name: String,
    pub instance_id: String,
    pub instance_type: String,
    pub market: String,
    pub region: String,
    pub pool: Option<String>,
    /// `lease:status` vocabulary or `deregistered`.
    pub status: String,
    pub task_id: Option<String>,
    /// Tasks the node runs at once (`max-concurrent-tasks`).
    pub slots: u32,
    pub version: String,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
}

impl NodeRecord {
    pub fn from_snapshot(
        s: &Snapshot,
        (pool, slots): (Option<String>, u32),
        registered_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            node_id: s.node_id.clone(),
            node_name: s.node_name.clone(),
            instance_id: s.instance_id.clone(),
            instance_type: s.instance_type.clone(),
            market: s.market.clone(),
            region: s.region.clone(),
            pool,
            status: s.status.to_string(),
            task_id: s.task.clone(),
            slots,
            version: s.version.clone(),
            registered_at,
            last_heartbeat: now,
            deadline: Some(s.deadline),
        }
    }
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
            let s = |v: &str| AttributeValue::S(v.to_string());
            let mut req = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(NODE_ID, s(&r.node_id))
                .item(node::NODE_NAME, s(&r.node_name))
                .item(node::INSTANCE_ID, s(&r.instance_id))
                .item(node::INSTANCE_TYPE, s(&r.instance_type))
                .item(node::MARKET, s(&r.market))
                .item(node::REGION, s(&r.region))
                .item(node::STATUS, s(&r.status))
                .item(node::SLOTS, AttributeValue::N(r.slots.to_string()))
                .item(node::VERSION, s(&r.version))
                .item(node::REGISTERED_AT, s(&render_time(r.registered_at)))
                .item(node::LAST_HEARTBEAT, s(&render_time(r.last_heartbeat)))
                .item(
                    EXPIRES,
                    AttributeValue::N(
                        (r.last_heartbeat.timestamp() + records::NODE_RETENTION_SECS).to_string(),
                    ),
                );
            if let Some(p) = &r.pool {
                req = req.item(node::POOL, s(p));
            }
            if let Some(t) = &r.task_id {
                req = req.item(node::TASK_ID, s(t));
            }
            if let Some(d) = r.deadline {
                req = req.item(node::DEADLINE, s(&render_time(d)));
            }
            req.send().await.map(|_| ()).map_err(|e| NodeTableError {
                node: r.node_id.clone(),
                table: self.table.clone(),
                reason: DisplayErrorContext(&e).to_string(),
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
        let r = NodeRecord::from_snapshot(&s, (pool.clone(), slots), registered_at, clock.now());
        if let Err(e) = table.put(&r).await {
            tracing::warn!("{e}");
        }
    }
}

/// The last write: the node is gone (the item expires a day later).
pub async fn deregister(table: &dyn NodeTable, mut last: NodeRecord, now: DateTime<Utc>) {
    last.status = "deregistered".to_string();
    last.task_id = None;
    last.last_heartbeat = now;
    match tokio::time::timeout(Duration::from_secs(3), table.put(&last)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(_) => tracing::warn!("marking node '{}' deregistered timed out", last.node_id),
    }
}
