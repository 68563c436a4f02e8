//! The user-data every instance boots with: a cloud-config that writes the agent's
//! config file and installs the agent when the AMI lacks it, optionally followed by the
//! user's own script or cloud-config as a second MIME part.

use lease_common::config::{AgentConfig, DEFAULT_CONFIG_PATH};

use crate::error::{Error, Result};

/// EC2 refuses user-data larger than 16 KB (before base64 encoding).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// MIME boundary; fixed, and checked not to occur in the parts.
const BOUNDARY: &str = "==LEASE-USER-DATA-BOUNDARY==";

/// Where the agent package comes from when the AMI does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSource {
    pub bucket: String,
    pub key: String,
    /// The package's sha256 (hex), as `lease setup` recorded it beside the package; the
    /// install refuses a download that differs. Not a secret.
    pub sha256: String,
    /// Debian's name for the architecture the package is built for (`amd64`, `arm64`);
    /// the install refuses to run on a machine of another.
    pub arch: String,
}

/// Where the user-data writes the install script (`/run`: gone at the next boot, when
/// it has done its work).
pub const INSTALL_SCRIPT_PATH: &str = "/run/lease/install-agent.py";

/// The install script (`install_agent.py`), with the constants it shares with the rest
/// of lease filled in and its comment lines dropped: user-data is limited to 16 KB, and
/// a task travels in it too.
pub fn install_script() -> String {
    let source = include_str!("install_agent.py")
        .replace("@TASK_USER@", lease_common::session::DEFAULT_TASK_USER)
        .replace("@STATUS_TAG@", lease_common::tags::STATUS)
        .replace(
            "@FAILED@",
            lease_common::tags::NodeStatus::InstallFailed.as_str(),
        );
    let mut out = String::with_capacity(source.len());
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || (i > 0 && trimmed.starts_with('#')) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Renders the complete user-data. Pure: every input is passed in.
pub fn render(
    config: &AgentConfig,
    agent: Option<&AgentSource>,
    extra: Option<&str>,
) -> Result<String> {
    let config_yaml = config.to_yaml().map_err(|e| Error::usage(e.to_string()))?;
    let mut cc = String::from(
        "#cloud-config\n# Written by lease: the agent's config and, if needed, the agent itself.\n",
    );
    cc.push_str("write_files:\n");
    // A task carries its command, prompt and `env` (which may hold tokens): only root,
    // which the agent runs as, may read the file then. Without a task it holds only
    // the stack's names, readable by anyone on the machine as a package's config is.
    let mode = if config.task.is_some() {
        "0600"
    } else {
        "0644"
    };
    cc.push_str(&format!(
        "  - path: {DEFAULT_CONFIG_PATH}\n    owner: root:root\n    permissions: '{mode}'\n    content: |\n"
    ));
    for line in config_yaml.lines() {
        cc.push_str("      ");
        cc.push_str(line);
        cc.push('\n');
    }
    if let Some(src) = agent {
        // Compressed: the script is most of the user-data's 16 KB otherwise, and a
        // task travels in the same 16 KB.
        cc.push_str(&format!(
            "  - path: {INSTALL_SCRIPT_PATH}\n    owner: root:root\n    permissions: '0700'\n    \
             encoding: gz+b64\n    content: {}\n",
            gzip_base64(install_script().as_bytes())?
        ));
        cc.push_str("runcmd:\n");
        // An argument list, not a shell line: nothing in it is interpreted.
        cc.push_str(&format!(
            "  - [ python3, {INSTALL_SCRIPT_PATH}, {}, {}, {}, {} ]\n",
            yaml_quote(&src.bucket),
            yaml_quote(&src.key),
            yaml_quote(&src.sha256),
            yaml_quote(&src.arch)
        ));
    } else {
        cc.push_str("runcmd:\n");
    }
    cc.push_str("  - [ systemctl, enable, --now, leased.service ]\n");

    let out = match extra {
        None => cc,
        Some(user) => {
            if cc.contains(BOUNDARY) || user.contains(BOUNDARY) {
                return Err(Error::usage(format!(
                    "user-data contains the MIME boundary '{BOUNDARY}'"
                )));
            }
            let user_type = if user.starts_with("#cloud-config") {
                "text/cloud-config"
            } else if user.starts_with("#!") {
                "text/x-shellscript"
            } else {
                return Err(Error::usage(
                    "--user-data file must start with '#!' (a script) or '#cloud-config'",
                ));
            };
            format!(
                "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n\
                 --{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{cc}\n\
                 --{BOUNDARY}\nContent-Type: {user_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{user}\n\
                 --{BOUNDARY}--\n"
            )
        }
    };
    if out.len() > MAX_USER_DATA {
        let advice = match &config.task {
            Some(task) => format!(
                "task '{}' makes it too large to travel in user-data; queue it with `lease submit` \
                 (which moves large tasks to S3) and launch nodes that take work from the queue",
                task.id
            ),
            None => "shrink --user-data or --agent-config".to_string(),
        };
        return Err(Error::usage(format!(
            "user-data would be {} bytes; EC2 allows at most {MAX_USER_DATA} (16 KB): {advice}",
            out.len()
        )));
    }
    Ok(out)
}

/// gzip, then base64: cloud-init's `gz+b64` file encoding.
fn gzip_base64(data: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data)
        .and_then(|()| gz.finish())
        .map(aws_smithy_types::base64::encode)
        .map_err(|e| Error::io("Failed to compress the agent's install script", e))
}

/// A double-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            _ => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud_config_part(user_data: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(user_data).unwrap()
    }

    #[test]
    fn writes_the_agent_config_that_the_agent_parses() {
        let config = AgentConfig {
            topic_arn: Some("arn:aws:sns:us-east-1:123456789012:bus".into()),
            ..Default::default()
        };
        let ud = render(&config, None, None).unwrap();
        assert!(ud.starts_with("#cloud-config\n"));
        let doc = cloud_config_part(&ud);
        let file = &doc["write_files"][0];
        assert_eq!(file["path"].as_str(), Some(DEFAULT_CONFIG_PATH));
        let content = file["content"].as_str().unwrap();
        let parsed =
            AgentConfig::from_yaml(std::path::Path::new(DEFAULT_CONFIG_PATH), content).unwrap();
        assert_eq!(parsed, config);
        let runcmd = doc["runcmd"].as_sequence().unwrap();
        assert_eq!(runcmd.len(), 1, "no install step without an agent source");
    }

    fn source() -> AgentSource {
        AgentSource {
            bucket: "lease-ctl".into(),
            key: "agent/0.1.0/leased_0.1.0_amd64.deb".into(),
            sha256: "ab".repeat(32),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn installs_the_agent_from_the_bucket_with_its_digest_and_no_aws_cli() {
        let ud = render(&AgentConfig::default(), Some(&source()), None).unwrap();
        let doc = cloud_config_part(&ud);
        let script = &doc["write_files"][1];
        assert_eq!(script["path"].as_str(), Some(INSTALL_SCRIPT_PATH));
        assert_eq!(script["permissions"].as_str(), Some("0700"));
        assert_eq!(script["encoding"].as_str(), Some("gz+b64"));
        let gz = aws_smithy_types::base64::decode(script["content"].as_str().unwrap()).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .unwrap();
        assert_eq!(text, install_script());
        let run: Vec<&str> = doc["runcmd"][0]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            run,
            [
                "python3",
                INSTALL_SCRIPT_PATH,
                "lease-ctl",
                "agent/0.1.0/leased_0.1.0_amd64.deb",
                &"ab".repeat(32),
                "amd64"
            ]
        );
        assert_eq!(
            doc["runcmd"][1].as_sequence().unwrap().len(),
            4,
            "then the service is enabled and started"
        );
        assert!(!ud.contains("aws s3"), "the AWS CLI is not on every image");
        // What the script is told to write and check, filled in from lease-common.
        let script = install_script();
        assert!(script.contains(&format!(
            "TASK_USER = \"{}\"",
            lease_common::session::DEFAULT_TASK_USER
        )));
        assert!(script.contains("STATUS_TAG = \"lease:status\""));
        assert!(script.contains("FAILED = \"install-failed\""));
        assert!(!script.contains('@'), "a placeholder was left unfilled");
        // The whole config plus the script leave most of the 16 KB for a task (the
        // config has grown by the task user, tmux socket and Claude settings: 6.0 KiB).
        assert!(ud.len() < 7 * 1024, "{} bytes", ud.len());
    }

    #[test]
    fn user_script_becomes_a_second_mime_part() {
        let ud = render(&AgentConfig::default(), None, Some("#!/bin/sh\necho hi\n")).unwrap();
        assert!(ud.starts_with("Content-Type: multipart/mixed"));
        assert!(ud.contains("Content-Type: text/x-shellscript"));
        assert!(ud.contains("echo hi"));
        assert!(ud.contains("write_files:"));
        let err = render(&AgentConfig::default(), None, Some("echo no shebang")).unwrap_err();
        assert!(err.to_string().contains("--user-data"), "{err}");
    }

    #[test]
    fn refuses_more_than_16_kb() {
        let big = format!("#!/bin/sh\n{}", "x".repeat(MAX_USER_DATA));
        let err = render(&AgentConfig::default(), None, Some(&big)).unwrap_err();
        assert!(err.to_string().contains("16 KB"), "{err}");
        assert!(err.to_string().contains("--user-data"), "{err}");
    }

    #[test]
    fn a_task_travels_in_the_agent_config_and_a_large_one_points_to_submit() {
        use lease_common::messages::{ShellSpec, Task, TaskSpec};
        let task = Task::new(
            "t-1",
            TaskSpec::Shell(ShellSpec {
                command: "make test\necho 'done: \"ok\"'".into(),
            }),
        );
        let config = AgentConfig {
            task: Some(task.clone()),
            log_bucket: Some("ctl".into()),
            ..Default::default()
        };
        let ud = render(&config, None, None).unwrap();
        let doc = cloud_config_part(&ud);
        let content = doc["write_files"][0]["content"].as_str().unwrap();
        let parsed =
            AgentConfig::from_yaml(std::path::Path::new(DEFAULT_CONFIG_PATH), content).unwrap();
        assert_eq!(parsed.task, Some(task));
        assert_eq!(doc["write_files"][0]["permissions"].as_str(), Some("0600"));
        let without = cloud_config_part(&render(&AgentConfig::default(), None, None).unwrap());
        assert_eq!(
            without["write_files"][0]["permissions"].as_str(),
            Some("0644")
        );

        let huge = AgentConfig {
            task: Some(Task::new(
                "t-2",
                TaskSpec::Shell(ShellSpec {
                    command: "x".repeat(MAX_USER_DATA),
                }),
            )),
            ..Default::default()
        };
        let err = render(&huge, None, None).unwrap_err().to_string();
        assert!(
            err.contains("16 KB") && err.contains("lease submit") && err.contains("t-2"),
            "{err}"
        );
    }
}

/// The install script run for real by python3, on what can run here: the Amazon Linux
/// branch (no dpkg: the .deb unpacked by the script), which no boot test can reach on
/// this Debian machine, and the SigV4 signatures checked against botocore's. The
/// Debian branch and the whole flow run in the boot test (`tests/tests/boot.rs`).
#[cfg(test)]
mod script_tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::install_script;

    /// Runs `code` with the rendered script importable as `ia`, under `python`.
    fn python(python: &Path, dir: &Path, code: &str) -> std::process::Output {
        std::fs::write(dir.join("ia.py"), install_script()).unwrap();
        Command::new(python)
            .arg("-c")
            .arg(format!(
                "import sys\nsys.path.insert(0, {:?})\nimport ia\n{code}",
                dir.display().to_string()
            ))
            .output()
            .expect("run python3")
    }

    fn ok(out: &std::process::Output) -> String {
        assert!(
            out.status.success(),
            "python failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A .deb shaped like cargo-deb's (xz data member) holding the agent's files.
    fn deb(dir: &Path) -> PathBuf {
        let tree = dir.join("pkg");
        for (path, body, mode) in [
            ("usr/bin/leased", "#!/bin/sh\necho agent\n", 0o755),
            (
                "usr/lib/systemd/system/leased.service",
                "[Service]\n",
                0o644,
            ),
            ("etc/leased/config.yaml", "#default-ttl: 8h\n", 0o644),
        ] {
            let p = tree.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
        std::fs::write(
            tree.join("DEBIAN/control"),
            "Package: leased\nVersion: 0.1.0\nArchitecture: amd64\nMaintainer: t <t@example.com>\nDescription: t\n",
        )
        .unwrap();
        let out = dir.join("leased_0.1.0_amd64.deb");
        let st = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(&out)
            .output()
            .expect("run dpkg-deb");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        out
    }

    #[test]
    fn without_dpkg_the_package_is_unpacked_and_the_config_cloud_init_wrote_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let deb = deb(dir.path());
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/leased")).unwrap();
        std::fs::write(root.join("etc/leased/config.yaml"), "from: user-data\n").unwrap();
        let out = ok(&python(
            Path::new("python3"),
            dir.path(),
            &format!(
                "for p in ia.unpack_deb({:?}, {:?}): print(p)",
                deb.display().to_string(),
                root.display().to_string()
            ),
        ));
        let leased = root.join("usr/bin/leased");
        assert!(out.contains("usr/bin/leased"), "{out}");
        assert_eq!(
            std::fs::read_to_string(&leased).unwrap(),
            "#!/bin/sh\necho agent\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&leased).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(root.join("usr/lib/systemd/system/leased.service").is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/leased/config.yaml")).unwrap(),
            "from: user-data\n",
            "the packaged config replaced the one from user-data"
        );
    }

    #[test]
    fn an_unpack_that_fails_half_way_removes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let deb = deb(dir.path());
        let root = dir.path().join("root");
        // A directory where the unit file goes: the unpack fails after the binary.
        std::fs::create_dir_all(root.join("usr/lib/systemd/system/leased.service/x")).unwrap();
        let out = python(
            Path::new("python3"),
            dir.path(),
            &format!(
                "ia.unpack_deb({:?}, {:?})",
                deb.display().to_string(),
                root.display().to_string()
            ),
        );
        assert!(!out.status.success(), "the unpack did not fail");
        assert!(
            !root.join("usr/bin/leased").exists(),
            "the binary was left behind by a failed unpack"
        );
        assert!(!root.join("etc/leased/config.yaml").exists());
        // Not a package at all.
        std::fs::write(dir.path().join("bad.deb"), "<html>AccessDenied</html>").unwrap();
        let out = python(
            Path::new("python3"),
            dir.path(),
            &format!(
                "ia.unpack_deb({:?}, {:?})",
                dir.path().join("bad.deb").display().to_string(),
                root.display().to_string()
            ),
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a .deb"));
    }

    /// The rest of the Amazon Linux branch, with the machine's programs recorded
    /// instead of run (they would change this machine): tmux from dnf when missing, the
    /// task user created, systemd reloaded; and when a step fails, the files written
    /// are removed again.
    #[test]
    fn without_dpkg_the_install_fetches_tmux_creates_the_task_user_and_undoes_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(&python(
            Path::new("python3"),
            dir.path(),
            r#"
import subprocess
calls, removed = [], []
ia.shutil.which = lambda name: {"dnf": "/usr/bin/dnf"}.get(name)
ia.unpack_deb = lambda deb: ["/usr/bin/leased", "/usr/lib/systemd/system/leased.service"]
ia.os.remove = lambda path: removed.append(path)
class Done:
    def __init__(self, code): self.returncode = code
ia.subprocess.run = lambda args, **kw: Done(2)
def run(*args):
    calls.append(" ".join(args))
    if fail and args[0] == "systemctl":
        raise subprocess.CalledProcessError(1, args)
ia.run = run
fail = False
ia.install("/tmp/x.deb")
for c in calls: print("ran", c)
fail, calls = True, []
try:
    ia.install("/tmp/x.deb")
    print("no failure")
except subprocess.CalledProcessError:
    for r in removed: print("removed", r)
"#,
        ));
        let user = lease_common::session::DEFAULT_TASK_USER;
        assert_eq!(
            out,
            format!(
                "ran /usr/bin/dnf install -y tmux\n\
                 ran useradd --system --user-group --create-home --home-dir /home/{user} --shell /bin/bash {user}\n\
                 ran systemctl daemon-reload\n\
                 removed /usr/bin/leased\n\
                 removed /usr/lib/systemd/system/leased.service\n"
            )
        );
    }

    /// Docker when the image lacks it, from the image's own package manager (apt on
    /// Debian/Ubuntu, dnf on Amazon Linux), started, with the task user in its group;
    /// none of it when `docker` is there; and a failure only warns, the install stands.
    #[test]
    fn docker_is_installed_started_and_opened_to_the_task_user_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(&python(
            Path::new("python3"),
            dir.path(),
            r#"
import subprocess, sys
sys.stderr = sys.stdout
calls = []
def run(*args):
    calls.append(" ".join(args))
    if fail and args[0] == "systemctl":
        raise subprocess.CalledProcessError(1, args)
ia.run = run
fail = False
for have in ({"dpkg": "/usr/bin/dpkg"}, {"dnf": "/usr/bin/dnf"}, {"docker": "/usr/bin/docker"}, {}):
    ia.shutil.which = lambda name: have.get(name)
    calls = []
    print(sorted(have), ia.ensure_docker(), calls)
fail = True
ia.shutil.which = lambda name: {"dnf": "/usr/bin/dnf"}.get(name)
calls = []
print("failing", ia.ensure_docker(), calls)
# No package lists yet: the first apt-get install fails, lists are fetched, it is retried.
fail = False
def run(*args):
    calls.append(" ".join(args))
    if args[:2] == ("apt-get", "install") and len(calls) == 1:
        raise subprocess.CalledProcessError(100, args)
ia.run = run
ia.shutil.which = lambda name: {"dpkg": "/usr/bin/dpkg"}.get(name)
calls = []
print("no lists", ia.ensure_docker(), calls)
"#,
        ));
        let user = lease_common::session::DEFAULT_TASK_USER;
        let started =
            format!("'systemctl enable --now docker', 'usermod --append --groups docker {user}'");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!("['dpkg'] True ['apt-get install -y docker.io', {started}]")
        );
        assert_eq!(
            lines[1],
            format!("['dnf'] True ['/usr/bin/dnf install -y docker', {started}]")
        );
        assert_eq!(lines[2], "['docker'] True []");
        assert!(
            lines[3].contains("WARNING: could not install Docker (neither apt-get nor dnf")
                && lines[4] == "[] False []",
            "{out}"
        );
        assert!(
            lines[5].contains("WARNING: could not install Docker")
                && lines[5].contains("--image tasks will fail"),
            "{out}"
        );
        assert_eq!(
            lines[6],
            "failing False ['/usr/bin/dnf install -y docker', 'systemctl enable --now docker']"
        );
        assert_eq!(
            lines[7],
            format!(
                "no lists True ['apt-get install -y docker.io', 'apt-get update', \
                 'apt-get install -y docker.io', {started}]"
            )
        );
        assert_eq!(lines.len(), 8, "{out}");
    }

    /// A fresh instance profile or role can take seconds to work: transient failures
    /// are retried a bounded number of times, a wrong digest never.
    #[test]
    fn transient_failures_are_retried_a_few_times_and_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(&python(
            Path::new("python3"),
            dir.path(),
            r#"
ia.time.sleep = lambda s: print("slept", s)
tries = []
def flaky():
    tries.append(1)
    if len(tries) < 3:
        raise ia.Transient("HTTP 403")
    return "ok"
print(ia.retrying(flaky))
def never():
    raise ia.Transient("HTTP 503")
try:
    ia.retrying(never, attempts=2)
except ia.Transient as e:
    print("gave up:", e)
def wrong():
    tries.append(1)
    raise ia.Failure("sha256 differs")
tries = []
try:
    ia.retrying(wrong)
except ia.Failure as e:
    print("refused after", len(tries), "try:", e)
"#,
        ));
        assert_eq!(
            out,
            "install-agent: HTTP 403; trying again in 5s\nslept 5\n\
             install-agent: HTTP 403; trying again in 10s\nslept 10\nok\n\
             install-agent: HTTP 503; trying again in 5s\nslept 5\ngave up: HTTP 503\n\
             refused after 1 try: sha256 differs\n"
        );
    }

    #[test]
    fn the_architecture_is_named_as_debian_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(&python(
            Path::new("python3"),
            dir.path(),
            "import platform\nfor m in ['x86_64', 'aarch64']:\n    platform.machine = lambda m=m: m\n    print(ia.machine_arch())",
        ));
        assert_eq!(out, "amd64\narm64\n");
    }

    /// SigV4 by hand is easy to get subtly wrong, and moto does not check signatures:
    /// the script's signatures must equal botocore's for the same requests (botocore
    /// from the test venv beside `LEASE_MOTO_SERVER`).
    #[test]
    fn signatures_equal_botocores() {
        let Some(server) = std::env::var_os("LEASE_MOTO_SERVER") else {
            eprintln!(
                "LEASE_MOTO_SERVER is not set: no botocore to compare with (tests/run sets it)"
            );
            return;
        };
        let venv_python = Path::new(&server).with_file_name("python");
        let dir = tempfile::tempdir().unwrap();
        let out = ok(&python(
            &venv_python,
            dir.path(),
            r#"
import datetime, hashlib
from botocore.auth import SigV4Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
creds = {"AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "Token": "tok/en+="}
bc = Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["Token"])
cases = [
    ("GET", "https://b.s3.us-east-1.amazonaws.com/agent/0.1.0/leased_0.1.0_amd64.deb", "s3", b"", {}),
    ("GET", "http://127.0.0.1:5000/b/agent/0.1.0/leased%2B1_arm64.deb", "s3", b"", {}),
    ("POST", "https://ec2.eu-west-1.amazonaws.com/", "ec2",
     b"Action=CreateTags&Version=2016-11-15&ResourceId.1=i-1&Tag.1.Key=lease%3Astatus&Tag.1.Value=install-failed",
     {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}),
]
for method, url, service, body, headers in cases:
    region = "eu-west-1" if "eu-west-1" in url else "us-east-1"
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    (S3SigV4Auth if service == "s3" else SigV4Auth)(bc, service, region).add_auth(req)
    now = datetime.datetime.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    ours = ia.sign(method, url, region, service, creds, body, headers, now=now)
    assert ours["Authorization"] == req.headers["Authorization"], (url, ours["Authorization"], req.headers["Authorization"])
    print("same", url)
"#,
        ));
        assert_eq!(out.matches("same").count(), 3, "{out}");
    }
}
