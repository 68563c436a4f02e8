//! `lease setup` and `lease teardown`: the control plane of a stack (topics, queues,
//! bucket, tables, the agents' role), created idempotently and removed exactly.
//!
//! Each resource family has its own module, written as "ensure" (create what is
//! missing, correct what differs, report `created` / `exists` / `updated`) and
//! "remove" (delete only what carries the stack's tag, report `deleted` / `absent` /
//! `kept`). The backstop reaper (its function, roles and schedule) is deployed and
//! removed by [`reaper`], whose changes join the same report. What a
//! resource should look like is data from [`wanted`]; names come from
//! [`lease_common::stack::Stack`]. Every step is safe to repeat after a partial
//! failure: nothing is assumed to exist or not to exist.

pub mod bucket;
pub mod operator_policy;
pub mod queues;
pub mod reaper;
mod report;
pub mod role;
pub mod tables;
pub mod topics;
pub mod wanted;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_types::SdkConfig;

use crate::error::{Error, Result};
use crate::settings::{PoolOutputs, StackOutputs};
use reaper::{DeployClients, ReaperPackage};
use role::{Owner, RoleSpec};
use wanted::Wanted;

pub use report::{Outcome, Report, Row, not_ours, print_report};

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
            queues::ensure_queue(&c.sqs, &dlq_name, &wanted::dead_letter_attributes(), &tag)
                .await?;
        report.add("sqs queue", &dlq_name, outcome);
        let attrs = wanted::pool_queue_attributes(&queue_arn, &dlq_arn, &commands);
        let (queue_url, outcome) = queues::ensure_queue(&c.sqs, &queue_name, &attrs, &tag).await?;
        report.add("sqs queue", &queue_name, outcome);
        let filter = wanted::filter_policy(pool).to_string();
        let outcome =
            topics::ensure_subscription(&c.sns, &commands, &queue_arn, Some(&filter)).await?;
        report.add(
            "subscription",
            format!(
                "{commands_name} -> {queue_name} ({}={pool})",
                wanted::POOL_ATTRIBUTE
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
        &wanted::events_queue_attributes(&events_arn, &bus),
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
    let policy_name = wanted::agent_policy_name(w.at.region.as_str());
    let spec = RoleSpec {
        name: role_name.clone(),
        description: "lease agents: consume the stack's queues, publish events, write bundles, end their own instance".into(),
        trust: role::agent_trust(),
        policy_name: policy_name.clone(),
        policy,
    };
    let d = role::ensure_role(&c.iam, &spec, &tag).await?;
    report.add("iam role", &role_name, d.role);
    report.add(
        "iam role policy",
        format!("{role_name}/{policy_name}"),
        d.policy,
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
            let changes = reaper::ensure(&c.deploy, &w.stack, &w.at, package, &config)
                .await
                .map_err(|e| reaper_error(w, e))?;
            report.rows.extend(changes);
            Ok(Some(reaper::policy::function_arn(&w.stack, &w.at)))
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

/// A failure of the reaper's deployment, named as the stack's backstop.
fn reaper_error(w: &Wanted, e: Error) -> Error {
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
    let changes = reaper::remove(&c.deploy, &w.stack, &w.at)
        .await
        .map_err(|e| reaper_error(w, e))?;
    report.rows.extend(changes);
    let role_name = w.stack.agent_role();
    let policy_name = wanted::agent_policy_name(w.at.region.as_str());
    let removed = role::remove_region_policy(
        &c.iam,
        &role_name,
        &policy_name,
        wanted::AGENT_POLICY_PREFIX,
        Owner::Tagged(&tag),
    )
    .await?;
    report.push(
        "iam role policy",
        format!("{role_name}/{policy_name}"),
        removed.outcome,
        removed.note,
    );
    let others = removed.others;
    if others.is_empty() {
        let (outcome, note) =
            role::remove_instance_profile(&c.iam, &role_name, &role_name, &tag).await?;
        report.push("instance profile", &role_name, outcome, note);
        let (outcome, note) = role::remove_role(&c.iam, &role_name, Owner::Tagged(&tag)).await?;
        report.push("iam role", &role_name, outcome, note);
    } else {
        // IAM is global: the role and its profile serve the stack in other regions.
        let note = format!("still used by stack '{}' in {}", w.stack, others.join(", "));
        report.note("instance profile", &role_name, Outcome::Kept, &note);
        report.note("iam role", &role_name, Outcome::Kept, note);
    }

    for table in [w.stack.nodes_table(), w.stack.tasks_table()] {
        let (outcome, note) = tables::remove_table(&c.dynamodb, &table, &tag).await?;
        report.push("dynamodb table", &table, outcome, note);
    }

    let bucket = w.bucket();
    let (outcome, note) = bucket::remove_bucket(&c.s3, &bucket, &tag).await?;
    report.push("s3 bucket", &bucket, outcome, note);

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
        report.push("sqs queue", &name, outcome, note);
    }

    for arn in [&commands, &bus] {
        let (outcome, note) = topics::remove_topic(&c.sns, arn, &tag).await?;
        report.push(
            "sns topic",
            arn.rsplit(':').next().unwrap_or(arn),
            outcome,
            note,
        );
    }
    Ok(())
}
