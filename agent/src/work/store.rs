//! The bucket, as the worker uses it: task specs too large for a message (read),
//! bundles and logs (written through [`crate::upload::Uploader`]).

use std::fmt::Debug;
use std::path::Path;

use aws_sdk_s3::error::DisplayErrorContext;

use crate::BoxFuture;
use crate::upload::{BundleDest, BundleUpload, ManifestMeta, Uploader};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Task spec '{uri}' does not exist")]
    Missing { uri: String },
    #[error("'{uri}' is not an s3://bucket/key address")]
    BadUri { uri: String },
    #[error("Failed to read task spec '{uri}': {reason}")]
    Fetch { uri: String, reason: String },
    #[error("Failed to upload {what} of task '{task}': {reason}")]
    Upload {
        what: &'static str,
        task: String,
        reason: String,
    },
}

impl StoreError {
    /// The object is not there (or the address is wrong): asking again will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Missing { .. } | StoreError::BadUri { .. })
    }
}

pub trait ResultStore: Send + Sync + Debug {
    fn fetch_task<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<String, StoreError>>;
    fn upload_bundle<'a>(
        &'a self,
        dir: &'a Path,
        dest: BundleDest,
        meta: ManifestMeta,
    ) -> BoxFuture<'a, Result<BundleUpload, StoreError>>;
    fn upload_log<'a>(
        &'a self,
        task: &'a str,
        path: &'a Path,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// `s3://<bucket>/<key>`.
    fn uri(&self, key: &str) -> String;
}

#[derive(Debug, Clone)]
pub struct S3Store {
    s3: aws_sdk_s3::Client,
    uploader: Uploader,
}

impl S3Store {
    pub fn new(s3: aws_sdk_s3::Client, bucket: String) -> Self {
        Self {
            uploader: Uploader::new(s3.clone(), bucket),
            s3,
        }
    }
}

/// `s3://bucket/key` → (bucket, key).
pub fn split_s3_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

impl ResultStore for S3Store {
    fn fetch_task<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let (bucket, key) = split_s3_uri(uri).ok_or_else(|| StoreError::BadUri {
                uri: uri.to_string(),
            })?;
            let out = match self.s3.get_object().bucket(bucket).key(key).send().await {
                Ok(o) => o,
                Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                    return Err(StoreError::Missing {
                        uri: uri.to_string(),
                    });
                }
                Err(e) => {
                    return Err(StoreError::Fetch {
                        uri: uri.to_string(),
                        reason: DisplayErrorContext(&e).to_string(),
                    });
                }
            };
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Fetch {
                    uri: uri.to_string(),
                    reason: e.to_string(),
                })?
                .into_bytes();
            String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::Fetch {
                uri: uri.to_string(),
                reason: format!("not UTF-8: {e}"),
            })
        })
    }

    fn upload_bundle<'a>(
        &'a self,
        dir: &'a Path,
        dest: BundleDest,
        meta: ManifestMeta,
    ) -> BoxFuture<'a, Result<BundleUpload, StoreError>> {
        Box::pin(async move {
            let task = meta.task_id.clone();
            self.uploader
                .upload_bundle(dir, &dest.files_prefix, &dest.manifest_key, meta)
                .await
                .map_err(|e| StoreError::Upload {
                    what: "the bundle",
                    task,
                    reason: e.to_string(),
                })
        })
    }

    fn upload_log<'a>(
        &'a self,
        task: &'a str,
        path: &'a Path,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.uploader
                .upload_log(path, key)
                .await
                .map_err(|e| StoreError::Upload {
                    what: "the log",
                    task: task.to_string(),
                    reason: e.to_string(),
                })
        })
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.uploader.bucket())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_addresses_split_into_bucket_and_key() {
        assert_eq!(
            split_s3_uri("s3://b/tasks/t.json"),
            Some(("b", "tasks/t.json"))
        );
        assert_eq!(split_s3_uri("s3://b/"), None);
        assert_eq!(split_s3_uri("https://b/k"), None);
    }
}
