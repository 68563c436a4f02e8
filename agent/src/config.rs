//! Where the agent's settings come from: flag > `LEASED_*` environment variable (both
//! through clap) > `/etc/leased/config.yaml` > the default. The file's schema lives in
//! `lease_common::config`; this adds the command-line layer on top.

use std::path::{Path, PathBuf};

use lease_common::HumanDuration;
use lease_common::config::{AgentConfig, ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_RUNTIME_DIR};

/// What `leased run` was given on the command line or in `LEASED_*` variables. `None`
/// (or `false`) means "not given": the file or the default decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub queue_url: Option<String>,
    pub topic_arn: Option<String>,
    pub log_bucket: Option<String>,
    pub node_id: Option<String>,
    pub node_name: Option<String>,
    pub heartbeat_interval: Option<HumanDuration>,
    pub mock_mode: bool,
    pub profile: Option<String>,
    pub region: Option<String>,
}

/// Names the command line in errors, where a file path would otherwise go.
pub const COMMAND_LINE: &str = "command line / LEASED_* environment";

impl Overrides {
    pub fn apply(&self, c: &mut AgentConfig) {
        let set = |dst: &mut Option<String>, src: &Option<String>| {
            if src.is_some() {
                dst.clone_from(src);
            }
        };
        set(&mut c.queue_url, &self.queue_url);
        set(&mut c.topic_arn, &self.topic_arn);
        set(&mut c.log_bucket, &self.log_bucket);
        set(&mut c.node_id, &self.node_id);
        set(&mut c.node_name, &self.node_name);
        set(&mut c.profile, &self.profile);
        set(&mut c.region, &self.region);
        if let Some(h) = self.heartbeat_interval {
            c.heartbeat_interval = h;
        }
        if self.mock_mode {
            c.mock_mode = true;
        }
    }
}

/// The config file to read: the one named (which must then exist), else the default
/// path when it exists, else none (all defaults).
pub fn config_file(named: Option<&Path>) -> Option<PathBuf> {
    match named {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            p.exists().then_some(p)
        }
    }
}

/// Where the control socket is, for `leased status|complete|reload`: the file's
/// `runtime-dir`, read leniently. A config with a mistake elsewhere must not stop an
/// operator from asking the running daemon what it enforces (or from `reload` being
/// refused by the daemon with the mistake named).
pub fn runtime_dir(file: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let Some(file) = file else {
        return Ok(PathBuf::from(DEFAULT_RUNTIME_DIR));
    };
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_default();
    Ok(value
        .get("runtime-dir")
        .and_then(|v| v.as_str())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR), PathBuf::from))
}

/// Loads the file (if any), applies the overrides and validates the result.
pub fn resolve(file: Option<&Path>, overrides: &Overrides) -> Result<AgentConfig, ConfigError> {
    let mut config = match file {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    overrides.apply(&mut config);
    // Values from flags are checked like the file's, naming the key; the "file" is then
    // the command line.
    config.validate(Path::new(COMMAND_LINE))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "heartbeat-interval: 1m\nnode-name: from-file\nregion: eu-west-1\n",
        )
        .unwrap();
        let o = Overrides {
            node_name: Some("from-flag".into()),
            ..Default::default()
        };
        let c = resolve(Some(&file), &o).unwrap();
        assert_eq!(c.node_name.as_deref(), Some("from-flag"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.heartbeat_interval.as_secs(), 60);
        assert_eq!(c.default_ttl.as_secs(), 4 * 3600);
    }

    #[test]
    fn the_socket_is_found_even_in_a_config_with_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "runtime-dir: /tmp/x\nidle:\n  cpu-percent: 400\n").unwrap();
        assert_eq!(runtime_dir(Some(&file)).unwrap(), PathBuf::from("/tmp/x"));
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            runtime_dir(Some(&file)).unwrap(),
            PathBuf::from(DEFAULT_RUNTIME_DIR)
        );
        assert!(runtime_dir(Some(&dir.path().join("nope.yaml"))).is_err());
    }

    #[test]
    fn errors_name_the_file_or_the_command_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "spot-poll-interval: 0s\n").unwrap();
        let err = resolve(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.yaml") && err.contains("spot-poll-interval"),
            "{err}"
        );
        let o = Overrides {
            topic_arn: Some("bus".into()),
            ..Default::default()
        };
        let err = resolve(None, &o).unwrap_err().to_string();
        assert!(
            err.contains("topic-arn") && err.contains("command line"),
            "{err}"
        );
        let err = resolve(
            Some(&dir.path().join("missing.yaml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.yaml"), "{err}");
    }
}
