//! Deploys the backstop reaper into a stack, and removes it: the reaper's execution
//! role, its Lambda function (`provided.al2023`, the architecture of the package), the
//! stack's EventBridge Scheduler group with a `rate(5 minutes)` schedule invoking the
//! function through a role that may invoke nothing else, and the role `lease schedule`
//! targets run with. Names come from [`lease_common::stack`].
//!
//! [`ensure`] is idempotent: it reads each resource first and reports it `created`,
//! `exists` (nothing sent) or `updated` (only what differs is rewritten). [`remove`]
//! deletes in reverse order and reports what was already `absent`, so both are safe to
//! re-run after a partial failure. What is wanted is computed by pure functions
//! ([`policy`], [`FunctionSpec`], [`schedule_target`]); this module only reads, compares
//! and writes.

pub mod package;
pub mod policy;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, LastUpdateStatus, Runtime, State};
use aws_sdk_scheduler::types::{
    FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, ScheduleState, Target,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_types::SdkConfig;
use lease_common::stack::{Location, REAPER_SCHEDULE, Stack};
use lease_reaper::ReaperConfig;
use lease_reaper::function::{ENV_GRACE, ENV_MAX_AGE};
use serde::Serialize;
use serde_json::Value;

pub use package::{Architecture, PackageError, ReaperPackage};

/// The tag every resource created here carries, with the stack's name, so a person (or
/// `lease teardown`) can tell ours from anything else.
pub const STACK_TAG: &str = "lease:stack";
/// How often the reaper runs. Its grace period (15 minutes) is three runs, so an
/// instance whose agent died is ended within 15 to 20 minutes of its deadline.
pub const REAPER_RATE: &str = "rate(5 minutes)";
/// A run over a large fleet makes one call per due instance; five minutes (the period)
/// is far more than that needs, and runs never pile up.
const FUNCTION_TIMEOUT_SECS: i32 = 300;
/// The smallest size: the reaper holds one page of instances at a time.
const FUNCTION_MEMORY_MB: i32 = 128;
/// `provided.*` runtimes run the `bootstrap` file and ignore the handler; Lambda still
/// requires one, and this is the convention.
const HANDLER: &str = "bootstrap";
/// The event the schedule sends. The function reaps everything whatever it receives;
/// the schedule's time (substituted by Scheduler) ties its log line to a run.
const SCHEDULE_INPUT: &str =
    r#"{"source":"lease.scheduler","scheduled-time":"<aws.scheduler.scheduled-time>"}"#;
/// A missed run is made up by the next one five minutes later: retry briefly, then
/// drop rather than queue up stale runs for a day (Scheduler's default).
const SCHEDULE_RETRIES: i32 = 2;
const SCHEDULE_MAX_EVENT_AGE_SECS: i32 = 300;

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
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Exists => "exists",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
            Change::Absent => "absent",
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

/// The service's error code and message, or the error's chain when there is none
/// (connection refused, timeouts).
fn reason<E>(err: &E) -> String
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut out = err.to_string();
            let mut source = err.source();
            while let Some(s) = source {
                out.push_str(": ");
                out.push_str(&s.to_string());
                source = s.source();
            }
            out
        }
    }
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
        message: reason(err),
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
    pub pace: Pace,
}

impl DeployClients {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            iam: aws_sdk_iam::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            scheduler: aws_sdk_scheduler::Client::new(config),
            pace: Pace::default(),
        }
    }
}

/// The function's configuration as wanted, and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub runtime: String,
    pub handler: String,
    pub role_arn: String,
    pub architecture: String,
    pub timeout: i32,
    pub memory: i32,
    pub env: HashMap<String, String>,
    pub code_sha256: String,
}

impl FunctionSpec {
    pub fn wanted(
        stack: &Stack,
        at: &Location,
        package: &ReaperPackage,
        config: &ReaperConfig,
    ) -> Self {
        Self {
            runtime: Runtime::Providedal2023.as_str().to_string(),
            handler: HANDLER.into(),
            role_arn: at.iam_arn(&format!("role/{}", stack.reaper_function())),
            architecture: package.architecture().as_str().into(),
            timeout: FUNCTION_TIMEOUT_SECS,
            memory: FUNCTION_MEMORY_MB,
            env: HashMap::from([
                (ENV_GRACE.to_string(), config.grace.to_string()),
                (ENV_MAX_AGE.to_string(), config.max_age.to_string()),
            ]),
            code_sha256: package.code_sha256(),
        }
    }

    fn read(c: &aws_sdk_lambda::types::FunctionConfiguration) -> Self {
        Self {
            runtime: c
                .runtime()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            handler: c.handler().unwrap_or_default().to_string(),
            role_arn: c.role().unwrap_or_default().to_string(),
            architecture: c
                .architectures()
                .first()
                .map(|a| a.as_str().to_string())
                // Lambda's default when none was given.
                .unwrap_or_else(|| "x86_64".into()),
            timeout: c.timeout().unwrap_or_default(),
            memory: c.memory_size().unwrap_or_default(),
            env: c
                .environment()
                .and_then(|e| e.variables())
                .cloned()
                .unwrap_or_default(),
            code_sha256: c.code_sha256().unwrap_or_default().to_string(),
        }
    }

    /// Whether the configuration (UpdateFunctionConfiguration) and the code or its
    /// architecture (UpdateFunctionCode) differ from `self`.
    pub fn differences(&self, current: &FunctionSpec) -> (bool, bool) {
        let config = self.runtime != current.runtime
            || self.handler != current.handler
            || self.role_arn != current.role_arn
            || self.timeout != current.timeout
            || self.memory != current.memory
            || self.env != current.env;
        let code =
            self.code_sha256 != current.code_sha256 || self.architecture != current.architecture;
        (config, code)
    }
}

/// The reaper schedule's target: the function, through the invoke role.
pub fn schedule_target(stack: &Stack, at: &Location) -> (String, String) {
    (
        policy::function_arn(stack, at),
        at.iam_arn(&format!("role/{}", stack.reaper_invoke_role())),
    )
}

/// An IAM policy document as IAM returns it (URL-encoded JSON) or as sent, parsed.
fn parse_document(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(text)?).ok())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

const ROLE: &str = "IAM role";
const FUNCTION: &str = "Lambda function";
const GROUP: &str = "schedule group";
const SCHEDULE: &str = "schedule";

/// A role with this trust policy and this inline policy ([`policy::INLINE_POLICY`]).
async fn ensure_role(
    c: &DeployClients,
    stack: &Stack,
    name: &str,
    description: &str,
    trust: &Value,
    inline: &Value,
) -> Result<Change, DeployError> {
    let mut change = Change::Exists;
    match c.iam.get_role().role_name(name).send().await {
        Ok(out) => {
            let current = out
                .role()
                .and_then(|r| r.assume_role_policy_document())
                .and_then(parse_document);
            if current.as_ref() != Some(trust) {
                c.iam
                    .update_assume_role_policy()
                    .role_name(name)
                    .policy_document(trust.to_string())
                    .send()
                    .await
                    .map_err(|e| aws_error("update the trust policy of", ROLE, name, &e))?;
                change = Change::Updated;
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            c.iam
                .create_role()
                .role_name(name)
                .description(description)
                .assume_role_policy_document(trust.to_string())
                .tags(
                    aws_sdk_iam::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(stack.name())
                        .build()
                        .map_err(|e| build_error("tag", ROLE, name, &e))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("create", ROLE, name, &e))?;
            change = Change::Created;
        }
        Err(e) => return Err(aws_error("read", ROLE, name, &e)),
    }
    let current = match c
        .iam
        .get_role_policy()
        .role_name(name)
        .policy_name(policy::INLINE_POLICY)
        .send()
        .await
    {
        Ok(out) => parse_document(out.policy_document()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read the policy of", ROLE, name, &e)),
    };
    if current.as_ref() != Some(inline) {
        c.iam
            .put_role_policy()
            .role_name(name)
            .policy_name(policy::INLINE_POLICY)
            .policy_document(inline.to_string())
            .send()
            .await
            .map_err(|e| aws_error("write the policy of", ROLE, name, &e))?;
        if change == Change::Exists {
            change = Change::Updated;
        }
    }
    Ok(change)
}

/// Waits until the function accepts the next change (Lambda refuses one while the last
/// is still being applied).
async fn wait_ready(c: &DeployClients, name: &str) -> Result<(), DeployError> {
    let start = std::time::Instant::now();
    loop {
        let out = c
            .lambda
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .map_err(|e| aws_error("read", FUNCTION, name, &e))?;
        let state = out.state();
        let update = out.last_update_status();
        if update == Some(&LastUpdateStatus::Failed) || state == Some(&State::Failed) {
            return Err(DeployError::NotReady {
                name: name.to_string(),
                reason: out
                    .last_update_status_reason()
                    .or(out.state_reason())
                    .unwrap_or("failed")
                    .to_string(),
            });
        }
        if update != Some(&LastUpdateStatus::InProgress) && state != Some(&State::Pending) {
            return Ok(());
        }
        if start.elapsed() > c.pace.ready_limit {
            return Err(DeployError::NotReady {
                name: name.to_string(),
                reason: format!("still updating after {:?}", c.pace.ready_limit),
            });
        }
        tokio::time::sleep(c.pace.poll).await;
    }
}

async fn create_function(
    c: &DeployClients,
    stack: &Stack,
    name: &str,
    spec: &FunctionSpec,
    package: &ReaperPackage,
) -> Result<(), DeployError> {
    let mut waits = c.pace.role_retries.iter();
    loop {
        let result = c
            .lambda
            .create_function()
            .function_name(name)
            .description("lease backstop reaper: ends managed instances whose agent did not")
            .runtime(Runtime::Providedal2023)
            .handler(HANDLER)
            .role(&spec.role_arn)
            .architectures(spec.architecture.as_str().into())
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(
                Environment::builder()
                    .set_variables(Some(spec.env.clone()))
                    .build(),
            )
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(package.bytes()))
                    .build(),
            )
            .tags(STACK_TAG, stack.name())
            .send()
            .await;
        match result {
            Ok(_) => return Ok(()),
            // A role created moments ago is not yet visible to Lambda.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_value_exception())
                    && reason(&e).contains("cannot be assumed") =>
            {
                match waits.next() {
                    Some(wait) => tokio::time::sleep(*wait).await,
                    None => return Err(aws_error("create", FUNCTION, name, &e)),
                }
            }
            Err(e) => return Err(aws_error("create", FUNCTION, name, &e)),
        }
    }
}

async fn ensure_function(
    c: &DeployClients,
    stack: &Stack,
    spec: &FunctionSpec,
    package: &ReaperPackage,
) -> Result<Change, DeployError> {
    let name = stack.reaper_function();
    let current = match c.lambda.get_function().function_name(&name).send().await {
        Ok(out) => out.configuration().map(FunctionSpec::read),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read", FUNCTION, &name, &e)),
    };
    let Some(current) = current else {
        create_function(c, stack, &name, spec, package).await?;
        wait_ready(c, &name).await?;
        return Ok(Change::Created);
    };
    let (config, code) = spec.differences(&current);
    if config {
        wait_ready(c, &name).await?;
        c.lambda
            .update_function_configuration()
            .function_name(&name)
            .runtime(Runtime::Providedal2023)
            .handler(HANDLER)
            .role(&spec.role_arn)
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(
                Environment::builder()
                    .set_variables(Some(spec.env.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error("update", FUNCTION, &name, &e))?;
    }
    if code {
        wait_ready(c, &name).await?;
        c.lambda
            .update_function_code()
            .function_name(&name)
            .architectures(spec.architecture.as_str().into())
            .zip_file(Blob::new(package.bytes()))
            .send()
            .await
            .map_err(|e| aws_error("upload the code of", FUNCTION, &name, &e))?;
    }
    if config || code {
        wait_ready(c, &name).await?;
        Ok(Change::Updated)
    } else {
        Ok(Change::Exists)
    }
}

async fn ensure_group(c: &DeployClients, stack: &Stack) -> Result<Change, DeployError> {
    let name = stack.schedule_group();
    match c.scheduler.get_schedule_group().name(&name).send().await {
        Ok(_) => Ok(Change::Exists),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            c.scheduler
                .create_schedule_group()
                .name(&name)
                .tags(
                    aws_sdk_scheduler::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(stack.name())
                        .build()
                        .map_err(|e| build_error("tag", GROUP, &name, &e))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("create", GROUP, &name, &e))?;
            Ok(Change::Created)
        }
        Err(e) => Err(aws_error("read", GROUP, &name, &e)),
    }
}

fn reaper_target(stack: &Stack, at: &Location) -> Result<Target, DeployError> {
    let (function, role) = schedule_target(stack, at);
    Target::builder()
        .arn(function)
        .role_arn(role)
        .input(SCHEDULE_INPUT)
        .retry_policy(
            RetryPolicy::builder()
                .maximum_retry_attempts(SCHEDULE_RETRIES)
                .maximum_event_age_in_seconds(SCHEDULE_MAX_EVENT_AGE_SECS)
                .build(),
        )
        .build()
        .map_err(|e| build_error("build the target of", SCHEDULE, REAPER_SCHEDULE, &e))
}

fn off() -> Result<FlexibleTimeWindow, DeployError> {
    FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .map_err(|e| build_error("build the time window of", SCHEDULE, REAPER_SCHEDULE, &e))
}

async fn ensure_schedule(
    c: &DeployClients,
    stack: &Stack,
    at: &Location,
) -> Result<Change, DeployError> {
    let group = stack.schedule_group();
    let name = format!("{group}/{REAPER_SCHEDULE}");
    let target = reaper_target(stack, at)?;
    let current = match c
        .scheduler
        .get_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
        .send()
        .await
    {
        Ok(out) => Some(out),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read", SCHEDULE, &name, &e)),
    };
    let Some(current) = current else {
        c.scheduler
            .create_schedule()
            .group_name(&group)
            .name(REAPER_SCHEDULE)
            .description("lease backstop reaper")
            .schedule_expression(REAPER_RATE)
            .flexible_time_window(off()?)
            .target(target)
            .state(ScheduleState::Enabled)
            .send()
            .await
            .map_err(|e| aws_error("create", SCHEDULE, &name, &e))?;
        return Ok(Change::Created);
    };
    let same = current.schedule_expression() == Some(REAPER_RATE)
        && current.state() == Some(&ScheduleState::Enabled)
        && current.flexible_time_window().map(|w| w.mode()) == Some(&FlexibleTimeWindowMode::Off)
        && current.target().is_some_and(|t| {
            t.arn() == target.arn()
                && t.role_arn() == target.role_arn()
                && t.input() == target.input()
                && t.retry_policy() == target.retry_policy()
        });
    if same {
        return Ok(Change::Exists);
    }
    c.scheduler
        .update_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
        .description("lease backstop reaper")
        .schedule_expression(REAPER_RATE)
        .flexible_time_window(off()?)
        .target(target)
        .state(ScheduleState::Enabled)
        .send()
        .await
        .map_err(|e| aws_error("update", SCHEDULE, &name, &e))?;
    Ok(Change::Updated)
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
) -> Result<Vec<ResourceChange>, DeployError> {
    let mut out = Vec::new();
    let roles = [
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
    for (name, description, trust, inline) in &roles {
        let change = ensure_role(clients, stack, name, description, trust, inline).await?;
        out.push(changed(ROLE, name, change));
    }
    let spec = FunctionSpec::wanted(stack, at, package, config);
    let change = ensure_function(clients, stack, &spec, package).await?;
    out.push(changed(FUNCTION, &stack.reaper_function(), change));
    let change = ensure_group(clients, stack).await?;
    out.push(changed(GROUP, &stack.schedule_group(), change));
    let change = ensure_schedule(clients, stack, at).await?;
    out.push(changed(
        SCHEDULE,
        &format!("{}/{REAPER_SCHEDULE}", stack.schedule_group()),
        change,
    ));
    Ok(out)
}

/// IAM's "no such role or policy".
fn missing<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchEntity")
}

/// Deletes a role's inline policy, then the role.
async fn remove_role(c: &DeployClients, name: &str) -> Result<Change, DeployError> {
    match c
        .iam
        .delete_role_policy()
        .role_name(name)
        .policy_name(policy::INLINE_POLICY)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if missing(&e) => {}
        Err(e) => return Err(aws_error("delete the policy of", ROLE, name, &e)),
    }
    match c.iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(Change::Deleted),
        Err(e) if missing(&e) => Ok(Change::Absent),
        Err(e) => Err(aws_error("delete", ROLE, name, &e)),
    }
}

/// Removes what [`ensure`] made, in reverse order; what is already gone is reported
/// `absent`. Deleting the schedule group deletes every schedule in it, `lease
/// schedule`'s included: they belong to the stack being removed.
pub async fn remove(
    clients: &DeployClients,
    stack: &Stack,
) -> Result<Vec<ResourceChange>, DeployError> {
    let c = clients;
    let mut out = Vec::new();
    let group = stack.schedule_group();

    let name = format!("{group}/{REAPER_SCHEDULE}");
    let change = match c
        .scheduler
        .delete_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
        .send()
        .await
    {
        Ok(_) => Change::Deleted,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Change::Absent
        }
        Err(e) => return Err(aws_error("delete", SCHEDULE, &name, &e)),
    };
    out.push(changed(SCHEDULE, &name, change));

    // Read first: deleting a group that does not exist is an error worth telling apart
    // from a real failure.
    let change = match c.scheduler.get_schedule_group().name(&group).send().await {
        Ok(_) => {
            c.scheduler
                .delete_schedule_group()
                .name(&group)
                .send()
                .await
                .map_err(|e| aws_error("delete", GROUP, &group, &e))?;
            Change::Deleted
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Change::Absent
        }
        Err(e) => return Err(aws_error("read", GROUP, &group, &e)),
    };
    out.push(changed(GROUP, &group, change));

    let function = stack.reaper_function();
    let change = match c
        .lambda
        .delete_function()
        .function_name(&function)
        .send()
        .await
    {
        Ok(_) => Change::Deleted,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Change::Absent
        }
        Err(e) => return Err(aws_error("delete", FUNCTION, &function, &e)),
    };
    out.push(changed(FUNCTION, &function, change));

    for name in [
        stack.schedules_role(),
        stack.reaper_invoke_role(),
        stack.reaper_function(),
    ] {
        let change = remove_role(c, &name).await?;
        out.push(changed(ROLE, &name, change));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            runtime: "provided.al2023".into(),
            handler: "bootstrap".into(),
            role_arn: "arn:aws:iam::123456789012:role/lease-dev-reaper".into(),
            architecture: "x86_64".into(),
            timeout: 300,
            memory: 128,
            env: HashMap::from([(ENV_GRACE.to_string(), "15m".to_string())]),
            code_sha256: "abc=".into(),
        }
    }

    #[test]
    fn only_what_differs_is_rewritten() {
        let want = spec();
        assert_eq!(want.differences(&spec()), (false, false));
        let mut env = spec();
        env.env.insert(ENV_GRACE.into(), "30m".into());
        assert_eq!(want.differences(&env), (true, false));
        let mut code = spec();
        code.code_sha256 = "def=".into();
        assert_eq!(want.differences(&code), (false, true));
        let mut arch = spec();
        arch.architecture = "arm64".into();
        assert_eq!(want.differences(&arch), (false, true));
    }

    #[test]
    fn policies_read_back_url_encoded_or_not() {
        let doc = serde_json::json!({"Version": "2012-10-17", "Statement": []});
        assert_eq!(parse_document(&doc.to_string()), Some(doc.clone()));
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(parse_document(encoded), Some(doc));
        assert_eq!(parse_document("%ZZ"), None);
    }

    #[test]
    fn changes_read_as_a_line_each() {
        let c = changed(ROLE, "lease-dev-reaper", Change::Exists);
        assert_eq!(c.to_string(), "IAM role lease-dev-reaper: exists");
    }
}
