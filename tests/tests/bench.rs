//! Benchmarks of the agent (issue 7): each prints its figures and, when
//! `LEASE_BENCH_OUT` names a directory, writes them to `<name>.json` there for
//! tests/bench/run's table. Ignored in the test run: figures are measured, never
//! asserted. Run one with
//! `cargo test --workspace --release --test bench -- --ignored --nocapture NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_common::messages::{Event, EventKind};
use lease_common::tags;
use lease_tests::agent::{Agent, POLL};
use lease_tests::plane::{Plane, shell};
use lease_tests::procfs::{self, cpu_seconds};
use lease_tests::recorder::Recorder;
use lease_tests::{Cmd, FakeImds, Moto, wait_until};
use serde_json::json;

fn write_figures(name: &str, figures: &serde_json::Value) {
    eprintln!("BENCH {name}: {figures}");
    if let Some(dir) = std::env::var_os("LEASE_BENCH_OUT") {
        let path = std::path::Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(figures).unwrap()).unwrap();
    }
}

/// `dist/leased`: which build was measured.
fn binary_name() -> String {
    let path = lease_tests::bin_path("leased");
    let profile = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{profile}/leased")
}

/// Nearest-rank percentile of `xs` (sorted here), p in 0..=100.
fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank - 1]
}

async fn launch(moto: &Moto, ttl: &str) -> String {
    let agents = moto.agent_packages().await;
    let out = Cmd::new("lease", &moto.env())
        .args([
            "launch",
            "--instance-type",
            "t3.micro",
            "--yes",
            "--ttl",
            ttl,
            // Without an agent package lease refuses to launch.
            "--agent-bucket",
            agents,
        ])
        .ok()
        .await;
    out.lines()
        .find(|l| l.starts_with("i-"))
        .unwrap_or_else(|| panic!("lease launch printed {out:?}"))
        .to_string()
}

/// The deadline as ARCHITECTURE.md defines it, from what moto holds.
async fn deadline(moto: &Moto, id: &str) -> DateTime<Utc> {
    let i = moto.instance(id).await;
    let launched = DateTime::<Utc>::from_timestamp(i.launch_time().unwrap().secs(), 0);
    let t = i
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    tags::LeaseTags::from_map(&t)
        .unwrap()
        .deadline(launched)
        .unwrap()
}

/// Issue 7, item 2: from the lease's deadline to the agent's TerminateInstances call,
/// timed by a proxy in front of the emulator (not by the agent's own log), 20 trials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn deadline_to_terminate() {
    let trials: usize = std::env::var("LEASE_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let moto = Moto::start();
    let recorder = Recorder::start(&moto.endpoint).await;
    let mut late_ms = Vec::new();
    for trial in 0..trials {
        let id = launch(&moto, "4s").await;
        let deadline = deadline(&moto, &id).await;
        let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start_with_env(
            &moto,
            &imds,
            dir.path(),
            "",
            &[("AWS_ENDPOINT_URL", recorder.endpoint())],
        );
        let call = wait_until(
            &format!("trial {trial}: TerminateInstances for {id}"),
            Duration::from_secs(30),
            POLL,
            || async {
                recorder
                    .calls("TerminateInstances")
                    .into_iter()
                    .find(|c| c.body.contains(&id))
            },
        )
        .await;
        let late = (call.at - deadline).num_microseconds().unwrap() as f64 / 1000.0;
        eprintln!("trial {trial}: terminate {late:.1} ms after the deadline");
        late_ms.push(late);
        drop(agent);
    }
    write_figures(
        "deadline_to_terminate",
        &json!({
            "trials": trials,
            "p50_ms": percentile(&late_ms, 50.0),
            "p99_ms": percentile(&late_ms, 99.0),
            "min_ms": percentile(&late_ms, 0.0),
            "max_ms": percentile(&late_ms, 100.0),
            "target_p99_ms": 1000.0,
        }),
    );
}

/// Issue 7, item 3: resident memory and CPU of an idle agent over 60 s with 1 s spot
/// polling and production tag refreshes, and the token PUTs IMDS saw in that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn idle_footprint() {
    let moto = Moto::start();
    let id = launch(&moto, "1h").await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &moto,
        &imds,
        dir.path(),
        "tag-refresh-interval: 30s\nspot-poll-interval: 1s\n",
    );
    agent.ready().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = agent.child.id();
    let status_kb = |field: &str| procfs::status_kb(&pid.to_string(), field).unwrap();
    let rss_kb = || status_kb("VmRSS:");
    // Resident memory with shared pages shared out (PSS) and left out (USS).
    let rollup_kb = |fields: &[&str]| -> u64 {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        rollup
            .lines()
            .filter(|l| fields.iter().any(|f| l.starts_with(f)))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let puts_before = imds.token_puts();
    let requests_before = imds.requests();
    let (t0, c0) = (Instant::now(), cpu_seconds(pid));
    let mut max_rss = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_rss = max_rss.max(rss_kb());
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - c0) / secs * 100.0;
    write_figures(
        "idle_footprint",
        &json!({
            "window_s": secs,
            "rss_kb": rss_kb(),
            "max_rss_kb": max_rss,
            // What the resident memory is made of: the program's own pages (code,
            // read-only data, shared libraries) and its heap and stacks.
            "rss_file_kb": status_kb("RssFile:"),
            "rss_anon_kb": status_kb("RssAnon:"),
            "pss_kb": rollup_kb(&["Pss:"]),
            "uss_kb": rollup_kb(&["Private_Clean:", "Private_Dirty:"]),
            "cpu_percent_of_core": cpu,
            "token_puts_in_window": imds.token_puts() - puts_before,
            "token_puts_since_start": imds.token_puts(),
            "imds_requests_in_window": imds.requests() - requests_before,
            // The profile directory and name only: no path of the machine it ran on.
            "binary": binary_name(),
            "target_rss_kb": 10_000,
            "target_cpu_percent": 0.5,
        }),
    );
}

/// Issue 7, item 1: a spot interruption notice in IMDS while a task runs → the
/// `SpotInterruption` event at a subscriber of the control bus (an SQS queue, polled
/// every 20 ms), and → the task's message visible again (the agent's SendMessage of
/// attempt 2, timed at a proxy in front of the emulator). 20 trials, the notice set at
/// evenly spread phases of the agent's once-a-second poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn spot_notice() {
    let trials: usize = std::env::var("LEASE_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut plane = Plane::new().await;
    let recorder = Recorder::start(&plane.moto.endpoint).await;
    let (mut event_ms, mut requeue_ms) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let (id, imds) = plane.instance().await;
        let dir = tempfile::tempdir().unwrap();
        let env = [(
            "AWS_ENDPOINT_URL".to_string(),
            recorder.endpoint().to_string(),
        )];
        let agent = plane.agent_with(&imds, dir.path(), "", &env);
        let task_id = format!("spot-bench-{trial:03}-task");
        plane.send(&shell(&task_id, "sleep 600").to_json()).await;
        wait_until(
            &format!("trial {trial}: task running"),
            Duration::from_secs(60),
            POLL,
            || async {
                (plane.task_state(&task_id).await.as_deref() == Some("running")).then_some(())
            },
        )
        .await;
        plane.drain_events().await;
        // The notice lands at a phase of the agent's 1 s poll spread evenly over the
        // trials. Without this the trials share one phase: the task starts just after a
        // poll (both follow the emulator's 1 s long-poll steps), and every trial would
        // measure the worst case.
        let phase = Duration::from_millis((trial * 1000 / trials) as u64);
        tokio::time::sleep(phase).await;
        let injected_at = Utc::now();
        let injected = Instant::now();
        imds.set_spot_action("terminate", injected_at + chrono::TimeDelta::minutes(2));
        let (mut event, mut requeue) = (None, None);
        while event.is_none() || requeue.is_none() {
            assert!(
                injected.elapsed() < Duration::from_secs(30),
                "trial {trial}: event {event:?}, requeue {requeue:?}\n{}",
                agent.logs()
            );
            if event.is_none() {
                plane.drain_events().await;
                if plane
                    .seen
                    .iter()
                    .any(|e| e.instance_id == id && e.type_name() == "SpotInterruption")
                {
                    event = Some(injected.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if requeue.is_none()
                && let Some(c) = recorder
                    .calls("SendMessage")
                    .into_iter()
                    .find(|c| c.at >= injected_at && c.body.contains(&task_id))
            {
                requeue = Some((c.at - injected_at).num_microseconds().unwrap() as f64 / 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (e, r) = (event.unwrap(), requeue.unwrap());
        eprintln!(
            "trial {trial}: SpotInterruption received {e:.0} ms, task visible again {r:.0} ms after the notice"
        );
        event_ms.push(e);
        requeue_ms.push(r);
        drop(agent);
        // The requeued attempt must not reach the next trial's agent.
        loop {
            let out = plane
                .sqs
                .receive_message()
                .queue_url(&plane.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            if out.messages().is_empty() {
                break;
            }
            for m in out.messages() {
                plane
                    .sqs
                    .delete_message()
                    .queue_url(&plane.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    write_figures(
        "spot_notice",
        &json!({
            "trials": trials,
            "event_p50_ms": percentile(&event_ms, 50.0),
            "event_p99_ms": percentile(&event_ms, 99.0),
            "requeue_p50_ms": percentile(&requeue_ms, 50.0),
            "requeue_p99_ms": percentile(&requeue_ms, 99.0),
            "target_p99_ms": 1500.0,
        }),
    );
}

/// A subscriber of the control bus, as a dashboard would be: it receives and deletes
/// the events queue's messages while a benchmark runs (an unread queue would make the
/// emulator's every delivery to it slower as it grows) and keeps the ids of the tasks
/// whose `TaskCompleted` it saw.
struct Subscriber {
    completed: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    fn start(sqs: aws_sdk_sqs::Client, url: String) -> Self {
        let completed =
            std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let seen = completed.clone();
        let task = tokio::spawn(async move {
            loop {
                let out = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .unwrap();
                let mut delete = sqs.delete_message_batch().queue_url(&url);
                for (i, m) in out.messages().iter().enumerate() {
                    let event = Event::parse(m.body().unwrap()).unwrap();
                    if let EventKind::TaskCompleted { task_id, .. } = event.kind {
                        seen.lock().unwrap().insert(task_id);
                    }
                    delete = delete.entries(
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(format!("d{i}"))
                            .receipt_handle(m.receipt_handle().unwrap())
                            .build()
                            .unwrap(),
                    );
                }
                if !out.messages().is_empty() {
                    delete.send().await.unwrap();
                }
            }
        });
        Self { completed, task }
    }

    fn count(&self) -> usize {
        self.completed.lock().unwrap().len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends tasks `bench-<from>` … `bench-<to - 1>` in batches of ten.
async fn send_tasks(plane: &Plane, from: usize, to: usize) {
    for chunk in (from..to).step_by(10) {
        let mut batch = plane.sqs.send_message_batch().queue_url(&plane.queue_url);
        for n in chunk..(chunk + 10).min(to) {
            batch = batch.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{n}"))
                    .message_body(shell(&format!("bench-{n}"), "true").to_json())
                    .build()
                    .unwrap(),
            );
        }
        batch.send().await.unwrap();
    }
}

/// Issue 7, item 6: mock tasks (the whole pipeline: receive, claim, events, log and
/// bundle upload, record, delete; no program) through one agent, 500 tasks, timed from
/// the agent's start to the last `TaskCompleted` at a subscriber of the bus.
///
/// `backlog`: tasks queued and not yet completed, at most. The emulator's receive
/// costs grow with the square of the messages in the queue (every message handed out
/// re-counts the queue), so 500 tasks queued at once measure mostly that; a stream
/// that keeps the queue at five times the slots measures the agent.
async fn mock_tasks(name: &str, backlog: usize) {
    // Mock tasks cost the machine nothing: the figure is the pipeline's (and the
    // emulator's), so the slots are many.
    const CONCURRENCY: u32 = 20;
    // LEASE_BENCH_TASKS: fewer (or more) for a quick look.
    let tasks: usize = std::env::var("LEASE_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let backlog = backlog.min(tasks);
    let plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    send_tasks(&plane, 0, backlog).await;
    let tmp = tempfile::tempdir().unwrap();
    // The agent's calls pass a proxy that counts them: the emulator's work per task is
    // what this figure is made of.
    let recorder = Recorder::start(&plane.moto.endpoint).await;
    let env = [(
        "AWS_ENDPOINT_URL".to_string(),
        recorder.endpoint().to_string(),
    )];
    let completed = Subscriber::start(plane.sqs.clone(), plane.events_url.clone());
    let moto_cpu = cpu_seconds(plane.moto.pid());
    let started = Instant::now();
    let agent = plane.agent_with(
        &imds,
        tmp.path(),
        &format!("mock-mode: true\nmax-concurrent-tasks: {CONCURRENCY}\n"),
        &env,
    );
    let agent_cpu = cpu_seconds(agent.child.id());
    let mut sent = backlog;
    while completed.count() < tasks {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} of {tasks} tasks completed after 10 minutes\n{}",
            completed.count(),
            agent.logs()
        );
        if sent < tasks && sent - completed.count() + 10 <= backlog {
            let to = (sent + 10).min(tasks);
            send_tasks(&plane, sent, to).await;
            sent = to;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let per_sec = tasks as f64 / secs;
    let moto_busy = (cpu_seconds(plane.moto.pid()) - moto_cpu) / secs * 100.0;
    let agent_ms = (cpu_seconds(agent.child.id()) - agent_cpu) * 1000.0 / tasks as f64;
    plane
        .wait_queue_empty_every(Duration::from_secs(60), Duration::from_secs(1), &agent)
        .await;
    if std::env::var_os("LEASE_BENCH_KEEP").is_some() {
        eprintln!("agent logs kept in {}", tmp.keep().display());
    }
    for n in [0, tasks / 2, tasks - 1] {
        assert_eq!(
            plane.task_state(&format!("bench-{n}")).await.as_deref(),
            Some("complete")
        );
    }
    let calls = recorder.counts();
    let total: u64 = calls.values().sum();
    let per_task: serde_json::Map<String, serde_json::Value> = calls
        .iter()
        .map(|(action, n)| (action.clone(), json!(*n as f64 / tasks as f64)))
        .collect();
    write_figures(
        name,
        &json!({
            "emulator_cpu_percent_of_core": moto_busy,
            "agent_cpu_ms_per_task": agent_ms,
            "emulator_calls_per_task": total as f64 / tasks as f64,
            "emulator_calls_per_task_by_action": per_task,
            "tasks": tasks,
            "backlog": backlog,
            "max_concurrent_tasks": CONCURRENCY,
            "elapsed_s": secs,
            "tasks_per_s": per_sec,
            "target_per_s": 20.0,
        }),
    );
}

/// 500 tasks fed as a stream, at most 100 queued at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn mock_tasks_stream() {
    mock_tasks("mock_tasks", 100).await;
}

/// 500 tasks queued before the agent starts (`lease submit --array 500`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn mock_tasks_burst() {
    mock_tasks("mock_tasks_burst", usize::MAX).await;
}
