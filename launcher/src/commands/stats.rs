//! `lease stats`: what the work queue holds, and with a task table, tasks by state.

use std::collections::BTreeMap;

use lease_common::records::{TaskState, task};
use serde::Serialize;

use crate::aws::dynamodb::{Item, Tables, get_s};
use crate::aws::sqs::{QueueCounts, TaskQueue};
use crate::cli::{OutputFormat, StatsArgs};
use crate::commands::Ctx;
use crate::error::Result;
use crate::output::{self, Cell, Table};

#[derive(Debug, Serialize)]
struct Stats {
    queue_url: String,
    queued: u64,
    in_flight: u64,
    delayed: u64,
    dead_letter_url: Option<String>,
    dead_letters: Option<u64>,
    /// Task records per state (every state, zero included), when a table is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<BTreeMap<String, u64>>,
}

/// Records per state: every known state (zero when none), plus any state this build
/// does not know, under its own name, so no record goes uncounted.
pub fn by_state(items: &[Item]) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for i in items {
        let state = get_s(i, task::STATE).unwrap_or("unknown");
        *counts.entry(state.to_string()).or_default() += 1;
    }
    counts
}

/// Known states in their life's order, then the others.
fn ordered(counts: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let known = TaskState::ALL.iter().map(|s| s.as_str());
    let mut out: Vec<(&str, u64)> = known
        .clone()
        .map(|s| (s, counts.get(s).copied().unwrap_or(0)))
        .collect();
    out.extend(
        counts
            .iter()
            .filter(|(k, _)| !known.clone().any(|s| s == k.as_str()))
            .map(|(k, v)| (k.as_str(), *v)),
    );
    out
}

pub async fn run<Q: TaskQueue, T: Tables>(
    q: &Q,
    tables: &T,
    ctx: &Ctx,
    args: &StatsArgs,
) -> Result<()> {
    let url = args
        .work
        .queue_url
        .as_ref()
        .ok_or_else(crate::commands::no_queue)?;
    let (counts, dlq) = futures::future::join(q.counts(url), q.dead_letter_url(url)).await;
    let QueueCounts {
        visible,
        in_flight,
        delayed,
    } = counts?;
    let dlq = dlq?;
    let dead_letters = match &dlq {
        Some(d) => Some(q.counts(d).await?.visible),
        None => None,
    };
    let tasks = match &args.table.tasks_table {
        Some(table) => Some(by_state(&tables.scan(table).await?)),
        None => None,
    };
    let stats = Stats {
        queue_url: url.clone(),
        queued: visible,
        in_flight,
        delayed,
        dead_letter_url: dlq,
        dead_letters,
        tasks,
    };
    match ctx.output {
        OutputFormat::Json => output::print_json(&stats),
        OutputFormat::Table => {
            let mut t = Table::new(["QUEUED", "IN FLIGHT", "DELAYED", "DEAD LETTERS"]);
            t.row(vec![
                Cell::from(stats.queued.to_string()),
                Cell::from(stats.in_flight.to_string()),
                Cell::from(stats.delayed.to_string()),
                Cell {
                    text: stats
                        .dead_letters
                        .map_or_else(|| "- (no dead-letter queue)".into(), |n| n.to_string()),
                    warn: stats.dead_letters.is_some_and(|n| n > 0),
                },
            ]);
            let mut text = t.render(ctx.color);
            if let Some(tasks) = &stats.tasks {
                let counts = ordered(tasks);
                let mut t = Table::new(counts.iter().map(|(s, _)| s.to_uppercase()));
                t.row(
                    counts
                        .iter()
                        .map(|(_, n)| Cell::from(n.to_string()))
                        .collect(),
                );
                text.push_str("\nTasks by state\n");
                text.push_str(&t.render(ctx.color));
            }
            output::print(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::dynamodb::Attr;

    fn with_state(state: &str) -> Item {
        Item::from([(task::STATE.to_string(), Attr::s(state))])
    }

    #[test]
    fn every_state_is_counted_and_unknown_ones_kept() {
        let items: Vec<Item> = ["queued", "queued", "running", "complete", "paused"]
            .into_iter()
            .map(with_state)
            .chain([Item::new()])
            .collect();
        let counts = by_state(&items);
        assert_eq!(counts["queued"], 2);
        assert_eq!(counts["running"], 1);
        assert_eq!(counts["failed"], 0);
        assert_eq!(counts["paused"], 1);
        assert_eq!(counts["unknown"], 1);
        let order: Vec<&str> = ordered(&counts).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            order,
            [
                "queued",
                "running",
                "uploading",
                "complete",
                "failed",
                "interrupted",
                "cancelled",
                "paused",
                "unknown"
            ]
        );
    }
}
