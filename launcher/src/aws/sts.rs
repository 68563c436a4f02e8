//! STS: who the caller is, which names the owner of what `lease` launches.

use aws_types::SdkConfig;

use crate::error::{Error, Result};

pub trait Identity: Sync {
    /// The caller's identity ARN.
    fn caller_arn(&self) -> impl Future<Output = Result<String>> + Send;
}

#[derive(Debug, Clone)]
pub struct AwsIdentity {
    sts: aws_sdk_sts::Client,
}

impl AwsIdentity {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(config),
        }
    }
}

impl Identity for AwsIdentity {
    async fn caller_arn(&self) -> Result<String> {
        let out = self.sts.get_caller_identity().send().await.map_err(|e| {
            Error::aws(
                "Failed to find your AWS identity (sts:GetCallerIdentity)",
                e,
            )
        })?;
        out.arn().map(str::to_string).ok_or_else(|| Error::Aws {
            what: "Failed to find your AWS identity".into(),
            message: "GetCallerIdentity returned no ARN".into(),
        })
    }
}

#[cfg(test)]
mod fake {
    use super::Identity;
    use crate::aws::fake::FakeCloud;
    use crate::error::Result;

    impl Identity for FakeCloud {
        async fn caller_arn(&self) -> Result<String> {
            self.check()?;
            Ok("arn:aws:iam::123456789012:user/tester".into())
        }
    }
}
