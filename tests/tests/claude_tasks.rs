//! Claude tasks through the agent with the real Claude Code CLI: the real `leased`
//! against moto, real tmux, the task user, and the fake Messages API. Each scenario is
//! checked in the task record, the events on a queue subscribed to the control bus,
//! and the bundle and log in S3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lease_common::messages::{ClaudeSpec, Event, EventKind, Task, TaskSpec};
use lease_common::{HumanDuration, layout, records};
use lease_tests::anthropic::{FakeAnthropic, GOOD_KEY, Reply, Route};
use lease_tests::plane::Plane;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);

fn claude_task(id: &str, prompt: &str) -> (Task, ClaudeSpec) {
    let spec = ClaudeSpec {
        prompt: prompt.into(),
        model: None,
        permission_mode: None,
        allowed_tools: Vec::new(),
        max_turns: None,
    };
    (Task::new(id, TaskSpec::Claude(spec.clone())), spec)
}

fn task(id: &str, prompt: &str, edit: impl FnOnce(&mut ClaudeSpec)) -> Task {
    let (mut t, mut spec) = claude_task(id, prompt);
    edit(&mut spec);
    t.spec = TaskSpec::Claude(spec);
    t
}

/// The agent's config: the CLI pointed at the fake with `key`, few retries.
fn agent_config(fake: &FakeAnthropic, key: &str, slots: u32) -> String {
    let mut yaml = format!("max-concurrent-tasks: {slots}\ntask-env:\n");
    for (k, v) in fake.claude_env(key, 2) {
        yaml.push_str(&format!("  {k}: {v:?}\n"));
    }
    yaml
}

fn workdir(agent_dir: &Path, id: &str) -> std::path::PathBuf {
    leased::work::statefile::workdir(&agent_dir.join("state"), id)
}

fn text(item: &BTreeMap<String, AttributeValue>, key: &str) -> String {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// Everything the bus carried for `id`: its output lines and its final event.
async fn outcome(plane: &mut Plane, id: &str) -> (Vec<String>, Event) {
    let end = plane
        .wait_event("the task's end", LIMIT, |e| match &e.kind {
            EventKind::TaskCompleted { task_id, .. } => task_id == id,
            EventKind::TaskFailed { task_id, .. } => task_id.as_deref() == Some(id),
            _ => false,
        })
        .await;
    plane.drain_events().await;
    let lines = plane
        .events_of(id)
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskOutput { lines, .. } => Some(lines.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    (lines, end)
}

/// Prints a scenario's final event and record (shown with `--nocapture`), for the
/// record of what each scenario ended as.
async fn show(plane: &Plane, id: &str, end: &Event) {
    let item = plane.task_item(id).await.unwrap_or_default();
    let record: BTreeMap<&str, String> = [
        records::task::STATE,
        records::task::EXIT_CODE,
        records::task::REASON,
    ]
    .iter()
    .filter_map(|k| {
        item.get(*k).map(|v| {
            (
                *k,
                v.as_s().or_else(|_| v.as_n()).cloned().unwrap_or_default(),
            )
        })
    })
    .collect();
    eprintln!(
        "scenario {id}:\n  event: {:?}\n  record: {record:?}",
        end.kind
    );
}

async fn log_of(plane: &Plane, id: &str) -> String {
    String::from_utf8(plane.object(&layout::log_key(id)).await.expect("log in S3")).unwrap()
}

/// Scenarios 1, 2, 4, 5 and 6 of the issue on one agent, side by side: each session
/// finds its script by the marker word in its prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_sessions_end_as_the_cli_reports_them() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let write_path = workdir(&dir, "cl-write").join("hello.txt");
    let bash = |file: &str| json!({"command": format!("echo ran > {file}"), "description": "write a file"});
    let fake = FakeAnthropic::with_routes(vec![
        Route::new(
            "scenario-write",
            vec![
                Reply::tool(
                    "Write",
                    json!({"file_path": write_path, "content": "hello from claude\n"}),
                ),
                Reply::text("I wrote hello.txt."),
            ],
        ),
        Route::new(
            "scenario-turns",
            vec![
                Reply::tool("Bash", bash("turns.txt")),
                Reply::text("unreachable"),
            ],
        ),
        Route::always("scenario-500", Reply::error(500)),
        Route::new(
            "scenario-denied",
            vec![
                Reply::tool("Bash", bash("denied.txt")),
                Reply::text("Bash was refused."),
            ],
        ),
        Route::new(
            "scenario-bypass",
            vec![
                Reply::tool("Bash", bash("bypass.txt")),
                Reply::text("Ran it."),
            ],
        ),
    ])
    .await;
    let agent = plane.agent(&imds, &dir, &agent_config(&fake, GOOD_KEY, 5));
    for t in [
        task("cl-write", "scenario-write: write hello.txt", |s| {
            s.permission_mode = Some("acceptEdits".into());
        }),
        task("cl-turns", "scenario-turns: run a command", |s| {
            s.max_turns = Some(1);
        }),
        task("cl-500", "scenario-500: say hello", |_| {}),
        task("cl-denied", "scenario-denied: run a command", |s| {
            s.allowed_tools = vec!["Read".into()];
        }),
        task("cl-bypass", "scenario-bypass: run a command", |s| {
            s.permission_mode = Some("bypassPermissions".into());
        }),
    ] {
        plane.send(&t.to_json()).await;
    }

    // (1) The Write tool made a file, which is in the bundle; TaskCompleted carries
    // the result, the cost and the turns.
    let (lines, end) = outcome(&mut plane, "cl-write").await;
    plane
        .wait_for_state("cl-write", "complete", LIMIT, &agent)
        .await;
    show(&plane, "cl-write", &end).await;
    match &end.kind {
        EventKind::TaskCompleted {
            result,
            cost_usd,
            turns,
            permission_denials,
            ..
        } => {
            assert_eq!(result.as_deref(), Some("I wrote hello.txt."));
            assert!(cost_usd.is_some_and(|c| c > 0.0), "{end:?}");
            assert_eq!(*turns, Some(2));
            assert!(permission_denials.is_empty());
        }
        other => panic!("{other:?}\n{}", agent.logs()),
    }
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "cl-write"),
            &layout::manifest_key(&instance, "cl-write"),
        )
        .await;
    assert_eq!(
        files.get("hello.txt").map(Vec::as_slice),
        Some(&b"hello from claude\n"[..])
    );
    // Every output event arrived: `seq` counts 0, 1, 2, … without gaps or repeats
    // (the bus may reorder them).
    let mut seqs: Vec<u64> = plane
        .events_of("cl-write")
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskOutput { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        plane
            .events_of("cl-write")
            .iter()
            .any(|e| matches!(e.kind, EventKind::TaskStarted { attempt: 1, .. }))
    );
    let shown = lines.join("\n");
    assert!(shown.contains("[tool] Write: "), "{shown}");
    assert!(shown.contains("I wrote hello.txt."), "{shown}");
    assert!(shown.contains("[result] success, 2 turns"), "{shown}");
    // What the CLI sent: our key, streaming, with the prompt.
    let sent = fake.requests_of("scenario-write");
    assert!(
        sent.iter()
            .any(|r| r.conversation && r.body["stream"] == true),
        "{sent:?}"
    );

    // (2) The turn limit: failed, and the reason names it.
    let (_, end) = outcome(&mut plane, "cl-turns").await;
    plane
        .wait_for_state("cl-turns", "failed", LIMIT, &agent)
        .await;
    show(&plane, "cl-turns", &end).await;
    let EventKind::TaskFailed {
        reason, exit_code, ..
    } = &end.kind
    else {
        panic!("{end:?}");
    };
    assert!(reason.contains("maximum number of turns (1)"), "{reason}");
    assert!(reason.contains("error_max_turns"), "{reason}");
    assert_eq!(*exit_code, Some(1));
    let item = plane.task_item("cl-turns").await.unwrap();
    assert_eq!(text(&item, records::task::REASON), *reason);

    // (4) A 500 from the API: failed with the status, the retries in the log.
    let (lines, end) = outcome(&mut plane, "cl-500").await;
    plane
        .wait_for_state("cl-500", "failed", LIMIT, &agent)
        .await;
    show(&plane, "cl-500", &end).await;
    let EventKind::TaskFailed { reason, .. } = &end.kind else {
        panic!("{end:?}");
    };
    assert!(reason.contains("API status 500"), "{reason}");
    assert!(reason.contains("API Error: 500"), "{reason}");
    let shown = lines.join("\n");
    assert!(shown.contains("[claude] API error (status 500"), "{shown}");
    assert!(shown.contains("[claude error] API Error: 500"), "{shown}");
    let item = plane.task_item("cl-500").await.unwrap();
    assert!(text(&item, records::task::REASON).contains("API status 500"));

    // (5) A tool the task did not allow: completed, the denial reported, not run.
    let (lines, end) = outcome(&mut plane, "cl-denied").await;
    plane
        .wait_for_state("cl-denied", "complete", LIMIT, &agent)
        .await;
    show(&plane, "cl-denied", &end).await;
    let EventKind::TaskCompleted {
        permission_denials, ..
    } = &end.kind
    else {
        panic!("{end:?}");
    };
    assert_eq!(permission_denials, &["Bash".to_string()]);
    assert!(
        lines
            .iter()
            .any(|l| l == "[result] permission denied for: Bash"),
        "{lines:?}"
    );
    assert!(
        plane
            .keys(&layout::bundle_prefix(&instance, "cl-denied"))
            .await
            .iter()
            .all(|k| !k.ends_with("denied.txt"))
    );

    // (6) bypassPermissions: the tool ran (as the task user: Claude Code refuses
    // this mode as root).
    let (_, end) = outcome(&mut plane, "cl-bypass").await;
    plane
        .wait_for_state("cl-bypass", "complete", LIMIT, &agent)
        .await;
    show(&plane, "cl-bypass", &end).await;
    assert!(
        matches!(end.kind, EventKind::TaskCompleted { .. }),
        "{end:?}"
    );
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "cl-bypass"),
            &layout::manifest_key(&instance, "cl-bypass"),
        )
        .await;
    assert_eq!(
        files.get("bypass.txt").map(Vec::as_slice),
        Some(&b"ran\n"[..])
    );
}

/// (3) A key the API refuses: failed, the reason names the invalid key, and the
/// CLI's retries are in the log as they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_fails_the_task_with_its_retries_in_the_log() {
    let mut plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeAnthropic::start(vec![Reply::text("never")]).await;
    let agent = plane.agent(
        &imds,
        &tmp.path().join("agent"),
        &agent_config(&fake, "sk-ant-not-a-valid-key", 1),
    );
    let (t, _) = claude_task("cl-401", "Say hello");
    plane.send(&t.to_json()).await;
    let (lines, end) = outcome(&mut plane, "cl-401").await;
    plane
        .wait_for_state("cl-401", "failed", LIMIT, &agent)
        .await;
    show(&plane, "cl-401", &end).await;
    let EventKind::TaskFailed { reason, .. } = &end.kind else {
        panic!("{end:?}");
    };
    assert!(reason.contains("Invalid API key"), "{reason}");
    assert!(reason.contains("API status 401"), "{reason}");
    let retries: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("[claude] API error (status 401, authentication_failed)"))
        .collect();
    assert_eq!(retries.len(), 2, "{lines:?}");
    let log = log_of(&plane, "cl-401").await;
    assert!(log.contains("\"subtype\":\"api_retry\""), "{log}");
    let item = plane.task_item("cl-401").await.unwrap();
    assert_eq!(text(&item, records::task::REASON), *reason);
    assert!(fake.requests().iter().all(|r| r.status == 401));
}

/// (7) The API stalls mid-answer past the task's timeout: failed as a timeout, with
/// what the session did before it (a file, the log) kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_times_out_and_keeps_its_partial_output() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let draft = workdir(&dir, "cl-stall").join("draft.txt");
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Write",
            json!({"file_path": draft, "content": "first draft\n"}),
        ),
        Reply::Stall {
            text: "Now the second part".into(),
        },
    ])
    .await;
    let agent = plane.agent(&imds, &dir, &agent_config(&fake, GOOD_KEY, 1));
    let mut t = task("cl-stall", "Write a draft, then more", |s| {
        s.permission_mode = Some("acceptEdits".into());
    });
    t.timeout = Some(HumanDuration::from_secs(15));
    plane.send(&t.to_json()).await;
    let (lines, end) = outcome(&mut plane, "cl-stall").await;
    plane
        .wait_for_state("cl-stall", "failed", LIMIT, &agent)
        .await;
    show(&plane, "cl-stall", &end).await;
    let EventKind::TaskFailed { reason, .. } = &end.kind else {
        panic!("{end:?}");
    };
    assert!(reason.starts_with("timed out after 15s"), "{reason}");
    assert!(
        lines.iter().any(|l| l.starts_with("[tool] Write: ")),
        "{lines:?}"
    );
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "cl-stall"),
            &layout::manifest_key(&instance, "cl-stall"),
        )
        .await;
    assert_eq!(
        files.get("draft.txt").map(Vec::as_slice),
        Some(&b"first draft\n"[..])
    );
    let item = plane.task_item("cl-stall").await.unwrap();
    assert_eq!(text(&item, records::task::REASON), *reason);
}

/// Bedrock mode through the agent: `claude.bedrock: true` gives the CLI
/// `CLAUDE_CODE_USE_BEDROCK=1` and the region; it signs with SigV4 and streams from
/// `invoke-with-response-stream` in Bedrock's event-stream framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_session_completes_through_the_agent() {
    let mut plane = Plane::new().await;
    let (instance, imds) = plane.instance().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let file = workdir(&dir, "cl-bedrock").join("bedrock.txt");
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Write",
            json!({"file_path": file, "content": "via bedrock\n"}),
        ),
        Reply::text("Written through Bedrock."),
    ])
    .await;
    let mut yaml = "claude:\n  bedrock: true\ntask-env:\n".to_string();
    for (k, v) in fake.bedrock_env(2) {
        yaml.push_str(&format!("  {k}: {v:?}\n"));
    }
    let agent = plane.agent(&imds, &dir, &yaml);
    let t = task("cl-bedrock", "Write bedrock.txt", |s| {
        s.permission_mode = Some("acceptEdits".into());
    });
    plane.send(&t.to_json()).await;
    let (_, end) = outcome(&mut plane, "cl-bedrock").await;
    plane
        .wait_for_state("cl-bedrock", "complete", LIMIT, &agent)
        .await;
    show(&plane, "cl-bedrock", &end).await;
    let EventKind::TaskCompleted { result, .. } = &end.kind else {
        panic!("{end:?}\n{}", agent.logs());
    };
    assert_eq!(result.as_deref(), Some("Written through Bedrock."));
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "cl-bedrock"),
            &layout::manifest_key(&instance, "cl-bedrock"),
        )
        .await;
    assert_eq!(
        files.get("bedrock.txt").map(Vec::as_slice),
        Some(&b"via bedrock\n"[..])
    );
    // Every conversation request went to Bedrock's streaming action, signed.
    let sent: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.conversation)
        .collect();
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|r| r.sigv4 && r.path.ends_with("/invoke-with-response-stream")),
        "{sent:?}"
    );
}

/// `claude.api-key-parameter`: the key is read from SSM with the agent's credentials
/// when each Claude task starts (never in the config or user-data); a parameter that
/// cannot be read fails the task, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_ssm_parameter() {
    let mut plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    let ssm = aws_sdk_ssm::Client::new(&plane.moto.sdk_config().await);
    // The stack's key parameter, as `lease setup --claude-auth api-key` grants it.
    let name = lease_common::stack::Stack::new("main")
        .unwrap()
        .anthropic_key_parameter();
    let name = name.as_str();
    ssm.put_parameter()
        .name(name)
        .value(GOOD_KEY)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeAnthropic::start(vec![Reply::text("Hello with the stored key.")]).await;
    let mut yaml = format!("claude:\n  api-key-parameter: {name}\ntask-env:\n");
    for (k, v) in fake.claude_env("", 2) {
        if k != "ANTHROPIC_API_KEY" {
            yaml.push_str(&format!("  {k}: {v:?}\n"));
        }
    }
    assert!(!yaml.contains(GOOD_KEY));
    let agent = plane.agent(&imds, &tmp.path().join("agent"), &yaml);
    let (t, _) = claude_task("cl-ssm", "Say hello");
    plane.send(&t.to_json()).await;
    let (_, end) = outcome(&mut plane, "cl-ssm").await;
    plane
        .wait_for_state("cl-ssm", "complete", LIMIT, &agent)
        .await;
    show(&plane, "cl-ssm", &end).await;
    assert!(
        matches!(&end.kind, EventKind::TaskCompleted { result, .. }
            if result.as_deref() == Some("Hello with the stored key.")),
        "{end:?}"
    );
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.api_key.as_deref() == Some(GOOD_KEY))
    );

    ssm.delete_parameter().name(name).send().await.unwrap();
    let (t, _) = claude_task("cl-ssm-gone", "Say hello");
    plane.send(&t.to_json()).await;
    let (_, end) = outcome(&mut plane, "cl-ssm-gone").await;
    plane
        .wait_for_state("cl-ssm-gone", "failed", LIMIT, &agent)
        .await;
    show(&plane, "cl-ssm-gone", &end).await;
    let EventKind::TaskFailed { reason, .. } = &end.kind else {
        panic!("{end:?}");
    };
    assert!(
        reason.contains(name) && reason.contains("API key"),
        "{reason}"
    );
}
