//! The reaper's Lambda package as `packaging/build-reaper.sh` writes it: a zip holding
//! `bootstrap`, whose archive comment records `lease-reaper <version> <arch>` so the
//! function is created for the architecture the binary was built for.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("Failed to read the reaper package '{path}': {message}")]
    Read { path: String, message: String },
    #[error(
        "the reaper package is not a zip made by packaging/build-reaper.sh: {0} (rebuild it with that script)"
    )]
    Format(String),
}

/// Lambda's instruction-set names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    X86_64,
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" => Some(Architecture::X86_64),
            "arm64" => Some(Architecture::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked reaper package, ready to upload.
#[derive(Clone, PartialEq, Eq)]
pub struct ReaperPackage {
    zip: Vec<u8>,
    architecture: Architecture,
    version: String,
}

impl fmt::Debug for ReaperPackage {
    // Not the megabytes of the zip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaperPackage")
            .field("bytes", &self.zip.len())
            .field("architecture", &self.architecture)
            .field("version", &self.version)
            .finish()
    }
}

/// A zip's end-of-central-directory record: signature, then 16 bytes of counts and
/// offsets, then the comment's length (2 bytes) and the comment.
const EOCD_SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
const EOCD_LEN: usize = 22;

/// The archive comment, found by walking back from the end to the record whose
/// comment ends exactly at the end of the file.
fn zip_comment(zip: &[u8]) -> Option<&[u8]> {
    if zip.len() < EOCD_LEN {
        return None;
    }
    let last = zip.len() - EOCD_LEN;
    // The comment is at most 65535 bytes, so the record starts no earlier than this.
    let first = last.saturating_sub(usize::from(u16::MAX));
    (first..=last).rev().find_map(|at| {
        if zip[at..at + 4] != EOCD_SIGNATURE {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([zip[at + 20], zip[at + 21]]));
        (at + EOCD_LEN + len == zip.len()).then(|| &zip[at + EOCD_LEN..])
    })
}

impl ReaperPackage {
    pub fn from_zip(zip: Vec<u8>) -> Result<Self, PackageError> {
        let comment = zip_comment(&zip)
            .ok_or_else(|| PackageError::Format("no zip end-of-directory record".into()))?;
        let comment = String::from_utf8_lossy(comment);
        let fields: Vec<&str> = comment.split_whitespace().collect();
        let (version, architecture) = match fields.as_slice() {
            ["lease-reaper", version, arch] => (
                version.to_string(),
                Architecture::parse(arch).ok_or_else(|| {
                    PackageError::Format(format!("unknown architecture '{arch}'"))
                })?,
            ),
            _ => {
                return Err(PackageError::Format(format!(
                    "its comment is '{}', not 'lease-reaper VERSION ARCH'",
                    comment.trim()
                )));
            }
        };
        Ok(Self {
            zip,
            architecture,
            version,
        })
    }

    pub fn read(path: &Path) -> Result<Self, PackageError> {
        let zip = std::fs::read(path).map_err(|e| PackageError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_zip(zip)
    }

    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn bytes(&self) -> &[u8] {
        &self.zip
    }

    /// What Lambda reports as the function's `CodeSha256`: the base64 of the zip's
    /// SHA-256, so an unchanged package is recognised and not uploaded again.
    pub fn code_sha256(&self) -> String {
        aws_smithy_types::base64::encode(Sha256::digest(&self.zip))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An empty zip (just the end record) with this comment.
    fn zip_with_comment(comment: &str) -> Vec<u8> {
        let mut z = EOCD_SIGNATURE.to_vec();
        z.extend_from_slice(&[0; 16]);
        z.extend_from_slice(&u16::try_from(comment.len()).unwrap().to_le_bytes());
        z.extend_from_slice(comment.as_bytes());
        z
    }

    #[test]
    fn the_comment_gives_version_and_architecture() {
        let p = ReaperPackage::from_zip(zip_with_comment("lease-reaper 0.1.0 arm64\n")).unwrap();
        assert_eq!(p.architecture(), Architecture::Arm64);
        assert_eq!(p.version(), "0.1.0");
        // A comment that itself contains the signature bytes is still read whole.
        let mut z = b"PK\x05\x06 junk before".to_vec();
        z.extend(zip_with_comment("lease-reaper 1.2.3 x86_64"));
        assert_eq!(
            ReaperPackage::from_zip(z).unwrap().architecture(),
            Architecture::X86_64
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (zip, needle) in [
            (b"not a zip".to_vec(), "end-of-directory"),
            (zip_with_comment(""), "not 'lease-reaper"),
            (zip_with_comment("lease-reaper 0.1.0 riscv64"), "riscv64"),
        ] {
            let err = ReaperPackage::from_zip(zip).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("build-reaper.sh"), "{err}");
        }
        let err = ReaperPackage::read(Path::new("/nonexistent/lease-reaper.zip")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lease-reaper.zip"));
    }
}
