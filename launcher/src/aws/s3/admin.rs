//! S3 as setup and teardown use it: the stack's bucket and its configuration (public
//! access block, default encryption, ownership, lifecycle, tags), the agent package in
//! it, and emptying it. A second trait
//! beside the everyday one of [`super`], with its own SDK implementation.

use std::collections::HashMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete,
    LifecycleRule, ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};

use crate::error::{Error, Result};

/// S3's "there is no such configuration" codes: absent means "not set yet", not a failure.
const NOT_SET: [&str; 5] = [
    "NoSuchPublicAccessBlockConfiguration",
    "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "OwnershipControlsNotFoundError",
    "NoSuchTagSet",
];

/// A bucket's configuration as setup compares it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketConfig {
    /// All four public-access blocks on.
    pub public_blocked: bool,
    /// SSE-S3 (AES256) by default.
    pub sse_s3: bool,
    /// Bucket-owner-enforced ownership (no ACLs).
    pub owner_enforced: bool,
    /// Every lifecycle rule, ours and anyone else's (a put replaces the whole set).
    pub lifecycle: Vec<LifecycleRule>,
    pub tags: Vec<(String, String)>,
}

/// An object as HeadObject describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: Option<i64>,
    pub metadata: HashMap<String, String>,
}

/// One page of a bucket's object versions and delete markers.
#[derive(Debug, Clone, Default)]
pub struct VersionPage {
    /// (key, version id).
    pub versions: Vec<(String, Option<String>)>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<(Option<String>, Option<String>)>,
}

pub trait BucketAdmin: Sync {
    fn bucket_exists(&self, bucket: &str) -> impl Future<Output = Result<bool>> + Send;
    fn create_bucket(&self, bucket: &str, region: &str) -> impl Future<Output = Result<()>> + Send;
    fn bucket_config(&self, bucket: &str) -> impl Future<Output = Result<BucketConfig>> + Send;
    fn bucket_tags(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    fn block_public_access(&self, bucket: &str) -> impl Future<Output = Result<()>> + Send;
    fn encrypt_by_default(&self, bucket: &str) -> impl Future<Output = Result<()>> + Send;
    fn enforce_owner(&self, bucket: &str) -> impl Future<Output = Result<()>> + Send;
    fn put_lifecycle(
        &self,
        bucket: &str,
        rules: Vec<LifecycleRule>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Replaces the whole tag set.
    fn put_tags(
        &self,
        bucket: &str,
        tags: &[(String, String)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// `None` when there is no such object.
    fn object(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectInfo>>> + Send;
    fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: (&str, &str),
    ) -> impl Future<Output = Result<()>> + Send;
    fn versions(
        &self,
        bucket: &str,
        from: (Option<String>, Option<String>),
    ) -> impl Future<Output = Result<VersionPage>> + Send;
    fn delete_versions(
        &self,
        bucket: &str,
        versions: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete_bucket(&self, bucket: &str) -> impl Future<Output = Result<()>> + Send;
}

fn build_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::usage(format!("{what}: {e}"))
}

/// `Ok(None)` when S3 says the configuration is not set.
fn absent<T, E>(r: std::result::Result<T, E>, what: String) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code().is_some_and(|c| NOT_SET.contains(&c)) => Ok(None),
        Err(e) => Err(Error::aws(what, e)),
    }
}

impl BucketAdmin for Client {
    async fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        match self.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => {
                let forbidden = e.raw_response().is_some_and(|r| r.status().as_u16() == 403);
                if forbidden {
                    return Err(Error::Aws {
                        what: format!("Bucket '{bucket}'"),
                        message: "exists but this identity may not use it (another account's bucket, or missing s3:ListBucket)".into(),
                    });
                }
                Err(Error::aws(
                    format!("Failed to look up bucket '{bucket}'"),
                    e,
                ))
            }
        }
    }

    async fn create_bucket(&self, bucket: &str, region: &str) -> Result<()> {
        let mut req = self
            .create_bucket()
            .bucket(bucket)
            .object_ownership(ObjectOwnership::BucketOwnerEnforced);
        // us-east-1 is the one region that refuses its own name as a constraint.
        if region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        req.send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create bucket '{bucket}'"), e))?;
        Ok(())
    }

    async fn bucket_config(&self, bucket: &str) -> Result<BucketConfig> {
        let block = absent(
            self.get_public_access_block().bucket(bucket).send().await,
            format!("Failed to read the public access block of bucket '{bucket}'"),
        )?;
        let public_blocked = block
            .as_ref()
            .and_then(|b| b.public_access_block_configuration())
            .is_some_and(|c| {
                [
                    c.block_public_acls(),
                    c.ignore_public_acls(),
                    c.block_public_policy(),
                    c.restrict_public_buckets(),
                ]
                .iter()
                .all(|v| *v == Some(true))
            });
        let encryption = absent(
            self.get_bucket_encryption().bucket(bucket).send().await,
            format!("Failed to read the encryption of bucket '{bucket}'"),
        )?;
        let sse_s3 = encryption
            .as_ref()
            .and_then(|e| e.server_side_encryption_configuration())
            .is_some_and(|c| {
                c.rules().iter().any(|r| {
                    r.apply_server_side_encryption_by_default()
                        .is_some_and(|d| d.sse_algorithm() == &ServerSideEncryption::Aes256)
                })
            });
        let ownership = absent(
            self.get_bucket_ownership_controls()
                .bucket(bucket)
                .send()
                .await,
            format!("Failed to read the ownership controls of bucket '{bucket}'"),
        )?;
        let owner_enforced = ownership
            .as_ref()
            .and_then(|o| o.ownership_controls())
            .is_some_and(|c| {
                c.rules()
                    .iter()
                    .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
            });
        let lifecycle = absent(
            self.get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await,
            format!("Failed to read the lifecycle rules of bucket '{bucket}'"),
        )?
        .map(|c| c.rules().to_vec())
        .unwrap_or_default();
        Ok(BucketConfig {
            public_blocked,
            sse_s3,
            owner_enforced,
            lifecycle,
            tags: self.bucket_tags(bucket).await?,
        })
    }

    async fn bucket_tags(&self, bucket: &str) -> Result<Vec<(String, String)>> {
        let out = absent(
            self.get_bucket_tagging().bucket(bucket).send().await,
            format!("Failed to read the tags of bucket '{bucket}'"),
        )?;
        Ok(out
            .map(|o| {
                o.tag_set()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn block_public_access(&self, bucket: &str) -> Result<()> {
        self.put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to block public access to bucket '{bucket}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn encrypt_by_default(&self, bucket: &str) -> Result<()> {
        let by_default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::Aes256)
            .build()
            .map_err(|e| build_err("encryption", e))?;
        let config = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(by_default)
                    .build(),
            )
            .build()
            .map_err(|e| build_err("encryption", e))?;
        self.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(config)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to set the encryption of bucket '{bucket}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn enforce_owner(&self, bucket: &str) -> Result<()> {
        let rule = OwnershipControlsRule::builder()
            .object_ownership(ObjectOwnership::BucketOwnerEnforced)
            .build()
            .map_err(|e| build_err("ownership", e))?;
        let controls = OwnershipControls::builder()
            .rules(rule)
            .build()
            .map_err(|e| build_err("ownership", e))?;
        self.put_bucket_ownership_controls()
            .bucket(bucket)
            .ownership_controls(controls)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to set the ownership controls of bucket '{bucket}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn put_lifecycle(&self, bucket: &str, rules: Vec<LifecycleRule>) -> Result<()> {
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| build_err("lifecycle configuration", e))?;
        self.put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to set the lifecycle rules of bucket '{bucket}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn put_tags(&self, bucket: &str, tags: &[(String, String)]) -> Result<()> {
        let set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| build_err("tag", e))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(|e| build_err("tag", e))?;
        self.put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag bucket '{bucket}'"), e))?;
        Ok(())
    }

    async fn object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        match self.head_object().bucket(bucket).key(key).send().await {
            Ok(h) => Ok(Some(ObjectInfo {
                size: h.content_length(),
                metadata: h.metadata().cloned().unwrap_or_default(),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(Error::aws(format!("Failed to read s3://{bucket}/{key}"), e)),
        }
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: (&str, &str),
    ) -> Result<()> {
        self.put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .metadata(metadata.0, metadata.1)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to upload s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    async fn versions(
        &self,
        bucket: &str,
        (key_marker, version_marker): (Option<String>, Option<String>),
    ) -> Result<VersionPage> {
        let out = self
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to list the objects of bucket '{bucket}'"),
                    e,
                )
            })?;
        let versions = out
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            )
            .filter_map(|(key, version)| Some((key?.to_string(), version.map(str::to_string))))
            .collect();
        let next = (out.is_truncated() == Some(true)).then(|| {
            (
                out.next_key_marker().map(str::to_string),
                out.next_version_id_marker().map(str::to_string),
            )
        });
        Ok(VersionPage { versions, next })
    }

    async fn delete_versions(
        &self,
        bucket: &str,
        versions: Vec<(String, Option<String>)>,
    ) -> Result<()> {
        let ids = versions
            .into_iter()
            .map(|(key, version)| {
                ObjectIdentifier::builder()
                    .key(key)
                    .set_version_id(version)
                    .build()
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| build_err("delete", e))?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| build_err("delete", e))?;
        let res = self
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to empty bucket '{bucket}'"), e))?;
        if let Some(first) = res.errors().first() {
            return Err(Error::Aws {
                what: format!("Failed to empty bucket '{bucket}'"),
                message: format!(
                    "{} objects not deleted, the first '{}': {}",
                    res.errors().len(),
                    first.key().unwrap_or_default(),
                    first.message().unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        self.delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to delete bucket '{bucket}'"), e))?;
        Ok(())
    }
}
