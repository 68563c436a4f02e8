//! EventBridge Scheduler, behind a trait shaped around what `lease schedule` does with
//! it: schedules in one group, created, listed, paused or resumed, deleted.

use aws_sdk_scheduler::types::{FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target};
use aws_types::SdkConfig;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::schedule_spec::kind_of_target;

/// The calls the reaper's deployment adds: the group, and one schedule replaced whole.
mod admin;
pub use admin::{ScheduleAdmin, ScheduleSpec};

/// A schedule to create.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewSchedule {
    pub group: String,
    pub name: String,
    /// `cron(…)` or `rate(…)`, already checked.
    pub expression: String,
    pub timezone: Option<String>,
    pub description: String,
    pub target_arn: String,
    pub role_arn: String,
    /// The target's input: for a universal target, the API request as JSON.
    pub input: String,
}

/// A schedule as `lease schedule list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleInfo {
    pub name: String,
    pub state: String,
    pub expression: String,
    pub timezone: String,
    /// `submit`, `launch`, `lambda` (the reaper) or `other`.
    pub kind: &'static str,
    pub target_arn: String,
}

pub trait Schedules: Sync {
    fn group_exists(&self, group: &str) -> impl Future<Output = Result<bool>> + Send;
    fn create(&self, schedule: &NewSchedule) -> impl Future<Output = Result<()>> + Send;
    fn list(&self, group: &str) -> impl Future<Output = Result<Vec<ScheduleInfo>>> + Send;
    /// Enables or disables a schedule, keeping the rest of its definition.
    fn set_enabled(
        &self,
        group: &str,
        name: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete(&self, group: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
}

#[derive(Debug, Clone)]
pub struct AwsSchedules {
    client: aws_sdk_scheduler::Client,
}

impl AwsSchedules {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_scheduler::Client::new(config),
        }
    }
}

fn not_found(group: &str, name: &str) -> Error {
    Error::NotFound(format!(
        "no schedule '{name}' in the schedule group '{group}' (`lease schedule list` shows them)"
    ))
}

fn incomplete(what: String, err: impl std::fmt::Display) -> Error {
    Error::Aws {
        what,
        message: format!("the request is incomplete: {err}"),
    }
}

impl Schedules for AwsSchedules {
    async fn group_exists(&self, group: &str) -> Result<bool> {
        match self.client.get_schedule_group().name(group).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to read schedule group '{group}'"),
                e,
            )),
        }
    }

    async fn create(&self, s: &NewSchedule) -> Result<()> {
        let what = format!(
            "Failed to create schedule '{}' in group '{}'",
            s.name, s.group
        );
        let target = Target::builder()
            .arn(&s.target_arn)
            .role_arn(&s.role_arn)
            .input(&s.input)
            .build()
            .map_err(|e| incomplete(what.clone(), e))?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| incomplete(what.clone(), e))?;
        self.client
            .create_schedule()
            .group_name(&s.group)
            .name(&s.name)
            .description(&s.description)
            .schedule_expression(&s.expression)
            .set_schedule_expression_timezone(s.timezone.clone())
            .flexible_time_window(window)
            .target(target)
            .state(ScheduleState::Enabled)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .is_some_and(|x| x.is_conflict_exception())
                {
                    Error::Refused(format!(
                        "a schedule '{}' already exists in group '{}': delete it first, or choose another name",
                        s.name, s.group
                    ))
                } else {
                    Error::aws(what.clone(), e)
                }
            })?;
        Ok(())
    }

    async fn list(&self, group: &str) -> Result<Vec<ScheduleInfo>> {
        let mut names = Vec::new();
        let mut pages = self
            .client
            .list_schedules()
            .group_name(group)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Error::aws(format!("Failed to list schedules in group '{group}'"), e)
            })?;
            names.extend(
                page.schedules()
                    .iter()
                    .filter_map(|s| s.name().map(str::to_string)),
            );
        }
        names.sort();
        // The listing has no expression: each schedule is read for it.
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let s = self
                .client
                .get_schedule()
                .group_name(group)
                .name(&name)
                .send()
                .await
                .map_err(|e| {
                    Error::aws(
                        format!("Failed to read schedule '{name}' in group '{group}'"),
                        e,
                    )
                })?;
            let target_arn = s.target().map(|t| t.arn().to_string()).unwrap_or_default();
            out.push(ScheduleInfo {
                name,
                state: s
                    .state()
                    .map(|x| x.as_str().to_string())
                    .unwrap_or_default(),
                expression: s.schedule_expression().unwrap_or_default().to_string(),
                timezone: s
                    .schedule_expression_timezone()
                    .unwrap_or("UTC")
                    .to_string(),
                kind: kind_of_target(&target_arn),
                target_arn,
            });
        }
        Ok(out)
    }

    async fn set_enabled(&self, group: &str, name: &str, enabled: bool) -> Result<()> {
        let what = format!(
            "Failed to {} schedule '{name}' in group '{group}'",
            if enabled { "resume" } else { "pause" }
        );
        // UpdateSchedule replaces the whole definition: send back everything it had.
        let s = match self
            .client
            .get_schedule()
            .group_name(group)
            .name(name)
            .send()
            .await
        {
            Ok(s) => s,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|x| x.is_resource_not_found_exception()) =>
            {
                return Err(not_found(group, name));
            }
            Err(e) => return Err(Error::aws(what, e)),
        };
        let state = if enabled {
            ScheduleState::Enabled
        } else {
            ScheduleState::Disabled
        };
        self.client
            .update_schedule()
            .group_name(group)
            .name(name)
            .set_schedule_expression(s.schedule_expression().map(str::to_string))
            .set_schedule_expression_timezone(s.schedule_expression_timezone().map(str::to_string))
            .set_description(s.description().map(str::to_string))
            .set_start_date(s.start_date().cloned())
            .set_end_date(s.end_date().cloned())
            .set_kms_key_arn(s.kms_key_arn().map(str::to_string))
            .set_target(s.target().cloned())
            .set_flexible_time_window(s.flexible_time_window().cloned())
            .set_action_after_completion(s.action_after_completion().cloned())
            .state(state)
            .send()
            .await
            .map_err(|e| Error::aws(what, e))?;
        Ok(())
    }

    async fn delete(&self, group: &str, name: &str) -> Result<()> {
        match self
            .client
            .delete_schedule()
            .group_name(group)
            .name(name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|x| x.is_resource_not_found_exception()) =>
            {
                Err(not_found(group, name))
            }
            Err(e) => Err(Error::aws(
                format!("Failed to delete schedule '{name}' in group '{group}'"),
                e,
            )),
        }
    }
}
