//! The stack's EventBridge Scheduler group and the reaper's schedule in it: created,
//! brought back to what is wanted (a disabled or edited schedule is restored), or
//! deleted.

use aws_sdk_scheduler::types::{
    FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, ScheduleState, Target,
};
use lease_common::stack::{Location, REAPER_SCHEDULE, Stack};

use super::{
    Change, DeployClients, DeployError, GROUP, SCHEDULE, STACK_TAG, aws_error, build_error, policy,
};

/// How often the reaper runs. Its grace period (15 minutes) is three runs, so an
/// instance whose agent died is ended within 15 to 20 minutes of its deadline.
pub const REAPER_RATE: &str = "rate(5 minutes)";
/// The event the schedule sends. The function reaps everything whatever it receives;
/// the schedule's time (substituted by Scheduler) ties its log line to a run.
const SCHEDULE_INPUT: &str =
    r#"{"source":"lease.scheduler","scheduled-time":"<aws.scheduler.scheduled-time>"}"#;
/// A missed run is made up by the next one five minutes later: retry briefly, then
/// drop rather than queue up stale runs for a day (Scheduler's default).
const SCHEDULE_RETRIES: i32 = 2;
const SCHEDULE_MAX_EVENT_AGE_SECS: i32 = 300;

/// The reaper schedule's target: the function, through the invoke role.
pub fn schedule_target(stack: &Stack, at: &Location) -> (String, String) {
    (
        policy::function_arn(stack, at),
        at.iam_arn(&format!("role/{}", stack.reaper_invoke_role())),
    )
}

pub(super) async fn ensure_group(c: &DeployClients, stack: &Stack) -> Result<Change, DeployError> {
    let name = stack.schedule_group();
    match c.scheduler.get_schedule_group().name(&name).send().await {
        Ok(_) => Ok(Change::Exists),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            c.scheduler
                .create_schedule_group()
                .name(&name)
                .tags(
                    aws_sdk_scheduler::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(stack.name())
                        .build()
                        .map_err(|e| build_error("tag", GROUP, &name, &e))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("create", GROUP, &name, &e))?;
            Ok(Change::Created)
        }
        Err(e) => Err(aws_error("read", GROUP, &name, &e)),
    }
}

fn reaper_target(stack: &Stack, at: &Location) -> Result<Target, DeployError> {
    let (function, role) = schedule_target(stack, at);
    Target::builder()
        .arn(function)
        .role_arn(role)
        .input(SCHEDULE_INPUT)
        .retry_policy(
            RetryPolicy::builder()
                .maximum_retry_attempts(SCHEDULE_RETRIES)
                .maximum_event_age_in_seconds(SCHEDULE_MAX_EVENT_AGE_SECS)
                .build(),
        )
        .build()
        .map_err(|e| build_error("build the target of", SCHEDULE, REAPER_SCHEDULE, &e))
}

fn off() -> Result<FlexibleTimeWindow, DeployError> {
    FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .map_err(|e| build_error("build the time window of", SCHEDULE, REAPER_SCHEDULE, &e))
}

pub(super) async fn ensure_schedule(
    c: &DeployClients,
    stack: &Stack,
    at: &Location,
) -> Result<Change, DeployError> {
    let group = stack.schedule_group();
    let name = format!("{group}/{REAPER_SCHEDULE}");
    let target = reaper_target(stack, at)?;
    let current = match c
        .scheduler
        .get_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
        .send()
        .await
    {
        Ok(out) => Some(out),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read", SCHEDULE, &name, &e)),
    };
    let Some(current) = current else {
        c.scheduler
            .create_schedule()
            .group_name(&group)
            .name(REAPER_SCHEDULE)
            .description("lease backstop reaper")
            .schedule_expression(REAPER_RATE)
            .flexible_time_window(off()?)
            .target(target)
            .state(ScheduleState::Enabled)
            .send()
            .await
            .map_err(|e| aws_error("create", SCHEDULE, &name, &e))?;
        return Ok(Change::Created);
    };
    let same = current.schedule_expression() == Some(REAPER_RATE)
        && current.state() == Some(&ScheduleState::Enabled)
        && current.flexible_time_window().map(|w| w.mode()) == Some(&FlexibleTimeWindowMode::Off)
        && current.target().is_some_and(|t| {
            t.arn() == target.arn()
                && t.role_arn() == target.role_arn()
                && t.input() == target.input()
                && t.retry_policy() == target.retry_policy()
        });
    if same {
        return Ok(Change::Exists);
    }
    c.scheduler
        .update_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
        .description("lease backstop reaper")
        .schedule_expression(REAPER_RATE)
        .flexible_time_window(off()?)
        .target(target)
        .state(ScheduleState::Enabled)
        .send()
        .await
        .map_err(|e| aws_error("update", SCHEDULE, &name, &e))?;
    Ok(Change::Updated)
}

pub(super) async fn remove_schedule(
    c: &DeployClients,
    stack: &Stack,
) -> Result<Change, DeployError> {
    let group = stack.schedule_group();
    match c
        .scheduler
        .delete_schedule()
        .group_name(&group)
        .name(REAPER_SCHEDULE)
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
        Err(e) => Err(aws_error(
            "delete",
            SCHEDULE,
            &format!("{group}/{REAPER_SCHEDULE}"),
            &e,
        )),
    }
}

/// Deleting the group deletes every schedule in it, `lease schedule`'s included.
pub(super) async fn remove_group(c: &DeployClients, stack: &Stack) -> Result<Change, DeployError> {
    let group = stack.schedule_group();
    // Read first: deleting a group that does not exist is an error worth telling apart
    // from a real failure.
    match c.scheduler.get_schedule_group().name(&group).send().await {
        Ok(_) => {
            c.scheduler
                .delete_schedule_group()
                .name(&group)
                .send()
                .await
                .map_err(|e| aws_error("delete", GROUP, &group, &e))?;
            Ok(Change::Deleted)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(Change::Absent)
        }
        Err(e) => Err(aws_error("read", GROUP, &group, &e)),
    }
}
