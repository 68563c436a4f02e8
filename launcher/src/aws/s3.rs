//! The control-plane bucket: task logs and result bundles read back, task specs too
//! large for a message written, and the agent package's recorded digest looked up.

use std::path::Path;

use aws_types::SdkConfig;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The admin calls setup and teardown make on the stack's bucket.
mod admin;
pub use admin::{BucketAdmin, BucketConfig, ObjectInfo, VersionPage};

pub trait Bucket: Sync {
    /// The object, or `None` when it does not exist (yet).
    fn get(&self, bucket: &str, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Bytes from `offset` to the end, or `None` when the object does not exist or has
    /// nothing past `offset`.
    fn get_from(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// The "folders" directly under `prefix` (S3 common prefixes with `/`).
    fn folders(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Streams an object into `dest`, returning the bytes written.
    fn download(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Where `lease submit` puts a task too large for a queue message.
pub trait Uploads: Sync {
    /// Writes a JSON object, replacing any object at `key`.
    fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The agent package `lease setup` uploaded, as a launch checks it.
pub trait AgentPackages: Sync {
    /// The sha256 `lease setup` recorded with the agent package at `s3://bucket/key`
    /// (HeadObject: read-only), or `None` when there is no such object.
    fn agent_package_sha256(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}

#[derive(Debug, Clone)]
pub struct AwsBucket {
    s3: aws_sdk_s3::Client,
}

impl AwsBucket {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            s3: lease_common::aws::s3_client(config),
        }
    }
}

fn missing<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(e: &E) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NotFound" | "InvalidRange"))
}

impl Bucket for AwsBucket {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_from(bucket, key, 0).await
    }

    async fn get_from(&self, bucket: &str, key: &str, offset: u64) -> Result<Option<Vec<u8>>> {
        let mut req = self.s3.get_object().bucket(bucket).key(key);
        if offset > 0 {
            req = req.range(format!("bytes={offset}-"));
        }
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(missing) => return Ok(None),
            Err(e) => return Err(Error::aws(format!("Failed to read s3://{bucket}/{key}"), e)),
        };
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| Error::Aws {
                what: format!("Failed to read s3://{bucket}/{key}"),
                message: e.to_string(),
            })?
            .into_bytes();
        Ok((!bytes.is_empty()).then(|| bytes.to_vec()))
    }

    async fn folders(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| Error::aws(format!("Failed to list s3://{bucket}/{prefix}"), e))?;
            out.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_string)),
            );
        }
        Ok(out)
    }

    async fn download(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64> {
        let what = || format!("Failed to download s3://{bucket}/{key}");
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Error::aws(what(), e))?;
        let mut body = out.body;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| Error::io(format!("Failed to create '{}'", dest.display()), e))?;
        let mut written = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Aws {
            what: what(),
            message: e.to_string(),
        })? {
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("Failed to write '{}'", dest.display()), e))?;
            written += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("Failed to write '{}'", dest.display()), e))?;
        Ok(written)
    }
}

impl Uploads for AwsBucket {
    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into())
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to write s3://{bucket}/{key}"), e))?;
        Ok(())
    }
}

impl AgentPackages for AwsBucket {
    async fn agent_package_sha256(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(head) => head
                .metadata()
                .and_then(|m| m.get(lease_common::layout::AGENT_SHA256_METADATA))
                .map(|sha| Some(sha.clone()))
                .ok_or_else(|| Error::Aws {
                    what: format!("Agent package s3://{bucket}/{key}"),
                    message: format!(
                        "it carries no '{}' metadata, so its digest cannot be checked at boot; \
                         upload it with `lease setup`",
                        lease_common::layout::AGENT_SHA256_METADATA
                    ),
                }),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(Error::aws(format!("Failed to read s3://{bucket}/{key}"), e)),
        }
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::{AgentPackages, Uploads};
    use crate::aws::fake::FakeCloud;
    use crate::error::Result;

    impl AgentPackages for FakeCloud {
        async fn agent_package_sha256(&self, bucket: &str, key: &str) -> Result<Option<String>> {
            self.check()?;
            Ok(self
                .agent_packages
                .get(&(bucket.to_string(), key.to_string()))
                .cloned())
        }
    }

    /// A bucket that keeps what is written to it: (bucket, key, body), in order.
    #[derive(Debug, Default)]
    pub struct FakeUploads {
        pub written: Mutex<Vec<(String, String, Vec<u8>)>>,
    }

    impl Uploads for FakeUploads {
        async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
            self.written
                .lock()
                .unwrap()
                .push((bucket.to_string(), key.to_string(), body));
            Ok(())
        }
    }
}
