//! Least-privilege IAM policy documents for the agents' role and for the people (or
//! CI) who run `lease`, on the resources named by [`lease_common::stack`]. Pure: the
//! `iam-policy` command only prints what these return.
//!
//! Choices, statement by statement, are in the comments beside each one. Actions that
//! do not support resource-level permissions (`ec2:Describe*`) get `*` and nothing else
//! does.

use lease_common::stack::{Location, Stack, StackError};
use lease_common::tags;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    #[error(transparent)]
    Stack(#[from] StackError),
}

/// The instance whose role credentials sign the request, as an EC2 resource path.
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

/// The agents' role. `pools` limits the queues it may consume; empty means every pool
/// of the stack (`lease-<stack>-pool-*`, which never matches a dead-letter queue).
pub fn agent_policy(stack: &Stack, at: &Location, pools: &[String]) -> Result<Value, IamError> {
    let queues = if pools.is_empty() {
        vec![at.arn("sqs", &stack.pool_queue_pattern())]
    } else {
        pools
            .iter()
            .map(|p| Ok(at.arn("sqs", &stack.pool_queue(p)?)))
            .collect::<Result<Vec<_>, StackError>>()?
    };
    let bucket = stack.bucket(&at.account, &at.region);
    let own_instance = with_condition(
        // `${ec2:InstanceID}` is the id of the instance whose role credentials signed
        // the request; in the Resource it makes that instance the only one these
        // actions may name, so one compromised node cannot stop, terminate or retag
        // another. (A Resource that is only a variable, `${ec2:SourceInstanceARN}`, is
        // not an ARN, and IAM's policy validation refuses it.) The ArnLike condition
        // on `ec2:SourceInstanceARN` makes the request's origin explicit (credentials
        // used off the instance carry no such key and match nothing) and pins it to
        // this account and region.
        statement(
            "ActOnOwnInstanceOnly",
            &[
                "ec2:StopInstances",
                "ec2:TerminateInstances",
                "ec2:CreateTags",
            ],
            vec![at.arn("ec2", OWN_INSTANCE)],
        ),
        json!({
            "ArnLike": { "ec2:SourceInstanceARN": at.arn("ec2", "instance/*") },
            // Only `lease:*` tags (status, task): never another tool's tags.
            "ForAllValues:StringLike": { "aws:TagKeys": ["lease:*"] },
        }),
    );
    Ok(json!({
        "Version": VERSION,
        "Statement": [
            statement(
                "ConsumePoolQueues",
                &[
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                ],
                queues,
            ),
            statement(
                "PublishToControlBus",
                &["sns:Publish"],
                vec![at.arn("sns", &stack.bus_topic())],
            ),
            statement(
                "WriteBundlesAndLogs",
                &["s3:PutObject"],
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
        ],
    }))
}

/// What `lease launch/list/status/extend/terminate/stop/hibernate/attach/submit/stats/
/// tasks/nodes/logs/download/schedule` call, on this stack's resources, and nothing
/// else (`setup` and `teardown` are an administrator's).
/// `sts:GetCallerIdentity` (the default owner) needs no permission.
pub fn launcher_policy(stack: &Stack, at: &Location) -> Value {
    let bucket = stack.bucket(&at.account, &at.region);
    let instances = at.arn("ec2", "instance/*");
    let volumes = at.arn("ec2", "volume/*");
    let spot_requests = at.arn("ec2", "spot-instances-request/*");
    json!({
        "Version": VERSION,
        "Statement": [
            // None of these supports resource-level permissions.
            statement(
                "Describe",
                &[
                    "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeRegions",
                ],
                vec!["*".into()],
            ),
            // The latest Amazon Linux 2023 AMI, read by `launch` and resolved by
            // RunInstances (`resolve:ssm:`); public parameters have no account.
            statement(
                "ReadAmiParameters",
                &["ssm:GetParameter", "ssm:GetParameters"],
                vec![format!(
                    "arn:{}:ssm:{}::parameter/aws/service/ami-amazon-linux-latest/*",
                    at.partition,
                    at.region.as_str()
                )],
            ),
            // RunInstances may create an instance (and its volumes and spot request)
            // only when the request tags it `lease:managed=true`, which `launch` always
            // does atomically.
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
                    vec![instances.clone(), volumes, spot_requests],
                ),
                json!({ "StringEquals": { "ec2:CreateAction": "RunInstances" } }),
            ),
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
            // attach over SSM (`aws ssm start-session`): managed instances, one document.
            with_condition(
                statement("AttachToManagedInstances", &["ssm:StartSession"], vec![
                    instances,
                ]),
                managed_tag_condition("ssm:resourceTag"),
            ),
            statement(
                "AttachDocument",
                &["ssm:StartSession"],
                vec![format!(
                    "arn:{}:ssm:{}::document/AWS-StartInteractiveCommand",
                    at.partition,
                    at.region.as_str()
                )],
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
            statement(
                "ReadLogsAndBundles",
                &["s3:GetObject"],
                vec![
                    at.s3_arn(&format!("{bucket}/logs/*")),
                    at.s3_arn(&format!("{bucket}/jobs/*")),
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

    #[test]
    fn agent_policy_statements_actions_and_resources() {
        let all = statements(&agent_policy(&stack(), &location(), &[]).unwrap());
        let sids: Vec<&str> = all.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            sids,
            [
                "ConsumePoolQueues",
                "PublishToControlBus",
                "WriteBundlesAndLogs",
                "ReadAgentPackageAndTaskSpecs",
                "NodeAndTaskTables",
                "ActOnOwnInstanceOnly",
                "ReadInstanceTags",
            ]
        );
        let s = find(&all, "ConsumePoolQueues");
        assert_eq!(
            s.1,
            [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility"
            ]
        );
        assert_eq!(s.2, ["arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-*"]);
        let s = find(&all, "PublishToControlBus");
        assert_eq!(s.1, ["sns:Publish"]);
        assert_eq!(s.2, ["arn:aws:sns:eu-west-1:123456789012:lease-dev-bus"]);
        let bucket = "arn:aws:s3:::lease-dev-123456789012-eu-west-1";
        let s = find(&all, "WriteBundlesAndLogs");
        assert_eq!(s.1, ["s3:PutObject"]);
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
        let s = find(&all, "ActOnOwnInstanceOnly");
        assert_eq!(
            s.1,
            [
                "ec2:StopInstances",
                "ec2:TerminateInstances",
                "ec2:CreateTags"
            ]
        );
        assert_eq!(
            s.2,
            ["arn:aws:ec2:eu-west-1:123456789012:instance/${ec2:InstanceID}"]
        );
        let cond = s.3.as_ref().unwrap();
        assert_eq!(
            cond["ArnLike"]["ec2:SourceInstanceARN"],
            "arn:aws:ec2:eu-west-1:123456789012:instance/*"
        );
        assert_eq!(
            cond["ForAllValues:StringLike"]["aws:TagKeys"],
            json!(["lease:*"])
        );
        let s = find(&all, "ReadInstanceTags");
        assert_eq!(s.1, ["ec2:DescribeTags", "ec2:DescribeInstances"]);
        assert_eq!(s.2, ["*"]);
    }

    #[test]
    fn agent_policy_grants_no_ec2_mutation_outside_its_own_instance() {
        let all = statements(&agent_policy(&stack(), &location(), &[]).unwrap());
        for (sid, actions, resources, condition) in &all {
            let mutates = actions
                .iter()
                .any(|a| a.starts_with("ec2:") && !a.starts_with("ec2:Describe"));
            if mutates {
                assert_eq!(resources, &[location().arn("ec2", OWN_INSTANCE)], "{sid}");
                let condition = condition.as_ref().expect(sid).to_string();
                assert!(condition.contains("ec2:SourceInstanceARN"), "{sid}");
            }
            // `*` only where resource-level permissions do not exist.
            if resources.iter().any(|r| r == "*") {
                assert!(
                    actions
                        .iter()
                        .all(|a| a.starts_with("ec2:Describe") || a == "scheduler:ListSchedules"),
                    "{sid}"
                );
            }
            assert!(!actions.iter().any(|a| a.ends_with('*')), "{sid}");
        }
    }

    #[test]
    fn agent_policy_can_be_limited_to_named_pools() {
        let pools = vec!["gpu".to_string(), "cpu".to_string()];
        let all = statements(&agent_policy(&stack(), &location(), &pools).unwrap());
        assert_eq!(
            find(&all, "ConsumePoolQueues").2,
            [
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-gpu",
                "arn:aws:sqs:eu-west-1:123456789012:lease-dev-pool-cpu",
            ]
        );
        let err = agent_policy(&stack(), &location(), &["GPU".into()]).unwrap_err();
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
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeRegions"
            ]
        );
        assert_eq!(s.2, ["*"]);
        let s = find(&all, "ReadAmiParameters");
        assert_eq!(
            s.2,
            ["arn:aws:ssm:eu-west-1::parameter/aws/service/ami-amazon-linux-latest/*"]
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
            ["arn:aws:ssm:eu-west-1::document/AWS-StartInteractiveCommand"]
        );
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
            [format!("{bucket}/logs/*"), format!("{bucket}/jobs/*")]
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
                        .all(|a| a.starts_with("ec2:Describe") || a == "scheduler:ListSchedules"),
                    "{sid}"
                );
            }
            assert!(!actions.iter().any(|a| a.ends_with('*')), "{sid}");
        }
    }

    #[test]
    fn partitions_flow_into_every_arn() {
        let at = Location::new("aws-cn", "123456789012", "cn-north-1").unwrap();
        for policy in [
            agent_policy(&stack(), &at, &[]).unwrap(),
            launcher_policy(&stack(), &at),
        ] {
            for (sid, _, resources, _) in statements(&policy) {
                for r in resources {
                    assert!(
                        r == "*" || r.starts_with("${") || r.starts_with("arn:aws-cn:"),
                        "{sid}: {r}"
                    );
                }
            }
        }
    }
}
