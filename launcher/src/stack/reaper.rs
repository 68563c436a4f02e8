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
//! ([`policy`], [`function::wanted`], [`schedule::wanted`]); the roles are the stack's
//! one role module's ([`super::role`]).

pub mod function;
pub mod package;
pub mod policy;
pub mod schedule;

use std::time::Duration;

use aws_types::SdkConfig;
use lease_common::stack::{Location, REAPER_SCHEDULE, STACK_TAG, Stack};
use lease_reaper::ReaperConfig;

use super::role::{self, Owner, RoleSpec};
use super::{Outcome, Row};
use crate::aws::StackTag;
use crate::aws::logs::LogGroups;
use crate::aws::scheduler::AwsSchedules;
use crate::error::Result;

pub use package::{Architecture, PackageError, ReaperPackage};
pub use schedule::{REAPER_RATE, schedule_target};

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
    /// The same Scheduler, behind the traits `lease schedule` and the deployment share.
    pub schedules: AwsSchedules,
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
            schedules: AwsSchedules::new(config),
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
            pace: Pace::default(),
        }
    }
}

const ROLE: &str = "iam role";
const FUNCTION: &str = "lambda function";
const GROUP: &str = "schedule group";
const SCHEDULE: &str = "schedule";
const LOG_GROUP: &str = "log group";

fn row(kind: &'static str, name: &str, outcome: Outcome) -> Row {
    Row {
        kind,
        name: name.to_string(),
        outcome,
        note: None,
    }
}

fn tag(stack: &Stack) -> StackTag {
    (STACK_TAG.to_string(), stack.name().to_string())
}

/// The deployment's three roles as they should be in `at`'s region: the function's
/// execution role, the role Scheduler invokes it with, and the role `lease schedule`'s
/// targets run with.
pub fn roles(stack: &Stack, at: &Location) -> [RoleSpec; 3] {
    let policy_name = policy::inline_policy(at);
    let spec = |name: String, description: &str, trust, policy| RoleSpec {
        name,
        description: description.to_string(),
        trust,
        policy_name: policy_name.clone(),
        policy,
    };
    [
        spec(
            stack.reaper_function(),
            "lease backstop reaper (Lambda execution role)",
            role::trust("lambda.amazonaws.com", None),
            policy::reaper_policy(stack, at),
        ),
        spec(
            stack.reaper_invoke_role(),
            "EventBridge Scheduler invoking the lease backstop reaper",
            role::trust("scheduler.amazonaws.com", Some(at)),
            policy::invoke_policy(stack, at),
        ),
        spec(
            stack.schedules_role(),
            "EventBridge Scheduler running lease schedules",
            role::trust("scheduler.amazonaws.com", Some(at)),
            policy::schedules_policy(stack, at),
        ),
    ]
}

/// Creates or brings up to date everything the reaper needs in `stack`, in dependency
/// order (roles, function, group, schedule), and the role of `lease schedule`'s
/// targets. Re-running it changes nothing and reports every resource `exists`.
pub async fn ensure(
    clients: &DeployClients,
    stack: &Stack,
    at: &Location,
    package: &ReaperPackage,
    config: &ReaperConfig,
) -> Result<Vec<Row>> {
    let tag = tag(stack);
    let mut out = Vec::new();
    for spec in roles(stack, at) {
        let d = role::ensure_role(&clients.iam, &spec, &tag).await?;
        out.push(row(ROLE, &spec.name, d.combined()));
    }
    let spec = function::wanted(stack, at, package, config);
    let outcome =
        function::ensure_function(&clients.lambda, &clients.pace, stack, &spec, package, &tag)
            .await?;
    out.push(row(FUNCTION, &stack.reaper_function(), outcome));
    let outcome = schedule::ensure_group(&clients.schedules, stack, &tag).await?;
    out.push(row(GROUP, &stack.schedule_group(), outcome));
    let outcome = schedule::ensure_schedule(&clients.schedules, stack, at).await?;
    out.push(row(
        SCHEDULE,
        &format!("{}/{REAPER_SCHEDULE}", stack.schedule_group()),
        outcome,
    ));
    Ok(out)
}

/// Removes what [`ensure`] made in `at`'s region, in reverse order; what is already
/// gone is reported `absent`, a role the stack's deployment in another region still
/// uses `kept` (without this region's policy). Deleting the schedule group deletes
/// every schedule in it, `lease schedule`'s included: they belong to the stack being
/// removed.
pub async fn remove(clients: &DeployClients, stack: &Stack, at: &Location) -> Result<Vec<Row>> {
    let group = stack.schedule_group();
    let mut out = vec![
        row(
            SCHEDULE,
            &format!("{group}/{REAPER_SCHEDULE}"),
            schedule::remove_schedule(&clients.schedules, stack).await?,
        ),
        row(
            GROUP,
            &group,
            schedule::remove_group(&clients.schedules, stack).await?,
        ),
        row(
            FUNCTION,
            &stack.reaper_function(),
            function::remove_function(&clients.lambda, stack).await?,
        ),
        // After the function, so no run of it can create the group again.
        row(
            LOG_GROUP,
            &policy::log_group(stack),
            remove_log_group(&clients.logs, stack).await?,
        ),
    ];
    let policy_name = policy::inline_policy(at);
    for name in [
        stack.schedules_role(),
        stack.reaper_invoke_role(),
        stack.reaper_function(),
    ] {
        // The roles are named for the stack's reaper: the name makes them the stack's.
        let removed = role::remove_region_policy(
            &clients.iam,
            &name,
            &policy_name,
            policy::INLINE_POLICY_PREFIX,
            Owner::ByName,
        )
        .await?;
        let outcome = if removed.others.is_empty() {
            role::remove_role(&clients.iam, &name, Owner::ByName)
                .await?
                .0
        } else {
            Outcome::Kept
        };
        out.push(row(ROLE, &name, outcome));
    }
    Ok(out)
}

/// Deletes the function's log group. Lambda created it untagged, on the function's
/// first run, under a name that only the stack's function writes to
/// (`/aws/lambda/lease-<stack>-reaper`): the name is what makes it the stack's.
async fn remove_log_group<L: LogGroups>(logs: &L, stack: &Stack) -> Result<Outcome> {
    Ok(if logs.delete_log_group(&policy::log_group(stack)).await? {
        Outcome::Deleted
    } else {
        Outcome::Absent
    })
}
