//! The one writer of the instance's `lease:status` tag (and `lease:task` and
//! `lease:end-reason` beside it), the counterpart of [`crate::tagread`].
//!
//! Two parts decide what the status says and this module writes both:
//! - the lease loop, the statuses that end or interrupt the lease (and `idle` when an
//!   agent first runs), written at once with [`StatusTags::write`];
//! - the task worker, `running`, `uploading` and, back to nothing to do, `idle`, and
//!   only while it takes tasks: its latest wish is written by [`StatusTags::follow`]
//!   at most once a [`TAG_EVERY`], so a stream of short tasks does not turn into a
//!   stream of EC2 calls, and a worker that stopped taking tasks (the lease loop owns
//!   the status from then on) writes nothing more.

use std::sync::Arc;
use std::time::Duration;

use lease_common::tags::{self, NodeStatus};
use tokio::sync::watch;

use crate::ec2::Ec2Api;

/// One tag write's hard limit.
pub const TAG_TIMEOUT: Duration = Duration::from_secs(5);
/// The worker's tags are written at most this often (the latest wish wins).
pub const TAG_EVERY: Duration = Duration::from_secs(1);

/// A status and the task it is about (empty for none), as the worker wishes them.
pub type Wish = Option<(NodeStatus, String)>;

#[derive(Debug, Clone)]
pub struct StatusTags {
    ec2: Arc<dyn Ec2Api>,
    instance_id: String,
}

impl StatusTags {
    pub fn new(ec2: Arc<dyn Ec2Api>, instance_id: String) -> Self {
        Self { ec2, instance_id }
    }

    /// Writes `tags` in the background; the handle ends when the write did.
    pub fn write(&self, tags: Vec<(String, String)>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            this.write_now(tags).await;
        })
    }

    /// Writes `tags` now; true when EC2 took them. Failures are logged.
    async fn write_now(&self, tags: Vec<(String, String)>) -> bool {
        let id = &self.instance_id;
        match tokio::time::timeout(TAG_TIMEOUT, self.ec2.create_tags(id, tags)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!("{e}");
                false
            }
            Err(_) => {
                tracing::warn!("tagging instance '{id}' timed out");
                false
            }
        }
    }

    /// Writes the worker's latest wish, skipping repeats, while `taking` says the
    /// worker takes tasks; ends when the worker is gone.
    pub async fn follow(self, mut wishes: watch::Receiver<Wish>, taking: impl Fn() -> bool) {
        let mut written: Wish = None;
        loop {
            if wishes.changed().await.is_err() {
                return;
            }
            let wish = wishes.borrow_and_update().clone();
            if let Some((status, task)) = wish
                && written.as_ref() != Some(&(status, task.clone()))
                && taking()
            {
                let tags = vec![
                    (tags::STATUS.to_string(), status.to_string()),
                    (tags::TASK.to_string(), task.clone()),
                ];
                if self.write_now(tags).await {
                    written = Some((status, task));
                }
            }
            tokio::time::sleep(TAG_EVERY).await;
        }
    }
}
