//! `lease iam-policy setup`: what the operator who runs `lease setup` and `lease
//! teardown` needs, on one stack's resources and nothing else. Pure, like the other
//! policies of `lease iam-policy`; tests/iam_check.py checks every call setup and
//! teardown make in the end-to-end tests against it.
//!
//! Names: every resource is the stack's own (`lease-<stack>-…`, the bucket, the
//! schedule group `lease-<stack>`, the reaper's log group), which is what the Service
//! Authorization Reference lets each action be scoped to. Deletions additionally need
//! the stack's tag (`lease:stack=<stack>`) on the resource where the reference lists
//! `aws:ResourceTag` for it, so a teardown cannot remove a same-named resource that
//! setup did not make; setup tags each resource it creates and re-tags one it finds
//! untagged. Creation is not conditioned on request tags: several resources are
//! tagged by a call after the create (TagQueue, TagResource), which a request-tag
//! condition on the create would not see.

use lease_common::stack::{Location, STACK_TAG, Stack};
use serde_json::{Value, json};

use crate::model::policies::{VERSION, statement, with_condition};
use crate::stack::reaper::policy::log_group;

/// `aws:ResourceTag/lease:stack` is the stack: the resource is one setup made for it
/// (IAM User Guide, "Controlling access to AWS resources using tags").
fn stack_tagged(stack: &Stack) -> Value {
    json!({ "StringEquals": { (format!("aws:ResourceTag/{STACK_TAG}")): stack.name() } })
}

/// The operator's policy for `stack` at `at`.
pub fn setup_policy(stack: &Stack, at: &Location) -> Value {
    let named = stack.queue_pattern(); // lease-<stack>-*
    let bucket = stack.bucket(&at.account, &at.region);
    let queues = at.arn("sqs", &named);
    let topics = at.arn("sns", &named);
    let tables = at.arn("dynamodb", &format!("table/{named}"));
    let roles = at.iam_arn(&format!("role/{named}"));
    let profiles = at.iam_arn(&format!("instance-profile/{named}"));
    let function = at.arn("lambda", &format!("function:{}", stack.reaper_function()));
    let group = at.arn(
        "scheduler",
        &format!("schedule-group/{}", stack.schedule_group()),
    );
    let schedules = at.arn(
        "scheduler",
        &format!("schedule/{}/*", stack.schedule_group()),
    );
    let logs = at.arn("logs", &format!("log-group:{}", log_group(stack)));
    json!({
        "Version": VERSION,
        "Statement": [
            // Queues: the pools, their dead-letter queues and the events queue, their
            // attributes (redrive, the bus's send policy) and tags.
            statement(
                "Queues",
                &[
                    "sqs:CreateQueue",
                    "sqs:GetQueueUrl",
                    "sqs:GetQueueAttributes",
                    "sqs:SetQueueAttributes",
                    "sqs:TagQueue",
                    "sqs:ListQueueTags",
                ],
                vec![queues.clone()],
            ),
            with_condition(
                statement("DeleteQueues", &["sqs:DeleteQueue"], vec![queues]),
                stack_tagged(stack),
            ),
            // Neither supports resource-level permissions: ListQueues (finding a
            // stack's pools by prefix) and DescribeInstances (teardown refuses while
            // one of the stack's instances lives).
            statement(
                "ListQueuesAndInstances",
                &["sqs:ListQueues", "ec2:DescribeInstances"],
                vec!["*".into()],
            ),
            // The bus and command topics, their tags and their subscriptions.
            statement(
                "Topics",
                &[
                    "sns:CreateTopic",
                    "sns:GetTopicAttributes",
                    "sns:SetTopicAttributes",
                    "sns:TagResource",
                    "sns:ListTagsForResource",
                    "sns:Subscribe",
                    "sns:ListSubscriptionsByTopic",
                ],
                vec![topics.clone()],
            ),
            with_condition(
                statement("DeleteTopics", &["sns:DeleteTopic"], vec![topics]),
                stack_tagged(stack),
            ),
            // A subscription's own actions support no resource-level permissions.
            statement(
                "Subscriptions",
                &[
                    "sns:GetSubscriptionAttributes",
                    "sns:SetSubscriptionAttributes",
                    "sns:Unsubscribe",
                ],
                vec!["*".into()],
            ),
            // The bucket and its settings (S3 has no resource tags on buckets that IAM
            // evaluates by default, so its deletion is scoped by name only).
            statement(
                "Bucket",
                &[
                    "s3:CreateBucket",
                    "s3:DeleteBucket",
                    "s3:ListBucket",
                    "s3:ListBucketVersions",
                    "s3:GetBucketTagging",
                    "s3:PutBucketTagging",
                    "s3:GetLifecycleConfiguration",
                    "s3:PutLifecycleConfiguration",
                    "s3:GetEncryptionConfiguration",
                    "s3:PutEncryptionConfiguration",
                    "s3:GetBucketPublicAccessBlock",
                    "s3:PutBucketPublicAccessBlock",
                    "s3:GetBucketOwnershipControls",
                    "s3:PutBucketOwnershipControls",
                ],
                vec![at.s3_arn(&bucket)],
            ),
            // The agent packages (setup uploads them under agent/), and emptying the
            // bucket at teardown, noncurrent versions included.
            statement(
                "AgentPackages",
                &["s3:PutObject", "s3:GetObject"],
                vec![at.s3_arn(&format!("{bucket}/agent/*"))],
            ),
            statement(
                "EmptyBucket",
                &["s3:DeleteObject", "s3:DeleteObjectVersion"],
                vec![at.s3_arn(&format!("{bucket}/*"))],
            ),
            // The nodes and tasks tables, their expiry attribute and tags.
            statement(
                "Tables",
                &[
                    "dynamodb:CreateTable",
                    "dynamodb:DescribeTable",
                    "dynamodb:UpdateTable",
                    "dynamodb:DescribeTimeToLive",
                    "dynamodb:UpdateTimeToLive",
                    "dynamodb:TagResource",
                    "dynamodb:ListTagsOfResource",
                ],
                vec![tables.clone()],
            ),
            with_condition(
                statement("DeleteTables", &["dynamodb:DeleteTable"], vec![tables]),
                stack_tagged(stack),
            ),
            // The agents' role and instance profile, the reaper's execution and invoke
            // roles, the schedules role: their trust, inline policies and tags.
            statement(
                "Roles",
                &[
                    "iam:CreateRole",
                    "iam:GetRole",
                    "iam:TagRole",
                    "iam:UpdateAssumeRolePolicy",
                    "iam:PutRolePolicy",
                    "iam:GetRolePolicy",
                    "iam:DeleteRolePolicy",
                    "iam:ListRolePolicies",
                ],
                vec![roles.clone()],
            ),
            with_condition(
                statement("DeleteRoles", &["iam:DeleteRole"], vec![roles]),
                stack_tagged(stack),
            ),
            statement(
                "InstanceProfiles",
                &[
                    "iam:CreateInstanceProfile",
                    "iam:GetInstanceProfile",
                    "iam:TagInstanceProfile",
                    "iam:AddRoleToInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                ],
                vec![profiles.clone()],
            ),
            with_condition(
                statement(
                    "DeleteInstanceProfiles",
                    &["iam:DeleteInstanceProfile"],
                    vec![profiles],
                ),
                stack_tagged(stack),
            ),
            // The reaper's function runs with its own role, passed only to Lambda; its
            // schedule invokes it with the invoke role, passed only to Scheduler (IAM
            // User Guide, "Granting a user permissions to pass a role to an AWS
            // service").
            with_condition(
                statement(
                    "PassReaperRole",
                    &["iam:PassRole"],
                    vec![at.iam_arn(&format!("role/{}", stack.reaper_function()))],
                ),
                json!({ "StringEquals": { "iam:PassedToService": "lambda.amazonaws.com" } }),
            ),
            with_condition(
                statement(
                    "PassReaperInvokeRole",
                    &["iam:PassRole"],
                    vec![at.iam_arn(&format!("role/{}", stack.reaper_invoke_role()))],
                ),
                json!({ "StringEquals": { "iam:PassedToService": "scheduler.amazonaws.com" } }),
            ),
            // The reaper function (CreateFunction with tags also needs TagResource,
            // Lambda Developer Guide, "Using tags on Lambda functions").
            statement(
                "ReaperFunction",
                &[
                    "lambda:CreateFunction",
                    "lambda:GetFunction",
                    "lambda:GetFunctionConfiguration",
                    "lambda:UpdateFunctionCode",
                    "lambda:UpdateFunctionConfiguration",
                    "lambda:TagResource",
                ],
                vec![function.clone()],
            ),
            with_condition(
                statement("DeleteReaperFunction", &["lambda:DeleteFunction"], vec![function]),
                stack_tagged(stack),
            ),
            // Lambda creates the function's log group itself, untagged: removed at
            // teardown by name.
            statement(
                "ReaperLogGroup",
                &["logs:DeleteLogGroup"],
                vec![logs.clone(), format!("{logs}:*")],
            ),
            // The stack's schedule group (tagged at creation: TagResource, Scheduler
            // User Guide, "Managing schedule groups") and the reaper's schedule in it.
            statement(
                "ScheduleGroup",
                &[
                    "scheduler:CreateScheduleGroup",
                    "scheduler:GetScheduleGroup",
                    "scheduler:TagResource",
                ],
                vec![group.clone()],
            ),
            with_condition(
                statement(
                    "DeleteScheduleGroup",
                    &["scheduler:DeleteScheduleGroup"],
                    vec![group],
                ),
                stack_tagged(stack),
            ),
            statement(
                "ReaperSchedule",
                &[
                    "scheduler:CreateSchedule",
                    "scheduler:GetSchedule",
                    "scheduler:UpdateSchedule",
                    "scheduler:DeleteSchedule",
                ],
                vec![schedules],
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy() -> Value {
        let at = Location::new("aws", "123456789012", "eu-west-1").unwrap();
        setup_policy(&Stack::new("dev").unwrap(), &at)
    }

    #[test]
    fn every_resource_is_the_stacks_own_or_takes_no_resource() {
        let no_resource = [
            "sqs:ListQueues",
            "ec2:DescribeInstances",
            "sns:GetSubscriptionAttributes",
            "sns:SetSubscriptionAttributes",
            "sns:Unsubscribe",
        ];
        for s in policy()["Statement"].as_array().unwrap() {
            let actions: Vec<&str> = s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            for r in s["Resource"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                if r == "*" {
                    assert!(actions.iter().all(|a| no_resource.contains(a)), "{s}");
                } else {
                    assert!(
                        r.contains(":lease-dev-")
                            || r.contains("/lease-dev-")
                            || r.contains("/lease-dev/")
                            || r.ends_with("/lease-dev"),
                        "{r}"
                    );
                }
            }
            assert!(!actions.iter().any(|a| a.ends_with('*')), "{s}");
        }
    }

    #[test]
    fn deletions_need_the_stack_tag() {
        for s in policy()["Statement"].as_array().unwrap() {
            let deletes = s["Action"].as_array().unwrap().iter().any(|a| {
                let a = a.as_str().unwrap();
                a.ends_with(":DeleteQueue")
                    || a.ends_with(":DeleteTopic")
                    || a.ends_with(":DeleteTable")
                    || a.ends_with(":DeleteRole")
                    || a.ends_with(":DeleteInstanceProfile")
                    || a.ends_with(":DeleteFunction")
                    || a.ends_with(":DeleteScheduleGroup")
            });
            if deletes {
                assert_eq!(
                    s["Condition"]["StringEquals"]["aws:ResourceTag/lease:stack"], "dev",
                    "{s}"
                );
            }
        }
    }
}
