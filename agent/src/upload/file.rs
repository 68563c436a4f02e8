//! One bundle file to S3: a single PutObject below the part size, otherwise a
//! multipart upload with several parts in flight. Every request carries the sha256 of
//! its body (S3 additional checksums), so S3 rejects bytes damaged on the way; a
//! multipart upload that fails is aborted, so no parts are left behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use lease_common::manifest::ManifestEntry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::UploadError;
use super::retry::{Failure, with_retries};
use super::scan::BundleFile;
use super::source::{Chunk, OpenError, Source, part_size};

/// What every file of one bundle upload shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// One permit per request in flight, taken before its body is read: bounds both
    /// the requests and the memory (at most this many parts are held at once).
    pub requests: Arc<Semaphore>,
    /// Set when a file fails: the others stop at their next part instead of spending
    /// the machine's last minutes on a bundle that will not get a manifest.
    pub failed: Arc<AtomicBool>,
    /// The bundle directory, canonical: every opened file must lie under it.
    pub root: PathBuf,
}

#[derive(Debug)]
pub enum FileOutcome {
    Uploaded(ManifestEntry),
    Skipped(String),
}

/// Where one file goes; carried into errors.
#[derive(Debug, Clone)]
struct Target {
    rel: String,
    key: String,
}

impl Shared {
    fn error(&self, t: &Target, reason: impl ToString) -> UploadError {
        UploadError::Upload {
            path: t.rel.clone(),
            bucket: self.bucket.clone(),
            key: t.key.clone(),
            reason: reason.to_string(),
        }
    }

    fn read_error(&self, t: &Target, source: std::io::Error) -> UploadError {
        UploadError::Read {
            path: t.rel.clone(),
            bucket: self.bucket.clone(),
            key: t.key.clone(),
            source,
        }
    }

    fn cancelled(&self, t: &Target) -> UploadError {
        UploadError::Cancelled {
            path: t.rel.clone(),
            bucket: self.bucket.clone(),
            key: t.key.clone(),
        }
    }

    /// The semaphore is never closed; if it were, the upload stops as cancelled.
    async fn permit(&self, t: &Target) -> Result<OwnedSemaphorePermit, UploadError> {
        self.requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.cancelled(t))
    }

    /// Uploads `f` to `key`. A file that vanished, or that resolves outside the
    /// bundle once opened, is skipped, not an error.
    pub async fn upload_file(
        &self,
        f: BundleFile,
        key: String,
    ) -> Result<FileOutcome, UploadError> {
        let t = Target { rel: f.rel, key };
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.cancelled(&t));
        }
        let permit = self.permit(&t).await?;
        let root = self.root.clone();
        let opened = blocking(move || -> Result<(Source, Chunk, u64), OpenError> {
            let mut src = Source::open(&f.abs, &root)?;
            let size = part_size(src.len_at_open);
            let first = src.next_chunk(size).map_err(OpenError::Io)?;
            Ok((src, first, size))
        })
        .await;
        let (src, first, size) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(OpenError::Skip(why))) => {
                return Ok(FileOutcome::Skipped(format!("{} ({why})", t.rel)));
            }
            Ok(Err(OpenError::Io(e))) | Err(e) => return Err(self.read_error(&t, e)),
        };
        if (first.bytes.len() as u64) < size {
            self.put_whole(&t, first).await?;
            drop(permit);
            return Ok(FileOutcome::Uploaded(ManifestEntry {
                path: t.rel,
                size: src.read,
                sha256: src.sha256_hex(),
            }));
        }
        let src = self.put_multipart(&t, src, first, size, permit).await?;
        Ok(FileOutcome::Uploaded(ManifestEntry {
            path: t.rel,
            size: src.read,
            sha256: src.sha256_hex(),
        }))
    }

    async fn put_whole(&self, t: &Target, chunk: Chunk) -> Result<(), UploadError> {
        with_retries(|| async {
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(&t.key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&chunk.sha256_b64)
                .body(ByteStream::from(chunk.bytes.clone()))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Failure::from_sdk(&e))
        })
        .await
        .map_err(|f| self.error(t, f))
    }

    async fn put_multipart(
        &self,
        t: &Target,
        src: Source,
        first: Chunk,
        size: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<Source, UploadError> {
        let created = with_retries(|| async {
            self.s3
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&t.key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(|e| Failure::from_sdk(&e))
        })
        .await
        .map_err(|f| self.error(t, f))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(self.error(t, "CreateMultipartUpload returned no upload id"));
        };
        let guard = AbortGuard {
            pending: Some(Abort {
                s3: self.s3.clone(),
                bucket: self.bucket.clone(),
                key: t.key.clone(),
                upload_id: upload_id.clone(),
            }),
        };
        let sent = self
            .send_parts(t, &upload_id, src, first, size, permit)
            .await;
        let (src, parts) = match sent {
            Ok(v) => v,
            Err(e) => {
                guard.abort().await;
                return Err(e);
            }
        };
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let done = with_retries(|| async {
            self.s3
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&t.key)
                .upload_id(&upload_id)
                .multipart_upload(completed.clone())
                .send()
                .await
                .map_err(|e| Failure::from_sdk(&e))
        })
        .await;
        match done {
            Ok(_) => {
                guard.disarm();
                Ok(src)
            }
            Err(f) => {
                guard.abort().await;
                Err(self.error(t, format!("completing the multipart upload: {f}")))
            }
        }
    }

    /// Reads and sends parts, each with its own permit, until end of file. On a
    /// failure it stops reading and waits for the parts in flight before returning,
    /// so the abort that follows sees no part still arriving.
    async fn send_parts(
        &self,
        t: &Target,
        upload_id: &str,
        mut src: Source,
        first: Chunk,
        size: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<(Source, Vec<CompletedPart>), UploadError> {
        let mut tasks: JoinSet<Result<CompletedPart, Failure>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut failure: Option<UploadError> = None;
        let mut next = Some((first, permit));
        let mut number: i32 = 0;
        while let Some((chunk, permit)) = next.take() {
            number += 1;
            let at_end = (chunk.bytes.len() as u64) < size;
            tasks.spawn(send_part(
                self.s3.clone(),
                self.bucket.clone(),
                t.key.clone(),
                upload_id.to_string(),
                number,
                chunk,
                permit,
            ));
            if at_end {
                break;
            }
            while let Some(done) = tasks.try_join_next() {
                match flatten(done) {
                    Ok(p) => parts.push(p),
                    Err(f) => failure = Some(self.error(t, f)),
                }
            }
            if failure.is_some() {
                break;
            }
            if self.failed.load(Ordering::Relaxed) {
                failure = Some(self.cancelled(t));
                break;
            }
            let permit = match self.permit(t).await {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let read = blocking(move || {
                let chunk = src.next_chunk(size);
                (src, chunk)
            })
            .await;
            match read {
                Ok((back, Ok(chunk))) => {
                    src = back;
                    if !chunk.bytes.is_empty() {
                        next = Some((chunk, permit));
                    }
                }
                Ok((_, Err(e))) | Err(e) => {
                    // The source went with the failed read: finish what is in flight
                    // (so the abort sees no part still arriving) and report.
                    let err = self.read_error(t, e);
                    while tasks.join_next().await.is_some() {}
                    return Err(err);
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            match flatten(done) {
                Ok(p) => parts.push(p),
                Err(f) => {
                    failure.get_or_insert_with(|| self.error(t, f));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((src, parts))
    }
}

fn flatten(
    r: Result<Result<CompletedPart, Failure>, tokio::task::JoinError>,
) -> Result<CompletedPart, Failure> {
    r.unwrap_or_else(|e| {
        Err(Failure {
            status: None,
            code: None,
            message: format!("part task ended abnormally: {e}"),
        })
    })
}

/// One part, retried; the permit is released when the request is done.
async fn send_part(
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    chunk: Chunk,
    permit: OwnedSemaphorePermit,
) -> Result<CompletedPart, Failure> {
    let out = with_retries(|| async {
        s3.upload_part()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&chunk.sha256_b64)
            .body(ByteStream::from(chunk.bytes.clone()))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| Failure::from_sdk(&e))
    })
    .await
    .map_err(|f| Failure {
        message: format!("part {number}: {}", f.message),
        ..f
    });
    drop(permit);
    let out = out?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .checksum_sha256(&chunk.sha256_b64)
        .build())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, std::io::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)
}

#[derive(Debug)]
struct Abort {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
}

impl Abort {
    async fn run(self) {
        let r = with_retries(|| async {
            self.s3
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .send()
                .await
                .map_err(|e| Failure::from_sdk(&e))
        })
        .await;
        if let Err(f) = r {
            tracing::error!(
                "Failed to abort the multipart upload of s3://{}/{} (upload id {}); its parts \
                 stay billed until a lifecycle rule removes them: {f}",
                self.bucket,
                self.key,
                self.upload_id
            );
        }
    }
}

/// Aborts the multipart upload unless disarmed: awaited on the error paths, and
/// spawned when the caller drops the upload part-way (a deadline), so a cancelled
/// bundle leaves no parts behind either.
#[derive(Debug)]
struct AbortGuard {
    pending: Option<Abort>,
}

impl AbortGuard {
    async fn abort(mut self) {
        if let Some(a) = self.pending.take() {
            a.run().await;
        }
    }

    fn disarm(mut self) {
        self.pending = None;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(a) = self.pending.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(a.run());
        }
    }
}
