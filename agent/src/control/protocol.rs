//! The control socket's wire protocol, shared by the daemon and the `leased status`,
//! `complete` and `reload` clients: one JSON request line, one JSON reply line, at
//! `<runtime-dir>/leased.sock`. A leaf: it knows nothing of the loop that answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const SOCKET_NAME: &str = "leased.sock";
/// How long the client waits for an answer: longer than the server's 30 s wait for the
/// loop, so the server's own "did not answer" reaches the user.
const CLIENT_WAIT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Failed to create the control socket directory '{path}': {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Another leased is already running (it answers on '{0}')")]
    AlreadyRunning(PathBuf),
    #[error("Failed to bind the control socket '{path}': {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("leased is not running (nothing answers on '{path}'): {source}")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Failed to talk to leased on '{path}': {reason}")]
    Io { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Complete {
        #[serde(default)]
        failed: bool,
        #[serde(default)]
        message: Option<String>,
    },
    Reload,
}

impl Request {
    /// `complete` and `reload` end or change the lease: only root or the agent's own
    /// user may send them.
    pub fn privileged(&self) -> bool {
        !matches!(self, Request::Status)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`: the snapshot plus `time_left_secs` and a one-line summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl Reply {
    pub fn message(m: &str) -> Self {
        Self {
            ok: true,
            message: Some(m.to_string()),
            error: None,
            status: None,
        }
    }

    pub fn error(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: None,
            error: Some(e.into()),
            status: None,
        }
    }

    /// `status`'s answer; the daemon renders its snapshot into `status`.
    pub fn status(status: serde_json::Value) -> Self {
        Self {
            ok: true,
            message: None,
            error: None,
            status: Some(status),
        }
    }
}

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

/// The client side, for `leased status|complete|reload`.
pub async fn request(runtime_dir: &Path, req: &Request) -> Result<Reply, ControlError> {
    let path = socket_path(runtime_dir);
    let io = |reason: String| ControlError::Io {
        path: path.clone(),
        reason,
    };
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.clone(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| io(e.to_string()))?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| io(e.to_string()))?;
    let mut answer = String::new();
    tokio::time::timeout(CLIENT_WAIT, BufReader::new(read).read_line(&mut answer))
        .await
        .map_err(|_| io("no answer in 40s".into()))?
        .map_err(|e| io(e.to_string()))?;
    serde_json::from_str(answer.trim()).map_err(|e| io(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Complete {
            failed: true,
            message: Some("done".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"cmd":"complete","failed":true,"message":"done"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"complete"}"#).unwrap(),
            Request::Complete {
                failed: false,
                message: None
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(!Request::Status.privileged());
        assert!(Request::Reload.privileged());
    }
}
