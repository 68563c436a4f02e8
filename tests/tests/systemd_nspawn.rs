//! The proof under real systemd (issue 5): the .deb, installed by the AMI recipe's
//! `ami/provision.sh` into a minimal Debian tree and booted with `systemd-nspawn`,
//! gives a service that systemd starts, watches and restarts, that leaves running
//! tasks alone, and that ends the lease.
//!
//! Needs root, systemd-nspawn and debootstrap, and the package under test in
//! `LEASE_DEB`, so it is ignored by a plain `cargo test`: `tests/systemd-proof.sh`
//! builds the package and runs it. Checked from outside the container:
//!
//! 1. the image state provision.sh leaves (enabled, not started, no identity);
//! 2. the unit becomes active, which for `Type=notify` means READY=1 arrived, with a
//!    STATUS= line and the watchdog armed; `systemd-analyze verify` prints nothing;
//!    the security score; `leased status` and `systemctl reload` reach the agent;
//! 3. SIGKILL of the agent → a new agent within 5 s, enforcing the same deadline;
//! 4. a task's tmux session in the agent's cgroup survives `systemctl restart` and
//!    `systemctl stop` + `start`;
//! 5. apt-get remove stops the service and keeps the config, purge deletes it, install
//!    enables and starts it, an upgrade restarts it, and none of them ends the task;
//! 6. a deadline 5 s away → the instance is terminated in moto, then the agent powers
//!    the container off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use lease_common::tags;
use lease_tests::imds::{AGENT_ROLE, assume_role};
use lease_tests::nspawn::{self, Machine};
use lease_tests::{FakeImds, Moto};
use tokio::runtime::Handle;

/// Boot to `systemctl is-system-running --wait` answering; seconds on this machine.
const BOOT_LIMIT: Duration = Duration::from_secs(90);
/// The issue's bound on a restart after the agent is killed.
const RESTART_LIMIT: Duration = Duration::from_secs(5);
/// The agent re-reads tags this often in the proof (the default is 30 s).
const TAG_REFRESH: &str = "2s";
/// The agent waits `leased::TERMINATE_GRACE` after a terminate EC2 accepted before it
/// powers the machine off; then the shutdown itself.
const POWEROFF_LIMIT: Duration = Duration::from_secs(leased::TERMINATE_GRACE.as_secs() + 60);

fn deb_under_test() -> PathBuf {
    let deb = std::env::var_os("LEASE_DEB").map(PathBuf::from).expect(
        "LEASE_DEB must name the leased .deb to prove; tests/systemd-proof.sh builds it and sets it",
    );
    assert!(deb.is_file(), "LEASE_DEB={} is not a file", deb.display());
    deb
}

/// Polls `check` (a blocking closure) every 100 ms until it returns `Some`.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leased_deadline(m: &Machine) -> String {
    let out = m.sh("leased status --json");
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`leased status --json` is not JSON ({e}):\n{out}"));
    v.get("deadline")
        .and_then(|d| d.as_str())
        .unwrap_or_else(|| panic!("no deadline in `leased status --json`:\n{out}"))
        .to_string()
}

fn instance_state(rt: &Handle, ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    rt.block_on(async {
        let resp = ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .expect("DescribeInstances");
        resp.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .and_then(|i| i.state())
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default()
    })
}

/// Starts a stand-in for a task the way the agent runs one: a tmux session whose
/// server lives in leased.service's cgroup (the agent's children are placed there by
/// systemd). Returns the pid of the program in the session.
fn start_task_in_agent_cgroup(m: &Machine, session: &str) -> String {
    m.sh(&format!(
        r#"main=$(systemctl show --property MainPID --value leased)
while IFS=: read -r _ controllers path; do
    case "$controllers" in
    "") for mnt in /sys/fs/cgroup/unified /sys/fs/cgroup; do
            if [ -f "$mnt$path/cgroup.procs" ]; then echo $$ >"$mnt$path/cgroup.procs"; break; fi
        done ;;
    name=systemd) echo $$ >"/sys/fs/cgroup/systemd$path/cgroup.procs" ;;
    esac
done </proc/"$main"/cgroup
tmux new-session -d -s {session} 'sleep 100000'"#
    ));
    let pid = m
        .sh(&format!("tmux list-panes -t {session} -F '#{{pane_pid}}'"))
        .trim()
        .to_string();
    assert!(
        m.sh(&format!("cat /proc/{pid}/cgroup"))
            .contains("leased.service"),
        "the stand-in task is not in leased.service's cgroup"
    );
    pid
}

fn assert_task_alive(m: &Machine, session: &str, pid: &str, after: &str) {
    let out = m.exec(&["tmux", "has-session", "-t", session]);
    assert!(
        out.status.success(),
        "the task's tmux session is gone after {after}\n{}",
        m.journal("leased")
    );
    let pane = m
        .sh(&format!("tmux list-panes -t {session} -F '#{{pane_pid}}'"))
        .trim()
        .to_string();
    assert_eq!(pane, pid, "the task's process changed after {after}");
    assert!(
        m.exec(&["kill", "-0", pid]).status.success(),
        "the task's process died after {after}"
    );
}

fn wait_active_with_new_pid(m: &Machine, old: &str, what: &str, limit: Duration) -> String {
    poll(what, limit, || {
        let pid = m.unit_property("leased", "MainPID");
        let state = m.unit_property("leased", "ActiveState");
        (state == "active" && pid != "0" && pid != old).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, systemd-nspawn, debootstrap and LEASE_DEB: run tests/systemd-proof.sh"]
async fn the_package_under_systemd() {
    if let Some(why) = nspawn::missing_prerequisites() {
        panic!("{why}");
    }
    let deb = deb_under_test();
    let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let rt = Handle::current();

    // AWS: an instance in moto with a lease two hours long, and IMDS for it.
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let now = Utc::now();
    let launched = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(tag(tags::MANAGED, "true"))
                .tags(tag(tags::OWNER, "systemd-proof"))
                .tags(tag(tags::JOB, "systemd-proof"))
                .tags(tag(tags::TTL, "2h"))
                .tags(tag(
                    tags::EXPIRES_AT,
                    &tags::render_time(now + chrono::TimeDelta::hours(2)),
                ))
                .build(),
        )
        .send()
        .await
        .expect("RunInstances in moto");
    let instance_id = launched.instances()[0].instance_id().unwrap().to_string();
    let imds = FakeImds::for_instance(ec2.clone(), &instance_id).await;
    // The agent's credentials are the instance profile's, from the fake IMDS.
    imds.set_role(
        AGENT_ROLE,
        assume_role(&moto, AGENT_ROLE, &instance_id).await,
    );
    eprintln!(
        "proof: instance {instance_id}, moto {}, IMDS {}",
        moto.endpoint, imds.endpoint
    );

    tokio::task::block_in_place(|| {
        // 1. An image build: provision.sh in the tree, not booted.
        let started = Instant::now();
        let base = nspawn::base_rootfs();
        let mut m = Machine::copy_of(&base);
        let provision = nspawn::workspace_root().join("ami/provision.sh");
        m.copy_in(&provision, "/root/lease/provision.sh");
        m.copy_in(&deb, &format!("/root/lease/{deb_name}"));
        let out = m.run_unbooted(&[
            "/bin/sh",
            "/root/lease/provision.sh",
            &format!("/root/lease/{deb_name}"),
        ]);
        assert!(out.status.success(), "provision.sh failed");
        eprintln!("proof: image provisioned in {:.1?}", started.elapsed());
        check_image_state(&m);

        // What cloud-init would write from user-data, and the test's endpoints.
        m.write_file(
            "/etc/leased/config.yaml",
            &format!("# written by the systemd proof\ntag-refresh-interval: {TAG_REFRESH}\n"),
            0o644,
        );
        m.write_file(
            "/etc/systemd/system/leased.service.d/proof.conf",
            &format!(
                "# Test-only: moto and the fake IMDS on the host's 127.0.0.1.\n\
                 [Service]\n\
                 Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\n\
                 Environment=AWS_ENDPOINT_URL={moto}\n\
                 Environment=AWS_REGION={region}\n",
                imds = imds.endpoint,
                moto = moto.endpoint,
                region = lease_tests::moto::REGION,
            ),
            0o644,
        );

        // 2. Boot: the unit is active (READY=1 arrived) with a status line.
        let started = Instant::now();
        let state = m.boot(BOOT_LIMIT);
        let active = poll("leased.service to become active", BOOT_LIMIT, || {
            let s = m.unit_property("leased", "ActiveState");
            (s == "active" || s == "failed").then_some(s)
        });
        assert_eq!(
            active,
            "active",
            "leased did not start\n{}",
            m.journal("leased")
        );
        eprintln!("proof: booted, leased active in {:.1?}", started.elapsed());
        assert_eq!(
            state,
            "running",
            "the booted system is not clean; failed units:\n{}",
            m.text(&["systemctl", "--failed", "--no-legend"])
        );
        // A fresh identity at first boot: a machine-id, and SSH host keys of its own.
        assert!(
            !m.sh("cat /etc/machine-id").trim().is_empty(),
            "no machine-id at boot"
        );
        assert_eq!(m.text(&["systemctl", "is-active", "ssh"]), "active");
        assert!(m.path("/etc/ssh/ssh_host_ed25519_key").exists());
        assert_eq!(m.unit_property("leased", "Type"), "notify");
        assert_eq!(m.unit_property("leased", "NRestarts"), "0");
        let status = m.unit_property("leased", "StatusText");
        assert!(!status.is_empty(), "no STATUS= line from the agent");
        eprintln!("proof: STATUS={status}");
        assert!(
            m.unit_property("leased", "WatchdogUSec") != "0",
            "the watchdog is not armed"
        );
        let verify = m.exec(&[
            "systemd-analyze",
            "verify",
            "/usr/lib/systemd/system/leased.service",
        ]);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            printed.trim().is_empty(),
            "systemd-analyze verify printed:\n{printed}"
        );
        let security = m.text(&[
            "systemd-analyze",
            "security",
            "--no-pager",
            "leased.service",
        ]);
        let score = security
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| {
                panic!("no exposure score from systemd-analyze security:\n{security}")
            })
            .trim()
            .to_string();
        eprintln!("proof: systemd-analyze security: {score}");
        let environ = m.sh(
            "tr '\\0' '\\n' </proc/$(systemctl show --property MainPID --value leased)/environ",
        );
        assert!(
            environ.contains("INVOCATION_ID=")
                && environ.contains("WATCHDOG_USEC=")
                && environ.contains("HOME=/root"),
            "the agent does not run as a watched systemd service:\n{environ}"
        );
        let deadline = leased_deadline(&m);
        eprintln!("proof: the agent enforces {deadline}");
        // ExecReload= reaches the running agent through its control socket.
        let pid = m.unit_property("leased", "MainPID");
        m.sh("systemctl reload leased");
        assert_eq!(
            m.unit_property("leased", "MainPID"),
            pid,
            "reload restarted the agent"
        );
        assert_eq!(m.unit_property("leased", "ActiveState"), "active");

        // 3. SIGKILL → restarted within 5 s, same deadline.
        let old = m.unit_property("leased", "MainPID");
        m.sh(&format!("kill -KILL {old}"));
        let killed = Instant::now();
        let new =
            wait_active_with_new_pid(&m, &old, "a new agent after SIGKILL", RESTART_LIMIT * 3);
        let took = killed.elapsed();
        eprintln!("proof: SIGKILL of {old} → agent {new} active (READY) in {took:.1?}");
        assert!(
            took <= RESTART_LIMIT,
            "restart took {took:?}, more than {RESTART_LIMIT:?}"
        );
        assert_eq!(m.unit_property("leased", "NRestarts"), "1");
        assert_eq!(
            leased_deadline(&m),
            deadline,
            "the deadline moved across the restart"
        );

        // 4. A task's tmux session survives restart, and stop + start.
        let session = "lease-proof-task";
        let task = start_task_in_agent_cgroup(&m, session);
        let old = m.unit_property("leased", "MainPID");
        m.sh("systemctl restart leased");
        wait_active_with_new_pid(&m, &old, "leased after restart", BOOT_LIMIT);
        assert_task_alive(&m, session, &task, "systemctl restart leased");
        m.sh("systemctl stop leased");
        assert_eq!(m.unit_property("leased", "ActiveState"), "inactive");
        assert_task_alive(&m, session, &task, "systemctl stop leased");
        m.sh("systemctl start leased");
        assert_eq!(m.unit_property("leased", "ActiveState"), "active");
        assert_task_alive(&m, session, &task, "systemctl start leased");
        eprintln!("proof: the task's tmux session survived restart, stop and start");

        // 5. The package on a running system: remove stops the service and keeps the
        // config, purge deletes it, install enables and starts, and an upgrade
        // restarts; none of them ends the running task.
        let deb_in = format!("/root/lease/{deb_name}");
        m.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y leased");
        assert_ne!(m.unit_property("leased", "ActiveState"), "active");
        assert!(
            m.path("/etc/leased/config.yaml").exists(),
            "remove deleted the config"
        );
        assert!(!m.path("/usr/bin/leased").exists());
        assert_task_alive(&m, session, &task, "apt-get remove leased");
        m.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y leased");
        assert!(!m.path("/etc/leased").exists(), "purge kept /etc/leased");
        assert!(
            !m.path("/var/lib/leased").exists(),
            "purge kept /var/lib/leased"
        );
        m.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {deb_in}"
        ));
        assert_eq!(m.text(&["systemctl", "is-enabled", "leased"]), "enabled");
        let installed = poll("leased to be started by the package", BOOT_LIMIT, || {
            let s = m.unit_property("leased", "ActiveState");
            (s == "active").then(|| m.unit_property("leased", "MainPID"))
        });
        assert!(
            m.sh("cat /etc/leased/config.yaml")
                .contains("#default-ttl:"),
            "a fresh install has the packaged config"
        );
        // Back to the proof's config (purge removed it), as user-data would write it.
        m.write_file(
            "/etc/leased/config.yaml",
            &format!("# written by the systemd proof\ntag-refresh-interval: {TAG_REFRESH}\n"),
            0o644,
        );
        m.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg --force-confold -i {deb_in}"
        ));
        wait_active_with_new_pid(
            &m,
            &installed,
            "leased restarted by the upgrade",
            BOOT_LIMIT,
        );
        assert_task_alive(&m, session, &task, "reinstalling the package");
        assert!(
            m.sh("cat /etc/leased/config.yaml")
                .contains("tag-refresh-interval"),
            "the upgrade replaced the changed config"
        );
        eprintln!("proof: remove, purge, install and upgrade behave, and the task survived them");

        // 6. A deadline 5 s away: terminated in moto, then the container powered off.
        // The tag is written to the second, so that is the deadline the agent sees.
        let deadline = tags::parse_time(
            tags::EXPIRES_AT,
            &tags::render_time(Utc::now() + chrono::TimeDelta::seconds(5)),
        )
        .unwrap();
        rt.block_on(
            ec2.create_tags()
                .resources(&instance_id)
                .tags(tag(tags::EXPIRES_AT, &tags::render_time(deadline)))
                .send(),
        )
        .expect("CreateTags");
        let state = poll(
            "the instance to be terminated in moto",
            Duration::from_secs(45),
            || {
                let s = instance_state(&rt, &ec2, &instance_id);
                (s == "shutting-down" || s == "terminated").then_some(s)
            },
        );
        let late = Utc::now() - deadline;
        eprintln!(
            "proof: instance {state} in moto at most {:.1}s after the deadline",
            late.num_milliseconds() as f64 / 1000.0
        );
        // On EC2 the machine would now be going down. Here nothing stops the container
        // but the agent itself: once the grace period after an accepted terminate has
        // passed, it powers the machine off, feeding the watchdog while it waits.
        let started = Instant::now();
        let exit = m.wait_exit(POWEROFF_LIMIT);
        let exit = exit.unwrap_or_else(|| {
            panic!(
                "the container was not powered off within {POWEROFF_LIMIT:?}\n{}",
                m.journal("leased")
            )
        });
        eprintln!(
            "proof: container powered off {:.1?} after the termination ({exit})",
            started.elapsed()
        );
        assert!(exit.success(), "systemd-nspawn exited with {exit}");
        // The journal is persistent in the image (/var/log/journal), so the whole run
        // can be read after the poweroff.
        let journal = m.persisted_journal("leased");
        eprintln!("proof: agent journal:\n{journal}");
        assert!(
            !journal.contains("Watchdog timeout"),
            "systemd's watchdog killed the agent during the run"
        );
        assert!(
            journal.contains("accepted by EC2") && journal.contains("powering the machine off"),
            "the journal does not show the terminate, then the poweroff"
        );
    });
}

fn tag(key: &str, value: &str) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

/// What an image must look like after provision.sh: the service enabled but never
/// started, and nothing that identifies the machine that built it.
fn check_image_state(m: &Machine) {
    let root = m.root();
    let wants = root.join("etc/systemd/system/multi-user.target.wants/leased.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "leased.service is not enabled in the image"
    );
    let machine_id = std::fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
    assert!(machine_id.trim().is_empty(), "the image keeps a machine-id");
    let keys: Vec<_> = std::fs::read_dir(root.join("etc/ssh"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
        .collect();
    assert!(keys.is_empty(), "the image keeps SSH host keys");
    let state = dir_entries(&root.join("var/lib/leased"));
    assert!(state.is_empty(), "the image keeps agent state: {state:?}");
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "provision.sh left its policy-rc.d behind"
    );
    let conf = std::fs::read_to_string(root.join("etc/leased/config.yaml")).unwrap();
    assert!(
        conf.contains("#default-ttl:"),
        "the default config is not the packaged one"
    );
    // The package's postinst made the unprivileged task user, with a home of its own.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = lease_common::session::DEFAULT_TASK_USER;
    let entry = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("the package did not create the task user '{user}'"));
    let fields: Vec<&str> = entry.split(':').collect();
    assert_ne!(fields[2], "0", "the task user is root: {entry}");
    assert_eq!(fields[5], format!("/home/{user}"), "{entry}");
    assert!(root.join("home").join(user).is_dir(), "no home for {user}");
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
