//! `lease download TASK|INSTANCE [--to DIR] [--partial]`: bundles from S3, verified
//! against their manifests, in parallel, skipping files already present with the same
//! sha256. A file appears under its name only once complete and verified. A finished
//! task's bundle goes to `DIR/<task>/`; with `--partial`, what each interrupted attempt
//! left goes to `DIR/<task>.attempt-<n>/` beside it.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use lease_common::layout::{
    attempt_bundle_prefix, attempt_manifest_key, attempt_of_folder, bundle_prefix, manifest_key,
};
use lease_common::manifest::{Manifest, ManifestEntry, sha256_file};
use serde::Serialize;

use crate::aws::s3::Bucket;
use crate::cli::{DownloadArgs, OutputFormat};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::resolve::is_instance_id;

/// Files fetched at once: enough to fill a link with small files, few enough not to
/// exhaust file descriptors or S3's per-prefix request rate.
const PARALLEL: usize = 16;

#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Each bundle's directory under `to`: `<task>` or `<task>.attempt-<n>`.
    tasks: Vec<String>,
    downloaded: usize,
    skipped: usize,
    bytes: u64,
    to: PathBuf,
}

/// One bundle in the bucket: a finished task's, or an interrupted attempt's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    files_prefix: String,
    manifest_key: String,
    /// Its directory under `--to`.
    dir: String,
    partial: bool,
}

/// The last part of an S3 "folder" (`jobs/i-1/t1/` → `t1`).
fn tail(prefix: &str) -> &str {
    prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// The bundles under `jobs/<instance>/<task>/`, as the agent lays them out: `bundle/`
/// (finished) and `attempt-<n>/` (interrupted).
async fn task_bundles<B: Bucket>(
    b: &B,
    bucket: &str,
    instance: &str,
    task: &str,
) -> Result<Vec<Found>> {
    let folders = b
        .folders(bucket, &format!("jobs/{instance}/{task}/"))
        .await?;
    let mut found = Vec::new();
    for f in &folders {
        let name = tail(f);
        if name == "bundle" {
            found.push(Found {
                files_prefix: bundle_prefix(instance, task),
                manifest_key: manifest_key(instance, task),
                dir: task.to_string(),
                partial: false,
            });
        } else if let Some(n) = attempt_of_folder(name) {
            found.push(Found {
                files_prefix: attempt_bundle_prefix(instance, task, n),
                manifest_key: attempt_manifest_key(instance, task, n),
                dir: format!("{task}.attempt-{n}"),
                partial: true,
            });
        }
    }
    Ok(found)
}

/// Every bundle the target names: a task's under any instance, or an instance's.
async fn bundles<B: Bucket>(
    b: &B,
    bucket: &str,
    target: &str,
    partial: bool,
) -> Result<Vec<Found>> {
    let pairs: Vec<(String, String)> = if is_instance_id(target) {
        let tasks = b.folders(bucket, &format!("jobs/{target}/")).await?;
        tasks
            .iter()
            .map(|t| (target.to_string(), tail(t).to_string()))
            .collect()
    } else {
        // Without a task record the instance is unknown (and an interrupted task ran on
        // several): look under every instance, concurrently.
        let instances = b.folders(bucket, "jobs/").await?;
        instances
            .iter()
            .map(|i| (tail(i).to_string(), target.to_string()))
            .collect()
    };
    let listed = futures::future::join_all(
        pairs
            .iter()
            .map(|(instance, task)| task_bundles(b, bucket, instance, task)),
    )
    .await;
    let mut all = Vec::new();
    for l in listed {
        all.extend(l?);
    }
    let partials = all.iter().filter(|f| f.partial).count();
    all.retain(|f| partial || !f.partial);
    if all.is_empty() {
        let whose = if is_instance_id(target) {
            format!("instance '{target}'")
        } else {
            format!("task '{target}'")
        };
        let hint = if partials > 0 {
            format!(
                "; {partials} interrupted attempt(s) left a partial bundle: add --partial to fetch them"
            )
        } else if is_instance_id(target) {
            String::new()
        } else {
            " (still running, failed before upload, or no such task)".to_string()
        };
        return Err(Error::NotFound(format!(
            "No bundle of {whose} in s3://{bucket}/jobs/{hint}"
        )));
    }
    all.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(all)
}

/// sha256 of a file, off the async threads: hashing a large checkpoint takes seconds.
async fn hash(path: &Path) -> Result<String> {
    let owned = path.to_path_buf();
    let what = || format!("Failed to hash '{}'", path.display());
    tokio::task::spawn_blocking(move || sha256_file(&owned))
        .await
        .map_err(|e| Error::io(what(), std::io::Error::other(e)))?
        .map_err(|e| Error::io(what(), e))
}

/// Fetches one file unless an identical copy is there; returns bytes fetched (0 = skipped).
async fn fetch<B: Bucket>(
    b: &B,
    bucket: &str,
    key: &str,
    entry: &ManifestEntry,
    dest: &Path,
) -> Result<u64> {
    if dest.is_file() {
        let have = hash(dest).await?;
        if have == entry.sha256 {
            return Ok(0);
        }
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::io(format!("Failed to create '{}'", parent.display()), e))?;
    }
    let partial = dest.with_extension(format!(
        "{}lease-partial",
        dest.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let written = b.download(bucket, key, &partial).await?;
    let got = hash(&partial).await?;
    if got != entry.sha256 || written != entry.size {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(Error::Aws {
            what: format!("Download of s3://{bucket}/{key}"),
            message: format!(
                "got {written} bytes with sha256 {got}; the manifest says {} bytes with {}",
                entry.size, entry.sha256
            ),
        });
    }
    tokio::fs::rename(&partial, dest).await.map_err(|e| {
        Error::io(
            format!("Failed to move the download into '{}'", dest.display()),
            e,
        )
    })?;
    Ok(written)
}

pub async fn run<B: Bucket>(b: &B, ctx: &Ctx, args: &DownloadArgs) -> Result<()> {
    let bucket = args
        .bucket
        .as_deref()
        .ok_or_else(crate::commands::no_bucket)?;
    let found = bundles(b, bucket, &args.target, args.partial).await?;
    let mut summary = Summary {
        to: args.to.clone(),
        ..Default::default()
    };
    for bundle in &found {
        let key = &bundle.manifest_key;
        let Some(text) = b.get(bucket, key).await? else {
            // An interrupted attempt's upload can stop short for good (the machine went
            // away); that must not keep the rest from being fetched.
            if bundle.partial {
                eprintln!(
                    "Skipped {}: no manifest at s3://{bucket}/{key} (its upload did not finish)",
                    bundle.dir
                );
                continue;
            }
            return Err(Error::NotFound(format!(
                "No manifest at s3://{bucket}/{key}: the bundle is incomplete (its upload may still be under way)"
            )));
        };
        let manifest =
            Manifest::parse(&String::from_utf8_lossy(&text)).map_err(|e| Error::Aws {
                what: format!("Manifest s3://{bucket}/{key}"),
                message: e.to_string(),
            })?;
        let dir = args.to.join(&bundle.dir);
        let prefix = &bundle.files_prefix;
        let results: Vec<Result<u64>> = futures::stream::iter(manifest.files.iter())
            .map(|entry| {
                let dest = dir.join(&entry.path);
                let key = format!("{prefix}{}", entry.path);
                async move { fetch(b, bucket, &key, entry, &dest).await }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for r in results {
            match r? {
                0 => summary.skipped += 1,
                n => {
                    summary.downloaded += 1;
                    summary.bytes += n;
                }
            }
        }
        summary.tasks.push(bundle.dir.clone());
    }
    eprintln!(
        "Downloaded {} files ({} bytes), skipped {} already present, into {}.",
        summary.downloaded,
        summary.bytes,
        summary.skipped,
        args.to.display()
    );
    match ctx.output {
        OutputFormat::Json => output::print_json(&summary),
        OutputFormat::Table => output::print(
            &summary
                .tasks
                .iter()
                .map(|t| format!("{}\n", args.to.join(t).display()))
                .collect::<String>(),
        ),
    }
}
