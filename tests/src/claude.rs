//! The real Claude Code CLI for tests: where it is, and running it directly (as the
//! task user, as the agent would) against the fake Messages API, which is how the
//! parser's fixtures are recorded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::anthropic::FakeAnthropic;

/// The pinned version tests/run installs (claude-agent-sdk's bundled CLI).
pub const PINNED_VERSION: &str = "2.1.337";

/// The CLI: `LEASE_CLAUDE_CLI` (set by tests/run), else where tests/run puts it for
/// the task user, `~lease/.local/bin/claude`.
pub fn cli() -> PathBuf {
    if let Some(path) = std::env::var_os("LEASE_CLAUDE_CLI") {
        return PathBuf::from(path);
    }
    task_home().join(".local/bin/claude")
}

/// The task user's home, from the password database.
pub fn task_home() -> PathBuf {
    let out = Command::new("getent")
        .args(["passwd", lease_common::session::DEFAULT_TASK_USER])
        .output()
        .expect("run getent");
    let line = String::from_utf8_lossy(&out.stdout);
    let home = line.trim().split(':').nth(5).unwrap_or_default();
    assert!(
        !home.is_empty(),
        "the task user '{}' does not exist: run tests/install-deps.sh",
        lease_common::session::DEFAULT_TASK_USER
    );
    PathBuf::from(home)
}

/// Fails the test, saying how to fix it, when the CLI is not installed.
pub fn require_cli() -> PathBuf {
    let cli = cli();
    let out = Command::new(&cli).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => cli,
        _ => panic!(
            "Claude Code is not at '{}': run tests/run (it installs the pinned CLI) or set \
             LEASE_CLAUDE_CLI",
            cli.display()
        ),
    }
}

/// What one direct run of the CLI printed.
#[derive(Debug)]
pub struct Session {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

/// Runs `claude -p --output-format stream-json --verbose <args>` in `workdir` as the
/// task user, with only the environment the agent would give it plus the fake's,
/// feeding `prompt` on standard input.
pub fn run_as_task_user(
    fake: &FakeAnthropic,
    key: &str,
    workdir: &Path,
    prompt: &str,
    args: &[&str],
) -> Session {
    use std::io::Write;
    let cli = require_cli();
    let home = task_home();
    let mut cmd = Command::new("runuser");
    cmd.args([
        "-u",
        lease_common::session::DEFAULT_TASK_USER,
        "--",
        "env",
        "-i",
    ])
    .arg(format!("HOME={}", home.display()))
    .arg(format!(
        "PATH={}/.local/bin:/usr/local/bin:/usr/bin:/bin",
        home.display()
    ))
    .arg("LANG=C.UTF-8");
    for (k, v) in fake.claude_env(key, 2) {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(&cli)
        .args(["-p", "--output-format", "stream-json", "--verbose"])
        .args(args)
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run claude through runuser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(prompt.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Session {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// A session's shape: per line, its type and subtype (or `<synthetic>` for the CLI's
/// own messages) and the types of its content blocks. Two runs of one scenario have
/// the same shape; a CLI that changed its output does not.
pub fn shape(stream: &str) -> Vec<String> {
    stream
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|m| {
            let mut s = m["type"].as_str().unwrap_or("?").to_string();
            if let Some(sub) = m["subtype"].as_str() {
                s.push('/');
                s.push_str(sub);
            }
            if m["message"]["model"] == "<synthetic>" {
                s.push_str("/<synthetic>");
            }
            if let Some(blocks) = m["message"]["content"].as_array() {
                let kinds: Vec<&str> = blocks.iter().filter_map(|b| b["type"].as_str()).collect();
                s.push_str(&format!("[{}]", kinds.join(",")));
            }
            s
        })
        .collect()
}
