//! The programs a task kind needs, found or installed before it starts: the Claude
//! Code CLI, which plain images lack, through Anthropic's native installer run as the
//! task user (it installs into `~/.local/bin`, first on every task's PATH).

use std::fmt::Debug;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::RunError;
use super::process::{self, Finished};
use super::user::TaskUser;
use crate::BoxFuture;

/// How long the installer may take: it downloads a binary of a few hundred MB.
pub const INSTALL_LIMIT: Duration = Duration::from_secs(300);

/// Anthropic's documented native installer; its one argument is the version
/// (`stable`, `latest` or `X.Y.Z`), none meaning its default channel. The version is
/// passed as `$1`, never spliced into the script.
const INSTALLER: &str = r#"curl -fsSL https://claude.ai/install.sh | bash -s -- "$@""#;

/// Runs a helper program: the seam that lets the install decision be tested
/// without running (or downloading) anything.
pub trait Exec: Send + Sync + Debug {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        session: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<Finished, RunError>>;
}

/// [`Exec`] on real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Processes;

impl Exec for Processes {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        session: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<Finished, RunError>> {
        Box::pin(process::run(program, args, session, None, limit))
    }
}

/// `program` as the task's `PATH` finds it: a path is taken as it is, a name is
/// looked up in each directory of `path`.
pub fn find_program(program: &str, path: &str) -> Option<PathBuf> {
    let runnable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| runnable(p))
}

/// Makes sure the Claude Code CLI `program` is on the task's `env` PATH: when it is
/// not, runs the native installer (with `version`, when pinned) as `user`, with the
/// task's environment, bounded by `limit`. The reason it cannot, for the task's
/// failure, says what to do instead.
pub async fn ensure_claude(
    exec: &dyn Exec,
    user: &TaskUser,
    env: &[(String, String)],
    program: &str,
    version: Option<&str>,
    session: &str,
    limit: Duration,
) -> Result<(), String> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if find_program(program, path).is_some() {
        return Ok(());
    }
    let advice = "bake Claude Code into the image, or set task-env PATH to where it is";
    if program.contains('/') {
        return Err(format!(
            "the Claude Code CLI '{program}' does not exist: {advice}"
        ));
    }
    // `env -i` as for the task itself: the installer sees the task's HOME and PATH.
    let mut args: Vec<String> = vec!["-i".into()];
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    args.extend(["bash".into(), "-c".into(), INSTALLER.into(), "bash".into()]);
    args.extend(version.map(str::to_string));
    let (prog, argv) = user.command("env", &args);
    let wanted = version.unwrap_or("its default version");
    let failed = |why: String| {
        format!(
            "the Claude Code CLI '{program}' is not on the task user's PATH and installing \
             {wanted} failed ({why}): {advice}"
        )
    };
    let out = exec
        .run(&prog, &argv, session, limit)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !out.success {
        let said = if out.stderr.is_empty() {
            "it exited with an error and said nothing".to_string()
        } else {
            out.stderr
        };
        return Err(failed(said));
    }
    if find_program(program, path).is_none() {
        return Err(failed(format!(
            "the installer succeeded but '{program}' is still not on PATH {path}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records each command; "installs" `claude` into `bin` when `works`.
    #[derive(Debug)]
    struct Recorder {
        calls: Mutex<Vec<(String, Vec<String>)>>,
        bin: PathBuf,
        works: bool,
    }

    impl Exec for Recorder {
        fn run<'a>(
            &'a self,
            program: &'a str,
            args: &'a [String],
            _session: &'a str,
            _limit: Duration,
        ) -> BoxFuture<'a, Result<Finished, RunError>> {
            self.calls
                .lock()
                .unwrap()
                .push((program.to_string(), args.to_vec()));
            if self.works {
                stand_in(&self.bin);
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

    fn stand_in(bin: &Path) {
        std::fs::create_dir_all(bin).unwrap();
        let p = bin.join("claude");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn setup(works: bool) -> (tempfile::TempDir, TaskUser, Recorder, Vec<(String, String)>) {
        let home = tempfile::tempdir().unwrap();
        let user = TaskUser {
            name: "lease".into(),
            uid: 999,
            gid: 995,
            home: home.path().to_path_buf(),
            switch: true,
        };
        let rec = Recorder {
            calls: Mutex::new(Vec::new()),
            bin: home.path().join(".local/bin"),
            works,
        };
        // The system part of PATH is this test's empty directory, not the machine's.
        let env = vec![(
            "PATH".to_string(),
            format!(
                "{}/.local/bin:{}",
                home.path().display(),
                home.path().join("sys").display()
            ),
        )];
        (home, user, rec, env)
    }

    #[tokio::test]
    async fn a_cli_on_the_path_is_not_installed_again() {
        let (home, user, rec, env) = setup(true);
        stand_in(&home.path().join("sys"));
        let got = ensure_claude(
            &rec,
            &user,
            &env,
            "claude",
            Some("2.1.337"),
            "s",
            INSTALL_LIMIT,
        )
        .await;
        assert_eq!(got, Ok(()));
        assert!(rec.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_cli_is_installed_at_the_pinned_version_as_the_task_user() {
        let (home, user, rec, env) = setup(true);
        let got = ensure_claude(
            &rec,
            &user,
            &env,
            "claude",
            Some("2.1.337"),
            "s",
            INSTALL_LIMIT,
        )
        .await;
        assert_eq!(got, Ok(()));
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let (program, args) = &calls[0];
        assert_eq!(program, "runuser");
        assert_eq!(&args[..4], ["-u", "lease", "--", "env"]);
        assert_eq!(args[4], "-i");
        assert_eq!(args[5], format!("PATH={}", env[0].1));
        assert_eq!(&args[6..8], ["bash", "-c"]);
        assert!(
            args[8].contains("https://claude.ai/install.sh | bash -s"),
            "{args:?}"
        );
        assert_eq!(&args[9..], ["bash", "2.1.337"]);
        assert!(home.path().join(".local/bin/claude").is_file());
        // Unpinned: the installer's own default.
        let (_home, user, rec, env) = setup(true);
        ensure_claude(&rec, &user, &env, "claude", None, "s", INSTALL_LIMIT)
            .await
            .unwrap();
        assert_eq!(rec.calls.lock().unwrap()[0].1.last().unwrap(), "bash");
    }

    #[tokio::test]
    async fn an_install_that_fails_fails_the_task_saying_what_to_do() {
        let (_home, user, rec, env) = setup(false);
        let err = ensure_claude(
            &rec,
            &user,
            &env,
            "claude",
            Some("2.1.337"),
            "s",
            INSTALL_LIMIT,
        )
        .await
        .unwrap_err();
        assert!(err.contains("installing 2.1.337 failed"), "{err}");
        assert!(err.contains("Could not resolve host"), "{err}");
        assert!(err.contains("bake Claude Code into the image"), "{err}");
        assert!(err.contains("task-env PATH"), "{err}");
        // An explicit path that is not there is not installed over.
        let (_home, user, rec, env) = setup(true);
        let err = ensure_claude(
            &rec,
            &user,
            &env,
            "/opt/none/claude",
            None,
            "s",
            INSTALL_LIMIT,
        )
        .await
        .unwrap_err();
        assert!(err.contains("'/opt/none/claude' does not exist"), "{err}");
        assert!(rec.calls.lock().unwrap().is_empty());
    }
}
