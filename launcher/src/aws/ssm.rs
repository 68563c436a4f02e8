//! SSM Parameter Store: the public parameters that name the current AMIs.

use aws_types::SdkConfig;

use crate::error::{Error, Result};

pub trait Parameters: Sync {
    /// Value of an SSM parameter (the public AMI parameters).
    fn parameter(&self, name: &str) -> impl Future<Output = Result<String>> + Send;
}

#[derive(Debug, Clone)]
pub struct AwsParameters {
    ssm: aws_sdk_ssm::Client,
}

impl AwsParameters {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }
}

impl Parameters for AwsParameters {
    async fn parameter(&self, name: &str) -> Result<String> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read SSM parameter '{name}'"), e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| Error::Aws {
                what: format!("Failed to read SSM parameter '{name}'"),
                message: "the parameter has no value".into(),
            })
    }
}

#[cfg(test)]
mod fake {
    use super::Parameters;
    use crate::aws::fake::FakeCloud;
    use crate::error::Result;

    impl Parameters for FakeCloud {
        /// The AMI parameters read: `ami-fake` for Amazon Linux (the default), else an id
        /// naming the parameter's family, so a test sees which one was chosen.
        async fn parameter(&self, name: &str) -> Result<String> {
            self.check()?;
            self.parameters_read.lock().unwrap().push(name.to_string());
            if let Some(v) = self.params.get(name) {
                return Ok(v.clone());
            }
            Ok(if name.contains("/deeplearning/") {
                "ami-dlami".into()
            } else {
                "ami-fake".into()
            })
        }
    }
}
