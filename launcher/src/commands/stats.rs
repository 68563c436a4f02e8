//! `lease stats`: what the work queue holds.

use serde::Serialize;

use crate::cli::{OutputFormat, StatsArgs};
use crate::commands::Ctx;
use crate::error::Result;
use crate::output::{self, Cell, Table};
use crate::queue::{QueueCounts, TaskQueue};

#[derive(Debug, Serialize)]
struct Stats {
    queue_url: String,
    queued: u64,
    in_flight: u64,
    delayed: u64,
    dead_letter_url: Option<String>,
    dead_letters: Option<u64>,
}

pub async fn run<Q: TaskQueue>(q: &Q, ctx: &Ctx, args: &StatsArgs) -> Result<()> {
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
    let stats = Stats {
        queue_url: url.clone(),
        queued: visible,
        in_flight,
        delayed,
        dead_letter_url: dlq,
        dead_letters,
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
            output::print(&t.render(ctx.color))
        }
    }
}
