//! S3: the stack's bucket (private, encrypted, owner-enforced) and the agent package
//! in it.

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
};
use sha2::{Digest, Sha256};

use super::{AgentPackage, Outcome, not_ours};
use crate::aws::StackTag;
use crate::aws::s3::{BucketAdmin, BucketConfig, ObjectInfo};
use crate::error::{Error, Result};

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
        .map_err(|e| Error::usage(format!("lifecycle rule: {e}")))
}

/// The lifecycle rules to put so [`ABORT_MULTIPART_RULE`] is as wanted, keeping other
/// rules (someone else's), since a put replaces the whole set; `None` when it is.
pub fn lifecycle_to_put(current: &[LifecycleRule]) -> Result<Option<Vec<LifecycleRule>>> {
    if current.iter().any(wanted_abort_rule) {
        return Ok(None);
    }
    let mut rules: Vec<LifecycleRule> = current
        .iter()
        .filter(|r| !is_abort_rule(r))
        .cloned()
        .collect();
    rules.push(abort_rule()?);
    Ok(Some(rules))
}

/// The tag set to put so the bucket carries the stack's tag, keeping everyone else's
/// (PutBucketTagging replaces the whole set); `None` when it does.
pub fn tags_to_put(current: &[(String, String)], tag: &StackTag) -> Option<Vec<(String, String)>> {
    if current.contains(tag) {
        return None;
    }
    let mut tags: Vec<(String, String)> = current
        .iter()
        .filter(|(k, _)| k != &tag.0)
        .cloned()
        .collect();
    tags.push(tag.clone());
    Some(tags)
}

/// A write to bring the bucket's configuration to what is wanted.
#[derive(Debug, Clone, PartialEq)]
pub enum BucketStep {
    BlockPublicAccess,
    Encrypt,
    EnforceOwner,
    PutLifecycle(Vec<LifecycleRule>),
    PutTags(Vec<(String, String)>),
}

/// What to send so the bucket blocks all public access, encrypts with SSE-S3 by
/// default, enforces bucket-owner ownership (no ACLs), aborts incomplete multipart
/// uploads and carries the stack's tag.
pub fn bucket_diff(observed: &BucketConfig, tag: &StackTag) -> Result<Vec<BucketStep>> {
    let mut steps = Vec::new();
    if !observed.public_blocked {
        steps.push(BucketStep::BlockPublicAccess);
    }
    if !observed.sse_s3 {
        steps.push(BucketStep::Encrypt);
    }
    if !observed.owner_enforced {
        steps.push(BucketStep::EnforceOwner);
    }
    if let Some(rules) = lifecycle_to_put(&observed.lifecycle)? {
        steps.push(BucketStep::PutLifecycle(rules));
    }
    if let Some(tags) = tags_to_put(&observed.tags, tag) {
        steps.push(BucketStep::PutTags(tags));
    }
    Ok(steps)
}

/// The bucket exists and is configured as [`bucket_diff`] wants.
pub async fn ensure_bucket<S: BucketAdmin>(
    s3: &S,
    bucket: &str,
    region: &str,
    tag: &StackTag,
) -> Result<Outcome> {
    let created = !s3.bucket_exists(bucket).await?;
    if created {
        s3.create_bucket(bucket, region).await?;
    }
    let steps = bucket_diff(&s3.bucket_config(bucket).await?, tag)?;
    for step in &steps {
        match step {
            BucketStep::BlockPublicAccess => s3.block_public_access(bucket).await?,
            BucketStep::Encrypt => s3.encrypt_by_default(bucket).await?,
            BucketStep::EnforceOwner => s3.enforce_owner(bucket).await?,
            BucketStep::PutLifecycle(rules) => s3.put_lifecycle(bucket, rules.clone()).await?,
            BucketStep::PutTags(tags) => s3.put_tags(bucket, tags).await?,
        }
    }
    Ok(Outcome::of(created, !steps.is_empty()))
}

/// Whether the object in the bucket is the package: same size and sha256.
pub fn same_package(object: &ObjectInfo, size: usize, sha256: &str) -> bool {
    object.size == i64::try_from(size).ok()
        && object.metadata.get(SHA256_METADATA).map(String::as_str) == Some(sha256)
}

/// The package is in the bucket under its key, byte for byte.
pub async fn ensure_package<S: BucketAdmin>(
    s3: &S,
    bucket: &str,
    p: &AgentPackage,
) -> Result<Outcome> {
    let bytes = tokio::fs::read(&p.path).await.map_err(|e| {
        Error::io(
            format!("Failed to read agent package '{}'", p.path.display()),
            e,
        )
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let existed = match s3.object(bucket, &p.key).await? {
        Some(o) if same_package(&o, bytes.len(), &sha) => return Ok(Outcome::Exists),
        Some(_) => true,
        None => false,
    };
    s3.put_object(
        bucket,
        &p.key,
        bytes,
        "application/vnd.debian.binary-package",
        (SHA256_METADATA, &sha),
    )
    .await
    .map_err(|e| match e {
        Error::Aws { message, .. } => Error::Aws {
            what: format!(
                "Failed to upload '{}' to s3://{bucket}/{}",
                p.path.display(),
                p.key
            ),
            message,
        },
        other => other,
    })?;
    Ok(Outcome::of(!existed, existed))
}

pub async fn object_exists<S: BucketAdmin>(s3: &S, bucket: &str, key: &str) -> Result<bool> {
    Ok(s3.object(bucket, key).await?.is_some())
}

/// Empties the bucket — every object version and delete marker, in case versioning
/// was turned on — then deletes it.
pub async fn remove_bucket<S: BucketAdmin>(
    s3: &S,
    bucket: &str,
    tag: &StackTag,
) -> Result<(Outcome, Option<String>)> {
    if !s3.bucket_exists(bucket).await? {
        return Ok((Outcome::Absent, None));
    }
    if !s3.bucket_tags(bucket).await?.contains(tag) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    let mut removed = 0usize;
    let mut from = (None, None);
    loop {
        let page = s3.versions(bucket, from).await?;
        if !page.versions.is_empty() {
            removed += page.versions.len();
            s3.delete_versions(bucket, page.versions).await?;
        }
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    s3.delete_bucket(bucket).await?;
    Ok((
        Outcome::Deleted,
        (removed > 0).then(|| format!("emptied first: {removed} object version(s)")),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tag() -> StackTag {
        ("lease:stack".into(), "dev".into())
    }

    fn as_wanted() -> BucketConfig {
        BucketConfig {
            public_blocked: true,
            sse_s3: true,
            owner_enforced: true,
            lifecycle: vec![abort_rule().unwrap()],
            tags: vec![tag()],
        }
    }

    #[test]
    fn a_bucket_as_wanted_needs_nothing() {
        assert_eq!(bucket_diff(&as_wanted(), &tag()).unwrap(), []);
    }

    #[test]
    fn a_new_bucket_gets_every_setting_and_keeps_others_rules_and_tags() {
        let theirs = LifecycleRule::builder()
            .id("theirs")
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        let stale_ours = LifecycleRule::builder()
            .id(ABORT_MULTIPART_RULE)
            .status(ExpirationStatus::Disabled)
            .build()
            .unwrap();
        let observed = BucketConfig {
            lifecycle: vec![theirs.clone(), stale_ours],
            tags: vec![
                ("team".into(), "ml".into()),
                ("lease:stack".into(), "old".into()),
            ],
            ..BucketConfig::default()
        };
        let steps = bucket_diff(&observed, &tag()).unwrap();
        assert_eq!(
            steps,
            [
                BucketStep::BlockPublicAccess,
                BucketStep::Encrypt,
                BucketStep::EnforceOwner,
                BucketStep::PutLifecycle(vec![theirs, abort_rule().unwrap()]),
                BucketStep::PutTags(vec![("team".into(), "ml".into()), tag()]),
            ]
        );
    }

    #[test]
    fn a_package_is_the_same_by_size_and_sha256() {
        let o = ObjectInfo {
            size: Some(3),
            metadata: [(SHA256_METADATA.to_string(), "abc".to_string())].into(),
        };
        assert!(same_package(&o, 3, "abc"));
        assert!(!same_package(&o, 4, "abc"));
        assert!(!same_package(&o, 3, "abd"));
        assert!(!same_package(&ObjectInfo::default(), 3, "abc"));
    }
}
