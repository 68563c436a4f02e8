//! The agent's half of the bundle-upload benchmark (tests/bench/upload.py runs
//! `aws s3 cp --recursive` beside it against the same emulator). A program rather than
//! a test, so it is built in the profile the agent ships in (`dist`) with the rest of
//! the benchmark's binaries:
//!
//! `bench-upload DIR BUCKET PREFIX OUT.json` (with AWS_ENDPOINT_URL set to the emulator)
//!
//! uploads DIR with the agent's uploader as a task's bundle under PREFIX, checks the
//! upload by listing it back (every file and the manifest), and writes the figures to
//! OUT.json. Its time covers `upload_bundle` alone.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Instant;

use lease_common::aws::{AwsOptions, load_sdk_config};
use leased::upload::{DEFAULT_CONCURRENCY, MIN_PART_SIZE, ManifestMeta, Uploader};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, bucket, prefix, out] = args.as_slice() else {
        eprintln!(
            "usage: bench-upload DIR BUCKET PREFIX OUT.json (AWS_ENDPOINT_URL: the emulator)"
        );
        return ExitCode::from(2);
    };
    match run(dir, bucket, prefix, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-upload: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(dir: &str, bucket: &str, prefix: &str, out: &str) -> Result<(), String> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        return Err("AWS_ENDPOINT_URL must point at the emulator".into());
    }
    let sdk = load_sdk_config(&AwsOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let s3 = lease_common::aws::s3_client(&sdk);
    let up = Uploader::new(s3.clone(), bucket.to_string()).with_concurrency(DEFAULT_CONCURRENCY);
    let meta = ManifestMeta {
        task_id: "bench".into(),
        instance_id: "i-0bench".into(),
        attempt: 1,
    };
    let started = Instant::now();
    let report = up
        .upload_bundle(
            std::path::Path::new(dir),
            &format!("{prefix}bundle/"),
            &format!("{prefix}manifest.json"),
            meta,
        )
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let listed = lease_tests::s3::keys(&s3, bucket, prefix).await?.len();
    if listed != report.files + 1 {
        return Err(format!(
            "{listed} objects under s3://{bucket}/{prefix}, not {} files and the manifest",
            report.files
        ));
    }
    let figures = serde_json::json!({
        "files": report.files,
        "bytes": report.bytes,
        "seconds": secs,
        "mb_per_s": report.bytes as f64 / 1e6 / secs,
        "concurrency": DEFAULT_CONCURRENCY,
        "part_size": MIN_PART_SIZE,
        // The bound on parts held at once shows here.
        "peak_rss_kib": lease_tests::procfs::status_kb("self", "VmHWM:"),
    });
    std::fs::write(out, figures.to_string()).map_err(|e| format!("writing '{out}': {e}"))
}
