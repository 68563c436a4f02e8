//! The manifest of a result bundle: what the agent uploaded, so `lease download` can
//! verify every file and skip the ones it already has.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    pub task_id: String,
    pub instance_id: String,
    pub attempt: u32,
    pub files: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the bundle directory, with `/` separators; never absolute, never `..`.
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Parse(String),
    #[error("manifest entry '{0}' is not a safe relative path")]
    UnsafePath(String),
}

impl Manifest {
    /// Parses and refuses entries that could write outside the download directory.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        for f in &m.files {
            if !is_safe_relative(&f.path) {
                return Err(ManifestError::UnsafePath(f.path.clone()));
            }
        }
        Ok(m)
    }
}

pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// sha256 of a file, streamed, as lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(!is_safe_relative(bad), "{bad}");
        }
        for good in ["a", "out/model.pt", "dir/sub/file.txt", "..hidden"] {
            assert!(is_safe_relative(good), "{good}");
        }
        let text = r#"{"v":1,"task_id":"t","instance_id":"i","attempt":1,"files":[{"path":"../x","size":1,"sha256":"00"}]}"#;
        assert!(matches!(
            Manifest::parse(text),
            Err(ManifestError::UnsafePath(_))
        ));
    }

    #[test]
    fn hashes_match_the_known_vector() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_bytes(b"abc"));
    }
}
