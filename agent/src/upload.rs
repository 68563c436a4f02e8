//! Result bundles and task logs to S3 (layout: `lease_common::layout`).
//!
//! API skeleton: the worker codes against these types while the implementation lands.

use std::path::Path;

use lease_common::layout::{attempt_prefix, bundle_prefix, manifest_key};

/// Requests in flight at once by default, across every file of a bundle.
pub const DEFAULT_CONCURRENCY: usize = 8;

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

    /// An interrupted attempt's partial bundle: `jobs/<i>/<t>/attempt-<n>/bundle/…` and
    /// `jobs/<i>/<t>/attempt-<n>/manifest.json`.
    pub fn interrupted(instance_id: &str, task_id: &str, attempt: u32) -> Self {
        let base = attempt_prefix(instance_id, task_id, attempt);
        Self {
            files_prefix: format!("{base}bundle/"),
            manifest_key: format!("{base}manifest.json"),
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
    #[error("The bundle uploader is not implemented yet")]
    NotImplemented,
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

    /// Requests in flight at once (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Uploads `dir`'s files under `files_prefix`, then the manifest at `manifest_key`.
    pub async fn upload_bundle(
        &self,
        dir: &Path,
        files_prefix: &str,
        manifest_key: &str,
        meta: ManifestMeta,
    ) -> Result<BundleUpload, UploadError> {
        let _ = (dir, files_prefix, manifest_key, meta, &self.s3);
        Err(UploadError::NotImplemented)
    }

    /// Uploads the log file as one whole object at `key`.
    pub async fn upload_log(&self, path: &Path, key: &str) -> Result<(), UploadError> {
        let _ = (path, key);
        Err(UploadError::NotImplemented)
    }
}
