//! Result bundles and task logs to S3 (layout: `lease_common::layout`).
//!
//! A bundle is every regular file under the task's bundle directory, uploaded with
//! bounded concurrency (parts of big files and whole small files share one limit of
//! requests in flight, which also bounds memory), then a `manifest.json` listing each
//! file's path, size and sha256 as uploaded — written last, so a manifest's presence
//! means its bundle is complete. Symlinks are never followed.
//!
//! Checksums: every PutObject and UploadPart carries `x-amz-checksum-sha256` of its
//! body, and multipart uploads are created with the SHA256 algorithm, so S3 verifies
//! each part and the composite on completion. The manifest's sha256 is of the whole
//! file, computed over the bytes sent. Bodies are sent with an unsigned payload: the
//! checksum header is signed and binds the body already, and signing the payload would
//! hash every byte once more.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use futures::StreamExt;
use lease_common::layout::{
    attempt_bundle_prefix, attempt_manifest_key, bundle_prefix, manifest_key,
};
use lease_common::manifest::Manifest;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

mod file;
mod log;
mod retry;
mod scan;
mod source;

pub use retry::ATTEMPTS as REQUEST_ATTEMPTS;
pub use source::MIN_PART_SIZE;

/// Requests in flight at once by default, across every file of a bundle. With 16 MiB
/// parts that is at most 128 MiB of file data in memory.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The manifest's `v`.
const MANIFEST_VERSION: u32 = 1;

/// What the manifest records about the bundle besides its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMeta {
    pub task_id: String,
    pub instance_id: String,
    pub attempt: u32,
}

/// Where a bundle goes: the prefix its files are written under and its manifest's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDest {
    pub files_prefix: String,
    pub manifest_key: String,
}

impl BundleDest {
    /// A finished task: `jobs/<i>/<t>/bundle/…` and `jobs/<i>/<t>/manifest.json`.
    pub fn finished(instance_id: &str, task_id: &str) -> Self {
        Self {
            files_prefix: bundle_prefix(instance_id, task_id),
            manifest_key: manifest_key(instance_id, task_id),
        }
    }

    /// An interrupted attempt's partial bundle: `jobs/<i>/<t>/attempt-<n>/bundle/…`
    /// and `jobs/<i>/<t>/attempt-<n>/manifest.json`, apart from the finished bundle so
    /// a later attempt never overwrites it.
    pub fn interrupted(instance_id: &str, task_id: &str, attempt: u32) -> Self {
        Self {
            files_prefix: attempt_bundle_prefix(instance_id, task_id, attempt),
            manifest_key: attempt_manifest_key(instance_id, task_id, attempt),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleUpload {
    /// Files uploaded (and listed in the manifest).
    pub files: usize,
    /// Their bytes, as uploaded.
    pub bytes: u64,
    /// Relative paths not uploaded, each with why (a symlink, an unsafe name, …).
    pub skipped: Vec<String>,
    /// `s3://<bucket>/<files_prefix>`.
    pub uri: String,
    pub manifest_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("Bundle directory '{dir}' cannot be read: {source}")]
    BundleDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("Bundle prefix '{0}' must be non-empty and end with '/'")]
    Prefix(String),
    #[error("Failed to read '{path}' for s3://{bucket}/{key}: {source}")]
    Read {
        path: String,
        bucket: String,
        key: String,
        source: std::io::Error,
    },
    #[error("Failed to upload '{path}' to s3://{bucket}/{key}: {reason}")]
    Upload {
        path: String,
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("Upload of '{path}' to s3://{bucket}/{key} stopped: another file of the bundle failed")]
    Cancelled {
        path: String,
        bucket: String,
        key: String,
    },
    #[error("Failed to upload the manifest of {files} files to s3://{bucket}/{key}: {reason}")]
    Manifest {
        files: usize,
        bucket: String,
        key: String,
        reason: String,
    },
}

/// Uploads bundles and logs to one bucket.
#[derive(Debug, Clone)]
pub struct Uploader {
    s3: aws_sdk_s3::Client,
    bucket: String,
    concurrency: usize,
}

impl Uploader {
    /// `s3` should come from `lease_common::aws::s3_client` (path-style against a
    /// custom endpoint).
    pub fn new(s3: aws_sdk_s3::Client, bucket: String) -> Self {
        Self {
            s3,
            bucket,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Requests in flight at once (at least 1); memory is at most this many parts.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Uploads `dir`'s files under `files_prefix`, then the manifest at `manifest_key`.
    /// On any file's failure the others stop at their next part, every multipart
    /// upload is aborted, no manifest is written, and the first failure is returned.
    /// Skipped entries (symlinks, unsafe names, special files, files that vanished)
    /// are listed in [`BundleUpload::skipped`] and are absent from the manifest.
    pub async fn upload_bundle(
        &self,
        dir: &Path,
        files_prefix: &str,
        manifest_key: &str,
        meta: ManifestMeta,
    ) -> Result<BundleUpload, UploadError> {
        if files_prefix.is_empty() || !files_prefix.ends_with('/') {
            return Err(UploadError::Prefix(files_prefix.to_string()));
        }
        let dir_err = |source| UploadError::BundleDir {
            dir: dir.to_path_buf(),
            source,
        };
        let owned = dir.to_path_buf();
        let (root, found) = tokio::task::spawn_blocking(move || {
            let root = owned.canonicalize()?;
            let found = scan::scan(&root)?;
            Ok::<_, std::io::Error>((root, found))
        })
        .await
        .map_err(|e| dir_err(std::io::Error::other(e)))?
        .map_err(dir_err)?;

        let shared = file::Shared {
            s3: self.s3.clone(),
            bucket: self.bucket.clone(),
            requests: Arc::new(Semaphore::new(self.concurrency)),
            failed: Arc::new(AtomicBool::new(false)),
            root,
        };
        let outcomes: Vec<Result<file::FileOutcome, UploadError>> =
            futures::stream::iter(found.files)
                .map(|f| {
                    let key = format!("{files_prefix}{}", f.rel);
                    let shared = &shared;
                    async move {
                        let r = shared.upload_file(f, key).await;
                        if r.is_err() {
                            shared.failed.store(true, Ordering::Relaxed);
                        }
                        r
                    }
                })
                // Files in progress: each still waits for a request permit, so this
                // only lets small files fill the slots a big file is not using.
                .buffer_unordered(self.concurrency * 2)
                .collect()
                .await;

        let mut entries = Vec::new();
        let mut skipped = found.skipped;
        let mut first_error = None;
        for o in outcomes {
            match o {
                Ok(file::FileOutcome::Uploaded(e)) => entries.push(e),
                Ok(file::FileOutcome::Skipped(s)) => skipped.push(s),
                // A real failure outranks the cancellations it caused.
                Err(e @ UploadError::Cancelled { .. }) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    if matches!(first_error, None | Some(UploadError::Cancelled { .. })) {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        skipped.sort();
        let manifest = Manifest {
            v: MANIFEST_VERSION,
            task_id: meta.task_id,
            instance_id: meta.instance_id,
            attempt: meta.attempt,
            files: entries,
        };
        let files = manifest.files.len();
        let bytes = manifest.files.iter().map(|f| f.size).sum();
        let manifest_err = |reason: String| UploadError::Manifest {
            files,
            bucket: self.bucket.clone(),
            key: manifest_key.to_string(),
            reason,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| manifest_err(e.to_string()))?;
        self.put_small(manifest_key, body, "application/json")
            .await
            .map_err(|f| manifest_err(f.to_string()))?;
        Ok(BundleUpload {
            files,
            bytes,
            skipped,
            uri: format!("s3://{}/{files_prefix}", self.bucket),
            manifest_key: manifest_key.to_string(),
        })
    }

    /// Uploads the log file as one whole object at `key` (logs are small enough to
    /// hold; what is read is what is sent, however far the task has written).
    pub async fn upload_log(&self, path: &Path, key: &str) -> Result<(), UploadError> {
        let owned = path.to_path_buf();
        let read_err = |source| UploadError::Read {
            path: path.display().to_string(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source,
        };
        let body = tokio::task::spawn_blocking(move || std::fs::read(owned))
            .await
            .map_err(|e| read_err(std::io::Error::other(e)))?
            .map_err(read_err)?;
        self.put_small(key, body, "text/plain; charset=utf-8")
            .await
            .map_err(|f| UploadError::Upload {
                path: path.display().to_string(),
                bucket: self.bucket.clone(),
                key: key.to_string(),
                reason: f.to_string(),
            })
    }

    /// Uploads `path` to `key` every `every` while it changes, and once more when
    /// `done` resolves, so `lease logs -f` follows the task as it runs. A failed
    /// periodic upload is logged and tried again at the next tick; only the final
    /// upload's failure is returned.
    pub async fn follow_log(
        &self,
        path: &Path,
        key: &str,
        every: Duration,
        done: impl Future<Output = ()>,
    ) -> Result<(), UploadError> {
        log::follow(self, path, key, every, done).await
    }

    /// One PutObject of an in-memory body, with its sha256 checksum, retried.
    async fn put_small(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), retry::Failure> {
        let checksum = aws_smithy_types::base64::encode(Sha256::digest(&body));
        let body = bytes::Bytes::from(body);
        retry::with_retries(|| async {
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(body.clone()))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| retry::Failure::from_sdk(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_layout() {
        let d = BundleDest::finished("i-1", "t1");
        assert_eq!(d.files_prefix, "jobs/i-1/t1/bundle/");
        assert_eq!(d.manifest_key, "jobs/i-1/t1/manifest.json");
        let d = BundleDest::interrupted("i-1", "t1", 2);
        assert_eq!(d.files_prefix, "jobs/i-1/t1/attempt-2/bundle/");
        assert_eq!(d.manifest_key, "jobs/i-1/t1/attempt-2/manifest.json");
    }
}
