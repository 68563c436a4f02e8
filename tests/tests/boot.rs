//! The boot test (issue 12): the exact user-data `lease launch` stored on an instance,
//! read back from moto (DescribeInstanceAttribute), booted by Debian's own cloud-init
//! under real systemd in `systemd-nspawn`, installs the agent from moto's S3 and gives
//! a working node. Then the same boot with a corrupted package in the bucket is refused.
//!
//! The guest has a network namespace of its own with no route out: IMDS (the harness's
//! fake) at 169.254.169.254 and moto at its usual 127.0.0.1 port, both forwarded into
//! the namespace through unix sockets (`lease_tests::netns`), so no address is added to
//! the host and all traffic stays on this machine. The one thing the test adds to reach
//! moto is the standard AWS `endpoint_url` in root's AWS config file, written by a
//! vendor-data part in the NoCloud seed beside the user-data; the user-data is byte for
//! byte what EC2 would hand a real instance.
//!
//! Checked from outside: cloud-init finished without error; the package came from the
//! bucket, its digest was checked and dpkg verifies it; leased is active under systemd;
//! NodeRegistered arrives on the bus; a shell task from the queue completes, its bundle
//! in S3 naming the user it ran as; at the deadline the instance is terminated in moto.
//! With a corrupted package: cloud-init reports the failure, the instance is tagged
//! `lease:status=install-failed` in moto, and nothing of the agent is on the machine.
//!
//! Needs root, systemd-nspawn, debootstrap, socat and the package in `LEASE_DEB`: run by
//! `tests/systemd-proof.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceAttributeName;
use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use lease_common::layout;
use lease_common::messages::EventKind;
use lease_common::tags;
use lease_tests::imds::assume_role;
use lease_tests::netns::NetNs;
use lease_tests::nspawn::{self, Machine};
use lease_tests::plane::{BUCKET, NODES_TABLE, Plane, TASKS_TABLE, shell};
use lease_tests::{Cmd, FakeImds};

/// nspawn start to a finished boot (cloud-init's final stage included).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
const LIMIT: Duration = Duration::from_secs(60);
const IMDS_ADDRESS: &str = "169.254.169.254";

fn deb_under_test() -> PathBuf {
    let deb = std::env::var_os("LEASE_DEB").map(PathBuf::from).expect(
        "LEASE_DEB must name the leased .deb; tests/systemd-proof.sh builds it and sets it",
    );
    assert!(deb.is_file(), "LEASE_DEB={} is not a file", deb.display());
    deb
}

/// What the image itself says (a cloud image's /etc/cloud/cloud.cfg.d), not the seed:
/// the NoCloud datasource, and the settings a minbase tree needs (no generated locales,
/// no ssh-keygen, no network renderer: the namespace is set up from outside).
const IMAGE_CLOUD_CFG: &str = "datasource_list: [ NoCloud, None ]\n\
locale: C.UTF-8\n\
ssh_keys: {}\n\
network: {config: disabled}\n";

/// The test's only addition to the seed: moto as the endpoint of every AWS call, in the
/// standard place (the AWS config file's `endpoint_url`) that both the install script
/// and the agent's SDK read.
fn vendor_data(moto_endpoint: &str) -> String {
    format!(
        "#cloud-config\n\
         bootcmd:\n  \
         - [ sh, -c, \"mkdir -p /root/.aws && printf '[default]\\\\nendpoint_url = {moto_endpoint}\\\\n' >/root/.aws/config\" ]\n"
    )
}

/// The user-data EC2 stores for the instance, decoded.
async fn stored_user_data(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    let out = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute userData");
    let encoded = out.user_data().and_then(|u| u.value()).expect("user-data");
    String::from_utf8(aws_smithy_types::base64::decode(encoded).unwrap()).unwrap()
}

async fn instance_tags(ec2: &aws_sdk_ec2::Client, id: &str) -> (String, Vec<(String, String)>) {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let i = out.reservations()[0].instances()[0].clone();
    let state = i
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let tags = i
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (state, tags)
}

fn tag_value(tags: &[(String, String)], key: &str) -> Option<String> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// `lease launch` of one node serving the plane's queue; returns the instance id.
async fn launch(plane: &Plane, dir: &std::path::Path) -> String {
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "queue-url: {}\ntopic-arn: {}\nlog-bucket: {BUCKET}\ntasks-table: {TASKS_TABLE}\n\
             nodes-table: {NODES_TABLE}\ntag-refresh-interval: 2s\nheartbeat-interval: 2s\n",
            plane.queue_url, plane.topic_arn
        ),
    )
    .unwrap();
    let out = Cmd::new("lease", &plane.moto.env())
        .args([
            "launch",
            "-t",
            "t3.micro",
            "--ttl",
            "30m",
            "--agent-bucket",
            BUCKET,
        ])
        .arg("--agent-config")
        .arg(&config)
        .ok()
        .await;
    out.trim().to_string()
}

/// A machine from the cloud-init image, seeded with `user_data` and the test's
/// vendor-data, in a namespace that reaches `imds` and moto.
fn seeded_machine(
    base: &std::path::Path,
    instance_id: &str,
    user_data: &str,
    imds: &FakeImds,
    moto_endpoint: &str,
) -> (Machine, NetNs) {
    let mut m = Machine::copy_of(base);
    m.write_file(
        "/etc/cloud/cloud.cfg.d/90-image.cfg",
        IMAGE_CLOUD_CFG,
        0o644,
    );
    m.write_file(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: {instance_id}\nlocal-hostname: boot-test\n"),
        0o600,
    );
    m.write_file("/var/lib/cloud/seed/nocloud/user-data", user_data, 0o600);
    m.write_file(
        "/var/lib/cloud/seed/nocloud/vendor-data",
        &vendor_data(moto_endpoint),
        0o600,
    );
    let mut ns = NetNs::new("lease-boot", &[&format!("{IMDS_ADDRESS}/32")]);
    let port = |endpoint: &str| -> u16 {
        endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {endpoint}"))
    };
    ns.forward(IMDS_ADDRESS, 80, port(&imds.endpoint));
    let moto_port = port(moto_endpoint);
    ns.forward("127.0.0.1", moto_port, moto_port);
    m.set_network_namespace(ns.path());
    (m, ns)
}

fn cloud_init_status(m: &Machine) -> String {
    m.text(&["cloud-init", "status", "--long"])
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, systemd-nspawn, debootstrap, socat and LEASE_DEB: run tests/systemd-proof.sh"]
async fn the_launch_user_data_boots_a_working_node_and_refuses_a_corrupted_package() {
    if let Some(why) = nspawn::missing_prerequisites() {
        panic!("{why}");
    }
    let deb = deb_under_test();
    let deb_bytes = std::fs::read(&deb).unwrap();
    let mut plane = Plane::new().await;
    let ec2 = plane.moto.ec2().await;
    let moto_endpoint = plane.moto.endpoint.clone();

    // The package in the bucket as `lease setup` leaves it: under its key, with its
    // sha256 beside it in the object's metadata.
    let arch = layout::deb_arch(std::env::consts::ARCH);
    let key = layout::agent_deb_key(lease_common::VERSION, arch);
    let digest = lease_common::manifest::sha256_bytes(&deb_bytes);
    let s3 = plane.s3.clone();
    let put = |body: Vec<u8>| {
        s3.put_object()
            .bucket(BUCKET)
            .key(&key)
            .metadata(layout::AGENT_SHA256_METADATA, &digest)
            .body(ByteStream::from(body))
            .send()
    };
    put(deb_bytes.clone()).await.expect("upload the package");

    let dir = tempfile::tempdir().unwrap();
    let instance = launch(&plane, dir.path()).await;
    let user_data = stored_user_data(&ec2, &instance).await;
    assert!(
        user_data.contains(&digest),
        "the user-data does not carry the package's digest"
    );
    let imds = FakeImds::for_instance(ec2.clone(), &instance).await;
    imds.set_role(
        "lease-agent",
        assume_role(&plane.moto, "lease-agent", &instance).await,
    );
    eprintln!(
        "boot: instance {instance}, moto {moto_endpoint}, IMDS {}",
        imds.endpoint
    );
    let base = tokio::task::block_in_place(|| nspawn::base_rootfs_of(Some("cloud-init")));

    // 1. The boot: cloud-init runs the user-data, the agent comes up.
    let (mut m, _ns) = seeded_machine(&base, &instance, &user_data, &imds, &moto_endpoint);
    let ready = tokio::task::block_in_place(|| {
        let started = Instant::now();
        m.boot(BOOT_LIMIT);
        poll("leased.service to become active", LIMIT, || {
            let s = m.unit_property("leased", "ActiveState");
            (s == "active").then_some(())
        });
        started.elapsed()
    });
    eprintln!(
        "boot: boot → agent READY (leased.service active) in {:.1}s",
        ready.as_secs_f64()
    );
    let status = cloud_init_status(&m);
    assert!(
        status.contains("status: done"),
        "cloud-init did not finish cleanly:\n{status}\n{}",
        m.text(&["tail", "-n", "40", "/var/log/cloud-init-output.log"])
    );
    // /run is the container's own tmpfs: read from inside.
    let result = m.text(&["cat", "/run/cloud-init/result.json"]);
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(
        result["v1"]["errors"],
        serde_json::json!([]),
        "cloud-init errors"
    );
    let output = m.text(&["cat", "/var/log/cloud-init-output.log"]);
    assert!(
        output.contains(&format!("verified (sha256 {digest})")),
        "the install did not check the digest:\n{output}"
    );
    assert_eq!(
        m.text(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "leased"]),
        format!("install ok installed {}", lease_common::VERSION)
    );
    // Every installed file as the package has it; only the config differs, since
    // cloud-init wrote the user-data's before the package came (and dpkg kept it).
    let verify = m.exec(&["dpkg", "--verify", "leased"]);
    let differing = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        differing
            .lines()
            .all(|l| l.ends_with(" c /etc/leased/config.yaml")),
        "dpkg --verify leased: {differing}"
    );
    assert!(
        !m.text(&["sh", "-c", "ls -d /tmp/lease-install-* 2>/dev/null"])
            .contains("lease-install"),
        "the download was left behind"
    );

    // 2. The agent serves the plane: registered, and a queued shell task completes.
    let registered = plane
        .wait_event("NodeRegistered", LIMIT, |e| {
            matches!(e.kind, EventKind::NodeRegistered { .. }) && e.instance_id == instance
        })
        .await;
    eprintln!("boot: {:?}", registered.kind);
    let mut task = shell("boot-1", "mkdir -p out && id -un > out/user && echo booted");
    task.bundle = Some("out".into());
    plane.send(&task.to_json()).await;
    plane
        .wait_event(
            "TaskCompleted",
            LIMIT,
            |e| matches!(&e.kind, EventKind::TaskCompleted { task_id, .. } if task_id == "boot-1"),
        )
        .await;
    let files = plane
        .bundle(
            &layout::bundle_prefix(&instance, "boot-1"),
            &layout::manifest_key(&instance, "boot-1"),
        )
        .await;
    let user = String::from_utf8_lossy(&files["user"]).trim().to_string();
    eprintln!("boot: the task ran as '{user}'");
    // The package made the task user (checked last: who the task ran as).
    let task_user = lease_common::session::DEFAULT_TASK_USER;
    let entry = m.text(&["getent", "passwd", task_user]);
    assert!(
        entry.starts_with(&format!("{task_user}:")) && !entry.contains(":0:"),
        "no unprivileged user '{task_user}' on the node: {entry:?}"
    );

    // 3. The deadline, 5 s away: the agent terminates the instance in moto.
    // The tag is written to the second, so that is the deadline the agent sees.
    let deadline = tags::parse_time(
        tags::EXPIRES_AT,
        &tags::render_time(Utc::now() + chrono::TimeDelta::seconds(5)),
    )
    .unwrap();
    ec2.create_tags()
        .resources(&instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(tags::EXPIRES_AT)
                .value(tags::render_time(deadline))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let (state, _) = instance_tags(&ec2, &instance).await;
        if state == "shutting-down" || state == "terminated" {
            eprintln!(
                "boot: instance {state} in moto {:.1}s after the deadline",
                (Utc::now() - deadline).num_milliseconds() as f64 / 1000.0
            );
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the instance was not terminated at its deadline (state {state})\n{}",
            m.journal("leased")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(m);

    // 4. The same boot with a corrupted package in the bucket (its recorded digest
    // unchanged): the install refuses it, says so in the tags, installs nothing.
    let mut corrupt = deb_bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    put(corrupt).await.expect("upload the corrupted package");
    let second = launch(&plane, dir.path()).await;
    let user_data = stored_user_data(&ec2, &second).await;
    let imds2 = FakeImds::for_instance(ec2.clone(), &second).await;
    imds2.set_role(
        "lease-agent",
        assume_role(&plane.moto, "lease-agent", &second).await,
    );
    let (mut m2, _ns2) = seeded_machine(&base, &second, &user_data, &imds2, &moto_endpoint);
    tokio::task::block_in_place(|| m2.boot(BOOT_LIMIT));
    let status = cloud_init_status(&m2);
    assert!(
        status.contains("status: error"),
        "cloud-init did not report the failed install:\n{status}"
    );
    let output = m2.text(&["cat", "/var/log/cloud-init-output.log"]);
    assert!(
        output.contains("refusing to install") && output.contains(&digest),
        "the console does not say why:\n{output}"
    );
    let (_, second_tags) = instance_tags(&ec2, &second).await;
    assert_eq!(
        tag_value(&second_tags, tags::STATUS).as_deref(),
        Some(tags::NodeStatus::InstallFailed.as_str()),
        "{second_tags:?}"
    );
    // `lease list` reads the status back without complaint.
    let list = Cmd::new("lease", &plane.moto.env())
        .args(["list", "-o", "json"])
        .ok()
        .await;
    assert!(list.contains("install-failed"), "{list}");
    assert!(
        !m2.exec(&["dpkg-query", "-W", "leased"]).status.success(),
        "dpkg knows a leased package"
    );
    assert!(!m2.path("/usr/bin/leased").exists(), "the binary is there");
    assert!(
        !m2.path("/usr/lib/systemd/system/leased.service").exists(),
        "the unit is there"
    );
    assert!(
        !m2.text(&["sh", "-c", "ls -d /tmp/lease-install-* 2>/dev/null"])
            .contains("lease-install"),
        "the download was left behind"
    );

    assert_eq!(
        user, task_user,
        "the task on the first node did not run as the unprivileged task user"
    );
}
