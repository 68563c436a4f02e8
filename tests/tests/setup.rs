//! `lease setup` and `lease teardown` against moto: every resource and policy read
//! back through the SDK, a second setup compared attribute for attribute with the
//! first, routing by pool checked by delivering messages, and teardown checked by
//! listing each service afterwards. The backstop reaper is deployed from the package
//! `packaging/build-reaper.sh` makes of the debug `bootstrap`, built once per run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::messages::{Task, TaskMessage, TaskSpec};
use lease_common::stack::REAPER_SCHEDULE;
use lease_launcher::reaper_deploy::ReaperPackage;
use lease_tests::{Cmd, Moto};
use serde_json::Value;

const ACCOUNT: &str = "123456789012";
const BUCKET: &str = "lease-main-123456789012-us-east-1";
const REAPER: &str = "lease-main-reaper";
const REAPER_ROLES: [&str; 3] = [
    "lease-main-reaper",
    "lease-main-reaper-invoke",
    "lease-main-schedules",
];

/// The reaper's package, made once for the whole run by the script people use, from
/// the debug `bootstrap` that `cargo build --workspace --bins` left beside `lease`.
fn reaper_zip() -> &'static PathBuf {
    static ZIP: OnceLock<PathBuf> = OnceLock::new();
    ZIP.get_or_init(|| {
        let debug = lease_tests::bin_path("bootstrap")
            .parent()
            .unwrap()
            .to_path_buf();
        let out = debug.join("setup-tests-lambda");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let result = std::process::Command::new(root.join("packaging/build-reaper.sh"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", debug.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out.join("lease-reaper.zip")
    })
}

struct World {
    moto: Moto,
    dir: tempfile::TempDir,
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    db: aws_sdk_dynamodb::Client,
    iam: aws_sdk_iam::Client,
    lambda: aws_sdk_lambda::Client,
    scheduler: aws_sdk_scheduler::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
}

async fn world() -> World {
    let moto = Moto::start();
    let config = moto.sdk_config().await;
    World {
        sns: aws_sdk_sns::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
        s3: lease_common::aws::s3_client(&config),
        db: aws_sdk_dynamodb::Client::new(&config),
        iam: aws_sdk_iam::Client::new(&config),
        lambda: aws_sdk_lambda::Client::new(&config),
        scheduler: aws_sdk_scheduler::Client::new(&config),
        logs: aws_sdk_cloudwatchlogs::Client::new(&config),
        dir: tempfile::tempdir().unwrap(),
        moto,
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

impl World {
    fn settings_path(&self) -> PathBuf {
        self.dir.path().join("lease").join("config.yaml")
    }

    fn lease(&self) -> Cmd {
        Cmd::new("lease", &self.moto.env()).env("LEASE_CONFIG", self.settings_path())
    }

    /// A stand-in agent package, named as packaging/build-deb.sh names it.
    fn deb(&self) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("leased_{}_amd64.deb", lease_common::VERSION));
        std::fs::write(&path, b"!<arch>\nnot really a package\n").unwrap();
        path
    }

    /// Setup, accepting a stack without the reaper unless `extra` deploys one (the
    /// reaper's own tests pass `--reaper-zip`).
    async fn setup(&self, extra: &[&str]) -> Value {
        let no_backstop = (!extra.contains(&"--reaper-zip")).then_some("--no-backstop");
        json(
            &self
                .lease()
                .args(["setup", "-o", "json"])
                .args(extra)
                .args(no_backstop)
                .ok()
                .await,
        )
    }

    /// The bucket's lifecycle rule that aborts incomplete multipart uploads, read
    /// through S3.
    async fn abort_rule(&self) -> Option<aws_sdk_s3::types::LifecycleRule> {
        let out = self
            .s3
            .get_bucket_lifecycle_configuration()
            .bucket(BUCKET)
            .send()
            .await
            .ok()?;
        out.rules()
            .iter()
            .find(|r| r.id() == Some("lease-abort-incomplete-multipart-uploads"))
            .cloned()
    }

    async fn queue_url(&self, name: &str) -> Option<String> {
        self.sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .ok()
            .and_then(|o| o.queue_url().map(str::to_string))
    }

    async fn queue_attributes(&self, name: &str) -> BTreeMap<String, String> {
        let url = self.queue_url(name).await.expect(name);
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        out.attributes()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect()
    }

    /// Subscription attributes of every subscription of a topic, by endpoint.
    async fn subscriptions(&self, topic: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let arn = format!("arn:aws:sns:us-east-1:{ACCOUNT}:{topic}");
        let subs = self
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(&arn)
            .send()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for s in subs.subscriptions() {
            let attrs = self
                .sns
                .get_subscription_attributes()
                .subscription_arn(s.subscription_arn().unwrap())
                .send()
                .await
                .unwrap();
            out.insert(
                s.endpoint().unwrap().to_string(),
                attrs
                    .attributes()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        }
        out
    }

    /// Everything setup configures, read through the SDK, as comparable text. Counters
    /// and timestamps that change on their own are left out.
    async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::new();
        for q in [
            "lease-main-pool-default",
            "lease-main-dlq-default",
            "lease-main-pool-gpu",
            "lease-main-dlq-gpu",
            "lease-main-events",
        ] {
            for (k, v) in self.queue_attributes(q).await {
                if !k.starts_with("Approximate") && !k.ends_with("Timestamp") {
                    s.insert(format!("sqs {q} {k}"), v);
                }
            }
            let url = self.queue_url(q).await.unwrap();
            let tags = self
                .sqs
                .list_queue_tags()
                .queue_url(url)
                .send()
                .await
                .unwrap();
            s.insert(format!("sqs {q} tags"), format!("{:?}", tags.tags()));
        }
        for t in ["lease-main-commands", "lease-main-bus"] {
            for (endpoint, attrs) in self.subscriptions(t).await {
                for (k, v) in attrs {
                    s.insert(format!("sns {t} -> {endpoint} {k}"), v);
                }
            }
        }
        let enc = self
            .s3
            .get_bucket_encryption()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.insert(
            "s3 encryption".into(),
            format!("{:?}", enc.server_side_encryption_configuration()),
        );
        let pab = self
            .s3
            .get_public_access_block()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.insert(
            "s3 public access".into(),
            format!("{:?}", pab.public_access_block_configuration()),
        );
        let own = self
            .s3
            .get_bucket_ownership_controls()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.insert(
            "s3 ownership".into(),
            format!("{:?}", own.ownership_controls()),
        );
        let tags = self
            .s3
            .get_bucket_tagging()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.insert("s3 tags".into(), format!("{:?}", tags.tag_set()));
        let lifecycle = self
            .s3
            .get_bucket_lifecycle_configuration()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.insert("s3 lifecycle".into(), format!("{:?}", lifecycle.rules()));
        let objects = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        for o in objects.contents() {
            s.insert(
                format!("s3 object {}", o.key().unwrap()),
                format!("{:?} {:?}", o.e_tag(), o.last_modified()),
            );
        }
        for t in ["lease-main-nodes", "lease-main-tasks"] {
            let d = self.db.describe_table().table_name(t).send().await.unwrap();
            let d = d.table().unwrap();
            s.insert(format!("ddb {t} keys"), format!("{:?}", d.key_schema()));
            s.insert(
                format!("ddb {t} attributes"),
                format!("{:?}", d.attribute_definitions()),
            );
            s.insert(
                format!("ddb {t} billing"),
                format!(
                    "{:?}",
                    d.billing_mode_summary().and_then(|b| b.billing_mode())
                ),
            );
            let ttl = self
                .db
                .describe_time_to_live()
                .table_name(t)
                .send()
                .await
                .unwrap();
            s.insert(
                format!("ddb {t} ttl"),
                format!("{:?}", ttl.time_to_live_description()),
            );
        }
        let role = self
            .iam
            .get_role()
            .role_name("lease-main-agent")
            .send()
            .await
            .unwrap();
        let role = role.role().unwrap();
        s.insert(
            "iam role trust".into(),
            role.assume_role_policy_document().unwrap().to_string(),
        );
        s.insert("iam role tags".into(), format!("{:?}", role.tags()));
        let policy = self
            .iam
            .get_role_policy()
            .role_name("lease-main-agent")
            .policy_name("lease-agent-us-east-1")
            .send()
            .await
            .unwrap();
        s.insert(
            "iam role policy".into(),
            policy.policy_document().to_string(),
        );
        let profile = self
            .iam
            .get_instance_profile()
            .instance_profile_name("lease-main-agent")
            .send()
            .await
            .unwrap();
        let roles: Vec<&str> = profile
            .instance_profile()
            .unwrap()
            .roles()
            .iter()
            .map(|r| r.role_name())
            .collect();
        s.insert("iam profile roles".into(), roles.join(","));
        s
    }

    /// The reaper's deployment, read through Lambda, IAM and Scheduler, as comparable
    /// text (maps sorted: the SDK's are unordered): the function's configuration, code
    /// and tags, each role's trust, tags and inline policies, the group and the schedule.
    async fn reaper_snapshot(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::new();
        let f = self
            .lambda
            .get_function()
            .function_name(REAPER)
            .send()
            .await
            .unwrap();
        let c = f.configuration().unwrap();
        s.insert(
            "lambda configuration".into(),
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                c.runtime(),
                c.role(),
                c.handler(),
                c.code_sha256(),
                c.architectures(),
                c.timeout(),
                c.memory_size(),
                c.environment()
                    .and_then(|e| e.variables())
                    .map(|v| v.iter().collect::<BTreeMap<_, _>>()),
                c.last_modified()
            ),
        );
        s.insert(
            "lambda tags".into(),
            format!(
                "{:?}",
                f.tags().map(|t| t.iter().collect::<BTreeMap<_, _>>())
            ),
        );
        for role in REAPER_ROLES {
            let r = self.iam.get_role().role_name(role).send().await.unwrap();
            let r = r.role().unwrap();
            s.insert(
                format!("iam {role} trust"),
                r.assume_role_policy_document().unwrap().to_string(),
            );
            s.insert(format!("iam {role} tags"), format!("{:?}", r.tags()));
            let names = self
                .iam
                .list_role_policies()
                .role_name(role)
                .send()
                .await
                .unwrap();
            for name in names.policy_names() {
                let p = self
                    .iam
                    .get_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .send()
                    .await
                    .unwrap();
                s.insert(
                    format!("iam {role} policy {name}"),
                    p.policy_document().to_string(),
                );
            }
        }
        let g = self
            .scheduler
            .get_schedule_group()
            .name("lease-main")
            .send()
            .await
            .unwrap();
        s.insert(
            "schedule group".into(),
            format!("{:?} {:?}", g.arn(), g.state()),
        );
        let sc = self
            .scheduler
            .get_schedule()
            .group_name("lease-main")
            .name(REAPER_SCHEDULE)
            .send()
            .await
            .unwrap();
        s.insert(
            "schedule".into(),
            format!(
                "{:?} {:?} {:?} {:?}",
                sc.schedule_expression(),
                sc.state(),
                sc.target(),
                sc.flexible_time_window()
            ),
        );
        s
    }

    /// Whether anything of the reaper's deployment is left, by listing each service.
    async fn reaper_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let functions = self.lambda.list_functions().send().await.unwrap();
        for f in functions.functions() {
            left.push(format!("function {:?}", f.function_name()));
        }
        let roles = self.iam.list_roles().send().await.unwrap();
        for r in roles.roles() {
            if REAPER_ROLES.contains(&r.role_name()) {
                left.push(format!("role {}", r.role_name()));
            }
        }
        let groups = self.scheduler.list_schedule_groups().send().await.unwrap();
        for g in groups.schedule_groups() {
            if g.name().is_some_and(|n| n.starts_with("lease-")) {
                left.push(format!("schedule group {:?}", g.name()));
            }
        }
        let schedules = self.scheduler.list_schedules().send().await.unwrap();
        for sc in schedules.schedules() {
            left.push(format!("schedule {:?}/{:?}", sc.group_name(), sc.name()));
        }
        let groups = self
            .logs
            .describe_log_groups()
            .log_group_name_prefix("/aws/lambda/lease-")
            .send()
            .await
            .unwrap();
        for g in groups.log_groups() {
            left.push(format!("log group {:?}", g.log_group_name()));
        }
        left
    }

    /// What Lambda does on a function's first run: a log group named after it, with a
    /// stream and an event in it.
    async fn lambda_log_group(&self, function: &str) {
        let group = format!("/aws/lambda/{function}");
        self.logs
            .create_log_group()
            .log_group_name(&group)
            .send()
            .await
            .unwrap();
        self.logs
            .create_log_stream()
            .log_group_name(&group)
            .log_stream_name("2026/12/07/[$LATEST]0123456789abcdef")
            .send()
            .await
            .unwrap();
        let event = aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(chrono::Utc::now().timestamp_millis())
            .message("reaper: nothing to do")
            .build()
            .unwrap();
        self.logs
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name("2026/12/07/[$LATEST]0123456789abcdef")
            .log_events(event)
            .send()
            .await
            .unwrap();
    }

    async fn log_group_names(&self) -> Vec<String> {
        let groups = self.logs.describe_log_groups().send().await.unwrap();
        groups
            .log_groups()
            .iter()
            .filter_map(|g| g.log_group_name().map(str::to_string))
            .collect()
    }

    /// The parts of stack `main` (default pool only) another stack's teardown must not
    /// touch: its queues' attributes, its bucket's tags, its tables and its role.
    async fn snapshot_main_default(&self) -> Vec<String> {
        let mut s = Vec::new();
        for q in [
            "lease-main-pool-default",
            "lease-main-dlq-default",
            "lease-main-events",
        ] {
            s.push(format!(
                "{q} {:?}",
                self.queue_attributes(q).await.get("RedrivePolicy")
            ));
        }
        let tags = self
            .s3
            .get_bucket_tagging()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        s.push(format!("{:?}", tags.tag_set()));
        for t in ["lease-main-nodes", "lease-main-tasks"] {
            let d = self.db.describe_table().table_name(t).send().await.unwrap();
            s.push(format!("{t} {:?}", d.table().unwrap().table_status()));
        }
        let role = self
            .iam
            .get_role()
            .role_name("lease-main-agent")
            .send()
            .await
            .unwrap();
        s.push(role.role().unwrap().role_name().to_string());
        let topics = self.sns.list_topics().send().await.unwrap();
        s.push(format!("{:?}", topics.topics()));
        s
    }

    /// Messages now visible in a queue (received and left to become visible again).
    async fn receive(&self, name: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let url = self.queue_url(name).await.unwrap();
        let out = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        out.messages().to_vec()
    }
}

fn outcomes(report: &Value) -> Vec<(String, String, String)> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Parses a policy document as AWS returns it (IAM percent-encodes; moto may not).
fn document(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| {
        let mut out = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        json(&String::from_utf8(out).unwrap())
    })
}

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
    assert_eq!(&body[..], &std::fs::read(&deb).unwrap()[..]);

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
    let profile = w
        .iam
        .get_instance_profile()
        .instance_profile_name("lease-main-agent")
        .send()
        .await
        .unwrap();
    let roles: Vec<&str> = profile
        .instance_profile()
        .unwrap()
        .roles()
        .iter()
        .map(|r| r.role_name())
        .collect();
    assert_eq!(roles, ["lease-main-agent"]);

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

#[tokio::test]
async fn the_command_topic_routes_each_task_to_its_pools_queue_only() {
    let w = world().await;
    w.setup(&["--pool", "gpu"]).await;

    // A message published straight to the topic with pool=gpu.
    let topic = format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-commands");
    w.sns
        .publish()
        .topic_arn(&topic)
        .message("for the gpus")
        .message_attributes(
            "pool",
            aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value("gpu")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let gpu = w.receive("lease-main-pool-gpu").await;
    assert_eq!(gpu.len(), 1);
    // Raw delivery: the body is the message itself, not an SNS envelope.
    assert_eq!(gpu[0].body(), Some("for the gpus"));
    assert!(w.receive("lease-main-pool-default").await.is_empty());
    w.sqs
        .delete_message()
        .queue_url(w.queue_url("lease-main-pool-gpu").await.unwrap())
        .receipt_handle(gpu[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    // `lease submit` with no queue flag publishes through the stack's topic.
    let id = w
        .lease()
        .args(["submit", "--shell", "nvidia-smi", "--pool", "gpu"])
        .ok()
        .await;
    let gpu = w.receive("lease-main-pool-gpu").await;
    assert_eq!(gpu.len(), 1);
    let task = match TaskMessage::parse(gpu[0].body().unwrap()).unwrap() {
        TaskMessage::Inline(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(task.id, id.trim());
    assert!(matches!(task.spec, TaskSpec::Shell(ref s) if s.command == "nvidia-smi"));
    let attr = gpu[0].message_attributes().unwrap()["pool"].string_value();
    assert_eq!(attr, Some("gpu"));
    assert!(w.receive("lease-main-pool-default").await.is_empty());

    // No --pool: the default pool, and nothing reaches the gpu queue.
    w.lease().args(["submit", "--shell", "make"]).ok().await;
    let default = w.receive("lease-main-pool-default").await;
    assert_eq!(default.len(), 1);
    Task::parse(default[0].body().unwrap()).unwrap();

    // A pool the stack has no queue for is refused before anything is sent.
    let (code, err) = w
        .lease()
        .args(["submit", "--shell", "x", "--pool", "tpu"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("'tpu'") && err.contains("lease setup --pool tpu"),
        "{err}"
    );
}

#[tokio::test]
async fn launch_into_the_stack_uses_its_profile_queue_and_tag() {
    let w = world().await;
    w.setup(&["--pool", "gpu"]).await;
    // No agent package in the stack's bucket: an instance of the default AMI would
    // have no agent, so the launch is refused before RunInstances.
    let (code, err) = w
        .lease()
        .args(["launch", "-t", "t3.micro", "--pool", "gpu"])
        .fails()
        .await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no agent package for x86_64") && err.contains("lease setup"),
        "{err}"
    );
    let none = w
        .moto
        .ec2()
        .await
        .describe_instances()
        .send()
        .await
        .unwrap();
    assert!(none.reservations().is_empty(), "{none:?}");
    let deb = w.deb();
    w.setup(&["--agent-deb", deb.to_str().unwrap()]).await;
    let digest = lease_common::manifest::sha256_bytes(&std::fs::read(&deb).unwrap());
    let id = w
        .lease()
        .args(["launch", "-t", "t3.micro", "--pool", "gpu"])
        .ok()
        .await;
    let i = w.moto.instance(id.trim()).await;
    let tags: BTreeMap<&str, &str> = i
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags.get("lease:stack"), Some(&"main"));
    assert!(
        i.iam_instance_profile()
            .unwrap()
            .arn()
            .unwrap()
            .ends_with("/lease-main-agent"),
        "{:?}",
        i.iam_instance_profile()
    );
    let ud = w
        .moto
        .ec2()
        .await
        .describe_instance_attribute()
        .instance_id(id.trim())
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let raw = String::from_utf8(
        aws_smithy_types::base64::decode(ud.user_data().unwrap().value().unwrap()).unwrap(),
    )
    .unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&raw).unwrap();
    let content = doc["write_files"][0]["content"].as_str().unwrap();
    let config =
        lease_common::config::AgentConfig::from_yaml(std::path::Path::new("ud"), content).unwrap();
    assert_eq!(config.queue_url, w.queue_url("lease-main-pool-gpu").await);
    // The install step names the package setup uploaded and the digest it recorded.
    let install: Vec<&str> = doc["runcmd"][0]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let key = lease_common::layout::agent_deb_key(lease_common::VERSION, "amd64");
    assert_eq!(
        &install[2..],
        [
            config.log_bucket.as_deref().unwrap(),
            &key,
            &digest,
            "amd64"
        ]
    );
    assert_eq!(
        config.topic_arn.as_deref(),
        Some(format!("arn:aws:sns:us-east-1:{ACCOUNT}:lease-main-bus").as_str())
    );
    assert_eq!(config.log_bucket.as_deref(), Some(BUCKET));
    assert_eq!(config.tasks_table.as_deref(), Some("lease-main-tasks"));
    assert_eq!(config.nodes_table.as_deref(), Some("lease-main-nodes"));
    assert_eq!(config.pool.as_deref(), Some("gpu"));
}

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

#[tokio::test]
async fn other_commands_find_the_stack_and_say_what_to_do_without_one() {
    let w = world().await;
    // Nothing set up yet: the error says how to get a queue.
    let (code, err) = w.lease().args(["submit", "--shell", "x"]).fails().await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--queue-url") && err.contains("lease setup"),
        "{err}"
    );
    let (code, err) = w.lease().args(["logs", "t1"]).fails().await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--bucket") && err.contains("lease setup"),
        "{err}"
    );

    w.setup(&[]).await;
    w.s3.put_object()
        .bucket(BUCKET)
        .key("logs/t1.log")
        .body(b"line one\n".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(w.lease().args(["logs", "t1"]).ok().await, "line one\n");

    // stats reads the default pool's queue and its dead letters.
    let dlq = w.queue_url("lease-main-dlq-default").await.unwrap();
    w.sqs
        .send_message()
        .queue_url(&dlq)
        .message_body("dead")
        .send()
        .await
        .unwrap();
    w.lease().args(["submit", "--shell", "true"]).ok().await;
    let stats = json(&w.lease().args(["stats", "-o", "json"]).ok().await);
    assert_eq!(
        stats["queue_url"].as_str(),
        w.queue_url("lease-main-pool-default").await.as_deref()
    );
    assert_eq!(stats["queued"], 1);
    assert_eq!(stats["dead_letters"], 1);
}

impl World {
    /// `lease doctor -o json`: its exit code and its checks by name.
    async fn doctor(&self) -> (Option<i32>, BTreeMap<String, Value>) {
        self.doctor_with(&[]).await
    }

    /// `lease doctor -o json` with more arguments (`--type …`).
    async fn doctor_with(&self, args: &[&str]) -> (Option<i32>, BTreeMap<String, Value>) {
        let out = self
            .lease()
            .args(["doctor", "-o", "json"])
            .args(args)
            .output()
            .await;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = json(&text);
        let checks = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
            .collect();
        (out.status.code(), checks)
    }
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

impl World {
    /// One datapoint of the reaper function's Lambda metric `name`, now: what Lambda
    /// records for its invocations (the emulator runs none).
    async fn lambda_metric(&self, name: &str, value: f64) {
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
        let config = self.moto.sdk_config().await;
        aws_sdk_cloudwatch::Client::new(&config)
            .put_metric_data()
            .namespace("AWS/Lambda")
            .metric_data(
                MetricDatum::builder()
                    .metric_name(name)
                    .dimensions(
                        Dimension::builder()
                            .name("FunctionName")
                            .value("lease-main-reaper")
                            .build(),
                    )
                    .value(value)
                    .unit(StandardUnit::Count)
                    .timestamp(std::time::SystemTime::now().into())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
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
