//! The reaper as a Lambda function: its configuration (from the function's
//! environment, set by `lease setup`), one invocation ([`handle`]) and the JSON summary
//! it returns. `main.rs` only wires these to the Lambda runtime.

use chrono::{DateTime, Utc};
use lease_common::HumanDuration;
use serde::Serialize;

use crate::decide::{ReapAction, ReaperConfig};
use crate::ec2::{Ec2, Ec2Error};
use crate::{Report, reap};

/// How long an expired instance is left to its agent: `15m`, `1h`. Unset: 15 minutes.
pub const ENV_GRACE: &str = "LEASE_REAPER_GRACE";
/// The age cap on every managed instance: `7d`. Unset: 7 days.
pub const ENV_MAX_AGE: &str = "LEASE_REAPER_MAX_AGE";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error("Invalid {name}='{value}': {message}")]
    Config {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error(transparent)]
    List(#[from] Ec2Error),
    /// The run went through every instance, and some actions failed: an error, so the
    /// function's `Errors` metric (and any alarm on it) shows a backstop that is not
    /// working. The summary is in the message, and in the log.
    #[error("{failed} of {acted} reaper actions failed: {summary}")]
    Actions {
        failed: usize,
        acted: usize,
        summary: String,
    },
}

/// What the Lambda service records for a failed invocation: a stable error type for
/// metrics filters and alarms, and the message naming what failed.
impl From<FunctionError> for lambda_runtime::Diagnostic {
    fn from(e: FunctionError) -> Self {
        let error_type = match &e {
            FunctionError::Config { .. } => "Reaper.Config",
            FunctionError::List(_) => "Reaper.ListFailed",
            FunctionError::Actions { .. } => "Reaper.ActionsFailed",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

/// The configuration from `lookup` (the process environment in `main`), each variable
/// checked by name.
pub fn config_from_env(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ReaperConfig, FunctionError> {
    let read = |name: &'static str, default: HumanDuration| match lookup(name) {
        None => Ok(default),
        Some(value) => match value.parse::<HumanDuration>() {
            Ok(d) if d.as_secs() > 0 => Ok(d),
            Ok(_) => Err(FunctionError::Config {
                name,
                value,
                message: "must be longer than zero".into(),
            }),
            Err(e) => Err(FunctionError::Config {
                name,
                value,
                message: e.to_string(),
            }),
        },
    };
    let defaults = ReaperConfig::default();
    Ok(ReaperConfig {
        grace: read(ENV_GRACE, defaults.grace)?,
        max_age: read(ENV_MAX_AGE, defaults.max_age)?,
    })
}

/// One instance acted on, as the summary shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Acted {
    pub instance_id: String,
    pub reason: String,
}

/// An action that was decided and failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Failed {
    pub instance_id: String,
    pub action: ReapAction,
    pub reason: String,
    pub error: String,
}

/// What one invocation did: the function's return value and its log line.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub at: String,
    /// Managed instances listed.
    pub examined: usize,
    /// Of those, left alone (live, within grace, already stopped, or gone).
    pub kept: usize,
    pub terminated: Vec<Acted>,
    pub stopped: Vec<Acted>,
    pub failed: Vec<Failed>,
    /// Instances whose lease tags do not parse: their deadline is skipped (only the age
    /// cap applies) until a person fixes the tag named in the reason.
    pub skipped: Vec<Acted>,
}

impl Summary {
    pub fn from_report(now: DateTime<Utc>, report: &Report) -> Self {
        let mut s = Summary {
            at: lease_common::tags::render_time(now),
            examined: report.examined,
            kept: report.kept,
            ..Summary::default()
        };
        for o in &report.acted {
            let acted = Acted {
                instance_id: o.instance_id.clone(),
                reason: o.reason.clone(),
            };
            match (&o.error, o.action) {
                (Some(error), action) => s.failed.push(Failed {
                    instance_id: o.instance_id.clone(),
                    action,
                    reason: o.reason.clone(),
                    error: error.clone(),
                }),
                (None, ReapAction::Terminate) => s.terminated.push(acted),
                (None, ReapAction::Stop) => s.stopped.push(acted),
            }
        }
        s.skipped = report
            .bad_tags
            .iter()
            .map(|b| Acted {
                instance_id: b.instance_id.clone(),
                reason: format!("deadline unknown, only the age cap applies: {}", b.error),
            })
            .collect();
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        // A struct of strings, numbers and lists: serialising it cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// One invocation: reap at `now` and summarise. Fails when the listing fails, or when
/// any action failed (after trying every one).
pub async fn handle<E: Ec2>(
    now: DateTime<Utc>,
    ec2: &E,
    config: &ReaperConfig,
) -> Result<Summary, FunctionError> {
    let report = reap(now, ec2, config).await?;
    let summary = Summary::from_report(now, &report);
    if summary.failed.is_empty() {
        tracing::info!(summary = %summary.to_json(), "reaper run");
        Ok(summary)
    } else {
        let text = summary.to_json().to_string();
        tracing::error!(summary = %text, "reaper run with failures");
        Err(FunctionError::Actions {
            failed: summary.failed.len(),
            acted: report.acted.len(),
            summary: text,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    use crate::decide::{InstanceFacts, InstanceState};
    use chrono::TimeZone;

    /// Two expired instances; terminating `i-fails` is refused.
    #[derive(Debug)]
    struct OneRefusal;

    fn expired(id: &str) -> InstanceFacts {
        InstanceFacts {
            id: id.into(),
            state: InstanceState::Running,
            launch_time: Some(Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap()),
            tags: [("lease:managed", "true"), ("lease:ttl", "1h")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            market: "on-demand".into(),
        }
    }

    impl Ec2 for OneRefusal {
        async fn managed_instances(&self) -> Result<Vec<InstanceFacts>, Ec2Error> {
            Ok(vec![expired("i-fails"), expired("i-ends")])
        }
        async fn instance(&self, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
            Ok(Some(expired(id)))
        }
        async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
            if id == "i-fails" {
                return Err(Ec2Error::Terminate {
                    id: id.into(),
                    message: "UnauthorizedOperation: no".into(),
                });
            }
            Ok(())
        }
        async fn stop(&self, _id: &str) -> Result<(), Ec2Error> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_action_fails_the_invocation_after_every_instance_was_tried() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let err = handle(now, &OneRefusal, &ReaperConfig::default())
            .await
            .unwrap_err();
        let FunctionError::Actions {
            failed,
            acted,
            ref summary,
        } = err
        else {
            panic!("{err}");
        };
        assert_eq!((failed, acted), (1, 2));
        let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
        assert_eq!(summary["terminated"][0]["instance-id"], "i-ends");
        assert_eq!(summary["failed"][0]["instance-id"], "i-fails");
        assert_eq!(
            summary["failed"][0]["error"],
            "Failed to terminate instance 'i-fails': UnauthorizedOperation: no"
        );
        let d = lambda_runtime::Diagnostic::from(err);
        assert_eq!(d.error_type, "Reaper.ActionsFailed");
        assert!(d.error_message.starts_with("1 of 2 reaper actions failed"));
    }

    #[test]
    fn config_defaults_and_overrides() {
        assert_eq!(config_from_env(env(&[])).unwrap(), ReaperConfig::default());
        let c = config_from_env(env(&[(ENV_GRACE, "30m"), (ENV_MAX_AGE, "2d")])).unwrap();
        assert_eq!(c.grace.as_secs(), 1800);
        assert_eq!(c.max_age.as_secs(), 2 * 86_400);
    }

    #[test]
    fn bad_config_names_the_variable() {
        for (name, value) in [(ENV_GRACE, "soon"), (ENV_MAX_AGE, "0s")] {
            let err = config_from_env(env(&[(name, value)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(name) && text.contains(value), "{text}");
        }
    }
}
