//! The daemon's side of the control socket.
//!
//! Anyone on the machine may ask for the status (the socket is world-writable, like the
//! information in `lease list`); `complete` and `reload` end or change the lease, so
//! they are accepted only from root or the agent's own user (checked with the peer's
//! credentials, not the socket's mode).
//!
//! The server knows nothing of the loop it serves: `status` is answered by a function
//! it is given, without disturbing the loop, and the rest are wrapped into the loop's
//! own input type by another. So the loop may name the protocol without the server
//! naming the loop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{ControlError, Reply, Request, socket_path};

/// A request line longer than this is refused (nothing legitimate comes close).
const MAX_REQUEST: u64 = 64 * 1024;
/// A client that says nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the loop's answer.
const LOOP_WAIT: Duration = Duration::from_secs(30);

/// Answers `status` from the loop's latest published state.
pub type StatusFn = Arc<dyn Fn() -> Reply + Send + Sync>;
/// Wraps a request and the place for its reply into the loop's input.
pub type Wrap<T> = fn(Request, oneshot::Sender<Reply>) -> T;

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

/// Serves requests until the loop goes away. Status is answered by `status` without
/// disturbing the loop; the rest go to the loop, wrapped by `wrap`.
pub async fn serve<T: Send + 'static>(
    listener: UnixListener,
    status: StatusFn,
    to_loop: mpsc::Sender<T>,
    wrap: Wrap<T>,
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
        let status = status.clone();
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, status, to_loop, wrap, own_uid).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn serve_one<T>(
    stream: UnixStream,
    status: StatusFn,
    to_loop: mpsc::Sender<T>,
    wrap: Wrap<T>,
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
        Ok(Request::Status) => status(),
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if to_loop.send(wrap(req, tx)).await.is_err() {
                Reply::error("the agent is shutting down")
            } else {
                match tokio::time::timeout(LOOP_WAIT, rx).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::request;

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
