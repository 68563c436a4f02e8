//! Reading the instance's own tags: through instance metadata when metadata tags are on
//! (no API call, no credentials), else — or when IMDS does not answer — `DescribeTags`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::BoxFuture;
use crate::ec2::Ec2Api;
use crate::imds::{self, Metadata};

#[derive(Debug, thiserror::Error)]
#[error(
    "Failed to read the tags of instance '{instance_id}': through IMDS: {imds}; through DescribeTags: {ec2}"
)]
pub struct TagReadError {
    pub instance_id: String,
    pub imds: String,
    pub ec2: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOrigin {
    Metadata,
    DescribeTags,
}

/// The limits of one read. The routine refresh can afford the default IMDS timeout;
/// the re-read just before acting must fit within the one second allowed.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub imds: Duration,
    pub ec2: Duration,
}

impl Budget {
    pub const ROUTINE: Budget = Budget {
        imds: Duration::from_secs(3),
        ec2: Duration::from_secs(10),
    };
    pub const BEFORE_ACTING: Budget = Budget {
        imds: Duration::from_millis(300),
        ec2: Duration::from_millis(350),
    };
}

/// The tags, and which path they came through.
pub type TagRead = Result<(BTreeMap<String, String>, TagOrigin), TagReadError>;

pub trait TagSource: Send + Sync + std::fmt::Debug {
    fn read(&self, budget: Budget) -> BoxFuture<'_, TagRead>;
}

#[derive(Debug)]
pub struct TagReader {
    pub metadata: Arc<dyn Metadata>,
    pub ec2: Arc<dyn Ec2Api>,
    pub instance_id: String,
}

impl TagSource for TagReader {
    fn read(&self, budget: Budget) -> BoxFuture<'_, TagRead> {
        Box::pin(async move {
            let from_imds =
                tokio::time::timeout(budget.imds, imds::read_tags(self.metadata.as_ref())).await;
            let imds_why = match from_imds {
                Ok(Ok(Some(tags))) => return Ok((tags, TagOrigin::Metadata)),
                Ok(Ok(None)) => "metadata tags are off (404)".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", budget.imds),
            };
            tracing::debug!("tags not read through IMDS ({imds_why}); using DescribeTags");
            match tokio::time::timeout(budget.ec2, self.ec2.describe_tags(&self.instance_id)).await
            {
                Ok(Ok(tags)) => Ok((tags, TagOrigin::DescribeTags)),
                Ok(Err(e)) => Err(TagReadError {
                    instance_id: self.instance_id.clone(),
                    imds: imds_why,
                    ec2: e.to_string(),
                }),
                Err(_) => Err(TagReadError {
                    instance_id: self.instance_id.clone(),
                    imds: imds_why,
                    ec2: format!("timed out after {:?}", budget.ec2),
                }),
            }
        })
    }
}

#[cfg(test)]
pub mod fake {
    //! Tags a test sets and changes; `None` reads as unreadable.
    use std::sync::{Arc, Mutex};

    use super::*;

    pub type TagMap = Arc<Mutex<Option<BTreeMap<String, String>>>>;

    #[derive(Debug)]
    pub struct FakeTags(pub TagMap);

    impl TagSource for FakeTags {
        fn read(&self, _budget: Budget) -> BoxFuture<'_, TagRead> {
            let r = self.0.lock().unwrap().clone();
            Box::pin(async move {
                r.map(|t| (t, TagOrigin::Metadata)).ok_or(TagReadError {
                    instance_id: "i-1".into(),
                    imds: "down".into(),
                    ec2: "down".into(),
                })
            })
        }
    }
}
