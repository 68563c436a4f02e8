//! The bucket, as the worker uses it: task specs too large for a message (read),
//! bundles and logs (written through [`crate::upload::Uploader`]).

use std::fmt::Debug;
use std::path::Path;

use lease_common::messages::{MAX_TASK_SPEC, Task};

use crate::BoxFuture;
use crate::upload::{BundleDest, BundleUpload, ManifestMeta, Uploader};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Task spec '{uri}' does not exist")]
    Missing { uri: String },
    #[error("'{uri}' is not an s3://bucket/key address")]
    BadUri { uri: String },
    /// The bucket could not be reached or did not answer in full: a passing fault.
    #[error("Failed to read task spec '{uri}': {reason}")]
    Fetch { uri: String, reason: String },
    /// The object was read, and what it holds is not a task this agent can run.
    #[error("Task spec '{uri}' {reason}")]
    Content { uri: String, reason: String },
    #[error("Failed to upload {what} of task '{task}': {reason}")]
    Upload {
        what: &'static str,
        task: String,
        reason: String,
    },
}

impl StoreError {
    /// Reading again will not help: the object is not there, the address is wrong, or
    /// what it holds is not a task. Only a failure to reach the bucket (`Fetch`) is
    /// worth another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Missing { .. } | StoreError::BadUri { .. } | StoreError::Content { .. } => {
                true
            }
            StoreError::Fetch { .. } | StoreError::Upload { .. } => false,
        }
    }
}

/// The task a fetched spec object holds. Every fault here is in the object's content
/// (too large, not UTF-8, not JSON, not a task, a version this build does not read),
/// so each is a permanent [`StoreError::Content`]: the same bytes will fail the same
/// way on every node and every retry.
pub fn task_from_object(uri: &str, bytes: &[u8]) -> Result<Task, StoreError> {
    let content = |reason: String| StoreError::Content {
        uri: uri.to_string(),
        reason,
    };
    if bytes.len() > MAX_TASK_SPEC {
        return Err(content(too_large(bytes.len() as u64)));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| content(format!("is not UTF-8 text: {e}")))?;
    Task::parse(text).map_err(|e| content(format!("does not hold a task: {e}")))
}

fn too_large(size: u64) -> String {
    format!("is {size} bytes, more than a task may be ({MAX_TASK_SPEC})")
}

pub trait ResultStore: Send + Sync + Debug {
    /// The spec object's bytes, read whole; [`task_from_object`] decodes them.
    fn fetch_task<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StoreError>>;
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
    fn fetch_task<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StoreError>> {
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
                        reason: lease_common::sdk_error::render(&e),
                    });
                }
            };
            // Refused before its body is read, so a huge object costs no memory.
            if let Some(size) = out.content_length
                && u64::try_from(size).is_ok_and(|s| s > MAX_TASK_SPEC as u64)
            {
                return Err(StoreError::Content {
                    uri: uri.to_string(),
                    reason: too_large(u64::try_from(size).unwrap_or(u64::MAX)),
                });
            }
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Fetch {
                    uri: uri.to_string(),
                    reason: e.to_string(),
                })?
                .into_bytes();
            Ok(bytes.to_vec())
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

    const URI: &str = "s3://b/tasks/t-1.json";

    fn content_fault(bytes: &[u8]) -> StoreError {
        let e = task_from_object(URI, bytes).expect_err("not a task");
        assert!(e.is_permanent(), "{e} must be permanent");
        assert!(matches!(e, StoreError::Content { .. }), "{e:?}");
        assert!(e.to_string().contains(URI), "{e} names the object");
        e
    }

    #[test]
    fn a_spec_that_is_not_utf8_is_a_permanent_fault() {
        let e = content_fault(b"{\"v\":1,\"id\":\"t-1\",\xff\xfe}");
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn a_spec_that_is_not_json_is_a_permanent_fault() {
        let e = content_fault(b"kind: shell\ncommand: true\n");
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn a_spec_that_is_not_a_task_is_a_permanent_fault() {
        let e = content_fault(br#"{"v":1,"id":"t-1","kind":"shell"}"#);
        assert!(e.to_string().contains("invalid task"), "{e}");
        let e = content_fault(br#"{"v":1,"id":"t-1","kind":"fortran","source":"x"}"#);
        assert!(e.to_string().contains("unknown kind"), "{e}");
        let e = content_fault(br#"[1,2,3]"#);
        assert!(e.to_string().contains("does not hold a task"), "{e}");
    }

    #[test]
    fn a_spec_of_another_version_is_a_permanent_fault() {
        let e = content_fault(br#"{"v":2,"id":"t-1","kind":"shell","command":"true"}"#);
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = content_fault(br#"{"id":"t-1","kind":"shell","command":"true"}"#);
        assert!(e.to_string().contains("no 'v'"), "{e}");
    }

    #[test]
    fn a_spec_too_large_is_a_permanent_fault() {
        // Valid JSON, a valid task even, only too large.
        let task = format!(
            r#"{{"v":1,"id":"t-1","kind":"shell","command":"{}"}}"#,
            "x".repeat(MAX_TASK_SPEC)
        );
        let e = content_fault(task.as_bytes());
        assert!(e.to_string().contains("more than a task may be"), "{e}");
    }

    #[test]
    fn a_task_is_read_from_a_good_spec() {
        let task = task_from_object(
            URI,
            br#"{"v":1,"id":"t-1","kind":"shell","command":"true"}"#,
        )
        .unwrap();
        assert_eq!(task.id, "t-1");
    }

    #[test]
    fn only_a_failure_to_reach_the_bucket_is_worth_another_try() {
        let transport = StoreError::Fetch {
            uri: URI.into(),
            reason: "dispatch failure: connection refused".into(),
        };
        assert!(!transport.is_permanent());
        assert!(StoreError::Missing { uri: URI.into() }.is_permanent());
        assert!(StoreError::BadUri { uri: "b/k".into() }.is_permanent());
    }
}
