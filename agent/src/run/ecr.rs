//! Logging Docker in to ECR with the instance role's credentials.

use std::fmt::Debug;

use crate::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("Failed to get an ECR authorization token for registry '{registry}': {message}")]
    Token { registry: String, message: String },
}

/// A registry's user name and password, as `docker login` takes them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Gets Docker credentials for an ECR registry.
pub trait EcrLogin: Send + Sync + Debug {
    fn credentials<'a>(&'a self, registry: &'a str)
    -> BoxFuture<'a, Result<Credentials, EcrError>>;
}

/// [`EcrLogin`] through `GetAuthorizationToken`.
#[derive(Debug, Clone)]
pub struct SdkEcr {
    client: aws_sdk_ecr::Client,
}

impl SdkEcr {
    pub fn new(client: aws_sdk_ecr::Client) -> Self {
        Self { client }
    }
}

impl EcrLogin for SdkEcr {
    fn credentials<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, EcrError>> {
        Box::pin(async move {
            let _ = &self.client;
            Err(EcrError::Token {
                registry: registry.to_string(),
                message: "not implemented yet".into(),
            })
        })
    }
}
