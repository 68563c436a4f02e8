//! The reaper as a Lambda function: the handler against moto's server, the real
//! `bootstrap` binary driven through a local Lambda Runtime API with its results read
//! back from moto, and the package `packaging/build-reaper.sh` makes (the bootstrap,
//! within provided.al2023's glibc, the architecture recorded for the deployment).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use chrono::{TimeDelta, Utc};
use lease_common::tags::render_time;
use lease_reaper::function::{self, ENV_GRACE, FunctionError};
use lease_reaper::{AwsEc2, ReaperConfig};
use lease_tests::lambda_api::Outcome;
use lease_tests::{Cmd, Moto, RuntimeApi};

/// Generous: the binary starts, lists and terminates in well under a second.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

async fn launch(moto: &Moto, expires_in: TimeDelta) -> String {
    let expires_at = render_time(Utc::now() + expires_in);
    moto.run_instance(&[
        ("lease:managed", "true"),
        ("lease:ttl", "1d"),
        ("lease:expires-at", &expires_at),
    ])
    .await
}

async fn state(moto: &Moto, id: &str) -> InstanceStateName {
    moto.instance(id)
        .await
        .state()
        .unwrap()
        .name()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn the_handler_terminates_what_expired_beyond_grace_and_leaves_the_live_one() {
    let moto = Moto::start();
    let expired = launch(&moto, -TimeDelta::hours(1)).await;
    let live = launch(&moto, TimeDelta::hours(1)).await;
    let bad_tag = moto
        .run_instance(&[("lease:managed", "true"), ("lease:ttl", "forever")])
        .await;

    let ec2 = AwsEc2::new(moto.ec2().await);
    let summary = function::handle(Utc::now(), &ec2, &ReaperConfig::default())
        .await
        .unwrap();

    assert_eq!(state(&moto, &expired).await, InstanceStateName::Terminated);
    assert_eq!(state(&moto, &live).await, InstanceStateName::Running);
    assert_eq!(state(&moto, &bad_tag).await, InstanceStateName::Running);
    let terminated: Vec<&str> = summary
        .terminated
        .iter()
        .map(|a| a.instance_id.as_str())
        .collect();
    assert_eq!(terminated, [expired.as_str()]);
    assert!(summary.stopped.is_empty() && summary.failed.is_empty());
    assert_eq!(summary.skipped.len(), 1, "{summary:?}");
    assert_eq!(summary.skipped[0].instance_id, bad_tag);
    assert!(
        summary.skipped[0].reason.contains("lease:ttl"),
        "{summary:?}"
    );
}

#[tokio::test]
async fn the_handler_fails_naming_the_listing_when_ec2_is_unreachable() {
    let moto = Moto::start();
    let ec2 = AwsEc2::new(moto.ec2().await);
    drop(moto);
    let err = function::handle(Utc::now(), &ec2, &ReaperConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::List(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("Failed to list managed instances"),
        "{err}"
    );
}

/// The real `bootstrap`, as Lambda would start it, talking to moto for EC2.
fn bootstrap(moto: &Moto, api: &RuntimeApi) -> Command {
    let mut env = moto.env();
    env.extend(api.env());
    let mut cmd = Cmd::new("bootstrap", &env).command();
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn the_bootstrap_binary_serves_an_invocation_through_the_runtime_api() {
    let moto = Moto::start();
    let expired = launch(&moto, -TimeDelta::hours(1)).await;
    let live = launch(&moto, TimeDelta::hours(1)).await;
    // The event EventBridge Scheduler sends is ignored: every run reaps everything.
    let mut api = RuntimeApi::start(&[r#"{"source":"lease.scheduler"}"#]).await;

    let started = std::time::Instant::now();
    let mut child = bootstrap(&moto, &api).spawn().unwrap();
    let outcome = api.outcome(ANSWER_LIMIT).await;
    // A figure for the report, not an assertion: start, first event, reap, answer.
    eprintln!(
        "bootstrap answered its first invocation {:?} after it started",
        started.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();

    let Some(Outcome::Response { request_id, body }) = outcome else {
        panic!("expected a response, got {outcome:?}");
    };
    assert_eq!(request_id, "00000000-0000-4000-8000-000000000001");
    assert_eq!(api.served(), 1);
    // What it did, read back from EC2 rather than from its answer.
    assert_eq!(state(&moto, &expired).await, InstanceStateName::Terminated);
    assert_eq!(state(&moto, &live).await, InstanceStateName::Running);
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["terminated"][0]["instance-id"], expired.as_str());
    assert_eq!(summary["examined"], 2);
}

#[tokio::test]
async fn the_bootstrap_binary_refuses_a_bad_setting_before_taking_an_event() {
    let moto = Moto::start();
    let expired = launch(&moto, -TimeDelta::hours(1)).await;
    let mut api = RuntimeApi::start(&["{}"]).await;

    let mut cmd = bootstrap(&moto, &api);
    cmd.env(ENV_GRACE, "soon");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LEASE_REAPER_GRACE='soon'"), "{stderr}");
    assert_eq!(api.served(), 0, "no event was taken");
    assert_eq!(api.outcome(Duration::from_millis(10)).await, None);
    assert_eq!(state(&moto, &expired).await, InstanceStateName::Running);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/` of the build the tests run from (the dev profile's `bootstrap`).
fn target_dir() -> PathBuf {
    lease_tests::bin_path("bootstrap")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_package_holds_the_bootstrap_within_provided_al2023_glibc() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(repo_root().join("packaging/build-reaper.sh"))
        .args(["--profile", "dev", "--no-build", "--out"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let stdout = String::from_utf8(result.stdout).unwrap();
    let zip = PathBuf::from(stdout.lines().last().unwrap());
    assert_eq!(zip, out.path().join("lease-reaper.zip"));

    // Read back with unzip, not from the script's words: one executable named bootstrap,
    // and the architecture in the comment.
    let listing = Command::new("unzip").arg("-Z").arg(&zip).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(files.len(), 1, "{listing}");
    assert!(files[0].starts_with("-rwxr-xr-x"), "{listing}");
    assert!(files[0].ends_with(" bootstrap"), "{listing}");
    let bytes = std::fs::read(&zip).unwrap();
    let package = lease_launcher::stack::reaper::ReaperPackage::from_zip(bytes).unwrap();
    assert_eq!(package.architecture().as_str(), std::env::consts::ARCH);
}

#[test]
fn the_glibc_check_refuses_a_binary_that_needs_a_newer_glibc() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("new.c");
    // arc4random arrived in glibc 2.36: newer than provided.al2023's 2.34.
    std::fs::write(
        &source,
        "#include <stdlib.h>\nint main(void) { return (int)(arc4random() & 1); }\n",
    )
    .unwrap();
    let binary = dir.path().join("new");
    let cc = Command::new("cc")
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let check = repo_root().join("packaging/check-glibc.sh");
    let refused = Command::new(&check).arg(&binary).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("arc4random needs GLIBC_2.36"), "{stderr}");

    // The same binary on a glibc that has it passes, and says what it needs.
    let allowed = Command::new(&check)
        .arg(&binary)
        .arg("2.36")
        .output()
        .unwrap();
    assert!(allowed.status.success());
    assert_eq!(String::from_utf8_lossy(&allowed.stdout).trim(), "2.36");
}

mod deployment {
    //! `reaper::ensure` and `remove` against moto's IAM, Lambda and Scheduler,
    //! everything read back through the SDK. (moto creates functions without Docker;
    //! nothing here invokes one.)

    use super::*;
    use lease_common::HumanDuration;
    use lease_common::stack::{Location, Stack};
    use lease_launcher::stack::reaper::{self as reaper, DeployClients, ReaperPackage};
    use lease_launcher::stack::{Outcome, Row};

    fn package() -> ReaperPackage {
        let out = tempfile::tempdir().unwrap();
        let result = Command::new(repo_root().join("packaging/build-reaper.sh"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(out.path())
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        ReaperPackage::read(&out.path().join("lease-reaper.zip")).unwrap()
    }

    fn changes(all: &[Row]) -> Vec<(String, Outcome)> {
        all.iter().map(|c| (c.name.clone(), c.outcome)).collect()
    }

    /// A policy document as IAM returns it (percent-encoded), read the way setup reads it.
    fn decode(text: &str) -> serde_json::Value {
        lease_launcher::stack::wanted::parse_document(text).unwrap()
    }

    #[tokio::test]
    async fn ensure_twice_changes_nothing_the_second_time_and_remove_leaves_nothing() {
        let moto = Moto::start();
        let sdk = moto.sdk_config().await;
        let clients = DeployClients::new(&sdk);
        let stack = Stack::new("dev").unwrap();
        let at = Location::new("aws", "123456789012", "us-east-1").unwrap();
        let package = package();
        let config = ReaperConfig::default();

        let first = reaper::ensure(&clients, &stack, &at, &package, &config)
            .await
            .unwrap();
        let names = [
            "lease-dev-reaper",
            "lease-dev-reaper-invoke",
            "lease-dev-schedules",
            "lease-dev-reaper",
            "lease-dev",
            "lease-dev/reaper",
        ];
        assert_eq!(
            changes(&first),
            names.map(|n| (n.to_string(), Outcome::Created))
        );
        let lambda = aws_sdk_lambda::Client::new(&sdk);
        let scheduler = aws_sdk_scheduler::Client::new(&sdk);
        // What a write would move: the schedule's last change. (moto keeps a function's
        // LastModified through updates, so the function's no-op is shown by the report.)
        let schedule_before = scheduler
            .get_schedule()
            .group_name("lease-dev")
            .name("reaper")
            .send()
            .await
            .unwrap()
            .last_modification_date()
            .cloned();

        let second = reaper::ensure(&clients, &stack, &at, &package, &config)
            .await
            .unwrap();
        assert_eq!(
            changes(&second),
            names.map(|n| (n.to_string(), Outcome::Exists))
        );
        let schedule_after = scheduler
            .get_schedule()
            .group_name("lease-dev")
            .name("reaper")
            .send()
            .await
            .unwrap()
            .last_modification_date()
            .cloned();
        assert!(schedule_before.is_some());
        assert_eq!(schedule_after, schedule_before);

        // The function, read back.
        let f = lambda
            .get_function_configuration()
            .function_name("lease-dev-reaper")
            .send()
            .await
            .unwrap();
        assert_eq!(f.runtime().unwrap().as_str(), "provided.al2023");
        assert_eq!(f.handler(), Some("bootstrap"));
        assert_eq!(
            f.architectures()
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>(),
            [std::env::consts::ARCH]
        );
        assert_eq!(f.code_sha256(), Some(package.code_sha256().as_str()));
        let env = f.environment().unwrap().variables().unwrap();
        assert_eq!(env["LEASE_REAPER_GRACE"], "15m");
        assert_eq!(env["LEASE_REAPER_MAX_AGE"], "7d");

        // Its role: assumable by Lambda only, ending managed instances only.
        let iam = aws_sdk_iam::Client::new(&sdk);
        let role = iam
            .get_role()
            .role_name("lease-dev-reaper")
            .send()
            .await
            .unwrap();
        let role = role.role().unwrap();
        assert_eq!(f.role(), Some(role.arn()));
        let trust = decode(role.assume_role_policy_document().unwrap());
        assert_eq!(
            trust["Statement"][0]["Principal"]["Service"],
            "lambda.amazonaws.com"
        );
        let inline = iam
            .get_role_policy()
            .role_name("lease-dev-reaper")
            .policy_name("lease-us-east-1")
            .send()
            .await
            .unwrap();
        let inline = decode(inline.policy_document());
        let end = inline["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "EndManagedInstances")
            .unwrap();
        assert_eq!(
            end["Condition"]["StringEquals"]["aws:ResourceTag/lease:managed"],
            "true"
        );

        // The schedule: every five minutes, the function, through the invoke role.
        let s = scheduler
            .get_schedule()
            .group_name("lease-dev")
            .name("reaper")
            .send()
            .await
            .unwrap();
        assert_eq!(s.schedule_expression(), Some("rate(5 minutes)"));
        assert_eq!(s.state().unwrap().as_str(), "ENABLED");
        let target = s.target().unwrap();
        assert_eq!(target.arn(), f.function_arn().unwrap());
        let invoke = iam
            .get_role()
            .role_name("lease-dev-reaper-invoke")
            .send()
            .await
            .unwrap();
        let invoke = invoke.role().unwrap();
        assert_eq!(target.role_arn(), invoke.arn());
        let trust = decode(invoke.assume_role_policy_document().unwrap());
        assert_eq!(
            trust["Statement"][0]["Principal"]["Service"],
            "scheduler.amazonaws.com"
        );
        let invoke_policy = iam
            .get_role_policy()
            .role_name("lease-dev-reaper-invoke")
            .policy_name("lease-us-east-1")
            .send()
            .await
            .unwrap();
        let invoke_policy = decode(invoke_policy.policy_document());
        assert_eq!(
            invoke_policy["Statement"][0]["Resource"],
            serde_json::json!([f.function_arn().unwrap()])
        );

        // A new setting updates the function's configuration and nothing else.
        let longer = ReaperConfig {
            grace: HumanDuration::from_secs(1800),
            ..config
        };
        let third = reaper::ensure(&clients, &stack, &at, &package, &longer)
            .await
            .unwrap();
        let updated: Vec<(String, Outcome)> = changes(&third)
            .into_iter()
            .filter(|(_, c)| *c != Outcome::Exists)
            .collect();
        assert_eq!(
            updated,
            [("lease-dev-reaper".to_string(), Outcome::Updated)]
        );
        assert_eq!(third[3].kind, "lambda function");
        let f = lambda
            .get_function_configuration()
            .function_name("lease-dev-reaper")
            .send()
            .await
            .unwrap();
        assert_eq!(
            f.environment().unwrap().variables().unwrap()["LEASE_REAPER_GRACE"],
            "30m"
        );

        // Remove: everything deleted, then everything absent.
        let removed = reaper::remove(&clients, &stack, &at).await.unwrap();
        // The function never ran in Lambda here, so it has no log group to delete.
        assert!(
            removed.iter().all(|c| c.outcome
                == if c.kind == "log group" {
                    Outcome::Absent
                } else {
                    Outcome::Deleted
                }),
            "{removed:?}"
        );
        assert!(
            lambda
                .get_function()
                .function_name("lease-dev-reaper")
                .send()
                .await
                .is_err()
        );
        for role in [
            "lease-dev-reaper",
            "lease-dev-reaper-invoke",
            "lease-dev-schedules",
        ] {
            assert!(
                iam.get_role().role_name(role).send().await.is_err(),
                "{role}"
            );
        }
        let groups = scheduler.list_schedule_groups().send().await.unwrap();
        assert!(
            groups
                .schedule_groups()
                .iter()
                .all(|g| g.name() != Some("lease-dev")),
            "{groups:?}"
        );
        let functions = lambda.list_functions().send().await.unwrap();
        assert!(functions.functions().is_empty());
        let again = reaper::remove(&clients, &stack, &at).await.unwrap();
        assert!(
            again.iter().all(|c| c.outcome == Outcome::Absent),
            "{again:?}"
        );
    }

    /// IAM is global, the deployment regional: the same stack in two regions shares
    /// its three roles with a policy a region, and removing one region leaves the other
    /// its roles, its policies (naming its own function) and its function.
    #[tokio::test]
    async fn a_stack_in_two_regions_shares_its_roles_and_removing_one_keeps_the_other() {
        let moto = Moto::start();
        let sdk = moto.sdk_config().await;
        let stack = Stack::new("dev").unwrap();
        let package = package();
        let config = ReaperConfig::default();
        let (us, us_at) = (
            DeployClients::new(&sdk),
            Location::new("aws", "123456789012", "us-east-1").unwrap(),
        );
        let eu_sdk = sdk
            .to_builder()
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        let (eu, eu_at) = (
            DeployClients::new(&eu_sdk),
            Location::new("aws", "123456789012", "eu-west-1").unwrap(),
        );
        reaper::ensure(&us, &stack, &us_at, &package, &config)
            .await
            .unwrap();
        reaper::ensure(&eu, &stack, &eu_at, &package, &config)
            .await
            .unwrap();
        let iam = aws_sdk_iam::Client::new(&sdk);
        let roles = [
            "lease-dev-reaper",
            "lease-dev-reaper-invoke",
            "lease-dev-schedules",
        ];
        let policies = |role: &'static str| {
            let iam = iam.clone();
            async move {
                let listed = iam.list_role_policies().role_name(role).send().await;
                let mut names = listed.unwrap().policy_names().to_vec();
                names.sort();
                names
            }
        };
        for role in roles {
            assert_eq!(
                policies(role).await,
                ["lease-eu-west-1", "lease-us-east-1"],
                "{role}"
            );
        }

        let removed = reaper::remove(&eu, &stack, &eu_at).await.unwrap();
        for role in roles {
            assert!(
                removed
                    .iter()
                    .any(|c| c.name == role && c.kind == "iam role" && c.outcome == Outcome::Kept),
                "{role}: {removed:?}"
            );
            assert_eq!(policies(role).await, ["lease-us-east-1"], "{role}");
        }
        let invoke = iam
            .get_role_policy()
            .role_name("lease-dev-reaper-invoke")
            .policy_name("lease-us-east-1")
            .send()
            .await
            .unwrap();
        let invoke = decode(invoke.policy_document()).to_string();
        assert!(
            invoke.contains("arn:aws:lambda:us-east-1:123456789012:function:lease-dev-reaper"),
            "{invoke}"
        );
        let us_lambda = aws_sdk_lambda::Client::new(&sdk);
        us_lambda
            .get_function()
            .function_name("lease-dev-reaper")
            .send()
            .await
            .unwrap();
        let eu_lambda = aws_sdk_lambda::Client::new(&eu_sdk);
        assert!(
            eu_lambda
                .get_function()
                .function_name("lease-dev-reaper")
                .send()
                .await
                .is_err()
        );

        // The last region out takes the roles with it.
        let removed = reaper::remove(&us, &stack, &us_at).await.unwrap();
        assert!(
            removed.iter().all(|c| c.outcome
                == if c.kind == "log group" {
                    Outcome::Absent
                } else {
                    Outcome::Deleted
                }),
            "{removed:?}"
        );
        for role in roles {
            assert!(
                iam.get_role().role_name(role).send().await.is_err(),
                "{role}"
            );
        }
    }

    #[tokio::test]
    async fn ensure_repairs_drift_and_uploads_a_changed_package() {
        let moto = Moto::start();
        let sdk = moto.sdk_config().await;
        let clients = DeployClients::new(&sdk);
        let stack = Stack::new("ops").unwrap();
        let at = Location::new("aws", "123456789012", "us-east-1").unwrap();
        let package = package();
        let config = ReaperConfig::default();
        reaper::ensure(&clients, &stack, &at, &package, &config)
            .await
            .unwrap();

        // Drift by hand: the reaper's policy narrowed, its schedule disabled.
        let iam = aws_sdk_iam::Client::new(&sdk);
        iam.put_role_policy()
            .role_name("lease-ops-reaper")
            .policy_name("lease-us-east-1")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:DescribeInstances","Resource":"*"}]}"#,
            )
            .send()
            .await
            .unwrap();
        let scheduler = aws_sdk_scheduler::Client::new(&sdk);
        let s = scheduler
            .get_schedule()
            .group_name("lease-ops")
            .name("reaper")
            .send()
            .await
            .unwrap();
        scheduler
            .update_schedule()
            .group_name("lease-ops")
            .name("reaper")
            .schedule_expression(s.schedule_expression().unwrap())
            .set_flexible_time_window(s.flexible_time_window().cloned())
            .set_target(s.target().cloned())
            .state(aws_sdk_scheduler::types::ScheduleState::Disabled)
            .send()
            .await
            .unwrap();
        // A new build: the same zip with another version in its comment.
        let mut bytes = package.bytes().to_vec();
        let at_comment = bytes
            .windows(13)
            .rposition(|w| w == b"lease-reaper ")
            .unwrap();
        let digit = &mut bytes[at_comment + 13];
        *digit = if *digit == b'7' { b'8' } else { b'7' };
        let rebuilt = ReaperPackage::from_zip(bytes).unwrap();
        assert_ne!(rebuilt.code_sha256(), package.code_sha256());

        let repaired = reaper::ensure(&clients, &stack, &at, &rebuilt, &config)
            .await
            .unwrap();
        assert_eq!(
            changes(&repaired),
            [
                ("lease-ops-reaper".to_string(), Outcome::Updated),
                ("lease-ops-reaper-invoke".into(), Outcome::Exists),
                ("lease-ops-schedules".into(), Outcome::Exists),
                ("lease-ops-reaper".into(), Outcome::Updated),
                ("lease-ops".into(), Outcome::Exists),
                ("lease-ops/reaper".into(), Outcome::Updated),
            ]
        );
        let policy = iam
            .get_role_policy()
            .role_name("lease-ops-reaper")
            .policy_name("lease-us-east-1")
            .send()
            .await
            .unwrap();
        assert!(
            decode(policy.policy_document())["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["Sid"] == "EndManagedInstances")
        );
        let s = scheduler
            .get_schedule()
            .group_name("lease-ops")
            .name("reaper")
            .send()
            .await
            .unwrap();
        assert_eq!(s.state().unwrap().as_str(), "ENABLED");
        let f = aws_sdk_lambda::Client::new(&sdk)
            .get_function_configuration()
            .function_name("lease-ops-reaper")
            .send()
            .await
            .unwrap();
        assert_eq!(f.code_sha256(), Some(rebuilt.code_sha256().as_str()));
    }
}
