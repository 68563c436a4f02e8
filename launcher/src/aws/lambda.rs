//! Lambda, as the reaper's deployment uses it: one function, read, created, updated
//! (configuration and code separately) and deleted.

use std::collections::HashMap;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, Runtime};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::StackTag;
use crate::error::{Error, Result};

/// A function's configuration, as wanted or as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub runtime: String,
    pub handler: String,
    pub role_arn: String,
    pub architecture: String,
    pub timeout: i32,
    pub memory: i32,
    pub env: HashMap<String, String>,
    pub code_sha256: String,
}

/// Where a function is in applying its last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionState {
    /// `Pending`, `Active`, `Failed`, … as Lambda spells it.
    pub state: Option<String>,
    /// `InProgress`, `Successful`, `Failed`.
    pub last_update: Option<String>,
    /// Lambda's reason for a failed state or update.
    pub reason: Option<String>,
}

/// Why a CreateFunction failed.
#[derive(Debug)]
pub enum CreateError {
    /// The execution role is not yet visible to Lambda (IAM propagates in seconds):
    /// worth retrying.
    RoleNotAssumable(Error),
    Other(Error),
}

/// What the reaper's deployment does with Lambda.
pub trait Functions: Sync {
    /// `None` when there is no such function.
    fn function(&self, name: &str) -> impl Future<Output = Result<Option<FunctionSpec>>> + Send;
    fn state(&self, name: &str) -> impl Future<Output = Result<FunctionState>> + Send;
    fn create(
        &self,
        name: &str,
        description: &str,
        spec: &FunctionSpec,
        zip: &[u8],
        tag: &StackTag,
    ) -> impl Future<Output = std::result::Result<(), CreateError>> + Send;
    /// Everything but the code and the architecture.
    fn update_configuration(
        &self,
        name: &str,
        spec: &FunctionSpec,
    ) -> impl Future<Output = Result<()>> + Send;
    fn update_code(
        &self,
        name: &str,
        architecture: &str,
        zip: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// `false` when there was nothing to delete.
    fn delete(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
}

fn read(c: &aws_sdk_lambda::types::FunctionConfiguration) -> FunctionSpec {
    FunctionSpec {
        runtime: c
            .runtime()
            .map(|r| r.as_str().to_string())
            .unwrap_or_default(),
        handler: c.handler().unwrap_or_default().to_string(),
        role_arn: c.role().unwrap_or_default().to_string(),
        architecture: c
            .architectures()
            .first()
            .map(|a| a.as_str().to_string())
            // Lambda's default when none was given.
            .unwrap_or_else(|| "x86_64".into()),
        timeout: c.timeout().unwrap_or_default(),
        memory: c.memory_size().unwrap_or_default(),
        env: c
            .environment()
            .and_then(|e| e.variables())
            .cloned()
            .unwrap_or_default(),
        code_sha256: c.code_sha256().unwrap_or_default().to_string(),
    }
}

fn environment(spec: &FunctionSpec) -> Environment {
    Environment::builder()
        .set_variables(Some(spec.env.clone()))
        .build()
}

impl Functions for Client {
    async fn function(&self, name: &str) -> Result<Option<FunctionSpec>> {
        match self.get_function().function_name(name).send().await {
            Ok(out) => Ok(out.configuration().map(read)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to read Lambda function '{name}'"),
                e,
            )),
        }
    }

    async fn state(&self, name: &str) -> Result<FunctionState> {
        let out = self
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read Lambda function '{name}'"), e))?;
        Ok(FunctionState {
            state: out.state().map(|s| s.as_str().to_string()),
            last_update: out.last_update_status().map(|s| s.as_str().to_string()),
            reason: out
                .last_update_status_reason()
                .or(out.state_reason())
                .map(str::to_string),
        })
    }

    async fn create(
        &self,
        name: &str,
        description: &str,
        spec: &FunctionSpec,
        zip: &[u8],
        tag: &StackTag,
    ) -> std::result::Result<(), CreateError> {
        let result = self
            .create_function()
            .function_name(name)
            .description(description)
            .runtime(Runtime::from(spec.runtime.as_str()))
            .handler(&spec.handler)
            .role(&spec.role_arn)
            .architectures(spec.architecture.as_str().into())
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(environment(spec))
            .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
            .tags(&tag.0, &tag.1)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let not_yet = e
                    .as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_value_exception())
                    && e.message().is_some_and(|m| m.contains("cannot be assumed"));
                let err = Error::aws(format!("Failed to create Lambda function '{name}'"), e);
                Err(if not_yet {
                    CreateError::RoleNotAssumable(err)
                } else {
                    CreateError::Other(err)
                })
            }
        }
    }

    async fn update_configuration(&self, name: &str, spec: &FunctionSpec) -> Result<()> {
        self.update_function_configuration()
            .function_name(name)
            .runtime(Runtime::from(spec.runtime.as_str()))
            .handler(&spec.handler)
            .role(&spec.role_arn)
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(environment(spec))
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to update Lambda function '{name}'"), e))?;
        Ok(())
    }

    async fn update_code(&self, name: &str, architecture: &str, zip: &[u8]) -> Result<()> {
        self.update_function_code()
            .function_name(name)
            .architectures(architecture.into())
            .zip_file(Blob::new(zip))
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to upload the code of Lambda function '{name}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        match self.delete_function().function_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to delete Lambda function '{name}'"),
                e,
            )),
        }
    }
}
