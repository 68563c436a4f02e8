//! The IAM documents of the reaper's deployment and of `lease schedule`'s targets:
//! pure functions of the stack's names, like the policies of `lease iam-policy`.

use lease_common::stack::{Location, Stack};
use serde_json::{Value, json};

use crate::model::policies::{
    VERSION, launch_statements, managed_tag_condition, statement, with_condition,
};

/// What every inline policy of ours on a deployment role is named before its region.
/// IAM is global and the policies name one region's resources, so a stack set up in
/// two regions holds one policy a region on the same roles, and a teardown removes
/// only its own region's.
pub const INLINE_POLICY_PREFIX: &str = "lease-";

/// The inline policy for `at`'s region, `lease-<region>`.
pub fn inline_policy(at: &Location) -> String {
    format!("{INLINE_POLICY_PREFIX}{}", at.region.as_str())
}

/// The reaper function's log group, which Lambda writes to under its role.
pub fn log_group(stack: &Stack) -> String {
    format!("/aws/lambda/{}", stack.reaper_function())
}

/// The reaper's execution role: list instances, and terminate or stop only those
/// tagged `lease:managed=true`; write its own logs.
///
/// No `ec2:CreateTags`: the reaper never tags (`lease:status` is the agent's, see
/// `lease_reaper::ec2`), so granting it would only widen what a compromised function
/// could do.
pub fn reaper_policy(stack: &Stack, at: &Location) -> Value {
    let logs = at.arn("logs", &format!("log-group:{}", log_group(stack)));
    json!({
        "Version": VERSION,
        "Statement": [
            // DescribeInstances supports no resource-level permissions.
            statement("ListInstances", &["ec2:DescribeInstances"], vec!["*".into()]),
            with_condition(
                statement(
                    "EndManagedInstances",
                    &["ec2:TerminateInstances", "ec2:StopInstances"],
                    vec![at.arn("ec2", "instance/*")],
                ),
                managed_tag_condition("aws:ResourceTag"),
            ),
            statement("CreateOwnLogGroup", &["logs:CreateLogGroup"], vec![logs.clone()]),
            statement(
                "WriteOwnLogs",
                &["logs:CreateLogStream", "logs:PutLogEvents"],
                vec![format!("{logs}:*")],
            ),
        ],
    })
}

/// The function's ARN (unqualified: the schedule invokes `$LATEST`).
pub fn function_arn(stack: &Stack, at: &Location) -> String {
    at.arn("lambda", &format!("function:{}", stack.reaper_function()))
}

/// What Scheduler may do with the reaper's invoke role: invoke that one function.
pub fn invoke_policy(stack: &Stack, at: &Location) -> Value {
    json!({
        "Version": VERSION,
        "Statement": [statement(
            "InvokeReaper",
            &["lambda:InvokeFunction"],
            vec![function_arn(stack, at)],
        )],
    })
}

/// What the targets of `lease schedule` may do: publish a task to the stack's command
/// topic, or launch a managed instance the way `lease launch` does (tagged
/// `lease:managed=true` in the request, the stack's agent role only, the AMI resolved
/// from the public Amazon Linux parameter).
pub fn schedules_policy(stack: &Stack, at: &Location) -> Value {
    let [launch, network, tag_on_launch] = launch_statements(at);
    json!({
        "Version": VERSION,
        "Statement": [
            statement(
                "PublishTasks",
                &["sns:Publish"],
                vec![at.arn("sns", &stack.command_topic())],
            ),
            launch,
            network,
            tag_on_launch,
            // `resolve:ssm:` image ids: RunInstances reads the parameter as the caller.
            statement(
                "ResolveAmiParameters",
                &["ssm:GetParameters"],
                vec![format!(
                    "arn:{}:ssm:{}::parameter/aws/service/ami-amazon-linux-latest/*",
                    at.partition,
                    at.region.as_str()
                )],
            ),
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at() -> Location {
        Location::new("aws", "123456789012", "eu-west-1").unwrap()
    }

    fn stack() -> Stack {
        Stack::new("dev").unwrap()
    }

    fn actions(policy: &Value) -> Vec<(String, Value, Option<Value>)> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                s["Action"].as_array().unwrap().iter().map(|a| {
                    (
                        a.as_str().unwrap().to_string(),
                        s["Resource"].clone(),
                        s.get("Condition").cloned(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn the_reaper_ends_only_managed_instances_and_never_tags() {
        let all = actions(&reaper_policy(&stack(), &at()));
        let names: Vec<&str> = all.iter().map(|a| a.0.as_str()).collect();
        assert!(!names.contains(&"ec2:CreateTags"));
        for action in ["ec2:TerminateInstances", "ec2:StopInstances"] {
            let (_, resource, condition) = all.iter().find(|a| a.0 == action).unwrap();
            assert_eq!(
                resource,
                &json!(["arn:aws:ec2:eu-west-1:123456789012:instance/*"])
            );
            assert_eq!(
                condition.as_ref().unwrap()["StringEquals"]["aws:ResourceTag/lease:managed"],
                "true"
            );
        }
        // Only DescribeInstances, which has no resource-level form, is on `*`.
        let on_star: Vec<&str> = all
            .iter()
            .filter(|a| a.1 == json!(["*"]))
            .map(|a| a.0.as_str())
            .collect();
        assert_eq!(on_star, ["ec2:DescribeInstances"]);
        let (_, logs, _) = all.iter().find(|a| a.0 == "logs:PutLogEvents").unwrap();
        assert_eq!(
            logs,
            &json!([
                "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/lease-dev-reaper:*"
            ])
        );
    }

    #[test]
    fn the_invoke_role_reaches_one_function_for_this_account_only() {
        let all = actions(&invoke_policy(&stack(), &at()));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "lambda:InvokeFunction");
        assert_eq!(
            all[0].1,
            json!(["arn:aws:lambda:eu-west-1:123456789012:function:lease-dev-reaper"])
        );
        let t = crate::stack::role::trust("scheduler.amazonaws.com", Some(&at()));
        assert_eq!(
            t["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"],
            "123456789012"
        );
        assert!(
            crate::stack::role::trust("lambda.amazonaws.com", None)["Statement"][0]
                .get("Condition")
                .is_none()
        );
    }

    #[test]
    fn schedules_launch_only_managed_instances_and_pass_only_the_agent_role() {
        let all = actions(&schedules_policy(&stack(), &at()));
        let publish = all.iter().find(|a| a.0 == "sns:Publish").unwrap();
        assert_eq!(
            publish.1,
            json!(["arn:aws:sns:eu-west-1:123456789012:lease-dev-commands"])
        );
        let launch = all
            .iter()
            .find(|a| a.0 == "ec2:RunInstances" && a.1.to_string().contains(":instance/*"))
            .unwrap();
        assert_eq!(
            launch.2.as_ref().unwrap()["StringEquals"]["aws:RequestTag/lease:managed"],
            "true"
        );
        let pass = all.iter().find(|a| a.0 == "iam:PassRole").unwrap();
        assert_eq!(
            pass.1,
            json!(["arn:aws:iam::123456789012:role/lease-dev-agent"])
        );
        assert!(all.iter().all(|a| a.1 != json!(["*"])));
    }
}
