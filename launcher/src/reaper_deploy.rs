//! Deploys the backstop reaper into a stack, and removes it: the reaper's execution
//! role, its Lambda function (`provided.al2023`, the architecture of the package), the
//! stack's EventBridge Scheduler group with a `rate(5 minutes)` schedule invoking the
//! function through a role that may invoke nothing else, and the role `lease schedule`
//! targets run with. Names come from [`lease_common::stack`]. [`remove`] also deletes
//! the log group Lambda made for the function.
//!
//! [`ensure`] is idempotent: it reads each resource first and reports it `created`,
//! `exists` (nothing sent) or `updated` (only what differs is rewritten). [`remove`]
//! deletes in reverse order and reports what was already `absent`, so both are safe to
//! re-run after a partial failure. What is wanted is computed by pure functions
//! ([`policy`], [`FunctionSpec`], [`schedule_target`]); this module only reads, compares
//! and writes.

mod function;
pub mod package;
pub mod policy;
mod roles;
mod schedule;

use std::fmt;
use std::time::Duration;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_types::SdkConfig;
use lease_common::stack::{Location, REAPER_SCHEDULE, Stack};
use lease_reaper::ReaperConfig;
use serde::Serialize;

pub use function::FunctionSpec;
pub use package::{Architecture, PackageError, ReaperPackage};
pub use schedule::{REAPER_RATE, schedule_target};

/// The tag every resource created here carries, with the stack's name, so a person (or
/// `lease teardown`) can tell ours from anything else.
pub const STACK_TAG: &str = "lease:stack";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    /// Already as wanted: nothing was sent.
    Exists,
    Updated,
    Deleted,
    /// `remove` found nothing to delete.
    Absent,
    /// `remove` left it: it still serves the stack in another region.
    Kept,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Exists => "exists",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
            Change::Absent => "absent",
            Change::Kept => "kept",
        })
    }
}

/// One resource and what `ensure` or `remove` did to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceChange {
    /// The kind, in words: "IAM role", "Lambda function", "schedule group", "schedule".
    pub resource: &'static str,
    pub name: String,
    pub change: Change,
}

impl fmt::Display for ResourceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.resource, self.name, self.change)
    }
}

fn changed(resource: &'static str, name: &str, change: Change) -> ResourceChange {
    ResourceChange {
        resource,
        name: name.to_string(),
        change,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// An AWS call failed: what was being done, to which resource, and AWS's reason.
    #[error("Failed to {action} {resource} '{name}': {message}")]
    Aws {
        action: &'static str,
        resource: &'static str,
        name: String,
        message: String,
    },
    #[error("Lambda function '{name}' did not become ready: {reason}")]
    NotReady { name: String, reason: String },
    #[error(transparent)]
    Package(#[from] PackageError),
}

/// A request the SDK's builder refused (a required field missing): a bug here, but
/// still reported by name rather than a panic.
fn build_error(
    action: &'static str,
    resource: &'static str,
    name: &str,
    err: &impl std::error::Error,
) -> DeployError {
    DeployError::Aws {
        action,
        resource,
        name: name.to_string(),
        message: format!("the request is incomplete: {err}"),
    }
}

fn aws_error<E>(action: &'static str, resource: &'static str, name: &str, err: &E) -> DeployError
where
    E: ProvideErrorMetadata + std::error::Error,
{
    DeployError::Aws {
        action,
        resource,
        name: name.to_string(),
        message: lease_common::sdk_error::render(err),
    }
}

/// How long to wait for AWS's eventual consistency: a role IAM just created may not yet
/// be assumable by Lambda, and a function mid-update refuses the next update.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Waits between CreateFunction attempts while the new role is not yet visible.
    pub role_retries: Vec<Duration>,
    pub poll: Duration,
    pub ready_limit: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            // About a minute in all: IAM usually propagates within ten seconds.
            role_retries: [2, 4, 8, 16, 30].map(Duration::from_secs).to_vec(),
            poll: Duration::from_secs(1),
            ready_limit: Duration::from_secs(120),
        }
    }
}

/// The clients the deployment calls.
#[derive(Debug, Clone)]
pub struct DeployClients {
    pub iam: aws_sdk_iam::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    /// Only to delete the function's log group, which Lambda creates on its first run.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub pace: Pace,
}

impl DeployClients {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            iam: aws_sdk_iam::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            scheduler: aws_sdk_scheduler::Client::new(config),
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
            pace: Pace::default(),
        }
    }
}

const ROLE: &str = "IAM role";
const FUNCTION: &str = "Lambda function";
const GROUP: &str = "schedule group";
const SCHEDULE: &str = "schedule";
const LOG_GROUP: &str = "log group";

/// Creates or brings up to date everything the reaper needs in `stack`, in dependency
/// order (roles, function, group, schedule), and the role of `lease schedule`'s
/// targets. Re-running it changes nothing and reports every resource `exists`.
pub async fn ensure(
    clients: &DeployClients,
    stack: &Stack,
    at: &Location,
    package: &ReaperPackage,
    config: &ReaperConfig,
) -> Result<Vec<ResourceChange>, DeployError> {
    let mut out = Vec::new();
    let wanted_roles = [
        (
            stack.reaper_function(),
            "lease backstop reaper (Lambda execution role)",
            policy::trust("lambda.amazonaws.com", None),
            policy::reaper_policy(stack, at),
        ),
        (
            stack.reaper_invoke_role(),
            "EventBridge Scheduler invoking the lease backstop reaper",
            policy::trust("scheduler.amazonaws.com", Some(at)),
            policy::invoke_policy(stack, at),
        ),
        (
            stack.schedules_role(),
            "EventBridge Scheduler running lease schedules",
            policy::trust("scheduler.amazonaws.com", Some(at)),
            policy::schedules_policy(stack, at),
        ),
    ];
    let policy_name = policy::inline_policy(at);
    for (name, description, trust, inline) in &wanted_roles {
        let change = roles::ensure_role(
            clients,
            stack,
            name,
            description,
            trust,
            (&policy_name, inline),
        )
        .await?;
        out.push(changed(ROLE, name, change));
    }
    let spec = FunctionSpec::wanted(stack, at, package, config);
    let change = function::ensure_function(clients, stack, &spec, package).await?;
    out.push(changed(FUNCTION, &stack.reaper_function(), change));
    let change = schedule::ensure_group(clients, stack).await?;
    out.push(changed(GROUP, &stack.schedule_group(), change));
    let change = schedule::ensure_schedule(clients, stack, at).await?;
    out.push(changed(
        SCHEDULE,
        &format!("{}/{REAPER_SCHEDULE}", stack.schedule_group()),
        change,
    ));
    Ok(out)
}

/// Removes what [`ensure`] made in `at`'s region, in reverse order; what is already
/// gone is reported `absent`, a role the stack's deployment in another region still
/// uses `kept` (without this region's policy). Deleting the schedule group deletes
/// every schedule in it, `lease schedule`'s included: they belong to the stack being
/// removed.
pub async fn remove(
    clients: &DeployClients,
    stack: &Stack,
    at: &Location,
) -> Result<Vec<ResourceChange>, DeployError> {
    let group = stack.schedule_group();
    let mut out = vec![
        changed(
            SCHEDULE,
            &format!("{group}/{REAPER_SCHEDULE}"),
            schedule::remove_schedule(clients, stack).await?,
        ),
        changed(GROUP, &group, schedule::remove_group(clients, stack).await?),
        changed(
            FUNCTION,
            &stack.reaper_function(),
            function::remove_function(clients, stack).await?,
        ),
        // After the function, so no run of it can create the group again.
        changed(
            LOG_GROUP,
            &policy::log_group(stack),
            remove_log_group(clients, stack).await?,
        ),
    ];
    let policy_name = policy::inline_policy(at);
    for name in [
        stack.schedules_role(),
        stack.reaper_invoke_role(),
        stack.reaper_function(),
    ] {
        let change = roles::remove_role(clients, &name, &policy_name).await?;
        out.push(changed(ROLE, &name, change));
    }
    Ok(out)
}

/// Deletes the function's log group. Lambda created it untagged, on the function's
/// first run, under a name that only the stack's function writes to
/// (`/aws/lambda/lease-<stack>-reaper`): the name is what makes it the stack's.
async fn remove_log_group(clients: &DeployClients, stack: &Stack) -> Result<Change, DeployError> {
    let name = policy::log_group(stack);
    match clients
        .logs
        .delete_log_group()
        .log_group_name(&name)
        .send()
        .await
    {
        Ok(_) => Ok(Change::Deleted),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(Change::Absent)
        }
        Err(e) => Err(aws_error("delete", LOG_GROUP, &name, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_a_line_each() {
        let c = changed(ROLE, "lease-dev-reaper", Change::Exists);
        assert_eq!(c.to_string(), "IAM role lease-dev-reaper: exists");
    }
}
