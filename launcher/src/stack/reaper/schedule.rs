//! The stack's EventBridge Scheduler group and the reaper's schedule in it: created,
//! brought back to what is wanted (a disabled or edited schedule is restored), or
//! deleted.

use lease_common::stack::{Location, REAPER_SCHEDULE, Stack};

use super::policy;
use crate::aws::StackTag;
use crate::aws::scheduler::{ScheduleAdmin, ScheduleSpec};
use crate::error::Result;
use crate::stack::Outcome;

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

/// The reaper's schedule as it should be.
pub fn wanted(stack: &Stack, at: &Location) -> ScheduleSpec {
    let (target_arn, role_arn) = schedule_target(stack, at);
    ScheduleSpec {
        name: REAPER_SCHEDULE.to_string(),
        description: "lease backstop reaper".into(),
        expression: REAPER_RATE.into(),
        enabled: true,
        exact: true,
        target_arn,
        role_arn,
        input: SCHEDULE_INPUT.into(),
        max_retries: Some(SCHEDULE_RETRIES),
        max_event_age_secs: Some(SCHEDULE_MAX_EVENT_AGE_SECS),
    }
}

/// What to send for the schedule: `Created` (create it), `Updated` (replace its
/// definition) or `Exists` (nothing). The description is a person's to change.
pub fn diff(observed: Option<&ScheduleSpec>, wanted: &ScheduleSpec) -> Outcome {
    let Some(o) = observed else {
        return Outcome::Created;
    };
    let compared = ScheduleSpec {
        description: wanted.description.clone(),
        ..o.clone()
    };
    if &compared == wanted {
        Outcome::Exists
    } else {
        Outcome::Updated
    }
}

pub(super) async fn ensure_group<S: ScheduleAdmin>(
    s: &S,
    stack: &Stack,
    tag: &StackTag,
) -> Result<Outcome> {
    let name = stack.schedule_group();
    if s.group_exists(&name).await? {
        return Ok(Outcome::Exists);
    }
    s.create_group(&name, tag).await?;
    Ok(Outcome::Created)
}

pub(super) async fn ensure_schedule<S: ScheduleAdmin>(
    s: &S,
    stack: &Stack,
    at: &Location,
) -> Result<Outcome> {
    let group = stack.schedule_group();
    let wanted = wanted(stack, at);
    let observed = s.schedule(&group, REAPER_SCHEDULE).await?;
    let outcome = diff(observed.as_ref(), &wanted);
    match outcome {
        Outcome::Created => s.create_schedule(&group, &wanted).await?,
        Outcome::Updated => s.update_schedule(&group, &wanted).await?,
        _ => {}
    }
    Ok(outcome)
}

pub(super) async fn remove_schedule<S: ScheduleAdmin>(s: &S, stack: &Stack) -> Result<Outcome> {
    let deleted = s
        .delete_schedule(&stack.schedule_group(), REAPER_SCHEDULE)
        .await?;
    Ok(if deleted {
        Outcome::Deleted
    } else {
        Outcome::Absent
    })
}

/// Deleting the group deletes every schedule in it, `lease schedule`'s included.
pub(super) async fn remove_group<S: ScheduleAdmin>(s: &S, stack: &Stack) -> Result<Outcome> {
    let group = stack.schedule_group();
    // Read first: deleting a group that does not exist is an error worth telling apart
    // from a real failure.
    if !s.group_exists(&group).await? {
        return Ok(Outcome::Absent);
    }
    s.delete_group(&group).await?;
    Ok(Outcome::Deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_disabled_or_edited_schedule_is_restored_but_its_description_is_kept() {
        let stack = Stack::new("dev").unwrap();
        let at = Location::new("aws", "123456789012", "eu-west-1").unwrap();
        let w = wanted(&stack, &at);
        assert_eq!(
            w.target_arn,
            "arn:aws:lambda:eu-west-1:123456789012:function:lease-dev-reaper"
        );
        assert_eq!(diff(None, &w), Outcome::Created);
        assert_eq!(diff(Some(&w), &w), Outcome::Exists);
        let noted = ScheduleSpec {
            description: "mine".into(),
            ..w.clone()
        };
        assert_eq!(diff(Some(&noted), &w), Outcome::Exists);
        let disabled = ScheduleSpec {
            enabled: false,
            ..w.clone()
        };
        assert_eq!(diff(Some(&disabled), &w), Outcome::Updated);
        let no_retries = ScheduleSpec {
            max_retries: None,
            ..w.clone()
        };
        assert_eq!(diff(Some(&no_retries), &w), Outcome::Updated);
    }
}
