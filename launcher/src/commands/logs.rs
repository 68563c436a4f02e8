//! `lease logs ID [-f]`: a task's log from S3; `-f` keeps following it as the agent
//! uploads more, like `tail -f`, until interrupted.

use std::io::Write;
use std::time::Duration;

use lease_common::layout::log_key;

use crate::bucket::Bucket;
use crate::cli::LogsArgs;
use crate::error::{Error, Result};

/// The agent uploads the log every few seconds; polling faster only costs requests.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

pub async fn run<B: Bucket>(b: &B, args: &LogsArgs) -> Result<()> {
    let bucket = args
        .bucket
        .as_deref()
        .ok_or_else(crate::commands::no_bucket)?;
    let key = log_key(&args.task_id);
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        if let Some(bytes) = b.get_from(bucket, &key, offset).await? {
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("Failed to write to stdout", e))?;
            offset += bytes.len() as u64;
        } else if offset == 0 && !args.follow {
            return Err(Error::NotFound(format!(
                "No log for task '{}' at s3://{}/{key} (not started yet, or no such task)",
                args.task_id, bucket
            )));
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
