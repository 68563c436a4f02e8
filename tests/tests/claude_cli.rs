//! The real Claude Code CLI against the fake Messages API, run directly as the task
//! user: the parser's fixtures (agent/src/run/testdata/claude/) are these sessions.
//!
//! Each test runs one scenario and checks the session still has the shape of its
//! fixture, so a new CLI that changes its output fails here first. To refresh the
//! fixtures after a deliberate CLI upgrade:
//!
//!   LEASE_RECORD_CLAUDE=1 cargo test --workspace --test claude_cli

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lease_tests::anthropic::{FakeAnthropic, GOOD_KEY, Reply, Route};
use lease_tests::claude::{self, PINNED_VERSION};
use serde_json::json;

/// Where a fixture's working directory appears, in place of the test's own.
const FIXTURE_WORKDIR: &str = "/var/lib/leased/tasks/t1/work";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/src/run/testdata/claude")
        .join(format!("{name}.jsonl"))
}

/// A working directory the task user owns, inside a temporary one it can reach.
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    lease_tests::agent::let_task_user_in(tmp.path());
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let status = std::process::Command::new("chown")
        .arg(lease_common::session::DEFAULT_TASK_USER)
        .arg(&work)
        .status()
        .unwrap();
    assert!(status.success());
    (tmp, work)
}

/// Runs the scenario; records it (LEASE_RECORD_CLAUDE=1) or checks it against its
/// fixture's shape. Returns the session's lines.
fn record_or_check(
    name: &str,
    session: &claude::Session,
    workdir: &Path,
    fake: &FakeAnthropic,
) -> String {
    let port = fake.endpoint.rsplit(':').next().unwrap().to_string();
    // Claude Code also names the directory in its project folder, '/' and '.' as '-'.
    let encoded = |p: &str| p.replace(['/', '.'], "-");
    let here = workdir.display().to_string();
    let normal = session
        .stdout
        .replace(&here, FIXTURE_WORKDIR)
        .replace(&encoded(&here), &encoded(FIXTURE_WORKDIR))
        .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:8080");
    let path = fixture(name);
    if std::env::var_os("LEASE_RECORD_CLAUDE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &normal).unwrap();
        eprintln!("recorded {}", path.display());
    } else {
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        assert_eq!(
            claude::shape(&normal),
            claude::shape(&stored),
            "the CLI's session no longer has the shape of {}; re-record it \
             (LEASE_RECORD_CLAUDE=1) and check the parser\n{normal}",
            path.display()
        );
    }
    normal
}

fn result_of(stream: &str) -> serde_json::Value {
    let last = stream.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["type"], "result", "{stream}");
    v
}

#[test]
fn the_pinned_cli_is_installed() {
    let cli = claude::require_cli();
    let out = std::process::Command::new(cli)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(PINNED_VERSION), "{version}");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_then_answer() {
    let (_tmp, work) = workdir();
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Write",
            json!({"file_path": work.join("hello.txt"), "content": "hello from claude\n"}),
        ),
        Reply::text("I wrote hello.txt."),
    ])
    .await;
    let s = tokio::task::block_in_place(|| {
        claude::run_as_task_user(
            &fake,
            GOOD_KEY,
            &work,
            "Write hello.txt",
            &["--permission-mode", "acceptEdits"],
        )
    });
    assert_eq!(s.code, Some(0), "{}\n{}", s.stdout, s.stderr);
    assert_eq!(
        std::fs::read_to_string(work.join("hello.txt")).unwrap(),
        "hello from claude\n"
    );
    let stream = record_or_check("write", &s, &work, &fake);
    let r = result_of(&stream);
    assert_eq!(r["subtype"], "success");
    assert_eq!(r["result"], "I wrote hello.txt.");
    // The CLI sent our key to our endpoint, streaming, with the tools offered.
    let sent = fake.requests();
    assert!(
        sent.iter().filter(|r| r.conversation).count() >= 2,
        "{sent:?}"
    );
    assert!(sent.iter().all(|r| r.api_key.as_deref() == Some(GOOD_KEY)));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_turns() {
    let (_tmp, work) = workdir();
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Bash",
            json!({"command": "echo ran > ran.txt", "description": "write"}),
        ),
        Reply::text("unreachable"),
    ])
    .await;
    let s = tokio::task::block_in_place(|| {
        claude::run_as_task_user(&fake, GOOD_KEY, &work, "Run it", &["--max-turns", "1"])
    });
    assert_eq!(s.code, Some(1), "{}\n{}", s.stdout, s.stderr);
    let r = result_of(&record_or_check("max-turns", &s, &work, &fake));
    assert_eq!(r["subtype"], "error_max_turns");
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .contains("maximum number of turns")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_key() {
    let (_tmp, work) = workdir();
    let fake = FakeAnthropic::start(Vec::new()).await;
    let s = tokio::task::block_in_place(|| {
        claude::run_as_task_user(&fake, "sk-ant-wrong", &work, "Hello", &[])
    });
    assert_eq!(s.code, Some(1), "{}\n{}", s.stdout, s.stderr);
    let stream = record_or_check("invalid-key", &s, &work, &fake);
    let r = result_of(&stream);
    assert_eq!(r["is_error"], true);
    assert_eq!(r["api_error_status"], 401);
    assert!(stream.contains("\"subtype\":\"api_retry\""));
    assert!(fake.requests().iter().all(|r| r.status == 401));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error() {
    let (_tmp, work) = workdir();
    let fake = FakeAnthropic::with_routes(vec![Route::always("", Reply::error(500))]).await;
    let s = tokio::task::block_in_place(|| {
        claude::run_as_task_user(&fake, GOOD_KEY, &work, "Hello", &[])
    });
    assert_eq!(s.code, Some(1), "{}\n{}", s.stdout, s.stderr);
    let r = result_of(&record_or_check("server-error", &s, &work, &fake));
    assert_eq!(r["api_error_status"], 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_denied() {
    let (_tmp, work) = workdir();
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "Bash",
            json!({"command": "echo ran > ran.txt", "description": "write"}),
        ),
        Reply::text("I could not run it."),
    ])
    .await;
    let s = tokio::task::block_in_place(|| {
        claude::run_as_task_user(
            &fake,
            GOOD_KEY,
            &work,
            "Run it",
            &["--allowedTools", "Read"],
        )
    });
    assert_eq!(s.code, Some(0), "{}\n{}", s.stdout, s.stderr);
    assert!(!work.join("ran.txt").exists());
    let r = result_of(&record_or_check("denied", &s, &work, &fake));
    assert_eq!(r["permission_denials"][0]["tool_name"], "Bash");
}
