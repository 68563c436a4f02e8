//! A real OpenSSH server on a free 127.0.0.1 port, with its own host and client keys,
//! and an ssh client config that reaches it with host-key checking on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::moto::free_port;

#[derive(Debug)]
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `ssh -F` this file to reach the server as root, whatever host name is given.
    pub client_config: PathBuf,
    /// TMUX_TMPDIR of every login, so the test's tmux server is the one sessions see.
    pub tmux_tmpdir: PathBuf,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian's openssh-client) must be installed");
    assert!(status.success(), "ssh-keygen failed");
}

fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("sshd not found: install Debian's openssh-server (tests/run does)")
}

impl Sshd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("copy key");
        let tmux_tmpdir = d.join("tmux");
        std::fs::create_dir(&tmux_tmpdir).expect("mkdir");
        // sshd's privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nSetEnv TMUX_TMPDIR={t}\n",
            d = d.display(),
            t = tmux_tmpdir.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("write sshd_config");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host_pub.trim()),
        )
        .expect("known_hosts");
        let client_config = d.join("ssh_config");
        std::fs::write(
            &client_config,
            format!(
                "Host *\n  HostName 127.0.0.1\n  Port {port}\n  IdentityFile {d}/client_key\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  \
                 StrictHostKeyChecking yes\n  BatchMode yes\n",
                d = d.display()
            ),
        )
        .expect("ssh_config");
        let child = Command::new(sshd_binary())
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sshd did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir,
            client_config,
            tmux_tmpdir,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmux server of the test's own (its own TMUX_TMPDIR), so tests never touch a
/// developer's sessions; killed when dropped.
#[derive(Debug)]
pub struct Tmux {
    pub tmpdir: PathBuf,
}

impl Tmux {
    pub fn new(tmpdir: &Path) -> Self {
        Self {
            tmpdir: tmpdir.to_path_buf(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.env("TMUX_TMPDIR", &self.tmpdir).env_remove("TMUX");
        c
    }

    /// A detached session of a fixed size running `command` through the shell.
    pub fn new_session(&self, name: &str, command: &str) {
        let status = self
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "40",
                "-s",
                name,
                command,
            ])
            .status()
            .expect("tmux must be installed");
        assert!(status.success(), "tmux new-session {name} failed");
    }

    pub fn capture(&self, target: &str) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", target])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}
