//! The stack probe: a moto with the clients to read a stack back through the SDK, and
//! `lease` pointed at it, for the setup, teardown and routing tests. Everything setup
//! configures can be read as comparable text ([`World::snapshot`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::stack::REAPER_SCHEDULE;
use serde_json::Value;

use crate::{Cmd, Moto};

pub const ACCOUNT: &str = "123456789012";
pub const BUCKET: &str = "lease-main-123456789012-us-east-1";
pub const REAPER: &str = "lease-main-reaper";
pub const REAPER_ROLES: [&str; 3] = [
    "lease-main-reaper",
    "lease-main-reaper-invoke",
    "lease-main-schedules",
];

/// The reaper's package, made once for the whole run by the script people use, from
/// the debug `bootstrap` that `cargo build --workspace --bins` left beside `lease`.
pub fn reaper_zip() -> &'static PathBuf {
    static ZIP: OnceLock<PathBuf> = OnceLock::new();
    ZIP.get_or_init(|| {
        let debug = crate::bin_path("bootstrap").parent().unwrap().to_path_buf();
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

#[derive(Debug)]
pub struct World {
    pub moto: Moto,
    pub dir: tempfile::TempDir,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub db: aws_sdk_dynamodb::Client,
    pub iam: aws_sdk_iam::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

pub async fn world() -> World {
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

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

impl World {
    pub fn settings_path(&self) -> PathBuf {
        self.dir.path().join("lease").join("config.yaml")
    }

    pub fn lease(&self) -> Cmd {
        Cmd::new("lease", &self.moto.env()).env("LEASE_CONFIG", self.settings_path())
    }

    /// A stand-in agent package, named as packaging/build-deb.sh names it.
    pub fn deb(&self) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("leased_{}_amd64.deb", lease_common::VERSION));
        std::fs::write(&path, b"!<arch>\nnot really a package\n").unwrap();
        path
    }

    /// Setup, accepting a stack without the reaper unless `extra` deploys one (the
    /// reaper's own tests pass `--reaper-zip`).
    pub async fn setup(&self, extra: &[&str]) -> Value {
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
    pub async fn abort_rule(&self) -> Option<aws_sdk_s3::types::LifecycleRule> {
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

    pub async fn queue_url(&self, name: &str) -> Option<String> {
        self.sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .ok()
            .and_then(|o| o.queue_url().map(str::to_string))
    }

    pub async fn queue_attributes(&self, name: &str) -> BTreeMap<String, String> {
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
    pub async fn subscriptions(&self, topic: &str) -> BTreeMap<String, BTreeMap<String, String>> {
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
    pub async fn snapshot(&self) -> BTreeMap<String, String> {
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
        let roles = self.instance_profile_roles("lease-main-agent").await;
        s.insert("iam profile roles".into(), roles.join(","));
        s
    }

    /// The reaper's deployment, read through Lambda, IAM and Scheduler, as comparable
    /// text (maps sorted: the SDK's are unordered): the function's configuration, code
    /// and tags, each role's trust, tags and inline policies, the group and the schedule.
    pub async fn reaper_snapshot(&self) -> BTreeMap<String, String> {
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
    pub async fn reaper_leftovers(&self) -> Vec<String> {
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
    pub async fn lambda_log_group(&self, function: &str) {
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

    pub async fn log_group_names(&self) -> Vec<String> {
        let groups = self.logs.describe_log_groups().send().await.unwrap();
        groups
            .log_groups()
            .iter()
            .filter_map(|g| g.log_group_name().map(str::to_string))
            .collect()
    }

    /// The parts of stack `main` (default pool only) another stack's teardown must not
    /// touch: its queues' attributes, its bucket's tags, its tables and its role.
    pub async fn snapshot_main_default(&self) -> Vec<String> {
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
    pub async fn receive(&self, name: &str) -> Vec<aws_sdk_sqs::types::Message> {
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

    /// The roles an instance profile carries, read back from IAM.
    pub async fn instance_profile_roles(&self, name: &str) -> Vec<String> {
        let profile = self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .unwrap();
        profile
            .instance_profile()
            .unwrap()
            .roles()
            .iter()
            .map(|r| r.role_name().to_string())
            .collect()
    }

    /// `lease doctor -o json`: its exit code and its checks by name.
    pub async fn doctor(&self) -> (Option<i32>, BTreeMap<String, Value>) {
        self.doctor_with(&[]).await
    }

    /// `lease doctor -o json` with more arguments (`--type …`).
    pub async fn doctor_with(&self, args: &[&str]) -> (Option<i32>, BTreeMap<String, Value>) {
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

    /// One datapoint of the reaper function's Lambda metric `name`, recent: what Lambda
    /// records for its invocations (the emulator runs none).
    pub async fn lambda_metric(&self, name: &str, value: f64) {
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
                    // Two minutes ago, as Lambda reports a finished run: CloudWatch
                    // compares times to the second, so a datapoint stamped in the second
                    // doctor's query ends would fall outside it.
                    .timestamp(
                        (std::time::SystemTime::now() - std::time::Duration::from_secs(120)).into(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
}

pub fn outcomes(report: &Value) -> Vec<(String, String, String)> {
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

/// Parses a policy document as AWS returns it (IAM percent-encodes; moto may not), the
/// way setup reads it.
pub fn document(text: &str) -> Value {
    lease_launcher::stack::wanted::parse_document(text)
        .unwrap_or_else(|| panic!("not a policy document: {text}"))
}
