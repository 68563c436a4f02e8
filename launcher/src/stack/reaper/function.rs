//! The reaper's Lambda function: its configuration as wanted ([`wanted`]), created,
//! updated where it differs (configuration and code separately, each once the last
//! change is applied), or deleted.

use std::collections::HashMap;

use lease_common::stack::{Location, Stack};
use lease_reaper::ReaperConfig;
use lease_reaper::function::{ENV_GRACE, ENV_MAX_AGE};

use super::{Pace, ReaperPackage};
use crate::aws::StackTag;
use crate::aws::lambda::{CreateError, FunctionSpec, FunctionState, Functions};
use crate::error::{Error, Result};
use crate::stack::Outcome;

/// A run over a large fleet makes one call per due instance; five minutes (the period)
/// is far more than that needs, and runs never pile up.
const FUNCTION_TIMEOUT_SECS: i32 = 300;
/// The smallest size: the reaper holds one page of instances at a time.
const FUNCTION_MEMORY_MB: i32 = 128;
/// `provided.*` runtimes run the `bootstrap` file and ignore the handler; Lambda still
/// requires one, and this is the convention.
const HANDLER: &str = "bootstrap";
/// Amazon Linux 2023 with no language runtime: the package holds `bootstrap`.
const RUNTIME: &str = "provided.al2023";
const DESCRIPTION: &str = "lease backstop reaper: ends managed instances whose agent did not";

pub fn wanted(
    stack: &Stack,
    at: &Location,
    package: &ReaperPackage,
    config: &ReaperConfig,
) -> FunctionSpec {
    FunctionSpec {
        runtime: RUNTIME.into(),
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

/// Whether the configuration (UpdateFunctionConfiguration) and the code or its
/// architecture (UpdateFunctionCode) of `current` differ from `wanted`.
pub fn differences(wanted: &FunctionSpec, current: &FunctionSpec) -> (bool, bool) {
    let config = wanted.runtime != current.runtime
        || wanted.handler != current.handler
        || wanted.role_arn != current.role_arn
        || wanted.timeout != current.timeout
        || wanted.memory != current.memory
        || wanted.env != current.env;
    let code =
        wanted.code_sha256 != current.code_sha256 || wanted.architecture != current.architecture;
    (config, code)
}

/// Whether a function accepts the next change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still applying the last change.
    Busy,
    Failed(String),
}

pub fn readiness(s: &FunctionState) -> Readiness {
    let failed = s.last_update.as_deref() == Some("Failed") || s.state.as_deref() == Some("Failed");
    if failed {
        return Readiness::Failed(s.reason.clone().unwrap_or_else(|| "failed".into()));
    }
    if s.last_update.as_deref() == Some("InProgress") || s.state.as_deref() == Some("Pending") {
        Readiness::Busy
    } else {
        Readiness::Ready
    }
}

fn not_ready(name: &str, reason: String) -> Error {
    Error::Aws {
        what: format!("Lambda function '{name}'"),
        message: format!("did not become ready: {reason}"),
    }
}

/// Waits until the function accepts the next change (Lambda refuses one while the last
/// is still being applied).
async fn wait_ready<L: Functions>(lambda: &L, pace: &Pace, name: &str) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        match readiness(&lambda.state(name).await?) {
            Readiness::Ready => return Ok(()),
            Readiness::Failed(reason) => return Err(not_ready(name, reason)),
            Readiness::Busy => {}
        }
        if start.elapsed() > pace.ready_limit {
            return Err(not_ready(
                name,
                format!("still updating after {:?}", pace.ready_limit),
            ));
        }
        tokio::time::sleep(pace.poll).await;
    }
}

async fn create_function<L: Functions>(
    lambda: &L,
    pace: &Pace,
    name: &str,
    spec: &FunctionSpec,
    package: &ReaperPackage,
    tag: &StackTag,
) -> Result<()> {
    let mut waits = pace.role_retries.iter();
    loop {
        match lambda
            .create(name, DESCRIPTION, spec, package.bytes(), tag)
            .await
        {
            Ok(()) => return Ok(()),
            // A role created moments ago is not yet visible to Lambda.
            Err(CreateError::RoleNotAssumable(e)) => match waits.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => return Err(e),
            },
            Err(CreateError::Other(e)) => return Err(e),
        }
    }
}

pub(super) async fn ensure_function<L: Functions>(
    lambda: &L,
    pace: &Pace,
    stack: &Stack,
    spec: &FunctionSpec,
    package: &ReaperPackage,
    tag: &StackTag,
) -> Result<Outcome> {
    let name = stack.reaper_function();
    let Some(current) = lambda.function(&name).await? else {
        create_function(lambda, pace, &name, spec, package, tag).await?;
        wait_ready(lambda, pace, &name).await?;
        return Ok(Outcome::Created);
    };
    let (config, code) = differences(spec, &current);
    if config {
        wait_ready(lambda, pace, &name).await?;
        lambda.update_configuration(&name, spec).await?;
    }
    if code {
        wait_ready(lambda, pace, &name).await?;
        lambda
            .update_code(&name, &spec.architecture, package.bytes())
            .await?;
    }
    if config || code {
        wait_ready(lambda, pace, &name).await?;
        Ok(Outcome::Updated)
    } else {
        Ok(Outcome::Exists)
    }
}

pub(super) async fn remove_function<L: Functions>(lambda: &L, stack: &Stack) -> Result<Outcome> {
    Ok(if lambda.delete(&stack.reaper_function()).await? {
        Outcome::Deleted
    } else {
        Outcome::Absent
    })
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
        assert_eq!(differences(&want, &spec()), (false, false));
        let mut env = spec();
        env.env.insert(ENV_GRACE.into(), "30m".into());
        assert_eq!(differences(&want, &env), (true, false));
        let mut code = spec();
        code.code_sha256 = "def=".into();
        assert_eq!(differences(&want, &code), (false, true));
        let mut arch = spec();
        arch.architecture = "arm64".into();
        assert_eq!(differences(&want, &arch), (false, true));
    }

    #[test]
    fn a_function_is_ready_once_its_last_change_is_applied() {
        let s = |state: &str, update: &str| FunctionState {
            state: Some(state.into()),
            last_update: Some(update.into()),
            reason: Some("bad zip".into()),
        };
        assert_eq!(readiness(&s("Active", "Successful")), Readiness::Ready);
        assert_eq!(readiness(&s("Pending", "Successful")), Readiness::Busy);
        assert_eq!(readiness(&s("Active", "InProgress")), Readiness::Busy);
        assert_eq!(
            readiness(&s("Active", "Failed")),
            Readiness::Failed("bad zip".into())
        );
        assert_eq!(readiness(&FunctionState::default()), Readiness::Ready);
    }
}
