//! `lease iam-policy agent|launcher|reaper|reaper-invoke|schedules|setup`: prints a
//! least-privilege IAM policy document, on the stack's resources, for every identity
//! `lease` creates or needs: the agents' role, the people who run `lease`, the
//! reaper's execution role, the role Scheduler invokes the reaper with, the role
//! `lease schedule` targets run with, and the operator who runs setup and teardown. `setup` puts exactly these documents on its roles.

use std::path::Path;

use lease_common::stack::{ClaudeAuth, Location, Stack};

use crate::aws::Cloud;
use crate::cli::{IamPolicyArgs, PolicyKind};
use crate::error::{Error, Result};
use crate::model::policies;
use crate::settings::Settings;
use crate::stack::reaper::policy;

/// The account id in an ARN (`arn:aws:sts::123456789012:assumed-role/…`): its fifth field.
fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// `--account` when given, else the caller's own account (one STS call, which needs no
/// permission): a policy is almost always for the account one is signed in to.
async fn account<C: Cloud>(cloud: &C, args: &IamPolicyArgs) -> Result<String> {
    if let Some(a) = &args.account {
        return Ok(a.clone());
    }
    let arn = cloud.caller_arn().await?;
    account_of(&arn).map(str::to_string).ok_or_else(|| {
        Error::usage(format!(
            "Cannot read an account id from the caller identity '{arn}'; pass --account"
        ))
    })
}

/// The policy document, pretty-printed, with a trailing newline. `recorded_claude_auth`
/// is the stack's choice in the settings file, used when `--claude-auth` is not given.
pub async fn render<C: Cloud>(
    cloud: &C,
    args: &IamPolicyArgs,
    recorded_claude_auth: ClaudeAuth,
) -> Result<String> {
    let usage = |e: &dyn std::fmt::Display| Error::usage(e.to_string());
    let stack = Stack::new(&args.stack).map_err(|e| usage(&e))?;
    if cloud.region().is_empty() {
        return Err(Error::usage(
            "No AWS region: pass --region or set AWS_REGION (ARNs in the policy name it)",
        ));
    }
    let account = account(cloud, args).await?;
    let at = Location::new(&args.partition, &account, cloud.region()).map_err(|e| usage(&e))?;
    let policy = match args.kind {
        PolicyKind::Agent => {
            let claude = args.claude_auth.unwrap_or(recorded_claude_auth);
            policies::agent_policy(&stack, &at, &args.pools, claude).map_err(|e| usage(&e))?
        }
        PolicyKind::Launcher => policies::launcher_policy(&stack, &at),
        PolicyKind::Reaper => policy::reaper_policy(&stack, &at),
        PolicyKind::ReaperInvoke => policy::invoke_policy(&stack, &at),
        PolicyKind::Schedules => policy::schedules_policy(&stack, &at),
        PolicyKind::Setup => crate::stack::operator_policy::setup_policy(&stack, &at),
    };
    let text = serde_json::to_string_pretty(&policy)
        .map_err(|e| Error::io("Failed to render the policy", std::io::Error::other(e)))?;
    Ok(format!("{text}\n"))
}

pub async fn run<C: Cloud>(cloud: &C, args: &IamPolicyArgs, settings: &Path) -> Result<()> {
    // The agent's policy depends on the stack's Claude auth, which setup recorded.
    let recorded = match args.claude_auth {
        Some(_) => ClaudeAuth::None,
        None => Settings::load(settings)?
            .section(&args.stack, cloud.region())
            .map(|s| s.claude_auth)
            .unwrap_or_default(),
    };
    crate::output::print(&render(cloud, args, recorded).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::aws::fake::FakeCloud;

    fn args(kind: PolicyKind) -> IamPolicyArgs {
        IamPolicyArgs {
            kind,
            stack: "dev".into(),
            account: None,
            partition: "aws".into(),
            pools: vec![],
            claude_auth: None,
        }
    }

    #[tokio::test]
    async fn account_defaults_to_the_caller_and_region_to_the_clients() {
        let cloud = FakeCloud::new("eu-west-1");
        let text = render(&cloud, &args(PolicyKind::Agent), ClaudeAuth::None)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["Statement"][2]["Resource"][0],
            "arn:aws:sns:eu-west-1:123456789012:lease-dev-bus"
        );
        let mut a = args(PolicyKind::Launcher);
        a.account = Some("210987654321".into());
        let text = render(&cloud, &a, ClaudeAuth::None).await.unwrap();
        assert!(text.contains("arn:aws:iam::210987654321:role/lease-dev-agent"));
    }

    /// Every policy `lease` creates or needs can be printed, and the agent's follows
    /// the Claude auth asked for, else the one recorded for the stack.
    #[tokio::test]
    async fn every_policy_prints_and_the_agent_follows_the_claude_auth() {
        let cloud = FakeCloud::new("eu-west-1");
        for (kind, needle) in [
            (PolicyKind::Reaper, "\"EndManagedInstances\""),
            (PolicyKind::ReaperInvoke, "function:lease-dev-reaper"),
            (PolicyKind::Schedules, "\"PublishTasks\""),
        ] {
            let text = render(&cloud, &args(kind), ClaudeAuth::None).await.unwrap();
            assert!(text.contains(needle), "{text}");
        }
        let text = render(&cloud, &args(PolicyKind::Agent), ClaudeAuth::Bedrock)
            .await
            .unwrap();
        assert!(text.contains("bedrock:InvokeModel"), "{text}");
        let mut a = args(PolicyKind::Agent);
        a.claude_auth = Some(ClaudeAuth::ApiKey);
        let text = render(&cloud, &a, ClaudeAuth::Bedrock).await.unwrap();
        assert!(!text.contains("bedrock:"), "{text}");
        assert!(
            text.contains("parameter/lease/dev/anthropic-api-key"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_names_are_usage_errors() {
        let cloud = FakeCloud::new("eu-west-1");
        let mut a = args(PolicyKind::Agent);
        a.stack = "Dev".into();
        let err = render(&cloud, &a, ClaudeAuth::None).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'Dev'"), "{err}");
        let mut a = args(PolicyKind::Agent);
        a.account = Some("123".into());
        assert_eq!(
            render(&cloud, &a, ClaudeAuth::None)
                .await
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn account_is_the_fifth_arn_field() {
        assert_eq!(
            account_of("arn:aws:sts::123456789012:assumed-role/r/s"),
            Some("123456789012")
        );
        assert_eq!(account_of("nonsense"), None);
    }
}
