//! S3: the stack's bucket (private, encrypted, owner-enforced) and the agent package
//! in it.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};
use sha2::{Digest, Sha256};

use super::{AgentPackage, Outcome, not_ours};
use crate::error::{Error, Result};

/// S3's "there is no such configuration" codes: absent means "not set yet", not a failure.
const NOT_SET: [&str; 5] = [
    "NoSuchPublicAccessBlockConfiguration",
    "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "OwnershipControlsNotFoundError",
    "NoSuchTagSet",
];

/// Object metadata holding the package's sha256, so a second setup can tell an
/// identical upload from a rebuilt package without downloading it.
const SHA256_METADATA: &str = lease_common::layout::AGENT_SHA256_METADATA;

/// The lifecycle rule setup owns: abort multipart uploads left incomplete (an agent
/// killed mid-upload, an abort that failed), whose parts S3 keeps and bills until then.
pub const ABORT_MULTIPART_RULE: &str = "lease-abort-incomplete-multipart-uploads";
/// Days after which an incomplete upload is aborted: no bundle upload runs this long,
/// and a day more keeps a slow one clear of it.
pub const ABORT_MULTIPART_AFTER_DAYS: i32 = 2;

fn is_abort_rule(r: &LifecycleRule) -> bool {
    r.id() == Some(ABORT_MULTIPART_RULE)
}

/// Our rule as it should be: the whole bucket, enabled, nothing else.
fn wanted_abort_rule(r: &LifecycleRule) -> bool {
    is_abort_rule(r)
        && r.status() == &ExpirationStatus::Enabled
        && r.abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation())
            == Some(ABORT_MULTIPART_AFTER_DAYS)
        && r.filter()
            .is_none_or(|f| f.prefix().unwrap_or_default().is_empty() && f.tag().is_none())
        && r.expiration().is_none()
        && r.transitions().is_empty()
}

fn abort_rule() -> Result<LifecycleRule> {
    LifecycleRule::builder()
        .id(ABORT_MULTIPART_RULE)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .status(ExpirationStatus::Enabled)
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABORT_MULTIPART_AFTER_DAYS)
                .build(),
        )
        .build()
        .map_err(|e| build_err("lifecycle rule", e))
}

/// The bucket's lifecycle configuration holds [`ABORT_MULTIPART_RULE`] as wanted;
/// other rules (someone else's) are kept, since a put replaces the whole set.
/// Returns whether it changed anything.
pub async fn ensure_lifecycle(s3: &Client, bucket: &str) -> Result<bool> {
    let current = absent(
        s3.get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await,
        format!("Failed to read the lifecycle rules of bucket '{bucket}'"),
    )?;
    let mut rules: Vec<LifecycleRule> = current.map(|c| c.rules().to_vec()).unwrap_or_default();
    if rules.iter().any(wanted_abort_rule) {
        return Ok(false);
    }
    rules.retain(|r| !is_abort_rule(r));
    rules.push(abort_rule()?);
    let config = BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules))
        .build()
        .map_err(|e| build_err("lifecycle configuration", e))?;
    s3.put_bucket_lifecycle_configuration()
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
    Ok(true)
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

async fn exists(s3: &Client, bucket: &str) -> Result<bool> {
    match s3.head_bucket().bucket(bucket).send().await {
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

async fn tags(s3: &Client, bucket: &str) -> Result<Vec<(String, String)>> {
    let out = absent(
        s3.get_bucket_tagging().bucket(bucket).send().await,
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

/// The bucket exists, blocks all public access, encrypts with SSE-S3 by default,
/// enforces bucket-owner ownership (no ACLs), aborts incomplete multipart uploads
/// and carries the stack's tag.
pub async fn ensure_bucket(
    s3: &Client,
    bucket: &str,
    region: &str,
    tag: &(String, String),
) -> Result<Outcome> {
    let created = !exists(s3, bucket).await?;
    if created {
        let mut req = s3
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
    }
    let mut updated = false;

    let block = absent(
        s3.get_public_access_block().bucket(bucket).send().await,
        format!("Failed to read the public access block of bucket '{bucket}'"),
    )?;
    let blocked = block
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
    if !blocked {
        s3.put_public_access_block()
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
        updated = true;
    }

    let encryption = absent(
        s3.get_bucket_encryption().bucket(bucket).send().await,
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
    if !sse_s3 {
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
        s3.put_bucket_encryption()
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
        updated = true;
    }

    let ownership = absent(
        s3.get_bucket_ownership_controls()
            .bucket(bucket)
            .send()
            .await,
        format!("Failed to read the ownership controls of bucket '{bucket}'"),
    )?;
    let enforced = ownership
        .as_ref()
        .and_then(|o| o.ownership_controls())
        .is_some_and(|c| {
            c.rules()
                .iter()
                .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
        });
    if !enforced {
        let rule = OwnershipControlsRule::builder()
            .object_ownership(ObjectOwnership::BucketOwnerEnforced)
            .build()
            .map_err(|e| build_err("ownership", e))?;
        let controls = OwnershipControls::builder()
            .rules(rule)
            .build()
            .map_err(|e| build_err("ownership", e))?;
        s3.put_bucket_ownership_controls()
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
        updated = true;
    }

    if ensure_lifecycle(s3, bucket).await? {
        updated = true;
    }

    let mut current = tags(s3, bucket).await?;
    if !current.contains(tag) {
        // PutBucketTagging replaces the whole set: keep everyone else's tags.
        current.retain(|(k, _)| k != &tag.0);
        current.push(tag.clone());
        let set = current
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| build_err("tag", e))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(|e| build_err("tag", e))?;
        s3.put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag bucket '{bucket}'"), e))?;
        updated = true;
    }
    Ok(Outcome::of(created, updated))
}

/// The package is in the bucket under its key, byte for byte (same size and sha256).
pub async fn ensure_package(s3: &Client, bucket: &str, p: &AgentPackage) -> Result<Outcome> {
    let bytes = tokio::fs::read(&p.path).await.map_err(|e| {
        Error::io(
            format!("Failed to read agent package '{}'", p.path.display()),
            e,
        )
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let head = s3.head_object().bucket(bucket).key(&p.key).send().await;
    let existed = match head {
        Ok(h) => {
            let same = h.content_length() == i64::try_from(bytes.len()).ok()
                && h.metadata().and_then(|m| m.get(SHA256_METADATA)) == Some(&sha);
            if same {
                return Ok(Outcome::Exists);
            }
            true
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
        Err(e) => {
            return Err(Error::aws(
                format!("Failed to read s3://{bucket}/{}", p.key),
                e,
            ));
        }
    };
    s3.put_object()
        .bucket(bucket)
        .key(&p.key)
        .content_type("application/vnd.debian.binary-package")
        .metadata(SHA256_METADATA, &sha)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| {
            Error::aws(
                format!(
                    "Failed to upload '{}' to s3://{bucket}/{}",
                    p.path.display(),
                    p.key
                ),
                e,
            )
        })?;
    Ok(Outcome::of(!existed, existed))
}

pub async fn object_exists(s3: &Client, bucket: &str, key: &str) -> Result<bool> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(Error::aws(format!("Failed to read s3://{bucket}/{key}"), e)),
    }
}

/// Empties the bucket — every object version and delete marker, in case versioning
/// was turned on — then deletes it.
pub async fn remove_bucket(
    s3: &Client,
    bucket: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    if !exists(s3, bucket).await? {
        return Ok((Outcome::Absent, None));
    }
    if !tags(s3, bucket).await?.contains(tag) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    let mut removed = 0usize;
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let out = s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.clone())
            .set_version_id_marker(version_marker.clone())
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to list the objects of bucket '{bucket}'"),
                    e,
                )
            })?;
        let ids: Vec<ObjectIdentifier> = out
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            )
            .filter_map(|(key, version)| {
                ObjectIdentifier::builder()
                    .set_key(key.map(str::to_string))
                    .set_version_id(version.map(str::to_string))
                    .build()
                    .ok()
            })
            .collect();
        if !ids.is_empty() {
            let n = ids.len();
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| build_err("delete", e))?;
            let res = s3
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
            removed += n;
        }
        if out.is_truncated() != Some(true) {
            break;
        }
        key_marker = out.next_key_marker().map(str::to_string);
        version_marker = out.next_version_id_marker().map(str::to_string);
    }
    s3.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to delete bucket '{bucket}'"), e))?;
    Ok((
        Outcome::Deleted,
        (removed > 0).then(|| format!("emptied first: {removed} object version(s)")),
    ))
}
