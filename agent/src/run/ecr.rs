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

/// [`EcrLogin`] through ECR's `GetAuthorizationToken`. The client must be for the
/// registry's region (tokens are regional).
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
            let fail = |message: String| EcrError::Token {
                registry: registry.to_string(),
                message,
            };
            // The account in the host name: a registry of another account needs its id
            // (the parameter is deprecated but is the only way to name the registry).
            let account = registry.split('.').next().unwrap_or_default();
            #[allow(deprecated)]
            let out = self
                .client
                .get_authorization_token()
                .registry_ids(account)
                .send()
                .await
                .map_err(|e| fail(aws_sdk_ecr::error::DisplayErrorContext(e).to_string()))?;
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
