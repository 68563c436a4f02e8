//! Benchmarks of the agent (issue 7): each prints its figures and, when
//! `LEASE_BENCH_OUT` names a directory, writes them to `<name>.json` there for
//! tests/bench/run's table. Ignored in the test run: figures are measured, never
//! asserted. Run one with
//! `cargo test --workspace --release --test bench -- --ignored --nocapture NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_common::tags;
use lease_tests::agent::{Agent, POLL};
use lease_tests::plane::{Plane, shell};
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
    let out = Cmd::new("lease", &moto.env())
        .args([
            "launch",
            "--instance-type",
            "t3.micro",
            "--yes",
            "--ttl",
            ttl,
        ])
        .ok()
        .await;
    out.lines()
        .find(|l| l.starts_with("i-"))
        .unwrap_or_else(|| panic!("lease launch printed {out:?}"))
        .to_string()
}

/// The deadline as DESIGN.md defines it, from what moto holds.
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
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let rss_kb = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    let hz = 100.0; // USER_HZ on Linux
    let puts_before = imds.token_puts();
    let requests_before = imds.requests();
    let (t0, c0) = (Instant::now(), ticks());
    let mut max_rss = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_rss = max_rss.max(rss_kb());
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (ticks() - c0) as f64 / hz / secs * 100.0;
    write_figures(
        "idle_footprint",
        &json!({
            "window_s": secs,
            "rss_kb": rss_kb(),
            "max_rss_kb": max_rss,
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
/// attempt 2, timed at a proxy in front of the emulator). 20 trials.
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

/// Issue 7, item 6: mock tasks (the whole pipeline: receive, claim, events, log and
/// bundle upload, record, delete; no program) through one agent, 500 tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: tests/bench/run"]
async fn mock_tasks() {
    // Mock tasks cost the machine nothing: the figure is the pipeline's (and the
    // emulator's), so the slots are many.
    const CONCURRENCY: u32 = 20;
    // LEASE_BENCH_TASKS: fewer (or more) for a quick look; a multiple of ten.
    let tasks: usize = std::env::var("LEASE_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let plane = Plane::new().await;
    let (_instance, imds) = plane.instance().await;
    for chunk in 0..tasks / 10 {
        let mut batch = plane.sqs.send_message_batch().queue_url(&plane.queue_url);
        for i in 0..10 {
            let n = chunk * 10 + i;
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
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let agent = plane.agent(
        &imds,
        tmp.path(),
        &format!("mock-mode: true\nmax-concurrent-tasks: {CONCURRENCY}\n"),
    );
    // Looked at once a second: the emulator serves the agent, not the stopwatch.
    plane
        .wait_queue_empty_every(Duration::from_secs(600), Duration::from_secs(1), &agent)
        .await;
    let secs = started.elapsed().as_secs_f64();
    let per_sec = tasks as f64 / secs;
    if std::env::var_os("LEASE_BENCH_KEEP").is_some() {
        eprintln!("agent logs kept in {}", tmp.keep().display());
    }
    for n in [0, tasks / 2, tasks - 1] {
        assert_eq!(
            plane.task_state(&format!("bench-{n}")).await.as_deref(),
            Some("complete")
        );
    }
    write_figures(
        "mock_tasks",
        &json!({
            "tasks": tasks,
            "max_concurrent_tasks": CONCURRENCY,
            "elapsed_s": secs,
            "tasks_per_s": per_sec,
            "target_per_s": 20.0,
        }),
    );
}
