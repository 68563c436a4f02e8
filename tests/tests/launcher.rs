//! `lease` end to end: the real binary against moto's server, every result read back
//! through the SDK (DescribeInstances, DescribeVolumes, DescribeInstanceAttribute),
//! never only from lease's own output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName, ResourceType, Tag, TagSpecification};
use chrono::{DateTime, Utc};
use lease_common::config::AgentConfig;
use lease_tests::sshd::{Sshd, Tmux};
use lease_tests::{Cmd, Moto, wait_until};

fn lease(moto: &Moto) -> Cmd {
    Cmd::new("lease", &moto.env())
}

fn tags(i: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    i.tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

async fn all_instances(moto: &Moto) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = moto.ec2().await.describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

/// Where the agent package is, as `lease setup` would record it: without one, and on
/// an image that does not carry the agent, lease refuses to launch.
const AGENT: [&str; 2] = ["--agent-bucket", "agents"];

fn ids(stdout: &str) -> Vec<String> {
    stdout.lines().map(str::to_string).collect()
}

async fn launch(moto: &Moto, args: &[&str]) -> Vec<String> {
    ids(&lease(moto)
        .args(["launch", "--instance-type", "t3.micro"])
        .args(AGENT)
        .args(args)
        .ok()
        .await)
}

#[tokio::test]
async fn launch_sets_tags_metadata_market_and_user_data_atomically() {
    let moto = Moto::start();
    let before = Utc::now();
    let launched = launch(
        &moto,
        &[
            "--ttl",
            "2h",
            "--idle-timeout",
            "30m",
            "--job",
            "resnet sweep",
            "--name",
            "trainer",
            "--count",
            "2",
        ],
    )
    .await;
    assert_eq!(launched.len(), 2, "{launched:?}");
    let ec2 = moto.ec2().await;
    for id in &launched {
        let i = moto.instance(id).await;
        let t = tags(&i);
        assert_eq!(t["lease:managed"], "true");
        assert_eq!(
            t["lease:owner"], "moto",
            "owner defaults to the STS identity"
        );
        assert_eq!(t["lease:job"], "resnet sweep");
        assert_eq!(t["lease:ttl"], "2h");
        assert_eq!(t["lease:idle-timeout"], "30m");
        assert_eq!(t["lease:on-idle"], "terminate");
        assert_eq!(t["lease:on-expiry"], "terminate");
        assert_eq!(t["Name"], "trainer");
        let expires: DateTime<Utc> = t["lease:expires-at"].parse().unwrap();
        let expected = before + chrono::TimeDelta::hours(2);
        assert!(
            (expires - expected).num_seconds().abs() <= 5,
            "{expires} vs {expected}"
        );

        assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
        let m = i.metadata_options().unwrap();
        assert_eq!(m.http_tokens().unwrap().as_str(), "required");
        assert_eq!(m.instance_metadata_tags().unwrap().as_str(), "enabled");
        assert_eq!(m.http_put_response_hop_limit(), Some(2));
        // The default AMI is the one moto's public SSM parameter names.
        let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
        let ami = ssm
            .get_parameter()
            .name("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
            .send()
            .await
            .unwrap();
        assert_eq!(i.image_id(), ami.parameter().unwrap().value());

        let shutdown = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
            .send()
            .await
            .unwrap();
        assert_eq!(
            shutdown
                .instance_initiated_shutdown_behavior()
                .unwrap()
                .value(),
            Some("terminate")
        );
        let ud = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let raw = aws_smithy_base64(ud.user_data().unwrap().value().unwrap());
        let doc: serde_json::Value = serde_yaml_ng_to_json(&raw);
        let content = doc["write_files"][0]["content"].as_str().unwrap();
        assert_eq!(doc["write_files"][0]["path"], "/etc/leased/config.yaml");
        AgentConfig::from_yaml(std::path::Path::new("user-data"), content).unwrap();

        let vols = ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert!(!vols.volumes().is_empty());
        for v in vols.volumes() {
            let vt: BTreeMap<_, _> = v
                .tags()
                .iter()
                .map(|t| (t.key().unwrap(), t.value().unwrap()))
                .collect();
            assert_eq!(vt.get("lease:managed"), Some(&"true"));
            assert_eq!(vt.get("lease:job"), Some(&"resnet sweep"));
        }
        // The root volume as lease sized it (the AMI's own is smaller), encrypted.
        let root = vols
            .volumes()
            .iter()
            .find(|v| v.size() == Some(30))
            .unwrap_or_else(|| panic!("no 30 GiB root volume: {:?}", vols.volumes()));
        assert_eq!(root.encrypted(), Some(true));
        assert_eq!(root.volume_type().map(|t| t.as_str()), Some("gp3"));
    }
}

/// moto returns user-data base64-encoded, as EC2 does.
fn aws_smithy_base64(s: &str) -> String {
    String::from_utf8(aws_smithy_types::base64::decode(s).unwrap()).unwrap()
}

fn serde_yaml_ng_to_json(text: &str) -> serde_json::Value {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    serde_json::to_value(v).unwrap()
}

#[tokio::test]
async fn on_demand_launch_waits_until_running() {
    let moto = Moto::start();
    let out = lease(&moto)
        .args([
            "launch",
            "-t",
            "t3.micro",
            "--on-demand",
            "--wait",
            "-o",
            "json",
        ])
        .args(AGENT)
        .ok()
        .await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = json[0]["id"].as_str().unwrap();
    let i = moto.instance(id).await;
    assert_eq!(i.instance_lifecycle(), None, "on-demand has no lifecycle");
    assert_eq!(i.state().unwrap().name().unwrap().as_str(), "running");
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_launches() {
    let moto = Moto::start();
    let long_job = "j".repeat(300);
    let cases: [(&[&str], i32, &str); 5] = [
        (&["-t", "t9.huge"], 2, "t9.huge"),
        (&["-t", "t3.micro", "--ttl", "5x"], 2, "--ttl"),
        (&["-t", "t3.micro", "--job", &long_job], 2, "lease:job"),
        (&["-t", "t3.micro", "--ttl", "none"], 4, "--yes"),
        (&["-t", "t3.micro", "--on-idle", "explode"], 2, "explode"),
    ];
    for (args, code, needle) in cases {
        let (got, stderr) = lease(&moto)
            .arg("launch")
            .args(args)
            .args(AGENT)
            .fails()
            .await;
        assert_eq!(got, code, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(all_instances(&moto).await.is_empty(), "nothing may launch");
}

/// A laptop with no region and no IMDS: a bad flag is named before anything about AWS,
/// and the missing region is lease's one clear line, not preceded by SDK warnings.
#[tokio::test]
async fn without_a_region_flags_come_first_and_no_sdk_warning_shows() {
    let env: Vec<(String, String)> = [
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        // IMDS stays enabled, as on a laptop, but on a closed local port.
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
        ("NO_COLOR", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, stderr) = Cmd::new("lease", &env)
        .args(["launch", "-t", "t3.micro", "--ttl", "soon"])
        .fails()
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ttl"), "{stderr}");
    assert!(!stderr.contains("region"), "{stderr}");
    let (code, stderr) = Cmd::new("lease", &env)
        .args(["launch", "-t", "t3.micro"])
        .fails()
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no AWS region"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains("IMDS") && !stderr.contains("WARN"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dry_run_shows_the_real_image_and_launches_nothing() {
    let moto = Moto::start();
    let out = lease(&moto)
        .args(["launch", "-t", "m7g.large", "--job", "j", "--dry-run"])
        .args(AGENT)
        .ok()
        .await;
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["InstanceType"], "m7g.large");
    assert_eq!(plan["InstanceMarketOptions"]["MarketType"], "spot");
    assert_eq!(plan["MetadataOptions"]["HttpTokens"], "required");
    // Graviton: the arm64 image moto's public parameter names, as a launch would get.
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    let ami = ssm
        .get_parameter()
        .name("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64")
        .send()
        .await
        .unwrap();
    assert_eq!(plan["ImageId"], ami.parameter().unwrap().value().unwrap());
    let root = &plan["BlockDeviceMappings"][0];
    assert_eq!(root["Ebs"]["VolumeSize"], 30);
    assert_eq!(root["Ebs"]["Encrypted"], true);
    assert!(plan["UserData"].as_str().unwrap().contains("_arm64.deb"));
    assert!(all_instances(&moto).await.is_empty());
}

#[tokio::test]
async fn no_agent_package_refuses_before_anything_launches() {
    let moto = Moto::start();
    let (code, stderr) = lease(&moto)
        .args(["launch", "-t", "t3.micro"])
        .fails()
        .await;
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("No agent for this x86_64 instance"),
        "{stderr}"
    );
    assert!(all_instances(&moto).await.is_empty());
    let (code, stderr) = lease(&moto)
        .args(["launch", "-t", "t3.micro", "--on-idle", "stop"])
        .args(AGENT)
        .fails()
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--on-idle stop needs --on-demand"),
        "{stderr}"
    );
    assert!(all_instances(&moto).await.is_empty());
}

#[tokio::test]
async fn list_paginates_over_a_thousand_instances_and_filters_by_owner_and_job() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    // 1,050 instances in EC2's own way (not through lease), owned by two people.
    for (owner, count) in [("alice", 1_000), ("moto", 50)] {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        ec2.run_instances()
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(count)
            .max_count(count)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(tag("lease:managed", "true"))
                    .tags(tag("lease:owner", owner))
                    .tags(tag("lease:job", &format!("job-{owner}")))
                    .tags(tag("lease:ttl", "1h"))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    // An unmanaged instance never shows.
    moto.run_instance(&[]).await;
    let count = |out: String| {
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len()
    };
    assert_eq!(
        count(
            lease(&moto)
                .args(["list", "--all", "-o", "json"])
                .ok()
                .await
        ),
        1_050
    );
    assert_eq!(
        count(lease(&moto).args(["list", "-o", "json"]).ok().await),
        50,
        "mine only"
    );
    assert_eq!(
        count(
            lease(&moto)
                .args(["list", "--all", "--job", "job-alice", "-o", "json"])
                .ok()
                .await
        ),
        1_000
    );
    let table = lease(&moto).args(["list"]).ok().await;
    assert_eq!(table.lines().count(), 51, "header and 50 rows");
    assert!(table.starts_with("ID "), "{table}");
    for col in [
        "NAME", "TYPE", "MARKET", "STATE", "AGE", "TTL LEFT", "JOB", "OWNER", "STATUS",
    ] {
        assert!(table.lines().next().unwrap().contains(col), "{col}");
    }
}

#[tokio::test]
async fn status_reports_what_ec2_says() {
    let moto = Moto::start();
    let id = launch(&moto, &["--name", "web-1", "--ttl", "90m", "--job", "site"])
        .await
        .remove(0);
    let out = lease(&moto)
        .args(["status", "web-1", "-o", "json"])
        .ok()
        .await;
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let i = moto.instance(&id).await;
    assert_eq!(s["id"], id);
    assert_eq!(s["private_ip"].as_str(), i.private_ip_address());
    assert_eq!(s["market"], "spot");
    assert_eq!(s["lease"]["job"], "site");
    let deadline: DateTime<Utc> = s["deadline"].as_str().unwrap().parse().unwrap();
    let tag: DateTime<Utc> = tags(&i)["lease:expires-at"].parse().unwrap();
    assert_eq!(deadline, tag);
    let left = s["seconds_left"].as_i64().unwrap();
    assert!((5_300..=5_400).contains(&left), "{left}");
    let (code, err) = lease(&moto).args(["status", "nope"]).fails().await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nope"));
}

#[tokio::test]
async fn extend_moves_the_deadline_and_ttl_and_refuses_terminated() {
    let moto = Moto::start();
    let id = launch(&moto, &["--ttl", "1h"]).await.remove(0);
    let before: DateTime<Utc> = tags(&moto.instance(&id).await)["lease:expires-at"]
        .parse()
        .unwrap();
    lease(&moto).args(["extend", &id, "30m"]).ok().await;
    let t = tags(&moto.instance(&id).await);
    let after: DateTime<Utc> = t["lease:expires-at"].parse().unwrap();
    assert_eq!(after - before, chrono::TimeDelta::minutes(30));
    assert_eq!(t["lease:ttl"], "1h30m");

    moto.ec2()
        .await
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    let (code, err) = lease(&moto).args(["extend", &id, "1h"]).fails().await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("terminated") || err.contains("shutting-down"),
        "{err}"
    );
    let (code, _) = lease(&moto).args(["extend", &id, "soon"]).fails().await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn terminate_asks_for_more_than_one_and_never_touches_unmanaged() {
    let moto = Moto::start();
    let ids = launch(&moto, &["--count", "2", "--job", "batch"]).await;
    let state = |id: String| {
        let moto = &moto;
        async move {
            moto.instance(&id)
                .await
                .state()
                .unwrap()
                .name()
                .unwrap()
                .as_str()
                .to_string()
        }
    };
    let (code, err) = lease(&moto)
        .args(["terminate", "--job", "batch"])
        .fails()
        .await;
    assert_eq!(code, 4, "{err}");
    for id in &ids {
        assert_eq!(
            state(id.clone()).await,
            "running",
            "nothing terminated without --yes"
        );
    }
    lease(&moto)
        .args(["terminate", "--job", "batch", "--yes"])
        .ok()
        .await;
    for id in &ids {
        let s = state(id.clone()).await;
        assert!(s == "shutting-down" || s == "terminated", "{s}");
    }

    let stop_me = launch(&moto, &["--name", "pausable", "--on-demand"])
        .await
        .remove(0);
    lease(&moto).args(["stop", "pausable"]).ok().await;
    let s = state(stop_me.clone()).await;
    assert!(s == "stopping" || s == "stopped", "{s}");

    let other = moto.run_instance(&[]).await;
    let (code, err) = lease(&moto)
        .args(["terminate", &other, "--yes"])
        .fails()
        .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not managed"), "{err}");
    assert_eq!(state(other).await, "running");
}

#[tokio::test]
async fn attach_over_ssm_names_the_missing_plugin_and_prints_the_command() {
    let moto = Moto::start();
    let id = launch(&moto, &[]).await.remove(0);
    let out = lease(&moto)
        .args(["attach", &id, "--print", "--session", "work"])
        .ok()
        .await;
    assert!(
        out.contains(&format!("aws ssm start-session --target {id}")),
        "{out}"
    );
    assert!(out.contains("AWS-StartInteractiveCommand"), "{out}");
    assert!(
        out.contains("tmux -S /run/leased/tmux/default attach-session -t work"),
        "{out}"
    );
    // A PATH with `aws` but without the plugin.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.path().join("aws")).unwrap();
    let (code, err) = lease(&moto)
        .env("PATH", bin.path())
        .args(["attach", &id])
        .fails()
        .await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("session-manager-plugin"), "{err}");
}

/// The agent's side of `lease attach` on this machine, as the agent's package sets it
/// up on an instance: the task user, and a tmux server run as that user on the agent's
/// socket. Killed when dropped.
struct AgentTmux;

impl AgentTmux {
    fn as_task_user(args: &[&str]) -> std::process::Output {
        std::process::Command::new("runuser")
            .args([
                "-u",
                lease_common::session::DEFAULT_TASK_USER,
                "--",
                "tmux",
                "-S",
            ])
            .arg(lease_common::session::DEFAULT_TMUX_SOCKET)
            .args(args)
            .output()
            .expect("runuser and tmux")
    }

    fn start(session: &str, command: &str) -> Self {
        let user = lease_common::session::DEFAULT_TASK_USER;
        let exists = std::process::Command::new("id")
            .args(["-u", user])
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            let made = std::process::Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/bin/sh", user])
                .status()
                .expect("useradd");
            assert!(made.success(), "useradd {user}");
        }
        let socket = std::path::Path::new(lease_common::session::DEFAULT_TMUX_SOCKET);
        let dir = socket.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let owned = std::process::Command::new("chown")
            .arg(user)
            .arg(dir)
            .status()
            .unwrap();
        assert!(owned.success());
        let out = Self::as_task_user(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "40",
            "-s",
            session,
            command,
        ]);
        assert!(out.status.success(), "tmux as {user}: {out:?}");
        Self
    }
}

impl Drop for AgentTmux {
    fn drop(&mut self) {
        let _ = Self::as_task_user(&["kill-server"]);
    }
}

#[tokio::test]
async fn attach_over_ssh_joins_the_agents_tmux_as_the_task_user() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let id = launch(&moto, &[]).await.remove(0);

    // The "instance" side: a task's session in the agent's tmux, run as the task user.
    let _agent = AgentTmux::start("lease-t1", "echo remote-marker-4711; exec sleep 600");

    // The person's side: a terminal (an outer tmux) in which they run lease attach.
    let local_dir = tempfile::tempdir().unwrap();
    let local = Tmux::new(local_dir.path());
    let script = local_dir.path().join("attach.sh");
    let mut env: String = moto
        .env()
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    env.push_str(&format!(
        "export LEASE_SSH_COMMAND='ssh -F {}'\n",
        sshd.client_config.display()
    ));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{env}exec {} attach {id} --ssh --user root --session lease-t1\n",
            lease_tests::bin_path("lease").display()
        ),
    )
    .unwrap();
    local.new_session("person", &format!("sh {}", script.display()));

    let screen = wait_until(
        "the remote session's output on the attached screen",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let shown = local.capture("person");
            async move { shown.contains("remote-marker-4711").then_some(shown) }
        },
    )
    .await;
    // Attached, not merely printed: the agent's tmux now counts a client.
    let clients = AgentTmux::as_task_user(&["list-clients", "-t", "lease-t1"]);
    assert!(
        !clients.stdout.is_empty(),
        "no client attached; screen:\n{screen}"
    );
}

#[tokio::test]
async fn version_and_completions() {
    let v = Cmd::new("lease", &[]).arg("--version").ok().await;
    assert_eq!(v.trim(), format!("lease {}", lease_common::VERSION));
    let bash = Cmd::new("lease", &[])
        .args(["completions", "bash"])
        .ok()
        .await;
    assert!(bash.contains("lease") && bash.contains("extend"));
}

#[tokio::test]
async fn list_queries_several_regions_and_names_them() {
    let moto = Moto::start();
    let east = launch(&moto, &["--job", "multi"]).await.remove(0);
    let west = ids(&lease(&moto)
        .args([
            "launch",
            "-t",
            "t3.micro",
            "--job",
            "multi",
            "--region",
            "eu-west-1",
        ])
        .args(AGENT)
        .ok()
        .await)
    .remove(0);
    let out = lease(&moto)
        .args([
            "list",
            "--region",
            "us-east-1",
            "--region",
            "eu-west-1",
            "-o",
            "json",
        ])
        .ok()
        .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let found: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["region"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(found.get(&east).map(String::as_str), Some("us-east-1"));
    assert_eq!(found.get(&west).map(String::as_str), Some("eu-west-1"));
    let table = lease(&moto)
        .args(["list", "--region", "us-east-1", "--region", "eu-west-1"])
        .ok()
        .await;
    assert!(table.lines().next().unwrap().contains("REGION"), "{table}");
    let (code, _) = lease(&moto)
        .args([
            "status",
            &east,
            "--region",
            "us-east-1",
            "--region",
            "eu-west-1",
        ])
        .fails()
        .await;
    assert_eq!(code, 2, "several regions are for list only");
}

#[tokio::test]
async fn iam_policy_names_the_callers_account_and_confines_the_agent() {
    let moto = Moto::start();
    let out = lease(&moto)
        .args(["iam-policy", "agent", "--stack", "dev"])
        .ok()
        .await;
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["Version"], "2012-10-17");
    let statements = doc["Statement"].as_array().unwrap();
    let resources: Vec<String> = statements
        .iter()
        .flat_map(|s| s["Resource"].as_array().cloned().unwrap_or_default())
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        resources.contains(&"arn:aws:sqs:us-east-1:123456789012:lease-dev-pool-*".to_string()),
        "{resources:?}"
    );
    // Every statement that can end an instance is confined to the caller's own one.
    let mutating: Vec<&serde_json::Value> = statements
        .iter()
        .filter(|s| {
            s["Action"].as_array().unwrap().iter().any(|a| {
                let a = a.as_str().unwrap();
                a.starts_with("ec2:Terminate") || a.starts_with("ec2:Stop")
            })
        })
        .collect();
    assert!(
        !mutating.is_empty(),
        "the agent must be able to end its instance"
    );
    for s in mutating {
        assert_eq!(
            s["Resource"],
            serde_json::json!(["arn:aws:ec2:us-east-1:123456789012:instance/${ec2:InstanceID}"]),
            "{s}"
        );
    }
    let (code, err) = lease(&moto)
        .args(["iam-policy", "agent", "--stack", "Bad_Name"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
}
