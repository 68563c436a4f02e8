//! `lease launch` with a task, against moto's EC2: the task read back from each
//! instance's user-data (DescribeInstanceAttribute) and parsed with the agent's own
//! config schema, the lease tags read back from DescribeInstances.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::InstanceAttributeName;
use lease_common::config::AgentConfig;
use lease_common::messages::{Task, TaskSpec};
use lease_tests::{Cmd, Moto};

fn lease(moto: &Moto) -> Cmd {
    Cmd::new("lease", &moto.env())
}

/// Where the agent package is, as `lease setup` would record it: without one, and on
/// an image that does not carry the agent, lease refuses to launch.
const AGENT: [&str; 2] = ["--agent-bucket", "agents"];

fn tags(i: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    i.tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

/// The agent config in an instance's user-data, as the agent would parse it.
async fn agent_config(moto: &Moto, id: &str) -> AgentConfig {
    let ud = moto
        .ec2()
        .await
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = ud.user_data().unwrap().value().unwrap();
    let text = String::from_utf8(aws_smithy_types::base64::decode(encoded).unwrap()).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let file = &doc["write_files"][0];
    assert_eq!(file["path"].as_str(), Some("/etc/leased/config.yaml"));
    AgentConfig::from_yaml(
        std::path::Path::new("user-data"),
        file["content"].as_str().unwrap(),
    )
    .unwrap()
}

async fn instance_count(moto: &Moto) -> usize {
    let out = moto.ec2().await.describe_instances().send().await.unwrap();
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

/// `instance task` per line, as `lease launch` prints them.
fn pairs(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| {
            let (i, t) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            (i.to_string(), t.to_string())
        })
        .collect()
}

#[tokio::test]
async fn each_instance_carries_exactly_its_own_shell_task() {
    let moto = Moto::start();
    let out = lease(&moto)
        .args(["launch", "-t", "t3.micro"])
        .args(AGENT)
        .args([
            "--count",
            "2",
            "--shell",
            "make test && cp report.xml out/",
            "--timeout",
            "10m",
            "--bundle",
            "out",
            "--bucket",
            "ctl",
            "--tasks-table",
            "lease-main-tasks",
            "--on-complete",
            "stop",
            // Stop needs on-demand: EC2 cannot stop a one-time spot instance.
            "--on-demand",
        ])
        .ok()
        .await;
    let launched = pairs(&out);
    assert_eq!(launched.len(), 2, "{out}");
    let mut ids = BTreeSet::new();
    for (instance, task_id) in &launched {
        let config = agent_config(&moto, instance).await;
        assert_eq!(config.log_bucket.as_deref(), Some("ctl"));
        assert_eq!(config.tasks_table.as_deref(), Some("lease-main-tasks"));
        assert_eq!(
            config.queue_url, None,
            "a one-shot node takes no queued work"
        );
        let task: Task = config.task.unwrap();
        assert_eq!(&task.id, task_id);
        assert_eq!(task.attempt, 1);
        assert_eq!(task.timeout.unwrap().as_secs(), 600);
        assert_eq!(task.bundle.as_deref(), Some("out"));
        assert!(
            matches!(task.spec, TaskSpec::Shell(ref s) if s.command == "make test && cp report.xml out/"),
            "{task:?}"
        );
        // The agent's own parser accepts what the launcher wrote.
        assert_eq!(Task::parse(&task.to_json()).unwrap(), task);
        ids.insert(task.id);

        let t = tags(&moto.instance(instance).await);
        assert_eq!(t["lease:on-complete"], "stop");
        assert_eq!(t["lease:managed"], "true");
        assert_eq!(t["lease:status"], "starting");
    }
    assert_eq!(ids.len(), 2, "one task id per instance");
}

#[tokio::test]
async fn a_docker_task_keeps_image_gpus_env_and_args_and_json_names_the_task() {
    let moto = Moto::start();
    // moto has no Deep Learning AMI parameter: the Amazon Linux image stands in.
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    let ami = ssm
        .get_parameter()
        .name("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
        .send()
        .await
        .unwrap();
    let ami = ami.parameter().unwrap().value().unwrap().to_string();
    let out = lease(&moto)
        .env("LEASE_BUCKET", "ctl")
        .args(["launch", "-t", "g5.xlarge", "--ami", &ami])
        .args(AGENT)
        .args([
            "-o",
            "json",
            "--image",
            "trainer:1",
            "--gpus",
            "all",
            "--env",
            "LR=0.1",
            "--",
            "--epochs",
            "3",
        ])
        .ok()
        .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let instance = v[0]["id"].as_str().unwrap();
    let task_id = v[0]["task_id"].as_str().unwrap();
    let config = agent_config(&moto, instance).await;
    let task = config.task.unwrap();
    assert_eq!(task.id, task_id);
    let TaskSpec::Docker(d) = task.spec else {
        panic!("{:?}", task.spec)
    };
    assert_eq!(d.image, "trainer:1");
    assert_eq!(d.gpus.as_deref(), Some("all"));
    assert_eq!(d.env["LR"], "0.1");
    assert_eq!(d.args, ["--epochs", "3"]);
    let t = tags(&moto.instance(instance).await);
    assert_eq!(t["lease:on-complete"], "terminate", "the default");
}

#[tokio::test]
async fn a_task_launch_without_a_bucket_or_too_large_launches_nothing() {
    let moto = Moto::start();
    let (code, err) = lease(&moto)
        .args(["launch", "-t", "t3.micro", "--shell", "make"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--bucket") && err.contains("LEASE_BUCKET"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("long.sh");
    std::fs::write(&script, "echo step\n".repeat(2_000)).unwrap();
    let (code, err) = lease(&moto)
        .args(["launch", "-t", "t3.micro"])
        .args(AGENT)
        .args(["--bucket", "ctl", "--shell"])
        .arg(format!("@{}", script.display()))
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("16 KB") && err.contains("lease submit"),
        "{err}"
    );
    assert_eq!(instance_count(&moto).await, 0);
}
