//! `lease setup [--stack NAME] [--pool P]… [--agent-deb FILE] [--reaper-zip FILE]`: creates what is
//! missing of the stack's control plane, corrects what differs, reports each resource
//! as `created`, `exists` or `updated`, and records the outputs in the settings file.

use std::path::{Path, PathBuf};

use lease_common::stack::{Stack, validate_pool};

use crate::aws::Cloud;
use crate::cli::SetupArgs;
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::settings::{Settings, StackOutputs};
use crate::stack::reaper::{PackageError, ReaperPackage};
use crate::stack::wanted::{self, Wanted};
use crate::stack::{self, AgentPackage, Clients, Outcome, Reaper, Report, print_report};
use crate::targets::{location, stack_name};

/// Where `packaging/build-deb.sh` leaves the package by default, relative to the
/// checkout `lease setup` is run from.
const BUILT_DEBS: &str = "target/debian";
/// Where `packaging/build-reaper.sh` leaves the reaper's package by default, likewise.
const BUILT_REAPER: &str = "target/lambda/lease-reaper.zip";
/// The scripts that make both packages, run by setup when it is run from a checkout
/// and finds no package: a new user gets an agent and a backstop without knowing the
/// packaging scripts exist. Both print the package's path on their last line.
const BUILD_DEB: &str = "packaging/build-deb.sh";
const BUILD_REAPER: &str = "packaging/build-reaper.sh";

/// Runs a packaging script of the checkout setup runs in, if there is one: its
/// progress on stderr, the path of what it built from its last line of stdout.
fn build_with(script: &str, what: &str) -> Result<Option<PathBuf>> {
    if !Path::new(script).is_file() {
        return Ok(None);
    }
    eprintln!(
        "No {what} found: building it with {script} (a release build; several minutes the first time)…"
    );
    let out = std::process::Command::new(script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::io(format!("Failed to run {script}"), e))?;
    if !out.status.success() {
        return Err(Error::Refused(format!(
            "{script} failed ({}) building the {what}: fix the build and run setup again",
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().map(str::trim).unwrap_or_default();
    if path.is_empty() || !Path::new(path).is_file() {
        return Err(Error::Refused(format!(
            "{script} succeeded but did not name the {what} it built (last line: '{path}')"
        )));
    }
    Ok(Some(PathBuf::from(path)))
}

/// The package to upload, named as build-deb.sh names it and of this lease's version
/// (launch points instances at `agent/<this version>/`).
fn package(path: &Path) -> Result<AgentPackage> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (version, arch) = wanted::deb_name_parts(&file).ok_or_else(|| {
        Error::usage(format!(
            "--agent-deb '{}': expected a file named leased_<version>_<arch>.deb",
            path.display()
        ))
    })?;
    if version != lease_common::VERSION {
        return Err(Error::usage(format!(
            "--agent-deb '{}' is version {version}, but this lease launches agent {}: build the matching package",
            path.display(),
            lease_common::VERSION
        )));
    }
    if !path.is_file() {
        return Err(Error::usage(format!(
            "--agent-deb '{}': no such file",
            path.display()
        )));
    }
    Ok(AgentPackage {
        path: path.to_path_buf(),
        key: lease_common::layout::agent_deb_key(&version, &arch),
    })
}

/// `--agent-deb`, else every package of this version in `target/debian/`, else the one
/// `packaging/build-deb.sh` builds when setup runs in a checkout.
fn packages(flag: Option<&Path>) -> Result<Vec<AgentPackage>> {
    if let Some(p) = flag {
        return Ok(vec![package(p)?]);
    }
    let found = built_packages();
    if !found.is_empty() {
        return found.iter().map(|p| package(p)).collect();
    }
    match build_with(BUILD_DEB, "agent package")? {
        Some(built) => Ok(vec![package(&built)?]),
        None => Ok(Vec::new()),
    }
}

fn built_packages() -> Vec<PathBuf> {
    let prefix = format!("leased_{}_", lease_common::VERSION);
    let Ok(dir) = std::fs::read_dir(BUILT_DEBS) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found
}

/// The reaper's package: `--reaper-zip`, else the one build-reaper.sh leaves in
/// `target/lambda/`, checked like the agent's (a zip of this lease's version), or none.
fn reaper_package(flag: Option<&Path>, build: bool) -> Result<Option<ReaperPackage>> {
    let built;
    let path = match flag {
        Some(p) => p,
        None if Path::new(BUILT_REAPER).is_file() => Path::new(BUILT_REAPER),
        None if build => match build_with(BUILD_REAPER, "reaper package")? {
            Some(p) => {
                built = p;
                built.as_path()
            }
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let what = if flag.is_some() {
        "--reaper-zip"
    } else {
        "reaper package"
    };
    let package = ReaperPackage::read(path).map_err(|e| {
        let why = match e {
            PackageError::Read { message, .. } => message,
            other => other.to_string(),
        };
        Error::usage(format!("{what} '{}': {why}", path.display()))
    })?;
    if package.version() != lease_common::VERSION {
        return Err(Error::usage(format!(
            "{what} '{}' is version {}, but this lease deploys reaper {}: rebuild it with packaging/build-reaper.sh",
            path.display(),
            package.version(),
            lease_common::VERSION
        )));
    }
    Ok(Some(package))
}

pub async fn run<C: Cloud>(
    cloud: &C,
    clients: &Clients,
    ctx: &Ctx,
    args: &SetupArgs,
    settings_path: &Path,
) -> Result<()> {
    // Everything local is checked before the first API call.
    let settings = Settings::load(settings_path)?;
    let stack = stack_name(args.stack.as_deref(), &settings)?;
    for p in &args.pools {
        validate_pool(p).map_err(|e| Error::usage(format!("--pool: {e}")))?;
    }
    let packages = packages(args.agent_deb.as_deref())?;
    let reaper_package = reaper_package(args.reaper_zip.as_deref(), !args.no_backstop)?;
    let at = location(cloud).await?;
    let previous = settings.section(stack.name(), at.region.as_str()).cloned();
    let existing_pools: Vec<String> = previous
        .as_ref()
        .map(|s| s.pools.keys().cloned().collect())
        .unwrap_or_default();
    // The choice stays what an earlier setup made unless the flag changes it.
    let claude_auth = args
        .claude_auth
        .or_else(|| previous.as_ref().map(|p| p.claude_auth))
        .unwrap_or_default();
    let wanted = Wanted {
        pools: wanted::pools(&args.pools, &existing_pools),
        claude_auth,
        stack,
        at,
    };
    eprintln!(
        "Setting up stack '{}' in {} (account {})…",
        wanted.stack,
        wanted.at.region.as_str(),
        wanted.at.account.as_str()
    );
    let recorded: Vec<String> = previous
        .as_ref()
        .map(|p| p.agent_packages.clone())
        .unwrap_or_default();
    let reaper = match reaper_package {
        Some(p) => Reaper::Deploy(p),
        None => Reaper::Missing {
            recorded: previous
                .as_ref()
                .and_then(|p| p.reaper_function_arn.clone()),
        },
    };
    let mut report = Report::default();
    let ensured = stack::ensure(clients, &wanted, &packages, &recorded, &reaper, &mut report).await;
    let outputs = match ensured {
        Ok(o) => o,
        Err(e) => {
            // Show what was done before the failure: running setup again resumes.
            print_report(ctx.output, ctx.color, &report, None)?;
            return Err(e);
        }
    };
    let mut updated = settings.clone();
    updated.upsert(outputs.clone());
    let outcome = if updated == settings {
        Outcome::Exists
    } else {
        updated.save(settings_path)?;
        Outcome::of(previous.is_none(), true)
    };
    report.add("settings", settings_path.display().to_string(), outcome);
    print_report(ctx.output, ctx.color, &report, Some(&outputs))?;
    if outputs.agent_packages.is_empty() {
        eprintln!(
            "No agent package in the bucket: `lease launch` will refuse AMIs without the agent. \
             Run setup from a checkout of lease (it builds the package) or pass --agent-deb."
        );
    }
    if let Some(e) = no_backstop(&wanted.stack, &outputs, args.no_backstop) {
        return Err(e);
    }
    if report.changed() {
        eprintln!(
            "Stack '{}' is set up in {}.",
            wanted.stack,
            wanted.at.region.as_str()
        );
    } else {
        eprintln!(
            "Nothing changed: stack '{}' in {} was already set up.",
            wanted.stack,
            wanted.at.region.as_str()
        );
    }
    Ok(())
}

/// Refuses to report success for a stack with no reaper: an instance whose agent never
/// started or died would run until someone noticed. Everything else is set up (and
/// recorded) by then, so running setup again with the package resumes.
fn no_backstop(stack: &Stack, outputs: &StackOutputs, accepted: bool) -> Option<Error> {
    if outputs.reaper_function_arn.is_some() {
        return None;
    }
    if accepted {
        eprintln!(
            "Stack '{stack}' has no backstop reaper (--no-backstop): end its instances yourself \
             if their agent stops."
        );
        return None;
    }
    Some(Error::Refused(format!(
        "stack '{stack}' has no backstop: the reaper could not be deployed (no --reaper-zip, no \
         {BUILT_REAPER}, and {BUILD_REAPER} is not here to build it). Run setup from a checkout \
         of lease, pass --reaper-zip FILE, or accept the risk with --no-backstop"
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn packages_must_be_named_and_versioned_like_build_deb_makes_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir
            .path()
            .join(format!("leased_{}_amd64.deb", lease_common::VERSION));
        std::fs::write(&good, b"deb").unwrap();
        let p = package(&good).unwrap();
        assert_eq!(
            p.key,
            format!("agent/{v}/leased_{v}_amd64.deb", v = lease_common::VERSION)
        );
        let old = dir.path().join("leased_0.0.1_amd64.deb");
        std::fs::write(&old, b"deb").unwrap();
        let err = package(&old).unwrap_err().to_string();
        assert!(
            err.contains("0.0.1") && err.contains("leased_0.0.1_amd64.deb"),
            "{err}"
        );
        let err = package(&dir.path().join("agent.deb"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.deb"), "{err}");
        let missing = dir
            .path()
            .join(format!("leased_{}_arm64.deb", lease_common::VERSION));
        assert!(
            package(&missing)
                .unwrap_err()
                .to_string()
                .contains("no such file")
        );
    }

    /// A zip holding nothing but its end record, whose comment is `comment`: all the
    /// package check reads.
    fn zip_with_comment(comment: &str) -> Vec<u8> {
        let mut zip = vec![0x50, 0x4b, 0x05, 0x06];
        zip.extend_from_slice(&[0; 16]);
        zip.extend_from_slice(&u16::try_from(comment.len()).unwrap().to_le_bytes());
        zip.extend_from_slice(comment.as_bytes());
        zip
    }

    /// What setup does with a checkout's packaging script: nothing when there is none,
    /// the path it prints last when it succeeds, a refusal naming it otherwise.
    #[test]
    fn a_packaging_script_is_run_and_its_last_line_is_the_package() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.display().to_string()
        };
        let missing = dir.path().join("absent.sh").display().to_string();
        assert_eq!(build_with(&missing, "agent package").unwrap(), None);

        let pkg = dir.path().join("leased.deb");
        std::fs::write(&pkg, b"!<arch>\n").unwrap();
        let good = script(
            "good.sh",
            &format!("echo building >&2\necho noise\necho {}", pkg.display()),
        );
        assert_eq!(build_with(&good, "agent package").unwrap(), Some(pkg));

        let failing = script("failing.sh", "echo broken >&2; exit 3");
        let err = build_with(&failing, "reaper package").unwrap_err();
        assert_eq!(err.exit_code(), 4);
        let err = err.to_string();
        assert!(
            err.contains("failing.sh") && err.contains("reaper package"),
            "{err}"
        );

        let silent = script("silent.sh", "echo /nonexistent/leased.deb");
        let err = build_with(&silent, "agent package")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/leased.deb"), "{err}");
    }

    #[test]
    fn the_reaper_zip_must_be_of_this_version_and_is_named_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("lease-reaper.zip");
        let comment = format!("lease-reaper {} x86_64", lease_common::VERSION);
        std::fs::write(&good, zip_with_comment(&comment)).unwrap();
        let p = reaper_package(Some(&good), false).unwrap().unwrap();
        assert_eq!(p.version(), lease_common::VERSION);

        let old = dir.path().join("old.zip");
        std::fs::write(&old, zip_with_comment("lease-reaper 0.0.1 x86_64")).unwrap();
        let err = reaper_package(Some(&old), false).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = err.to_string();
        assert!(
            err.contains("old.zip") && err.contains("0.0.1") && err.contains("build-reaper.sh"),
            "{err}"
        );

        let missing = dir.path().join("missing.zip");
        let err = reaper_package(Some(&missing), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--reaper-zip '"), "{err}");
        assert!(err.contains("missing.zip"), "{err}");
    }

    #[tokio::test]
    async fn the_location_is_the_callers_partition_and_account_in_the_clients_region() {
        let at = location(&crate::aws::fake::FakeCloud::new("eu-west-1"))
            .await
            .unwrap();
        assert_eq!(at.partition, "aws");
        assert_eq!(at.account.as_str(), "123456789012");
        assert_eq!(at.region.as_str(), "eu-west-1");
        let err = location(&crate::aws::fake::FakeCloud::new(""))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn stack_comes_from_the_flag_then_the_default() {
        let mut s = Settings::default();
        assert_eq!(stack_name(None, &s).unwrap().name(), "main");
        s.default_stack = Some("dev".into());
        assert_eq!(stack_name(None, &s).unwrap().name(), "dev");
        assert_eq!(stack_name(Some("ops"), &s).unwrap().name(), "ops");
        let err = stack_name(Some("Bad-Name"), &s).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
