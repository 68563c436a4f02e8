//! Which entries of a bundle directory become bundle files, and which are skipped and
//! why. Nothing here follows a symlink: a task (which may run as another user than the
//! agent) must not be able to make the agent upload a file from outside its bundle.

use std::io;
use std::path::{Path, PathBuf};

use lease_common::manifest::is_safe_relative;

/// A regular file found in the bundle directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative to the bundle directory, `/`-separated: the manifest path and key suffix.
    pub rel: String,
    pub abs: PathBuf,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Sorted by relative path.
    pub files: Vec<BundleFile>,
    /// `<relative path> (<why>)`, sorted.
    pub skipped: Vec<String>,
}

/// Walks `dir` without following symlinks. Fails only when `dir` itself cannot be
/// listed; an unreadable subdirectory is skipped and reported, so one bad entry never
/// costs the rest of the bundle.
pub fn scan(dir: &Path) -> io::Result<Scan> {
    let mut out = Scan::default();
    // (absolute directory, its relative path with a trailing '/', or "" for the root)
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    let mut root = true;
    while let Some((abs_dir, rel_dir)) = pending.pop() {
        let entries = match std::fs::read_dir(&abs_dir) {
            Ok(e) => e,
            Err(e) if root => return Err(e),
            Err(e) => {
                out.skipped.push(format!("{rel_dir} (unreadable: {e})"));
                continue;
            }
        };
        root = false;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.skipped
                        .push(format!("{rel_dir}* (listing failed part-way: {e})"));
                    break;
                }
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                out.skipped.push(format!(
                    "{rel_dir}{} (name is not UTF-8)",
                    name.to_string_lossy()
                ));
                continue;
            };
            let rel = format!("{rel_dir}{name}");
            // DirEntry::file_type does not follow symlinks.
            let kind = match entry.file_type() {
                Ok(k) => k,
                Err(e) => {
                    out.skipped.push(format!("{rel} (cannot stat: {e})"));
                    continue;
                }
            };
            if kind.is_symlink() {
                out.skipped.push(format!("{rel} (symlink, not followed)"));
            } else if kind.is_dir() {
                pending.push((entry.path(), format!("{rel}/")));
            } else if !kind.is_file() {
                out.skipped.push(format!("{rel} (not a regular file)"));
            } else if !is_safe_relative(&rel) {
                out.skipped.push(format!("{rel} (unsafe path)"));
            } else {
                out.files.push(BundleFile {
                    rel,
                    abs: entry.path(),
                });
            }
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.skipped.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_files_and_skips_symlinks_and_unsafe_names() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("top.txt"), b"1").unwrap();
        std::fs::write(root.join("a/b/deep.bin"), b"2").unwrap();
        std::fs::write(root.join("a\\b"), b"3").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("a/passwd")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("loop")).unwrap();
        let s = scan(root).unwrap();
        let rels: Vec<&str> = s.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a/b/deep.bin", "top.txt"]);
        assert_eq!(s.files[0].abs, root.join("a/b/deep.bin"));
        assert_eq!(
            s.skipped,
            [
                "a/passwd (symlink, not followed)",
                "a\\b (unsafe path)",
                "loop (symlink, not followed)",
            ]
        );
    }

    #[test]
    fn an_empty_directory_has_no_files_and_a_missing_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(scan(d.path()).unwrap(), Scan::default());
        assert!(scan(&d.path().join("nope")).is_err());
    }
}
