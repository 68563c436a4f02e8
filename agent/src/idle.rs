//! Idle detection: samplers that read procfs (and `nvidia-smi` when present), and a
//! pure [`evaluate`] that says whether one sample is idle and, if not, which signal kept
//! the machine busy. A probe that fails counts as active, never as idle: an agent that
//! cannot see the disk must not conclude that nobody uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use lease_common::config::IdleConfig;

/// One reading of every signal. `Err` is a probe that failed (with why).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Busy CPU across all cores, percent, steal excluded. `None` on the first sample
    /// (a rate needs two readings).
    pub cpu_percent: Result<Option<f64>, String>,
    pub net_bytes_per_sec: Result<Option<f64>, String>,
    pub disk_iops: Result<Option<f64>, String>,
    /// Terminals with input more recent than `session-input-within`.
    pub active_sessions: Result<u32, String>,
    pub ssm_sessions: Result<u32, String>,
    /// `None` when there is no `nvidia-smi`.
    pub gpu_percent: Option<Result<f64, String>>,
    pub task: Option<String>,
    /// Memory in use, percent (for heartbeats; not an idle signal).
    pub memory_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Idle,
    /// Why the machine counts as busy, for the debug log and `leased status`.
    Active(String),
}

/// Whether one sample is idle under the thresholds. Any signal at or above its
/// threshold, or any failed probe, keeps the machine active.
pub fn evaluate(s: &Sample, t: &IdleConfig) -> Activity {
    use Activity::Active;
    if let Some(task) = &s.task {
        return Active(format!("task {task} is running"));
    }
    let rates = [
        ("cpu", &s.cpu_percent, t.cpu_percent, "%"),
        (
            "network",
            &s.net_bytes_per_sec,
            t.network_bytes_per_sec,
            " B/s",
        ),
        ("disk", &s.disk_iops, t.disk_iops, " IO/s"),
    ];
    for (name, value, threshold, unit) in rates {
        match value {
            Err(e) => return Active(format!("{name} probe failed ({e})")),
            // The first sample (a rate needs two), or no time measured between two.
            Ok(None) => return Active(format!("{name}: no rate yet")),
            Ok(Some(v)) if *v >= threshold => {
                return Active(format!("{name} {v:.1}{unit} >= {threshold}{unit}"));
            }
            Ok(Some(_)) => {}
        }
    }
    match &s.active_sessions {
        Err(e) => return Active(format!("session probe failed ({e})")),
        Ok(n) if *n > 0 => return Active(format!("{n} terminal(s) with recent input")),
        Ok(_) => {}
    }
    match &s.ssm_sessions {
        Err(e) => return Active(format!("SSM session probe failed ({e})")),
        Ok(n) if *n > 0 => return Active(format!("{n} SSM session(s)")),
        Ok(_) => {}
    }
    match &s.gpu_percent {
        Some(Err(e)) => return Active(format!("GPU probe failed ({e})")),
        Some(Ok(v)) if *v >= t.gpu_percent => {
            return Active(format!("gpu {v:.0}% >= {}%", t.gpu_percent));
        }
        _ => {}
    }
    Activity::Idle
}

/// How long the machine has been idle, from consecutive samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdleTracker {
    pub idle_since: Option<DateTime<Utc>>,
    pub last_reason: Option<String>,
}

impl IdleTracker {
    pub fn observe(&mut self, now: DateTime<Utc>, activity: Activity) {
        match activity {
            Activity::Idle => {
                self.idle_since.get_or_insert(now);
                self.last_reason = None;
            }
            Activity::Active(why) => {
                self.idle_since = None;
                self.last_reason = Some(why);
            }
        }
    }

    pub fn idle_for(&self, now: DateTime<Utc>) -> TimeDelta {
        self.idle_since
            .map_or(TimeDelta::zero(), |s| (now - s).max(TimeDelta::zero()))
    }

    /// True once the machine has been idle for `timeout`.
    pub fn expired(&self, now: DateTime<Utc>, timeout: Option<Duration>) -> bool {
        match (self.idle_since, timeout) {
            (Some(_), Some(t)) => {
                self.idle_for(now) >= TimeDelta::from_std(t).unwrap_or(TimeDelta::MAX)
            }
            _ => false,
        }
    }
}

// ---- procfs samplers -------------------------------------------------------------

/// Counters kept between samples so rates can be computed.
#[derive(Debug)]
pub struct Sampler {
    proc_root: PathBuf,
    dev_root: PathBuf,
    prev: Option<Counters>,
    session_input_within: Duration,
}

#[derive(Debug, Clone)]
struct Counters {
    at: std::time::Instant,
    cpu: Result<CpuTimes, String>,
    net_bytes: Result<u64, String>,
    disk_ops: Result<u64, String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    /// Busy jiffies (user, nice, system, iowait, irq, softirq).
    pub busy: u64,
    /// Busy + idle; steal is left out of both, so a noisy neighbour is not our load.
    pub total: u64,
}

/// TEST ONLY: read procfs from this directory instead of `/proc`, so an end-to-end
/// test can feed the real binary a machine that is exactly as busy as it says.
pub const TEST_PROC_ROOT_ENV: &str = "LEASED_TEST_PROC_ROOT";
/// TEST ONLY: look for terminals under this directory instead of `/dev`.
pub const TEST_DEV_ROOT_ENV: &str = "LEASED_TEST_DEV_ROOT";

impl Sampler {
    pub fn new(session_input_within: Duration) -> Self {
        Self::with_roots("/proc", "/dev", session_input_within)
    }

    /// The real roots, unless the test-only variables point elsewhere (logged).
    pub fn from_env(session_input_within: Duration) -> Self {
        let proc_root = std::env::var_os(TEST_PROC_ROOT_ENV);
        let dev_root = std::env::var_os(TEST_DEV_ROOT_ENV);
        if proc_root.is_some() || dev_root.is_some() {
            tracing::warn!(
                "TEST ONLY: idle signals read from {:?} and {:?}",
                proc_root,
                dev_root
            );
        }
        Self::with_roots(
            proc_root.map_or_else(|| PathBuf::from("/proc"), PathBuf::from),
            dev_root.map_or_else(|| PathBuf::from("/dev"), PathBuf::from),
            session_input_within,
        )
    }

    /// Reads procfs and device nodes from other roots (tests).
    pub fn with_roots(
        proc_root: impl Into<PathBuf>,
        dev_root: impl Into<PathBuf>,
        session_input_within: Duration,
    ) -> Self {
        Self {
            proc_root: proc_root.into(),
            dev_root: dev_root.into(),
            prev: None,
            session_input_within,
        }
    }

    pub fn set_session_input_within(&mut self, d: Duration) {
        self.session_input_within = d;
    }

    /// One blocking sample of the procfs signals (the GPU and task are added by the
    /// caller). Takes well under a millisecond.
    pub fn sample(&mut self) -> Sample {
        let now = Counters {
            at: std::time::Instant::now(),
            cpu: read(&self.proc_root.join("stat")).and_then(|t| parse_cpu(&t)),
            net_bytes: read(&self.proc_root.join("net/dev")).and_then(|t| parse_net_dev(&t)),
            disk_ops: read(&self.proc_root.join("diskstats")).and_then(|t| parse_diskstats(&t)),
        };
        let (cpu, net, disk) = match &self.prev {
            None => (Ok(None), Ok(None), Ok(None)),
            Some(prev) => {
                let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
                let cpu = match (&prev.cpu, &now.cpu) {
                    (Ok(a), Ok(b)) => Ok(cpu_percent(*a, *b)),
                    (_, Err(e)) | (Err(e), _) => Err(e.clone()),
                };
                (
                    cpu,
                    rate(&prev.net_bytes, &now.net_bytes, secs),
                    rate(&prev.disk_ops, &now.disk_ops, secs),
                )
            }
        };
        self.prev = Some(now);
        Sample {
            cpu_percent: cpu,
            net_bytes_per_sec: net,
            disk_iops: disk,
            active_sessions: self.active_sessions(),
            ssm_sessions: count_processes(&self.proc_root, "ssm-session-wor"),
            gpu_percent: None,
            task: None,
            memory_percent: read(&self.proc_root.join("meminfo"))
                .ok()
                .and_then(|t| parse_memory_percent(&t)),
        }
    }

    /// Terminals (`/dev/pts/N`) whose last input (the device's access time, as `w`
    /// reads it) is recent.
    fn active_sessions(&self) -> Result<u32, String> {
        let dir = self.dev_root.join("pts");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // No devpts at all: no terminals.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let now = SystemTime::now();
        let mut n = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue; // ptmx
            }
            let recent = entry
                .metadata()
                .and_then(|m| m.accessed())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age < self.session_input_within);
            if recent {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn rate(
    a: &Result<u64, String>,
    b: &Result<u64, String>,
    secs: f64,
) -> Result<Option<f64>, String> {
    match (a, b) {
        // Counters reset (an interface or disk went away): treat as no traffic.
        (Ok(a), Ok(b)) => Ok(Some(b.saturating_sub(*a) as f64 / secs)),
        (_, Err(e)) | (Err(e), _) => Err(e.clone()),
    }
}

pub fn cpu_percent(a: CpuTimes, b: CpuTimes) -> Option<f64> {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return None;
    }
    Some(b.busy.saturating_sub(a.busy) as f64 * 100.0 / total as f64)
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_cpu(stat: &str) -> Result<CpuTimes, String> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no 'cpu' line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().map_err(|_| format!("bad /proc/stat field '{f}'")))
        .collect::<Result<_, _>>()?;
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let busy = f(0) + f(1) + f(2) + f(4) + f(5) + f(6);
    Ok(CpuTimes {
        busy,
        total: busy + f(3),
    })
}

/// Received plus sent bytes on every interface but loopback.
pub fn parse_net_dev(text: &str) -> Result<u64, String> {
    let mut total: u64 = 0;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| -> Result<u64, String> {
            fields
                .get(i)
                .ok_or_else(|| format!("short /proc/net/dev line for {}", name.trim()))?
                .parse::<u64>()
                .map_err(|e| format!("bad /proc/net/dev field: {e}"))
        };
        total = total.saturating_add(num(0)?).saturating_add(num(8)?);
    }
    Ok(total)
}

/// Whole disks only (sda, vda, xvda, nvme0n1 — not partitions, loop, ram or dm).
pub fn is_whole_disk(name: &str) -> bool {
    let rest_is = |prefix: &str, pred: fn(char) -> bool| {
        name.strip_prefix(prefix)
            .is_some_and(|r| !r.is_empty() && r.chars().all(pred))
    };
    if let Some(r) = name.strip_prefix("nvme") {
        // nvme<ctrl>n<ns>, no p<part>
        return match r.split_once('n') {
            Some((c, n)) => {
                !c.is_empty()
                    && c.chars().all(|x| x.is_ascii_digit())
                    && !n.is_empty()
                    && n.chars().all(|x| x.is_ascii_digit())
            }
            None => false,
        };
    }
    ["sd", "vd", "xvd", "hd"]
        .iter()
        .any(|p| rest_is(p, |c| c.is_ascii_lowercase()))
}

/// Reads plus writes completed, summed over whole disks.
pub fn parse_diskstats(text: &str) -> Result<u64, String> {
    let mut total: u64 = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(reads), Some(writes)) = (f.get(2), f.get(3), f.get(7)) else {
            continue;
        };
        if !is_whole_disk(name) {
            continue;
        }
        let n = |s: &str| {
            s.parse::<u64>()
                .map_err(|e| format!("bad /proc/diskstats field: {e}"))
        };
        total = total.saturating_add(n(reads)?).saturating_add(n(writes)?);
    }
    Ok(total)
}

pub fn parse_memory_percent(meminfo: &str) -> Option<f64> {
    let fields: BTreeMap<&str, u64> = meminfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k, v.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let total = *fields.get("MemTotal")?;
    let avail = *fields.get("MemAvailable")?;
    (total > 0).then(|| (total.saturating_sub(avail)) as f64 * 100.0 / total as f64)
}

/// Processes whose `comm` is `comm` (as the kernel truncates it, 15 bytes).
fn count_processes(proc_root: &Path, comm: &str) -> Result<u32, String> {
    let entries =
        std::fs::read_dir(proc_root).map_err(|e| format!("{}: {e}", proc_root.display()))?;
    let mut n = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process can exit between the listing and the read; that is not a failure.
        if let Ok(c) = std::fs::read_to_string(entry.path().join("comm"))
            && c.trim_end() == comm
        {
            n += 1;
        }
    }
    Ok(n)
}

/// GPU utilisation (the busiest GPU), when `nvidia-smi` is installed; `None` when it
/// is not. Bounded by a timeout: a wedged driver is a failed probe, i.e. active.
pub async fn gpu_percent() -> Option<Result<f64, String>> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(5), out).await {
        Err(_) => return Some(Err("nvidia-smi did not answer in 5s".into())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Ok(Err(e)) => return Some(Err(format!("nvidia-smi: {e}"))),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        return Some(Err(format!("nvidia-smi exited with {}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut max: Option<f64> = None;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match l.trim().parse::<f64>() {
            Ok(v) => max = Some(max.map_or(v, |m| m.max(v))),
            Err(_) => return Some(Err(format!("nvidia-smi printed '{l}'"))),
        }
    }
    Some(max.ok_or_else(|| "nvidia-smi listed no GPU".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn quiet() -> Sample {
        Sample {
            cpu_percent: Ok(Some(1.0)),
            net_bytes_per_sec: Ok(Some(100.0)),
            disk_iops: Ok(Some(0.5)),
            active_sessions: Ok(0),
            ssm_sessions: Ok(0),
            gpu_percent: None,
            task: None,
            memory_percent: Some(10.0),
        }
    }

    #[test]
    fn a_quiet_machine_is_idle_and_each_signal_wakes_it() {
        let t = IdleConfig::default();
        assert_eq!(evaluate(&quiet(), &t), Activity::Idle);
        let cases: Vec<(Sample, &str)> = vec![
            (
                Sample {
                    cpu_percent: Ok(Some(50.0)),
                    ..quiet()
                },
                "cpu",
            ),
            (
                Sample {
                    net_bytes_per_sec: Ok(Some(1e6)),
                    ..quiet()
                },
                "network",
            ),
            (
                Sample {
                    disk_iops: Ok(Some(300.0)),
                    ..quiet()
                },
                "disk",
            ),
            (
                Sample {
                    active_sessions: Ok(1),
                    ..quiet()
                },
                "terminal",
            ),
            (
                Sample {
                    ssm_sessions: Ok(2),
                    ..quiet()
                },
                "SSM",
            ),
            (
                Sample {
                    gpu_percent: Some(Ok(90.0)),
                    ..quiet()
                },
                "gpu",
            ),
            (
                Sample {
                    task: Some("t-1".into()),
                    ..quiet()
                },
                "t-1",
            ),
        ];
        for (s, word) in cases {
            match evaluate(&s, &t) {
                Activity::Active(why) => assert!(why.contains(word), "{why}"),
                Activity::Idle => panic!("{word} should keep the machine active"),
            }
        }
    }

    #[test]
    fn a_failed_probe_counts_as_active() {
        let t = IdleConfig::default();
        for s in [
            Sample {
                disk_iops: Err("gone".into()),
                ..quiet()
            },
            Sample {
                gpu_percent: Some(Err("wedged".into())),
                ..quiet()
            },
            Sample {
                active_sessions: Err("denied".into()),
                ..quiet()
            },
            Sample {
                cpu_percent: Ok(None),
                ..quiet()
            },
        ] {
            assert!(matches!(evaluate(&s, &t), Activity::Active(_)), "{s:?}");
        }
    }

    #[test]
    fn idle_time_accumulates_and_resets() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let s = |n| t0 + TimeDelta::seconds(n);
        let mut tr = IdleTracker::default();
        let timeout = Some(Duration::from_secs(30));
        tr.observe(s(0), Activity::Idle);
        tr.observe(s(10), Activity::Idle);
        assert!(!tr.expired(s(20), timeout));
        assert!(tr.expired(s(30), timeout));
        tr.observe(s(31), Activity::Active("cpu".into()));
        assert!(!tr.expired(s(40), timeout));
        assert_eq!(tr.idle_for(s(40)), TimeDelta::zero());
        tr.observe(s(41), Activity::Idle);
        assert_eq!(tr.idle_for(s(50)), TimeDelta::seconds(9));
        assert!(
            !tr.expired(s(500), None),
            "no idle-timeout tag, no idle action"
        );
    }

    #[test]
    fn procfs_parsers() {
        let a = parse_cpu("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse_cpu("cpu  150 0 70 900 10 0 0 400 0 0\n").unwrap();
        // 70 busy of 170, steal (360 more) ignored.
        let pct = cpu_percent(a, b).unwrap();
        assert!((pct - 70.0 * 100.0 / 170.0).abs() < 1e-9, "{pct}");

        let net = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 5 0 0 0 0 0 0 234 3 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net).unwrap(), 1234);

        let disks = "   7       0 loop0 9 0 0 0 9 0 0 0 0 0 0\n 259 0 nvme0n1 10 0 0 0 5 0 0 0 0 0 0\n 259 1 nvme0n1p1 7 0 0 0 7 0 0 0 0 0 0\n 8 0 sda 1 0 0 0 2 0 0 0 0 0 0\n 8 1 sda1 1 0 0 0 2 0 0 0 0 0 0\n 253 0 dm-0 4 0 0 0 4 0 0 0 0 0 0\n";
        assert_eq!(parse_diskstats(disks).unwrap(), 18);
        assert!(is_whole_disk("xvdf"));
        assert!(!is_whole_disk("xvdf1"));
        assert!(!is_whole_disk("nvme"));

        let mem = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n";
        assert_eq!(parse_memory_percent(mem), Some(75.0));
    }

    #[test]
    fn sampler_reads_this_machine() {
        let mut s = Sampler::new(Duration::from_secs(60));
        let first = s.sample();
        assert_eq!(first.cpu_percent, Ok(None));
        std::thread::sleep(Duration::from_millis(20));
        let second = s.sample();
        assert!(
            matches!(second.cpu_percent, Ok(Some(_)) | Ok(None)),
            "{second:?}"
        );
        assert!(second.net_bytes_per_sec.is_ok(), "{second:?}");
    }
}
