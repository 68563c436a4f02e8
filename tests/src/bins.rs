//! Running the real `lease` and `leased` binaries against the emulator.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Path of a workspace binary. The test command builds them first
/// (`cargo build --workspace --bins`); `LEASE_BIN_DIR` overrides the location.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("LEASE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        // target/<profile>/deps/<test-binary> → target/<profile>
        None => std::env::current_exe()
            .expect("current_exe")
            .parent()
            .and_then(|p| p.parent())
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found: build it first with `cargo build --workspace --bins` (tests/run does)",
        path.display()
    );
    path
}

/// The subcommands of `lease` (the first of them on a command line names the call
/// log's component).
const LEASE_COMMANDS: &[&str] = &[
    "launch",
    "list",
    "status",
    "extend",
    "terminate",
    "stop",
    "hibernate",
    "attach",
    "submit",
    "stats",
    "tasks",
    "nodes",
    "logs",
    "download",
    "iam-policy",
    "schedule",
    "setup",
    "teardown",
    "doctor",
];

/// A command with the emulator's environment and nothing from the developer's own
/// AWS setup, so a test can never reach a real account.
#[derive(Debug)]
pub struct Cmd {
    inner: Command,
    display: String,
    is_lease: bool,
    /// The subcommand has named the call log's component.
    named: bool,
}

impl Cmd {
    pub fn new(name: &str, env: &[(String, String)]) -> Self {
        let path = bin_path(name);
        let mut inner = Command::new(&path);
        inner.env_clear();
        for key in ["PATH", "HOME", "TMPDIR", "LANG", "TERM"] {
            if let Some(v) = std::env::var_os(key) {
                inner.env(key, v);
            }
        }
        // The developer's own lease settings never reach a test: a command that falls
        // back to a stack finds none unless the test points LEASE_CONFIG at its own.
        inner.env(
            "LEASE_CONFIG",
            std::env::temp_dir()
                .join("lease-tests-no-settings")
                .join("config.yaml"),
        );
        // The SDK puts `app/<name>` in its user agent: the call log tells which
        // program made a call by it (a test may still override it).
        inner.env("AWS_SDK_UA_APP_ID", name);
        inner.envs(env.iter().map(|(k, v)| (k, v)));
        inner.stdin(Stdio::null());
        Self {
            inner,
            display: name.to_string(),
            is_lease: name == "lease",
            named: false,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        // `lease <command>` names itself `app/lease.<command>`, so the call log tells an
        // administrator's `setup` from a user's `launch`.
        let arg = a.as_ref().to_string_lossy();
        if self.is_lease && !self.named && LEASE_COMMANDS.contains(&arg.as_ref()) {
            self.inner.env("AWS_SDK_UA_APP_ID", format!("lease.{arg}"));
            self.named = true;
        }
        self.display.push(' ');
        self.display.push_str(&a.as_ref().to_string_lossy());
        self.inner.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.inner.env(k, v);
        self
    }

    pub fn command(self) -> Command {
        self.inner
    }

    /// Runs to completion on a blocking thread, so a tokio test's emulator calls keep
    /// being served meanwhile.
    pub async fn output(self) -> Output {
        let mut inner = self.inner;
        tokio::task::spawn_blocking(move || inner.output().expect("spawn"))
            .await
            .expect("join")
    }

    /// Runs and asserts success, returning stdout.
    pub async fn ok(self) -> String {
        let display = self.display.clone();
        let out = self.output().await;
        assert!(
            out.status.success(),
            "`{display}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and asserts failure, returning (exit code, stderr).
    pub async fn fails(self) -> (i32, String) {
        let display = self.display.clone();
        let out = self.output().await;
        assert!(
            !out.status.success(),
            "`{display}` unexpectedly succeeded\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
