//! `lease doctor`: checks that an account and region are ready for `lease`, and says
//! how to fix what is not. Each check reads (never writes) and ends in one line, `ok`,
//! `warn`, `fail` or `skipped`, with the fix beside anything not `ok`. A check that
//! cannot be made here (against an emulator: IAM's simulator, EC2's quotas, and
//! invocations of a reaper no schedule ever runs) is `skipped`, never `ok`.
//!
//! The decisions (what counts as drift, which principal to simulate, whether the run
//! passed) are pure functions; [`run`] only gathers what AWS says.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::stack::{ClaudeAuth, Location, Stack};
use serde::Serialize;
use serde_json::Value;

use crate::model::policies as iam;
use crate::model::quota;
use crate::stack::bucket::ABORT_MULTIPART_RULE;
use crate::stack::reaper::policy;
use crate::stack::wanted as plan;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not checked here, for the reason in the detail: neither passed nor failed.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail, None::<String>)
    }

    pub fn new(
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: fix.map(Into::into),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix))
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix))
    }

    fn skipped(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(name, Status::Skipped, why, None::<String>)
    }
}

/// Exit status 0 only when nothing failed (warnings and skipped checks do not fail).
pub fn passed(checks: &[Check]) -> bool {
    !checks.iter().any(|c| c.status == Status::Fail)
}

/// How many checks came out each way, in the order ok, warn, fail, skipped.
pub fn tally(checks: &[Check]) -> [usize; 4] {
    let n = |s| checks.iter().filter(|c| c.status == s).count();
    [
        n(Status::Ok),
        n(Status::Warn),
        n(Status::Fail),
        n(Status::Skipped),
    ]
}

/// The IAM principal whose policies `iam:SimulatePrincipalPolicy` evaluates for a
/// caller: a user or role as it is; an assumed role's session as its role (the
/// simulator takes no sessions); the root user (no policies to simulate) none.
pub fn principal_to_simulate(caller_arn: &str) -> Option<String> {
    let mut parts = caller_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), _, Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    match service {
        "iam" if resource.starts_with("user/") || resource.starts_with("role/") => {
            Some(caller_arn.to_string())
        }
        "sts" => {
            let role = resource.strip_prefix("assumed-role/")?.split('/').next()?;
            Some(format!("arn:{partition}:iam::{account}:role/{role}"))
        }
        _ => None,
    }
}

/// The (action, resources) pairs of a policy document, for the simulator.
pub fn grants(policy: &Value) -> Vec<(String, Vec<String>)> {
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    policy["Statement"]
        .as_array()
        .map(|statements| {
            statements
                .iter()
                .flat_map(|s| {
                    let resources = list(&s["Resource"]);
                    list(&s["Action"])
                        .into_iter()
                        .map(move |a| (a, resources.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The attributes of a queue that differ from what setup makes, named.
pub fn queue_drift(current: &BTreeMap<String, String>, wanted: &plan::Attributes) -> Vec<String> {
    plan::differing(current, wanted)
}

/// What `doctor` is asked about.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub stack: Stack,
    pub pools: Vec<String>,
    pub claude_auth: ClaudeAuth,
    /// Against an emulator (a custom endpoint): IAM's simulator and EC2's quotas are
    /// not there and schedules never run, so those checks are skipped.
    pub emulator: bool,
    /// Instance types to check quotas for.
    pub instance_types: Vec<String>,
}

/// The clients the checks read with.
#[derive(Debug, Clone)]
pub struct Clients {
    pub setup: crate::stack::Clients,
    pub ec2: aws_sdk_ec2::Client,
    /// The account's vCPU quotas.
    pub quotas: aws_sdk_servicequotas::Client,
    /// The reaper's Lambda metrics (`Invocations`, `Errors`).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Clients {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        Self {
            setup: crate::stack::Clients::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            quotas: aws_sdk_servicequotas::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
        }
    }
}

/// How far back the reaper's invocations are read: its schedule runs every few
/// minutes, so a day with none, or with errors, says it is not doing its job.
const INVOCATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

const SETUP_FIX: &str = "run `lease setup` (it creates what is missing and corrects what differs)";

fn describe<E>(e: &E) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error,
{
    lease_common::sdk_error::render(e)
}

/// A default VPC, where `lease launch` puts instances without `--subnet-id`.
pub async fn default_vpc(ec2: &aws_sdk_ec2::Client) -> Check {
    let name = "default VPC";
    let out = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("is-default")
                .values("true")
                .build(),
        )
        .send()
        .await;
    match out {
        Ok(o) => match o.vpcs().first().and_then(|v| v.vpc_id()) {
            Some(id) => Check::ok(name, id),
            None => Check::warn(
                name,
                "this region has no default VPC",
                "pass --subnet-id (and --security-group-id) to `lease launch`, or create one with `aws ec2 create-default-vpc`",
            ),
        },
        Err(e) => Check::fail(
            name,
            describe(&e),
            "allow ec2:DescribeVpcs, or check the region",
        ),
    }
}

/// The stack's resources are there and as setup makes them.
pub async fn stack_resources(c: &Clients, at: &Location, inputs: &Inputs) -> Vec<Check> {
    let stack = &inputs.stack;
    let s = &c.setup;
    let mut out = Vec::new();
    let commands = at.arn("sns", &stack.command_topic());
    for topic in [stack.command_topic(), stack.bus_topic()] {
        let arn = at.arn("sns", &topic);
        let name = format!("sns topic {topic}");
        out.push(
            match s.sns.get_topic_attributes().topic_arn(&arn).send().await {
                Ok(_) => Check::ok(name, "present"),
                Err(e) => Check::fail(name, describe(&e), SETUP_FIX),
            },
        );
    }
    for pool in &inputs.pools {
        let (Ok(queue), Ok(dlq)) = (stack.pool_queue(pool), stack.dead_letter_queue(pool)) else {
            out.push(Check::fail(
                format!("pool {pool}"),
                "not a valid pool name",
                "fix the settings file's pools",
            ));
            continue;
        };
        let wanted = [
            (dlq.clone(), plan::dead_letter_attributes()),
            (
                queue.clone(),
                plan::pool_queue_attributes(
                    &at.arn("sqs", &queue),
                    &at.arn("sqs", &dlq),
                    &commands,
                ),
            ),
        ];
        for (name, attrs) in wanted {
            out.push(queue_check(&s.sqs, &name, &attrs).await);
        }
    }
    let events = stack.events_queue();
    let events_attrs =
        plan::events_queue_attributes(&at.arn("sqs", &events), &at.arn("sns", &stack.bus_topic()));
    out.push(queue_check(&s.sqs, &events, &events_attrs).await);

    let bucket = stack.bucket(&at.account, &at.region);
    let name = format!("s3 bucket {bucket}");
    // The lifecycle read alone: it answers NoSuchBucket for a missing bucket, so no
    // HeadBucket (s3:ListBucket on the whole bucket) is needed.
    let lifecycle =
        s.s3.get_bucket_lifecycle_configuration()
            .bucket(&bucket)
            .send()
            .await;
    let rules = match lifecycle {
        Ok(o) => Ok(o.rules().to_vec()),
        Err(e) => match e.as_service_error().and_then(|e| e.meta().code()) {
            Some("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
            _ => Err(describe(&e)),
        },
    };
    out.push(match rules {
        Err(e) => Check::fail(name, e, SETUP_FIX),
        Ok(rules) if rules.iter().any(|r| r.id() == Some(ABORT_MULTIPART_RULE)) => {
            Check::ok(name, "present, aborts incomplete multipart uploads")
        }
        Ok(_) => Check::fail(
            name,
            format!("no lifecycle rule '{ABORT_MULTIPART_RULE}': failed uploads keep billed parts"),
            SETUP_FIX,
        ),
    });
    for table in [stack.nodes_table(), stack.tasks_table()] {
        let name = format!("dynamodb table {table}");
        out.push(
            match s.dynamodb.describe_table().table_name(&table).send().await {
                Ok(_) => Check::ok(name, "present"),
                Err(e) => Check::fail(name, describe(&e), SETUP_FIX),
            },
        );
    }
    out.push(agent_role(c, at, inputs).await);
    out
}

async fn queue_check(sqs: &aws_sdk_sqs::Client, name: &str, wanted: &plan::Attributes) -> Check {
    let label = format!("sqs queue {name}");
    let url = match sqs.get_queue_url().queue_name(name).send().await {
        Ok(o) => o.queue_url().unwrap_or_default().to_string(),
        Err(e) => return Check::fail(label, describe(&e), SETUP_FIX),
    };
    let attrs = match sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
    {
        Ok(o) => o
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default(),
        Err(e) => return Check::fail(label, describe(&e), SETUP_FIX),
    };
    let drift = queue_drift(&attrs, wanted);
    if drift.is_empty() {
        Check::ok(label, "present, as setup makes it")
    } else {
        Check::fail(label, format!("drifted: {}", drift.join(", ")), SETUP_FIX)
    }
}

/// The agents' role carries this region's policy exactly as `lease iam-policy agent`
/// prints it (setup's comparison: same document once parsed).
async fn agent_role(c: &Clients, at: &Location, inputs: &Inputs) -> Check {
    let role = inputs.stack.agent_role();
    let policy_name = plan::agent_policy_name(at.region.as_str());
    let label = format!("iam role {role}");
    let wanted = match iam::agent_policy(&inputs.stack, at, &[], inputs.claude_auth) {
        Ok(p) => p.to_string(),
        Err(e) => return Check::fail(label, e.to_string(), "fix the stack name"),
    };
    let current = c
        .setup
        .iam
        .get_role_policy()
        .role_name(&role)
        .policy_name(&policy_name)
        .send()
        .await;
    match current {
        Err(e) => Check::fail(label, describe(&e), SETUP_FIX),
        Ok(o) if plan::same_value(o.policy_document(), &wanted) => Check::ok(
            label,
            format!("policy {policy_name} is what `lease iam-policy agent` prints"),
        ),
        Ok(_) => Check::fail(
            label,
            format!("policy {policy_name} differs from what `lease iam-policy agent` prints"),
            SETUP_FIX,
        ),
    }
}

/// The agent package for each architecture, for instances whose AMI lacks it.
pub async fn agent_packages(c: &Clients, at: &Location, stack: &Stack) -> Vec<Check> {
    let bucket = stack.bucket(&at.account, &at.region);
    let mut out = Vec::new();
    for arch in ["amd64", "arm64"] {
        let key = lease_common::layout::agent_deb_key(lease_common::VERSION, arch);
        let label = format!("agent package {arch}");
        out.push(
            match c.setup.s3.head_object().bucket(&bucket).key(&key).send().await {
                Ok(_) => Check::ok(label, format!("s3://{bucket}/{key}")),
                Err(_) => Check::warn(
                    label,
                    format!("no s3://{bucket}/{key}: {arch} instances need an AMI with leased baked in"),
                    format!(
                        "build it with packaging/build-deb.sh, then `lease setup --agent-deb leased_{}_{arch}.deb`",
                        lease_common::VERSION
                    ),
                ),
            },
        );
    }
    out
}

/// The backstop reaper: its function and its enabled schedule; its recent invocations
/// only on AWS.
pub async fn reaper(c: &Clients, inputs: &Inputs) -> Vec<Check> {
    let stack = &inputs.stack;
    let d = &c.setup.deploy;
    let mut out = Vec::new();
    let function = stack.reaper_function();
    let label = format!("reaper function {function}");
    out.push(
        match d
            .lambda
            .get_function_configuration()
            .function_name(&function)
            .send()
            .await
        {
            Ok(o) => {
                let state = o
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "unknown".into());
                if state == "Active" || state == "unknown" {
                    Check::ok(label, format!("deployed (state {state})"))
                } else {
                    Check::fail(
                        label,
                        format!("state {state}"),
                        "run `lease setup --reaper-zip target/lambda/lease-reaper.zip`",
                    )
                }
            }
            Err(e) => Check::fail(
                label,
                describe(&e),
                "build it with packaging/build-reaper.sh, then run `lease setup`",
            ),
        },
    );
    let group = stack.schedule_group();
    let label = format!(
        "reaper schedule {group}/{}",
        lease_common::stack::REAPER_SCHEDULE
    );
    out.push(
        match d
            .scheduler
            .get_schedule()
            .group_name(&group)
            .name(lease_common::stack::REAPER_SCHEDULE)
            .send()
            .await
        {
            Ok(o) if o.state().map(|s| s.as_str()) == Some("ENABLED") => {
                Check::ok(label, "enabled")
            }
            Ok(o) => Check::fail(
                label,
                format!("state {:?}", o.state().map(|s| s.as_str())),
                SETUP_FIX,
            ),
            Err(e) => Check::fail(label, describe(&e), SETUP_FIX),
        },
    );
    out.push(invocations(c, &function, inputs.emulator).await);
    out
}

/// The sum of one of the function's Lambda metrics over the last day.
async fn lambda_metric(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    function: &str,
    metric: &str,
) -> Result<f64, String> {
    let now = std::time::SystemTime::now();
    let out = cloudwatch
        .get_metric_statistics()
        .namespace("AWS/Lambda")
        .metric_name(metric)
        .dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name("FunctionName")
                .value(function)
                .build(),
        )
        .start_time((now - INVOCATION_WINDOW).into())
        .end_time(now.into())
        .period(i32::try_from(INVOCATION_WINDOW.as_secs()).unwrap_or(i32::MAX))
        .statistics(aws_sdk_cloudwatch::types::Statistic::Sum)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(out.datapoints().iter().filter_map(|d| d.sum()).sum())
}

/// The reaper's last day: how often it ran and how often it failed (Lambda's own
/// `Invocations` and `Errors` metrics, which count timeouts and crashes too).
async fn invocations(c: &Clients, function: &str, emulator: bool) -> Check {
    let label = "reaper invocations";
    let read = async {
        let runs = lambda_metric(&c.cloudwatch, function, "Invocations").await?;
        let errors = lambda_metric(&c.cloudwatch, function, "Errors").await?;
        Ok::<_, String>((runs, errors))
    };
    match read.await {
        Ok((runs, errors)) => judge_invocations(function, runs, errors, emulator),
        Err(e) if emulator => Check::skipped(label, format!("the emulator has no metrics: {e}")),
        Err(e) => Check::warn(
            label,
            format!("cannot read the function's metrics: {e}"),
            "allow cloudwatch:GetMetricStatistics (`lease iam-policy launcher` does)",
        ),
    }
}

/// What a day of the reaper's metrics means. None at all is a schedule that does not
/// fire on AWS, and nothing to judge on an emulator, whose schedules never fire.
pub fn judge_invocations(function: &str, runs: f64, errors: f64, emulator: bool) -> Check {
    let label = "reaper invocations";
    let logs = format!("read its log: `aws logs tail /aws/lambda/{function} --since 1d`");
    if errors > 0.0 {
        return Check::fail(
            label,
            format!("{errors} of {runs} invocations in the last day failed"),
            logs,
        );
    }
    if runs > 0.0 {
        return Check::ok(label, format!("{runs} in the last day, none failed"));
    }
    if emulator {
        return Check::skipped(
            label,
            "none recorded: the emulator runs no schedules, so there is nothing to judge",
        );
    }
    Check::warn(
        label,
        "none in the last day: its schedule does not invoke it",
        "run `lease setup` (it corrects the schedule and the role it invokes with)",
    )
}

/// The spot and on-demand vCPU quotas (Service Quotas) for each instance type asked
/// about, against the type's vCPUs.
pub async fn quotas(c: &Clients, inputs: &Inputs, region: &str) -> Vec<Check> {
    if inputs.instance_types.is_empty() {
        return vec![Check::skipped(
            "vCPU quotas",
            "no --type given (e.g. --type g5.xlarge)",
        )];
    }
    let mut out = Vec::new();
    for instance_type in &inputs.instance_types {
        let vcpus = match type_vcpus(&c.ec2, instance_type).await {
            Ok(v) => v,
            Err(e) => {
                out.push(Check::fail(
                    format!("vCPU quotas for {instance_type}"),
                    e,
                    "pick a type this region offers (`aws ec2 describe-instance-types`)",
                ));
                continue;
            }
        };
        for spot in [true, false] {
            let label = quota_label(instance_type, spot);
            let Some(q) = quota::quota_for(instance_type, spot) else {
                out.push(Check::skipped(
                    label,
                    format!(
                        "its family has a quota lease does not list: see https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas"
                    ),
                ));
                continue;
            };
            let value = c
                .quotas
                .get_service_quota()
                .service_code("ec2")
                .quota_code(q.code)
                .send()
                .await
                .map(|o| o.quota().and_then(|q| q.value()));
            out.push(match value {
                Ok(Some(value)) => judge_quota(instance_type, spot, vcpus, q, value, region),
                Ok(None) => Check::warn(
                    label,
                    format!("Service Quotas gave no value for '{}' ({})", q.name, q.code),
                    format!("look at {}", quota::console_url(region, q.code)),
                ),
                Err(e) if inputs.emulator => Check::skipped(
                    label,
                    format!("the emulator has no EC2 quotas: {}", describe(&e)),
                ),
                Err(e) => Check::warn(
                    label,
                    format!("cannot read '{}' ({}): {}", q.name, q.code, describe(&e)),
                    format!(
                        "allow servicequotas:GetServiceQuota (`lease iam-policy launcher` does), or look at {}",
                        quota::console_url(region, q.code)
                    ),
                ),
            });
        }
    }
    out
}

fn quota_label(instance_type: &str, spot: bool) -> String {
    let market = if spot { "spot" } else { "on-demand" };
    format!("vCPU quota {instance_type} {market}")
}

/// The type's default vCPUs, which is what the quotas count.
async fn type_vcpus(ec2: &aws_sdk_ec2::Client, instance_type: &str) -> Result<i32, String> {
    let out = ec2
        .describe_instance_types()
        .instance_types(instance_type.into())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    out.instance_types()
        .first()
        .and_then(|t| t.v_cpu_info())
        .and_then(|v| v.default_v_cpus())
        .ok_or_else(|| format!("{instance_type} is not an instance type of this region"))
}

/// One market's quota against one instance of the type. Too small for spot fails
/// (`lease launch` asks for spot unless told otherwise); too small for on-demand only
/// warns (only `--on-demand` needs it).
pub fn judge_quota(
    instance_type: &str,
    spot: bool,
    vcpus: i32,
    q: quota::Quota,
    value: f64,
    region: &str,
) -> Check {
    let label = quota_label(instance_type, spot);
    let detail = format!(
        "'{}' ({}) is {value} vCPUs; one {instance_type} needs {vcpus}",
        q.name, q.code
    );
    if value >= f64::from(vcpus) {
        return Check::ok(label, detail);
    }
    let fix = format!(
        "request an increase at {} (from minutes to days to approve)",
        quota::console_url(region, q.code)
    );
    if spot {
        Check::fail(label, detail, fix)
    } else {
        Check::warn(label, format!("{detail}: only --on-demand needs it"), fix)
    }
}

/// `iam:SimulatePrincipalPolicy` for `principal` against every grant of `policy`.
pub async fn simulate(
    iam_client: &aws_sdk_iam::Client,
    label: &str,
    principal: Option<String>,
    policy: &Value,
    emulator: bool,
) -> Check {
    if emulator {
        return Check::skipped(
            label,
            "against an emulator, which has no IAM policy simulator (and enforces no IAM)",
        );
    }
    let Some(principal) = principal else {
        return Check::skipped(label, "the root user has no IAM policies to simulate");
    };
    let mut denied = Vec::new();
    for (action, resources) in grants(policy) {
        let mut req = iam_client
            .simulate_principal_policy()
            .policy_source_arn(&principal)
            .action_names(&action);
        for r in &resources {
            // Policy variables are not ARNs the simulator takes.
            if !r.contains("${") {
                req = req.resource_arns(r);
            }
        }
        match req.send().await {
            Ok(o) => {
                for r in o.evaluation_results() {
                    let decision = r.eval_decision().as_str();
                    // A denial only for want of condition values (tags, the source
                    // instance) is not one.
                    if decision != "allowed" && r.missing_context_values().is_empty() {
                        denied.push(format!("{action} ({decision})"));
                    }
                }
            }
            Err(e) => {
                return Check::fail(
                    label,
                    format!("cannot simulate {principal}: {}", describe(&e)),
                    "allow iam:SimulatePrincipalPolicy for yourself, or run doctor as an administrator",
                );
            }
        }
    }
    denied.sort();
    denied.dedup();
    if denied.is_empty() {
        Check::ok(label, format!("{principal} is allowed every action"))
    } else {
        Check::fail(
            label,
            format!("{principal} is denied: {}", denied.join(", ")),
            "attach the policy `lease iam-policy` prints for it",
        )
    }
}

/// The checks on the stack's own policies that `lease` needs and the agent needs.
pub async fn permissions(
    c: &Clients,
    at: &Location,
    inputs: &Inputs,
    caller_arn: Option<&str>,
) -> Vec<Check> {
    let iam_client = &c.setup.iam;
    let launcher = iam::launcher_policy(&inputs.stack, at);
    let agent =
        iam::agent_policy(&inputs.stack, at, &[], inputs.claude_auth).unwrap_or(Value::Null);
    let role = at.iam_arn(&format!("role/{}", inputs.stack.agent_role()));
    vec![
        simulate(
            iam_client,
            "your permissions",
            caller_arn.and_then(principal_to_simulate),
            &launcher,
            inputs.emulator,
        )
        .await,
        simulate(
            iam_client,
            "the agents' role's permissions",
            Some(role),
            &agent,
            inputs.emulator,
        )
        .await,
        // The reaper's role is checked by the same comparison setup makes.
        Check::skipped(
            "the reaper's role's permissions",
            format!(
                "its policy is `lease iam-policy reaper` ({} statements), put by setup",
                policy::reaper_policy(&inputs.stack, at)["Statement"]
                    .as_array()
                    .map_or(0, Vec::len)
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_failure_fails_the_run() {
        let mut checks = vec![
            Check::ok("a", "x"),
            Check::warn("b", "y", "z"),
            Check::skipped("c", "w"),
        ];
        assert!(passed(&checks));
        assert_eq!(tally(&checks), [1, 1, 0, 1]);
        checks.push(Check::fail("d", "v", "u"));
        assert!(!passed(&checks));
        assert_eq!(tally(&checks), [1, 1, 1, 1]);
    }

    #[test]
    fn sessions_are_simulated_as_their_role_and_root_not_at_all() {
        assert_eq!(
            principal_to_simulate("arn:aws:sts::123456789012:assumed-role/Admin/bob"),
            Some("arn:aws:iam::123456789012:role/Admin".into())
        );
        assert_eq!(
            principal_to_simulate("arn:aws-cn:iam::123456789012:user/alice"),
            Some("arn:aws-cn:iam::123456789012:user/alice".into())
        );
        assert_eq!(
            principal_to_simulate("arn:aws:iam::123456789012:root"),
            None
        );
        assert_eq!(principal_to_simulate("nonsense"), None);
    }

    #[test]
    fn a_quota_below_one_instance_fails_spot_and_warns_on_demand() {
        let spot = quota::quota_for("g5.xlarge", true).unwrap();
        let on_demand = quota::quota_for("g5.xlarge", false).unwrap();
        let c = judge_quota("g5.xlarge", true, 4, spot, 0.0, "eu-west-1");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.name, "vCPU quota g5.xlarge spot");
        assert!(
            c.detail.contains("L-3819A6DF") && c.detail.contains("needs 4"),
            "{c:?}"
        );
        assert!(
            c.fix
                .unwrap()
                .contains("servicequotas/home/services/ec2/quotas/L-3819A6DF")
        );
        let c = judge_quota("g5.xlarge", false, 4, on_demand, 2.0, "eu-west-1");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("--on-demand"), "{c:?}");
        assert_eq!(
            judge_quota("g5.xlarge", true, 4, spot, 4.0, "eu-west-1").status,
            Status::Ok
        );
    }

    #[test]
    fn reaper_errors_fail_silence_warns_and_the_emulator_is_not_judged() {
        let c = judge_invocations("lease-dev-reaper", 288.0, 3.0, false);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("3 of 288"), "{c:?}");
        assert!(c.fix.unwrap().contains("/aws/lambda/lease-dev-reaper"));
        assert_eq!(judge_invocations("f", 288.0, 0.0, false).status, Status::Ok);
        assert_eq!(judge_invocations("f", 0.0, 0.0, false).status, Status::Warn);
        assert_eq!(
            judge_invocations("f", 0.0, 0.0, true).status,
            Status::Skipped
        );
        // What the emulator does record is judged like AWS's.
        assert_eq!(judge_invocations("f", 5.0, 1.0, true).status, Status::Fail);
    }

    #[test]
    fn grants_list_every_action_with_its_resources() {
        let at = Location::new("aws", "123456789012", "eu-west-1").unwrap();
        let g = grants(&policy::invoke_policy(&Stack::new("dev").unwrap(), &at));
        assert_eq!(
            g,
            [(
                "lambda:InvokeFunction".to_string(),
                vec!["arn:aws:lambda:eu-west-1:123456789012:function:lease-dev-reaper".to_string()]
            )]
        );
    }
}
