//! `lease download` and `lease logs` against moto's S3, with bundles laid out as
//! ARCHITECTURE.md says the agent uploads them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lease_common::layout::{
    attempt_bundle_prefix, attempt_manifest_key, bundle_prefix, log_key, manifest_key,
};
use lease_common::manifest::{Manifest, ManifestEntry, sha256_bytes};
use lease_common::records;
use lease_tests::plane::create_table;
use lease_tests::{Cmd, Moto, wait_until};

const BUCKET: &str = "ctl";
const INSTANCE: &str = "i-0123456789abcdef0";

async fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    let c = lease_common::aws::s3_client(&moto.sdk_config().await);
    c.create_bucket().bucket(BUCKET).send().await.unwrap();
    c
}

async fn put(s3: &aws_sdk_s3::Client, key: &str, body: &[u8]) {
    s3.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap();
}

/// Uploads a bundle and its manifest the way the agent does.
async fn upload_bundle(s3: &aws_sdk_s3::Client, task: &str, files: &[(&str, Vec<u8>)]) {
    let (files_prefix, manifest) = (bundle_prefix(INSTANCE, task), manifest_key(INSTANCE, task));
    upload_to(s3, (&files_prefix, &manifest), task, files).await;
}

/// Uploads files under `files_prefix`, then their manifest at `manifest`.
async fn upload_to(
    s3: &aws_sdk_s3::Client,
    (files_prefix, manifest): (&str, &str),
    task: &str,
    files: &[(&str, Vec<u8>)],
) {
    let mut entries = Vec::new();
    for (path, body) in files {
        put(s3, &format!("{files_prefix}{path}"), body).await;
        entries.push(ManifestEntry {
            path: path.to_string(),
            size: body.len() as u64,
            sha256: sha256_bytes(body),
        });
    }
    let m = Manifest {
        v: 1,
        task_id: task.into(),
        instance_id: INSTANCE.into(),
        attempt: 1,
        files: entries,
    };
    put(s3, manifest, serde_json::to_string(&m).unwrap().as_bytes()).await;
}

fn lease(moto: &Moto) -> Cmd {
    Cmd::new("lease", &moto.env()).env("LEASE_BUCKET", BUCKET)
}

#[tokio::test]
async fn download_verifies_skips_and_never_leaves_a_bad_file() {
    let moto = Moto::start();
    let s3 = s3(&moto).await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    upload_bundle(
        &s3,
        "t1",
        &[
            ("result.txt", b"accuracy 0.93\n".to_vec()),
            ("ckpt/model.bin", big.clone()),
        ],
    )
    .await;
    let to = tempfile::tempdir().unwrap();
    let dir = to.path().to_str().unwrap();
    lease(&moto)
        .args(["download", "t1", "--to", dir])
        .ok()
        .await;
    assert_eq!(
        std::fs::read(to.path().join("t1/result.txt")).unwrap(),
        b"accuracy 0.93\n"
    );
    assert_eq!(
        std::fs::read(to.path().join("t1/ckpt/model.bin")).unwrap(),
        big
    );

    // The object changes in S3 but the manifest does not: the local copy already matches
    // the manifest, so it is skipped (not fetched again).
    put(
        &s3,
        &format!("{}result.txt", bundle_prefix(INSTANCE, "t1")),
        b"tampered",
    )
    .await;
    let out = lease(&moto)
        .args(["download", "t1", "--to", dir, "-o", "json"])
        .ok()
        .await;
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["skipped"], 2, "{summary}");
    assert_eq!(
        std::fs::read(to.path().join("t1/result.txt")).unwrap(),
        b"accuracy 0.93\n"
    );

    // A missing local file is fetched again, and a mismatch with the manifest is an
    // error that leaves no file under the final name.
    std::fs::remove_file(to.path().join("t1/result.txt")).unwrap();
    let (code, err) = lease(&moto)
        .args(["download", "t1", "--to", dir])
        .fails()
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sha256"), "{err}");
    assert!(!to.path().join("t1/result.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(to.path().join("t1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|n| !n.contains("partial")),
        "{leftovers:?}"
    );
}

#[tokio::test]
async fn download_by_instance_takes_every_bundle() {
    let moto = Moto::start();
    let s3 = s3(&moto).await;
    upload_bundle(&s3, "a", &[("x", b"1".to_vec())]).await;
    upload_bundle(&s3, "b", &[("y", b"2".to_vec())]).await;
    let to = tempfile::tempdir().unwrap();
    lease(&moto)
        .args(["download", INSTANCE, "--to", to.path().to_str().unwrap()])
        .ok()
        .await;
    assert_eq!(std::fs::read(to.path().join("a/x")).unwrap(), b"1");
    assert_eq!(std::fs::read(to.path().join("b/y")).unwrap(), b"2");
    let (code, err) = lease(&moto).args(["download", "nope"]).fails().await;
    assert_eq!(code, 3, "{err}");
}

/// A task interrupted on one instance and finished on another: its bundle by default,
/// the attempts' partial bundles beside it with `--partial`; an attempt whose upload
/// never finished is skipped, not an error.
#[tokio::test]
async fn download_fetches_interrupted_attempts_only_when_asked() {
    const OTHER: &str = "i-0bbbbbbbbbbbbbbbb";
    let moto = Moto::start();
    let s3 = s3(&moto).await;
    let (files, manifest) = (
        attempt_bundle_prefix(INSTANCE, "t5", 1),
        attempt_manifest_key(INSTANCE, "t5", 1),
    );
    upload_to(
        &s3,
        (&files, &manifest),
        "t5",
        &[("ckpt", b"half".to_vec())],
    )
    .await;
    let cut_short = attempt_bundle_prefix(INSTANCE, "t5", 2);
    put(&s3, &format!("{cut_short}ckpt"), b"cut short").await;
    let (files, manifest) = (bundle_prefix(OTHER, "t5"), manifest_key(OTHER, "t5"));
    upload_to(
        &s3,
        (&files, &manifest),
        "t5",
        &[("model", b"full".to_vec())],
    )
    .await;

    let to = tempfile::tempdir().unwrap();
    let dir = to.path().to_str().unwrap();
    lease(&moto)
        .args(["download", "t5", "--to", dir])
        .ok()
        .await;
    assert_eq!(std::fs::read(to.path().join("t5/model")).unwrap(), b"full");
    assert!(!to.path().join("t5.attempt-1").exists());

    let out = lease(&moto)
        .args(["download", "t5", "--to", dir, "--partial", "-o", "json"])
        .ok()
        .await;
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["tasks"], serde_json::json!(["t5", "t5.attempt-1"]));
    assert_eq!(
        std::fs::read(to.path().join("t5.attempt-1/ckpt")).unwrap(),
        b"half"
    );
    assert!(!to.path().join("t5.attempt-2").exists());

    // The instance that was interrupted holds only partial bundles.
    let (code, err) = lease(&moto)
        .args(["download", INSTANCE, "--to", dir])
        .fails()
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--partial"), "{err}");
    let elsewhere = tempfile::tempdir().unwrap();
    lease(&moto)
        .args(["download", INSTANCE, "--partial", "--to"])
        .arg(elsewhere.path())
        .ok()
        .await;
    assert_eq!(
        std::fs::read(elsewhere.path().join("t5.attempt-1/ckpt")).unwrap(),
        b"half"
    );
}

#[tokio::test]
async fn logs_prints_and_follows_what_the_agent_uploads() {
    let moto = Moto::start();
    let s3 = s3(&moto).await;
    let (code, _) = lease(&moto).args(["logs", "t9"]).fails().await;
    assert_eq!(code, 3);
    put(&s3, &log_key("t9"), b"line one\n").await;
    assert_eq!(lease(&moto).args(["logs", "t9"]).ok().await, "line one\n");

    // The task's record says `running`: following goes on while the log grows.
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    create_table(&ddb, "tasks", records::TASK_ID).await;
    let set_state = |state: &'static str| {
        ddb.put_item()
            .table_name("tasks")
            .item(records::TASK_ID, AttributeValue::S("t9".into()))
            .item(records::task::STATE, AttributeValue::S(state.into()))
            .send()
    };
    set_state("running").await.unwrap();
    let mut child = lease(&moto)
        .args(["logs", "t9", "-f", "--tasks-table", "tasks"])
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv().await.unwrap(), "line one");
    // The agent re-uploads the whole, longer log; only the new part is printed.
    put(&s3, &log_key("t9"), b"line one\nline two\n").await;
    let next = wait_until(
        "the appended line",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let got = rx.try_recv().ok();
            async move { got }
        },
    )
    .await;
    assert_eq!(next, "line two");
    // The agent uploads the last of the log, then records the end: `-f` prints the
    // rest and exits by itself.
    put(&s3, &log_key("t9"), b"line one\nline two\nline three\n").await;
    set_state("complete").await.unwrap();
    let status = wait_until(
        "lease logs -f to exit once the task completed",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        },
    )
    .await;
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(line) = rx.recv().await {
        rest.push(line);
    }
    assert_eq!(rest, ["line three"]);
}

/// A requeued attempt rewrites the log from its start (here shorter than what was
/// printed): `-f` says so and follows the new attempt from its first line.
#[tokio::test]
async fn logs_follow_a_new_attempt_from_its_beginning() {
    let moto = Moto::start();
    let s3 = s3(&moto).await;
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    create_table(&ddb, "tasks", records::TASK_ID).await;
    let set = |state: &'static str, attempt: u32| {
        ddb.put_item()
            .table_name("tasks")
            .item(records::TASK_ID, AttributeValue::S("t7".into()))
            .item(records::task::STATE, AttributeValue::S(state.into()))
            .item(
                records::task::ATTEMPT,
                AttributeValue::N(attempt.to_string()),
            )
            .send()
    };
    set("running", 1).await.unwrap();
    put(
        &s3,
        &log_key("t7"),
        b"one: loading data\none: epoch 1 of 9\n",
    )
    .await;
    let mut child = lease(&moto)
        .args(["logs", "t7", "-f", "--tasks-table", "tasks"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let got = rx.try_recv().ok();
        async move { got }
    };
    for want in ["one: loading data", "one: epoch 1 of 9"] {
        let got = wait_until(
            want,
            Duration::from_secs(20),
            Duration::from_millis(50),
            || next(&mut rx),
        )
        .await;
        assert_eq!(got, want);
    }
    // Spot took the first node; attempt 2 starts the log again on another.
    set("running", 2).await.unwrap();
    put(&s3, &log_key("t7"), b"two: resuming\n").await;
    let got = wait_until(
        "attempt 2's first line",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || next(&mut rx),
    )
    .await;
    assert_eq!(got, "two: resuming");
    put(&s3, &log_key("t7"), b"two: resuming\ntwo: epoch 2 of 9\n").await;
    set("complete", 2).await.unwrap();
    let status = wait_until(
        "lease logs -f to exit once the task completed",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        },
    )
    .await;
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(line) = rx.recv().await {
        rest.push(line);
    }
    assert_eq!(rest, ["two: epoch 2 of 9"]);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("starts again (attempt 2)"), "stderr: {err}");
}
