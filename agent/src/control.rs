//! The control socket, `<runtime-dir>/leased.sock`: `leased status`, `leased complete`
//! and `leased reload` talk to the running daemon through it. One JSON request line,
//! one JSON reply line.
//!
//! Anyone on the machine may ask for the status (the socket is world-writable, like the
//! information in `lease list`); `complete` and `reload` end or change the lease, so
//! they are accepted only from root or the agent's own user (checked with the peer's
//! credentials, not the socket's mode).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::decide::{Input, Snapshot};

pub const SOCKET_NAME: &str = "leased.sock";
/// A request line longer than this is refused (nothing legitimate comes close).
const MAX_REQUEST: u64 = 64 * 1024;
/// A client that says nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
    fn privileged(&self) -> bool {
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

    pub fn status(s: &Snapshot, now: DateTime<Utc>) -> Self {
        let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "time_left_secs".into(),
                serde_json::Value::from(s.time_left(now).num_seconds()),
            );
            o.insert("summary".into(), serde_json::Value::from(s.line(now)));
            o.insert(
                "now".into(),
                serde_json::Value::from(lease_common::tags::render_time(now)),
            );
        }
        Self {
            ok: true,
            message: None,
            error: None,
            status: Some(v),
        }
    }
}

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

/// Binds the socket, replacing a stale one left by a killed agent but never one a
/// live agent answers on.
pub async fn bind(runtime_dir: &Path) -> Result<UnixListener, ControlError> {
    std::fs::create_dir_all(runtime_dir).map_err(|source| ControlError::Dir {
        path: runtime_dir.to_path_buf(),
        source,
    })?;
    let path = socket_path(runtime_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|source| ControlError::Bind {
        path: path.clone(),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        ControlError::Bind {
            path: path.clone(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves requests until the loop goes away. Status is answered from the latest
/// snapshot without disturbing the loop; the rest go to the loop.
pub async fn serve(
    listener: UnixListener,
    snapshot: watch::Receiver<Snapshot>,
    to_loop: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
) {
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if to_loop.is_closed() {
            return;
        }
        let snapshot = snapshot.clone();
        let to_loop = to_loop.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, snapshot, to_loop, clock, own_uid).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn serve_one(
    stream: UnixStream,
    snapshot: watch::Receiver<Snapshot>,
    to_loop: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
    own_uid: Option<u32>,
) -> Result<(), String> {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| "no request in time".to_string())?
        .map_err(|e| e.to_string())?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Reply::error(format!("bad request: {e}")),
        Ok(req) if req.privileged() && !(peer_uid == Some(0) || peer_uid == own_uid) => {
            Reply::error("permission denied: only root or the agent's user may do that")
        }
        Ok(Request::Status) => {
            let s = snapshot.borrow().clone();
            Reply::status(&s, clock.now())
        }
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if to_loop.send(Input::Control(req, tx)).await.is_err() {
                Reply::error("the agent is shutting down")
            } else {
                match tokio::time::timeout(Duration::from_secs(30), rx).await {
                    Ok(Ok(r)) => r,
                    _ => Reply::error("the agent did not answer"),
                }
            }
        }
    };
    let mut out = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
    out.push('\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(out.as_bytes()))
        .await
        .map_err(|_| "reply not taken in time".to_string())?
        .map_err(|e| e.to_string())
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
    tokio::time::timeout(
        Duration::from_secs(40),
        BufReader::new(read).read_line(&mut answer),
    )
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

    #[tokio::test]
    async fn a_live_socket_is_never_replaced_and_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let first = bind(dir.path()).await.unwrap();
        let err = bind(dir.path()).await.unwrap_err();
        assert!(matches!(err, ControlError::AlreadyRunning(_)), "{err}");
        drop(first);
        // The file is left behind, as by a SIGKILL; nobody answers on it.
        assert!(socket_path(dir.path()).exists());
        bind(dir.path()).await.unwrap();
        let err = request(&dir.path().join("elsewhere"), &Request::Status)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
