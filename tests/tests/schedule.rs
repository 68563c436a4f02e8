//! `lease schedule` against moto's EventBridge Scheduler: every schedule read back with
//! GetSchedule/ListSchedules, and each target's input replayed as the API call
//! Scheduler would make (through boto3, which checks the request against the API
//! model) so its effect is read back from SQS and EC2. moto stores schedules but never
//! runs them, so the replay stands in for the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use lease_common::messages::Task;
use lease_tests::{Cmd, Moto};

const STACK: &str = "dev";
const GROUP: &str = "lease-dev";
/// What Scheduler substitutes for `<aws.scheduler.execution-id>`, as in its docs.
const EXECUTION_ID: &str = "d32c5kddcf5bb8c3";

struct Env {
    moto: Moto,
    scheduler: aws_sdk_scheduler::Client,
}

/// moto with the stack's schedule group (what `lease setup` creates).
async fn env() -> Env {
    let moto = Moto::start();
    let scheduler = aws_sdk_scheduler::Client::new(&moto.sdk_config().await);
    scheduler
        .create_schedule_group()
        .name(GROUP)
        .send()
        .await
        .unwrap();
    Env { moto, scheduler }
}

impl Env {
    fn lease(&self) -> Cmd {
        Cmd::new("lease", &self.moto.env())
    }

    async fn get(
        &self,
        name: &str,
    ) -> aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput {
        self.scheduler
            .get_schedule()
            .group_name(GROUP)
            .name(name)
            .send()
            .await
            .unwrap()
    }

    async fn names(&self) -> Vec<String> {
        let out = self
            .scheduler
            .list_schedules()
            .group_name(GROUP)
            .send()
            .await
            .unwrap();
        let mut names: Vec<String> = out
            .schedules()
            .iter()
            .map(|s| s.name().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// Makes the call a universal target (`arn:aws:scheduler:::aws-sdk:<svc>:<api>`)
    /// names, with its input after Scheduler's substitution, through boto3 from moto's
    /// own environment. Returns the response as JSON.
    fn replay(&self, target_arn: &str, input: &str) -> serde_json::Value {
        let api = target_arn
            .strip_prefix("arn:aws:scheduler:::aws-sdk:")
            .unwrap();
        let (service, operation) = api.split_once(':').unwrap();
        let snake: String = operation
            .chars()
            .flat_map(|c| {
                if c.is_ascii_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect();
        let input = input.replace("<aws.scheduler.execution-id>", EXECUTION_ID);
        let input = input.replace("<aws.scheduler.scheduled-time>", "2026-11-23T09:00:00Z");
        let script = r#"
import base64, json, sys
import boto3
service, operation, endpoint = sys.argv[1:4]
request = json.load(sys.stdin)
# boto3 base64-encodes EC2 user data itself; the API (and Scheduler) take it encoded.
if service == "ec2" and "UserData" in request:
    request["UserData"] = base64.b64decode(request["UserData"]).decode()
client = boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
print(json.dumps(getattr(client, operation)(**request), default=str))
"#;
        let mut child = Command::new(moto_python())
            .args(["-c", script, service, &snake, &self.moto.endpoint])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "replaying {target_arn}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The Python beside moto's server (moto requires boto3, so it is there); without
/// `LEASE_MOTO_SERVER`, the `python3` on PATH, like `moto_server` on PATH.
fn moto_python() -> PathBuf {
    std::env::var_os("LEASE_MOTO_SERVER")
        .map(PathBuf::from)
        .and_then(|server| Some(server.parent()?.join("python")))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

#[tokio::test]
async fn a_scheduled_submit_publishes_a_task_per_run_to_its_pool() {
    let e = env().await;
    let config = e.moto.sdk_config().await;
    // The stack's command topic and a gpu pool queue subscribed with a pool filter
    // (what `lease setup` creates).
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let topic = sns
        .create_topic()
        .name("lease-dev-commands")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name("lease-dev-pool-gpu")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint("arn:aws:sqs:us-east-1:123456789012:lease-dev-pool-gpu")
        .attributes("RawMessageDelivery", "true")
        .attributes("FilterPolicy", r#"{"pool":["gpu"]}"#)
        .send()
        .await
        .unwrap();

    let out = e
        .lease()
        .args([
            "schedule",
            "create",
            "nightly",
            "--cron",
            "0 9 ? * MON-FRI *",
            "--timezone",
            "Europe/Paris",
            "--stack",
            STACK,
            "--",
            "submit",
            "--shell",
            "make test",
            "--pool",
            "gpu",
            "--timeout",
            "1h",
        ])
        .ok()
        .await;
    assert_eq!(out.trim(), "nightly");

    let s = e.get("nightly").await;
    assert_eq!(s.schedule_expression(), Some("cron(0 9 ? * MON-FRI *)"));
    assert_eq!(s.schedule_expression_timezone(), Some("Europe/Paris"));
    assert_eq!(s.state().unwrap().as_str(), "ENABLED");
    let target = s.target().unwrap();
    assert_eq!(target.arn(), "arn:aws:scheduler:::aws-sdk:sns:publish");
    assert_eq!(
        target.role_arn(),
        "arn:aws:iam::123456789012:role/lease-dev-schedules"
    );
    let input: serde_json::Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(input["TopicArn"], topic.as_str());
    assert_eq!(input["MessageAttributes"]["pool"]["StringValue"], "gpu");

    // One run: the task reaches the gpu pool's queue, with an id of its own.
    e.replay(target.arn(), target.input().unwrap());
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 1);
    let message = &received.messages()[0];
    let task = Task::parse(message.body().unwrap()).unwrap();
    assert_eq!(task.id, format!("nightly-{EXECUTION_ID}"));
    assert_eq!(task.spec.kind(), "shell");
    assert_eq!(task.pool.as_deref(), Some("gpu"));
    assert_eq!(task.timeout.unwrap().as_secs(), 3600);
    assert_eq!(
        message.message_attributes().unwrap()["pool"].string_value(),
        Some("gpu")
    );
}

#[tokio::test]
async fn a_scheduled_launch_runs_instances_whose_deadline_follows_each_launch() {
    let e = env().await;
    e.lease()
        .args([
            "schedule",
            "create",
            "morning",
            "--rate",
            "1 day",
            "--stack",
            STACK,
            "--",
            "launch",
            "-t",
            "t3.micro",
            "--ttl",
            "2h",
            "--job",
            "warmup",
            "--ami",
            "ami-12c6146b",
        ])
        .ok()
        .await;

    let s = e.get("morning").await;
    assert_eq!(s.schedule_expression(), Some("rate(1 day)"));
    let target = s.target().unwrap();
    assert_eq!(target.arn(), "arn:aws:scheduler:::aws-sdk:ec2:runInstances");
    let input: serde_json::Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert!(
        input["ClientToken"]
            .as_str()
            .unwrap()
            .ends_with("<aws.scheduler.scheduled-time>")
    );

    // One run: an instance tagged as `lease launch` tags it, without a fixed deadline.
    let response = e.replay(target.arn(), target.input().unwrap());
    let id = response["Instances"][0]["InstanceId"].as_str().unwrap();
    let instance = e.moto.instance(id).await;
    let tags: std::collections::BTreeMap<&str, &str> = instance
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags["lease:managed"], "true");
    assert_eq!(tags["lease:ttl"], "2h");
    assert_eq!(tags["lease:job"], "warmup");
    assert_eq!(tags["lease:owner"], "moto", "{tags:?}");
    assert!(!tags.contains_key("lease:expires-at"), "{tags:?}");
    assert_eq!(instance.instance_type().unwrap().as_str(), "t3.micro");
    let options = instance.metadata_options().unwrap();
    assert_eq!(options.http_tokens().unwrap().as_str(), "required");
}

#[tokio::test]
async fn schedules_are_listed_paused_resumed_and_deleted() {
    let e = env().await;
    for (name, rate) in [("alpha", "5 minutes"), ("beta", "1 hour")] {
        e.lease()
            .args(["schedule", "create", name, "--rate", rate, "--stack", STACK])
            .args(["--", "submit", "--shell", "date"])
            .ok()
            .await;
    }
    assert_eq!(e.names().await, ["alpha", "beta"]);
    let listed = e
        .lease()
        .args(["schedule", "list", "--stack", STACK, "-o", "json"])
        .ok()
        .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "alpha");
    assert_eq!(listed[0]["expression"], "rate(5 minutes)");
    assert_eq!(listed[0]["kind"], "submit");
    assert_eq!(listed[1]["state"], "ENABLED");

    let before = e.get("alpha").await;
    e.lease()
        .args(["schedule", "pause", "alpha", "--stack", STACK])
        .ok()
        .await;
    let paused = e.get("alpha").await;
    assert_eq!(paused.state().unwrap().as_str(), "DISABLED");
    // The rest of the definition survives the update.
    assert_eq!(paused.schedule_expression(), before.schedule_expression());
    assert_eq!(paused.target(), before.target());
    assert_eq!(paused.description(), before.description());
    assert_eq!(e.get("beta").await.state().unwrap().as_str(), "ENABLED");

    e.lease()
        .args(["schedule", "resume", "alpha", "--stack", STACK])
        .ok()
        .await;
    let resumed = e.get("alpha").await;
    assert_eq!(resumed.state().unwrap().as_str(), "ENABLED");
    assert_eq!(resumed.target(), before.target());

    e.lease()
        .args(["schedule", "delete", "alpha", "--stack", STACK])
        .ok()
        .await;
    assert_eq!(e.names().await, ["beta"]);
    let (code, stderr) = e
        .lease()
        .args(["schedule", "delete", "alpha", "--stack", STACK])
        .fails()
        .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no schedule 'alpha'"), "{stderr}");
    let (code, stderr) = e
        .lease()
        .args(["schedule", "pause", "gamma", "--stack", STACK])
        .fails()
        .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("'gamma'"), "{stderr}");
}

#[tokio::test]
async fn bad_input_is_refused_by_name_before_any_call() {
    let e = env().await;
    // An endpoint where nothing listens: any AWS call would fail with exit 1, so exit
    // 2 and the message show the refusal came first.
    let dead = format!("http://127.0.0.1:{}", lease_tests::moto::free_port());
    for (flags, needle) in [
        (&["--cron", "0 9 * * *"][..], "expected 6 fields"),
        (
            &["--cron", "0 9 1 * MON *"],
            "day-of-week (field 5) must be '?'",
        ),
        (&["--cron", "0 25 * * ? *"], "field 2 (hours)"),
        (&["--rate", "1 minutes"], "'minute'"),
        (&["--rate", "0 hours"], "at least 1"),
        (
            &["--rate", "5 minutes", "--timezone", "Mars/Olympus"],
            "--timezone 'Mars/Olympus'",
        ),
    ] {
        let (code, stderr) = e
            .lease()
            .env("AWS_ENDPOINT_URL", &dead)
            .args(["schedule", "create", "bad"])
            .args(flags)
            .args(["--stack", STACK, "--", "submit", "--shell", "x"])
            .fails()
            .await;
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
    }
    for (words, needle) in [
        (&["submit", "--shell", "x", "--array", "3"][..], "--array"),
        (
            &["submit", "--queue-url", "http://q", "--shell", "x"],
            "--queue-url",
        ),
        (&["launch", "-t", "t3.micro", "--ttl", "soon"], "--ttl"),
        (&["launch", "-t", "t3.micro", "--wait"], "--wait"),
        (&["stats"], "stats"),
    ] {
        let (code, stderr) = e
            .lease()
            .env("AWS_ENDPOINT_URL", &dead)
            .args([
                "schedule", "create", "bad", "--rate", "1 day", "--stack", STACK, "--",
            ])
            .args(words)
            .fails()
            .await;
        assert_eq!(code, 2, "{words:?}: {stderr}");
        assert!(stderr.contains(needle), "{words:?}: {stderr}");
    }
    let (code, stderr) = e
        .lease()
        .env("AWS_ENDPOINT_URL", &dead)
        .args([
            "schedule", "create", "reaper", "--rate", "1 day", "--stack", STACK,
        ])
        .args(["--", "submit", "--shell", "x"])
        .fails()
        .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("'reaper'"), "{stderr}");
    // Nothing reached the emulator either.
    assert!(e.names().await.is_empty());

    // A stack without a schedule group is named, with what to do.
    let (code, stderr) = e
        .lease()
        .args([
            "schedule", "create", "x", "--rate", "1 day", "--stack", "other",
        ])
        .args(["--", "submit", "--shell", "x"])
        .fails()
        .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("'lease-other'") && stderr.contains("lease setup"),
        "{stderr}"
    );
}
