//! `lease setup` against moto: every resource and policy read back through the SDK
//! (one assertion block per resource family), a second setup compared attribute for
//! attribute with the first, corrections, partial failures and bad input; and `lease
//! doctor` on the stacks setup makes. The backstop reaper is deployed from the package
//! `packaging/build-reaper.sh` makes of the debug `bootstrap`, built once per run.
//! Teardown and routing have their own files; the probe is `lease_tests::stack`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::stack::REAPER_SCHEDULE;
use lease_launcher::stack::reaper::ReaperPackage;
use lease_tests::stack::*;
use serde_json::Value;

#[tokio::test]
async fn setup_creates_every_resource_and_a_second_run_changes_nothing() {
    let w = world().await;
    let deb = w.deb();
    let zip = reaper_zip().to_str().unwrap();
    let first = w
        .setup(&[
            "--pool",
            "gpu",
            "--agent-deb",
            deb.to_str().unwrap(),
            "--reaper-zip",
            zip,
        ])
        .await;
    let first_rows = outcomes(&first);
    for (kind, name, outcome) in &first_rows {
        assert_eq!(outcome, "created", "{kind} {name}");
    }
    for kind in ["lambda function", "schedule group", "schedule"] {
        assert!(
            first_rows.iter().any(|(k, _, _)| k == kind),
            "{kind}: {first_rows:?}"
        );
    }

    assert_queues(&w).await;
    assert_subscriptions(&w).await;
    assert_bucket(&w, &deb).await;
    assert_tables(&w).await;
    assert_agent_role(&w).await;
    let settings_text = assert_settings(&w, &first).await;
    let settings: serde_yaml_ng::Value = serde_yaml_ng::from_str(&settings_text).unwrap();
    assert_reaper(&w, &settings["stacks"][0]).await;

    // Again, with only the reaper's package: everything exists, nothing differs, the
    // file is untouched.
    let before = w.snapshot().await;
    let reaper_before = w.reaper_snapshot().await;
    let second = w
        .lease()
        .args(["setup", "-o", "json", "--reaper-zip", zip])
        .output()
        .await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("Nothing changed"), "{stderr}");
    let second_rows = outcomes(&json(&String::from_utf8_lossy(&second.stdout)));
    assert_eq!(second_rows.len(), first_rows.len());
    for (kind, name, outcome) in second_rows {
        assert_eq!(outcome, "exists", "{kind} {name}");
    }
    assert_eq!(w.reaper_snapshot().await, reaper_before);
    let after = w.snapshot().await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert_eq!(&after[k], v, "{k} changed");
    }
    assert_eq!(
        std::fs::read_to_string(w.settings_path()).unwrap(),
        settings_text
    );

    // Without the package: the deployed reaper is left as it was, and stays recorded.
    let third = w.setup(&[]).await;
    let reaper: Vec<_> = third["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "reaper")
        .collect();
    assert_eq!(reaper.len(), 1, "{third}");
    assert_eq!(reaper[0]["outcome"], "skipped");
    assert!(
        reaper[0]["note"]
            .as_str()
            .unwrap()
            .contains("left as it was"),
        "{third}"
    );
    assert_eq!(w.reaper_snapshot().await, reaper_before);
    assert_eq!(
        std::fs::read_to_string(w.settings_path()).unwrap(),
        settings_text
    );
}

async fn assert_queues(w: &World) {
    // Pool queues: redrive to their own dead letters, long polling, a visibility
    // timeout the agent extends, and a policy that admits the command topic only.
    let commands = format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-commands");
    let bus = format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-bus");
    for pool in ["default", "gpu"] {
        let a = w.queue_attributes(&format!("lease-main-pool-{pool}")).await;
        let redrive = json(&a["RedrivePolicy"]);
        assert_eq!(
            redrive["deadLetterTargetArn"],
            format!("arn:aws:sqs:us-east-1:{ACCOUNT}:lease-main-dlq-{pool}")
        );
        assert_eq!(
            redrive["maxReceiveCount"].to_string().trim_matches('"'),
            "5"
        );
        assert_eq!(a["VisibilityTimeout"], "300");
        assert_eq!(a["ReceiveMessageWaitTimeSeconds"], "20");
        assert_eq!(a["MessageRetentionPeriod"], "1209600");
        let policy = json(&a["Policy"]);
        let st = &policy["Statement"][0];
        assert_eq!(st["Effect"], "Allow");
        assert_eq!(st["Principal"]["Service"], "sns.amazonaws.com");
        assert_eq!(st["Action"], "sqs:SendMessage");
        assert_eq!(st["Resource"], a["QueueArn"].as_str());
        assert_eq!(
            st["Condition"]["ArnEquals"]["aws:SourceArn"],
            commands.as_str()
        );
        let dlq = w.queue_attributes(&format!("lease-main-dlq-{pool}")).await;
        assert_eq!(dlq["MessageRetentionPeriod"], "1209600");
        assert!(!dlq.contains_key("RedrivePolicy"));
    }
    let events = w.queue_attributes("lease-main-events").await;
    assert_eq!(
        json(&events["Policy"])["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
        bus.as_str()
    );
}

async fn assert_subscriptions(w: &World) {
    // Subscriptions: raw delivery, and a filter on the `pool` attribute per pool.
    let subs = w.subscriptions("lease-main-commands").await;
    assert_eq!(subs.len(), 2, "{subs:?}");
    for pool in ["default", "gpu"] {
        let endpoint = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:lease-main-pool-{pool}");
        let a = &subs[&endpoint];
        assert_eq!(a["Protocol"], "sqs");
        assert_eq!(a["RawMessageDelivery"], "true");
        assert_eq!(
            json(&a["FilterPolicy"]),
            serde_json::json!({ "pool": [pool] })
        );
    }
    let subs = w.subscriptions("lease-main-bus").await;
    let a = &subs[&format!("arn:aws:sqs:us-east-1:{ACCOUNT}:lease-main-events")];
    assert_eq!(a["RawMessageDelivery"], "true");
    assert!(!a.contains_key("FilterPolicy"), "{a:?}");
}

async fn assert_bucket(w: &World, deb: &Path) {
    // The bucket: private, SSE-S3, owner-enforced, tagged, with the package in it.
    let pab =
        w.s3.get_public_access_block()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    let c = pab.public_access_block_configuration().unwrap();
    assert_eq!(
        [
            c.block_public_acls(),
            c.ignore_public_acls(),
            c.block_public_policy(),
            c.restrict_public_buckets()
        ],
        [Some(true); 4]
    );
    let enc =
        w.s3.get_bucket_encryption()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    let rule = &enc.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm()
            .as_str(),
        "AES256"
    );
    let own =
        w.s3.get_bucket_ownership_controls()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    assert_eq!(
        own.ownership_controls().unwrap().rules()[0]
            .object_ownership()
            .as_str(),
        "BucketOwnerEnforced"
    );
    // Incomplete multipart uploads (an agent killed mid-upload) are aborted, not billed
    // for ever.
    let lifecycle = w.abort_rule().await.expect("the abort-multipart rule");
    assert_eq!(lifecycle.status().as_str(), "Enabled");
    assert_eq!(
        lifecycle
            .abort_incomplete_multipart_upload()
            .unwrap()
            .days_after_initiation(),
        Some(2)
    );
    assert!(
        lifecycle
            .filter()
            .is_none_or(|f| f.prefix().unwrap_or_default().is_empty()),
        "{lifecycle:?}"
    );
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, "amd64");
    let obj =
        w.s3.get_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .unwrap();
    let body = obj.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], &std::fs::read(deb).unwrap()[..]);
}

async fn assert_tables(w: &World) {
    // Tables: the record contract's keys, on-demand, TTL on `expires`, tagged.
    for (table, key) in [
        ("lease-main-nodes", lease_common::records::NODE_ID),
        ("lease-main-tasks", lease_common::records::TASK_ID),
    ] {
        let d =
            w.db.describe_table()
                .table_name(table)
                .send()
                .await
                .unwrap();
        let d = d.table().unwrap();
        assert_eq!(d.key_schema().len(), 1);
        assert_eq!(d.key_schema()[0].attribute_name(), key);
        assert_eq!(d.key_schema()[0].key_type().as_str(), "HASH");
        assert_eq!(d.attribute_definitions()[0].attribute_type().as_str(), "S");
        assert_eq!(
            d.billing_mode_summary()
                .unwrap()
                .billing_mode()
                .unwrap()
                .as_str(),
            "PAY_PER_REQUEST"
        );
        let ttl =
            w.db.describe_time_to_live()
                .table_name(table)
                .send()
                .await
                .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        assert_eq!(ttl.time_to_live_status().unwrap().as_str(), "ENABLED");
        assert_eq!(ttl.attribute_name(), Some(lease_common::records::EXPIRES));
        let tags =
            w.db.list_tags_of_resource()
                .resource_arn(d.table_arn().unwrap())
                .send()
                .await
                .unwrap();
        assert!(
            tags.tags()
                .iter()
                .any(|t| t.key() == "lease:stack" && t.value() == "main")
        );
    }
}

async fn assert_agent_role(w: &World) {
    // The role: EC2 only, the agent policy `lease iam-policy agent` prints, in the profile.
    let role = w
        .iam
        .get_role()
        .role_name("lease-main-agent")
        .send()
        .await
        .unwrap();
    let trust = document(role.role().unwrap().assume_role_policy_document().unwrap());
    assert_eq!(
        trust["Statement"][0]["Principal"]["Service"],
        "ec2.amazonaws.com"
    );
    assert_eq!(trust["Statement"][0]["Action"], "sts:AssumeRole");
    assert_eq!(trust["Statement"].as_array().unwrap().len(), 1);
    let inline = w
        .iam
        .get_role_policy()
        .role_name("lease-main-agent")
        .policy_name("lease-agent-us-east-1")
        .send()
        .await
        .unwrap();
    let printed = json(&w.lease().args(["iam-policy", "agent"]).ok().await);
    assert_eq!(document(inline.policy_document()), printed);
    assert_eq!(
        w.instance_profile_roles("lease-main-agent").await,
        ["lease-main-agent"]
    );
}

/// Returns the settings file's text.
async fn assert_settings(w: &World, first: &Value) -> String {
    let commands = format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-commands");
    let bus = format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-bus");
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, "amd64");
    // The settings file: one section, URLs as SQS reports them.
    let settings_text = std::fs::read_to_string(w.settings_path()).unwrap();
    let settings: serde_yaml_ng::Value = serde_yaml_ng::from_str(&settings_text).unwrap();
    assert_eq!(settings["default-stack"].as_str(), Some("main"));
    let section = &settings["stacks"][0];
    assert_eq!(section["stack"].as_str(), Some("main"));
    assert_eq!(section["region"].as_str(), Some("us-east-1"));
    assert_eq!(section["account"].as_str(), Some(ACCOUNT));
    assert_eq!(section["bucket"].as_str(), Some(BUCKET));
    assert_eq!(
        section["command-topic-arn"].as_str(),
        Some(commands.as_str())
    );
    assert_eq!(section["bus-topic-arn"].as_str(), Some(bus.as_str()));
    assert_eq!(
        section["pools"]["gpu"]["queue-url"].as_str(),
        w.queue_url("lease-main-pool-gpu").await.as_deref()
    );
    assert_eq!(
        section["pools"]["default"]["dead-letter-queue-url"].as_str(),
        w.queue_url("lease-main-dlq-default").await.as_deref()
    );
    assert_eq!(
        section["events-queue-url"].as_str(),
        w.queue_url("lease-main-events").await.as_deref()
    );
    assert_eq!(section["tasks-table"].as_str(), Some("lease-main-tasks"));
    assert_eq!(
        section["instance-profile"].as_str(),
        Some("lease-main-agent")
    );
    assert_eq!(section["agent-packages"][0].as_str(), Some(key.as_str()));
    assert_eq!(first["outputs"]["bucket"], BUCKET);
    settings_text
}

async fn assert_reaper(w: &World, section: &serde_yaml_ng::Value) {
    // The reaper: the package's code and architecture, run by its own role, invoked
    // every five minutes by the schedule through the invoke role; recorded.
    let package = ReaperPackage::read(reaper_zip()).unwrap();
    let f = w
        .lambda
        .get_function_configuration()
        .function_name(REAPER)
        .send()
        .await
        .unwrap();
    assert_eq!(f.runtime().unwrap().as_str(), "provided.al2023");
    assert_eq!(f.code_sha256(), Some(package.code_sha256().as_str()));
    assert_eq!(
        f.architectures()[0].as_str(),
        package.architecture().as_str()
    );
    let exec = w.iam.get_role().role_name(REAPER).send().await.unwrap();
    assert_eq!(f.role(), exec.role().map(|r| r.arn()));
    let sc = w
        .scheduler
        .get_schedule()
        .group_name("lease-main")
        .name(REAPER_SCHEDULE)
        .send()
        .await
        .unwrap();
    assert_eq!(sc.schedule_expression(), Some("rate(5 minutes)"));
    let target = sc.target().unwrap();
    assert_eq!(Some(target.arn()), f.function_arn());
    let invoke = w
        .iam
        .get_role()
        .role_name("lease-main-reaper-invoke")
        .send()
        .await
        .unwrap();
    assert_eq!(target.role_arn(), invoke.role().unwrap().arn());
    w.iam
        .get_role()
        .role_name("lease-main-schedules")
        .send()
        .await
        .unwrap();
    assert_eq!(section["reaper-function-arn"].as_str(), f.function_arn());
}

#[tokio::test]
async fn setup_corrects_what_differs_and_says_updated() {
    let w = world().await;
    // No reaper package given or built: the reaper alone is skipped, saying how to
    // build it, and nothing of it is made.
    let first = w.setup(&[]).await;
    let skipped: Vec<&Value> = first["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "skipped" && r["kind"] == "reaper")
        .collect();
    assert_eq!(skipped.len(), 1, "{first}");
    let note = skipped[0]["note"].as_str().unwrap();
    assert!(
        note.contains("packaging/build-reaper.sh") && note.contains("no backstop"),
        "{note}"
    );
    assert_eq!(w.reaper_leftovers().await, Vec::<String>::new());
    let settings = std::fs::read_to_string(w.settings_path()).unwrap();
    assert!(!settings.contains("reaper-function-arn"), "{settings}");
    let url = w.queue_url("lease-main-pool-default").await.unwrap();
    w.sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap();
    let report = w.setup(&[]).await;
    let changed: Vec<_> = outcomes(&report)
        .into_iter()
        .filter(|(_, _, o)| o != "exists" && o != "skipped")
        .collect();
    assert_eq!(
        changed,
        [(
            "sqs queue".to_string(),
            "lease-main-pool-default".to_string(),
            "updated".to_string()
        )]
    );
    assert_eq!(
        w.queue_attributes("lease-main-pool-default").await["VisibilityTimeout"],
        "300"
    );
}

/// The lifecycle rule is put back when removed, and the stack's Claude auth is
/// recorded in the settings, granted on the agents' role, kept by a later setup that
/// does not name it, and what `lease iam-policy agent` prints.
#[tokio::test]
async fn setup_restores_the_lifecycle_rule_and_grants_the_claude_auth() {
    let w = world().await;
    w.setup(&["--claude-auth", "bedrock"]).await;
    let inline = || async {
        document(
            w.iam
                .get_role_policy()
                .role_name("lease-main-agent")
                .policy_name("lease-agent-us-east-1")
                .send()
                .await
                .unwrap()
                .policy_document(),
        )
    };
    let policy = inline().await;
    assert!(
        policy.to_string().contains("bedrock:InvokeModel"),
        "{policy}"
    );
    let settings = std::fs::read_to_string(w.settings_path()).unwrap();
    assert!(settings.contains("claude-auth: bedrock"), "{settings}");
    let printed = json(&w.lease().args(["iam-policy", "agent"]).ok().await);
    assert_eq!(policy, printed);

    w.s3.delete_bucket_lifecycle()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(w.abort_rule().await.is_none());
    let report = w.setup(&[]).await;
    assert!(
        outcomes(&report).contains(&("s3 bucket".into(), BUCKET.into(), "updated".into())),
        "{report}"
    );
    assert!(w.abort_rule().await.is_some());
    // Not named again: still bedrock.
    assert_eq!(inline().await, policy);

    w.setup(&["--claude-auth", "api-key"]).await;
    let policy = inline().await.to_string();
    assert!(!policy.contains("bedrock:"), "{policy}");
    assert!(
        policy.contains(":parameter/lease/main/anthropic-api-key"),
        "{policy}"
    );
    let err = w
        .lease()
        .args(["setup", "--claude-auth", "openai"])
        .output()
        .await;
    assert_eq!(err.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("'openai'"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

/// A stack that could lose instances does not report success: with no reaper package
/// given, found or buildable (the test runs outside a checkout's root), setup sets up
/// everything else, records it, and exits 4 naming the missing backstop; with
/// `--no-backstop` the same stack is accepted.
#[tokio::test]
async fn a_stack_without_a_backstop_is_not_reported_as_set_up() {
    let w = world().await;
    let (code, err) = w.lease().args(["setup"]).fails().await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no backstop")
            && err.contains("--reaper-zip")
            && err.contains("--no-backstop"),
        "{err}"
    );
    assert!(!err.contains("is set up"), "{err}");
    // Everything else exists, so a second run only adds the reaper.
    let topics = w.sns.list_topics().send().await.unwrap();
    assert_eq!(topics.topics().len(), 2, "{topics:?}");
    let settings = std::fs::read_to_string(w.settings_path()).unwrap();
    assert!(!settings.contains("reaper-function-arn"), "{settings}");
    let out = w.lease().args(["setup", "--no-backstop"]).output().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backstop reaper (--no-backstop)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn bad_input_is_named_and_creates_nothing() {
    let w = world().await;
    let (code, err) = w
        .lease()
        .args(["setup", "--stack", "My-Stack"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'My-Stack'"), "{err}");
    let (code, err) = w.lease().args(["setup", "--pool", "GPU"]).fails().await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'GPU'"), "{err}");
    let (code, err) = w
        .lease()
        .args(["setup", "--agent-deb", "/nonexistent/leased.deb"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/leased.deb"), "{err}");
    let (code, err) = w
        .lease()
        .args(["setup", "--reaper-zip", "/nonexistent/lease-reaper.zip"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/lease-reaper.zip"), "{err}");
    let junk = w.dir.path().join("reaper.zip");
    std::fs::write(&junk, b"not a zip").unwrap();
    let (code, err) = w
        .lease()
        .args(["setup", "--reaper-zip", junk.to_str().unwrap()])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reaper.zip") && err.contains("build-reaper.sh"),
        "{err}"
    );
    assert_eq!(w.reaper_leftovers().await, Vec::<String>::new());
    let topics = w.sns.list_topics().send().await.unwrap();
    assert!(topics.topics().is_empty());
    assert!(!w.settings_path().exists());
}

#[tokio::test]
async fn setup_resumes_after_a_partial_failure_creating_only_what_is_missing() {
    let w = world().await;
    w.setup(&["--pool", "gpu"]).await;
    // As if a first run had stopped halfway: some resources never made it.
    let dlq = w.queue_url("lease-main-dlq-gpu").await.unwrap();
    w.sqs.delete_queue().queue_url(dlq).send().await.unwrap();
    w.iam
        .delete_role_policy()
        .role_name("lease-main-agent")
        .policy_name("lease-agent-us-east-1")
        .send()
        .await
        .unwrap();
    w.db.delete_table()
        .table_name("lease-main-tasks")
        .send()
        .await
        .unwrap();

    let report = w.setup(&[]).await;
    let changed: Vec<(String, String)> = outcomes(&report)
        .into_iter()
        .filter(|(_, _, o)| o != "exists" && o != "skipped")
        .map(|(_, name, o)| (name, o))
        .collect();
    assert_eq!(
        changed,
        [
            ("lease-main-dlq-gpu".to_string(), "created".to_string()),
            ("lease-main-tasks".to_string(), "created".to_string()),
            (
                "lease-main-agent/lease-agent-us-east-1".to_string(),
                "created".to_string()
            ),
        ]
    );
    assert!(w.queue_url("lease-main-dlq-gpu").await.is_some());
    let ttl =
        w.db.describe_time_to_live()
            .table_name("lease-main-tasks")
            .send()
            .await
            .unwrap();
    assert_eq!(
        ttl.time_to_live_description().unwrap().attribute_name(),
        Some("expires")
    );
    w.iam
        .get_role_policy()
        .role_name("lease-main-agent")
        .policy_name("lease-agent-us-east-1")
        .send()
        .await
        .unwrap();
}

fn statuses(checks: &BTreeMap<String, Value>, status: &str) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, c)| c["status"] == status)
        .map(|(n, _)| n.clone())
        .collect()
}

/// `lease doctor` on a healthy stack passes; what the emulator cannot check is
/// skipped, not passed; a drifted stack fails on exactly what drifted, with the fix,
/// and passes again after `lease setup`.
#[tokio::test]
async fn doctor_passes_a_healthy_stack_and_names_what_drifted() {
    let w = world().await;
    let deb = w.deb();
    w.setup(&[
        "--agent-deb",
        deb.to_str().unwrap(),
        "--reaper-zip",
        reaper_zip().to_str().unwrap(),
    ])
    .await;
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(0), "{checks:#?}");
    assert_eq!(statuses(&checks, "fail"), Vec::<String>::new());
    for name in [
        "credentials",
        "region",
        "default VPC",
        "stack main",
        "sqs queue lease-main-pool-default",
        "sqs queue lease-main-dlq-default",
        "sqs queue lease-main-events",
        "iam role lease-main-agent",
        "agent package amd64",
        "reaper function lease-main-reaper",
        "reaper schedule lease-main/reaper",
    ] {
        assert_eq!(checks[name]["status"], "ok", "{name}: {checks:#?}");
    }
    // No arm64 package: a warning with the fix, not a failure.
    assert_eq!(checks["agent package arm64"]["status"], "warn");
    assert!(
        checks["agent package arm64"]["fix"]
            .as_str()
            .unwrap()
            .contains("build-deb.sh")
    );
    // What the emulator cannot answer is skipped, never ok.
    for name in [
        "your permissions",
        "the agents' role's permissions",
        "reaper invocations",
    ] {
        assert_eq!(checks[name]["status"], "skipped", "{name}: {checks:#?}");
    }

    // Drift: a queue's visibility timeout and the bucket's lifecycle rule.
    let url = w.queue_url("lease-main-pool-default").await.unwrap();
    w.sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap();
    w.s3.delete_bucket_lifecycle()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_eq!(
        statuses(&checks, "fail"),
        [
            format!("s3 bucket {BUCKET}"),
            "sqs queue lease-main-pool-default".to_string()
        ]
    );
    let queue = &checks["sqs queue lease-main-pool-default"];
    assert!(
        queue["detail"]
            .as_str()
            .unwrap()
            .contains("VisibilityTimeout"),
        "{queue}"
    );
    assert!(
        queue["fix"].as_str().unwrap().contains("lease setup"),
        "{queue}"
    );

    w.setup(&[]).await;
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(0), "{checks:#?}");

    // The reaper's last day, as Lambda's metrics tell it: runs without errors pass,
    // one failed run fails with where to read why.
    w.lambda_metric("Invocations", 12.0).await;
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(0), "{checks:#?}");
    let runs = &checks["reaper invocations"];
    assert_eq!(runs["status"], "ok", "{runs}");
    assert!(runs["detail"].as_str().unwrap().contains("12"), "{runs}");
    w.lambda_metric("Errors", 1.0).await;
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_eq!(statuses(&checks, "fail"), ["reaper invocations"]);
    let runs = &checks["reaper invocations"];
    assert!(
        runs["detail"].as_str().unwrap().contains("1 of 12"),
        "{runs}"
    );
    assert!(
        runs["fix"]
            .as_str()
            .unwrap()
            .contains("/aws/lambda/lease-main-reaper"),
        "{runs}"
    );
}

/// The vCPU quotas of the types asked about: the emulator has no EC2 quotas, so each
/// market's check is skipped, saying why, never passed; a type the region does not
/// offer fails.
#[tokio::test]
async fn doctor_reads_quotas_for_the_types_asked_about() {
    let w = world().await;
    w.setup(&["--reaper-zip", reaper_zip().to_str().unwrap()])
        .await;
    let (_, checks) = w.doctor().await;
    assert_eq!(checks["vCPU quotas"]["status"], "skipped", "{checks:#?}");
    let (code, checks) = w.doctor_with(&["--type", "t3.micro"]).await;
    for name in ["vCPU quota t3.micro spot", "vCPU quota t3.micro on-demand"] {
        let c = &checks[name];
        assert_eq!(c["status"], "skipped", "{name}: {checks:#?}");
        assert!(c["detail"].as_str().unwrap().contains("emulator"), "{c}");
    }
    assert_eq!(statuses(&checks, "fail"), Vec::<String>::new(), "{code:?}");
    let (code, checks) = w.doctor_with(&["--type", "zz9.huge"]).await;
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_eq!(statuses(&checks, "fail"), ["vCPU quotas for zz9.huge"]);
}

/// With no stack in the region, doctor fails once, on the stack, saying to set it up.
#[tokio::test]
async fn doctor_without_a_stack_says_to_set_it_up() {
    let w = world().await;
    let (code, checks) = w.doctor().await;
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_eq!(statuses(&checks, "fail"), ["stack main"]);
    assert_eq!(
        checks["stack main"]["fix"],
        "run `lease setup --stack main`"
    );
    assert_eq!(checks["credentials"]["status"], "ok");
}
