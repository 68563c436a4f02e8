//! Shipping a running task's log: re-uploaded while it changes, and once at the end.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{UploadError, Uploader};

/// What tells a log changed: logs are appended to, so the length almost always moves;
/// the modification time catches a rewrite of the same length.
fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

pub async fn follow(
    up: &Uploader,
    path: &Path,
    key: &str,
    every: Duration,
    done: impl Future<Output = ()>,
) -> Result<(), UploadError> {
    tokio::pin!(done);
    let mut sent = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut done => break,
            _ = tick.tick() => {
                let now = stamp(path);
                // No file yet (the task has not written) or nothing new: nothing to send.
                if now.is_none() || now == sent {
                    continue;
                }
                match up.upload_log(path, key).await {
                    Ok(()) => sent = now,
                    Err(e) => tracing::warn!("{e}; trying again in {every:?}"),
                }
            }
        }
    }
    up.upload_log(path, key).await
}
