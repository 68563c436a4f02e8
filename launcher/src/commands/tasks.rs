//! `lease tasks`: the task records the agents keep (list, show, cancel).

use chrono::{DateTime, Utc};
use lease_common::layout;
use lease_common::records::{self, TaskState, task};
use serde::Serialize;

use crate::aws::dynamodb::{Attr, Cancel, Item, Tables, get_s, get_time};
use crate::cli::{OutputFormat, TaskIdArgs, TaskListArgs, TasksArgs, TasksCommand};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output::{self, Cell, Table, short_duration};

/// One row of `lease tasks`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub id: String,
    /// As recorded: a state this build does not know (a newer agent's) is shown as is.
    pub state: String,
    pub kind: Option<String>,
    pub node_id: Option<String>,
    pub instance_id: Option<String>,
    pub attempt: Option<i64>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub summary: Option<String>,
}

impl TaskRow {
    pub fn from_item(item: &Item) -> Self {
        let s = |name: &str| get_s(item, name).map(str::to_string);
        Self {
            id: s(records::TASK_ID).unwrap_or_default(),
            state: s(task::STATE).unwrap_or_else(|| "-".into()),
            kind: s(task::KIND),
            node_id: s(task::NODE_ID),
            instance_id: s(task::INSTANCE_ID),
            attempt: item.get(task::ATTEMPT).and_then(Attr::as_i64),
            submitted_at: get_time(item, task::SUBMITTED_AT),
            updated_at: get_time(item, task::UPDATED_AT),
            summary: s(task::SUMMARY),
        }
    }

    /// Newest first: by submission, then last update, then id (ids start with their
    /// submission time, so the order holds even for records missing both times).
    fn newest_first(a: &TaskRow, b: &TaskRow) -> std::cmp::Ordering {
        b.submitted_at
            .cmp(&a.submitted_at)
            .then(b.updated_at.cmp(&a.updated_at))
            .then(b.id.cmp(&a.id))
    }
}

/// `--state` values, checked against the records' vocabulary.
pub fn parse_states(raw: &[String]) -> Result<Vec<TaskState>> {
    raw.iter()
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| Error::usage(format!("--state: {e}")))
        })
        .collect()
}

/// The rows to show and how many matched in all (before `--limit`).
pub fn select(items: &[Item], states: &[TaskState], limit: usize) -> (Vec<TaskRow>, usize) {
    let mut rows: Vec<TaskRow> = items
        .iter()
        .map(TaskRow::from_item)
        .filter(|r| states.is_empty() || states.iter().any(|s| s.as_str() == r.state))
        .collect();
    rows.sort_by(TaskRow::newest_first);
    let matched = rows.len();
    rows.truncate(limit);
    (rows, matched)
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| format!("{} ago", short_duration(now - t)),
    )
}

pub fn render_list(rows: &[TaskRow], now: DateTime<Utc>, color: bool) -> String {
    let mut t = Table::new([
        "ID", "STATE", "KIND", "NODE", "ATTEMPT", "UPDATED", "SUMMARY",
    ]);
    for r in rows {
        let warn = matches!(r.state.as_str(), "failed" | "interrupted");
        t.row(vec![
            Cell::from(r.id.clone()),
            Cell {
                text: r.state.clone(),
                warn,
            },
            Cell::from(r.kind.clone().unwrap_or_else(|| "-".into())),
            Cell::from(
                r.node_id
                    .clone()
                    .or_else(|| r.instance_id.clone())
                    .unwrap_or_else(|| "-".into()),
            ),
            Cell::from(r.attempt.map_or_else(|| "-".into(), |a| a.to_string())),
            Cell::from(ago(r.updated_at.or(r.submitted_at), now)),
            Cell::from(r.summary.clone().unwrap_or_default()),
        ]);
    }
    t.render(color)
}

/// Where a task's log and bundle are: the record's own `log`/`bundle` once the agent
/// wrote them, else where the layout puts them in `--bucket` (the bundle only once a
/// node, whose instance id is in the key, has taken the task).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Locations {
    pub log: Option<String>,
    pub bundle: Option<String>,
}

pub fn locations(item: &Item, bucket: Option<&str>) -> Locations {
    let id = get_s(item, records::TASK_ID).unwrap_or_default();
    let log = get_s(item, task::LOG)
        .map(str::to_string)
        .or_else(|| bucket.map(|b| format!("s3://{b}/{}", layout::log_key(id))));
    let bundle = get_s(item, task::BUNDLE).map(str::to_string).or_else(|| {
        let instance = get_s(item, task::INSTANCE_ID)?;
        bucket.map(|b| format!("s3://{b}/{}", layout::bundle_prefix(instance, id)))
    });
    Locations { log, bundle }
}

pub fn render_show(item: &Item, loc: &Locations) -> String {
    let width = item.keys().map(String::len).max().unwrap_or(0).max(6);
    let mut out = String::new();
    // The key first, then every other attribute by name.
    let key = item
        .get(records::TASK_ID)
        .map(Attr::text)
        .unwrap_or_default();
    out.push_str(&format!("{:width$}  {key}\n", records::TASK_ID));
    for (k, v) in item.iter().filter(|(k, _)| k.as_str() != records::TASK_ID) {
        out.push_str(&format!("{k:width$}  {}\n", v.text()));
    }
    let none = "- (unknown: pass --bucket)";
    out.push_str(&format!(
        "{:width$}  {}\n",
        "log",
        loc.log.as_deref().unwrap_or(none)
    ));
    let bundle = match (&loc.bundle, get_s(item, task::INSTANCE_ID)) {
        (Some(b), _) => b.as_str(),
        (None, None) => "- (no node has taken it yet)",
        (None, Some(_)) => none,
    };
    out.push_str(&format!("{:width$}  {bundle}\n", "bundle"));
    out
}

/// What `lease tasks cancel` tells the person, given the state the task was in.
pub fn cancel_message(id: &str, before: &Item) -> String {
    let state = get_s(before, task::STATE).unwrap_or("unknown");
    match state.parse::<TaskState>() {
        Ok(TaskState::Running | TaskState::Uploading) => {
            let node = get_s(before, task::NODE_ID)
                .or_else(|| get_s(before, task::INSTANCE_ID))
                .unwrap_or("its node");
            format!(
                "Cancelled task '{id}' (was {state}). {node} stops it when it next checks \
                 the record (each time it extends the message's visibility)."
            )
        }
        _ => format!(
            "Cancelled task '{id}' (was {state}). Its message stays in the queue until a \
             node receives it; that node sees the cancellation when it claims the task, and \
             deletes the message without running it."
        ),
    }
}

fn table_name(args: &TasksArgs) -> Result<&str> {
    args.tasks_table.as_deref().ok_or_else(|| {
        Error::usage(
            "lease tasks needs the task table: pass --tasks-table or set LEASE_TASKS_TABLE",
        )
    })
}

pub async fn run<T: Tables>(tables: &T, ctx: &Ctx, args: &TasksArgs) -> Result<()> {
    if args.command.is_some() && args.list != TaskListArgs::default() {
        // Filters before a subcommand would be silently ignored; say where they go.
        return Err(Error::usage(
            "--state and --limit go after `list` (or with no subcommand at all)",
        ));
    }
    let table = table_name(args)?;
    match &args.command {
        None => list(tables, ctx, table, &args.list).await,
        Some(TasksCommand::List(a)) => list(tables, ctx, table, a).await,
        Some(TasksCommand::Show(a)) => show(tables, ctx, table, a).await,
        Some(TasksCommand::Cancel(a)) => cancel(tables, ctx, table, a).await,
    }
}

async fn list<T: Tables>(tables: &T, ctx: &Ctx, table: &str, args: &TaskListArgs) -> Result<()> {
    let states = parse_states(&args.states)?;
    let items = tables.scan(table).await?;
    let (rows, matched) = select(&items, &states, args.limit);
    match ctx.output {
        OutputFormat::Json => output::print_json(&rows)?,
        OutputFormat::Table if rows.is_empty() => eprintln!("No tasks in '{table}'."),
        OutputFormat::Table => output::print(&render_list(&rows, ctx.now, ctx.color))?,
    }
    if matched > rows.len() {
        eprintln!(
            "Showing the newest {} of {matched}; --limit shows more.",
            rows.len()
        );
    }
    Ok(())
}

fn not_found(id: &str, table: &str) -> Error {
    Error::NotFound(format!("No task '{id}' in table '{table}'"))
}

#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    item: &'a Item,
    locations: &'a Locations,
}

async fn show<T: Tables>(tables: &T, ctx: &Ctx, table: &str, args: &TaskIdArgs) -> Result<()> {
    let item = tables
        .task(table, &args.task_id)
        .await?
        .ok_or_else(|| not_found(&args.task_id, table))?;
    let loc = locations(&item, args.bucket.as_deref());
    match ctx.output {
        OutputFormat::Json => output::print_json(&Shown {
            item: &item,
            locations: &loc,
        }),
        OutputFormat::Table => output::print(&render_show(&item, &loc)),
    }
}

async fn cancel<T: Tables>(tables: &T, ctx: &Ctx, table: &str, args: &TaskIdArgs) -> Result<()> {
    let id = &args.task_id;
    match tables.cancel_task(table, id, ctx.now).await? {
        Cancel::Cancelled(before) => {
            eprintln!("{}", cancel_message(id, &before));
            output::print(&format!("{id}\n"))
        }
        Cancel::Final(item) => {
            let state = get_s(&item, task::STATE).unwrap_or("final");
            if state == TaskState::Cancelled.as_str() {
                eprintln!("Task '{id}' was already cancelled.");
                return output::print(&format!("{id}\n"));
            }
            Err(Error::Refused(format!(
                "Task '{id}' is already {state}; a finished task cannot be cancelled"
            )))
        }
        Cancel::Missing => Err(not_found(id, table)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::dynamodb::fake::FakeTables;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn item(id: &str, state: &str, submitted_min_ago: i64) -> Item {
        let at =
            lease_common::tags::render_time(now() - chrono::TimeDelta::minutes(submitted_min_ago));
        let mut i = Item::new();
        i.insert(records::TASK_ID.into(), Attr::s(id));
        i.insert(task::STATE.into(), Attr::s(state));
        i.insert(task::KIND.into(), Attr::s("shell"));
        i.insert(task::SUBMITTED_AT.into(), Attr::s(&at));
        i.insert(task::UPDATED_AT.into(), Attr::s(&at));
        i.insert(task::ATTEMPT.into(), Attr::n(1));
        i.insert(task::SUMMARY.into(), Attr::s("make test"));
        i
    }

    fn ctx() -> Ctx {
        Ctx {
            output: OutputFormat::Json,
            yes: false,
            color: false,
            now: now(),
        }
    }

    #[test]
    fn newest_first_filtered_and_limited() {
        let items = vec![
            item("a", "complete", 30),
            item("b", "queued", 5),
            item("c", "running", 10),
            item("d", "queued", 1),
        ];
        let (rows, matched) = select(&items, &[], 2);
        assert_eq!(matched, 4);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d", "b"]);
        let (rows, matched) = select(&items, &[TaskState::Queued, TaskState::Complete], 10);
        assert_eq!(matched, 3);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d", "b", "a"]);
    }

    #[test]
    fn bad_states_are_named() {
        let err = parse_states(&["queued".into(), "done".into()]).unwrap_err();
        assert!(err.to_string().contains("'done'"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_list_shows_node_and_age() {
        let mut running = item("t-1", "running", 90);
        running.insert(task::INSTANCE_ID.into(), Attr::s("i-0abc"));
        let text = render_list(&[TaskRow::from_item(&running)], now(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[1].contains("i-0abc"), "{text}");
        assert!(lines[1].contains("1h30m ago"), "{text}");
        assert!(lines[1].ends_with("make test"), "{text}");
    }

    #[test]
    fn locations_prefer_the_record_then_the_layout() {
        let queued = item("t-1", "queued", 1);
        assert_eq!(
            locations(&queued, Some("ctl")),
            Locations {
                log: Some("s3://ctl/logs/t-1.log".into()),
                bundle: None
            }
        );
        assert_eq!(locations(&queued, None).log, None);
        let mut done = item("t-1", "complete", 1);
        done.insert(task::INSTANCE_ID.into(), Attr::s("i-1"));
        assert_eq!(
            locations(&done, Some("ctl")).bundle.as_deref(),
            Some("s3://ctl/jobs/i-1/t-1/bundle/")
        );
        done.insert(task::BUNDLE.into(), Attr::s("s3://other/x/"));
        assert_eq!(
            locations(&done, Some("ctl")).bundle.as_deref(),
            Some("s3://other/x/")
        );
        let text = render_show(&done, &locations(&done, None));
        assert!(text.starts_with("task_id "), "{text}");
        assert!(text.contains("bundle     s3://other/x/") || text.contains("s3://other/x/"));
        assert!(text.contains("pass --bucket"), "{text}");
    }

    #[test]
    fn cancel_messages_say_who_acts() {
        let mut running = item("t", "running", 1);
        running.insert(task::NODE_ID.into(), Attr::s("node-7"));
        assert!(cancel_message("t", &running).contains("node-7 stops it"));
        assert!(cancel_message("t", &item("t", "queued", 1)).contains("deletes the message"));
    }

    fn cancel_args(id: &str) -> TasksArgs {
        TasksArgs {
            tasks_table: Some("tasks".into()),
            command: Some(TasksCommand::Cancel(TaskIdArgs {
                task_id: id.into(),
                bucket: None,
            })),
            list: TaskListArgs::default(),
        }
    }

    #[tokio::test]
    async fn cancel_refuses_finished_tasks_and_unknown_ids() {
        let t = FakeTables::with(
            "tasks",
            vec![item("q", "queued", 1), item("done", "complete", 1)],
        );
        run(&t, &ctx(), &cancel_args("q")).await.unwrap();
        assert_eq!(
            get_s(&t.get("tasks", "q").unwrap(), task::STATE),
            Some("cancelled")
        );
        let err = run(&t, &ctx(), &cancel_args("done")).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert_eq!(t.get("tasks", "done").unwrap(), item("done", "complete", 1));
        let err = run(&t, &ctx(), &cancel_args("nope")).await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("'nope'"), "{err}");
        // Cancelling twice is not an error: the task is where it was asked to be.
        run(&t, &ctx(), &cancel_args("q")).await.unwrap();
    }

    #[tokio::test]
    async fn filters_before_a_subcommand_are_refused_not_ignored() {
        use clap::Parser;
        let parse = |argv: &[&str]| match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Tasks(a) => a,
            other => panic!("{other:?}"),
        };
        let a = parse(&["lease", "tasks", "--state", "queued", "show", "t"]);
        let err = run(&FakeTables::default(), &ctx(), &a).await.unwrap_err();
        assert!(err.to_string().contains("after `list`"), "{err}");
        // The table may come before or after the subcommand.
        let a = parse(&["lease", "tasks", "--tasks-table", "x", "show", "t"]);
        assert_eq!(a.tasks_table.as_deref(), Some("x"));
        let a = parse(&[
            "lease",
            "tasks",
            "list",
            "--state",
            "queued",
            "--tasks-table",
            "x",
        ]);
        assert_eq!(a.tasks_table.as_deref(), Some("x"));
        assert!(matches!(a.command, Some(TasksCommand::List(ref l)) if l.states == ["queued"]));
    }

    #[tokio::test]
    async fn no_table_is_a_usage_error() {
        let mut a = cancel_args("q");
        a.tasks_table = None;
        let err = run(&FakeTables::default(), &ctx(), &a).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("LEASE_TASKS_TABLE"), "{err}");
    }
}
