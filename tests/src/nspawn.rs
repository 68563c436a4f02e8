//! A Debian system booted under real systemd with `systemd-nspawn`, for the proof that
//! the package, the unit and the AMI recipe work together
//! (`tests/tests/systemd_nspawn.rs`, run by `tests/systemd-proof.sh`).
//!
//! The container shares the host's network (no `--private-network`), so the agent in it
//! reaches moto and the fake IMDS on 127.0.0.1. It is not registered with machined
//! (`--register=no`) and stays in the caller's cgroup (`--keep-unit`), so it needs
//! nothing from the host's own init. Commands run inside it with `nsenter` into the
//! namespaces of its PID 1.
//!
//! Needs root, `systemd-nspawn` (systemd-container) and `debootstrap`; the base tree
//! is made once by `tests/nspawn/rootfs.sh` and cached under `.cache/nspawn/`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the tests crate is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where cached root filesystems and per-run copies live (gitignored).
pub fn cache_dir() -> PathBuf {
    workspace_root().join(".cache").join("nspawn")
}

/// Why this machine cannot run the proof, if it cannot.
pub fn missing_prerequisites() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Some("the systemd proof needs root (debootstrap, systemd-nspawn)".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is missing: run tests/install-deps.sh"));
        }
    }
    None
}

/// The cached Debian tree, made by `tests/nspawn/rootfs.sh` on first use.
pub fn base_rootfs() -> PathBuf {
    base_rootfs_of(None)
}

/// A cached tree of one of rootfs.sh's flavours (`cloud-init`: a stock cloud image
/// with Debian's cloud-init and no agent), or the plain one.
pub fn base_rootfs_of(flavour: Option<&str>) -> PathBuf {
    let script = workspace_root().join("tests/nspawn/rootfs.sh");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg(cache_dir())
        .args(flavour)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "nspawn: base rootfs {} ready in {:.1?}",
        path.display(),
        started.elapsed()
    );
    path
}

/// A copy of the base tree, optionally booted. Dropping it stops the container and
/// deletes the copy (kept when `LEASE_KEEP_MACHINE` is set, for a post-mortem).
#[derive(Debug)]
pub struct Machine {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    console: PathBuf,
    nspawn: Option<Child>,
    /// The container's PID 1, as the host sees it.
    leader: Option<u32>,
    /// Our own cgroups for the container, when the host's init is not systemd.
    cgroups: Vec<PathBuf>,
    /// The network namespace to boot in; the host's network when `None`.
    netns: Option<PathBuf>,
}

impl Machine {
    /// A fresh copy of `base` under the cache directory (same filesystem, so the copy
    /// is quick).
    pub fn copy_of(base: &Path) -> Self {
        let runs = cache_dir().join("runs");
        fs::create_dir_all(&runs).expect("create the runs directory");
        let dir = tempfile::Builder::new()
            .prefix("machine-")
            .tempdir_in(&runs)
            .expect("create a run directory");
        let root = dir.path().join("root");
        let started = Instant::now();
        let status = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(base)
            .arg(&root)
            .status()
            .expect("run cp");
        assert!(status.success(), "copying the base rootfs failed");
        eprintln!(
            "nspawn: copied the rootfs to {} in {:.1?}",
            root.display(),
            started.elapsed()
        );
        let console = dir.path().join("console.log");
        Self {
            dir: Some(dir),
            root,
            console,
            nspawn: None,
            leader: None,
            cgroups: Vec::new(),
            netns: None,
        }
    }

    /// Boots in this network namespace (a path under /run/netns) instead of sharing
    /// the host's network.
    pub fn set_network_namespace(&mut self, path: PathBuf) {
        self.netns = Some(path);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `path` inside the container.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn write_file(&self, path: &str, contents: &str, mode: u32) {
        let dest = self.path(path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).expect("create parent directory in the container");
        }
        fs::write(&dest, contents).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn copy_in(&self, src: &Path, path: &str) {
        let dest = self.path(path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).expect("create parent directory in the container");
        }
        fs::copy(src, &dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dest.display()));
    }

    /// Runs a command in the tree without booting it (a chroot with /proc, /sys and
    /// /dev set up): how an image builder runs its provisioning.
    pub fn run_unbooted(&self, args: &[&str]) -> Output {
        assert!(self.nspawn.is_none(), "the machine is booted");
        let out = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(&self.root)
            .args(["--register=no", "--keep-unit", "--quiet", "--pipe", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-nspawn");
        eprintln!(
            "nspawn (not booted) `{}`: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Boots the tree with systemd as PID 1 and waits until the boot has finished
    /// (`systemctl is-system-running --wait`). Returns that state.
    pub fn boot(&mut self, limit: Duration) -> String {
        assert!(self.nspawn.is_none(), "already booted");
        let console = fs::File::create(&self.console).expect("create console log");
        let err = console.try_clone().expect("clone console log handle");
        let mut nspawn_args: Vec<String> = [
            "--boot",
            "--register=no",
            "--keep-unit",
            "--quiet",
            // Boot messages go to the log file; nothing reads the container's console.
            "--console=pipe",
        ]
        .map(String::from)
        .to_vec();
        if let Some(ns) = &self.netns {
            nspawn_args.push(format!("--network-namespace-path={}", ns.display()));
        }
        // Where the host's init is not systemd, nspawn puts the container in a
        // `payload` cgroup beside itself; give each container a cgroup of its own so two
        // runs at once never share one. Under systemd, --keep-unit does this.
        let mut cmd = if Path::new("/run/systemd/system").exists() {
            let mut c = Command::new("systemd-nspawn");
            c.args(&nspawn_args);
            c
        } else {
            let name = format!(
                "lease-nspawn-{}-{}",
                std::process::id(),
                self.root
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            self.cgroups = cgroup_hierarchies().iter().map(|h| h.join(&name)).collect();
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(
                    r#"for d in $LEASE_CGROUPS; do mkdir -p "$d" && echo $$ >"$d/cgroup.procs" || exit 1; done
exec systemd-nspawn "$@""#,
                )
                .arg("sh")
                .args(&nspawn_args)
                .env(
                    "LEASE_CGROUPS",
                    self.cgroups
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            c
        };
        cmd.arg("--directory").arg(&self.root);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(err)
            .spawn()
            .expect("spawn systemd-nspawn");
        let nspawn_pid = child.id();
        self.nspawn = Some(child);

        let started = Instant::now();
        // The container's PID 1 is nspawn's child, which execs systemd once the tree
        // is set up (until then its executable is systemd-nspawn).
        let leader = loop {
            let pid = children_of(nspawn_pid).into_iter().find(|pid| {
                fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.file_name().is_some_and(|n| n == "systemd"))
            });
            if let Some(pid) = pid {
                break pid;
            }
            self.assert_running();
            assert!(
                started.elapsed() < limit,
                "the container's systemd did not start within {limit:?}\n{}",
                self.console_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.leader = Some(leader);
        // Until systemd has its private socket, systemctl cannot talk to it.
        let state = loop {
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !state.is_empty() && state != "offline" && state != "unknown" {
                break state;
            }
            self.assert_running();
            assert!(
                started.elapsed() < limit,
                "the container did not finish booting within {limit:?}\n{}",
                self.console_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!(
            "nspawn: booted in {:.1?} (PID 1 is host pid {leader}), system {state}",
            started.elapsed()
        );
        state
    }

    fn assert_running(&mut self) {
        let exited = self
            .nspawn
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!(
                "systemd-nspawn exited with {status}\n{}",
                self.console_log()
            );
        }
    }

    /// Runs a command inside the booted container, with a clean environment.
    pub fn exec(&self, args: &[&str]) -> Output {
        let leader = self.leader.expect("the machine is booted");
        Command::new("nsenter")
            .args(["--target", &leader.to_string(), "--all", "--"])
            .args(["env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "HOME=/root",
                "TERM=dumb",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a shell script inside the container and returns its stdout; panics with
    /// both outputs when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-ec", script]);
        assert!(
            out.status.success(),
            "in the container, `{script}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// stdout of a command, trimmed, whatever its exit status.
    pub fn text(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout)
            .trim()
            .to_string()
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.text(&["systemctl", "show", "--property", property, "--value", unit])
    }

    /// The unit's journal, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        self.text(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            unit,
        ])
    }

    /// A unit's journal read from the tree's persistent journal, once the container
    /// has stopped.
    pub fn persisted_journal(&self, unit: &str) -> String {
        let out = Command::new("journalctl")
            .arg("--directory")
            .arg(self.path("/var/log/journal"))
            .args(["--no-pager", "-o", "short-precise", "-u", unit])
            .output()
            .expect("run journalctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for the container to end by itself (a poweroff from inside).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.nspawn.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.nspawn = None;
                self.leader = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.nspawn
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What the container printed on its console.
    pub fn console_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.console) {
            let _ = f.read_to_string(&mut s);
        }
        let tail: Vec<&str> = s.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- container console (last lines) ---\n{}",
            tail.join("\n")
        )
    }

    /// Ends a container that is still running (a failed run): its tree is deleted
    /// next, so there is no need for a clean shutdown. Killing the container's PID 1
    /// kills every process in its PID namespace, tasks and tmux servers included, and
    /// systemd-nspawn then exits by itself.
    fn stop(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        if let Some(leader) = self.leader.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &leader.to_string()])
                .status();
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() && self.leader.is_some() {
            eprintln!(
                "--- journal of the failed run ---\n{}",
                self.text(&[
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "short-precise",
                    "-b",
                    "-n",
                    "150"
                ])
            );
        }
        self.stop();
        // Our cgroups are empty once the container has gone; nspawn's own `payload`
        // below them first.
        // The kernel frees a cgroup a moment after its last process has gone.
        for cg in self.cgroups.drain(..) {
            for _ in 0..50 {
                let _ = Command::new("find")
                    .arg(&cg)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .stderr(Stdio::null())
                    .status();
                if !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if std::env::var_os("LEASE_KEEP_MACHINE").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("nspawn: kept {}", dir.keep().display());
            }
        }
    }
}

/// The process ids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name may contain spaces; the parent pid is the second
                    // field after its closing parenthesis.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The cgroup hierarchies a process must be placed in on this host: the unified one
/// (cgroup v2, alone or beside v1) and systemd's named v1 hierarchy when present.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}
