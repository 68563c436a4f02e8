//! `lease attach`: open the instance's tmux session over SSM or SSH. lease builds the
//! command and hands the terminal to it; it never weakens SSH (no host-key overrides).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::cli::AttachArgs;
use crate::cloud::{Cloud, Instance};
use crate::error::{Error, Result};
use crate::output;
use crate::resolve::resolve;

/// tmux session used when the instance runs no task.
pub const DEFAULT_SESSION: &str = "lease";

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

/// The session to attach: `--session`, else the running task's, else `lease`.
pub fn session_for(i: &Instance, requested: Option<&str>) -> Result<String> {
    let session = match requested {
        Some(s) => s.to_string(),
        None => match i.tags.get(lease_common::tags::TASK) {
            Some(task) => format!("lease-{task}"),
            None => DEFAULT_SESSION.to_string(),
        },
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

/// The agent's tmux server runs as root, so a non-root login attaches through sudo.
fn remote_tmux(user: &str, session: &str) -> String {
    if user == "root" {
        format!("tmux attach -t {session}")
    } else {
        format!("sudo tmux attach -t {session}")
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
    if let Some(p) = profile {
        args.extend(["--profile".into(), p.to_string()]);
    }
    if let Some(e) = endpoint_url {
        args.extend(["--endpoint-url".into(), e.to_string()]);
    }
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
    let launch = if args.ssh {
        ssh_launch(i, &args.user, &session, ssh_command.as_deref())?
    } else {
        ssm_launch(i, &session, profile, endpoint_url)
    };
    if args.print {
        return output::print(&format!("{}\n", launch.display()));
    }
    if args.ssh {
        if ssh_command.is_none() && on_path("ssh").is_none() {
            return Err(Error::MissingProgram(
                "ssh not found on PATH: install OpenSSH's client".into(),
            ));
        }
    } else {
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
            ..crate::fake::instance("i-0123456789abcdef0", tags)
        }
    }

    #[test]
    fn session_defaults_to_the_running_task() {
        assert_eq!(session_for(&inst(&[]), None).unwrap(), "lease");
        assert_eq!(
            session_for(&inst(&[("lease:task", "t42")]), None).unwrap(),
            "lease-t42"
        );
        assert_eq!(session_for(&inst(&[]), Some("work")).unwrap(), "work");
        assert!(session_for(&inst(&[]), Some("x; rm -rf /")).is_err());
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
            text.contains(r#"'{"command":["sudo tmux attach -t lease"]}'"#),
            "{text}"
        );
        assert!(text.ends_with("--profile dev"));
    }

    #[test]
    fn ssh_uses_public_dns_and_never_touches_host_keys() {
        let l = ssh_launch(&inst(&[]), "ec2-user", "lease", None).unwrap();
        assert_eq!(
            l.display(),
            "ssh -t ec2-user@ec2-54-1-2-3.compute-1.amazonaws.com 'sudo tmux attach -t lease'"
        );
        assert!(!l.display().contains("StrictHostKeyChecking"));
        let l = ssh_launch(&inst(&[]), "root", "s1", Some("ssh -F cfg")).unwrap();
        assert_eq!(l.program, "sh");
        assert_eq!(l.args[1], "ssh -F cfg \"$@\"");
        assert_eq!(l.args.last().map(String::as_str), Some("tmux attach -t s1"));
    }
}
