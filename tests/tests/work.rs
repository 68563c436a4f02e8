//! The task worker end to end: the real `leased` against moto's server (SQS, SNS, S3,
//! DynamoDB, EC2), the fake IMDS, and real tmux on a private server per test. Every
//! result is read back through the SDK: the bucket's objects, the queue's counts, the
//! task table's item, the events on a queue subscribed to the control bus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{TimeDelta, Utc};
use lease_common::messages::{Event, EventKind, Task, TaskSpec};
use lease_common::{layout, records};
use lease_tests::agent::Agent;
use lease_tests::plane::{BUCKET, NODES_TABLE, POLL, Plane, shell, task_of};
use lease_tests::{Cmd, FakeImds, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_task_leaves_its_bundle_log_and_record_and_its_message_goes() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "");
    let mut task = shell(
        "shell-1",
        "mkdir -p out/sub && printf 'alpha' > out/a.txt && printf 'beta' > out/sub/b.txt \
         && echo 'hello from the task'",
    );
    task.bundle = Some("out".into());
    plane.send(&task.to_json()).await;

    plane
        .wait_for_state("shell-1", "complete", LIMIT, &agent)
        .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "shell-1"),
            &layout::manifest_key(&instance, "shell-1"),
        )
        .await;
    assert_eq!(
        files,
        BTreeMap::from([
            ("a.txt".to_string(), b"alpha".to_vec()),
            ("sub/b.txt".to_string(), b"beta".to_vec()),
        ])
    );
    let log = plane
        .object(&layout::log_key("shell-1"))
        .await
        .expect("log in S3");
    assert!(
        String::from_utf8_lossy(&log).contains("hello from the task"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    plane.wait_queue_empty(LIMIT, &agent).await;
    plane.assert_queue_empty().await;
    let item = plane.task_item("shell-1").await.unwrap();
    assert_eq!(item[records::task::EXIT_CODE].as_n().unwrap(), "0");
    assert_eq!(item[records::task::NODE_ID].as_s().unwrap(), &instance);
    assert_eq!(
        item[records::task::BUNDLE].as_s().unwrap(),
        &format!(
            "s3://{BUCKET}/{}",
            layout::bundle_prefix(&instance, "shell-1")
        )
    );
    assert!(item.contains_key(records::EXPIRES));
    let completed = plane
        .wait_event(
            "TaskCompleted",
            LIMIT,
            |e| matches!(&e.kind, EventKind::TaskCompleted { task_id, .. } if task_id == "shell-1"),
        )
        .await;
    assert_eq!(completed.instance_id, instance);
    // The node registry holds this node.
    let node = plane
        .ddb
        .get_item()
        .table_name(NODES_TABLE)
        .key(records::NODE_ID, AttributeValue::S(instance.clone()))
        .send()
        .await
        .unwrap();
    assert!(node.item().is_some(), "{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_mode_runs_the_same_pipeline() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "mock-mode: true\n");
    plane.send(&shell("mock-1", "exit 3").to_json()).await;
    plane
        .wait_for_state("mock-1", "complete", LIMIT, &agent)
        .await;
    plane
        .wait_event("TaskCompleted", LIMIT, |e| {
            e.type_name() == "TaskCompleted" && task_of(e) == Some("mock-1")
        })
        .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "mock-1"),
            &layout::manifest_key(&instance, "mock-1"),
        )
        .await;
    assert!(!files.is_empty());
    assert!(plane.object(&layout::log_key("mock-1")).await.is_some());
    plane.wait_queue_empty(LIMIT, &agent).await;
}

/// Appends a line to `runs` each time it starts, so the test counts runs on disk. The
/// task runs as the task user, so the file is made writable for it beforehand.
fn counted(id: &str, runs: &Path, rest: &str) -> Task {
    use std::os::unix::fs::PermissionsExt;
    if !runs.exists() {
        std::fs::write(runs, "").unwrap();
        std::fs::set_permissions(runs, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let mut t = shell(id, &format!("echo run >> '{}'; {rest}", runs.display()));
    t.bundle = Some("out".into());
    t
}

/// A directory in `tmp` every user may write to (with the sticky bit, as /tmp), for
/// files a task (running as the task user) leaves for the test.
fn shared_dir(tmp: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    lease_tests::agent::let_task_user_in(tmp);
    let dir = tmp.join("shared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Starts task `id` (a counted shell task), restarts the agent with `restart` while it
/// runs, and waits until the task is complete, its bundle holds exactly `files`, the
/// queue is empty and the command ran once. Returns what the caller checks further.
async fn restarted_mid_task(
    id: &str,
    command: &str,
    restart: fn(&mut Agent),
    files: &[&str],
) -> (Plane, Agent, tempfile::TempDir) {
    let plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut agent = plane.agent(&imds, &tmp.path().join("agent"), "");
    plane.send(&counted(id, &runs, command).to_json()).await;
    wait_until("the task to start", LIMIT, POLL, || async {
        (lines(&runs) == 1).then_some(())
    })
    .await;
    restart(&mut agent);
    plane.wait_for_state(id, "complete", LIMIT, &agent).await;
    let stored = plane
        .bundle(
            &layout::bundle_prefix(&instance, id),
            &layout::manifest_key(&instance, id),
        )
        .await;
    assert_eq!(stored.keys().map(String::as_str).collect::<Vec<_>>(), files);
    plane.wait_queue_empty(LIMIT, &agent).await;
    assert_eq!(lines(&runs), 1, "{}", agent.logs());
    (plane, agent, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_task_finishes_it_once_after_a_restart() {
    let (mut plane, agent, _tmp) = restarted_mid_task(
        "adopt-1",
        "mkdir -p out; echo before > out/before.txt; sleep 4; echo after > out/after.txt",
        Agent::kill_and_restart,
        &["after.txt", "before.txt"],
    )
    .await;
    plane.assert_queue_empty().await;
    plane.drain_events().await;
    let completed = plane
        .events_of("adopt-1")
        .iter()
        .filter(|e| e.type_name() == "TaskCompleted")
        .count();
    assert_eq!(completed, 1, "{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restart_interrupts_nothing_and_the_task_finishes_once() {
    let (mut plane, agent, _tmp) = restarted_mid_task(
        "restart-1",
        "mkdir -p out; sleep 4; echo after > out/after.txt",
        Agent::terminate_and_restart,
        &["after.txt"],
    )
    .await;
    plane.drain_events().await;
    let types: Vec<&str> = plane
        .events_of("restart-1")
        .iter()
        .map(|e| e.type_name())
        .filter(|t| *t != "TaskOutput")
        .collect();
    assert_eq!(
        types,
        vec!["TaskStarted", "TaskCompleted"],
        "{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_malformed_bodies_go_to_the_dead_letter_queue_and_the_agent_serves_on() {
    let mut plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "max-concurrent-tasks: 10\n");
    let kinds = [
        "not json at all".to_string(),
        r#"{"id":"no-version","kind":"shell","command":"true"}"#.to_string(),
        r#"{"v":2,"id":"future","kind":"shell","command":"true"}"#.to_string(),
        r#"{"v":1,"id":"fortran","kind":"fortran","src":"x"}"#.to_string(),
        r#"{"v":1,"id":"no-command","kind":"shell"}"#.to_string(),
    ];
    for i in 0..50 {
        plane.send(&kinds[i % kinds.len()]).await;
    }
    plane.send(&shell("good-1", "echo fine").to_json()).await;
    plane
        .wait_for_state("good-1", "complete", LIMIT, &agent)
        .await;
    wait_until("50 dead letters", LIMIT, POLL, || async {
        (plane.queue_count(&plane.dlq_url).await == 50).then_some(())
    })
    .await;
    // Each dead letter carries its reason.
    let mut reasons = Vec::new();
    while reasons.len() < 50 {
        let out = plane
            .sqs
            .receive_message()
            .queue_url(&plane.dlq_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        assert!(
            !out.messages().is_empty(),
            "only {} read back",
            reasons.len()
        );
        for m in out.messages() {
            let reason = m
                .message_attributes()
                .and_then(|a| a.get("reason"))
                .and_then(|r| r.string_value())
                .unwrap_or_default()
                .to_string();
            assert!(!reason.is_empty(), "{:?}", m.body());
            reasons.push(reason);
        }
    }
    assert!(
        reasons.iter().any(|r| r.contains("not JSON")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("fortran")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("version 2")),
        "{reasons:?}"
    );
    plane.wait_queue_empty(LIMIT, &agent).await;
    let start = Instant::now();
    loop {
        plane.drain_events().await;
        let failed: Vec<&Event> = plane
            .seen
            .iter()
            .filter(|e| e.type_name() == "TaskFailed")
            .collect();
        if failed.len() >= 50 {
            assert_eq!(failed.len(), 50);
            assert!(failed.iter().all(|e| matches!(
                &e.kind,
                EventKind::TaskFailed { reason, .. } if reason.contains("refused")
            )));
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{} TaskFailed events",
            failed.len()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_runs_once() {
    let mut plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let agent = plane.agent(
        &imds,
        &tmp.path().join("agent"),
        "max-concurrent-tasks: 2\n",
    );
    let task = counted("dup-1", &runs, "sleep 2");
    plane.send(&task.to_json()).await;
    plane.send(&task.to_json()).await;
    plane
        .wait_for_state("dup-1", "complete", LIMIT, &agent)
        .await;
    plane.wait_queue_empty(LIMIT, &agent).await;
    assert_eq!(lines(&runs), 1, "{}", agent.logs());
    plane.drain_events().await;
    let started = plane
        .events_of("dup-1")
        .iter()
        .filter(|e| e.type_name() == "TaskStarted")
        .count();
    assert_eq!(started, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_requeues_the_task_for_another_node() {
    let mut plane = Plane::new().await;
    let (first, imds1) = plane.instance().await;
    let (second, imds2) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let marker = shared_dir(tmp.path()).join("first-attempt-ran");
    let mut task = shell(
        "spot-1",
        &format!(
            "mkdir -p out; echo partial > out/part.txt; \
             printf %s \"${{LEASE_PREVIOUS_ATTEMPT-unset}}\" > out/previous.txt; \
             if [ -e '{m}' ]; then echo final > out/final.txt; exit 0; fi; \
             touch '{m}'; sleep 120",
            m = marker.display()
        ),
    );
    task.bundle = Some("out".into());
    let agent1 = plane.agent(&imds1, &tmp.path().join("a1"), "");
    plane.send(&task.to_json()).await;
    wait_until("the first attempt to start", LIMIT, POLL, || async {
        marker.exists().then_some(())
    })
    .await;
    plane
        .wait_for_state("spot-1", "running", LIMIT, &agent1)
        .await;
    imds1.set_spot_action("terminate", Utc::now() + TimeDelta::minutes(2));
    let interrupted = plane
        .wait_event("TaskInterrupted", LIMIT, |e| {
            e.type_name() == "TaskInterrupted" && task_of(e) == Some("spot-1")
        })
        .await;
    assert_eq!(interrupted.instance_id, first);
    assert!(matches!(
        interrupted.kind,
        EventKind::TaskInterrupted { attempt: 1, .. }
    ));
    let partial = plane
        .bundle(
            &layout::attempt_bundle_prefix(&first, "spot-1", 1),
            &layout::attempt_manifest_key(&first, "spot-1", 1),
        )
        .await;
    assert_eq!(
        partial.get("part.txt").map(Vec::as_slice),
        Some(&b"partial\n"[..])
    );
    // A first attempt has no previous one to resume from.
    assert_eq!(
        partial.get("previous.txt").map(Vec::as_slice),
        Some(&b"unset"[..])
    );
    assert_eq!(
        plane.task_state("spot-1").await.as_deref(),
        Some("interrupted")
    );
    // The requeued message is there at once, for another node.
    assert_eq!(plane.queue_count(&plane.queue_url).await, 1);

    let agent2 = plane.agent(&imds2, &tmp.path().join("a2"), "");
    plane
        .wait_for_state("spot-1", "complete", LIMIT, &agent2)
        .await;
    let item = plane.task_item("spot-1").await.unwrap();
    assert_eq!(item[records::task::ATTEMPT].as_n().unwrap(), "2");
    assert_eq!(item[records::task::NODE_ID].as_s().unwrap(), &second);
    let files = plane
        .bundle(
            &layout::bundle_prefix(&second, "spot-1"),
            &layout::manifest_key(&second, "spot-1"),
        )
        .await;
    assert_eq!(
        files.get("final.txt").map(Vec::as_slice),
        Some(&b"final\n"[..])
    );
    // The second attempt was told where the first one's partial bundle is, and that
    // is where the partial bundle was read back from above.
    assert_eq!(
        files.get("previous.txt").map(Vec::as_slice),
        Some(
            format!(
                "s3://{BUCKET}/{}",
                layout::attempt_bundle_prefix(&first, "spot-1", 1)
            )
            .as_bytes()
        )
    );
    plane.wait_queue_empty(LIMIT, &agent2).await;
    plane.drain_events().await;
    assert!(plane.events_of("spot-1").iter().any(|e| matches!(
        e.kind,
        EventKind::TaskStarted { attempt: 2, .. }
    ) && e.instance_id == second));
    drop(agent1);

    // `lease download` finds both, under the two instances the agents ran on.
    let to = tmp.path().join("download");
    Cmd::new("lease", &plane.moto.env())
        .args([
            "download",
            "spot-1",
            "--partial",
            "--bucket",
            BUCKET,
            "--to",
        ])
        .arg(&to)
        .ok()
        .await;
    assert_eq!(
        std::fs::read(to.join("spot-1/final.txt")).unwrap(),
        b"final\n"
    );
    assert_eq!(
        std::fs::read(to.join("spot-1.attempt-1/part.txt")).unwrap(),
        b"partial\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_task_runs_once_then_ends_the_lease_as_on_complete_says() {
    let plane = Plane::new().await;
    let instance = plane
        .moto
        .run_instance(&[
            ("lease:managed", "true"),
            ("lease:ttl", "2h"),
            ("lease:on-complete", "stop"),
        ])
        .await;
    let imds = FakeImds::for_instance(plane.moto.ec2().await, &instance).await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let task = counted(
        "once-1",
        &runs,
        "mkdir -p out; echo done > out/r.txt; exit 2",
    );
    let yaml = serde_yaml_ng::to_string(&serde_json::json!({ "task": task })).unwrap();
    // No queue: the one task is all this node does.
    let dir = tmp.path().join("agent");
    let config: String = plane
        .agent_config(&dir, &yaml)
        .lines()
        .filter(|l| !l.starts_with("queue-url:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut agent = Agent::with_config(&plane.moto, &imds, &dir, &config, &[]);
    wait_until("the instance to be stopped", LIMIT, POLL, || async {
        let i = plane.moto.instance(&instance).await;
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string());
        matches!(state.as_deref(), Some("stopping" | "stopped")).then_some(())
    })
    .await;
    let tags: BTreeMap<String, String> = plane
        .moto
        .instance(&instance)
        .await
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(
        tags.get("lease:status").map(String::as_str),
        Some("failed"),
        "{}",
        agent.logs()
    );
    assert_eq!(plane.task_state("once-1").await.as_deref(), Some("failed"));
    let item = plane.task_item("once-1").await.unwrap();
    assert_eq!(item[records::task::EXIT_CODE].as_n().unwrap(), "2");
    assert_eq!(item[records::task::NODE_ID].as_s().unwrap(), &instance);
    // The agent ended the lease: its node is marked deregistered.
    wait_until("the node deregistered", LIMIT, POLL, || async {
        let node = plane
            .ddb
            .get_item()
            .table_name(NODES_TABLE)
            .key(records::NODE_ID, AttributeValue::S(instance.clone()))
            .send()
            .await
            .unwrap();
        let status = node
            .item()
            .and_then(|i| i.get(records::node::STATUS))
            .and_then(|v| v.as_s().ok())
            .cloned();
        (status.as_deref() == Some("deregistered")).then_some(())
    })
    .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "once-1"),
            &layout::manifest_key(&instance, "once-1"),
        )
        .await;
    assert_eq!(files.get("r.txt").map(Vec::as_slice), Some(&b"done\n"[..]));
    assert!(plane.object(&layout::log_key("once-1")).await.is_some());
    // A restart on the same state directory does not run it again.
    agent.kill_and_restart();
    wait_until("the restarted agent to start", LIMIT, POLL, || async {
        agent.logs().contains("has already run here").then_some(())
    })
    .await;
    assert_eq!(lines(&runs), 1, "{}", agent.logs());
}

/// 500 mock tasks through one agent against moto: tasks per second, printed and, with
/// `LEASE_BENCH_OUT` set, written there as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_is_stopped_reported_failed_and_its_output_kept() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "");
    let mut task = shell(
        "slow-1",
        "mkdir -p out; echo early > out/early.txt; sleep 120",
    );
    task.bundle = Some("out".into());
    task.timeout = Some("2s".parse().unwrap());
    plane.send(&task.to_json()).await;
    plane
        .wait_for_state("slow-1", "failed", LIMIT, &agent)
        .await;
    let item = plane.task_item("slow-1").await.unwrap();
    assert_eq!(
        item[records::task::REASON].as_s().unwrap(),
        "timed out after 2s"
    );
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "slow-1"),
            &layout::manifest_key(&instance, "slow-1"),
        )
        .await;
    assert_eq!(
        files.get("early.txt").map(Vec::as_slice),
        Some(&b"early\n"[..])
    );
    let failed = plane
        .wait_event("TaskFailed", LIMIT, |e| {
            e.type_name() == "TaskFailed" && task_of(e) == Some("slow-1")
        })
        .await;
    assert!(matches!(
        failed.kind,
        EventKind::TaskFailed { ref reason, bundle: Some(_), .. } if reason == "timed out after 2s"
    ));
    plane.wait_queue_empty(LIMIT, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stored_in_s3_runs_from_its_pointer() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "");
    let mut task = shell("big-1", "printf big > big.txt");
    task.bundle = None;
    plane
        .s3
        .put_object()
        .bucket(BUCKET)
        .key(layout::task_spec_key("big-1"))
        .body(task.to_json().into_bytes().into())
        .send()
        .await
        .unwrap();
    plane
        .send(&format!(
            r#"{{"v":1,"id":"big-1","spec_s3":"s3://{BUCKET}/{}"}}"#,
            layout::task_spec_key("big-1")
        ))
        .await;
    // A pointer to nothing goes to the dead-letter queue with its reason.
    plane
        .send(&format!(
            r#"{{"v":1,"id":"gone-1","spec_s3":"s3://{BUCKET}/tasks/gone-1.json"}}"#
        ))
        .await;
    // So does a pointer to an object that is not text: reading it again cannot help.
    plane
        .s3
        .put_object()
        .bucket(BUCKET)
        .key(layout::task_spec_key("binary-1"))
        .body(b"{\"v\":1,\"id\":\"binary-1\",\xff\xfe}".to_vec().into())
        .send()
        .await
        .unwrap();
    plane
        .send(&format!(
            r#"{{"v":1,"id":"binary-1","spec_s3":"s3://{BUCKET}/{}"}}"#,
            layout::task_spec_key("binary-1")
        ))
        .await;
    plane
        .wait_for_state("big-1", "complete", LIMIT, &agent)
        .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "big-1"),
            &layout::manifest_key(&instance, "big-1"),
        )
        .await;
    assert_eq!(files.get("big.txt").map(Vec::as_slice), Some(&b"big"[..]));
    wait_until("the two bad pointers in the DLQ", LIMIT, POLL, || async {
        (plane.queue_count(&plane.dlq_url).await == 2).then_some(())
    })
    .await;
    let reason = plane
        .wait_event("TaskFailed for binary-1", LIMIT, |e| {
            e.type_name() == "TaskFailed" && task_of(e) == Some("binary-1")
        })
        .await;
    assert!(
        matches!(reason.kind, EventKind::TaskFailed { ref reason, .. } if reason.contains("not UTF-8")),
        "{reason:?}"
    );
    plane.wait_queue_empty(LIMIT, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_at_the_deadline_is_requeued_before_it() {
    let mut plane = Plane::new().await;
    let instance = plane
        .moto
        .run_instance(&[("lease:managed", "true"), ("lease:ttl", "1h")])
        .await;
    let imds = FakeImds::for_instance(plane.moto.ec2().await, &instance).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut task = shell(
        "late-1",
        "mkdir -p out; echo partial > out/part.txt; sleep 120",
    );
    task.bundle = Some("out".into());
    let agent = plane.agent(&imds, tmp.path(), "drain-lead: 6s\n");
    plane.send(&task.to_json()).await;
    plane
        .wait_for_state("late-1", "running", LIMIT, &agent)
        .await;
    // The lease ends 10 s from now: the drain starts 6 s before that.
    let deadline = Utc::now() + TimeDelta::seconds(10);
    let ec2 = plane.moto.ec2().await;
    ec2.create_tags()
        .resources(&instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("lease:expires-at")
                .value(lease_common::tags::render_time(deadline))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let interrupted = plane
        .wait_event("TaskInterrupted", LIMIT, |e| {
            e.type_name() == "TaskInterrupted" && task_of(e) == Some("late-1")
        })
        .await;
    assert!(
        interrupted.at < deadline,
        "interrupted at {} for a deadline at {deadline}\n{}",
        interrupted.at,
        agent.logs()
    );
    let partial = plane
        .bundle(
            &layout::attempt_bundle_prefix(&instance, "late-1", 1),
            &layout::attempt_manifest_key(&instance, "late-1", 1),
        )
        .await;
    assert_eq!(
        partial.get("part.txt").map(Vec::as_slice),
        Some(&b"partial\n"[..])
    );
    // The requeued message carries attempt 2, and the instance still ends.
    let out = plane
        .sqs
        .receive_message()
        .queue_url(&plane.queue_url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let body = out.messages()[0].body().unwrap();
    assert_eq!(Task::parse(body).unwrap().attempt, 2);
    wait_until("the instance to end", LIMIT, POLL, || async {
        let i = plane.moto.instance(&instance).await;
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string());
        matches!(state.as_deref(), Some("shutting-down" | "terminated")).then_some(())
    })
    .await;
}

/// A FROM-scratch image holding one static program (tests/fixtures/docker-probe.c),
/// built with `docker import`; no registry involved.
fn probe_image() -> String {
    let image = "lease-worker-probe:test".to_string();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/docker-probe.c");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.path().join("probe"))
        .arg(src)
        .status()
        .expect("a C compiler (cc) builds the Docker test image's program");
    assert!(status.success(), "cc -static failed for {src}");
    let script = format!(
        "tar -C {} -c probe | docker import --change 'ENTRYPOINT [\"/probe\"]' - {image}",
        dir.path().display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Docker is required for this test and could not import the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_task_runs_through_the_worker() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(&imds, tmp.path(), "");
    let task = Task::new(
        "docker-1",
        TaskSpec::Docker(lease_common::messages::DockerSpec {
            image: probe_image(),
            args: vec!["write".into(), "0".into()],
            env: BTreeMap::from([("GREETING".to_string(), "hello from docker".to_string())]),
            gpus: None,
        }),
    );
    plane.send(&task.to_json()).await;
    plane
        .wait_for_state("docker-1", "complete", LIMIT, &agent)
        .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "docker-1"),
            &layout::manifest_key(&instance, "docker-1"),
        )
        .await;
    assert_eq!(
        files.get("hello.txt").map(Vec::as_slice),
        Some(&b"hello from docker\n"[..]),
        "{}",
        agent.logs()
    );
    plane
        .wait_event("TaskCompleted", LIMIT, |e| {
            e.type_name() == "TaskCompleted" && task_of(e) == Some("docker-1")
        })
        .await;
    plane
        .wait_event("the program's output", LIMIT, |e| {
            matches!(&e.kind, EventKind::TaskOutput { task_id, lines, .. }
                if task_id == "docker-1"
                    && lines.iter().any(|l| l.contains("greeting=hello from docker")))
        })
        .await;
    plane.wait_queue_empty(LIMIT, &agent).await;
}

/// The agent config in an instance's user-data, as the agent would parse it.
async fn user_data_config(plane: &Plane, id: &str) -> lease_common::config::AgentConfig {
    let ud = plane
        .moto
        .ec2()
        .await
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = ud.user_data().unwrap().value().unwrap();
    let text = String::from_utf8(aws_smithy_types::base64::decode(encoded).unwrap()).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    lease_common::config::AgentConfig::from_yaml(
        Path::new("user-data"),
        doc["write_files"][0]["content"].as_str().unwrap(),
    )
    .unwrap()
}

fn time_attr(item: &BTreeMap<String, AttributeValue>, name: &str) -> chrono::DateTime<Utc> {
    let text = item[name].as_s().unwrap();
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_launched_with_two_slots_runs_two_tasks_at_once() {
    let plane = Plane::new().await;
    let lease = || Cmd::new("lease", &plane.moto.env());
    // A bad count is refused, naming the flag, before anything is launched.
    for bad in ["0", "65", "two"] {
        let (code, err) = lease()
            .args(["launch", "-t", "t3.micro", "--slots", bad])
            .fails()
            .await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--slots"), "{err}");
    }
    // With an agent package to name: without one lease refuses to launch.
    let out = lease()
        .args(["launch", "-t", "t3.micro", "--slots", "2"])
        .args(["--agent-bucket", plane.moto.agent_packages().await])
        .ok()
        .await;
    let instance = out.trim().to_string();
    let config = user_data_config(&plane, &instance).await;
    assert_eq!(config.max_concurrent_tasks, 2);

    // That instance's agent, with the slots its user-data gives it.
    let imds = FakeImds::for_instance(plane.moto.ec2().await, &instance).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = plane.agent(
        &imds,
        tmp.path(),
        &format!("max-concurrent-tasks: {}\n", config.max_concurrent_tasks),
    );
    for id in ["slot-a", "slot-b"] {
        plane.send(&shell(id, "sleep 4").to_json()).await;
    }
    for id in ["slot-a", "slot-b"] {
        plane.wait_for_state(id, "complete", LIMIT, &agent).await;
    }
    // Read back from the records: each started before the other ended.
    let (a, b) = (
        plane.task_item("slot-a").await.unwrap(),
        plane.task_item("slot-b").await.unwrap(),
    );
    let (a_start, a_end) = (
        time_attr(&a, records::task::STARTED_AT),
        time_attr(&a, records::task::ENDED_AT),
    );
    let (b_start, b_end) = (
        time_attr(&b, records::task::STARTED_AT),
        time_attr(&b, records::task::ENDED_AT),
    );
    assert!(
        a_start < b_end && b_start < a_end,
        "slot-a ran {a_start}..{a_end}, slot-b {b_start}..{b_end}: not at once"
    );
    // The node registry says how many it runs at once, and `lease nodes` shows it.
    let node = plane
        .ddb
        .get_item()
        .table_name(NODES_TABLE)
        .key(records::NODE_ID, AttributeValue::S(instance.clone()))
        .send()
        .await
        .unwrap();
    let slots = node
        .item()
        .and_then(|i| i.get(records::node::SLOTS))
        .cloned();
    assert_eq!(
        slots,
        Some(AttributeValue::N("2".into())),
        "{}",
        agent.logs()
    );
    let nodes = lease()
        .args(["nodes", "--nodes-table", NODES_TABLE, "-o", "json"])
        .ok()
        .await;
    let rows: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance_id"] == instance.as_str())
        .unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(row["slots"], 2, "{nodes}");
}

/// A node frozen (SIGSTOP) past its claim wakes to find the task another's: its late
/// writes are refused, so the record stays the new holder's, and it stops its copy,
/// keeping what that copy made as a partial attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_claim_cannot_overwrite_the_node_that_took_over() {
    let mut plane = Plane::new().await;
    let (first, imds1) = plane.instance().await;
    let (second, imds2) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    // Claims of 6 s instead of 2 min, so the freeze outlasts one in seconds.
    let claim = [("LEASED_TEST_TASK_CLAIM".to_string(), "6s".to_string())];
    // Where the task (running as the task user) may leave it.
    let marker = shared_dir(tmp.path()).join("first-copy-started");
    let mut task = shell(
        "frozen-1",
        // The first copy waits long past any freeze; the second (the marker is there)
        // finishes at once.
        &format!(
            "mkdir -p out; echo started > out/started.txt; \
             if [ -e '{m}' ]; then echo finished > out/finished.txt; exit 0; fi; \
             touch '{m}'; sleep 120; echo finished > out/finished.txt",
            m = marker.display()
        ),
    );
    task.bundle = Some("out".into());
    let agent1 = plane.agent_with(&imds1, &tmp.path().join("a1"), "", &claim);
    plane.send(&task.to_json()).await;
    // Frozen once its copy runs (the record says `running` from the claim on, a moment
    // before the program starts).
    wait_until("the first copy to start", LIMIT, POLL, || async {
        marker.exists().then_some(())
    })
    .await;
    agent1.signal("-STOP");
    let agent2 = plane.agent_with(&imds2, &tmp.path().join("a2"), "", &claim);
    let node_of = |item: &BTreeMap<String, AttributeValue>| {
        item.get(records::task::NODE_ID)
            .and_then(|v| v.as_s().ok())
            .cloned()
    };
    wait_until("the second node's claim", LIMIT, POLL, || async {
        let item = plane.task_item("frozen-1").await?;
        (node_of(&item)? == second).then_some(())
    })
    .await;
    agent1.signal("-CONT");

    let interrupted = plane
        .wait_event("the first node's TaskInterrupted", LIMIT, |e| {
            e.type_name() == "TaskInterrupted" && task_of(e) == Some("frozen-1")
        })
        .await;
    assert_eq!(interrupted.instance_id, first, "{}", agent1.logs());
    assert!(
        matches!(&interrupted.kind, EventKind::TaskInterrupted { reason, attempt: 1, .. }
            if reason.contains("claim lost") && reason.contains(&second)),
        "{interrupted:?}"
    );
    // Its copy was stopped before it finished; what it made is a partial attempt.
    let partial = plane
        .bundle(
            &layout::attempt_bundle_prefix(&first, "frozen-1", 1),
            &layout::attempt_manifest_key(&first, "frozen-1", 1),
        )
        .await;
    assert_eq!(
        partial.keys().collect::<Vec<_>>(),
        ["started.txt"],
        "{}",
        agent1.logs()
    );
    // The record is still the second node's, and it finishes there.
    let item = plane.task_item("frozen-1").await.unwrap();
    assert_eq!(node_of(&item).as_deref(), Some(second.as_str()));
    // (running, or already complete: the second copy finishes at once)
    let state = item[records::task::STATE].as_s().unwrap().clone();
    assert!(["running", "complete"].contains(&state.as_str()), "{state}");
    plane
        .wait_for_state("frozen-1", "complete", LIMIT, &agent2)
        .await;
    let item = plane.task_item("frozen-1").await.unwrap();
    assert_eq!(node_of(&item).as_deref(), Some(second.as_str()));
    assert_eq!(
        item[records::task::INSTANCE_ID].as_s().unwrap(),
        &second,
        "{}",
        agent1.logs()
    );
    let files = plane
        .bundle(
            &layout::bundle_prefix(&second, "frozen-1"),
            &layout::manifest_key(&second, "frozen-1"),
        )
        .await;
    assert!(files.contains_key("finished.txt"), "{files:?}");
    assert!(
        plane
            .keys(&format!("jobs/{first}/frozen-1/bundle/"))
            .await
            .is_empty()
    );
    plane.wait_queue_empty(LIMIT, &agent2).await;
    plane.drain_events().await;
    let ends: Vec<&str> = plane
        .events_of("frozen-1")
        .iter()
        .filter(|e| matches!(e.type_name(), "TaskCompleted" | "TaskFailed"))
        .map(|e| e.instance_id.as_str())
        .collect();
    assert_eq!(ends, [second.as_str()], "only the holder reports an end");
}

/// Shell and Docker tasks see who they are in `LEASE_*` variables, and run as the task
/// user; read back from their bundles in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_know_who_they_are_from_their_environment() {
    let plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let agent = plane.agent(
        &imds,
        &dir,
        "max-concurrent-tasks: 2\nnode-id: node-7\ntask-env:\n  FROM_THE_STACK: yes please\n",
    );
    let shell_task = shell(
        "env-shell",
        "env | grep -E '^(LEASE_|FROM_THE_STACK=)' | sort > env.txt; id -un > user.txt",
    );
    let docker_task = Task::new(
        "env-docker",
        TaskSpec::Docker(lease_common::messages::DockerSpec {
            image: probe_image(),
            args: vec!["env".into()],
            env: BTreeMap::new(),
            gpus: None,
        }),
    );
    plane.send(&shell_task.to_json()).await;
    plane.send(&docker_task.to_json()).await;
    let read = |files: &BTreeMap<String, Vec<u8>>, name: &str| {
        String::from_utf8(files.get(name).cloned().unwrap_or_default()).unwrap()
    };
    for (id, bundle_dir) in [
        (
            "env-shell",
            leased::work::statefile::workdir(&dir.join("state"), "env-shell")
                .display()
                .to_string(),
        ),
        ("env-docker", "/out".to_string()),
    ] {
        plane.wait_for_state(id, "complete", LIMIT, &agent).await;
        let files = plane
            .bundle(
                &layout::bundle_prefix(&instance, id),
                &layout::manifest_key(&instance, id),
            )
            .await;
        let env = read(&files, "env.txt");
        let mut want = vec![
            format!("LEASE_ATTEMPT=1"),
            format!("LEASE_BUNDLE_DIR={bundle_dir}"),
            format!("LEASE_INSTANCE_ID={instance}"),
            format!("LEASE_NODE_ID=node-7"),
            format!("LEASE_TASK_ID={id}"),
        ];
        if id == "env-shell" {
            want.insert(0, "FROM_THE_STACK=yes please".to_string());
        }
        let mut got: Vec<&str> = env.lines().collect();
        got.sort_unstable();
        want.sort();
        assert_eq!(got, want, "{id}: {env}\n{}", agent.logs());
    }
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "env-shell"),
            &layout::manifest_key(&instance, "env-shell"),
        )
        .await;
    assert_eq!(
        read(&files, "user.txt").trim(),
        lease_common::session::DEFAULT_TASK_USER
    );
}
