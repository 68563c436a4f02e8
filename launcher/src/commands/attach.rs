//! `lease attach`: open the instance's tmux session over SSM or SSH. lease builds the
//! command and hands the terminal to it; it never weakens SSH (no host-key overrides).
//!
//! Three ways in: SSM Session Manager (the default: no key pair, no open port), plain
//! SSH (`--ssh`, for users with keys and a reachable address), and SSH tunnelled
//! through SSM (`--ssh --ssm`) with a key pushed for 60 seconds by EC2 Instance
//! Connect, so SSH works with no inbound port and no key pair on the instance.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use lease_common::session::{DEFAULT_TASK_USER, DEFAULT_TMUX_SOCKET, SHELL_SESSION, task_session};

use crate::aws::Cloud;
use crate::aws::ec2::Instance;
use crate::cli::AttachArgs;
use crate::error::{Error, Result};
use crate::output;
use crate::resolve::resolve;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
}

impl Launch {
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The session to attach: `--session`, else the running task's, else the shell
/// session `lease`. An empty `lease:task` (the agent's mark for an idle node) means no
/// task, like a missing one.
pub fn session_for(i: &Instance, requested: Option<&str>) -> Result<String> {
    let task = i
        .tags
        .get(lease_common::tags::TASK)
        .map(|t| t.trim())
        .filter(|t| !t.is_empty());
    let session = match (requested, task) {
        (Some(s), _) => s.to_string(),
        (None, Some(task)) => task_session(task),
        (None, None) => SHELL_SESSION.to_string(),
    };
    // The name travels through a remote shell: keep it to characters that need no quoting.
    if session.is_empty()
        || !session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::usage(format!(
            "--session '{session}': use only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(session)
}

/// The command run on the instance: the agent's tmux server (its own socket), as the
/// task user it runs as — root switches with `runuser`, any other login with sudo.
/// The shell session is created when missing (`new-session -A`); any other is only
/// joined, so a task that has ended is reported as gone rather than replaced by an
/// empty shell of its name.
pub fn remote_tmux(login: &str, session: &str) -> String {
    let as_task_user = if login == "root" {
        format!("runuser -u {DEFAULT_TASK_USER} --")
    } else {
        format!("sudo -u {DEFAULT_TASK_USER}")
    };
    let tmux = format!("{as_task_user} tmux -S {DEFAULT_TMUX_SOCKET}");
    if session == SHELL_SESSION {
        format!("{tmux} new-session -A -s {session}")
    } else {
        format!("{tmux} attach-session -t {session}")
    }
}

/// The user SSH logs in as: `--user`, else the image's default user.
pub fn login_user(requested: Option<&str>, image_name: Option<&str>) -> String {
    match (requested, image_name) {
        (Some(u), _) => u.to_string(),
        (None, Some(name)) => crate::plan::login_user_for(name).to_string(),
        (None, None) => "ec2-user".to_string(),
    }
}

/// The private key whose public half Instance Connect pushes: `--identity`, else the
/// first of ssh's usual defaults that has a `.pub` beside it.
fn identity(requested: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = requested {
        return Ok(p.to_path_buf());
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|k| home.join(".ssh").join(k))
        .find(|k| k.with_extension("pub").is_file())
        .ok_or_else(|| {
            Error::usage(
                "--ssh --ssm needs a key pair: none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa has a \
                 .pub beside it; create one with `ssh-keygen -t ed25519` or pass --identity FILE",
            )
        })
}

/// `aws ec2-instance-connect send-ssh-public-key`: lets `user` log in with the key for
/// the next 60 seconds, with no key pair on the instance.
pub fn send_key_launch(
    i: &Instance,
    user: &str,
    public_key: &Path,
    profile: Option<&str>,
    endpoint_url: Option<&str>,
) -> Launch {
    let mut args: Vec<String> = [
        "ec2-instance-connect",
        "send-ssh-public-key",
        "--instance-id",
        &i.id,
        "--instance-os-user",
        user,
        "--ssh-public-key",
        &format!("file://{}", public_key.display()),
        "--region",
        &i.region,
    ]
    .map(String::from)
    .to_vec();
    aws_connection_args(&mut args, profile, endpoint_url);
    Launch {
        program: "aws".into(),
        args,
    }
}

fn aws_connection_args(args: &mut Vec<String>, profile: Option<&str>, endpoint_url: Option<&str>) {
    if let Some(p) = profile {
        args.extend(["--profile".into(), p.to_string()]);
    }
    if let Some(e) = endpoint_url {
        args.extend(["--endpoint-url".into(), e.to_string()]);
    }
}

/// `ssh` to the instance id through an SSM tunnel (`AWS-StartSSHSession`), so no
/// inbound port is needed. Host keys are checked as always, under the instance id.
pub fn ssh_over_ssm_launch(
    i: &Instance,
    user: &str,
    key: &Path,
    session: &str,
    profile: Option<&str>,
) -> Launch {
    let mut proxy = format!(
        "aws ssm start-session --target %h --document-name AWS-StartSSHSession \
         --parameters portNumber=%p --region {}",
        i.region
    );
    if let Some(p) = profile {
        proxy.push_str(&format!(" --profile {}", shell_quote(p)));
    }
    Launch {
        program: "ssh".into(),
        args: vec![
            "-t".into(),
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            format!("ProxyCommand={proxy}"),
            format!("{user}@{}", i.id),
            remote_tmux(user, session),
        ],
    }
}

pub fn ssm_launch(
    i: &Instance,
    session: &str,
    profile: Option<&str>,
    endpoint_url: Option<&str>,
) -> Launch {
    let parameters = serde_json::json!({ "command": [remote_tmux("ssm-user", session)] });
    let mut args: Vec<String> = [
        "ssm",
        "start-session",
        "--target",
        &i.id,
        "--region",
        &i.region,
        "--document-name",
        "AWS-StartInteractiveCommand",
        "--parameters",
        &parameters.to_string(),
    ]
    .map(String::from)
    .to_vec();
    aws_connection_args(&mut args, profile, endpoint_url);
    Launch {
        program: "aws".into(),
        args,
    }
}

/// `ssh -t user@host tmux attach -t S`. `ssh_command` is `LEASE_SSH_COMMAND` when set
/// (run through `sh -c`, like GIT_SSH_COMMAND), so an operator can add `-F`, `-i` or a
/// jump host without lease knowing about them.
pub fn ssh_launch(
    i: &Instance,
    user: &str,
    session: &str,
    ssh_command: Option<&str>,
) -> Result<Launch> {
    let host = i
        .public_dns
        .as_deref()
        .or(i.public_ip.as_deref())
        .or(i.private_ip.as_deref())
        .ok_or_else(|| {
            Error::Refused(format!(
                "Instance '{}' has no address to SSH to (state {})",
                i.id, i.state
            ))
        })?;
    let ssh_args = vec![
        "-t".to_string(),
        format!("{user}@{host}"),
        remote_tmux(user, session),
    ];
    Ok(match ssh_command {
        None => Launch {
            program: "ssh".into(),
            args: ssh_args,
        },
        Some(cmd) => {
            let mut args = vec![
                "-c".to_string(),
                format!("{cmd} \"$@\""),
                "lease-ssh".to_string(),
            ];
            args.extend(ssh_args);
            Launch {
                program: "sh".into(),
                args,
            }
        }
    })
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

pub async fn run<C: Cloud>(
    cloud: &C,
    args: &AttachArgs,
    profile: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<()> {
    let found = resolve(cloud, std::slice::from_ref(&args.target)).await?;
    let Some(i) = found.first() else {
        return Ok(());
    };
    if i.state != "running" {
        return Err(Error::Refused(format!(
            "Instance '{}' is {}; attach needs it running",
            i.id, i.state
        )));
    }
    let session = session_for(i, args.session.as_deref())?;
    let ssh_command = std::env::var("LEASE_SSH_COMMAND")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let user = if args.ssh && args.user.is_none() {
        // The image's distribution decides its login user; an image that cannot be
        // looked up (deregistered since) leaves the most common one.
        let name = match &i.image_id {
            Some(id) => cloud.image(id).await.ok().map(|img| img.name),
            None => None,
        };
        login_user(None, name.as_deref())
    } else {
        login_user(args.user.as_deref(), None)
    };
    let mut send_key = None;
    let launch = if args.ssh && args.ssm {
        let key = identity(args.identity.as_deref())?;
        let public = PathBuf::from(format!("{}.pub", key.display()));
        send_key = Some(send_key_launch(i, &user, &public, profile, endpoint_url));
        ssh_over_ssm_launch(i, &user, &key, &session, profile)
    } else if args.ssh {
        ssh_launch(i, &user, &session, ssh_command.as_deref())?
    } else {
        ssm_launch(i, &session, profile, endpoint_url)
    };
    if args.print {
        let mut text = String::new();
        if let Some(k) = &send_key {
            text.push_str(&format!("{}\n", k.display()));
        }
        text.push_str(&format!("{}\n", launch.display()));
        return output::print(&text);
    }
    if args.ssh && ssh_command.is_none() && on_path("ssh").is_none() {
        return Err(Error::MissingProgram(
            "ssh not found on PATH: install OpenSSH's client".into(),
        ));
    }
    if args.ssm || !args.ssh {
        if on_path("aws").is_none() {
            return Err(Error::MissingProgram(
                "aws not found on PATH: attach over SSM runs `aws ssm start-session`; install the AWS CLI, or use --ssh".into(),
            ));
        }
        if on_path("session-manager-plugin").is_none() {
            return Err(Error::MissingProgram(
                "session-manager-plugin not found on PATH: attach over SSM needs the Session Manager plugin for the AWS CLI (see AWS's 'Install the Session Manager plugin' guide), or use --ssh".into(),
            ));
        }
    }
    if let Some(k) = send_key {
        let status = std::process::Command::new(&k.program)
            .args(&k.args)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| Error::io(format!("Failed to run {}", k.program), e))?;
        if !status.success() {
            return Err(Error::Refused(format!(
                "EC2 Instance Connect did not accept the key for '{user}' on {} ({status}): \
                 the image needs the ec2-instance-connect package (Amazon Linux and Ubuntu \
                 have it) and you need ec2-instance-connect:SendSSHPublicKey",
                i.id
            )));
        }
    }
    eprintln!("Attaching to tmux session '{session}' on {} …", i.id);
    // exec: the terminal belongs to ssh/aws from here on, and its exit status is ours.
    let err = std::process::Command::new(&launch.program)
        .args(&launch.args)
        .exec();
    Err(Error::io(format!("Failed to run {}", launch.program), err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(tags: &[(&str, &str)]) -> Instance {
        Instance {
            region: "eu-west-1".into(),
            private_ip: Some("10.0.0.5".into()),
            public_ip: Some("54.1.2.3".into()),
            public_dns: Some("ec2-54-1-2-3.compute-1.amazonaws.com".into()),
            ..crate::aws::ec2::fake::instance("i-0123456789abcdef0", tags)
        }
    }

    #[test]
    fn session_defaults_to_the_running_task_else_the_shell_session() {
        assert_eq!(session_for(&inst(&[]), None).unwrap(), "lease");
        // An idle node's agent writes an empty lease:task: no task, not session "lease-".
        assert_eq!(
            session_for(&inst(&[("lease:task", "")]), None).unwrap(),
            "lease"
        );
        assert_eq!(
            session_for(&inst(&[("lease:task", "t42")]), None).unwrap(),
            "lease-t42"
        );
        assert_eq!(session_for(&inst(&[]), Some("work")).unwrap(), "work");
        assert!(session_for(&inst(&[]), Some("x; rm -rf /")).is_err());
    }

    #[test]
    fn the_remote_tmux_is_the_agents_as_the_task_user() {
        assert_eq!(
            remote_tmux("ssm-user", "lease"),
            "sudo -u lease tmux -S /run/leased/tmux/default new-session -A -s lease"
        );
        assert_eq!(
            remote_tmux("root", "lease-t1"),
            "runuser -u lease -- tmux -S /run/leased/tmux/default attach-session -t lease-t1"
        );
    }

    #[test]
    fn the_login_user_comes_from_the_image_unless_given() {
        assert_eq!(login_user(Some("alice"), Some("ubuntu-noble")), "alice");
        assert_eq!(
            login_user(
                None,
                Some("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20261006")
            ),
            "ubuntu"
        );
        assert_eq!(login_user(None, Some("debian-12-amd64-20261101")), "admin");
        assert_eq!(login_user(None, Some("al2023-ami-2023.9")), "ec2-user");
        assert_eq!(login_user(None, None), "ec2-user");
    }

    #[test]
    fn ssh_over_ssm_pushes_a_key_and_tunnels_to_the_instance_id() {
        let i = inst(&[]);
        let key = Path::new("/home/a/.ssh/id_ed25519");
        let send = send_key_launch(&i, "ubuntu", &key.with_extension("pub"), Some("dev"), None);
        assert_eq!(
            send.display(),
            "aws ec2-instance-connect send-ssh-public-key --instance-id i-0123456789abcdef0 \
             --instance-os-user ubuntu --ssh-public-key file:///home/a/.ssh/id_ed25519.pub \
             --region eu-west-1 --profile dev"
        );
        let l = ssh_over_ssm_launch(&i, "ubuntu", key, "lease", Some("dev"));
        assert_eq!(l.program, "ssh");
        assert_eq!(l.args[..3], ["-t", "-i", "/home/a/.ssh/id_ed25519"]);
        assert_eq!(
            l.args[4],
            "ProxyCommand=aws ssm start-session --target %h --document-name AWS-StartSSHSession \
             --parameters portNumber=%p --region eu-west-1 --profile dev"
        );
        assert_eq!(l.args[5], "ubuntu@i-0123456789abcdef0");
        assert!(l.args[6].starts_with("sudo -u lease tmux"), "{}", l.args[6]);
        assert!(!l.display().contains("StrictHostKeyChecking"));
    }

    #[test]
    fn ssm_runs_the_interactive_command_document() {
        let l = ssm_launch(&inst(&[]), "lease", Some("dev"), None);
        assert_eq!(l.program, "aws");
        let text = l.display();
        assert!(
            text.contains("start-session --target i-0123456789abcdef0 --region eu-west-1"),
            "{text}"
        );
        assert!(text.contains("AWS-StartInteractiveCommand"));
        assert!(
            text.contains(
                r#"'{"command":["sudo -u lease tmux -S /run/leased/tmux/default new-session -A -s lease"]}'"#
            ),
            "{text}"
        );
        assert!(text.ends_with("--profile dev"));
    }

    #[test]
    fn ssh_uses_public_dns_and_never_touches_host_keys() {
        let l = ssh_launch(&inst(&[]), "ec2-user", "lease", None).unwrap();
        assert_eq!(
            l.display(),
            "ssh -t ec2-user@ec2-54-1-2-3.compute-1.amazonaws.com \
             'sudo -u lease tmux -S /run/leased/tmux/default new-session -A -s lease'"
        );
        assert!(!l.display().contains("StrictHostKeyChecking"));
        let l = ssh_launch(&inst(&[]), "root", "s1", Some("ssh -F cfg")).unwrap();
        assert_eq!(l.program, "sh");
        assert_eq!(l.args[1], "ssh -F cfg \"$@\"");
        assert_eq!(
            l.args.last().map(String::as_str),
            Some("runuser -u lease -- tmux -S /run/leased/tmux/default attach-session -t s1")
        );
    }
}
