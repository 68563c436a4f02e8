//! The task runner against the real programs: tmux (a private server per test),
//! Docker with a locally built image, and a stand-in `claude` that replays a recorded
//! stream-json session. Each test reads back what the task did through another path
//! (files the task wrote, tmux's and Docker's own view), not only the runner's answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use lease_common::config::AgentConfig;
use lease_common::messages::{ClaudeSpec, DockerSpec, ShellSpec, Task, TaskSpec};
use lease_tests::{Moto, wait_until};
use leased::run::{
    Exec, Exit, Finished, Launch, LogTail, OutputParser, RunError, Runner, SdkEcr, TmuxRunner,
    runner_dir,
};

const LIMIT: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(20);
const REGION: &str = "eu-west-1";
/// Replayed by the stand-in `claude`: a session recorded from the real CLI
/// (tests/tests/claude_cli.rs); the parser's unit tests read the same file.
const CLAUDE_SESSION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agent/src/run/testdata/claude/write.jsonl"
);

/// A private tmux server for one test (`tmux -S`, in a directory of its own that
/// the runner creates), killed at the end with its panes.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A server the test may start itself (its directory exists, the test's own).
    fn new(test: &str) -> Self {
        let tmux = Self::for_the_runner(test);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(tmux.socket.parent().unwrap())
            .unwrap();
        tmux
    }

    /// A server whose directory the runner creates (for the task user).
    fn for_the_runner(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lease-test-{}-{test}", std::process::id()));
        Self {
            socket: dir.join("tmux"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(args).env_remove("TMUX");
        c
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run tmux")
    }

    /// Starts the server with extra environment (which sessions inherit) by opening a
    /// session that is not a task's.
    fn start_server(&self, env: &[(&str, &str)]) {
        let mut c = self.command(&["new-session", "-d", "-s", "bystander", "sleep 100000"]);
        for (k, v) in env {
            c.env(k, v);
        }
        assert!(c.status().unwrap().success(), "tmux server did not start");
    }

    fn has_session(&self, name: &str) -> bool {
        self.output(&["has-session", "-t", &format!("={name}")])
            .status
            .success()
    }

    fn pane(&self, session: &str, format: &str) -> String {
        let out = self.output(&[
            "display-message",
            "-p",
            "-t",
            &format!("={session}:"),
            format,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.output(&["kill-server"]);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An ECR client that is never asked: these tasks use no ECR image.
async fn unused_ecr() -> SdkEcr {
    ecr_at("http://127.0.0.1:9").await
}

async fn ecr_at(endpoint: &str) -> SdkEcr {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    SdkEcr::from_config(&config)
}

/// `bash -l` reads the login profile from HOME; the test's own (an empty directory)
/// keeps the developer's profile out of the task's output. These tests are about
/// tmux and the wrapper, so tasks run as the test's own user; the task user has
/// tests of its own (and every task of the agent's end-to-end tests runs as it).
async fn runner(tmux: &Tmux, config: &AgentConfig, home: &Path) -> TmuxRunner {
    TmuxRunner::new(config, REGION.into(), Arc::new(unused_ecr().await))
        .with_socket(&tmux.socket)
        .with_task_user(own_user())
        .with_env("HOME", home.display().to_string())
}

/// The user the tests run as.
fn own_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn launch(dir: &Path, id: &str, spec: TaskSpec) -> Launch {
    let workdir = dir.join(id).join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    Launch {
        task: Task::new(id, spec),
        workdir,
        log_path: dir.join("logs").join(format!("{id}.log")),
        env: Vec::new(),
    }
}

fn shell(command: &str) -> TaskSpec {
    TaskSpec::Shell(ShellSpec {
        command: command.into(),
    })
}

async fn wait_exit(runner: &dyn Runner, l: &Launch) -> Exit {
    let (id, wd) = (l.task.id.as_str(), l.workdir.as_path());
    wait_until("the task to end", LIMIT, EVERY, move || async move {
        runner.poll(id, wd).await.unwrap()
    })
    .await
}

fn log_lines(l: &Launch) -> Vec<String> {
    LogTail::new(&l.log_path, 0).read_lines().unwrap()
}

async fn wait_log_line(l: &Launch, line: &str) {
    wait_until(&format!("{line:?} in the log"), LIMIT, EVERY, || async {
        log_lines(l).iter().any(|x| x == line).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_shell_task_keeps_its_first_line_and_exit_status() {
    let tmux = Tmux::new("shell");
    // The server (as the agent's unit would start it) carries the unit's variables.
    tmux.start_server(&[
        ("NOTIFY_SOCKET", "/run/systemd/notify"),
        ("WATCHDOG_USEC", "30000000"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let l = launch(
        tmp.path(),
        "sh1",
        shell(
            "echo 'first line'; \
             echo \"notify=${NOTIFY_SOCKET-unset} watchdog=${WATCHDOG_USEC-unset}\"; \
             pwd; exit 7",
        ),
    );
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    r.start(&l).await.unwrap();
    assert!(tmux.has_session("lease-sh1"));

    assert_eq!(wait_exit(&r, &l).await, Exit::Code(7));
    let lines = log_lines(&l);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("first line"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"notify=unset watchdog=unset".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&l.workdir.display().to_string()),
        "{lines:?}"
    );

    // remain-on-exit was on before the command ran: tmux still holds the dead pane
    // (and its status, when tmux recorded one: tmux 3.3a sometimes does not).
    assert!(
        ["1 7", "1"].contains(
            &tmux
                .pane("lease-sh1", "#{pane_dead} #{pane_dead_status}")
                .as_str()
        )
    );
    assert_eq!(r.live_sessions().await.unwrap(), vec!["sh1".to_string()]);
    // Nothing of the runner's lands in the bundle.
    assert_eq!(std::fs::read_dir(&l.workdir).unwrap().count(), 0);

    r.cleanup("sh1", &l.workdir).await.unwrap();
    assert!(!tmux.has_session("lease-sh1"));
    assert!(!runner_dir(&l.workdir).exists());
    assert!(tmux.has_session("bystander"));
    assert!(r.live_sessions().await.unwrap().is_empty());
}

/// As root, the runner runs the task (and its tmux server) as the task user, with
/// only the environment it gives: the server's own variables, set when it started,
/// never reach the task.
#[tokio::test]
async fn a_task_runs_as_the_task_user_with_only_the_environment_it_is_given() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmux = Tmux::for_the_runner("user");
    let tmp = tempfile::tempdir().unwrap();
    // The task user must be able to reach its workdir and log.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let passwd = Command::new("getent")
        .args(["passwd", lease_common::session::DEFAULT_TASK_USER])
        .output()
        .unwrap();
    let passwd = String::from_utf8(passwd.stdout).unwrap();
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(
        fields.len(),
        7,
        "the task user is missing: run tests/install-deps.sh"
    );
    let (uid, home) = (fields[2], fields[5]);

    let mut config = AgentConfig::default();
    config
        .task_env
        .insert("STACK_SETTING".into(), "from the stack".into());
    let r = TmuxRunner::new(&config, REGION.into(), Arc::new(unused_ecr().await))
        .with_socket(&tmux.socket);
    let mut l = launch(
        tmp.path(),
        "who",
        shell("id -u > whoami; env | sort > env; echo written"),
    );
    l.env = vec![("LEASE_TASK_ID".into(), "who".into())];
    r.start(&l).await.unwrap();
    assert_eq!(wait_exit(&r, &l).await, Exit::Code(0));
    // A later task on the same server, started while a stale variable is in the
    // server's environment, still gets only what the runner gives.
    let set = tmux.output(&["set-environment", "-g", "STALE", "left over"]);
    assert!(set.status.success(), "{set:?}");
    let mut l2 = launch(tmp.path(), "who2", shell("env | sort > env"));
    l2.env = vec![("LEASE_TASK_ID".into(), "who2".into())];
    r.start(&l2).await.unwrap();
    assert_eq!(wait_exit(&r, &l2).await, Exit::Code(0));

    assert_eq!(
        std::fs::read_to_string(l.workdir.join("whoami"))
            .unwrap()
            .trim(),
        uid
    );
    // Read back through the file system: the files the task made are the user's.
    assert_eq!(
        std::fs::metadata(l.workdir.join("env"))
            .unwrap()
            .uid()
            .to_string(),
        uid
    );
    let server = Command::new("stat")
        .args(["-c", "%u"])
        .arg(&tmux.socket)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(server.stdout).unwrap().trim(), uid);
    for (task, env_file) in [("who", &l.workdir), ("who2", &l2.workdir)] {
        let env = std::fs::read_to_string(env_file.join("env")).unwrap();
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        assert_eq!(vars.get("LEASE_TASK_ID"), Some(&task), "{env}");
        assert_eq!(vars.get("HOME"), Some(&home), "{env}");
        assert_eq!(
            vars.get("USER"),
            Some(&lease_common::session::DEFAULT_TASK_USER)
        );
        assert_eq!(vars.get("STACK_SETTING"), Some(&"from the stack"), "{env}");
        assert!(
            vars["PATH"].starts_with(&format!("{home}/.local/bin:")),
            "{env}"
        );
        for absent in ["STALE", "TMUX", "LEASE_MOTO_SERVER", "CARGO"] {
            assert!(!vars.contains_key(absent), "{absent} leaked: {env}");
        }
    }
    r.cleanup("who", &l.workdir).await.unwrap();
    r.cleanup("who2", &l2.workdir).await.unwrap();
}

#[tokio::test]
async fn a_new_agent_learns_how_a_task_ended_while_none_ran() {
    let tmux = Tmux::new("adopt");
    let tmp = tempfile::tempdir().unwrap();
    let l = launch(
        tmp.path(),
        "ad1",
        shell("echo started; while [ ! -e release ]; do sleep 0.05; done; echo released; exit 5"),
    );
    let first = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    first.start(&l).await.unwrap();
    wait_log_line(&l, "started").await;
    drop(first);

    // The task ends with no agent (no runner) running.
    std::fs::write(l.workdir.join("release"), "").unwrap();
    wait_until("the pane to die", LIMIT, EVERY, || async {
        (tmux.pane("lease-ad1", "#{pane_dead}") == "1").then_some(())
    })
    .await;

    let restarted = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    assert_eq!(
        restarted.live_sessions().await.unwrap(),
        vec!["ad1".to_string()]
    );
    // The end is reported once the log has caught up with it, so it is waited for.
    assert_eq!(wait_exit(&restarted, &l).await, Exit::Code(5));
    assert_eq!(
        log_lines(&l),
        vec!["started", "released", "[lease] task ended: exit status 5"]
    );

    // Without the status file, tmux's #{pane_dead_status} tells, when tmux has one (it
    // does not always reap the pane's process in time to record it); else the outcome
    // is lost, and said to be.
    std::fs::remove_file(runner_dir(&l.workdir).join("exit")).unwrap();
    match tmux.pane("lease-ad1", "#{pane_dead_status}").as_str() {
        "5" => assert_eq!(
            restarted.poll("ad1", &l.workdir).await.unwrap(),
            Some(Exit::Code(5))
        ),
        "" => assert!(matches!(
            restarted.poll("ad1", &l.workdir).await,
            Err(RunError::Lost { .. })
        )),
        other => panic!("tmux reports exit status {other:?} for a task that exited 5"),
    }

    // With neither, the outcome is lost, and the error says so by task.
    restarted.cleanup("ad1", &l.workdir).await.unwrap();
    match restarted.poll("ad1", &l.workdir).await {
        Err(e @ RunError::Lost { .. }) => assert!(e.to_string().contains("'ad1'"), "{e}"),
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[tokio::test]
async fn an_interrupt_sends_sigterm_to_the_task() {
    let tmux = Tmux::new("term");
    let tmp = tempfile::tempdir().unwrap();
    let l = launch(
        tmp.path(),
        "tm1",
        shell(
            "trap 'echo saved > checkpoint; echo got TERM; exit 0' TERM; \
             echo ready; while :; do sleep 0.05; done",
        ),
    );
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    r.start(&l).await.unwrap();
    wait_log_line(&l, "ready").await;
    assert_eq!(r.poll("tm1", &l.workdir).await.unwrap(), None);

    r.interrupt("tm1", &l.workdir, Duration::from_secs(30))
        .await
        .unwrap();
    // interrupt returns once the task has ended.
    assert_eq!(
        r.poll("tm1", &l.workdir).await.unwrap(),
        Some(Exit::Code(0))
    );
    assert_eq!(
        std::fs::read_to_string(l.workdir.join("checkpoint")).unwrap(),
        "saved\n"
    );
    assert!(log_lines(&l).contains(&"got TERM".to_string()));
}

#[tokio::test]
async fn a_task_that_ignores_sigterm_is_killed_after_the_grace() {
    let tmux = Tmux::new("kill");
    let tmp = tempfile::tempdir().unwrap();
    let l = launch(
        tmp.path(),
        "kl1",
        shell("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
    );
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    r.start(&l).await.unwrap();
    wait_log_line(&l, "ready").await;
    r.interrupt("kl1", &l.workdir, Duration::from_millis(300))
        .await
        .unwrap();
    // SIGKILL took the wrapper too, so the status comes from tmux, when tmux recorded
    // one (tmux 3.3a sometimes does not); without it the outcome is reported lost.
    match tmux.pane("lease-kl1", "#{pane_dead_signal}").as_str() {
        "9" => assert_eq!(
            r.poll("kl1", &l.workdir).await.unwrap(),
            Some(Exit::Signal(9))
        ),
        "" => assert!(matches!(
            r.poll("kl1", &l.workdir).await,
            Err(RunError::Lost { .. })
        )),
        other => panic!("tmux reports signal {other:?} for a task killed with 9"),
    }
}

#[tokio::test]
async fn a_claude_task_runs_with_its_options_and_parses_into_lines_and_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let stand_in = tmp.path().join("claude");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\n\
             # Stands in for Claude Code: records how it was called, replays a session.\n\
             printf '%s\\n' \"$@\" > {probe}/args\n\
             cat > {probe}/stdin\n\
             printf 'bedrock=%s region=%s\\n' \"${{CLAUDE_CODE_USE_BEDROCK-unset}}\" \"${{AWS_REGION-unset}}\" > {probe}/env\n\
             pwd > {probe}/pwd\n\
             cat {session}\n",
            probe = probe.display(),
            session = CLAUDE_SESSION,
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&stand_in)
        .status()
        .unwrap();

    let tmux = Tmux::new("claude");

    let mut config = AgentConfig::default();
    config.claude.bedrock = true;
    config.claude.model = Some("default-model".into());
    let spec = TaskSpec::Claude(ClaudeSpec {
        prompt: "-Write a README.\nTwo lines, no more.".into(),
        model: None,
        permission_mode: Some("acceptEdits".into()),
        allowed_tools: vec!["Read".into(), "Write".into()],
        max_turns: Some(4),
    });
    let l = launch(tmp.path(), "cl1", spec.clone());
    let r = runner(&tmux, &config, tmp.path())
        .await
        .with_claude_program(stand_in.display().to_string());
    r.start(&l).await.unwrap();
    let exit = wait_exit(&r, &l).await;
    assert_eq!(exit, Exit::Code(0), "log: {:?}", log_lines(&l));

    let read = |name: &str| std::fs::read_to_string(probe.join(name)).unwrap();
    assert_eq!(
        read("args").lines().collect::<Vec<_>>(),
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "default-model",
            "--permission-mode",
            "acceptEdits",
            "--max-turns",
            "4",
            "--allowedTools",
            "Read",
            "Write"
        ]
    );
    assert_eq!(read("stdin"), "-Write a README.\nTwo lines, no more.");
    assert_eq!(read("env"), format!("bedrock=1 region={REGION}\n"));
    assert_eq!(read("pwd").trim(), l.workdir.display().to_string());

    let mut parser = OutputParser::for_spec(&spec);
    let lines: Vec<String> = log_lines(&l).iter().flat_map(|x| parser.push(x)).collect();
    let cwd = "/var/lib/leased/tasks/t1/work";
    assert_eq!(
        lines[1..],
        [
            format!("[tool] Write: {cwd}/hello.txt"),
            "I wrote hello.txt.".into(),
            "[result] success, 2 turns, $0.0016".into(),
            "[lease] task ended: exit status 0".into(),
        ]
    );
    assert!(lines[0].starts_with("[claude] session "), "{lines:?}");
    let summary = parser.summary();
    assert_eq!(summary.result.as_deref(), Some("I wrote hello.txt."));
    assert_eq!(summary.turns, Some(2));
    assert!(!summary.failed());
}

/// Stands in for Claude Code's native installer (the real one downloads from the
/// internet): records each command it is given and, when `works`, puts a `claude`
/// into `bin`, as the installer puts it into `~/.local/bin`.
#[derive(Debug)]
struct Installer {
    calls: std::sync::Mutex<Vec<Vec<String>>>,
    bin: PathBuf,
    works: bool,
}

impl Exec for Installer {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        _session: &'a str,
        _limit: Duration,
    ) -> leased::BoxFuture<'a, Result<Finished, RunError>> {
        let mut call = vec![program.to_string()];
        call.extend(args.iter().cloned());
        self.calls.lock().unwrap().push(call);
        if self.works {
            let claude = self.bin.join("claude");
            std::fs::create_dir_all(&self.bin).unwrap();
            std::fs::write(&claude, "#!/bin/sh\necho installed-claude-ran \"$@\"\n").unwrap();
            Command::new("chmod")
                .arg("+x")
                .arg(&claude)
                .status()
                .unwrap();
        }
        let works = self.works;
        Box::pin(async move {
            Ok(Finished {
                success: works,
                stdout: String::new(),
                stderr: if works {
                    String::new()
                } else {
                    "curl: (6) Could not resolve host: claude.ai".into()
                },
            })
        })
    }
}

/// A Claude task whose CLI is not on the task's PATH: the runner has the installer
/// put it there (pinned version, before the session starts) and the task then runs
/// it; when the install fails the task does not start, saying what to do, and no
/// session is left.
#[tokio::test]
async fn a_missing_claude_cli_is_installed_before_the_task_or_the_task_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("local-bin");
    let tmux = Tmux::new("claude-install");
    let mut config = AgentConfig::default();
    config.claude.cli_version = Some("2.1.337".into());
    let spec = TaskSpec::Claude(ClaudeSpec {
        prompt: "hello".into(),
        model: None,
        permission_mode: None,
        allowed_tools: Vec::new(),
        max_turns: None,
    });
    let path = format!("{}:/usr/bin:/bin", bin.display());

    let failing = Arc::new(Installer {
        calls: Default::default(),
        bin: bin.clone(),
        works: false,
    });
    let r = runner(&tmux, &config, tmp.path())
        .await
        .with_env("PATH", path.clone())
        .with_installer(failing.clone());
    let l = launch(tmp.path(), "ci1", spec.clone());
    let err = r.start(&l).await.unwrap_err().to_string();
    assert!(
        err.contains("Task 'ci1' did not start")
            && err.contains("installing 2.1.337 failed")
            && err.contains("Could not resolve host")
            && err.contains("bake Claude Code into the image"),
        "{err}"
    );
    assert_eq!(failing.calls.lock().unwrap().len(), 1);
    assert!(
        r.live_sessions().await.unwrap().is_empty(),
        "a task whose CLI could not be installed left a session"
    );

    let working = Arc::new(Installer {
        calls: Default::default(),
        bin: bin.clone(),
        works: true,
    });
    let r = runner(&tmux, &config, tmp.path())
        .await
        .with_env("PATH", path.clone())
        .with_installer(working.clone());
    let l = launch(tmp.path(), "ci2", spec.clone());
    r.start(&l).await.unwrap();
    let exit = wait_exit(&r, &l).await;
    assert_eq!(exit, Exit::Code(0), "log: {:?}", log_lines(&l));
    assert!(
        log_lines(&l)
            .iter()
            .any(|x| x.starts_with("installed-claude-ran -p")),
        "the installed CLI did not run: {:?}",
        log_lines(&l)
    );
    let calls = working.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // As the task (here: the test's own user, so no runuser), with the task's PATH.
    assert_eq!(calls[0][..2], ["env", "-i"]);
    assert!(calls[0].contains(&format!("PATH={path}")), "{calls:?}");
    assert_eq!(calls[0][calls[0].len() - 2..], ["bash", "2.1.337"]);

    // Now present: the next Claude task installs nothing.
    let l = launch(tmp.path(), "ci3", spec);
    r.start(&l).await.unwrap();
    assert_eq!(wait_exit(&r, &l).await, Exit::Code(0));
    assert_eq!(working.calls.lock().unwrap().len(), 1);
}

/// A FROM-scratch image holding one static program (tests/fixtures/docker-probe.c),
/// built once per test run with `docker import`; no registry involved.
fn probe_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = "lease-runner-probe:test".to_string();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/docker-probe.c");
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.path().join("probe"))
            .arg(src)
            .status()
            .expect("a C compiler (cc) builds the Docker test image's program");
        assert!(status.success(), "cc -static failed for {src}");
        let script = format!(
            "tar -C {} -c probe | docker import --change 'ENTRYPOINT [\"/probe\"]' - {image}",
            dir.path().display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "Docker is required for this test and could not import the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        image
    })
}

fn container_exists(name: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("name=^{name}$")])
        .output()
        .expect("docker ps");
    assert!(out.status.success());
    !out.stdout.is_empty()
}

fn docker(args: &[&str], env: &[(&str, &str)]) -> TaskSpec {
    TaskSpec::Docker(DockerSpec {
        image: probe_image().into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        gpus: None,
    })
}

#[tokio::test]
async fn a_docker_task_writes_to_out_with_its_env() {
    let tmux = Tmux::new("docker");
    let tmp = tempfile::tempdir().unwrap();
    let id = format!("dk{}", std::process::id());
    let l = launch(
        tmp.path(),
        &id,
        docker(
            &["write", "3"],
            &[("GREETING", "hello from the task's env")],
        ),
    );
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    r.start(&l).await.unwrap();
    assert_eq!(wait_exit(&r, &l).await, Exit::Code(3));
    assert_eq!(
        std::fs::read_to_string(l.workdir.join("hello.txt")).unwrap(),
        "hello from the task's env\n"
    );
    assert_eq!(
        log_lines(&l),
        vec![
            "probe: first line",
            "probe: greeting=hello from the task's env",
            "[lease] task ended: exit status 3",
        ]
    );
    assert!(!container_exists(&format!("lease-{id}")), "--rm removes it");
    r.cleanup(&id, &l.workdir).await.unwrap();
}

#[tokio::test]
async fn a_docker_task_is_interrupted_by_docker_stop() {
    let tmux = Tmux::new("dstop");
    let tmp = tempfile::tempdir().unwrap();
    let id = format!("ds{}", std::process::id());
    let l = launch(tmp.path(), &id, docker(&["wait"], &[]));
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    r.start(&l).await.unwrap();
    wait_log_line(&l, "probe: ready").await;
    assert!(container_exists(&format!("lease-{id}")));

    r.interrupt(&id, &l.workdir, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(r.poll(&id, &l.workdir).await.unwrap(), Some(Exit::Code(0)));
    assert_eq!(
        std::fs::read_to_string(l.workdir.join("checkpoint")).unwrap(),
        "checkpoint after SIGTERM\n"
    );
    assert!(log_lines(&l).contains(&"probe: checkpointed".to_string()));
    assert!(!container_exists(&format!("lease-{id}")));
    r.cleanup(&id, &l.workdir).await.unwrap();
}

#[tokio::test]
async fn ecr_credentials_come_from_get_authorization_token() {
    let moto = Moto::start();
    let ecr = SdkEcr::from_config(&moto.sdk_config().await);
    let creds =
        leased::run::EcrLogin::credentials(&ecr, "123456789012.dkr.ecr.us-east-1.amazonaws.com")
            .await
            .unwrap();
    assert_eq!(creds.username, "AWS");
    // The emulator's password names the caller's account, whose registry this is.
    assert_eq!(creds.password, "123456789012-auth-token");

    // A registry in another region is asked in its region (the emulator answers for
    // any; the call must still succeed through the second client).
    let creds =
        leased::run::EcrLogin::credentials(&ecr, "123456789012.dkr.ecr.eu-central-1.amazonaws.com")
            .await
            .unwrap();
    assert_eq!(creds.username, "AWS");
}

#[tokio::test]
async fn bad_launches_are_refused_by_name_and_start_nothing() {
    let tmux = Tmux::new("bad");
    let tmp = tempfile::tempdir().unwrap();

    // An ECR image whose login fails: the error names the registry, no session.
    let refused = format!("http://127.0.0.1:{}", lease_tests::moto::free_port());
    let r = TmuxRunner::new(
        &AgentConfig::default(),
        REGION.into(),
        Arc::new(ecr_at(&refused).await),
    )
    .with_socket(&tmux.socket)
    .with_task_user(own_user());
    let mut spec = DockerSpec {
        image: "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1".into(),
        args: Vec::new(),
        env: BTreeMap::new(),
        gpus: None,
    };
    let l = launch(tmp.path(), "ecr1", TaskSpec::Docker(spec.clone()));
    let err = r.start(&l).await.unwrap_err();
    assert!(matches!(err, RunError::RegistryLogin { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("123456789012.dkr.ecr.us-east-1.amazonaws.com"),
        "{err}"
    );
    assert!(!tmux.has_session("lease-ecr1"));

    // A variable name Docker cannot take.
    spec.image = "anything:1".into();
    spec.env.insert("A=B".into(), "x".into());
    let l = launch(tmp.path(), "env1", TaskSpec::Docker(spec));
    let err = r.start(&l).await.unwrap_err().to_string();
    assert!(err.contains("'env1'") && err.contains("A=B"), "{err}");

    // A working directory that does not exist.
    let mut l = launch(tmp.path(), "wd1", shell("true"));
    l.workdir = tmp.path().join("missing");
    let err = r.start(&l).await.unwrap_err().to_string();
    assert!(err.contains("'wd1'") && err.contains("missing"), "{err}");
    assert!(!tmux.has_session("lease-wd1"));

    // A runner environment variable `export` cannot take.
    let odd = runner(&tmux, &AgentConfig::default(), tmp.path())
        .await
        .with_env("NOT-A-NAME", "x");
    let l = launch(tmp.path(), "ev1", shell("true"));
    let err = odd.start(&l).await.unwrap_err().to_string();
    assert!(err.contains("'ev1'") && err.contains("NOT-A-NAME"), "{err}");
    assert!(!tmux.has_session("lease-ev1"));

    // The same task twice: the second start refuses and the first runs on.
    let l = launch(
        tmp.path(),
        "tw1",
        shell("while [ ! -e release ]; do sleep 0.05; done"),
    );
    r.start(&l).await.unwrap();
    let err = r.start(&l).await.unwrap_err().to_string();
    assert!(
        err.contains("lease-tw1") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(r.poll("tw1", &l.workdir).await.unwrap(), None);
    std::fs::write(l.workdir.join("release"), "").unwrap();
    assert_eq!(wait_exit(&r, &l).await, Exit::Code(0));
}

/// Figures, not assertions on speed: how long a trivial task takes from `start` to a
/// reported end through tmux, and how many mock tasks one runner gets through a
/// second (start, poll, log read, parse, batch), the ceiling mock mode puts under the
/// agent's ≥ 20 tasks/s target. Run with `--nocapture` to see them.
#[tokio::test]
async fn figures_for_task_turnaround() {
    use leased::run::{MockRunner, OUTPUT_BATCH_BYTES, batch_lines};
    use std::time::Instant;

    let tmux = Tmux::new("figures");
    let tmp = tempfile::tempdir().unwrap();
    let r = runner(&tmux, &AgentConfig::default(), tmp.path()).await;
    const TMUX_TASKS: usize = 10;
    let started = Instant::now();
    for i in 0..TMUX_TASKS {
        let l = launch(tmp.path(), &format!("fig{i}"), shell("echo hi"));
        r.start(&l).await.unwrap();
        assert_eq!(wait_exit(&r, &l).await, Exit::Code(0));
        r.cleanup(&l.task.id, &l.workdir).await.unwrap();
    }
    let tmux_each = started.elapsed() / TMUX_TASKS as u32;

    const MOCK_TASKS: usize = 500;
    let mock = MockRunner::new(Duration::ZERO);
    let started = Instant::now();
    let mut lines_out = 0;
    for i in 0..MOCK_TASKS {
        let l = launch(tmp.path(), &format!("mock{i}"), shell("make"));
        mock.start(&l).await.unwrap();
        assert_eq!(wait_exit(&mock, &l).await, Exit::Code(0));
        let mut parser = OutputParser::for_spec(&l.task.spec);
        let lines: Vec<String> = log_lines(&l).iter().flat_map(|x| parser.push(x)).collect();
        lines_out += batch_lines(lines, OUTPUT_BATCH_BYTES).concat().len();
        mock.cleanup(&l.task.id, &l.workdir).await.unwrap();
    }
    let mock_rate = MOCK_TASKS as f64 / started.elapsed().as_secs_f64();
    assert_eq!(lines_out, MOCK_TASKS * 6);
    eprintln!(
        "runner figures: tmux shell task start→end {:.1} ms each ({TMUX_TASKS} tasks); \
         mock runner {mock_rate:.0} tasks/s ({MOCK_TASKS} tasks, zero duration)",
        tmux_each.as_secs_f64() * 1e3
    );
}
