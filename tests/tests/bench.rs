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
            "binary": lease_tests::bin_path("leased").display().to_string(),
            "target_rss_kb": 10_000,
            "target_cpu_percent": 0.5,
        }),
    );
}
