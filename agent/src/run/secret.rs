//! Secrets a task needs, read with the instance role when it starts: the Anthropic API
//! key of `claude.api-key-parameter`, from SSM Parameter Store.

use std::fmt::Debug;

use crate::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Failed to read SSM parameter '{name}': {message}")]
    Read { name: String, message: String },
    #[error("SSM parameter '{name}' holds no value")]
    Empty { name: String },
}

/// Reads a secret by name.
pub trait SecretStore: Send + Sync + Debug {
    fn parameter<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, SecretError>>;
}

/// [`SecretStore`] through SSM's `GetParameter` with decryption.
#[derive(Debug, Clone)]
pub struct SdkSsm {
    client: aws_sdk_ssm::Client,
}

impl SdkSsm {
    pub fn new(client: aws_sdk_ssm::Client) -> Self {
        Self { client }
    }
}

impl SecretStore for SdkSsm {
    fn parameter<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, SecretError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| SecretError::Read {
                    name: name.to_string(),
                    // SSM's own words when it answered (ParameterNotFound, AccessDenied);
                    // the whole chain for a transport failure.
                    message: lease_common::sdk_error::render(&e),
                })?;
            out.parameter()
                .and_then(|p| p.value())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| SecretError::Empty {
                    name: name.to_string(),
                })
        })
    }
}
