//! The command line each task kind runs: a pure function of the task and the agent's
//! settings, so every flag is checked without running anything.

use std::path::Path;

use lease_common::messages::{ClaudeSpec, DockerSpec, Task, TaskSpec};

use lease_common::session::task_session;

/// What the agent's config and identity add to a task's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Claude Code talks to Bedrock with the instance role as the credential.
    pub bedrock: bool,
    /// The model when a Claude task names none.
    pub default_model: Option<String>,
    pub region: String,
    /// The Claude Code executable: `claude` on the agent's PATH unless set. Claude
    /// Code's own installer puts it in `~/.local/bin`, which a systemd unit's PATH
    /// does not hold.
    pub claude_program: String,
}

/// A task's program, its environment, and what runs before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub env: Vec<(String, String)>,
    pub preamble: Vec<Vec<String>>,
    pub argv: Vec<String>,
    /// Text fed on standard input (a Claude task's prompt).
    pub stdin: Option<String>,
}

/// The command for `task`, or the reason it cannot run, naming the field at fault.
pub fn plan(task: &Task, workdir: &Path, settings: &Settings) -> Result<Plan, String> {
    match &task.spec {
        TaskSpec::Shell(s) => {
            if s.command.trim().is_empty() {
                return Err("'command' is empty".into());
            }
            Ok(Plan {
                env: Vec::new(),
                preamble: Vec::new(),
                argv: vec!["bash".into(), "-lc".into(), s.command.clone()],
                stdin: None,
            })
        }
        TaskSpec::Claude(c) => claude(c, settings),
        TaskSpec::Docker(d) => docker(&task.id, d, workdir),
    }
}

/// `claude -p --output-format stream-json --verbose` with the task's options. The
/// prompt goes on standard input rather than the command line: a prompt may start
/// with `-`, may exceed the kernel's 128 KiB limit for one argument, and should not be
/// visible to every user in `ps`. `--allowedTools` takes several values, so it comes
/// last, with nothing after it that it could swallow.
fn claude(c: &ClaudeSpec, settings: &Settings) -> Result<Plan, String> {
    if c.prompt.trim().is_empty() {
        return Err("'prompt' is empty".into());
    }
    let mut argv: Vec<String> = [
        settings.claude_program.as_str(),
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    .map(String::from)
    .to_vec();
    if let Some(model) = c.model.as_ref().or(settings.default_model.as_ref()) {
        argv.extend(["--model".into(), model.clone()]);
    }
    if let Some(mode) = &c.permission_mode {
        argv.extend(["--permission-mode".into(), mode.clone()]);
    }
    if let Some(turns) = c.max_turns {
        argv.extend(["--max-turns".into(), turns.to_string()]);
    }
    if !c.allowed_tools.is_empty() {
        if let Some(bad) = c.allowed_tools.iter().find(|t| t.trim().is_empty()) {
            return Err(format!(
                "'allowed_tools' holds an empty tool name ({bad:?})"
            ));
        }
        argv.push("--allowedTools".into());
        argv.extend(c.allowed_tools.iter().cloned());
    }
    let env = if settings.bedrock {
        vec![
            ("CLAUDE_CODE_USE_BEDROCK".into(), "1".into()),
            ("AWS_REGION".into(), settings.region.clone()),
        ]
    } else {
        Vec::new()
    };
    Ok(Plan {
        env,
        preamble: Vec::new(),
        argv,
        stdin: Some(c.prompt.clone()),
    })
}

/// `docker run` named after the session, so `docker stop` finds it; the workdir is
/// `/out`. `--rm` leaves no container behind; the preamble removes one an earlier
/// attempt of the same task left (a crashed engine), which would block the name. `-t`
/// gives the program a terminal, as the other kinds have: it writes its lines as they
/// come instead of in buffered blocks, and progress bars show in `lease attach`.
fn docker(task_id: &str, d: &DockerSpec, workdir: &Path) -> Result<Plan, String> {
    if d.image.trim().is_empty() || d.image.starts_with('-') {
        return Err(format!("'image' {:?} is not an image reference", d.image));
    }
    let name = task_session(task_id);
    let mut argv: Vec<String> = vec![
        "docker".into(),
        "run".into(),
        "--rm".into(),
        "-t".into(),
        "--name".into(),
        name.clone(),
        "-v".into(),
        format!("{}:{DOCKER_BUNDLE_DIR}", workdir.display()),
    ];
    for (k, v) in &d.env {
        if k.is_empty() || k.contains('=') {
            return Err(format!("'env' has an invalid variable name {k:?}"));
        }
        argv.extend(["-e".into(), format!("{k}={v}")]);
    }
    if let Some(gpus) = &d.gpus {
        argv.extend(["--gpus".into(), gpus.clone()]);
    }
    argv.push(d.image.clone());
    argv.extend(d.args.iter().cloned());
    Ok(Plan {
        env: Vec::new(),
        preamble: vec![vec!["docker".into(), "rm".into(), "-f".into(), name]],
        argv,
        stdin: None,
    })
}

/// The directory a Docker task's bundle is mounted at inside its container.
pub const DOCKER_BUNDLE_DIR: &str = "/out";

/// Gives the task the variables that say who it is (`LEASE_*`): in the script's
/// environment for a process, as `-e` options for a container (with the bundle
/// directory as the container sees it). The task's own `env` comes after them, so
/// `docker run` lets a task's explicit value win, as it does for a process.
pub fn with_task_vars(mut plan: Plan, spec: &TaskSpec, vars: &[(String, String)]) -> Plan {
    match spec {
        TaskSpec::Docker(_) => {
            // Right after the mount (`-v`, `<dir>:/out`), before the task's own `-e`.
            let at = plan
                .argv
                .iter()
                .position(|a| a == "-v")
                .map_or(plan.argv.len(), |i| i + 2);
            let options = vars.iter().flat_map(|(k, v)| {
                let v = if k == "LEASE_BUNDLE_DIR" {
                    DOCKER_BUNDLE_DIR
                } else {
                    v.as_str()
                };
                ["-e".to_string(), format!("{k}={v}")]
            });
            plan.argv.splice(at..at, options);
        }
        _ => {
            let mut env = vars.to_vec();
            env.append(&mut plan.env);
            plan.env = env;
        }
    }
    plan
}

/// The registry of an ECR image (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]`),
/// which needs a login with the instance role; `None` for any other image.
pub fn ecr_registry(image: &str) -> Option<&str> {
    let (host, _) = image.split_once('/')?;
    let mut parts = host.split('.');
    let account = parts.next()?;
    let service = [parts.next()?, parts.next()?];
    let region = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let known_service = service[0] == "dkr" && (service[1] == "ecr" || service[1] == "ecr-fips");
    let known_domain = rest == ["amazonaws", "com"] || rest == ["amazonaws", "com", "cn"];
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (known_service && known_domain && account_ok && region_ok).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_common::messages::ShellSpec;
    use std::collections::BTreeMap;

    fn settings(bedrock: bool) -> Settings {
        Settings {
            bedrock,
            default_model: Some("claude-sonnet-4-5".into()),
            region: "eu-west-1".into(),
            claude_program: "claude".into(),
        }
    }

    fn claude_task(c: ClaudeSpec) -> Task {
        Task::new("c1", TaskSpec::Claude(c))
    }

    fn spec(prompt: &str) -> ClaudeSpec {
        ClaudeSpec {
            prompt: prompt.into(),
            model: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            max_turns: None,
        }
    }

    #[test]
    fn shell_runs_a_login_bash() {
        let t = Task::new(
            "s1",
            TaskSpec::Shell(ShellSpec {
                command: "make -j4 && ./a.out".into(),
            }),
        );
        let p = plan(&t, Path::new("/w"), &settings(false)).unwrap();
        assert_eq!(p.argv, ["bash", "-lc", "make -j4 && ./a.out"]);
        assert!(p.env.is_empty() && p.stdin.is_none());
    }

    #[test]
    fn claude_gets_every_option_and_the_prompt_on_stdin() {
        let mut c = spec("-fix the tests");
        c.model = Some("claude-opus-4-1".into());
        c.permission_mode = Some("acceptEdits".into());
        c.max_turns = Some(12);
        c.allowed_tools = vec!["Read".into(), "Bash(git log:*)".into()];
        let p = plan(&claude_task(c), Path::new("/w"), &settings(false)).unwrap();
        assert_eq!(
            p.argv,
            [
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--model",
                "claude-opus-4-1",
                "--permission-mode",
                "acceptEdits",
                "--max-turns",
                "12",
                "--allowedTools",
                "Read",
                "Bash(git log:*)"
            ]
        );
        assert_eq!(p.stdin.as_deref(), Some("-fix the tests"));
        assert!(p.env.is_empty());
    }

    #[test]
    fn bedrock_uses_the_role_and_the_default_model() {
        let p = plan(&claude_task(spec("hi")), Path::new("/w"), &settings(true)).unwrap();
        assert_eq!(
            p.env,
            [
                ("CLAUDE_CODE_USE_BEDROCK".to_string(), "1".to_string()),
                ("AWS_REGION".to_string(), "eu-west-1".to_string())
            ]
        );
        let at = p.argv.iter().position(|a| a == "--model").unwrap();
        assert_eq!(p.argv[at + 1], "claude-sonnet-4-5");
        let err = plan(&claude_task(spec("  ")), Path::new("/w"), &settings(true)).unwrap_err();
        assert!(err.contains("prompt"), "{err}");
    }

    #[test]
    fn docker_mounts_out_names_the_container_and_passes_env_and_gpus() {
        let t = Task::new(
            "d1",
            TaskSpec::Docker(DockerSpec {
                image: "trainer:1".into(),
                args: vec!["--epochs".into(), "2".into()],
                env: BTreeMap::from([("LR".into(), "0.1".into()), ("A".into(), "x=y".into())]),
                gpus: Some("all".into()),
            }),
        );
        let p = plan(&t, Path::new("/tasks/d1/work"), &settings(false)).unwrap();
        assert_eq!(
            p.argv,
            [
                "docker",
                "run",
                "--rm",
                "-t",
                "--name",
                "lease-d1",
                "-v",
                "/tasks/d1/work:/out",
                "-e",
                "A=x=y",
                "-e",
                "LR=0.1",
                "--gpus",
                "all",
                "trainer:1",
                "--epochs",
                "2"
            ]
        );
        assert_eq!(p.preamble, [["docker", "rm", "-f", "lease-d1"]]);
    }

    #[test]
    fn task_vars_go_into_the_environment_or_the_container() {
        let vars = vec![
            ("LEASE_TASK_ID".to_string(), "d1".to_string()),
            ("LEASE_BUNDLE_DIR".to_string(), "/tasks/d1/work".to_string()),
        ];
        let t = Task::new(
            "d1",
            TaskSpec::Docker(DockerSpec {
                image: "img:1".into(),
                args: Vec::new(),
                env: BTreeMap::from([("A".into(), "1".into())]),
                gpus: None,
            }),
        );
        let p = plan(&t, Path::new("/tasks/d1/work"), &settings(false)).unwrap();
        let p = with_task_vars(p, &t.spec, &vars);
        assert_eq!(
            p.argv[6..],
            [
                "-v",
                "/tasks/d1/work:/out",
                "-e",
                "LEASE_TASK_ID=d1",
                "-e",
                "LEASE_BUNDLE_DIR=/out",
                "-e",
                "A=1",
                "img:1"
            ]
        );
        assert!(p.env.is_empty());

        let t = claude_task(spec("hi"));
        let p = plan(&t, Path::new("/w"), &settings(true)).unwrap();
        let p = with_task_vars(p, &t.spec, &vars);
        assert_eq!(p.env[..2], vars[..]);
        assert_eq!(p.env[2].0, "CLAUDE_CODE_USE_BEDROCK");
    }

    #[test]
    fn docker_refuses_bad_env_names_and_images() {
        let mut d = DockerSpec {
            image: "x".into(),
            args: Vec::new(),
            env: BTreeMap::from([("A=B".into(), "1".into())]),
            gpus: None,
        };
        let t = Task::new("d", TaskSpec::Docker(d.clone()));
        let err = plan(&t, Path::new("/w"), &settings(false)).unwrap_err();
        assert!(err.contains("A=B"), "{err}");
        d.env.clear();
        d.image = "--privileged".into();
        let t = Task::new("d", TaskSpec::Docker(d));
        let err = plan(&t, Path::new("/w"), &settings(false)).unwrap_err();
        assert!(err.contains("image"), "{err}");
    }

    #[test]
    fn ecr_images_are_recognised() {
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/trainer:3"),
            Some("123456789012.dkr.ecr.us-east-1.amazonaws.com")
        );
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/x"),
            Some("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com")
        );
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/x@sha256:ab"),
            Some("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn")
        );
        for other in [
            "ubuntu:24.04",
            "library/ubuntu",
            "ghcr.io/org/img:1",
            "public.ecr.aws/lambda/python:3.12",
            "12345.dkr.ecr.us-east-1.amazonaws.com/short-account",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example/x",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert_eq!(ecr_registry(other), None, "{other}");
        }
    }
}
