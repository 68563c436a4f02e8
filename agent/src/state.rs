//! State that must survive a restart of the agent: who the instance is, the deadline
//! being enforced, and which notices were already handled. Written atomically (a
//! temporary file renamed over the old one), so a SIGKILL mid-write leaves the old
//! state, never half a file.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::deadline::DeadlineSource;
use crate::imds::InstanceIdentity;

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Failed to write agent state '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub v: u32,
    pub identity: InstanceIdentity,
    pub deadline: DateTime<Utc>,
    pub deadline_source: DeadlineSource,
    /// The spot `instance-action` notice already handled (raw body), so a restart does
    /// not publish it twice.
    #[serde(default)]
    pub spot_notice: Option<String>,
    /// The rebalance notice already handled (raw body).
    #[serde(default)]
    pub rebalance_notice: Option<String>,
}

impl SavedState {
    pub fn new(
        identity: InstanceIdentity,
        deadline: DateTime<Utc>,
        deadline_source: DeadlineSource,
    ) -> Self {
        Self {
            v: STATE_VERSION,
            identity,
            deadline,
            deadline_source,
            spot_notice: None,
            rebalance_notice: None,
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// The saved state, or `None` when there is none or it cannot be read (logged: a
/// corrupt file must not stop the agent, which rebuilds it from IMDS and tags).
pub fn load(state_dir: &Path) -> Option<SavedState> {
    let p = path(state_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring agent state '{}': {e}", p.display());
            return None;
        }
    };
    match serde_json::from_str::<SavedState>(&text) {
        Ok(s) if s.v == STATE_VERSION => Some(s),
        Ok(s) => {
            tracing::warn!("ignoring agent state '{}': version {}", p.display(), s.v);
            None
        }
        Err(e) => {
            tracing::warn!("ignoring agent state '{}': {e}", p.display());
            None
        }
    }
}

pub fn save(state_dir: &Path, state: &SavedState) -> Result<(), StateError> {
    let p = path(state_dir);
    let err = |source| StateError::Write {
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &p).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let s = SavedState::new(
            InstanceIdentity {
                instance_id: "i-1".into(),
                region: "us-east-1".into(),
                instance_type: "t3.micro".into(),
                market: "spot".into(),
                launched_at: None,
            },
            Utc::now(),
            DeadlineSource::Tags,
        );
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()), Some(s));
        std::fs::write(path(dir.path()), "{not json").unwrap();
        assert!(load(dir.path()).is_none());
    }
}
