//! CloudWatch Logs, only to delete the reaper function's log group at teardown (Lambda
//! creates it, untagged, on the function's first run).

use aws_sdk_cloudwatchlogs::Client;

use crate::error::{Error, Result};

pub trait LogGroups: Sync {
    /// `false` when there was nothing to delete.
    fn delete_log_group(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
}

impl LogGroups for Client {
    async fn delete_log_group(&self, name: &str) -> Result<bool> {
        match self.delete_log_group().log_group_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to delete log group '{name}'"),
                e,
            )),
        }
    }
}
