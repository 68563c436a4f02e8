//! `leased` end to end: the real binary against moto's server and the fake IMDS, with
//! instances launched by the real `lease`. Every result is read back through another
//! path (DescribeInstances, the SQS queue subscribed to the control bus), never from
//! the agent's own printout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::tags;
use lease_tests::agent::{Agent, Bus};
use lease_tests::imds::{FakeImds, Outage, assume_role};
use lease_tests::recorder::Recorder;
use lease_tests::{Cmd, Moto, wait_until};

/// What these tests hold the agent to: the action never comes before the deadline, and
/// follows it promptly. How promptly (the one-second target) is measured by the
/// `deadline_to_terminate` benchmark (tests/tests/bench.rs), not asserted here, where a
/// loaded machine would make it flake.
const PROMPTLY: TimeDelta = TimeDelta::seconds(5);
const ONE_SECOND: TimeDelta = TimeDelta::seconds(1);
/// How often the tests look at moto.
const POLL: Duration = Duration::from_millis(50);

async fn launch(moto: &Moto, args: &[&str]) -> String {
    let out = Cmd::new("lease", &moto.env())
        .args(["launch", "--instance-type", "t3.micro", "--yes"])
        // Where the agent package is, as `lease setup` records it: without one lease
        // refuses to launch an image that does not carry the agent.
        .args(["--agent-bucket", moto.agent_packages().await])
        .args(args)
        .ok()
        .await;
    let ids: Vec<&str> = out.lines().filter(|l| l.starts_with("i-")).collect();
    assert_eq!(ids.len(), 1, "lease launch printed {out:?}");
    ids[0].to_string()
}

async fn state(moto: &Moto, id: &str) -> String {
    moto.instance(id)
        .await
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

async fn tag_map(moto: &Moto, id: &str) -> BTreeMap<String, String> {
    moto.instance(id)
        .await
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

/// The deadline as ARCHITECTURE.md defines it, computed from what moto holds: the earlier of
/// `lease:expires-at` and launch time + `lease:ttl`.
async fn deadline(moto: &Moto, id: &str) -> DateTime<Utc> {
    let i = moto.instance(id).await;
    let launched = DateTime::<Utc>::from_timestamp(i.launch_time().unwrap().secs(), 0);
    let t = tag_map(moto, id).await;
    tags::LeaseTags::from_map(&t)
        .unwrap()
        .deadline(launched)
        .expect("a deadline in the tags")
}

/// Waits for the instance to reach `want` (polling moto), returning when it was seen.
async fn wait_for_state(moto: &Moto, id: &str, want: &[&str], limit: Duration) -> DateTime<Utc> {
    wait_until(&format!("{id} to be {want:?}"), limit, POLL, || async {
        let s = state(moto, id).await;
        want.contains(&s.as_str()).then(Utc::now)
    })
    .await
}

/// The instance reached shutting-down or terminated (seen through DescribeInstances)
/// no earlier than its deadline and promptly after it ([`PROMPTLY`]).
async fn assert_ended_at_the_deadline(
    moto: &Moto,
    id: &str,
    deadline: DateTime<Utc>,
    limit: Duration,
    agent: &Agent,
) {
    let seen = wait_for_state(moto, id, &["shutting-down", "terminated"], limit).await;
    let late = seen - deadline;
    assert!(
        late >= TimeDelta::zero() && late <= PROMPTLY,
        "{late}\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5s_ttl_is_terminated_at_its_deadline() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "5s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&moto, &imds, dir.path(), "");
    let deadline = deadline(&moto, &id).await;
    let seen = wait_for_state(
        &moto,
        &id,
        &["shutting-down", "terminated"],
        Duration::from_secs(20),
    )
    .await;
    let late = seen - deadline;
    eprintln!("terminated {late} after the deadline {deadline}");
    assert!(
        late >= TimeDelta::zero(),
        "terminated {late} before the deadline"
    );
    assert!(
        late <= PROMPTLY,
        "terminated {late} after the deadline\n{}",
        agent.logs()
    );
    assert_eq!(tag_map(&moto, &id).await[tags::STATUS], "expiring");
    // Its job done, the agent exits cleanly.
    assert_eq!(
        agent.exit_code(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        agent.logs()
    );
    // How it ended, beside the status it passed through; `lease list` shows that.
    assert_eq!(tag_map(&moto, &id).await[tags::END_REASON], "expired");
    let listed = Cmd::new("lease", &moto.env())
        .args(["list", "--all", "--state", "terminated", "-o", "json"])
        .ok()
        .await;
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["status"], "expired", "{listed}");
}

/// On an instance the credentials are the instance profile's, from IMDS: with none in
/// the environment, the agent's calls (read at a proxy in front of the emulator) are
/// signed with the key of the role's STS session that IMDS served, and the lease still
/// ends at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_in_the_environment_the_instance_role_signs() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "4s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let credentials = assume_role(&moto, "lease-main-agent", &id).await;
    // Read back through STS: the key is the role's session, named after the instance.
    let sts_config = aws_sdk_sts::config::Builder::from(&moto.sdk_config().await)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            Some(credentials.session_token.clone()),
            None,
            "assumed",
        ))
        .build();
    let me = aws_sdk_sts::Client::from_conf(sts_config)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert!(
        me.arn()
            .unwrap()
            .ends_with(&format!(":assumed-role/lease-main-agent/{id}")),
        "{me:?}"
    );
    imds.set_role("lease-main-agent", credentials.clone());
    let recorder = Recorder::start(&moto.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    // Empty is unset to the SDK; the harness's environment has them all set.
    let agent = Agent::start_with_env(
        &moto,
        &imds,
        dir.path(),
        "",
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_ENDPOINT_URL", recorder.endpoint()),
        ],
    );
    wait_for_state(
        &moto,
        &id,
        &["shutting-down", "terminated"],
        Duration::from_secs(20),
    )
    .await;
    let terminate = recorder.calls("TerminateInstances");
    assert_eq!(terminate.len(), 1, "{}", agent.logs());
    assert_eq!(
        terminate[0].access_key.as_deref(),
        Some(credentials.access_key_id.as_str())
    );
    assert!(credentials.access_key_id.starts_with("ASIA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_extend_a_second_before_the_deadline_wins() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "6s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&moto, &imds, dir.path(), "");
    let first = deadline(&moto, &id).await;
    // Wait (on the wall clock) until one second before the deadline, then extend.
    let until = (first - ONE_SECOND - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(until).await;
    Cmd::new("lease", &moto.env())
        .args(["extend", &id, "1h"])
        .ok()
        .await;
    let extended = deadline(&moto, &id).await;
    assert!(extended > first + TimeDelta::minutes(59), "{extended}");
    // Well past the old deadline, the instance still runs and the agent still enforces.
    tokio::time::sleep(
        (first + TimeDelta::seconds(3) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
    .await;
    assert_eq!(state(&moto, &id).await, "running", "{}", agent.logs());
    assert_eq!(
        agent.exit_code(Duration::ZERO).await,
        None,
        "{}",
        agent.logs()
    );
    let status = agent.client().args(["status", "--json"]).ok().await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["deadline"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        extended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_reaches_the_control_bus() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let bus = Bus::new(&moto).await;
    let id = launch(&moto, &["--ttl", "1h"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    assert_eq!(
        imds.info().life_cycle,
        "spot",
        "lease launches spot by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &moto,
        &imds,
        dir.path(),
        &format!("topic-arn: {}\nheartbeat-interval: 1s\n", bus.topic_arn),
    );
    let mut seen = Vec::new();
    let (registered, _) = bus
        .wait_for("NodeRegistered", Duration::from_secs(20), &mut seen)
        .await;
    assert_eq!(registered.instance_id, id);
    // The launcher's `starting` is replaced once the agent runs.
    wait_until(
        "lease:status=idle",
        Duration::from_secs(5),
        POLL,
        || async {
            (tag_map(&moto, &id)
                .await
                .get(tags::STATUS)
                .map(String::as_str)
                == Some("idle"))
            .then_some(())
        },
    )
    .await;
    let (beat, _) = bus
        .wait_for("NodeHeartbeat", Duration::from_secs(10), &mut seen)
        .await;
    match beat.kind {
        lease_common::messages::EventKind::NodeHeartbeat {
            market,
            time_left_secs,
            instance_type,
            ..
        } => {
            assert_eq!(market, "spot");
            assert_eq!(instance_type, "t3.micro");
            let left = time_left_secs.unwrap();
            assert!((3000..=3600).contains(&left), "{left}");
        }
        other => panic!("{other:?}"),
    }

    let notice_time = Utc::now() + TimeDelta::minutes(2);
    let injected = Instant::now();
    eprintln!("notice injected at {}", Utc::now());
    imds.set_spot_action("terminate", notice_time);
    let (event, arrived) = bus
        .wait_for("SpotInterruption", Duration::from_secs(10), &mut seen)
        .await;
    let took = arrived - injected;
    // How fast is the `spot_notice` benchmark's figure; arriving at all is this test's.
    eprintln!("SpotInterruption on the bus {took:?} after the notice");
    match event.kind {
        lease_common::messages::EventKind::SpotInterruption { action, time } => {
            assert_eq!(action, "terminate");
            assert_eq!(time.timestamp(), notice_time.timestamp());
        }
        other => panic!("{other:?}"),
    }
    wait_until(
        "lease:status=interrupted",
        Duration::from_secs(5),
        POLL,
        || async {
            (tag_map(&moto, &id)
                .await
                .get(tags::STATUS)
                .map(String::as_str)
                == Some("interrupted"))
            .then_some(())
        },
    )
    .await;

    // Handled once: three more seconds of polling the same notice publish nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    imds.set_rebalance(Utc::now());
    bus.wait_for("RebalanceRecommendation", Duration::from_secs(5), &mut seen)
        .await;
    assert_eq!(
        seen.iter()
            .filter(|e| e.type_name() == "SpotInterruption")
            .count(),
        1
    );

    // SIGTERM: deregistered, the instance left running.
    agent.signal("-TERM");
    bus.wait_for("NodeDeregistered", Duration::from_secs(10), &mut seen)
        .await;
    let mut agent = agent;
    assert_eq!(
        agent.exit_code(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        agent.logs()
    );
    assert_eq!(state(&moto, &id).await, "running");
}

/// A procfs for the agent to sample (through its test-only root override). Every step
/// the clock ticks (idle CPU time grows); a busy step also moves CPU, network and disk.
#[derive(Default)]
struct FakeProcfs {
    cpu_busy: u64,
    cpu_idle: u64,
    net: u64,
    disk: u64,
}

/// Writes a file the way procfs shows it: all at once (a reader never sees it empty).
fn put(path: PathBuf, text: impl AsRef<str>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.as_ref()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

impl FakeProcfs {
    fn step(&mut self, root: &Path, busy: bool) {
        self.cpu_idle += 100;
        if busy {
            self.cpu_busy += 1_000;
            self.net += 10_000_000;
            self.disk += 1_000;
        }
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::create_dir_all(root.join("dev/pts")).unwrap();
        put(
            root.join("stat"),
            format!("cpu  {} 0 0 {} 0 0 0 0 0 0\n", self.cpu_busy, self.cpu_idle),
        );
        put(
            root.join("net/dev"),
            format!(
                "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  ens5: {} 9 0 0 0 0 0 0 {} 9 0 0 0 0 0 0\n",
                self.net, self.net
            ),
        );
        put(
            root.join("diskstats"),
            format!(
                " 259 0 nvme0n1 {} 0 0 0 {} 0 0 0 0 0 0\n",
                self.disk, self.disk
            ),
        );
        put(
            root.join("meminfo"),
            "MemTotal: 1000 kB\nMemAvailable: 600 kB\n",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_machine_gets_its_idle_action_and_a_busy_one_does_not() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(
        &moto,
        &[
            "--ttl",
            "1h",
            "--idle-timeout",
            "3s",
            "--on-idle",
            "stop",
            "--on-demand",
        ],
    )
    .await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let procfs = dir.path().join("proc");
    let mut fake = FakeProcfs::default();
    fake.step(&procfs, true);
    let proc_root = procfs.display().to_string();
    let dev_root = procfs.join("dev").display().to_string();
    let idle = "idle:\n  sample-interval: 1s\n";
    let mut agent = Agent::start_with_env(
        &moto,
        &imds,
        dir.path(),
        idle,
        &[
            ("LEASED_TEST_PROC_ROOT", &proc_root),
            ("LEASED_TEST_DEV_ROOT", &dev_root),
        ],
    );
    // Busy for three times the idle timeout: CPU, network and disk all moving.
    for _ in 0..18 {
        fake.step(&procfs, true);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(state(&moto, &id).await, "running", "{}", agent.logs());
    // Then quiet: stopped once idle for the idle timeout.
    let quiet_from = Utc::now();
    let seen = wait_until(
        "the instance to be stopped",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            fake.step(&procfs, false);
            let moto = &moto;
            let id = &id;
            async move {
                let s = state(moto, id).await;
                ["stopping", "stopped"].contains(&s.as_str()).then(Utc::now)
            }
        },
    )
    .await;
    let after = seen - quiet_from;
    assert!(
        after >= TimeDelta::seconds(3) && after <= TimeDelta::seconds(10),
        "stopped {after} after going quiet\n{}",
        agent.logs()
    );
    assert_eq!(
        agent.exit_code(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_errors_and_timeouts_do_not_stop_ttl_enforcement() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "12s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&moto, &imds, dir.path(), "");
    agent.ready().await;
    // The agent fetches the role's credentials at start (its first call), as it must
    // for a terminate at the deadline to be signed through an IMDS outage.
    imds.credentials_fetched().await;
    let deadline = deadline(&moto, &id).await;
    // 500s for a while, then requests that hang past every timeout, through the deadline.
    imds.set_outage(Some(Outage::Errors));
    let half = (deadline - TimeDelta::seconds(4) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(half).await;
    imds.set_outage(Some(Outage::Hang(Duration::from_secs(60))));
    let seen = wait_for_state(
        &moto,
        &id,
        &["shutting-down", "terminated"],
        Duration::from_secs(30),
    )
    .await;
    let late = seen - deadline;
    eprintln!("terminated {late} after the deadline, IMDS down");
    assert!(
        late >= TimeDelta::zero() && late <= PROMPTLY,
        "{late}\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keep_the_same_deadline() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "15s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&moto, &imds, dir.path(), "");
    agent.ready().await;
    let deadline = deadline(&moto, &id).await;
    assert_eq!(agent.saved_deadline(), deadline);
    // Restart into an IMDS outage: identity from the saved state, tags via DescribeTags.
    // The new process cannot fetch the role's credentials from IMDS now; it gets the
    // same role session's in its environment, so it still signs as the role.
    imds.set_outage(Some(Outage::Errors));
    agent.env.extend(imds.role_env());
    agent.kill_and_restart();
    agent.ready().await;
    assert_eq!(agent.saved_deadline(), deadline);
    let status = agent.client().args(["status", "--json"]).ok().await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["deadline"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        deadline
    );
    assert_ended_at_the_deadline(&moto, &id, deadline, Duration::from_secs(30), &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_over_the_control_socket_ends_the_lease() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "1h"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&moto, &imds, dir.path(), "");
    agent.ready().await;
    let human = agent.client().arg("status").ok().await;
    assert!(human.contains(&id), "{human}");
    assert!(human.contains("lease ends in"), "{human}");
    // reload: a valid file is taken, an invalid one refused with the key named, and
    // the daemon carries on either way.
    let config = dir.path().join("config.yaml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}default-ttl: 2h\n")).unwrap();
    let out = agent.client().arg("reload").ok().await;
    assert!(out.contains("reloaded"), "{out}");
    std::fs::write(&config, format!("{good}idle:\n  cpu-percent: 400\n")).unwrap();
    let (code, err) = agent.client().arg("reload").fails().await;
    assert_eq!(code, 1);
    assert!(err.contains("idle.cpu-percent"), "{err}");
    std::fs::write(&config, good).unwrap();
    assert_eq!(state(&moto, &id).await, "running");
    agent
        .client()
        .args(["complete", "-m", "all done"])
        .ok()
        .await;
    wait_for_state(
        &moto,
        &id,
        &["shutting-down", "terminated"],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(tag_map(&moto, &id).await[tags::STATUS], "complete");
    assert_eq!(
        agent.exit_code(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_78_naming_the_file_and_the_key() {
    let version = Cmd::new("leased", &[]).arg("--version").ok().await;
    assert_eq!(version.trim(), format!("leased {}", lease_common::VERSION));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "spot-poll-interval: 5m\n").unwrap();
    let (code, err) = Cmd::new("leased", &[])
        .arg("validate-config")
        .arg(&file)
        .fails()
        .await;
    assert_eq!(code, 78);
    assert!(
        err.contains("config.yaml") && err.contains("spot-poll-interval"),
        "{err}"
    );
    let (code, err) = Cmd::new("leased", &[])
        .args(["run", "--config"])
        .arg(&file)
        .fails()
        .await;
    assert_eq!(code, 78);
    assert!(err.contains("spot-poll-interval"), "{err}");
    let (code, err) = Cmd::new("leased", &[])
        .args(["run", "--topic-arn", "not-an-arn", "--config"])
        .arg(dir.path().join("missing.yaml"))
        .fails()
        .await;
    assert_eq!(code, 78);
    assert!(err.contains("missing.yaml"), "{err}");
    std::fs::write(&file, "").unwrap();
    let (code, err) = Cmd::new("leased", &[("LEASED_TOPIC_ARN".into(), "bus".into())])
        .args(["run", "--config"])
        .arg(&file)
        .fails()
        .await;
    assert_eq!(code, 78);
    assert!(err.contains("topic-arn"), "{err}");
    let ok = Cmd::new("leased", &[])
        .arg("validate-config")
        .arg(&file)
        .ok()
        .await;
    assert!(ok.contains("ok"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metadata_tags_off_the_deadline_comes_from_describe_tags() {
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "5s"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    imds.set_metadata_tags(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&moto, &imds, dir.path(), "");
    let deadline = deadline(&moto, &id).await;
    assert_ended_at_the_deadline(&moto, &id, deadline, Duration::from_secs(20), &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_and_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let moto = Moto::start();
    moto.agent_packages().await;
    let id = launch(&moto, &["--ttl", "1h"]).await;
    let imds = FakeImds::for_instance(moto.ec2().await, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = socket_path.display().to_string();
    let _agent = Agent::start_with_env(
        &moto,
        &imds,
        dir.path(),
        "",
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")],
    );
    let mut got: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let watchdogs = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if got.iter().any(|m| m.contains("READY=1")) && watchdogs >= 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let ready = got
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    assert!(ready.contains("STATUS=lease ends in"), "{ready}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
}
