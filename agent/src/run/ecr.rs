//! Docker credentials for ECR, from the instance role.

use std::fmt::Debug;

use aws_smithy_types::base64;

use crate::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("Failed to get an ECR authorization token for registry '{registry}': {message}")]
    Token { registry: String, message: String },
}

/// A registry's user name and password, as `docker login` takes them. `Debug` leaves
/// the password out.
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

/// Gets Docker credentials for an ECR registry
/// (`<account>.dkr.ecr.<region>.amazonaws.com`).
pub trait EcrLogin: Send + Sync + Debug {
    fn credentials<'a>(&'a self, registry: &'a str)
    -> BoxFuture<'a, Result<Credentials, EcrError>>;
}

/// [`EcrLogin`] through ECR's `GetAuthorizationToken`. Tokens are regional: a
/// registry in another region than the client's is asked through a client for its own.
#[derive(Debug, Clone)]
pub struct SdkEcr {
    client: aws_sdk_ecr::Client,
}

impl SdkEcr {
    pub fn new(client: aws_sdk_ecr::Client) -> Self {
        Self { client }
    }

    /// From shared SDK settings (`&SdkConfig`) or a finished ECR config.
    pub fn from_config(config: impl Into<aws_sdk_ecr::Config>) -> Self {
        Self::new(aws_sdk_ecr::Client::from_conf(config.into()))
    }
}

impl EcrLogin for SdkEcr {
    fn credentials<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, EcrError>> {
        Box::pin(async move {
            let fail = |message: String| EcrError::Token {
                registry: registry.to_string(),
                message,
            };
            let client = match registry.split('.').nth(3) {
                Some(region)
                    if self.client.config().region().map(|r| r.as_ref()) != Some(region) =>
                {
                    let config = self
                        .client
                        .config()
                        .to_builder()
                        .region(aws_sdk_ecr::config::Region::new(region.to_string()))
                        .build();
                    aws_sdk_ecr::Client::from_conf(config)
                }
                _ => self.client.clone(),
            };
            // No registry id: the token opens every ECR registry the role may read,
            // whichever account it belongs to (the parameter is deprecated for that).
            let out = client
                .get_authorization_token()
                .send()
                .await
                .map_err(|e| fail(lease_common::sdk_error::render(&e)))?;
            let token = out
                .authorization_data()
                .first()
                .and_then(|d| d.authorization_token())
                .ok_or_else(|| fail("the answer holds no token".into()))?;
            decode_token(token).map_err(fail)
        })
    }
}

/// An ECR token is base64 of `user:password` (the user is always `AWS`).
pub fn decode_token(token: &str) -> Result<Credentials, String> {
    let bytes = base64::decode(token).map_err(|e| format!("the token is not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "the token is not text".to_string())?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| "the token is not 'user:password'".to_string())?;
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_decode_to_user_and_password() {
        let token = base64::encode("AWS:eyJwYXlsb2FkIjoi:x");
        let c = decode_token(&token).unwrap();
        assert_eq!(c.username, "AWS");
        assert_eq!(c.password, "eyJwYXlsb2FkIjoi:x");
        assert!(!format!("{c:?}").contains("eyJ"));
        assert!(decode_token("!!!").unwrap_err().contains("base64"));
        assert!(
            decode_token(&base64::encode("nocolon"))
                .unwrap_err()
                .contains("user:password")
        );
    }
}
