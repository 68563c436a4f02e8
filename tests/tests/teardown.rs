//! `lease teardown` against moto: it refuses while an instance lives, then removes
//! exactly what setup made (checked by listing each service afterwards), and a
//! teardown in one region leaves the same stack in another alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lease_tests::stack::*;

#[tokio::test]
async fn teardown_refuses_while_an_instance_lives_then_removes_exactly_the_stack() {
    let w = world().await;
    w.setup(&[
        "--pool",
        "gpu",
        "--reaper-zip",
        reaper_zip().to_str().unwrap(),
    ])
    .await;
    w.s3.put_object()
        .bucket(BUCKET)
        .key("logs/t1.log")
        .body(b"hello".to_vec().into())
        .send()
        .await
        .unwrap();
    // Not the stack's: same prefix but no tag, and an unrelated queue.
    let stranger = w
        .sqs
        .create_queue()
        .queue_name("lease-main-pool-stranger")
        .send()
        .await
        .unwrap();
    w.sqs
        .create_queue()
        .queue_name("unrelated")
        .send()
        .await
        .unwrap();
    // The reaper has run (its log group exists); so has somebody else's function.
    w.lambda_log_group(REAPER).await;
    w.lambda_log_group("someone-elses-function").await;
    let instance = w
        .moto
        .run_instance(&[("lease:managed", "true"), ("lease:stack", "main")])
        .await;

    let (code, err) = w.lease().arg("teardown").fails().await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let (code, err) = w.lease().args(["teardown", "--yes"]).fails().await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("1 managed instance") && err.contains(&instance),
        "{err}"
    );
    // Refused means untouched.
    assert!(w.queue_url("lease-main-pool-gpu").await.is_some());
    w.s3.head_bucket().bucket(BUCKET).send().await.unwrap();
    w.lambda
        .get_function()
        .function_name(REAPER)
        .send()
        .await
        .unwrap();

    let report = json(
        &w.lease()
            .args(["teardown", "--yes", "--force", "-o", "json"])
            .ok()
            .await,
    );
    let kept: Vec<_> = outcomes(&report)
        .into_iter()
        .filter(|(_, _, o)| o == "kept")
        .collect();
    assert_eq!(
        kept,
        [(
            "sqs queue".to_string(),
            "lease-main-pool-stranger".to_string(),
            "kept".to_string()
        )]
    );
    // The reaper went first, all of it deleted.
    let rows = outcomes(&report);
    let reaper_rows: Vec<(String, String)> = rows[..8]
        .iter()
        .map(|(k, n, o)| (format!("{k} {n}"), o.clone()))
        .collect();
    assert_eq!(
        reaper_rows,
        [
            ("schedule lease-main/reaper", "deleted"),
            ("schedule group lease-main", "deleted"),
            ("lambda function lease-main-reaper", "deleted"),
            ("log group /aws/lambda/lease-main-reaper", "deleted"),
            ("iam role lease-main-schedules", "deleted"),
            ("iam role lease-main-reaper-invoke", "deleted"),
            ("iam role lease-main-reaper", "deleted"),
            (
                "iam role policy lease-main-agent/lease-agent-us-east-1",
                "deleted"
            ),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );

    // Nothing of the stack is left, in any service.
    let topics = w.sns.list_topics().send().await.unwrap();
    assert!(topics.topics().is_empty(), "{:?}", topics.topics());
    let subs = w.sns.list_subscriptions().send().await.unwrap();
    assert!(
        subs.subscriptions().is_empty(),
        "{:?}",
        subs.subscriptions()
    );
    let queues = w.sqs.list_queues().send().await.unwrap();
    let mut left: Vec<&str> = queues
        .queue_urls()
        .iter()
        .map(|u| u.rsplit('/').next().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["lease-main-pool-stranger", "unrelated"]);
    assert_eq!(
        stranger.queue_url().map(|u| u.ends_with("stranger")),
        Some(true)
    );
    let buckets = w.s3.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{:?}", buckets.buckets());
    let tables = w.db.list_tables().send().await.unwrap();
    assert!(
        tables.table_names().is_empty(),
        "{:?}",
        tables.table_names()
    );
    let roles = w.iam.list_roles().send().await.unwrap();
    assert!(
        roles
            .roles()
            .iter()
            .all(|r| !r.role_name().starts_with("lease-"))
    );
    let profiles = w.iam.list_instance_profiles().send().await.unwrap();
    assert!(profiles.instance_profiles().is_empty());
    assert_eq!(w.reaper_leftovers().await, Vec::<String>::new());
    assert_eq!(
        w.log_group_names().await,
        ["/aws/lambda/someone-elses-function"]
    );
    let settings: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(w.settings_path()).unwrap()).unwrap();
    assert_eq!(settings["stacks"].as_sequence().map(Vec::len), Some(0));
    assert!(settings.get("default-stack").is_none());

    // Again: everything is already gone, and it says so.
    let again = json(
        &w.lease()
            .args(["teardown", "--yes", "--force", "-o", "json"])
            .ok()
            .await,
    );
    for (kind, name, outcome) in outcomes(&again) {
        let expected = if name.ends_with("stranger") {
            "kept"
        } else {
            "absent"
        };
        assert_eq!(outcome, expected, "{kind} {name}");
    }
}

#[tokio::test]
async fn two_stacks_in_two_regions_and_teardown_of_one_leaves_the_other() {
    let w = world().await;
    w.setup(&[]).await;
    let before = w.snapshot_main_default().await;
    let dev = w.setup(&["--stack", "dev", "--region", "eu-west-1"]).await;
    assert_eq!(dev["outputs"]["bucket"], "lease-dev-123456789012-eu-west-1");
    assert_eq!(dev["outputs"]["region"], "eu-west-1");
    let eu = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&w.moto.sdk_config().await)
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .force_path_style(true)
            .build(),
    );
    let location = eu
        .get_bucket_location()
        .bucket("lease-dev-123456789012-eu-west-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        location.location_constraint().map(|l| l.as_str()),
        Some("eu-west-1")
    );

    // Commands in us-east-1 keep using the default stack, main.
    let settings: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(w.settings_path()).unwrap()).unwrap();
    assert_eq!(settings["default-stack"].as_str(), Some("main"));
    assert_eq!(settings["stacks"].as_sequence().map(Vec::len), Some(2));

    // Stack main in a second region shares the (global) role, with a policy per region;
    // tearing that region down leaves the role to us-east-1.
    w.setup(&["--region", "eu-west-1"]).await;
    let policies = w
        .iam
        .list_role_policies()
        .role_name("lease-main-agent")
        .send()
        .await
        .unwrap();
    let mut names = policies.policy_names().to_vec();
    names.sort();
    assert_eq!(names, ["lease-agent-eu-west-1", "lease-agent-us-east-1"]);
    let report = json(
        &w.lease()
            .args(["teardown", "--region", "eu-west-1", "--yes", "-o", "json"])
            .ok()
            .await,
    );
    // The agent's role only: the reaper's roles are the reaper's deployment's own.
    let role_rows: Vec<_> = outcomes(&report)
        .into_iter()
        .filter(|(kind, name, _)| {
            (kind.starts_with("iam") || kind == "instance profile")
                && name.starts_with("lease-main-agent")
        })
        .map(|(kind, _, o)| (kind, o))
        .collect();
    assert_eq!(
        role_rows,
        [
            ("iam role policy".to_string(), "deleted".to_string()),
            ("instance profile".to_string(), "kept".to_string()),
            ("iam role".to_string(), "kept".to_string()),
        ]
    );
    let policies = w
        .iam
        .list_role_policies()
        .role_name("lease-main-agent")
        .send()
        .await
        .unwrap();
    assert_eq!(policies.policy_names(), ["lease-agent-us-east-1"]);

    w.lease()
        .args([
            "teardown",
            "--stack",
            "dev",
            "--region",
            "eu-west-1",
            "--yes",
        ])
        .ok()
        .await;
    let eu_sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&w.moto.sdk_config().await)
            .region(aws_sdk_sqs::config::Region::new("eu-west-1"))
            .build(),
    );
    let left = eu_sqs.list_queues().send().await.unwrap();
    assert!(left.queue_urls().is_empty(), "{:?}", left.queue_urls());
    assert!(
        eu.head_bucket()
            .bucket("lease-dev-123456789012-eu-west-1")
            .send()
            .await
            .is_err()
    );
    assert_eq!(w.snapshot_main_default().await, before);
    let settings: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(w.settings_path()).unwrap()).unwrap();
    let stacks = settings["stacks"].as_sequence().unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0]["stack"].as_str(), Some("main"));
}
