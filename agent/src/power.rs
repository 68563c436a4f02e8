//! The last resort: powering the machine off through systemd when the EC2 API cannot
//! end the instance (the launcher sets shutdown behaviour `terminate`, so on EC2 a
//! poweroff ends the lease too).
//!
//! It must be impossible for a test, the demo or a run by hand on a workstation to
//! power the host off, so [`SystemdPowerOff`] refuses unless every one of these holds:
//!
//! - PID 1 is systemd (`/proc/1/comm` is `systemd` and `/run/systemd/system` exists);
//! - this process was started by systemd as a service: its parent is PID 1 and
//!   `INVOCATION_ID` is set (systemd sets it for every unit it starts; a shell, a test
//!   harness or `sudo` never do);
//! - `LEASED_NEVER_POWER_OFF` is not set (an explicit off switch for operators).
//!
//! Inside a container booted with `systemd-nspawn --boot`, PID 1 is the container's
//! systemd, so the poweroff ends the container, not the host.

use std::fmt::Debug;
use std::time::Duration;

use crate::BoxFuture;

/// Set (to anything) to forbid the poweroff fallback outright.
pub const NEVER_POWER_OFF_ENV: &str = "LEASED_NEVER_POWER_OFF";

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("Refusing to power the machine off: {0}")]
    NotAllowed(String),
    #[error("Failed to power the machine off with systemctl: {0}")]
    Failed(String),
}

pub trait PowerOff: Send + Sync + Debug {
    /// `Ok` when a poweroff would be carried out, else why not.
    fn allowed(&self) -> Result<(), String>;
    fn power_off(&self) -> BoxFuture<'_, Result<(), PowerError>>;
    /// True when the whole machine is going down (not merely the agent stopping): the
    /// stop then interrupts running tasks, which would not survive it.
    fn machine_stopping(&self) -> BoxFuture<'_, bool>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemdPowerOff;

impl SystemdPowerOff {
    fn check() -> Result<(), String> {
        if std::env::var_os(NEVER_POWER_OFF_ENV).is_some() {
            return Err(format!("{NEVER_POWER_OFF_ENV} is set"));
        }
        let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        if pid1.trim() != "systemd" || !std::path::Path::new("/run/systemd/system").exists() {
            return Err(format!(
                "PID 1 is '{}', not systemd (a container, a test or a workstation)",
                pid1.trim()
            ));
        }
        if std::os::unix::process::parent_id() != 1 || std::env::var_os("INVOCATION_ID").is_none() {
            return Err("leased was not started by systemd as a service (run by hand?)".into());
        }
        Ok(())
    }
}

impl PowerOff for SystemdPowerOff {
    fn allowed(&self) -> Result<(), String> {
        Self::check()
    }

    fn power_off(&self) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async {
            Self::check().map_err(PowerError::NotAllowed)?;
            tracing::warn!("powering the machine off through systemd");
            let run = tokio::process::Command::new("systemctl")
                .arg("poweroff")
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(Duration::from_secs(30), run).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(PowerError::Failed(format!("systemctl exited with {s}"))),
                Ok(Err(e)) => Err(PowerError::Failed(e.to_string())),
                Err(_) => Err(PowerError::Failed("systemctl did not finish in 30s".into())),
            }
        })
    }

    fn machine_stopping(&self) -> BoxFuture<'_, bool> {
        Box::pin(system_is_stopping())
    }
}

/// Never powers anything off (tests).
#[derive(Debug, Default)]
pub struct NeverPowerOff {
    pub asked: std::sync::atomic::AtomicU32,
}

impl PowerOff for NeverPowerOff {
    fn allowed(&self) -> Result<(), String> {
        Err("power-off is disabled here".into())
    }

    fn power_off(&self) -> BoxFuture<'_, Result<(), PowerError>> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Err(PowerError::NotAllowed("power-off is disabled here".into())) })
    }

    /// Tests never run on a machine going down.
    fn machine_stopping(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// A poweroff that is "allowed" and only counts (tests of the fallback).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct CountingPowerOff(pub std::sync::Mutex<u32>);

#[cfg(test)]
impl PowerOff for CountingPowerOff {
    fn allowed(&self) -> Result<(), String> {
        Ok(())
    }
    fn power_off(&self) -> BoxFuture<'_, Result<(), PowerError>> {
        *self.0.lock().unwrap() += 1;
        Box::pin(async { Ok(()) })
    }
    fn machine_stopping(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// True when systemd says the whole machine is going down (not merely this service
/// stopping). Only asked where systemd is PID 1; bounded by a timeout.
async fn system_is_stopping() -> bool {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        return false;
    }
    let out = tokio::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(2), out).await {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).trim() == "stopping",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_process_may_never_power_off() {
        // Whatever this machine is, a test's parent is the test harness, not PID 1.
        let err = SystemdPowerOff.allowed().unwrap_err();
        assert!(!err.is_empty());
    }
}
