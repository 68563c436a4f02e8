//! `lease setup` and `lease teardown`: the control plane of a stack (topics, queues,
//! bucket, tables, the agents' role), created idempotently and removed exactly.
//!
//! Each resource family has its own module, written as "ensure" (create what is
//! missing, correct what differs, report `created` / `exists` / `updated`) and
//! "remove" (delete only what carries the stack's tag, report `deleted` / `absent` /
//! `kept`). The backstop reaper (its function, roles and schedule) is deployed and
//! removed by [`crate::reaper_deploy`], whose changes join the same report. What a
//! resource should look like is data from [`plan`]; names come from
//! [`lease_common::stack::Stack`]. Every step is safe to repeat after a partial
//! failure: nothing is assumed to exist or not to exist.

pub mod bucket;
pub mod plan;
pub mod queues;
pub mod role;
pub mod tables;
pub mod topics;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_types::SdkConfig;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::reaper_deploy::{self, Change, DeployClients, DeployError, ReaperPackage};
use crate::settings::{PoolOutputs, StackOutputs};
use plan::Wanted;

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

    pub fn changed(&self) -> bool {
        self.rows.iter().any(|r| r.outcome.changed())
    }
}

/// The SDK clients setup and teardown use.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub iam: aws_sdk_iam::Client,
    /// The reaper's deployment (IAM, Lambda, Scheduler), from the same SDK config.
    pub deploy: DeployClients,
}

impl Clients {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            deploy: DeployClients::new(config),
            sns: aws_sdk_sns::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            s3: lease_common::aws::s3_client(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
        }
    }
}

/// An agent package to upload, checked before any API call.
#[derive(Debug, Clone)]
pub struct AgentPackage {
    pub path: PathBuf,
    /// `agent/<version>/leased_<version>_<arch>.deb`.
    pub key: String,
}

/// The reaper to deploy, or why there is none.
#[derive(Debug, Clone)]
pub enum Reaper {
    Deploy(ReaperPackage),
    /// No package given or found; the function an earlier setup recorded, if any.
    Missing {
        recorded: Option<String>,
    },
}

/// Creates or corrects every resource of the stack, in dependency order (topics before
/// the queues whose policies name them, dead-letter queues before the queues that
/// redrive to them, the tables the reaper reads before the reaper), and returns what
/// to record in the settings file.
pub async fn ensure(
    c: &Clients,
    w: &Wanted,
    packages: &[AgentPackage],
    recorded: &[String],
    reaper: &Reaper,
    report: &mut Report,
) -> Result<StackOutputs> {
    let tag = w.tag();
    let commands_name = w.stack.command_topic();
    let bus_name = w.stack.bus_topic();
    let commands = w.topic_arn(&commands_name);
    let bus = w.topic_arn(&bus_name);
    for arn in [&commands, &bus] {
        let outcome = topics::ensure_topic(&c.sns, arn, &tag).await?;
        report.add("sns topic", arn.rsplit(':').next().unwrap_or(arn), outcome);
    }

    let mut pools = BTreeMap::new();
    for pool in &w.pools {
        let dlq_name = w
            .stack
            .dead_letter_queue(pool)
            .map_err(|e| Error::usage(e.to_string()))?;
        let queue_name = w
            .stack
            .pool_queue(pool)
            .map_err(|e| Error::usage(e.to_string()))?;
        let dlq_arn = w.queue_arn(&dlq_name);
        let queue_arn = w.queue_arn(&queue_name);
        let (dlq_url, outcome) =
            queues::ensure_queue(&c.sqs, &dlq_name, &plan::dead_letter_attributes(), &tag).await?;
        report.add("sqs queue", &dlq_name, outcome);
        let attrs = plan::pool_queue_attributes(&queue_arn, &dlq_arn, &commands);
        let (queue_url, outcome) = queues::ensure_queue(&c.sqs, &queue_name, &attrs, &tag).await?;
        report.add("sqs queue", &queue_name, outcome);
        let filter = plan::filter_policy(pool).to_string();
        let outcome =
            topics::ensure_subscription(&c.sns, &commands, &queue_arn, Some(&filter)).await?;
        report.add(
            "subscription",
            format!(
                "{commands_name} -> {queue_name} ({}={pool})",
                plan::POOL_ATTRIBUTE
            ),
            outcome,
        );
        pools.insert(
            pool.clone(),
            PoolOutputs {
                queue_url,
                dead_letter_queue_url: dlq_url,
            },
        );
    }

    let events_name = w.stack.events_queue();
    let events_arn = w.queue_arn(&events_name);
    let (events_url, outcome) = queues::ensure_queue(
        &c.sqs,
        &events_name,
        &plan::events_queue_attributes(&events_arn, &bus),
        &tag,
    )
    .await?;
    report.add("sqs queue", &events_name, outcome);
    let outcome = topics::ensure_subscription(&c.sns, &bus, &events_arn, None).await?;
    report.add(
        "subscription",
        format!("{bus_name} -> {events_name}"),
        outcome,
    );

    let bucket = w.bucket();
    let outcome = bucket::ensure_bucket(&c.s3, &bucket, w.at.region.as_str(), &tag).await?;
    report.add("s3 bucket", &bucket, outcome);
    let agent_packages = ensure_packages(c, &bucket, packages, recorded, report).await?;

    for (table, key) in [
        (w.stack.nodes_table(), lease_common::records::NODE_ID),
        (w.stack.tasks_table(), lease_common::records::TASK_ID),
    ] {
        let outcome = tables::ensure_table(&c.dynamodb, &table, key, &tag).await?;
        report.add("dynamodb table", &table, outcome);
    }

    let role_name = w.stack.agent_role();
    let policy = crate::model::policies::agent_policy(&w.stack, &w.at, &[], w.claude_auth)
        .map_err(|e| Error::usage(e.to_string()))?;
    let policy_name = plan::agent_policy_name(w.at.region.as_str());
    let (role_outcome, policy_outcome) =
        role::ensure_role(&c.iam, &role_name, &policy_name, &policy, &tag).await?;
    report.add("iam role", &role_name, role_outcome);
    report.add(
        "iam role policy",
        format!("{role_name}/{policy_name}"),
        policy_outcome,
    );
    let outcome = role::ensure_instance_profile(&c.iam, &role_name, &role_name, &tag).await?;
    report.add("instance profile", &role_name, outcome);

    let reaper_function_arn = ensure_reaper(c, w, reaper, report).await?;

    Ok(StackOutputs {
        stack: w.stack.name().to_string(),
        region: w.at.region.as_str().to_string(),
        account: w.at.account.as_str().to_string(),
        command_topic_arn: commands,
        bus_topic_arn: bus,
        pools,
        events_queue_url: events_url,
        bucket,
        nodes_table: w.stack.nodes_table(),
        tasks_table: w.stack.tasks_table(),
        agent_role: role_name.clone(),
        instance_profile: role_name,
        agent_packages,
        reaper_function_arn,
        claude_auth: w.claude_auth,
    })
}

/// Deploys the reaper when there is a package; without one the stack has no backstop,
/// which the report says (with how to build it) rather than failing the whole setup.
/// Returns the function's ARN to record.
async fn ensure_reaper(
    c: &Clients,
    w: &Wanted,
    reaper: &Reaper,
    report: &mut Report,
) -> Result<Option<String>> {
    match reaper {
        Reaper::Deploy(package) => {
            let config = lease_reaper::ReaperConfig::default();
            let changes = reaper_deploy::ensure(&c.deploy, &w.stack, &w.at, package, &config)
                .await
                .map_err(|e| reaper_error(w, e))?;
            for ch in changes {
                report.add(reaper_kind(ch.resource), ch.name, outcome_of(ch.change));
            }
            Ok(Some(reaper_deploy::policy::function_arn(&w.stack, &w.at)))
        }
        Reaper::Missing {
            recorded: Some(arn),
        } => {
            // Deployed by an earlier setup: left as it is, and still recorded.
            report.note(
                "reaper",
                w.stack.reaper_function(),
                Outcome::Skipped,
                "no reaper zip given or found: the reaper deployed earlier is left as it was (pass --reaper-zip to update it)",
            );
            Ok(Some(arn.clone()))
        }
        Reaper::Missing { recorded: None } => {
            report.note(
                "reaper",
                w.stack.reaper_function(),
                Outcome::Skipped,
                "no reaper zip given or found: this stack has no backstop reaper until you build it with packaging/build-reaper.sh and run setup again (or pass --reaper-zip FILE)",
            );
            Ok(None)
        }
    }
}

/// The report's kind for a resource of the reaper's deployment.
fn reaper_kind(resource: &str) -> &'static str {
    match resource {
        "IAM role" => "iam role",
        "Lambda function" => "lambda function",
        "schedule group" => "schedule group",
        "schedule" => "schedule",
        "log group" => "log group",
        _ => "reaper",
    }
}

fn outcome_of(change: Change) -> Outcome {
    match change {
        Change::Created => Outcome::Created,
        Change::Exists => Outcome::Exists,
        Change::Updated => Outcome::Updated,
        Change::Deleted => Outcome::Deleted,
        Change::Absent => Outcome::Absent,
        Change::Kept => Outcome::Kept,
    }
}

fn reaper_error(w: &Wanted, e: DeployError) -> Error {
    Error::Aws {
        what: format!("Backstop reaper of stack '{}'", w.stack),
        message: e.to_string(),
    }
}

/// The agent packages given are in the bucket, and those an earlier run recorded are
/// still there; returns the keys to record.
async fn ensure_packages(
    c: &Clients,
    bucket: &str,
    packages: &[AgentPackage],
    recorded: &[String],
    report: &mut Report,
) -> Result<Vec<String>> {
    let mut agent_packages = Vec::new();
    for p in packages {
        let outcome = bucket::ensure_package(&c.s3, bucket, p).await?;
        report.add("agent package", format!("s3://{bucket}/{}", p.key), outcome);
        agent_packages.push(p.key.clone());
    }
    // Packages an earlier run uploaded: still there, or say what to do.
    let earlier: Vec<&String> = recorded
        .iter()
        .filter(|k| !agent_packages.contains(k))
        .collect();
    for key in earlier {
        if bucket::object_exists(&c.s3, bucket, key).await? {
            report.add(
                "agent package",
                format!("s3://{bucket}/{key}"),
                Outcome::Exists,
            );
            agent_packages.push(key.clone());
        } else {
            report.note(
                "agent package",
                format!("s3://{bucket}/{key}"),
                Outcome::Skipped,
                "recorded by an earlier setup but missing: upload it again with --agent-deb",
            );
        }
    }
    agent_packages.sort();
    if agent_packages.is_empty() {
        report.note(
            "agent package",
            format!("s3://{bucket}/agent/"),
            Outcome::Skipped,
            "no .deb given or found: build it with packaging/build-deb.sh, then pass --agent-deb FILE (not needed with an AMI that has leased baked in)",
        );
    }
    Ok(agent_packages)
}

/// Deletes every resource of the stack that carries its tag, in reverse dependency
/// order. Found by name, so it works without the settings file too.
pub async fn remove(c: &Clients, w: &Wanted, report: &mut Report) -> Result<()> {
    let tag = w.tag();
    // The reaper first, so nothing runs against a half-removed stack.
    let changes = reaper_deploy::remove(&c.deploy, &w.stack, &w.at)
        .await
        .map_err(|e| reaper_error(w, e))?;
    for ch in changes {
        report.add(reaper_kind(ch.resource), ch.name, outcome_of(ch.change));
    }
    let role_name = w.stack.agent_role();
    let policy_name = plan::agent_policy_name(w.at.region.as_str());
    let (outcome, note, others) =
        role::remove_region_policy(&c.iam, &role_name, &policy_name, &tag).await?;
    push(
        report,
        "iam role policy",
        &format!("{role_name}/{policy_name}"),
        outcome,
        note,
    );
    if others.is_empty() {
        let (outcome, note) =
            role::remove_instance_profile(&c.iam, &role_name, &role_name, &tag).await?;
        push(report, "instance profile", &role_name, outcome, note);
        let (outcome, note) = role::remove_role(&c.iam, &role_name, &tag).await?;
        push(report, "iam role", &role_name, outcome, note);
    } else {
        // IAM is global: the role and its profile serve the stack in other regions.
        let note = format!("still used by stack '{}' in {}", w.stack, others.join(", "));
        report.note("instance profile", &role_name, Outcome::Kept, &note);
        report.note("iam role", &role_name, Outcome::Kept, note);
    }

    for table in [w.stack.nodes_table(), w.stack.tasks_table()] {
        let (outcome, note) = tables::remove_table(&c.dynamodb, &table, &tag).await?;
        push(report, "dynamodb table", &table, outcome, note);
    }

    let bucket = w.bucket();
    let (outcome, note) = bucket::remove_bucket(&c.s3, &bucket, &tag).await?;
    push(report, "s3 bucket", &bucket, outcome, note);

    let commands = w.topic_arn(&w.stack.command_topic());
    let bus = w.topic_arn(&w.stack.bus_topic());
    for arn in [&commands, &bus] {
        let n = topics::remove_subscriptions(&c.sns, arn, &tag).await?;
        if n > 0 {
            report.note(
                "subscription",
                arn.rsplit(':').next().unwrap_or(arn),
                Outcome::Deleted,
                format!("{n} subscription(s)"),
            );
        }
    }

    let found = queues::stack_queues(&c.sqs, &w.stack).await?;
    if found.is_empty() {
        report.add(
            "sqs queue",
            format!("{}-*", w.stack.prefix()),
            Outcome::Absent,
        );
    }
    for (name, url) in found {
        let (outcome, note) = queues::remove_queue(&c.sqs, &url, &tag).await?;
        push(report, "sqs queue", &name, outcome, note);
    }

    for arn in [&commands, &bus] {
        let (outcome, note) = topics::remove_topic(&c.sns, arn, &tag).await?;
        push(
            report,
            "sns topic",
            arn.rsplit(':').next().unwrap_or(arn),
            outcome,
            note,
        );
    }
    Ok(())
}

fn push(
    report: &mut Report,
    kind: &'static str,
    name: &str,
    outcome: Outcome,
    note: Option<String>,
) {
    match note {
        Some(n) => report.note(kind, name, outcome, n),
        None => report.add(kind, name, outcome),
    }
}

/// Why a resource found under the stack's name was left alone.
pub fn not_ours(tag: &(String, String)) -> Option<String> {
    Some(format!("not tagged {}={}: not deleted", tag.0, tag.1))
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
