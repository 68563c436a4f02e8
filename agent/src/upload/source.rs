//! Reading a bundle file in parts, hashing exactly the bytes that are sent: a file
//! that grows or shrinks during the upload is described by the manifest as uploaded.
//! Blocking I/O: callers run these on tokio's blocking threads.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The smallest part: few requests for big files, and small enough that
/// `concurrency` parts in memory stay modest (8 × 16 MiB = 128 MiB).
pub const MIN_PART_SIZE: u64 = 16 << 20;
/// S3 allows 10,000 parts; stay under it with room for a file that grows meanwhile.
const MAX_PARTS: u64 = 9_000;

/// Part size for a file of `len` bytes: [`MIN_PART_SIZE`], or larger for files past
/// 140 GiB so the part count stays under S3's limit.
pub fn part_size(len: u64) -> u64 {
    MIN_PART_SIZE.max(len.div_ceil(MAX_PARTS))
}

/// An open bundle file and the running sha256 of everything read from it.
#[derive(Debug)]
pub struct Source {
    file: File,
    whole: Sha256,
    /// Length when opened: chooses the part size, nothing more.
    pub len_at_open: u64,
    pub read: u64,
}

/// One part: the bytes and their sha256, base64 as S3's checksum headers take it.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub bytes: Bytes,
    pub sha256_b64: String,
}

/// Why a file is not uploaded although the scan listed it.
#[derive(Debug)]
pub enum OpenError {
    /// Gone, replaced by something else, or resolving outside the bundle: skipped.
    Skip(String),
    Io(io::Error),
}

impl Source {
    /// Opens `abs` and confirms, on the file actually opened, that it is a regular file
    /// inside `root` (canonical): a directory swapped for a symlink between the scan and
    /// this open cannot lead out of the bundle.
    pub fn open(abs: &Path, root: &Path) -> Result<Self, OpenError> {
        let file = match File::open(abs) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::Skip("vanished before upload".into()));
            }
            Err(e) => return Err(OpenError::Io(e)),
        };
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.is_file() {
            return Err(OpenError::Skip("no longer a regular file".into()));
        }
        match opened_path(&file) {
            Some(real) if real.starts_with(root) => {}
            Some(_) => return Err(OpenError::Skip("resolves outside the bundle".into())),
            None => {
                return Err(OpenError::Skip(
                    "cannot confirm it lies inside the bundle (no /proc)".into(),
                ));
            }
        }
        Ok(Self {
            file,
            whole: Sha256::new(),
            len_at_open: meta.len(),
            read: 0,
        })
    }

    /// Reads up to `limit` bytes (fewer only at end of file) and hashes them.
    pub fn next_chunk(&mut self, limit: u64) -> io::Result<Chunk> {
        let expect = self.len_at_open.saturating_sub(self.read).min(limit);
        // +1: a file that has grown since it was opened is read in one go, not by
        // doubling from an exactly full buffer.
        let mut buf = Vec::with_capacity(usize::try_from(expect + 1).unwrap_or(usize::MAX));
        (&mut self.file).take(limit).read_to_end(&mut buf)?;
        self.whole.update(&buf);
        self.read += buf.len() as u64;
        let sha256_b64 = aws_smithy_types::base64::encode(Sha256::digest(&buf));
        Ok(Chunk {
            bytes: Bytes::from(buf),
            sha256_b64,
        })
    }

    /// Lower-case hex sha256 of every byte read.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.whole.clone().finalize())
    }
}

/// Where the open file really is (the kernel's view, after every symlink).
fn opened_path(file: &File) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use lease_common::manifest::sha256_bytes;

    #[test]
    fn part_size_keeps_the_part_count_under_the_limit() {
        assert_eq!(part_size(0), MIN_PART_SIZE);
        assert_eq!(part_size(512 << 20), MIN_PART_SIZE);
        let huge = 500u64 << 30;
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
    }

    #[test]
    fn chunks_cover_the_file_and_the_hash_is_of_the_bytes_read() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let p = root.join("f");
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &body).unwrap();
        let mut s = Source::open(&p, &root).unwrap();
        let a = s.next_chunk(4096).unwrap();
        // Grows after the first read: the rest is read, and hashed, as it now is.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"tail")
            .unwrap();
        let b = s.next_chunk(1 << 20).unwrap();
        let c = s.next_chunk(1 << 20).unwrap();
        assert_eq!(a.bytes.len(), 4096);
        assert_eq!(b.bytes.len(), 10_000 - 4096 + 4);
        assert!(c.bytes.is_empty());
        let mut all = body.clone();
        all.extend_from_slice(b"tail");
        assert_eq!(s.sha256_hex(), sha256_bytes(&all));
        assert_eq!(s.read, all.len() as u64);
        assert_eq!(
            a.sha256_b64,
            aws_smithy_types::base64::encode(Sha256::digest(&body[..4096]))
        );
    }

    #[test]
    fn a_file_reached_through_a_symlinked_directory_outside_the_root_is_skipped() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("sub")).unwrap();
        assert!(matches!(
            Source::open(&root.join("sub/secret"), &root),
            Err(OpenError::Skip(why)) if why.contains("outside")
        ));
        assert!(matches!(
            Source::open(&root.join("gone"), &root),
            Err(OpenError::Skip(why)) if why.contains("vanished")
        ));
    }
}
