//! The reaper's Lambda function: its configuration as wanted ([`FunctionSpec`]),
//! created, updated where it differs (configuration and code separately, each once the
//! last change is applied), or deleted.

use std::collections::HashMap;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, LastUpdateStatus, Runtime, State};
use lease_common::stack::{Location, Stack};
use lease_reaper::ReaperConfig;
use lease_reaper::function::{ENV_GRACE, ENV_MAX_AGE};

use super::{Change, DeployClients, DeployError, FUNCTION, ReaperPackage, STACK_TAG, aws_error};

/// A run over a large fleet makes one call per due instance; five minutes (the period)
/// is far more than that needs, and runs never pile up.
const FUNCTION_TIMEOUT_SECS: i32 = 300;
/// The smallest size: the reaper holds one page of instances at a time.
const FUNCTION_MEMORY_MB: i32 = 128;
/// `provided.*` runtimes run the `bootstrap` file and ignore the handler; Lambda still
/// requires one, and this is the convention.
const HANDLER: &str = "bootstrap";

/// The function's configuration as wanted, and as read back.
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

impl FunctionSpec {
    pub fn wanted(
        stack: &Stack,
        at: &Location,
        package: &ReaperPackage,
        config: &ReaperConfig,
    ) -> Self {
        Self {
            runtime: Runtime::Providedal2023.as_str().to_string(),
            handler: HANDLER.into(),
            role_arn: at.iam_arn(&format!("role/{}", stack.reaper_function())),
            architecture: package.architecture().as_str().into(),
            timeout: FUNCTION_TIMEOUT_SECS,
            memory: FUNCTION_MEMORY_MB,
            env: HashMap::from([
                (ENV_GRACE.to_string(), config.grace.to_string()),
                (ENV_MAX_AGE.to_string(), config.max_age.to_string()),
            ]),
            code_sha256: package.code_sha256(),
        }
    }

    fn read(c: &aws_sdk_lambda::types::FunctionConfiguration) -> Self {
        Self {
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

    /// Whether the configuration (UpdateFunctionConfiguration) and the code or its
    /// architecture (UpdateFunctionCode) differ from `self`.
    pub fn differences(&self, current: &FunctionSpec) -> (bool, bool) {
        let config = self.runtime != current.runtime
            || self.handler != current.handler
            || self.role_arn != current.role_arn
            || self.timeout != current.timeout
            || self.memory != current.memory
            || self.env != current.env;
        let code =
            self.code_sha256 != current.code_sha256 || self.architecture != current.architecture;
        (config, code)
    }
}

/// Waits until the function accepts the next change (Lambda refuses one while the last
/// is still being applied).
async fn wait_ready(c: &DeployClients, name: &str) -> Result<(), DeployError> {
    let start = std::time::Instant::now();
    loop {
        let out = c
            .lambda
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .map_err(|e| aws_error("read", FUNCTION, name, &e))?;
        let state = out.state();
        let update = out.last_update_status();
        if update == Some(&LastUpdateStatus::Failed) || state == Some(&State::Failed) {
            return Err(DeployError::NotReady {
                name: name.to_string(),
                reason: out
                    .last_update_status_reason()
                    .or(out.state_reason())
                    .unwrap_or("failed")
                    .to_string(),
            });
        }
        if update != Some(&LastUpdateStatus::InProgress) && state != Some(&State::Pending) {
            return Ok(());
        }
        if start.elapsed() > c.pace.ready_limit {
            return Err(DeployError::NotReady {
                name: name.to_string(),
                reason: format!("still updating after {:?}", c.pace.ready_limit),
            });
        }
        tokio::time::sleep(c.pace.poll).await;
    }
}

async fn create_function(
    c: &DeployClients,
    stack: &Stack,
    name: &str,
    spec: &FunctionSpec,
    package: &ReaperPackage,
) -> Result<(), DeployError> {
    let mut waits = c.pace.role_retries.iter();
    loop {
        let result = c
            .lambda
            .create_function()
            .function_name(name)
            .description("lease backstop reaper: ends managed instances whose agent did not")
            .runtime(Runtime::Providedal2023)
            .handler(HANDLER)
            .role(&spec.role_arn)
            .architectures(spec.architecture.as_str().into())
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(
                Environment::builder()
                    .set_variables(Some(spec.env.clone()))
                    .build(),
            )
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(package.bytes()))
                    .build(),
            )
            .tags(STACK_TAG, stack.name())
            .send()
            .await;
        match result {
            Ok(_) => return Ok(()),
            // A role created moments ago is not yet visible to Lambda.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_value_exception())
                    && lease_common::sdk_error::render(&e).contains("cannot be assumed") =>
            {
                match waits.next() {
                    Some(wait) => tokio::time::sleep(*wait).await,
                    None => return Err(aws_error("create", FUNCTION, name, &e)),
                }
            }
            Err(e) => return Err(aws_error("create", FUNCTION, name, &e)),
        }
    }
}

pub(super) async fn ensure_function(
    c: &DeployClients,
    stack: &Stack,
    spec: &FunctionSpec,
    package: &ReaperPackage,
) -> Result<Change, DeployError> {
    let name = stack.reaper_function();
    let current = match c.lambda.get_function().function_name(&name).send().await {
        Ok(out) => out.configuration().map(FunctionSpec::read),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read", FUNCTION, &name, &e)),
    };
    let Some(current) = current else {
        create_function(c, stack, &name, spec, package).await?;
        wait_ready(c, &name).await?;
        return Ok(Change::Created);
    };
    let (config, code) = spec.differences(&current);
    if config {
        wait_ready(c, &name).await?;
        c.lambda
            .update_function_configuration()
            .function_name(&name)
            .runtime(Runtime::Providedal2023)
            .handler(HANDLER)
            .role(&spec.role_arn)
            .timeout(spec.timeout)
            .memory_size(spec.memory)
            .environment(
                Environment::builder()
                    .set_variables(Some(spec.env.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error("update", FUNCTION, &name, &e))?;
    }
    if code {
        wait_ready(c, &name).await?;
        c.lambda
            .update_function_code()
            .function_name(&name)
            .architectures(spec.architecture.as_str().into())
            .zip_file(Blob::new(package.bytes()))
            .send()
            .await
            .map_err(|e| aws_error("upload the code of", FUNCTION, &name, &e))?;
    }
    if config || code {
        wait_ready(c, &name).await?;
        Ok(Change::Updated)
    } else {
        Ok(Change::Exists)
    }
}

pub(super) async fn remove_function(
    c: &DeployClients,
    stack: &Stack,
) -> Result<Change, DeployError> {
    let function = stack.reaper_function();
    match c
        .lambda
        .delete_function()
        .function_name(&function)
        .send()
        .await
    {
        Ok(_) => Ok(Change::Deleted),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(Change::Absent)
        }
        Err(e) => Err(aws_error("delete", FUNCTION, &function, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            runtime: "provided.al2023".into(),
            handler: "bootstrap".into(),
            role_arn: "arn:aws:iam::123456789012:role/lease-dev-reaper".into(),
            architecture: "x86_64".into(),
            timeout: 300,
            memory: 128,
            env: HashMap::from([(ENV_GRACE.to_string(), "15m".to_string())]),
            code_sha256: "abc=".into(),
        }
    }

    #[test]
    fn only_what_differs_is_rewritten() {
        let want = spec();
        assert_eq!(want.differences(&spec()), (false, false));
        let mut env = spec();
        env.env.insert(ENV_GRACE.into(), "30m".into());
        assert_eq!(want.differences(&env), (true, false));
        let mut code = spec();
        code.code_sha256 = "def=".into();
        assert_eq!(want.differences(&code), (false, true));
        let mut arch = spec();
        arch.architecture = "arm64".into();
        assert_eq!(want.differences(&arch), (false, true));
    }
}
