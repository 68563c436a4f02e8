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
    cc.push_str("runcmd:\n");
    if let Some(src) = agent {
        // The package is a .deb; on rpm-based images (Amazon Linux, the default AMI) its
        // payload is unpacked directly, since the binary and unit need no maintainer
        // scripts beyond enabling the service, which runcmd does next. Either way the
        // config cloud-init just wrote wins over the package's default: dpkg keeps the
        // old conffile without asking (a question would fail the install), and tar
        // skips files that exist.
        let script = format!(
            "set -eu; if ! command -v leased >/dev/null 2>&1; then \
             aws s3 cp 's3://{bucket}/{key}' /tmp/leased.deb; \
             if command -v apt-get >/dev/null 2>&1; then \
             apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /tmp/leased.deb; \
             else dnf install -y tmux binutils; d=$(mktemp -d); (cd \"$d\" && ar x /tmp/leased.deb && tar -C / --skip-old-files -xf data.tar.*); \
             systemctl daemon-reload; fi; fi",
            bucket = src.bucket,
            key = src.key
        );
        cc.push_str(&format!("  - [ sh, -c, {} ]\n", yaml_quote(&script)));
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

    #[test]
    fn installs_the_agent_from_the_bucket_when_asked() {
        let src = AgentSource {
            bucket: "lease-ctl".into(),
            key: "agent/0.1.0/leased_0.1.0_amd64.deb".into(),
        };
        let ud = render(&AgentConfig::default(), Some(&src), None).unwrap();
        let doc = cloud_config_part(&ud);
        let install = doc["runcmd"][0][2].as_str().unwrap();
        assert!(install.contains("s3://lease-ctl/agent/0.1.0/leased_0.1.0_amd64.deb"));
        assert!(install.contains("command -v leased"));
        assert!(install.contains("--force-confold"), "{install}");
        assert!(install.contains("--skip-old-files"), "{install}");
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
