//! EventBridge Scheduler as the reaper's deployment uses it: the stack's schedule
//! group and one schedule in it, read, created, replaced and deleted. A second trait beside
//! `lease schedule`'s [`Schedules`], on the same client.

use aws_sdk_scheduler::types::{
    FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, ScheduleState, Tag, Target,
};

use super::{AwsSchedules, Schedules, incomplete};
use crate::aws::StackTag;
use crate::error::{Error, Result};

/// A schedule's definition, as wanted or as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub name: String,
    /// Not compared: a person's note on it is theirs.
    pub description: String,
    pub expression: String,
    pub enabled: bool,
    /// Whether it runs at its time exactly (no flexible window).
    pub exact: bool,
    pub target_arn: String,
    pub role_arn: String,
    pub input: String,
    pub max_retries: Option<i32>,
    pub max_event_age_secs: Option<i32>,
}

/// What the reaper's deployment adds to [`Schedules`] (whose `group_exists` it uses).
pub trait ScheduleAdmin: Schedules {
    fn create_group(&self, group: &str, tag: &StackTag) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the group and every schedule in it.
    fn delete_group(&self, group: &str) -> impl Future<Output = Result<()>> + Send;
    /// `None` when there is no such schedule.
    fn schedule(
        &self,
        group: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ScheduleSpec>>> + Send;
    fn create_schedule(
        &self,
        group: &str,
        spec: &ScheduleSpec,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Replaces the whole definition (UpdateSchedule takes no partial update).
    fn update_schedule(
        &self,
        group: &str,
        spec: &ScheduleSpec,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `false` when there was nothing to delete.
    fn delete_schedule(&self, group: &str, name: &str)
    -> impl Future<Output = Result<bool>> + Send;
}

fn target(spec: &ScheduleSpec, what: &str) -> Result<Target> {
    let retry = RetryPolicy::builder()
        .set_maximum_retry_attempts(spec.max_retries)
        .set_maximum_event_age_in_seconds(spec.max_event_age_secs)
        .build();
    Target::builder()
        .arn(&spec.target_arn)
        .role_arn(&spec.role_arn)
        .input(&spec.input)
        .retry_policy(retry)
        .build()
        .map_err(|e| incomplete(what.to_string(), e))
}

/// Schedules of ours run at their time: a flexible window is never written, and one
/// read back is told apart by `exact`.
fn exact_window(what: &str) -> Result<FlexibleTimeWindow> {
    FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .map_err(|e| incomplete(what.to_string(), e))
}

fn state(spec: &ScheduleSpec) -> ScheduleState {
    if spec.enabled {
        ScheduleState::Enabled
    } else {
        ScheduleState::Disabled
    }
}

impl ScheduleAdmin for AwsSchedules {
    async fn create_group(&self, group: &str, tag: &StackTag) -> Result<()> {
        let what = format!("Failed to create schedule group '{group}'");
        let tag = Tag::builder()
            .key(&tag.0)
            .value(&tag.1)
            .build()
            .map_err(|e| incomplete(what.clone(), e))?;
        self.client
            .create_schedule_group()
            .name(group)
            .tags(tag)
            .send()
            .await
            .map_err(|e| Error::aws(what, e))?;
        Ok(())
    }

    async fn delete_group(&self, group: &str) -> Result<()> {
        self.client
            .delete_schedule_group()
            .name(group)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to delete schedule group '{group}'"), e))?;
        Ok(())
    }

    async fn schedule(&self, group: &str, name: &str) -> Result<Option<ScheduleSpec>> {
        match self
            .client
            .get_schedule()
            .group_name(group)
            .name(name)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ScheduleSpec {
                name: name.to_string(),
                description: out.description().unwrap_or_default().to_string(),
                expression: out.schedule_expression().unwrap_or_default().to_string(),
                enabled: out.state() == Some(&ScheduleState::Enabled),
                exact: out.flexible_time_window().map(|w| w.mode())
                    == Some(&FlexibleTimeWindowMode::Off),
                target_arn: out
                    .target()
                    .map(|t| t.arn().to_string())
                    .unwrap_or_default(),
                role_arn: out
                    .target()
                    .map(|t| t.role_arn().to_string())
                    .unwrap_or_default(),
                input: out
                    .target()
                    .and_then(|t| t.input())
                    .unwrap_or_default()
                    .to_string(),
                max_retries: out
                    .target()
                    .and_then(|t| t.retry_policy())
                    .and_then(|r| r.maximum_retry_attempts()),
                max_event_age_secs: out
                    .target()
                    .and_then(|t| t.retry_policy())
                    .and_then(|r| r.maximum_event_age_in_seconds()),
            })),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to read schedule '{group}/{name}'"),
                e,
            )),
        }
    }

    async fn create_schedule(&self, group: &str, spec: &ScheduleSpec) -> Result<()> {
        let what = format!("Failed to create schedule '{group}/{}'", spec.name);
        self.client
            .create_schedule()
            .group_name(group)
            .name(&spec.name)
            .description(&spec.description)
            .schedule_expression(&spec.expression)
            .flexible_time_window(exact_window(&what)?)
            .target(target(spec, &what)?)
            .state(state(spec))
            .send()
            .await
            .map_err(|e| Error::aws(what, e))?;
        Ok(())
    }

    async fn update_schedule(&self, group: &str, spec: &ScheduleSpec) -> Result<()> {
        let what = format!("Failed to update schedule '{group}/{}'", spec.name);
        self.client
            .update_schedule()
            .group_name(group)
            .name(&spec.name)
            .description(&spec.description)
            .schedule_expression(&spec.expression)
            .flexible_time_window(exact_window(&what)?)
            .target(target(spec, &what)?)
            .state(state(spec))
            .send()
            .await
            .map_err(|e| Error::aws(what, e))?;
        Ok(())
    }

    async fn delete_schedule(&self, group: &str, name: &str) -> Result<bool> {
        match self
            .client
            .delete_schedule()
            .group_name(group)
            .name(name)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(
                format!("Failed to delete schedule '{group}/{name}'"),
                e,
            )),
        }
    }
}
