//! The agent's configuration file, `/etc/leased/config.yaml`. The launcher renders it
//! into user-data; the agent reads it, with flags and `LEASED_*` variables on top.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/leased/config.yaml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/leased";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/leased";
/// Longest `drain-lead`: beyond half an hour the lead would eat a short lease whole.
pub const MAX_DRAIN_LEAD_SECS: u64 = 30 * 60;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Failed to read config file '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Invalid config in '{path}': {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Invalid config in '{path}': key '{key}': {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("Failed to render agent config: {0}")]
    Render(String),
}

/// Everything the agent can be told in its config file. Every field has a default so
/// an empty file is a valid config; unknown keys are refused so a typo never silently
/// turns a setting off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Identifies this node in events and the node table; defaults to the instance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// A human name for the node; defaults to the instance's `Name` tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The SQS queue the worker pulls tasks from; no queue means no task worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// The SNS control bus every event is published to; none means events are only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_arn: Option<String>,
    /// Bucket for task logs and result bundles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bucket: Option<String>,
    /// DynamoDB table that claims task ids so a duplicate delivery never runs twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_table: Option<String>,
    /// DynamoDB table of registered nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_table: Option<String>,
    /// The pool this node serves (informational: the queue URL decides what it takes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// One task to run once instead of taking work from a queue (`lease launch --task`):
    /// the node runs it, uploads its bundle, tags `lease:status=complete` or `failed`
    /// and ends the lease as `lease:on-complete` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<crate::messages::Task>,
    /// AWS region; defaults to the instance's own region from IMDS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Named AWS profile, for runs outside EC2; on an instance the role is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How often `NodeHeartbeat` is published.
    pub heartbeat_interval: HumanDuration,
    /// Simulate task execution instead of running programs (demo and benchmarks).
    pub mock_mode: bool,
    /// Tasks run at once; the worker takes no more messages than it has free slots.
    pub max_concurrent_tasks: u32,
    /// Lifetime used when the instance carries no `lease:ttl` or `lease:expires-at`
    /// tag, so there is never silently no deadline.
    pub default_ttl: HumanDuration,
    /// How often IMDS is polled for spot interruption and rebalance notices. EC2 gives
    /// two minutes' notice; one second leaves nearly all of it for the task.
    pub spot_poll_interval: HumanDuration,
    /// How often the lease tags are re-read, so `lease extend` reaches the agent.
    pub tag_refresh_interval: HumanDuration,
    /// Time kept back from a spot notice's deadline for requeueing and the final upload.
    pub interruption_margin: HumanDuration,
    /// While a task runs, how long before the lease's deadline the agent starts
    /// interrupting it (SIGTERM, partial bundle upload, requeue), so that is done by
    /// the deadline and the instance still ends on time. `0s` leaves the worker only
    /// the fraction of a second between the deadline and the action.
    pub drain_lead: HumanDuration,
    pub idle: IdleConfig,
    pub claude: ClaudeConfig,
    /// State that must survive a restart (the deadline, adopted tasks).
    pub state_dir: PathBuf,
    /// The control socket lives here.
    pub runtime_dir: PathBuf,
    /// The unprivileged user every task runs as (its tmux server too). Claude Code
    /// refuses `bypassPermissions` as root, and a task should not hold root's power
    /// over the machine. Used when the agent runs as root; an agent running as any
    /// other user runs tasks as itself.
    #[serde(skip_serializing_if = "is_default_task_user")]
    pub task_user: String,
    /// The tmux server's socket (`tmux -S`), so the agent never shares a server with
    /// a tmux someone else started and `lease attach` finds it by path. Its directory
    /// is created for the task user.
    #[serde(skip_serializing_if = "is_default_tmux_socket")]
    pub tmux_socket: PathBuf,
    /// Variables set for every task, over the explicit environment the agent gives it
    /// (`PATH`, `HOME`, `USER`, `LANG`, the `LEASE_*` variables). Tasks never inherit
    /// the agent's or the tmux server's environment.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task_env: std::collections::BTreeMap<String, String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            node_name: None,
            queue_url: None,
            topic_arn: None,
            log_bucket: None,
            tasks_table: None,
            nodes_table: None,
            pool: None,
            task: None,
            region: None,
            profile: None,
            heartbeat_interval: HumanDuration::from_secs(30),
            mock_mode: false,
            max_concurrent_tasks: 1,
            default_ttl: HumanDuration::from_secs(4 * 3_600),
            spot_poll_interval: HumanDuration::from_secs(1),
            tag_refresh_interval: HumanDuration::from_secs(30),
            interruption_margin: HumanDuration::from_secs(15),
            drain_lead: HumanDuration::from_secs(60),
            idle: IdleConfig::default(),
            claude: ClaudeConfig::default(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            task_user: crate::session::DEFAULT_TASK_USER.to_string(),
            tmux_socket: PathBuf::from(crate::session::DEFAULT_TMUX_SOCKET),
            task_env: std::collections::BTreeMap::new(),
        }
    }
}

/// Thresholds below which a sample counts as idle. Any signal at or above its
/// threshold keeps the machine active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct IdleConfig {
    pub sample_interval: HumanDuration,
    /// Busy CPU (user + system + iowait, not steal) across all cores, in percent.
    pub cpu_percent: f64,
    /// Bytes per second received plus sent on non-loopback interfaces.
    pub network_bytes_per_sec: f64,
    /// Reads plus writes completed per second on whole disks.
    pub disk_iops: f64,
    /// A terminal with input more recent than this counts as a person at work.
    pub session_input_within: HumanDuration,
    /// GPU utilisation in percent, when `nvidia-smi` exists.
    pub gpu_percent: f64,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            sample_interval: HumanDuration::from_secs(10),
            cpu_percent: 5.0,
            network_bytes_per_sec: 20_000.0,
            disk_iops: 20.0,
            session_input_within: HumanDuration::from_secs(15 * 60),
            gpu_percent: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClaudeConfig {
    /// Run Claude Code against Bedrock with the instance role as the credential.
    pub bedrock: bool,
    /// Default model when a task names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The SSM parameter (a SecureString) holding the Anthropic API key: read with the
    /// instance role when a Claude task starts and given to it as `ANTHROPIC_API_KEY`,
    /// so the key is never in user-data, tags or this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_parameter: Option<String>,
    /// The Claude Code version installed (as the task user, by Anthropic's native
    /// installer) when a Claude task starts and the CLI is not on its PATH: `stable`,
    /// `latest` or `X.Y.Z`; the installer's default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cli_version: Option<String>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(path, &text)
    }

    /// Parses and validates; `path` only names the file in errors.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // An empty file (or one of comments only) is the default config, not an error.
        let config: AgentConfig = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            AgentConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        config.validate(path)?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml_ng::to_string(self).map_err(|e| ConfigError::Render(e.to_string()))
    }

    /// Rejects values that parse but make no sense, naming the key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                reason: reason.to_string(),
            })
        };
        let positive: [(&'static str, HumanDuration); 6] = [
            ("heartbeat-interval", self.heartbeat_interval),
            ("default-ttl", self.default_ttl),
            ("spot-poll-interval", self.spot_poll_interval),
            ("tag-refresh-interval", self.tag_refresh_interval),
            ("idle.sample-interval", self.idle.sample_interval),
            ("idle.session-input-within", self.idle.session_input_within),
        ];
        for (key, d) in positive {
            if d.as_secs() == 0 {
                return bad(key, "must be longer than zero");
            }
        }
        if self.spot_poll_interval.as_secs() > 30 {
            return bad(
                "spot-poll-interval",
                "must be at most 30s: EC2 gives two minutes' notice of a spot interruption",
            );
        }
        if self.interruption_margin.as_secs() >= 120 {
            return bad(
                "interruption-margin",
                "must be under 2m, the notice EC2 gives before a spot interruption",
            );
        }
        if self.drain_lead.as_secs() > MAX_DRAIN_LEAD_SECS {
            return bad(
                "drain-lead",
                "must be at most 30m: the lease's last half hour belongs to its work",
            );
        }
        if self.max_concurrent_tasks == 0 {
            return bad("max-concurrent-tasks", "must be at least 1");
        }
        if !is_user_name(&self.task_user) {
            return bad(
                "task-user",
                "must be a user name: letters, digits, '_', '-' or '.', not starting with '-'",
            );
        }
        if !self.tmux_socket.is_absolute() {
            return bad("tmux-socket", "must be an absolute path");
        }
        if let Some(v) = &self.claude.cli_version
            && !is_cli_version(v)
        {
            return bad(
                "claude.cli-version",
                "must be 'stable', 'latest' or a version such as 2.1.0",
            );
        }
        if let Some(name) = self.task_env.keys().find(|k| !is_variable_name(k)) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "task-env",
                reason: format!("{name:?} is not a variable name (letters, digits, '_')"),
            });
        }
        if let Some(name) = self.task_env.keys().find(|k| k.starts_with("LEASE_")) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "task-env",
                reason: format!("{name:?}: the LEASE_* variables are the agent's to set"),
            });
        }
        for (key, v) in [
            ("idle.cpu-percent", self.idle.cpu_percent),
            ("idle.gpu-percent", self.idle.gpu_percent),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return bad(key, "must be between 0 and 100");
            }
        }
        for (key, v) in [
            (
                "idle.network-bytes-per-sec",
                self.idle.network_bytes_per_sec,
            ),
            ("idle.disk-iops", self.idle.disk_iops),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be a number of zero or more");
            }
        }
        for (key, v) in [
            ("queue-url", &self.queue_url),
            ("topic-arn", &self.topic_arn),
            ("log-bucket", &self.log_bucket),
            ("node-id", &self.node_id),
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return bad(key, "must not be empty");
            }
        }
        if self
            .topic_arn
            .as_deref()
            .is_some_and(|a| !a.starts_with("arn:"))
        {
            return bad("topic-arn", "must be an SNS topic ARN (arn:aws:sns:…)");
        }
        Ok(())
    }
}

// The defaults are left out of a rendered config (user-data has 16 KB for everything).
fn is_default_task_user(user: &String) -> bool {
    user == crate::session::DEFAULT_TASK_USER
}

fn is_default_tmux_socket(socket: &Path) -> bool {
    socket == Path::new(crate::session::DEFAULT_TMUX_SOCKET)
}

/// What Claude Code's installer accepts: a channel, or `X.Y.Z` with an optional
/// `-suffix`.
fn is_cli_version(v: &str) -> bool {
    if v == "stable" || v == "latest" {
        return true;
    }
    let (core, suffix) = v.split_once('-').unwrap_or((v, ""));
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// A name `useradd` accepts: no shell or option metacharacters reach `runuser`.
pub fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A name a POSIX shell can `export`.
pub fn is_variable_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_yaml(Path::new("/etc/leased/config.yaml"), text)
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), AgentConfig::default());
        assert_eq!(parse("# nothing\n---\n").unwrap(), AgentConfig::default());
    }

    #[test]
    fn render_round_trips() {
        let mut c = AgentConfig {
            queue_url: Some("http://127.0.0.1:1/123/q".into()),
            topic_arn: Some("arn:aws:sns:us-east-1:123456789012:bus".into()),
            heartbeat_interval: HumanDuration::from_secs(60),
            ..Default::default()
        };
        c.idle.cpu_percent = 12.5;
        c.claude.bedrock = true;
        let yaml = c.to_yaml().unwrap();
        assert!(yaml.contains("heartbeat-interval: 1m"), "{yaml}");
        assert_eq!(parse(&yaml).unwrap(), c);
    }

    #[test]
    fn numbers_and_durations_both_work() {
        let c = parse("heartbeat-interval: 60\nidle:\n  sample-interval: 5s\n").unwrap();
        assert_eq!(c.heartbeat_interval.as_secs(), 60);
        assert_eq!(c.idle.sample_interval.as_secs(), 5);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("hearbeat-interval: 30s\n").unwrap_err().to_string();
        assert!(err.contains("hearbeat-interval"), "{err}");
        assert!(err.contains("/etc/leased/config.yaml"), "{err}");
        let err = parse("idle:\n  cpu: 3\n").unwrap_err().to_string();
        assert!(err.contains("cpu"), "{err}");
    }

    #[test]
    fn the_task_user_socket_and_environment_are_checked() {
        let c = parse("task-user: builder\ntmux-socket: /run/leased/t/s\ntask-env:\n  A_1: x y\n")
            .unwrap();
        assert_eq!(c.task_user, "builder");
        assert_eq!(c.task_env.get("A_1").map(String::as_str), Some("x y"));
        for (yaml, key, why) in [
            ("task-user: '-u root'\n", "task-user", "user name"),
            ("task-user: ''\n", "task-user", "user name"),
            ("tmux-socket: run/s\n", "tmux-socket", "absolute"),
            ("task-env:\n  A-B: x\n", "task-env", "\"A-B\""),
            (
                "task-env:\n  LEASE_TASK_ID: x\n",
                "task-env",
                "LEASE_TASK_ID",
            ),
        ] {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{yaml}: {err}");
        }
    }

    #[test]
    fn the_claude_cli_version_is_a_channel_or_a_version() {
        for v in ["stable", "latest", "2.1.337", "2.1.0-beta.1"] {
            let c = parse(&format!("claude:\n  cli-version: {v}\n")).unwrap();
            assert_eq!(c.claude.cli_version.as_deref(), Some(v));
        }
        for v in ["'2.1'", "'1.2.3; rm -rf ~'", "'$(id)'", "''", "v1.2.3"] {
            let err = parse(&format!("claude:\n  cli-version: {v}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("claude.cli-version"), "{v}: {err}");
        }
    }

    #[test]
    fn nonsense_values_name_the_key() {
        let err = parse("heartbeat-interval: 0s\n").unwrap_err().to_string();
        assert!(err.contains("heartbeat-interval"), "{err}");
        let err = parse("idle:\n  cpu-percent: 140\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle.cpu-percent"), "{err}");
        let err = parse("drain-lead: 2h\n").unwrap_err().to_string();
        assert!(err.contains("drain-lead"), "{err}");
        assert_eq!(parse("drain-lead: 0s\n").unwrap().drain_lead.as_secs(), 0);
        let err = parse("max-concurrent-tasks: 0\n").unwrap_err().to_string();
        assert!(err.contains("max-concurrent-tasks"), "{err}");
        let err = parse("topic-arn: bus\n").unwrap_err().to_string();
        assert!(err.contains("topic-arn"), "{err}");
        let err = parse("default-ttl: forever\n").unwrap_err().to_string();
        assert!(err.contains("forever"), "{err}");
    }
}
