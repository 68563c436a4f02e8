//! A network namespace for a booted guest that keeps all its traffic on this machine
//! without giving the host's own interfaces any address: the guest's only interface
//! is its loopback, where the addresses it expects (IMDS's 169.254.169.254) are put,
//! and each service the guest may reach is a forwarder listening inside the namespace
//! that bridges to a unix socket in a host directory, where a second forwarder
//! connects it to the service on the host's 127.0.0.1. There is no route out: nothing
//! else leaves the guest. The forwarders are socat (Debian's, installed by
//! tests/install-deps.sh).
//!
//! Needs root (`ip netns add`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct NetNs {
    name: String,
    dir: tempfile::TempDir,
    forwarders: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A fresh namespace with its loopback up and `addresses` (CIDR) on it.
    pub fn new(prefix: &str, addresses: &[&str]) -> Self {
        let name = format!("{prefix}-{}-{}", std::process::id(), unique());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for a in addresses {
            ip(&["-n", &name, "addr", "add", a, "dev", "lo"]);
        }
        let dir = tempfile::Builder::new()
            .prefix("lease-netns-")
            .tempdir()
            .expect("create the forwarders' socket directory");
        Self {
            name,
            dir,
            forwarders: Vec::new(),
        }
    }

    /// The path systemd-nspawn's `--network-namespace-path=` takes.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `ip:port` inside the namespace reach `127.0.0.1:host_port` on the host.
    /// Returns once the listener inside answers.
    pub fn forward(&mut self, ip: &str, port: u16, host_port: u16) {
        let sock = self
            .dir
            .path()
            .join(format!("{}-{port}.sock", ip.replace(['.', ':'], "_")));
        let host_side = Command::new("socat")
            .arg(format!(
                "UNIX-LISTEN:{},fork,unlink-early,mode=600",
                sock.display()
            ))
            .arg(format!("TCP:127.0.0.1:{host_port}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn socat (tests/install-deps.sh installs it)");
        self.forwarders.push(host_side);
        let guest_side = Command::new("ip")
            .args(["netns", "exec", &self.name, "socat"])
            .arg(format!("TCP-LISTEN:{port},bind={ip},fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", sock.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn socat in the namespace");
        self.forwarders.push(guest_side);
        // Both ends listen once the socket exists and the port accepts a connection.
        let started = Instant::now();
        loop {
            let up = sock.exists()
                // Connects, sends nothing (reads /dev/null) and closes: a probe
                // that never waits for the service to speak.
                && Command::new("ip")
                    .args(["netns", "exec", &self.name, "socat", "-u", "OPEN:/dev/null"])
                    .arg(format!("TCP:{ip}:{port},connect-timeout=1"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if up {
                return;
            }
            for child in &mut self.forwarders {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("a socat forwarder for {ip}:{port} exited with {status}");
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the forwarder for {ip}:{port} in {} did not come up",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for mut child in self.forwarders.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
