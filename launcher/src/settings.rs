//! The user's control-plane settings: what `lease setup` made, one section per stack
//! and region, and which stack is the default. Every other command reads its queue,
//! bucket and tables from here when no flag or environment variable names them.
//!
//! The file is `$LEASE_CONFIG`, else `$XDG_CONFIG_HOME/lease/config.yaml`, else
//! `~/.config/lease/config.yaml`. It is rewritten atomically (a temporary file in the
//! same folder, renamed over the old one), so an interrupted write never leaves half
//! a file behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use lease_common::stack::ClaudeAuth;
use serde::{Deserialize, Serialize};

/// Overrides the settings file's path (tests, and people who keep several).
pub const CONFIG_ENV: &str = "LEASE_CONFIG";
/// Picks a stack other than the default for every command.
pub const STACK_ENV: &str = "LEASE_STACK";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("Failed to read lease settings '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Invalid lease settings in '{path}': {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Failed to write lease settings '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("No place for the lease settings file: set {CONFIG_ENV}, XDG_CONFIG_HOME or HOME")]
    NoHome,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// The stack commands use when `LEASE_STACK` names none: the first one set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_stack: Option<String>,
    #[serde(default)]
    pub stacks: Vec<StackOutputs>,
}

/// What `lease setup` created for one stack in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StackOutputs {
    pub stack: String,
    pub region: String,
    pub account: String,
    pub command_topic_arn: String,
    pub bus_topic_arn: String,
    /// Pool name to its queues.
    pub pools: BTreeMap<String, PoolOutputs>,
    pub events_queue_url: String,
    pub bucket: String,
    pub nodes_table: String,
    pub tasks_table: String,
    pub agent_role: String,
    pub instance_profile: String,
    /// S3 keys of the agent packages uploaded, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_packages: Vec<String>,
    /// The backstop reaper's Lambda function, once deployed (files written before the
    /// reaper was part of setup have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaper_function_arn: Option<String>,
    /// How Claude Code tasks on the stack's nodes authenticate (`lease setup
    /// --claude-auth`); the agents' role holds what it needs. Absent means none.
    #[serde(default, skip_serializing_if = "ClaudeAuth::is_none")]
    pub claude_auth: ClaudeAuth,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PoolOutputs {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

/// Where the settings file is, given how to read an environment variable.
pub fn settings_path(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, SettingsError> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set(CONFIG_ENV) {
        return Ok(PathBuf::from(p));
    }
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if let Some(x) = set("XDG_CONFIG_HOME").map(PathBuf::from)
        && x.is_absolute()
    {
        return Ok(x.join("lease").join("config.yaml"));
    }
    let home = set("HOME").ok_or(SettingsError::NoHome)?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("lease")
        .join("config.yaml"))
}

/// The settings file of this process's environment.
pub fn default_path() -> Result<PathBuf, SettingsError> {
    settings_path(|k| std::env::var_os(k))
}

impl Settings {
    /// Reads the file; a missing file is empty settings (nothing set up yet).
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn render(&self) -> Result<String, serde_yaml_ng::Error> {
        let body = serde_yaml_ng::to_string(self)?;
        Ok(format!(
            "# Written by `lease setup` and `lease teardown`: the control plane of each stack.\n{body}"
        ))
    }

    /// Writes the file atomically, creating its folder.
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let write_err = |source| SettingsError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Rendered first: a value that cannot be written must not replace the file.
        let text = self
            .render()
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        std::fs::create_dir_all(&dir).map_err(write_err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.yaml".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// Adds or replaces the section of `outputs`' stack and region. The first stack set
    /// up becomes the default.
    pub fn upsert(&mut self, outputs: StackOutputs) {
        if self.default_stack.is_none() {
            self.default_stack = Some(outputs.stack.clone());
        }
        match self
            .stacks
            .iter_mut()
            .find(|s| s.stack == outputs.stack && s.region == outputs.region)
        {
            Some(s) => *s = outputs,
            None => self.stacks.push(outputs),
        }
    }

    /// Removes a section; when no section of the default stack remains, the default
    /// moves to the first stack left (or none).
    pub fn remove(&mut self, stack: &str, region: &str) -> bool {
        let before = self.stacks.len();
        self.stacks
            .retain(|s| !(s.stack == stack && s.region == region));
        let removed = self.stacks.len() != before;
        if let Some(d) = &self.default_stack
            && !self.stacks.iter().any(|s| &s.stack == d)
        {
            self.default_stack = self.stacks.first().map(|s| s.stack.clone());
        }
        removed
    }

    pub fn section(&self, stack: &str, region: &str) -> Option<&StackOutputs> {
        self.stacks
            .iter()
            .find(|s| s.stack == stack && s.region == region)
    }

    /// The section commands use in `region`: `chosen` (from `LEASE_STACK`) or the
    /// default stack.
    pub fn active(&self, chosen: Option<&str>, region: &str) -> Option<&StackOutputs> {
        let stack = chosen.or(self.default_stack.as_deref())?;
        self.section(stack, region)
    }
}

impl StackOutputs {
    /// The queue of `pool` (default: the default pool).
    pub fn pool(&self, pool: Option<&str>) -> Option<&PoolOutputs> {
        self.pools
            .get(pool.unwrap_or(lease_common::stack::DEFAULT_POOL))
    }

    pub fn pool_names(&self) -> String {
        self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The active stack's section for `region`, read from this process's settings file;
/// `None` when nothing is set up there.
pub fn active_stack(region: &str) -> Result<Option<StackOutputs>, SettingsError> {
    let path = default_path()?;
    let settings = Settings::load(&path)?;
    let chosen = std::env::var(STACK_ENV).ok().filter(|s| !s.is_empty());
    Ok(settings.active(chosen.as_deref(), region).cloned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outputs(stack: &str, region: &str) -> StackOutputs {
        StackOutputs {
            stack: stack.into(),
            region: region.into(),
            account: "123456789012".into(),
            command_topic_arn: format!("arn:aws:sns:{region}:123456789012:lease-{stack}-commands"),
            bus_topic_arn: format!("arn:aws:sns:{region}:123456789012:lease-{stack}-bus"),
            pools: [(
                "default".to_string(),
                PoolOutputs {
                    queue_url: "http://q/default".into(),
                    dead_letter_queue_url: "http://q/dlq".into(),
                },
            )]
            .into(),
            events_queue_url: "http://q/events".into(),
            bucket: "b".into(),
            nodes_table: format!("lease-{stack}-nodes"),
            tasks_table: format!("lease-{stack}-tasks"),
            agent_role: format!("lease-{stack}-agent"),
            instance_profile: format!("lease-{stack}-agent"),
            agent_packages: vec![],
            reaper_function_arn: None,
            claude_auth: Default::default(),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn path_follows_lease_config_then_xdg_then_home() {
        let p = settings_path(env(&[("LEASE_CONFIG", "/tmp/x.yaml"), ("HOME", "/home/a")]));
        assert_eq!(p.unwrap(), PathBuf::from("/tmp/x.yaml"));
        let p = settings_path(env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/a")]));
        assert_eq!(p.unwrap(), PathBuf::from("/xdg/lease/config.yaml"));
        // A relative XDG_CONFIG_HOME is ignored, as the spec says.
        let p = settings_path(env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/a")]));
        assert_eq!(
            p.unwrap(),
            PathBuf::from("/home/a/.config/lease/config.yaml")
        );
        assert!(matches!(
            settings_path(env(&[])),
            Err(SettingsError::NoHome)
        ));
    }

    #[test]
    fn sections_are_per_stack_and_region_and_the_first_is_default() {
        let mut s = Settings::default();
        s.upsert(outputs("main", "us-east-1"));
        s.upsert(outputs("main", "eu-west-1"));
        s.upsert(outputs("dev", "us-east-1"));
        assert_eq!(s.default_stack.as_deref(), Some("main"));
        assert_eq!(s.stacks.len(), 3);
        let mut changed = outputs("main", "us-east-1");
        changed.bucket = "other".into();
        s.upsert(changed);
        assert_eq!(s.stacks.len(), 3);
        assert_eq!(s.active(None, "us-east-1").unwrap().bucket, "other");
        assert_eq!(s.active(Some("dev"), "us-east-1").unwrap().stack, "dev");
        assert!(s.active(Some("dev"), "eu-west-1").is_none());

        assert!(s.remove("main", "us-east-1"));
        assert_eq!(s.default_stack.as_deref(), Some("main"));
        assert!(s.remove("main", "eu-west-1"));
        assert_eq!(s.default_stack.as_deref(), Some("dev"));
        assert!(!s.remove("main", "eu-west-1"));
        assert!(s.remove("dev", "us-east-1"));
        assert_eq!(s.default_stack, None);
    }

    #[test]
    fn saves_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("config.yaml");
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let mut s = Settings::default();
        s.upsert(outputs("main", "us-east-1"));
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [OsString::from("config.yaml")],
            "no temporary file left"
        );
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "default-stak: main\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.yaml") && err.contains("default-stak"),
            "{err}"
        );
    }
}
