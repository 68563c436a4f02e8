//! A set-up stack in use, against moto: the command topic routes each task to its
//! pool's queue only (checked by delivering messages), `lease launch` uses the
//! stack's profile, queue and tag, and the other commands find the stack or say how
//! to make one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use lease_common::messages::{Task, TaskMessage, TaskSpec};
use lease_tests::stack::*;

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
