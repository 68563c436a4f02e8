//! The generated script each task's session runs, and the files it keeps.

use std::path::{Path, PathBuf};

/// Where the runner keeps a task's wrapper script and exit status: beside the workdir
/// (`<workdir>.lease-run`), never inside it, so none of it lands in the bundle.
pub fn runner_dir(workdir: &Path) -> PathBuf {
    let mut name = workdir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lease-run");
    workdir.with_file_name(name)
}
