//! A node record, typed: the item the node table holds, written by the agent at
//! registration, at each heartbeat and when it leaves, read by `lease nodes`. The
//! attributes are optional for the reader's sake: an agent older than an attribute
//! (`slots`) does not write it, and the reader shows a dash.

use chrono::{DateTime, Utc};

use super::attr::{Attr, Item, SdkItem, from_sdk_item, get_n, get_s, get_time, put, to_sdk_item};
use super::{EXPIRES, NODE_ID, NODE_RETENTION_SECS, node};

/// The status an agent records when it leaves.
pub const DEREGISTERED: &str = "deregistered";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub node_name: Option<String>,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub market: Option<String>,
    pub region: Option<String>,
    pub pool: Option<String>,
    /// `lease:status` vocabulary or [`DEREGISTERED`].
    pub status: Option<String>,
    /// The task running now, absent when none.
    pub task_id: Option<String>,
    /// Tasks the node runs at once (`max-concurrent-tasks`).
    pub slots: Option<u32>,
    pub version: Option<String>,
    pub registered_at: Option<DateTime<Utc>>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The lease's deadline, absent for `lease:ttl=none`.
    pub deadline: Option<DateTime<Utc>>,
    pub expires: Option<i64>,
}

impl NodeRecord {
    /// Records a heartbeat at `now`; the item then lives [`NODE_RETENTION_SECS`] more.
    pub fn heartbeat(&mut self, now: DateTime<Utc>) {
        self.last_heartbeat = Some(now);
        self.expires = Some(now.timestamp() + NODE_RETENTION_SECS);
    }

    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        item.insert(NODE_ID.to_string(), Attr::s(&self.node_id));
        put(&mut item, node::NODE_NAME, self.node_name.as_ref(), Attr::s);
        put(
            &mut item,
            node::INSTANCE_ID,
            self.instance_id.as_ref(),
            Attr::s,
        );
        put(
            &mut item,
            node::INSTANCE_TYPE,
            self.instance_type.as_ref(),
            Attr::s,
        );
        put(&mut item, node::MARKET, self.market.as_ref(), Attr::s);
        put(&mut item, node::REGION, self.region.as_ref(), Attr::s);
        put(&mut item, node::POOL, self.pool.as_ref(), Attr::s);
        put(&mut item, node::STATUS, self.status.as_ref(), Attr::s);
        put(&mut item, node::TASK_ID, self.task_id.as_ref(), Attr::s);
        put(&mut item, node::SLOTS, self.slots, Attr::n);
        put(&mut item, node::VERSION, self.version.as_ref(), Attr::s);
        put(
            &mut item,
            node::REGISTERED_AT,
            self.registered_at,
            Attr::time,
        );
        put(
            &mut item,
            node::LAST_HEARTBEAT,
            self.last_heartbeat,
            Attr::time,
        );
        put(&mut item, node::DEADLINE, self.deadline, Attr::time);
        put(&mut item, EXPIRES, self.expires, Attr::n);
        item
    }

    /// Reads what it can, as [`super::TaskRecord::from_item`] does.
    pub fn from_item(item: &Item) -> Self {
        let s = |name: &str| get_s(item, name).map(str::to_string);
        Self {
            node_id: s(NODE_ID).unwrap_or_default(),
            node_name: s(node::NODE_NAME),
            instance_id: s(node::INSTANCE_ID),
            instance_type: s(node::INSTANCE_TYPE),
            market: s(node::MARKET),
            region: s(node::REGION),
            pool: s(node::POOL),
            status: s(node::STATUS),
            task_id: s(node::TASK_ID),
            slots: get_n(item, node::SLOTS),
            version: s(node::VERSION),
            registered_at: get_time(item, node::REGISTERED_AT),
            last_heartbeat: get_time(item, node::LAST_HEARTBEAT),
            deadline: get_time(item, node::DEADLINE),
            expires: get_n(item, EXPIRES),
        }
    }

    pub fn to_sdk_item(&self) -> SdkItem {
        to_sdk_item(&self.to_item())
    }

    pub fn from_sdk_item(item: &SdkItem) -> Self {
        Self::from_item(&from_sdk_item(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).unwrap()
    }

    fn full() -> NodeRecord {
        let mut r = NodeRecord {
            node_id: "i-0abc".into(),
            node_name: Some("lease-gpu-1".into()),
            instance_id: Some("i-0abc".into()),
            instance_type: Some("g5.xlarge".into()),
            market: Some("spot".into()),
            region: Some("eu-west-1".into()),
            pool: Some("gpu".into()),
            status: Some("running".into()),
            task_id: Some("t-1".into()),
            slots: Some(2),
            version: Some("0.1.0".into()),
            registered_at: Some(at(10)),
            deadline: Some(at(14)),
            ..NodeRecord::default()
        };
        r.heartbeat(at(12));
        r
    }

    /// The wire format ARCHITECTURE.md fixes (see the task record's golden item).
    #[test]
    fn golden_item() {
        use aws_sdk_dynamodb::types::AttributeValue::{N, S};
        let golden = SdkItem::from([
            ("node_id".into(), S("i-0abc".into())),
            ("node_name".into(), S("lease-gpu-1".into())),
            ("instance_id".into(), S("i-0abc".into())),
            ("instance_type".into(), S("g5.xlarge".into())),
            ("market".into(), S("spot".into())),
            ("region".into(), S("eu-west-1".into())),
            ("pool".into(), S("gpu".into())),
            ("status".into(), S("running".into())),
            ("task_id".into(), S("t-1".into())),
            ("slots".into(), N("2".into())),
            ("version".into(), S("0.1.0".into())),
            ("registered_at".into(), S("2026-11-23T10:00:00Z".into())),
            ("last_heartbeat".into(), S("2026-11-23T12:00:00Z".into())),
            ("deadline".into(), S("2026-11-23T14:00:00Z".into())),
            ("expires".into(), N("1795521600".into())),
        ]);
        assert_eq!(full().to_sdk_item(), golden);
        assert_eq!(NodeRecord::from_sdk_item(&golden), full());
    }

    #[test]
    fn an_older_agents_record_reads_with_gaps() {
        let mut item = full().to_item();
        item.remove(node::SLOTS);
        item.remove(node::DEADLINE);
        let r = NodeRecord::from_item(&item);
        assert_eq!(r.slots, None);
        assert_eq!(r.deadline, None);
        assert_eq!(r.to_item(), item, "nothing is written that was not read");
        assert_eq!(NodeRecord::from_item(&Item::new()), NodeRecord::default());
    }
}
