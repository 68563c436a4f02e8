//! Least-privilege IAM policy documents for the agents' role and for the people (or
//! CI) who run `lease`, on the resources named by [`lease_common::stack`]. Pure: the
//! `iam-policy` command only prints what these return.
//!
//! Choices, statement by statement, are in the comments beside each one, with the AWS
//! documentation a condition follows. Actions that do not support resource-level
//! permissions (`ec2:Describe*`, `ecr:GetAuthorizationToken`, the Session Manager
//! channel actions) get `*` and nothing else does.

use lease_common::stack::{ClaudeAuth, Location, Stack, StackError};
use lease_common::tags;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    #[error(transparent)]
    Stack(#[from] StackError),
}

/// The *target* instance as an EC2 resource path: `ec2:InstanceID` is a key of the
/// instance a request acts on, so this names that instance's own ARN, which the
/// self-only condition compares with the ARN of the instance that signed.
pub const OWN_INSTANCE: &str = "instance/${ec2:InstanceID}";

/// The policy language version every document uses (the only one with variables).
pub(crate) const VERSION: &str = "2012-10-17";

/// The tag every instance `lease launch` creates carries, and the only instances the
/// launcher's policy lets it change.
pub(crate) fn managed_tag_condition(key: &str) -> Value {
    json!({ "StringEquals": { (format!("{key}/{}", tags::MANAGED)): "true" } })
}

pub(crate) fn statement(sid: &str, actions: &[&str], resources: Vec<String>) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": resources,
    })
}

pub(crate) fn with_condition(mut statement: Value, condition: Value) -> Value {
    if let Some(obj) = statement.as_object_mut() {
        obj.insert("Condition".into(), condition);
    }
    statement
}

/// The DNS suffix of a partition's service endpoints, as `kms:ViaService` names them
/// (`ssm.cn-north-1.amazonaws.com.cn` in China, `amazonaws.com` elsewhere).
fn dns_suffix(partition: &str) -> &'static str {
    if partition == "aws-cn" {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// The agents' role. `pools` limits the queues it may consume (and the dead-letter
/// queues it may write to); empty means every pool of the stack
/// (`lease-<stack>-pool-*`, which never matches a dead-letter queue, and
/// `lease-<stack>-dlq-*`). `claude` adds exactly what the stack's choice of Claude
/// authentication needs.
pub fn agent_policy(
    stack: &Stack,
    at: &Location,
    pools: &[String],
    claude: ClaudeAuth,
) -> Result<Value, IamError> {
    let (queues, dead_letters) = if pools.is_empty() {
        (
            vec![at.arn("sqs", &stack.pool_queue_pattern())],
            vec![at.arn("sqs", &stack.dead_letter_queue_pattern())],
        )
    } else {
        let mut queues = Vec::new();
        let mut dead_letters = Vec::new();
        for p in pools {
            queues.push(at.arn("sqs", &stack.pool_queue(p)?));
            dead_letters.push(at.arn("sqs", &stack.dead_letter_queue(p)?));
        }
        (queues, dead_letters)
    };
    let bucket = stack.bucket(&at.account, &at.region);
    let own_instance = with_condition(
        // An instance may act only on itself. The Resource names every instance of the
        // account and region, and the condition compares the ARN of the instance whose
        // role credentials signed the request (`ec2:SourceInstanceARN`) with the
        // target's: `ec2:InstanceID` is a key of the *target* instance (Service
        // Authorization Reference, "Condition keys for Amazon EC2"), so as a variable
        // it is the target's id, and a Resource of `instance/${ec2:InstanceID}` alone
        // would match every instance. This is the documented form: `ArnEquals` on
        // `ec2:SourceInstanceARN` against an instance ARN, as in the EC2 User Guide's
        // "Example policies to control access the Amazon EC2 API" (attach or detach
        // volumes only from a given instance), with the target's id as the policy
        // variable. Credentials used off the instance (or by another instance, or a
        // container on another node) carry another `ec2:SourceInstanceARN`, or none,
        // and match nothing.
        statement(
            "ActOnOwnInstanceOnly",
            &[
                "ec2:StopInstances",
                "ec2:TerminateInstances",
                "ec2:CreateTags",
            ],
            vec![at.arn("ec2", "instance/*")],
        ),
        json!({
            "ArnEquals": { "ec2:SourceInstanceARN": at.arn("ec2", OWN_INSTANCE) },
            // Only `lease:*` tags (status, task): never another tool's tags.
            "ForAllValues:StringLike": { "aws:TagKeys": ["lease:*"] },
        }),
    );
    let mut statements = vec![
        // Receive, extend and delete a task; SendMessage puts an interrupted task back
        // with its attempt count bumped; GetQueueAttributes reads the redrive policy
        // to find the dead-letter queue.
        statement(
            "ConsumePoolQueues",
            &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
            ],
            queues,
        ),
        // A task that cannot run (a bad body) goes to its pool's dead-letter queue,
        // found by name from the redrive policy's ARN.
        statement(
            "WriteDeadLetters",
            &["sqs:SendMessage", "sqs:GetQueueUrl"],
            dead_letters,
        ),
        statement(
            "PublishToControlBus",
            &["sns:Publish"],
            vec![at.arn("sns", &stack.bus_topic())],
        ),
        // Multipart uploads are authorised as PutObject; a failed one is aborted so
        // its parts are not billed (setup's lifecycle rule is the backstop).
        statement(
            "WriteBundlesAndLogs",
            &["s3:PutObject", "s3:AbortMultipartUpload"],
            vec![
                at.s3_arn(&format!("{bucket}/jobs/*")),
                at.s3_arn(&format!("{bucket}/logs/*")),
            ],
        ),
        // `agent/` holds the .deb an instance without the baked AMI installs;
        // `tasks/` holds task specs too large for an SQS message (`lease submit`
        // puts them there and the message points at them).
        statement(
            "ReadAgentPackageAndTaskSpecs",
            &["s3:GetObject"],
            vec![
                at.s3_arn(&format!("{bucket}/agent/*")),
                at.s3_arn(&format!("{bucket}/tasks/*")),
            ],
        ),
        statement(
            "NodeAndTaskTables",
            &[
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
            ],
            vec![
                at.arn("dynamodb", &format!("table/{}", stack.nodes_table())),
                at.arn("dynamodb", &format!("table/{}", stack.tasks_table())),
            ],
        ),
        own_instance,
        // Neither supports resource-level permissions: `*` is the only form.
        statement(
            "ReadInstanceTags",
            &["ec2:DescribeTags", "ec2:DescribeInstances"],
            vec!["*".into()],
        ),
        // `--image` from ECR: the agent logs Docker in with a token (no resource-level
        // permission), then Docker pulls the image's manifest and layers — the pull
        // actions of ECR's documentation ("Private repository policy examples",
        // AmazonEC2ContainerRegistryPullOnly), on this account's repositories.
        statement("EcrLogin", &["ecr:GetAuthorizationToken"], vec!["*".into()]),
        statement(
            "EcrPull",
            &["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            vec![at.arn("ecr", "repository/*")],
        ),
        // `lease attach` runs through Session Manager: the SSM agent on the node
        // registers and opens its channels with the instance role. These are the
        // actions of Session Manager's documented minimal instance policy ("Step 2:
        // Verify or add instance permissions for Session Manager", the custom-policy
        // form of AmazonSSMManagedInstanceCore's Session Manager part); the
        // `ssmmessages` actions support no resource-level permissions.
        statement(
            "SessionManagerAgent",
            &[
                "ssm:UpdateInstanceInformation",
                "ssmmessages:CreateControlChannel",
                "ssmmessages:CreateDataChannel",
                "ssmmessages:OpenControlChannel",
                "ssmmessages:OpenDataChannel",
            ],
            vec!["*".into()],
        ),
    ];
    match claude {
        ClaudeAuth::None => {}
        // Claude Code on Bedrock invokes Anthropic's models directly or through
        // cross-region inference profiles, whose requests reach the model in other
        // regions: region `*` (Claude Code's Bedrock documentation, "IAM
        // configuration").
        ClaudeAuth::Bedrock => statements.push(statement(
            "InvokeClaudeOnBedrock",
            &[
                "bedrock:InvokeModel",
                "bedrock:InvokeModelWithResponseStream",
            ],
            vec![
                format!(
                    "arn:{}:bedrock:*::foundation-model/anthropic.*",
                    at.partition
                ),
                format!(
                    "arn:{}:bedrock:*:{}:inference-profile/*anthropic.*",
                    at.partition,
                    at.account.as_str()
                ),
            ],
        )),
        ClaudeAuth::ApiKey => {
            statements.push(statement(
                "ReadAnthropicKey",
                &["ssm:GetParameter"],
                vec![at.arn(
                    "ssm",
                    &format!("parameter{}", stack.anthropic_key_parameter()),
                )],
            ));
            // A SecureString is decrypted by KMS on Parameter Store's behalf: only
            // through SSM in this region (`kms:ViaService`, as in Parameter Store's
            // documentation "Restricting access to Systems Manager parameters using
            // IAM policies").
            statements.push(with_condition(
                statement(
                    "DecryptAnthropicKeyViaSsm",
                    &["kms:Decrypt"],
                    vec![at.arn("kms", "key/*")],
                ),
                json!({ "StringEquals": { "kms:ViaService": format!(
                    "ssm.{}.{}",
                    at.region.as_str(),
                    dns_suffix(&at.partition)
                ) } }),
            ));
        }
    }
    Ok(json!({ "Version": VERSION, "Statement": statements }))
}

/// RunInstances as `lease launch` calls it, and `lease schedule`'s launch targets too:
/// it may create an instance (and its volumes and spot request) only when the request
/// tags it `lease:managed=true`, which `launch` always does atomically; it may use any
/// network, image and key pair; tags are written only by the launch itself.
pub(crate) fn launch_statements(at: &Location) -> [Value; 3] {
    let instances = at.arn("ec2", "instance/*");
    let volumes = at.arn("ec2", "volume/*");
    let spot_requests = at.arn("ec2", "spot-instances-request/*");
    [
        with_condition(
            statement(
                "LaunchManagedInstances",
                &["ec2:RunInstances"],
                vec![instances.clone(), volumes.clone(), spot_requests.clone()],
            ),
            managed_tag_condition("aws:RequestTag"),
        ),
        statement(
            "LaunchWithNetworkImageAndKey",
            &["ec2:RunInstances"],
            vec![
                at.arn("ec2", "network-interface/*"),
                at.arn("ec2", "security-group/*"),
                at.arn("ec2", "subnet/*"),
                at.arn("ec2", "key-pair/*"),
                format!("arn:{}:ec2:{}::image/*", at.partition, at.region.as_str()),
            ],
        ),
        with_condition(
            statement(
                "TagOnLaunch",
                &["ec2:CreateTags"],
                vec![instances, volumes, spot_requests],
            ),
            json!({ "StringEquals": { "ec2:CreateAction": "RunInstances" } }),
        ),
    ]
}

/// What `lease launch/list/status/extend/terminate/stop/hibernate/attach/submit/stats/
/// tasks/nodes/logs/download/schedule` call, on this stack's resources, and nothing
/// else (`setup` and `teardown` are an administrator's).
/// `sts:GetCallerIdentity` (the default owner) needs no permission.
pub fn launcher_policy(stack: &Stack, at: &Location) -> Value {
    let mut policy = launcher_commands_policy(stack, at);
    // `lease doctor`, which a first-run user runs with this policy.
    if let Some(statements) = policy["Statement"].as_array_mut() {
        statements.extend(doctor_statements(stack, at));
    }
    policy
}

fn launcher_commands_policy(stack: &Stack, at: &Location) -> Value {
    let bucket = stack.bucket(&at.account, &at.region);
    let instances = at.arn("ec2", "instance/*");
    let [launch, network, tag_on_launch] = launch_statements(at);
    json!({
        "Version": VERSION,
        "Statement": [
            // None of these supports resource-level permissions. `launch` reads the
            // image it chose (architecture, root device, whether it carries the agent).
            statement(
                "Describe",
                &[
                    "ec2:DescribeImages",
                    "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeRegions",
                ],
                vec!["*".into()],
            ),
            // The latest Amazon Linux 2023 and Deep Learning Base AMIs, read by `launch`
            // and resolved by RunInstances (`resolve:ssm:`); public parameters have no
            // account.
            statement(
                "ReadAmiParameters",
                &["ssm:GetParameter", "ssm:GetParameters"],
                ["ami-amazon-linux-latest", "deeplearning/ami"]
                    .iter()
                    .map(|path| {
                        format!(
                            "arn:{}:ssm:{}::parameter/aws/service/{path}/*",
                            at.partition,
                            at.region.as_str()
                        )
                    })
                    .collect(),
            ),
            launch,
            network,
            tag_on_launch,
            // extend (CreateTags), terminate, stop, hibernate: managed instances only.
            with_condition(
                statement(
                    "ChangeManagedInstances",
                    &[
                        "ec2:CreateTags",
                        "ec2:TerminateInstances",
                        "ec2:StopInstances",
                    ],
                    vec![instances.clone()],
                ),
                managed_tag_condition("aws:ResourceTag"),
            ),
            // `status` shows the console of an instance whose agent never came up.
            with_condition(
                statement("ConsoleOfManagedInstances", &["ec2:GetConsoleOutput"], vec![
                    instances.clone(),
                ]),
                managed_tag_condition("aws:ResourceTag"),
            ),
            // attach over SSM (`aws ssm start-session`): managed instances, two
            // documents (a tmux command, or SSH tunnelled through the session).
            with_condition(
                statement("AttachToManagedInstances", &["ssm:StartSession"], vec![
                    instances.clone(),
                ]),
                managed_tag_condition("ssm:resourceTag"),
            ),
            statement(
                "AttachDocument",
                &["ssm:StartSession"],
                ["AWS-StartInteractiveCommand", "AWS-StartSSHSession"]
                    .iter()
                    .map(|doc| {
                        format!(
                            "arn:{}:ssm:{}::document/{doc}",
                            at.partition,
                            at.region.as_str()
                        )
                    })
                    .collect(),
            ),
            // `attach --ssh --ssm` pushes the user's key for 60 seconds with EC2
            // Instance Connect: managed instances only.
            with_condition(
                statement(
                    "PushSshKeyToManagedInstances",
                    &["ec2-instance-connect:SendSSHPublicKey"],
                    vec![instances],
                ),
                managed_tag_condition("aws:ResourceTag"),
            ),
            statement(
                "OwnSessions",
                &["ssm:TerminateSession", "ssm:ResumeSession"],
                vec![at.arn("ssm", "session/${aws:userid}-*")],
            ),
            // submit (SendMessageBatch is authorised as SendMessage) and stats, which
            // reads the pool queue's redrive policy and then its dead-letter queue.
            statement(
                "SubmitAndStats",
                &[
                    "sqs:SendMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                ],
                vec![at.arn("sqs", &stack.queue_pattern())],
            ),
            // submit without --queue-url publishes to the stack's command topic.
            statement(
                "SubmitToCommandTopic",
                &["sns:Publish"],
                vec![at.arn("sns", &stack.command_topic())],
            ),
            // submit's `queued` records (a conditional put), `tasks` and `nodes`
            // (Scan), `tasks show` and `logs -f` (GetItem), `tasks cancel`
            // (a conditional update), `stats` (Scan).
            statement(
                "TaskAndNodeRecords",
                &[
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:Scan",
                ],
                vec![
                    at.arn("dynamodb", &format!("table/{}", stack.tasks_table())),
                    at.arn("dynamodb", &format!("table/{}", stack.nodes_table())),
                ],
            ),
            statement(
                "PutLargeTaskSpecs",
                &["s3:PutObject"],
                vec![at.s3_arn(&format!("{bucket}/tasks/*"))],
            ),
            // `launch` reads the agent package's recorded digest (HeadObject) under
            // agent/.
            statement(
                "ReadLogsAndBundles",
                &["s3:GetObject"],
                vec![
                    at.s3_arn(&format!("{bucket}/logs/*")),
                    at.s3_arn(&format!("{bucket}/jobs/*")),
                    at.s3_arn(&format!("{bucket}/agent/*")),
                ],
            ),
            // download lists an instance's task folders under jobs/.
            with_condition(
                statement(
                    "ListBundles",
                    &["s3:ListBucket"],
                    vec![at.s3_arn(&bucket)],
                ),
                json!({ "StringLike": { "s3:prefix": ["jobs/*"] } }),
            ),
            // schedule create|list|pause|resume|delete: the stack's group only.
            statement(
                "Schedules",
                &[
                    "scheduler:CreateSchedule",
                    "scheduler:GetSchedule",
                    "scheduler:UpdateSchedule",
                    "scheduler:DeleteSchedule",
                ],
                vec![at.arn(
                    "scheduler",
                    &format!("schedule/{}/*", stack.schedule_group()),
                )],
            ),
            statement(
                "ScheduleGroup",
                &["scheduler:GetScheduleGroup"],
                vec![at.arn(
                    "scheduler",
                    &format!("schedule-group/{}", stack.schedule_group()),
                )],
            ),
            // ListSchedules supports no resource-level permissions.
            statement("ListSchedules", &["scheduler:ListSchedules"], vec!["*".into()]),
            // A schedule runs its target with the stack's schedules role, passed only to
            // Scheduler.
            with_condition(
                statement(
                    "PassSchedulesRole",
                    &["iam:PassRole"],
                    vec![at.iam_arn(&format!("role/{}", stack.schedules_role()))],
                ),
                json!({ "StringEquals": { "iam:PassedToService": "scheduler.amazonaws.com" } }),
            ),
            // launch --iam-instance-profile: only the stack's agent role, only to EC2.
            with_condition(
                statement(
                    "PassAgentRole",
                    &["iam:PassRole"],
                    vec![at.iam_arn(&format!("role/{}", stack.agent_role()))],
                ),
                json!({ "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }),
            ),
        ],
    })
}

/// What `lease doctor` reads beyond the rest of the launcher's policy, for the
/// launcher's policy: a first-run user runs it with that policy. Each read is on the
/// stack's own resources where the action takes a resource (Service Authorization
/// Reference); the rest of what it reads (queues, the agent package, the reaper's
/// schedule, regions and instance types) the launcher's other statements allow.
pub fn doctor_statements(stack: &Stack, at: &Location) -> Vec<Value> {
    let bucket = stack.bucket(&at.account, &at.region);
    vec![
        // Neither supports resource-level permissions: the default VPC, and the
        // reaper's `AWS/Lambda` metrics (CloudWatch User Guide, "CloudWatch
        // permissions reference").
        statement(
            "DoctorDescribe",
            &["ec2:DescribeVpcs", "cloudwatch:GetMetricStatistics"],
            vec!["*".into()],
        ),
        // The vCPU quotas of EC2, by quota code (`servicequotas:${ServiceCode}/${QuotaCode}`).
        statement(
            "DoctorQuotas",
            &["servicequotas:GetServiceQuota"],
            vec![at.arn("servicequotas", "ec2/L-*")],
        ),
        // The stack as setup made it: topics, the bucket's lifecycle rule, the tables,
        // the agents' role's policy, the reaper's configuration (not its code).
        statement(
            "DoctorStack",
            &[
                "sns:GetTopicAttributes",
                "s3:GetLifecycleConfiguration",
                "dynamodb:DescribeTable",
                "iam:GetRolePolicy",
                "lambda:GetFunctionConfiguration",
            ],
            vec![
                at.arn("sns", &stack.bus_topic()),
                at.arn("sns", &stack.command_topic()),
                at.s3_arn(&bucket),
                at.arn("dynamodb", &format!("table/{}", stack.tasks_table())),
                at.arn("dynamodb", &format!("table/{}", stack.nodes_table())),
                at.iam_arn(&format!("role/{}", stack.agent_role())),
                at.arn("lambda", &format!("function:{}", stack.reaper_function())),
            ],
        ),
        // On AWS, the simulator for the agents' role and for the caller when it is an
        // IAM user (`${aws:username}`, IAM User Guide, "IAM policy elements:
        // Variables and tags"); a role session's own role is not nameable here, and
        // doctor says so when the simulator refuses.
        statement(
            "DoctorSimulate",
            &["iam:SimulatePrincipalPolicy"],
            vec![
                at.iam_arn(&format!("role/{}", stack.agent_role())),
                at.iam_arn("user/${aws:username}"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn location() -> Location {
        Location::new("aws", "123456789012", "eu-west-1").unwrap()
    }

    fn stack() -> Stack {
        Stack::new("dev").unwrap()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// (sid, actions, resources, condition)
    type Stmt = (String, Vec<String>, Vec<String>, Option<Value>);

    /// (sid, actions, resources, condition) of every statement, after a JSON round trip,
    /// as IAM would read it.
    fn statements(policy: &Value) -> Vec<Stmt> {
        let text = serde_json::to_string_pretty(policy).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["Version"], "2012-10-17");
        parsed["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["Effect"], "Allow");
                (
                    s["Sid"].as_str().unwrap().to_string(),
                    strings(&s["Action"]),
                    strings(&s["Resource"]),
                    s.get("Condition").cloned(),
                )
            })
            .collect()
    }

    fn find<'a>(all: &'a [Stmt], sid: &str) -> &'a Stmt {
        all.iter().find(|s| s.0 == sid).expect(sid)
    }

    fn agent(pools: &[String], claude: ClaudeAuth) -> Vec<Stmt> {
        statements(&agent_policy(&stack(), &location(), pools, claude).unwrap())
    }

    #[test]
    fn agent_policy_statements_actions_and_resources() {
        let all = agent(&[], ClaudeAuth::None);
        let sids: Vec<&str> = all.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            sids,
            [
                "ConsumePoolQueues",
                "WriteDeadLetters",
                "PublishToControlBus",
                "WriteBundlesAndLogs",
                "ReadAgentPackageAndTaskSpecs",
                "NodeAndTaskTables",
                "ActOnOwnInstanceOnly",
                "ReadInstanceTags",
                "EcrLogin",
                "EcrPull",
                "SessionManagerAgent",
            ]
        );
        let s = find(&all, "ConsumePoolQueues");
        assert_eq!(
            s.1,
            [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
            ]
        );
        assert_eq!(s.2, ["arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-*"]);
        let s = find(&all, "WriteDeadLetters");
        assert_eq!(s.1, ["sqs:SendMessage", "sqs:GetQueueUrl"]);
        assert_eq!(s.2, ["arn:aws:sqs:eu-west-1:123456789012:lease-dev-dlq-*"]);
        let s = find(&all, "PublishToControlBus");
        assert_eq!(s.1, ["sns:Publish"]);
        assert_eq!(s.2, ["arn:aws:sns:eu-west-1:123456789012:lease-dev-bus"]);
        let bucket = "arn:aws:s3:::lease-dev-123456789012-eu-west-1";
        let s = find(&all, "WriteBundlesAndLogs");
        assert_eq!(s.1, ["s3:PutObject", "s3:AbortMultipartUpload"]);
        assert_eq!(
            s.2,
            [format!("{bucket}/jobs/*"), format!("{bucket}/logs/*")]
        );
        let s = find(&all, "ReadAgentPackageAndTaskSpecs");
        assert_eq!(s.1, ["s3:GetObject"]);
        assert_eq!(
            s.2,
            [format!("{bucket}/agent/*"), format!("{bucket}/tasks/*")]
        );
        let s = find(&all, "NodeAndTaskTables");
        assert!(s.1.iter().all(|a| a.starts_with("dynamodb:")));
        assert!(!s.1.iter().any(|a| a.contains('*')));
        assert_eq!(
            s.2,
            [
                "arn:aws:dynamodb:eu-west-1:123456789012:table/lease-dev-nodes",
                "arn:aws:dynamodb:eu-west-1:123456789012:table/lease-dev-tasks",
            ]
        );
        let s = find(&all, "ReadInstanceTags");
        assert_eq!(s.1, ["ec2:DescribeTags", "ec2:DescribeInstances"]);
        assert_eq!(s.2, ["*"]);
        assert_eq!(find(&all, "EcrLogin").2, ["*"]);
        let s = find(&all, "EcrPull");
        assert_eq!(s.1, ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]);
        assert_eq!(s.2, ["arn:aws:ecr:eu-west-1:123456789012:repository/*"]);
        let s = find(&all, "SessionManagerAgent");
        assert!(s.1.contains(&"ssm:UpdateInstanceInformation".to_string()));
        assert!(s.1.contains(&"ssmmessages:OpenDataChannel".to_string()));
        // No Claude auth: neither Bedrock nor any parameter.
        assert!(
            !all.iter()
                .flat_map(|s| &s.1)
                .any(|a| a.starts_with("bedrock:")
                    || a == "ssm:GetParameter"
                    || a.starts_with("kms:"))
        );
    }

    /// The self-only statement, in AWS's documented form: every instance as the
    /// Resource, and `ArnEquals` comparing the signing instance's ARN with the target's
    /// (`${ec2:InstanceID}` being the target's id).
    #[test]
    fn an_instance_may_stop_terminate_and_tag_only_itself() {
        let all = agent(&[], ClaudeAuth::None);
        let s = find(&all, "ActOnOwnInstanceOnly");
        assert_eq!(
            s.1,
            [
                "ec2:StopInstances",
                "ec2:TerminateInstances",
                "ec2:CreateTags"
            ]
        );
        assert_eq!(s.2, ["arn:aws:ec2:eu-west-1:123456789012:instance/*"]);
        let cond = s.3.as_ref().unwrap().as_object().unwrap();
        let mut operators: Vec<&str> = cond.keys().map(String::as_str).collect();
        operators.sort_unstable();
        assert_eq!(operators, ["ArnEquals", "ForAllValues:StringLike"]);
        assert_eq!(
            cond["ArnEquals"],
            json!({
                "ec2:SourceInstanceARN": "arn:aws:ec2:eu-west-1:123456789012:instance/${ec2:InstanceID}"
            })
        );
        assert_eq!(
            cond["ForAllValues:StringLike"]["aws:TagKeys"],
            json!(["lease:*"])
        );
        // Not the old form, whose Resource variable matched every target instance and
        // whose ArnLike matched any instance of the account as the caller.
        let text = serde_json::to_string(&s.3).unwrap();
        assert!(!text.contains("ArnLike"), "{text}");
    }

    #[test]
    fn agent_policy_grants_no_ec2_mutation_outside_its_own_instance() {
        for claude in ClaudeAuth::ALL {
            let all = agent(&[], claude);
            for (sid, actions, resources, condition) in &all {
                let mutates = actions
                    .iter()
                    .any(|a| a.starts_with("ec2:") && !a.starts_with("ec2:Describe"));
                if mutates {
                    assert_eq!(sid, "ActOnOwnInstanceOnly");
                    let condition = condition.as_ref().expect(sid);
                    assert_eq!(
                        condition["ArnEquals"]["ec2:SourceInstanceARN"],
                        location().arn("ec2", OWN_INSTANCE),
                        "{sid}"
                    );
                }
                // `*` only where resource-level permissions do not exist.
                if resources.iter().any(|r| r == "*") {
                    assert!(
                        actions
                            .iter()
                            .all(|a| NO_RESOURCE_LEVEL.contains(&a.as_str())),
                        "{sid}: {actions:?}"
                    );
                }
                assert!(!actions.iter().any(|a| a.ends_with('*')), "{sid}");
            }
        }
    }

    /// Actions the Service Authorization Reference lists with no resource type: `*`
    /// is their only form.
    const NO_RESOURCE_LEVEL: &[&str] = &[
        "ec2:DescribeImages",
        "ec2:DescribeTags",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeRegions",
        "ecr:GetAuthorizationToken",
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "scheduler:ListSchedules",
        "ec2:DescribeVpcs",
        "cloudwatch:GetMetricStatistics",
    ];

    #[test]
    fn claude_auth_adds_exactly_bedrock_or_the_key_parameter() {
        let bedrock = agent(&[], ClaudeAuth::Bedrock);
        let s = find(&bedrock, "InvokeClaudeOnBedrock");
        assert_eq!(
            s.1,
            [
                "bedrock:InvokeModel",
                "bedrock:InvokeModelWithResponseStream"
            ]
        );
        assert_eq!(
            s.2,
            [
                "arn:aws:bedrock:*::foundation-model/anthropic.*",
                "arn:aws:bedrock:*:123456789012:inference-profile/*anthropic.*",
            ]
        );
        assert!(!bedrock.iter().any(|s| s.0 == "ReadAnthropicKey"));

        let key = agent(&[], ClaudeAuth::ApiKey);
        assert!(!key.iter().any(|s| s.0 == "InvokeClaudeOnBedrock"));
        let s = find(&key, "ReadAnthropicKey");
        assert_eq!(s.1, ["ssm:GetParameter"]);
        assert_eq!(
            s.2,
            ["arn:aws:ssm:eu-west-1:123456789012:parameter/lease/dev/anthropic-api-key"]
        );
        let s = find(&key, "DecryptAnthropicKeyViaSsm");
        assert_eq!(s.1, ["kms:Decrypt"]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["kms:ViaService"],
            "ssm.eu-west-1.amazonaws.com"
        );
        let cn = Location::new("aws-cn", "123456789012", "cn-north-1").unwrap();
        let p = agent_policy(&stack(), &cn, &[], ClaudeAuth::ApiKey).unwrap();
        assert!(
            p.to_string()
                .contains("\"ssm.cn-north-1.amazonaws.com.cn\""),
            "{p}"
        );
    }

    #[test]
    fn agent_policy_can_be_limited_to_named_pools() {
        let pools = vec!["gpu".to_string(), "cpu".to_string()];
        let all = agent(&pools, ClaudeAuth::None);
        assert_eq!(
            find(&all, "ConsumePoolQueues").2,
            [
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-gpu",
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-cpu",
            ]
        );
        assert_eq!(
            find(&all, "WriteDeadLetters").2,
            [
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-dlq-gpu",
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-dlq-cpu",
            ]
        );
        let err =
            agent_policy(&stack(), &location(), &["GPU".into()], ClaudeAuth::None).unwrap_err();
        assert!(err.to_string().contains("'GPU'"), "{err}");
    }

    #[test]
    fn launcher_policy_statements_actions_and_resources() {
        let all = statements(&launcher_policy(&stack(), &location()));
        let arn = |r: &str| format!("arn:aws:ec2:eu-west-1:123456789012:{r}");
        let s = find(&all, "Describe");
        assert_eq!(
            s.1,
            [
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeRegions"
            ]
        );
        assert_eq!(s.2, ["*"]);
        let s = find(&all, "ReadAmiParameters");
        assert_eq!(
            s.2,
            [
                "arn:aws:ssm:eu-west-1::parameter/aws/service/ami-amazon-linux-latest/*",
                "arn:aws:ssm:eu-west-1::parameter/aws/service/deeplearning/ami/*"
            ]
        );
        let s = find(&all, "LaunchManagedInstances");
        assert_eq!(s.1, ["ec2:RunInstances"]);
        assert_eq!(
            s.2,
            [
                arn("instance/*"),
                arn("volume/*"),
                arn("spot-instances-request/*")
            ]
        );
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["aws:RequestTag/lease:managed"],
            "true"
        );
        let s = find(&all, "LaunchWithNetworkImageAndKey");
        assert!(s.2.contains(&"arn:aws:ec2:eu-west-1::image/*".to_string()));
        assert!(!s.2.iter().any(|r| r.contains("instance/")));
        let s = find(&all, "TagOnLaunch");
        assert_eq!(s.1, ["ec2:CreateTags"]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["ec2:CreateAction"],
            "RunInstances"
        );
        let s = find(&all, "ChangeManagedInstances");
        assert_eq!(
            s.1,
            [
                "ec2:CreateTags",
                "ec2:TerminateInstances",
                "ec2:StopInstances"
            ]
        );
        assert_eq!(s.2, [arn("instance/*")]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["aws:ResourceTag/lease:managed"],
            "true"
        );
        let s = find(&all, "AttachToManagedInstances");
        assert_eq!(s.1, ["ssm:StartSession"]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["ssm:resourceTag/lease:managed"],
            "true"
        );
        assert_eq!(
            find(&all, "AttachDocument").2,
            [
                "arn:aws:ssm:eu-west-1::document/AWS-StartInteractiveCommand",
                "arn:aws:ssm:eu-west-1::document/AWS-StartSSHSession"
            ]
        );
        for sid in ["ConsoleOfManagedInstances", "PushSshKeyToManagedInstances"] {
            let s = find(&all, sid);
            assert_eq!(s.2, [arn("instance/*")], "{sid}");
            assert_eq!(
                s.3.as_ref().unwrap()["StringEquals"]["aws:ResourceTag/lease:managed"],
                "true",
                "{sid}"
            );
        }
        let s = find(&all, "SubmitAndStats");
        assert_eq!(
            s.1,
            [
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl"
            ]
        );
        assert_eq!(s.2, ["arn:aws:sqs:eu-west-1:123456789012:lease-dev-*"]);
        let s = find(&all, "SubmitToCommandTopic");
        assert_eq!(s.1, ["sns:Publish"]);
        assert_eq!(
            s.2,
            ["arn:aws:sns:eu-west-1:123456789012:lease-dev-commands"]
        );
        let s = find(&all, "TaskAndNodeRecords");
        assert!(s.1.iter().all(|a| a.starts_with("dynamodb:")));
        assert!(!s.1.iter().any(|a| a.contains("Delete")), "{:?}", s.1);
        assert_eq!(
            s.2,
            [
                "arn:aws:dynamodb:eu-west-1:123456789012:table/lease-dev-tasks",
                "arn:aws:dynamodb:eu-west-1:123456789012:table/lease-dev-nodes"
            ]
        );
        let bucket = "arn:aws:s3:::lease-dev-123456789012-eu-west-1";
        assert_eq!(
            find(&all, "PutLargeTaskSpecs").2,
            [format!("{bucket}/tasks/*")]
        );
        assert_eq!(
            find(&all, "ReadLogsAndBundles").2,
            [
                format!("{bucket}/logs/*"),
                format!("{bucket}/jobs/*"),
                format!("{bucket}/agent/*")
            ]
        );
        let s = find(&all, "ListBundles");
        assert_eq!(s.2, [bucket]);
        let s = find(&all, "Schedules");
        assert_eq!(
            s.2,
            ["arn:aws:scheduler:eu-west-1:123456789012:schedule/lease-dev/*"]
        );
        let s = find(&all, "PassSchedulesRole");
        assert_eq!(s.2, ["arn:aws:iam::123456789012:role/lease-dev-schedules"]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["iam:PassedToService"],
            "scheduler.amazonaws.com"
        );
        let s = find(&all, "PassAgentRole");
        assert_eq!(s.1, ["iam:PassRole"]);
        assert_eq!(s.2, ["arn:aws:iam::123456789012:role/lease-dev-agent"]);
        assert_eq!(
            s.3.as_ref().unwrap()["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
    }

    #[test]
    fn launcher_policy_changes_only_managed_instances() {
        let all = statements(&launcher_policy(&stack(), &location()));
        for (sid, actions, resources, condition) in &all {
            let touches_instances = resources.iter().any(|r| r.contains(":instance/"));
            if touches_instances {
                let condition = condition.as_ref().expect(sid).to_string();
                assert!(
                    condition.contains("lease:managed") || condition.contains("RunInstances"),
                    "{sid}: {condition}"
                );
            }
            if resources.iter().any(|r| r == "*") {
                assert!(
                    actions
                        .iter()
                        .all(|a| NO_RESOURCE_LEVEL.contains(&a.as_str())),
                    "{sid}"
                );
            }
            assert!(!actions.iter().any(|a| a.ends_with('*')), "{sid}");
        }
    }

    #[test]
    fn partitions_flow_into_every_arn() {
        for partition in ["aws-cn", "aws-us-gov"] {
            let region = if partition == "aws-cn" {
                "cn-north-1"
            } else {
                "us-gov-west-1"
            };
            let at = Location::new(partition, "123456789012", region).unwrap();
            let mut policies = vec![
                launcher_policy(&stack(), &at),
                crate::stack::reaper::policy::reaper_policy(&stack(), &at),
                crate::stack::reaper::policy::invoke_policy(&stack(), &at),
                crate::stack::reaper::policy::schedules_policy(&stack(), &at),
            ];
            for claude in ClaudeAuth::ALL {
                policies.push(agent_policy(&stack(), &at, &[], claude).unwrap());
            }
            for policy in policies {
                let text = policy.to_string();
                assert!(!text.contains("arn:aws:"), "{text}");
                for (sid, _, resources, condition) in statements(&policy) {
                    for r in resources {
                        assert!(
                            r == "*" || r.starts_with(&format!("arn:{partition}:")),
                            "{sid}: {r}"
                        );
                    }
                    let condition = condition.map(|c| c.to_string()).unwrap_or_default();
                    for arn in condition.split('"').filter(|v| v.starts_with("arn:")) {
                        assert!(
                            arn.starts_with(&format!("arn:{partition}:")),
                            "{sid}: {arn}"
                        );
                    }
                }
            }
        }
    }
}
