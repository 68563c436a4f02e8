//! The agent's uploader against moto's S3: bundles (multipart, checksums, symlinks,
//! the interrupted-attempt layout), failures that must leave no parts behind, and the
//! task log followed while it grows. Every assertion reads S3 back through the
//! emulator (ListObjectsV2, GetObject, ListMultipartUploads) or through `lease`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lease_common::layout::{bundle_prefix, log_key, manifest_key};
use lease_common::manifest::{Manifest, sha256_bytes};
use lease_tests::{Cmd, Moto, wait_until};
use leased::upload::{BundleDest, ManifestMeta, REQUEST_ATTEMPTS, UploadError, Uploader};

const BUCKET: &str = "ctl";
const INSTANCE: &str = "i-0123456789abcdef0";
const MIB: usize = 1 << 20;

async fn s3_with_bucket(moto: &Moto) -> aws_sdk_s3::Client {
    let c = lease_common::aws::s3_client(&moto.sdk_config().await);
    c.create_bucket().bucket(BUCKET).send().await.unwrap();
    c
}

fn meta(task: &str, attempt: u32) -> ManifestMeta {
    ManifestMeta {
        task_id: task.into(),
        instance_id: INSTANCE.into(),
        attempt,
    }
}

/// Bytes that repeat with no period a part boundary could hide (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` (relative path → bytes) under `dir`.
fn write_tree(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, body) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

/// Every key under `prefix`, through ListObjectsV2 (paginated).
async fn list(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    lease_tests::s3::keys(s3, bucket, prefix).await.unwrap()
}

async fn get(s3: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

async fn multipart_uploads_in_progress(s3: &aws_sdk_s3::Client) -> Vec<String> {
    let out = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    out.uploads()
        .iter()
        .map(|u| u.key().unwrap_or_default().to_string())
        .collect()
}

/// The tree of the round-trip test: nested directories, an empty file, a file over
/// two parts long, and symlinks that lead out of the bundle.
fn sample_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert("result.txt".to_string(), b"accuracy 0.93\n".to_vec());
    files.insert("empty.log".to_string(), Vec::new());
    files.insert("eval/deep/nested/scores.json".to_string(), noise(70_000, 3));
    files.insert("ckpt/model.bin".to_string(), noise(40 * MIB + 123, 7));
    write_tree(dir, &files);
    let outside = dir.parent().unwrap().join("outside-secret");
    std::fs::write(&outside, b"not for the bundle").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("leak")).unwrap();
    std::os::unix::fs::symlink(dir.parent().unwrap(), dir.join("eval/up")).unwrap();
    files
}

#[tokio::test]
async fn bundle_round_trips_file_by_file_and_lease_download_verifies_it() {
    let moto = Moto::start();
    let s3 = s3_with_bucket(&moto).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    let files = sample_tree(&dir);

    let dest = BundleDest::finished(INSTANCE, "t-up");
    let up = Uploader::new(s3.clone(), BUCKET.into());
    let report = up
        .upload_bundle(
            &dir,
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-up", 1),
        )
        .await
        .unwrap();
    assert_eq!(report.files, files.len());
    assert_eq!(
        report.bytes,
        files.values().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(
        report.skipped,
        [
            "eval/up (symlink, not followed)",
            "leak (symlink, not followed)"
        ]
    );
    assert_eq!(
        report.uri,
        format!("s3://{BUCKET}/{}", bundle_prefix(INSTANCE, "t-up"))
    );

    // Exactly the bundle's files and the manifest, nothing from behind the symlinks.
    let mut expected: Vec<String> = files
        .keys()
        .map(|rel| format!("{}{rel}", bundle_prefix(INSTANCE, "t-up")))
        .collect();
    expected.push(manifest_key(INSTANCE, "t-up"));
    expected.sort();
    assert_eq!(
        list(&s3, BUCKET, &format!("jobs/{INSTANCE}/")).await,
        expected
    );

    let manifest = Manifest::parse(
        std::str::from_utf8(&get(&s3, &manifest_key(INSTANCE, "t-up")).await).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (manifest.task_id.as_str(), manifest.instance_id.as_str()),
        ("t-up", INSTANCE)
    );
    assert_eq!(manifest.attempt, 1);
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(listed, files.keys().map(String::as_str).collect::<Vec<_>>());
    for entry in &manifest.files {
        let body = get(
            &s3,
            &format!("{}{}", bundle_prefix(INSTANCE, "t-up"), entry.path),
        )
        .await;
        let local = &files[&entry.path];
        assert!(body == *local, "{} differs from the local file", entry.path);
        assert_eq!(entry.size, local.len() as u64, "{}", entry.path);
        assert_eq!(entry.sha256, sha256_bytes(local), "{}", entry.path);
    }

    // The 40 MiB file went up in parts (an ETag of a multipart object ends "-<parts>"),
    // with S3's SHA256 checksum of each part.
    let head = s3
        .head_object()
        .bucket(BUCKET)
        .key(format!("{}ckpt/model.bin", bundle_prefix(INSTANCE, "t-up")))
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap().trim_matches('"').to_string();
    assert!(etag.ends_with("-3"), "ETag {etag} is not a 3-part upload's");
    // Created with the SHA256 algorithm: S3 keeps a SHA256 checksum for the object (it
    // would have none, or a CRC32, otherwise). moto does not check the values sent.
    assert!(head.checksum_sha256().is_some(), "{head:?}");
    assert!(multipart_uploads_in_progress(&s3).await.is_empty());

    // What a person does next: `lease download` fetches and verifies every file.
    let to = tempfile::tempdir().unwrap();
    Cmd::new("lease", &moto.env())
        .args(["download", "t-up", "--bucket", BUCKET, "--to"])
        .arg(to.path())
        .ok()
        .await;
    for (rel, body) in &files {
        let got = std::fs::read(to.path().join("t-up").join(rel)).unwrap();
        assert!(got == *body, "downloaded {rel} differs");
    }
    assert!(!to.path().join("t-up/leak").exists());
}

#[tokio::test]
async fn an_interrupted_attempt_goes_under_attempt_n_and_leaves_the_bundle_alone() {
    let moto = Moto::start();
    let s3 = s3_with_bucket(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("partial/step-100.ckpt".to_string(), noise(5000, 11));
    files.insert("log.txt".to_string(), b"interrupted at step 100\n".to_vec());
    write_tree(dir.path(), &files);

    let dest = BundleDest::interrupted(INSTANCE, "t-int", 2);
    let report = Uploader::new(s3.clone(), BUCKET.into())
        .upload_bundle(
            dir.path(),
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-int", 2),
        )
        .await
        .unwrap();
    assert_eq!(
        report.manifest_key,
        "jobs/i-0123456789abcdef0/t-int/attempt-2/manifest.json"
    );

    let base = format!("jobs/{INSTANCE}/t-int/");
    assert_eq!(
        list(&s3, BUCKET, &base).await,
        [
            format!("{base}attempt-2/bundle/log.txt"),
            format!("{base}attempt-2/bundle/partial/step-100.ckpt"),
            format!("{base}attempt-2/manifest.json"),
        ]
    );
    let manifest = Manifest::parse(
        std::str::from_utf8(&get(&s3, &format!("{base}attempt-2/manifest.json")).await).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.attempt, 2);
    for entry in &manifest.files {
        let body = get(&s3, &format!("{base}attempt-2/bundle/{}", entry.path)).await;
        assert_eq!(entry.sha256, sha256_bytes(&body));
        assert!(body == files[&entry.path]);
    }
}

#[tokio::test]
async fn an_empty_directory_gets_a_manifest_with_no_files() {
    let moto = Moto::start();
    let s3 = s3_with_bucket(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = BundleDest::finished(INSTANCE, "t-empty");
    let report = Uploader::new(s3.clone(), BUCKET.into())
        .upload_bundle(
            dir.path(),
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-empty", 1),
        )
        .await
        .unwrap();
    assert_eq!((report.files, report.bytes), (0, 0));
    assert_eq!(
        list(&s3, BUCKET, &format!("jobs/{INSTANCE}/t-empty/")).await,
        [manifest_key(INSTANCE, "t-empty")]
    );
    let manifest = Manifest::parse(
        std::str::from_utf8(&get(&s3, &manifest_key(INSTANCE, "t-empty")).await).unwrap(),
    )
    .unwrap();
    assert!(manifest.files.is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_by_name() {
    let moto = Moto::start();
    let s3 = s3_with_bucket(&moto).await;
    let up = Uploader::new(s3.clone(), BUCKET.into());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-bundle-here");
    let err = up
        .upload_bundle(
            &missing,
            "jobs/i/t/bundle/",
            "jobs/i/t/manifest.json",
            meta("t", 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UploadError::BundleDir { .. }), "{err}");
    assert!(err.to_string().contains("no-bundle-here"), "{err}");

    let err = up
        .upload_bundle(
            dir.path(),
            "jobs/i/t/bundle",
            "jobs/i/t/manifest.json",
            meta("t", 1),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'jobs/i/t/bundle'"), "{err}");
    assert!(
        list(&s3, BUCKET, "").await.is_empty(),
        "nothing was written"
    );
}

#[tokio::test]
async fn a_missing_bucket_is_named_and_no_manifest_claims_a_bundle() {
    let moto = Moto::start();
    // The emulator's only bucket is another one: the upload must not land anywhere.
    let s3 = s3_with_bucket(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("small.txt".to_string(), b"x".to_vec());
    files.insert("big.bin".to_string(), noise(20 * MIB, 5));
    write_tree(dir.path(), &files);
    let dest = BundleDest::finished(INSTANCE, "t-nb");
    let err = Uploader::new(s3.clone(), "no-such-bucket".into())
        .upload_bundle(
            dir.path(),
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-nb", 1),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("s3://no-such-bucket/jobs/") && text.contains("NoSuchBucket"),
        "{text}"
    );
    assert!(list(&s3, BUCKET, "").await.is_empty());
    assert!(multipart_uploads_in_progress(&s3).await.is_empty());
}

/// What the proxy does to UploadPart requests for one part number.
#[derive(Clone, Copy)]
enum Fault {
    /// Answers the first this many with a 500 (InternalError), then forwards.
    Fail(usize),
    /// Never answers: an upload stuck in flight.
    Hang,
}

/// An HTTP proxy in front of moto that applies a [`Fault`] to UploadPart requests for
/// part `fault_part`, forwards everything else, and records every request line.
struct FaultProxy {
    endpoint: String,
    seen: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultProxy {
    async fn start(upstream: &str, fault_part: u32, fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0usize));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.to_string();
        let (seen2, failed2) = (seen.clone(), failed.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, failed, client, upstream) = (
                    seen2.clone(),
                    failed2.clone(),
                    client.clone(),
                    upstream.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, failed, client, upstream) = (
                            seen.clone(),
                            failed.clone(),
                            client.clone(),
                            upstream.clone(),
                        );
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let pq = parts.uri.path_and_query().unwrap().to_string();
                            seen.lock().unwrap().push(format!("{} {pq}", parts.method));
                            let is_target = pq.contains(&format!("partNumber={fault_part}&"))
                                || pq.ends_with(&format!("partNumber={fault_part}"));
                            if is_target {
                                let fail_times = match fault {
                                    Fault::Hang => {
                                        std::future::pending::<()>().await;
                                        0
                                    }
                                    Fault::Fail(n) => n,
                                };
                                let mut n = failed.lock().unwrap();
                                if *n < fail_times {
                                    *n += 1;
                                    return Ok::<_, Infallible>(
                                        Response::builder()
                                            .status(500)
                                            .body(Full::new(Bytes::from_static(
                                                b"<Error><Code>InternalError</Code>\
                                                  <Message>injected by the test</Message></Error>",
                                            )))
                                            .unwrap(),
                                    );
                                }
                            }
                            let mut fwd = Request::builder()
                                .method(parts.method)
                                .uri(format!("{upstream}{pq}"));
                            for (k, v) in &parts.headers {
                                fwd = fwd.header(k, v);
                            }
                            let resp = client
                                .request(fwd.body(Full::new(body)).unwrap())
                                .await
                                .unwrap();
                            let (rparts, rbody) = resp.into_parts();
                            let rbody = rbody.collect().await.unwrap().to_bytes();
                            Ok(Response::from_parts(rparts, Full::new(rbody)))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            seen,
            server,
        }
    }

    /// An S3 client through this proxy, without the SDK's own retries, so every
    /// request the uploader makes is one request here. Only the uploader (the agent's
    /// code) uses it, so it names itself as the agent on [`INSTANCE`] for the call log
    /// (the recorded-calls check then holds the aborts to the agent's policy), and
    /// signs as the agent does on an instance: with an STS session of the agents' role.
    async fn s3(&self, moto: &Moto) -> aws_sdk_s3::Client {
        let role =
            lease_tests::imds::assume_role(moto, lease_tests::imds::AGENT_ROLE, INSTANCE).await;
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config().await)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                role.access_key_id,
                role.secret_access_key,
                Some(role.session_token),
                None,
                "the agents' role",
            ))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .app_name(
                aws_types::app_name::AppName::new(format!("leased.{INSTANCE}"))
                    .expect("a valid app name"),
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|l| pred(l)).count()
    }
}

fn is_part(line: &str, n: u32) -> bool {
    line.starts_with("PUT ")
        && (line.contains(&format!("partNumber={n}&"))
            || line.ends_with(&format!("partNumber={n}")))
}

#[tokio::test]
async fn a_part_that_keeps_failing_aborts_the_upload_and_leaves_no_parts() {
    let moto = Moto::start();
    let direct = s3_with_bucket(&moto).await;
    let proxy = FaultProxy::start(&moto.endpoint, 2, Fault::Fail(usize::MAX)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("out/model.bin".to_string(), noise(40 * MIB, 9));
    files.insert("notes.txt".to_string(), b"ok".to_vec());
    write_tree(dir.path(), &files);
    let dest = BundleDest::finished(INSTANCE, "t-fail");
    let err = Uploader::new(proxy.s3(&moto).await, BUCKET.into())
        .upload_bundle(
            dir.path(),
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-fail", 1),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "'out/model.bin' to s3://{BUCKET}/{}out/model.bin",
            bundle_prefix(INSTANCE, "t-fail")
        )) && text.contains("part 2"),
        "{text}"
    );
    // Part 2 was tried the full number of times, then the upload was aborted.
    assert_eq!(proxy.count(|l| is_part(l, 2)), REQUEST_ATTEMPTS as usize);
    assert_eq!(
        proxy.count(|l| l.starts_with("POST ") && l.contains("uploads")),
        1
    );
    assert_eq!(
        proxy.count(|l| l.starts_with("DELETE ") && l.contains("uploadId=")),
        1
    );
    assert!(multipart_uploads_in_progress(&direct).await.is_empty());
    // No manifest, and no object under the failed file's key.
    let left = list(&direct, BUCKET, "").await;
    assert!(
        !left
            .iter()
            .any(|k| k.ends_with("manifest.json") || k.ends_with("model.bin")),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_part_that_fails_once_is_retried_and_the_bundle_completes() {
    let moto = Moto::start();
    let direct = s3_with_bucket(&moto).await;
    let proxy = FaultProxy::start(&moto.endpoint, 2, Fault::Fail(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let body = noise(36 * MIB, 13);
    std::fs::write(dir.path().join("model.bin"), &body).unwrap();
    let dest = BundleDest::finished(INSTANCE, "t-retry");
    let report = Uploader::new(proxy.s3(&moto).await, BUCKET.into())
        .upload_bundle(
            dir.path(),
            &dest.files_prefix,
            &dest.manifest_key,
            meta("t-retry", 1),
        )
        .await
        .unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(proxy.count(|l| is_part(l, 2)), 2);
    let got = get(&direct, &format!("{}model.bin", dest.files_prefix)).await;
    assert!(got == body, "the object differs from the file");
    assert!(multipart_uploads_in_progress(&direct).await.is_empty());
}

#[tokio::test]
async fn an_upload_dropped_part_way_aborts_its_multipart_upload() {
    let moto = Moto::start();
    let direct = s3_with_bucket(&moto).await;
    let proxy = FaultProxy::start(&moto.endpoint, 2, Fault::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.bin"), noise(40 * MIB, 17)).unwrap();
    let dest = BundleDest::finished(INSTANCE, "t-drop");
    let up = Uploader::new(proxy.s3(&moto).await, BUCKET.into());
    let upload = up.upload_bundle(
        dir.path(),
        &dest.files_prefix,
        &dest.manifest_key,
        meta("t-drop", 1),
    );
    // The caller gives up (a deadline) while part 2 hangs: the upload is in progress.
    let in_progress = async {
        wait_until(
            "part 2 in flight",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async { (proxy.count(|l| is_part(l, 2)) > 0).then_some(()) },
        )
        .await;
        wait_until(
            "the upload listed as in progress",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async { (!multipart_uploads_in_progress(&direct).await.is_empty()).then_some(()) },
        )
        .await;
    };
    tokio::select! {
        r = upload => panic!("the upload finished although part 2 hangs: {r:?}"),
        () = in_progress => {}
    }
    wait_until(
        "the dropped upload aborted",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            multipart_uploads_in_progress(&direct)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy.count(|l| l.starts_with("DELETE ") && l.contains("uploadId=")),
        1
    );
    assert!(list(&direct, BUCKET, "").await.is_empty());
}

#[tokio::test]
async fn the_log_is_followed_while_it_grows_and_uploaded_whole_at_the_end() {
    let moto = Moto::start();
    let s3 = s3_with_bucket(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.log");
    let key = log_key("t-log");
    let up = Uploader::new(s3.clone(), BUCKET.into());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let follow = {
        let (up, path, key) = (up.clone(), path.clone(), key.clone());
        tokio::spawn(async move {
            up.follow_log(&path, &key, Duration::from_millis(100), async {
                let _ = done_rx.await;
            })
            .await
        })
    };
    let read = |expect: Vec<u8>| {
        let s3 = s3.clone();
        let key = key.clone();
        async move {
            let out = s3.get_object().bucket(BUCKET).key(&key).send().await.ok()?;
            let got = out.body.collect().await.ok()?.into_bytes().to_vec();
            (got == expect).then_some(())
        }
    };
    std::fs::write(&path, b"step 1\n").unwrap();
    wait_until(
        "the first line in S3",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || read(b"step 1\n".to_vec()),
    )
    .await;
    std::fs::write(&path, b"step 1\nstep 2\n").unwrap();
    wait_until(
        "the second line in S3",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || read(b"step 1\nstep 2\n".to_vec()),
    )
    .await;
    // Written just before the end: only the final upload can carry it.
    std::fs::write(&path, b"step 1\nstep 2\ndone\n").unwrap();
    done_tx.send(()).unwrap();
    follow.await.unwrap().unwrap();
    assert_eq!(get(&s3, &key).await, b"step 1\nstep 2\ndone\n");

    // And `lease logs` reads what was uploaded.
    let out = Cmd::new("lease", &moto.env())
        .args(["logs", "t-log", "--bucket", BUCKET])
        .ok()
        .await;
    assert_eq!(out, "step 1\nstep 2\ndone\n");

    let err = up
        .upload_log(&dir.path().join("missing.log"), &log_key("t-none"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.log"), "{err}");
}
