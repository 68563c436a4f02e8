//! The one report of setup, teardown and the reaper's deployment: a row per resource,
//! with what was done to it.

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::Result;
use crate::output::{self, Cell, Table};
use crate::settings::StackOutputs;

/// What happened to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Exists,
    Updated,
    Deleted,
    Absent,
    /// Found under the stack's name but not tagged as the stack's: left alone.
    Kept,
    /// Not done, for the reason in the note.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Exists => "exists",
            Outcome::Updated => "updated",
            Outcome::Deleted => "deleted",
            Outcome::Absent => "absent",
            Outcome::Kept => "kept",
            Outcome::Skipped => "skipped",
        }
    }

    /// `created` when it was made now, else `updated` when anything was corrected,
    /// else `exists`.
    pub fn of(created: bool, updated: bool) -> Self {
        match (created, updated) {
            (true, _) => Outcome::Created,
            (false, true) => Outcome::Updated,
            (false, false) => Outcome::Exists,
        }
    }

    /// Whether AWS was changed: a skipped step changed nothing either.
    pub fn changed(self) -> bool {
        matches!(self, Outcome::Created | Outcome::Updated | Outcome::Deleted)
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The report so far; kept by the caller so a failure halfway still shows what was
/// done before it.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn add(&mut self, kind: &'static str, name: impl Into<String>, outcome: Outcome) {
        self.rows.push(Row {
            kind,
            name: name.into(),
            outcome,
            note: None,
        });
    }

    pub fn note(
        &mut self,
        kind: &'static str,
        name: impl Into<String>,
        outcome: Outcome,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            kind,
            name: name.into(),
            outcome,
            note: Some(note.into()),
        });
    }

    /// A row with a note when there is one.
    pub fn push(
        &mut self,
        kind: &'static str,
        name: impl Into<String>,
        outcome: Outcome,
        note: Option<String>,
    ) {
        self.rows.push(Row {
            kind,
            name: name.into(),
            outcome,
            note,
        });
    }

    pub fn changed(&self) -> bool {
        self.rows.iter().any(|r| r.outcome.changed())
    }
}

/// Why a resource found under the stack's name was left alone.
pub fn not_ours(tag: &(String, String)) -> Option<String> {
    Some(format!("not tagged {}={}: not deleted", tag.0, tag.1))
}

/// The report, then (after setup) the outputs; as JSON with `-o json`.
pub fn print_report(
    format: OutputFormat,
    color: bool,
    report: &Report,
    outputs: Option<&StackOutputs>,
) -> Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "resources": report.rows,
            "outputs": outputs,
        })),
        OutputFormat::Table => {
            let mut t = Table::new(["KIND", "NAME", "RESULT", "NOTE"]);
            for r in &report.rows {
                t.row(vec![
                    Cell::from(r.kind),
                    Cell::from(r.name.clone()),
                    Cell {
                        text: r.outcome.as_str().to_string(),
                        warn: matches!(r.outcome, Outcome::Kept | Outcome::Skipped),
                    },
                    Cell::from(r.note.clone().unwrap_or_default()),
                ]);
            }
            let mut text = t.render(color);
            if let Some(o) = outputs {
                text.push('\n');
                text.push_str(&outputs_table(o).render(color));
            }
            output::print(&text)
        }
    }
}

fn outputs_table(o: &StackOutputs) -> Table {
    let mut t = Table::new(["OUTPUT", "VALUE"]);
    let mut row = |k: String, v: &str| t.row(vec![Cell::from(k), Cell::from(v)]);
    row("stack".into(), &o.stack);
    row("region".into(), &o.region);
    row("account".into(), &o.account);
    row("command topic".into(), &o.command_topic_arn);
    row("control bus".into(), &o.bus_topic_arn);
    for (pool, q) in &o.pools {
        row(format!("queue ({pool})"), &q.queue_url);
        row(format!("dead letters ({pool})"), &q.dead_letter_queue_url);
    }
    row("events queue".into(), &o.events_queue_url);
    row("bucket".into(), &o.bucket);
    row("nodes table".into(), &o.nodes_table);
    row("tasks table".into(), &o.tasks_table);
    row("agent role".into(), &o.agent_role);
    row("instance profile".into(), &o.instance_profile);
    for key in &o.agent_packages {
        row("agent package".into(), &format!("s3://{}/{key}", o.bucket));
    }
    if let Some(arn) = &o.reaper_function_arn {
        row("reaper function".into(), arn);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::of(true, true), Outcome::Created);
        assert_eq!(Outcome::of(false, true), Outcome::Updated);
        assert_eq!(Outcome::of(false, false), Outcome::Exists);
        let mut r = Report::default();
        r.add("a", "x", Outcome::Exists);
        r.add("a", "y", Outcome::Kept);
        assert!(!r.changed());
        r.add("a", "z", Outcome::Skipped);
        assert!(!r.changed());
        r.add("a", "w", Outcome::Updated);
        assert!(r.changed());
    }
}
