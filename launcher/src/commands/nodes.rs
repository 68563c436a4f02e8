//! `lease nodes`: the node registry the agents keep by heartbeat.

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::records::{self, node};
use serde::Serialize;

use crate::aws::dynamodb::{Item, Tables, get_s, get_time};
use crate::cli::{NodesArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table, short_duration, time_left};

/// The agent's default heartbeat interval (AgentConfig `heartbeat-interval`).
const HEARTBEAT: TimeDelta = TimeDelta::seconds(30);
/// A node that missed three heartbeats in a row is stale: one late heartbeat is a slow
/// network, three is a dead agent or a gone machine.
pub const STALE_AFTER: TimeDelta = TimeDelta::seconds(3 * HEARTBEAT.num_seconds());

/// What the agent records when it leaves.
const DEREGISTERED: &str = "deregistered";
/// Shown instead of the recorded status for a node past [`STALE_AFTER`].
const STALE: &str = "stale";

/// One row of `lease nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    pub node_id: String,
    pub name: Option<String>,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub market: Option<String>,
    /// The recorded status, or `stale` when the heartbeats stopped.
    pub status: String,
    pub recorded_status: Option<String>,
    pub task_id: Option<String>,
    /// Tasks the node runs at once; absent from an agent older than the attribute.
    pub slots: Option<i64>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
}

impl NodeRow {
    pub fn from_item(item: &Item, now: DateTime<Utc>) -> Self {
        let s = |name: &str| get_s(item, name).map(str::to_string);
        let recorded_status = s(node::STATUS);
        let last_heartbeat =
            get_time(item, node::LAST_HEARTBEAT).or_else(|| get_time(item, node::REGISTERED_AT));
        let deregistered = recorded_status.as_deref() == Some(DEREGISTERED);
        let stale = !deregistered && last_heartbeat.is_none_or(|t| now - t > STALE_AFTER);
        Self {
            node_id: s(records::NODE_ID).unwrap_or_default(),
            name: s(node::NODE_NAME),
            instance_id: s(node::INSTANCE_ID),
            instance_type: s(node::INSTANCE_TYPE),
            market: s(node::MARKET),
            status: if stale {
                STALE.to_string()
            } else {
                recorded_status.clone().unwrap_or_else(|| "-".into())
            },
            recorded_status,
            task_id: s(node::TASK_ID),
            slots: item.get(node::SLOTS).and_then(|a| a.as_i64()),
            last_heartbeat,
            deadline: get_time(item, node::DEADLINE),
        }
    }

    /// Live nodes only, unless `--all`.
    pub fn shown(&self, all: bool) -> bool {
        all || !matches!(self.status.as_str(), STALE | DEREGISTERED)
    }
}

pub fn select(items: &[Item], all: bool, now: DateTime<Utc>) -> Vec<NodeRow> {
    let mut rows: Vec<NodeRow> = items
        .iter()
        .map(|i| NodeRow::from_item(i, now))
        .filter(|r| r.shown(all))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.node_id.cmp(&b.node_id)));
    rows
}

pub fn render(rows: &[NodeRow], now: DateTime<Utc>, color: bool) -> String {
    let mut t = Table::new([
        "NODE",
        "NAME",
        "INSTANCE",
        "TYPE",
        "MARKET",
        "STATUS",
        "SLOTS",
        "TASK",
        "HEARTBEAT",
        "TIME LEFT",
    ]);
    let opt = |v: &Option<String>| Cell::from(v.clone().unwrap_or_else(|| "-".into()));
    for r in rows {
        t.row(vec![
            Cell::from(r.node_id.clone()),
            opt(&r.name),
            opt(&r.instance_id),
            opt(&r.instance_type),
            opt(&r.market),
            Cell {
                text: r.status.clone(),
                warn: r.status == STALE,
            },
            Cell::from(r.slots.map_or_else(|| "-".into(), |n| n.to_string())),
            opt(&r.task_id),
            Cell::from(r.last_heartbeat.map_or_else(
                || "-".into(),
                |h| format!("{} ago", short_duration(now - h)),
            )),
            time_left(r.deadline, false, now),
        ]);
    }
    t.render(color)
}

pub async fn run<T: Tables>(tables: &T, ctx: &Ctx, args: &NodesArgs) -> Result<()> {
    let table = args.nodes_table.as_deref().ok_or_else(|| {
        Error::usage(
            "lease nodes needs the node table: pass --nodes-table or set LEASE_NODES_TABLE",
        )
    })?;
    let items = tables.scan(table).await?;
    let rows = select(&items, args.all, ctx.now);
    match ctx.output {
        OutputFormat::Json => output::print_json(&rows)?,
        OutputFormat::Table if rows.is_empty() => {}
        OutputFormat::Table => output::print(&render(&rows, ctx.now, ctx.color))?,
    }
    let hidden = items.len() - rows.len();
    if rows.is_empty() && hidden == 0 {
        eprintln!("No nodes in '{table}'.");
    } else if hidden > 0 {
        eprintln!("{hidden} deregistered or stale node(s) not shown; --all shows them.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::dynamodb::Attr;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn node_item(id: &str, status: &str, heartbeat_secs_ago: i64) -> Item {
        let t = |d: TimeDelta| Attr::s(lease_common::tags::render_time(now() + d));
        let mut i = Item::new();
        i.insert(records::NODE_ID.into(), Attr::s(id));
        i.insert(node::NODE_NAME.into(), Attr::s(format!("name-{id}")));
        i.insert(node::INSTANCE_ID.into(), Attr::s(format!("i-{id}")));
        i.insert(node::STATUS.into(), Attr::s(status));
        i.insert(
            node::LAST_HEARTBEAT.into(),
            t(-TimeDelta::seconds(heartbeat_secs_ago)),
        );
        i.insert(node::DEADLINE.into(), t(TimeDelta::hours(2)));
        i
    }

    #[test]
    fn stale_and_deregistered_nodes_show_only_with_all() {
        let items = vec![
            node_item("a", "running", 10),
            node_item("b", "idle", 90),
            node_item("c", "idle", 91),
            node_item("d", "deregistered", 5_000),
        ];
        let live: Vec<String> = select(&items, false, now())
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        assert_eq!(live, ["a", "b"], "90 s is three heartbeats, not yet stale");
        let all = select(&items, true, now());
        let status: Vec<&str> = all.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(status, ["running", "idle", "stale", "deregistered"]);
        assert_eq!(all[2].recorded_status.as_deref(), Some("idle"));
    }

    #[test]
    fn a_node_without_heartbeat_is_stale() {
        let mut i = node_item("x", "idle", 0);
        i.remove(node::LAST_HEARTBEAT);
        assert_eq!(NodeRow::from_item(&i, now()).status, "stale");
        i.insert(
            node::REGISTERED_AT.into(),
            Attr::s(lease_common::tags::render_time(now())),
        );
        assert_eq!(NodeRow::from_item(&i, now()).status, "idle");
    }

    #[test]
    fn the_table_shows_heartbeat_age_and_time_left() {
        let mut i = node_item("a", "running", 12);
        i.insert(node::TASK_ID.into(), Attr::s("t-1"));
        let text = render(&[NodeRow::from_item(&i, now())], now(), false);
        let row = text.lines().nth(1).unwrap();
        for needle in ["name-a", "i-a", "running", "t-1", "12s ago", "2h"] {
            assert!(row.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn the_table_shows_how_many_tasks_a_node_runs_at_once() {
        let mut i = node_item("a", "running", 12);
        i.insert(node::SLOTS.into(), Attr::n(4));
        let row = NodeRow::from_item(&i, now());
        assert_eq!(row.slots, Some(4));
        let text = render(&[row], now(), false);
        let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        let at = header.iter().position(|h| *h == "SLOTS").unwrap();
        assert_eq!(cells[at], "4", "{text}");
        // An agent that records no slots shows a dash.
        let text = render(
            &[NodeRow::from_item(&node_item("b", "idle", 1), now())],
            now(),
            false,
        );
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells[at], "-", "{text}");
    }
}
