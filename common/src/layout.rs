//! Where things live in the control-plane bucket.

/// `logs/<task-id>.log`: a task's combined output, uploaded while it runs and at the end.
pub fn log_key(task_id: &str) -> String {
    format!("logs/{task_id}.log")
}

/// `jobs/<instance-id>/<task-id>/bundle/`: the result bundle of a finished task.
pub fn bundle_prefix(instance_id: &str, task_id: &str) -> String {
    format!("jobs/{instance_id}/{task_id}/bundle/")
}

/// `jobs/<instance-id>/<task-id>/manifest.json`: every bundle file's path, size and
/// sha256. Beside `bundle/`, not in it, so no file of the task's can overwrite it.
pub fn manifest_key(instance_id: &str, task_id: &str) -> String {
    format!("jobs/{instance_id}/{task_id}/manifest.json")
}

/// `jobs/<instance-id>/<task-id>/attempt-<n>/`: the partial bundle an interrupted
/// attempt left, kept apart so the next attempt's bundle never overwrites it.
fn attempt_prefix(instance_id: &str, task_id: &str, attempt: u32) -> String {
    format!("jobs/{instance_id}/{task_id}/{ATTEMPT_FOLDER}{attempt}/")
}

/// `…/attempt-<n>/bundle/`: an interrupted attempt's files.
pub fn attempt_bundle_prefix(instance_id: &str, task_id: &str, attempt: u32) -> String {
    format!("{}bundle/", attempt_prefix(instance_id, task_id, attempt))
}

/// `…/attempt-<n>/manifest.json`: an interrupted attempt's manifest.
pub fn attempt_manifest_key(instance_id: &str, task_id: &str, attempt: u32) -> String {
    format!(
        "{}manifest.json",
        attempt_prefix(instance_id, task_id, attempt)
    )
}

const ATTEMPT_FOLDER: &str = "attempt-";

/// The attempt a folder under `jobs/<instance-id>/<task-id>/` holds (`attempt-2` → 2);
/// `None` for any other folder (`bundle`).
pub fn attempt_of_folder(name: &str) -> Option<u32> {
    name.strip_prefix(ATTEMPT_FOLDER)?.parse().ok()
}

/// `tasks/<task-id>.json`: a task too large for an SQS message.
pub fn task_spec_key(task_id: &str) -> String {
    format!("tasks/{task_id}.json")
}

/// `agent/<version>/leased_<version>_<arch>.deb`, with Debian's architecture names.
pub fn agent_deb_key(version: &str, deb_arch: &str) -> String {
    format!("agent/{version}/leased_{version}_{deb_arch}.deb")
}

/// The S3 object metadata key holding an agent package's sha256 (hex): written by
/// `lease setup` with the package, read by `lease launch` into the user-data, which
/// refuses a download that differs.
pub const AGENT_SHA256_METADATA: &str = "sha256";

/// Debian's name for an EC2 architecture (`x86_64` → `amd64`, `arm64` stays).
pub fn deb_arch(ec2_arch: &str) -> &str {
    match ec2_arch {
        "x86_64" => "amd64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The design page lists every key this module makes, in the same words, so a
    /// reader of the page and a reader of the code find the same layout.
    #[test]
    fn the_design_page_names_every_key() {
        let page = include_str!("../../ARCHITECTURE.md");
        let (i, t) = ("<instance-id>", "<task-id>");
        let attempt = |key: String| key.replace("attempt-7", "attempt-<n>");
        for key in [
            format!("`{}`", task_spec_key(t)),
            format!("`{}`", log_key(t)),
            format!("`{}<path>`", bundle_prefix(i, t)),
            format!("`{}`", manifest_key(i, t)),
            format!("`{}<path>`", attempt(attempt_bundle_prefix(i, t, 7))),
            format!("`{}`", attempt(attempt_manifest_key(i, t, 7))),
            format!("`{}`", agent_deb_key("<version>", "<arch>")),
        ] {
            assert!(page.contains(&key), "ARCHITECTURE.md does not name {key}");
        }
        for field in ["\"spec_s3\"", "`reason`", "`pool`"] {
            assert!(
                page.contains(field),
                "ARCHITECTURE.md does not name {field}"
            );
        }
    }

    #[test]
    fn keys_follow_the_design() {
        assert_eq!(log_key("t1"), "logs/t1.log");
        assert_eq!(bundle_prefix("i-1", "t1"), "jobs/i-1/t1/bundle/");
        assert_eq!(attempt_prefix("i-1", "t1", 2), "jobs/i-1/t1/attempt-2/");
        assert_eq!(
            attempt_bundle_prefix("i-1", "t1", 2),
            "jobs/i-1/t1/attempt-2/bundle/"
        );
        assert_eq!(
            attempt_manifest_key("i-1", "t1", 2),
            "jobs/i-1/t1/attempt-2/manifest.json"
        );
        assert_eq!(attempt_of_folder("attempt-2"), Some(2));
        assert_eq!(attempt_of_folder("bundle"), None);
        assert_eq!(attempt_of_folder("attempt-x"), None);
        assert_eq!(manifest_key("i-1", "t1"), "jobs/i-1/t1/manifest.json");
        assert_eq!(
            agent_deb_key("0.1.0", deb_arch("x86_64")),
            "agent/0.1.0/leased_0.1.0_amd64.deb"
        );
        assert_eq!(deb_arch("arm64"), "arm64");
    }
}
