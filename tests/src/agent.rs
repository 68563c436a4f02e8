//! A `leased run` process for end-to-end tests and benchmarks, and the control bus
//! (an SNS topic with an SQS queue subscribed) that tests read its events from.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_common::messages::Event;

use crate::imds::{AGENT_ROLE, FakeImds, role_session_blocking};
use crate::{Cmd, Moto, wait_until};

/// How often the harness looks at a process or the emulator.
pub const POLL: Duration = Duration::from_millis(50);

/// The emulator's variables an agent does not get: the fixed test key, and the switch
/// that keeps other programs from asking IMDS for credentials.
const NOT_ON_AN_INSTANCE: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_EC2_METADATA_DISABLED",
];

/// A `leased run` process with its own state and runtime directories and its own tmux
/// server (so tasks of parallel tests never meet); both are killed on drop.
#[derive(Debug)]
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub config: PathBuf,
    socket: PathBuf,
    runs: u32,
}

impl Agent {
    pub fn start(moto: &Moto, imds: &FakeImds, dir: &Path, extra_config: &str) -> Self {
        Self::start_with_env(moto, imds, dir, extra_config, &[])
    }

    /// Test settings (quick spot polling and tag refresh, private directories) unless
    /// `extra_config` sets them itself, plus extra environment variables.
    pub fn start_with_env(
        moto: &Moto,
        imds: &FakeImds,
        dir: &Path,
        extra_config: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut yaml = String::new();
        for (key, value) in [
            ("state-dir", dir.join("state").display().to_string()),
            ("runtime-dir", dir.join("run").display().to_string()),
            ("spot-poll-interval", "1s".to_string()),
            ("tag-refresh-interval", "2s".to_string()),
        ] {
            if !extra_config.contains(&format!("{key}:")) {
                yaml.push_str(&format!("{key}: {value}\n"));
            }
        }
        yaml.push_str(extra_config);
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::with_config(moto, imds, dir, &yaml, &extra_env)
    }

    /// With exactly this config file.
    pub fn with_config(
        moto: &Moto,
        imds: &FakeImds,
        dir: &Path,
        yaml: &str,
        extra_env: &[(String, String)],
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let_task_user_in(dir);
        let socket = dir.join("tmux").join("socket");
        // As on an instance: the credentials are the instance profile's, which the SDK
        // reads from IMDS (an STS session of the agents' role, unless the test gave
        // the fake one of its own), never a key in the environment; tests/iam_check.py
        // fails an agent call signed with another key.
        if imds.role().is_none() {
            let id = imds.info().instance_id;
            imds.set_role(AGENT_ROLE, role_session_blocking(moto, AGENT_ROLE, &id));
        }
        let mut env: Vec<(String, String)> = moto
            .env()
            .into_iter()
            .filter(|(k, _)| !NOT_ON_AN_INSTANCE.contains(&k.as_str()))
            .collect();
        env.extend(imds.env());
        // Belt and braces: the agent refuses a poweroff outside systemd anyway.
        env.push(("LEASED_NEVER_POWER_OFF".into(), "1".into()));
        env.push(("LEASED_TMUX_SOCKET".into(), socket.display().to_string()));
        // The call log's component, and the instance the agent's calls come from (what
        // `ec2:SourceInstanceARN` would be on EC2).
        env.push((
            "AWS_SDK_UA_APP_ID".into(),
            format!("leased.{}", imds.info().instance_id),
        ));
        env.extend(extra_env.iter().cloned());
        Self {
            child: spawn(&env, &config, dir, 0),
            dir: dir.to_path_buf(),
            env,
            config,
            socket,
            runs: 1,
        }
    }

    /// SIGKILL, then a fresh process on the same state directory.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.restart();
    }

    /// SIGTERM (a `systemctl restart`, the machine staying up), waits for the exit,
    /// then a fresh process on the same state directory.
    pub fn terminate_and_restart(&mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "leased exited with {status}\n{}",
            self.logs()
        );
        self.restart();
    }

    fn restart(&mut self) {
        self.child = spawn(&self.env, &self.config, &self.dir, self.runs);
        self.runs += 1;
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Every run's log, oldest first.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for run in 0..self.runs {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(format!("leased-{run}.log"))) {
                out.push_str(&format!(
                    "--- leased {} run {run} ---\n{t}",
                    self.dir.display()
                ));
            }
        }
        out
    }

    pub fn client(&self) -> Cmd {
        Cmd::new("leased", &self.env)
            .arg("--config")
            .arg(&self.config)
    }

    /// Waits until the daemon answers on its control socket.
    pub async fn ready(&self) {
        wait_until(
            "leased to answer on its socket",
            Duration::from_secs(20),
            POLL,
            || async {
                let out = self.client().args(["status", "--json"]).output().await;
                out.status.success().then_some(())
            },
        )
        .await;
    }

    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    pub fn saved_deadline(&self) -> DateTime<Utc> {
        let text = std::fs::read_to_string(self.dir.join("state/state.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["deadline"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The agent's log on failure, or always with LEASED_TEST_LOGS=1.
        if std::thread::panicking() || std::env::var_os("LEASED_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Tasks run as the task user, which must reach the agent's directories: a test's
/// temporary directory is private to root, so its folders from the system's
/// temporary directory down are opened for traversal (not listing).
pub fn let_task_user_in(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let tmp = std::env::temp_dir();
    for folder in dir.ancestors().filter(|a| a.starts_with(&tmp) && *a != tmp) {
        let mode = std::fs::metadata(folder).unwrap().permissions().mode();
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    }
}

fn spawn(env: &[(String, String)], config: &Path, dir: &Path, run: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("leased-{run}.log"))).unwrap();
    let mut cmd = Cmd::new("leased", env)
        .args(["run", "-vv", "--config"])
        .arg(config)
        .command();
    cmd.stdout(Stdio::null()).stderr(log);
    cmd.spawn().expect("spawn leased")
}

/// An SNS topic (the control bus) with an SQS queue subscribed with raw delivery.
#[derive(Debug)]
pub struct Bus {
    pub topic_arn: String,
    pub queue_url: String,
    pub sqs: aws_sdk_sqs::Client,
}

impl Bus {
    pub async fn new(moto: &Moto) -> Self {
        let sdk = moto.sdk_config().await;
        let sns = aws_sdk_sns::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let topic_arn = sns
            .create_topic()
            .name("lease-bus")
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let queue_url = sqs
            .create_queue()
            .queue_name("bus-watch")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap();
        Self {
            topic_arn,
            queue_url,
            sqs,
        }
    }

    /// Receives until an event of type `kind` arrives (or `limit` passes), returning it
    /// and when it was received. Other events are kept in `seen`.
    pub async fn wait_for(
        &self,
        kind: &str,
        limit: Duration,
        seen: &mut Vec<Event>,
    ) -> (Event, Instant) {
        let start = Instant::now();
        loop {
            if let Some(e) = seen.iter().find(|e| e.type_name() == kind) {
                return (e.clone(), Instant::now());
            }
            assert!(
                start.elapsed() < limit,
                "no {kind} on the bus within {limit:?}; saw {:?}",
                seen.iter().map(|e| e.type_name()).collect::<Vec<_>>()
            );
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                // Short polls: the time to arrival is what is measured, and a long poll
                // on the emulator can hold a message until its wait ends.
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            if out.messages().is_empty() {
                tokio::time::sleep(POLL).await;
            }
            for m in out.messages() {
                let body = m.body().unwrap();
                let event = Event::parse(body).unwrap_or_else(|e| panic!("{e}: {body}"));
                if event.type_name() == kind {
                    seen.push(event);
                    return (seen.last().unwrap().clone(), Instant::now());
                }
                seen.push(event);
            }
        }
    }
}
