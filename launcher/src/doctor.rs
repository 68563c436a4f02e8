//! `lease doctor`: checks that an account and region are ready for `lease`, and says
//! how to fix what is not. Each check reads (never writes) and ends in one line, `ok`,
//! `warn`, `fail` or `skipped`, with the fix beside anything not `ok`. A check that
//! cannot be made here (against an emulator, IAM's simulator and Lambda's metrics do
//! not exist) is `skipped`, never `ok`.
//!
//! The decisions (what counts as drift, which principal to simulate, whether the run
//! passed) are pure functions; [`run`] only gathers what AWS says.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::stack::{ClaudeAuth, Location, Stack};
use serde::Serialize;
use serde_json::Value;

use crate::model::policies as iam;
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
    /// Against an emulator (a custom endpoint): IAM's simulator, Service Quotas and
    /// Lambda's metrics are not there, so their checks are skipped.
    pub emulator: bool,
    /// Instance types to check quotas for.
    pub instance_types: Vec<String>,
}

/// The clients the checks read with.
#[derive(Debug, Clone)]
pub struct Clients {
    pub setup: crate::stack::Clients,
    pub ec2: aws_sdk_ec2::Client,
}

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
    out.push(match s.s3.head_bucket().bucket(&bucket).send().await {
        Err(e) => Check::fail(name, describe(&e), SETUP_FIX),
        Ok(_) => {
            let rules = s
                .s3
                .get_bucket_lifecycle_configuration()
                .bucket(&bucket)
                .send()
                .await
                .map(|o| o.rules().to_vec())
                .unwrap_or_default();
            if rules.iter().any(|r| r.id() == Some(ABORT_MULTIPART_RULE)) {
                Check::ok(name, "present, aborts incomplete multipart uploads")
            } else {
                Check::fail(
                    name,
                    format!("no lifecycle rule '{ABORT_MULTIPART_RULE}': failed uploads keep billed parts"),
                    SETUP_FIX,
                )
            }
        }
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
            .get_function()
            .function_name(&function)
            .send()
            .await
        {
            Ok(o) => {
                let state = o
                    .configuration()
                    .and_then(|c| c.state())
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
    out.push(Check::skipped(
        "reaper invocations",
        "its recent errors are in CloudWatch (AWS/Lambda Errors of the function), which lease does not read: look with `aws cloudwatch get-metric-statistics`",
    ));
    out
}

/// vCPU quotas for the instance types asked about.
pub fn quotas(inputs: &Inputs) -> Vec<Check> {
    if inputs.instance_types.is_empty() {
        return vec![Check::skipped(
            "vCPU quotas",
            "no --type given (e.g. --type g5.xlarge)",
        )];
    }
    inputs
        .instance_types
        .iter()
        .map(|t| {
            Check::skipped(
                format!("vCPU quotas for {t}"),
                "Service Quotas is not read by this lease: see the EC2 console's Limits, or `aws service-quotas list-service-quotas --service-code ec2`",
            )
        })
        .collect()
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
