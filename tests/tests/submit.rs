//! `lease submit` and `lease stats` against moto's SQS and S3: every task read back
//! from the queue (and the bucket), not from lease's output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::messages::{Task, TaskMessage, TaskSpec};
use lease_tests::{Cmd, Moto};

struct Fleet {
    moto: Moto,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: String,
}

async fn fleet() -> Fleet {
    let moto = Moto::start();
    let config = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dlq_url = sqs
        .create_queue()
        .queue_name("tasks-dlq")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let dlq_arn = "arn:aws:sqs:us-east-1:123456789012:tasks-dlq";
    let queue_url = sqs
        .create_queue()
        .queue_name("tasks")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"3"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    Fleet {
        moto,
        sqs,
        queue_url,
        dlq_url,
    }
}

impl Fleet {
    fn lease(&self) -> Cmd {
        Cmd::new("lease", &self.moto.env()).env("LEASE_QUEUE_URL", &self.queue_url)
    }

    /// Every message now in the queue, read through SQS and left there.
    async fn messages(&self) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .send()
                .await
                .unwrap();
            if out.messages().is_empty() {
                return bodies;
            }
            bodies.extend(out.messages().iter().map(|m| m.body().unwrap().to_string()));
        }
    }
}

#[tokio::test]
async fn a_shell_task_lands_in_the_queue_as_a_v1_task() {
    let f = fleet().await;
    let out = f
        .lease()
        .args([
            "submit",
            "--shell",
            "echo hi > out.txt",
            "--timeout",
            "10m",
            "--pool",
            "cpu",
        ])
        .ok()
        .await;
    let id = out.trim().to_string();
    let bodies = f.messages().await;
    assert_eq!(bodies.len(), 1);
    let task = Task::parse(&bodies[0]).unwrap();
    assert_eq!(task.id, id);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.timeout.unwrap().as_secs(), 600);
    assert_eq!(task.pool.as_deref(), Some("cpu"));
    assert!(matches!(task.spec, TaskSpec::Shell(ref s) if s.command == "echo hi > out.txt"));
}

#[tokio::test]
async fn arrays_and_params_queue_one_task_per_combination() {
    let f = fleet().await;
    let out = f
        .lease()
        .args([
            "submit",
            "--image",
            "trainer:1",
            "--env",
            "LR={lr}",
            "--array",
            "3",
            "--param",
            "lr=0.1,0.01",
            "--param",
            "opt=sgd,adam",
            "--",
            "--seed",
            "{index}",
            "--opt",
            "{opt}",
        ])
        .ok()
        .await;
    assert_eq!(out.lines().count(), 12);
    let bodies = f.messages().await;
    assert_eq!(bodies.len(), 12);
    let mut seen = std::collections::BTreeSet::new();
    for b in &bodies {
        let t = Task::parse(b).unwrap();
        let TaskSpec::Docker(d) = t.spec else {
            panic!("{b}")
        };
        assert!(!d.args.iter().any(|a| a.contains('{')), "{:?}", d.args);
        seen.insert((d.env["LR"].clone(), d.args[1].clone(), d.args[3].clone()));
    }
    assert_eq!(seen.len(), 12, "every combination exactly once");
}

#[tokio::test]
async fn a_prompt_too_large_for_sqs_goes_to_s3() {
    let f = fleet().await;
    let s3 = lease_common::aws::s3_client(&f.moto.sdk_config().await);
    s3.create_bucket().bucket("ctl").send().await.unwrap();
    let prompt = "refactor this module carefully. ".repeat(10_000); // ~320 KB
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let at_file = format!("@{}", file.display());
    let (code, err) = f
        .lease()
        .args(["submit", "--claude", &at_file])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bucket"), "{err}");
    assert!(f.messages().await.is_empty(), "nothing half-sent");

    let id = f
        .lease()
        .args(["submit", "--bucket", "ctl", "--claude", &at_file])
        .ok()
        .await
        .trim()
        .to_string();
    let bodies = f.messages().await;
    let TaskMessage::Pointer(p) = TaskMessage::parse(&bodies[0]).unwrap() else {
        panic!(
            "expected a pointer: {}",
            &bodies[0][..200.min(bodies[0].len())]
        );
    };
    assert_eq!(p.id, id);
    assert_eq!(p.spec_s3, format!("s3://ctl/tasks/{id}.json"));
    let obj = s3
        .get_object()
        .bucket("ctl")
        .key(format!("tasks/{id}.json"))
        .send()
        .await
        .unwrap();
    let bytes = obj.body.collect().await.unwrap().into_bytes();
    let task = Task::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
    assert!(matches!(task.spec, TaskSpec::Claude(ref c) if c.prompt == prompt));
}

#[tokio::test]
async fn stats_reports_queue_in_flight_and_dead_letters() {
    let f = fleet().await;
    f.lease()
        .args(["submit", "--shell", "true", "--array", "5"])
        .ok()
        .await;
    // Two in flight: received and not yet deleted.
    f.sqs
        .receive_message()
        .queue_url(&f.queue_url)
        .max_number_of_messages(2)
        .visibility_timeout(300)
        .send()
        .await
        .unwrap();
    f.sqs
        .send_message()
        .queue_url(&f.dlq_url)
        .message_body("not json")
        .send()
        .await
        .unwrap();
    let out = f.lease().args(["stats", "-o", "json"]).ok().await;
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["queued"], 3, "{s}");
    assert_eq!(s["in_flight"], 2, "{s}");
    assert_eq!(s["dead_letters"], 1, "{s}");
    let (code, err) = Cmd::new("lease", &f.moto.env())
        .args(["stats"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--queue-url"), "{err}");
}
