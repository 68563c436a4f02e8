//! systemd integration: `READY=1`, `WATCHDOG=1`, `STATUS=`, `STOPPING=1`, and the
//! message to logged-in terminals. Every call is a no-op without `NOTIFY_SOCKET`, so the
//! agent runs the same by hand and in tests.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Clone)]
pub struct Notifier {
    /// `WATCHDOG_USEC` from systemd, when the unit has `WatchdogSec=` and this process
    /// is the one being watched.
    watchdog: Option<Duration>,
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// A notifier that says nothing (tests).
    pub fn disabled() -> Self {
        Self {
            watchdog: None,
            enabled: false,
        }
    }

    /// How often the decision loop must ping: half the watchdog timeout, as systemd
    /// recommends, so one slow turn of the loop is not a restart.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// Writes a message to every logged-in terminal with `wall`, when it exists. Runs in
/// the background and never blocks the caller; a missing `wall` is only logged.
pub fn wall(message: String) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let child = tokio::process::Command::new("wall")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("not messaging terminals: cannot run wall: {e}");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(message.as_bytes()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    });
}
