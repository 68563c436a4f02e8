//! `lease download TASK|INSTANCE [--to DIR]`: bundles from S3, verified against their
//! manifests, in parallel, skipping files already present with the same sha256. A file
//! appears under its name only once complete and verified.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use lease_common::layout::{bundle_prefix, manifest_key};
use lease_common::manifest::{Manifest, ManifestEntry, sha256_file};
use serde::Serialize;

use crate::bucket::Bucket;
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
    tasks: Vec<String>,
    downloaded: usize,
    skipped: usize,
    bytes: u64,
    to: PathBuf,
}

/// (instance id, task id) of every bundle the target names.
async fn bundles<B: Bucket>(b: &B, bucket: &str, target: &str) -> Result<Vec<(String, String)>> {
    let tail = |prefix: &str| {
        prefix
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    if is_instance_id(target) {
        let tasks = b.folders(bucket, &format!("jobs/{target}/")).await?;
        let found: Vec<(String, String)> = tasks
            .iter()
            .map(|t| (target.to_string(), tail(t)))
            .collect();
        if found.is_empty() {
            return Err(Error::NotFound(format!(
                "No bundles of instance '{target}' in s3://{bucket}/jobs/"
            )));
        }
        return Ok(found);
    }
    // Without a task record the instance is unknown: look for the task's manifest under
    // every instance, concurrently.
    let instances = b.folders(bucket, "jobs/").await?;
    let checks = futures::future::join_all(instances.iter().map(|i| {
        let instance = tail(i);
        async move {
            let has = b.get(bucket, &manifest_key(&instance, target)).await?;
            Ok::<_, Error>(has.map(|_| instance))
        }
    }))
    .await;
    let mut found = Vec::new();
    for c in checks {
        if let Some(i) = c? {
            found.push((i, target.to_string()));
        }
    }
    if found.is_empty() {
        return Err(Error::NotFound(format!(
            "No bundle of task '{target}' in s3://{bucket}/jobs/ (still running, failed before upload, or no such task)"
        )));
    }
    Ok(found)
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
    let found = bundles(b, bucket, &args.target).await?;
    let mut summary = Summary {
        to: args.to.clone(),
        ..Default::default()
    };
    for (instance, task) in &found {
        let key = manifest_key(instance, task);
        let text = b.get(bucket, &key).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "No manifest at s3://{bucket}/{key}: the bundle is incomplete"
            ))
        })?;
        let manifest =
            Manifest::parse(&String::from_utf8_lossy(&text)).map_err(|e| Error::Aws {
                what: format!("Manifest s3://{bucket}/{key}"),
                message: e.to_string(),
            })?;
        let dir = args.to.join(task);
        let prefix = bundle_prefix(instance, task);
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
        summary.tasks.push(task.clone());
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
