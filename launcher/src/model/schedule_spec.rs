//! `lease schedule` as data: the schedule expression, time zone and name checked
//! locally (so a mistake is named before any AWS call), and the EventBridge Scheduler
//! target each kind of scheduled command becomes. Pure; `commands::schedule` sends it.
//!
//! Both targets are *universal* targets (`arn:<partition>:scheduler:::aws-sdk:<service>:<api>`),
//! whose input is the API request itself:
//! - `submit …` publishes the task to the stack's command topic (`sns:publish`), with
//!   the `pool` message attribute the pools' subscriptions filter on — the templated SNS
//!   target sends a message body only, with no attributes. The task id is
//!   `<name>-<aws.scheduler.execution-id>`: Scheduler substitutes a fresh id into the
//!   input on each run, so every run queues a task of its own.
//! - `launch …` calls `ec2:runInstances` with the request `lease launch` would send,
//!   minus `lease:expires-at`: the deadline is then launch time + `lease:ttl` (the
//!   agent's and the reaper's rule), right for every run. Chosen over invoking the
//!   reaper function: no code runs between the schedule and EC2, and the reaper's role
//!   stays one that can only end instances, never start them.

use lease_common::messages::Task;
use lease_common::stack::{DEFAULT_POOL, REAPER_SCHEDULE};
use lease_common::tags::EXPIRES_AT;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What is wrong with a schedule's name, expression or time zone, naming the flag and
/// the value given; all are usage errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleSpecError {
    #[error("invalid schedule name '{0}': use 1 to 64 letters, digits, '-' or '_'")]
    Name(String),
    #[error("the schedule name '{0}' is the stack's backstop reaper's; choose another")]
    ReaperName(String),
    #[error("--rate '{text}': {why}")]
    Rate { text: String, why: String },
    #[error("--cron '{text}': {why}")]
    Cron { text: String, why: String },
    #[error(
        "--timezone '{0}': expected an IANA time zone name such as UTC, Europe/Paris or America/New_York"
    )]
    TimeZone(String),
    #[error("the launch request does not serialise: {0}")]
    LaunchInput(serde_json::Error),
}

type Result<T, E = ScheduleSpecError> = std::result::Result<T, E>;

/// A usage error (exit 2) with the same message: the conversion lives here rather than
/// as a variant of the crate's error, so `error` does not depend on `model`.
impl From<ScheduleSpecError> for crate::error::Error {
    fn from(e: ScheduleSpecError) -> Self {
        crate::error::Error::Usage(e.to_string())
    }
}
use crate::model::launch_plan::LaunchPlan;

/// Scheduler's own names for a run, substituted into a target's input at each run.
pub const EXECUTION_ID: &str = "<aws.scheduler.execution-id>";
pub const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";

/// The universal target that publishes to SNS, in the stack's partition (`aws-cn`,
/// `aws-us-gov` name their own).
pub fn publish_target(partition: &str) -> String {
    format!("arn:{partition}:scheduler:::aws-sdk:sns:publish")
}

/// The universal target that calls EC2 RunInstances, in the stack's partition.
pub fn run_instances_target(partition: &str) -> String {
    format!("arn:{partition}:scheduler:::aws-sdk:ec2:runInstances")
}

/// What a schedule runs, told from its target.
pub fn kind_of_target(arn: &str) -> &'static str {
    if arn.ends_with(":aws-sdk:sns:publish") {
        "submit"
    } else if arn.ends_with(":aws-sdk:ec2:runInstances") {
        "launch"
    } else if arn.contains(":lambda:") {
        "lambda"
    } else {
        "other"
    }
}

/// A schedule's name: 1 to 64 letters, digits, `-` and `_` (Scheduler also allows `.`,
/// but the name starts the ids of the tasks it queues, which may not contain one), and
/// not the reaper's.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        return Err(ScheduleSpecError::Name(name.to_string()));
    }
    if name == REAPER_SCHEDULE {
        return Err(ScheduleSpecError::ReaperName(name.to_string()));
    }
    Ok(())
}

/// `N minute|minutes|hour|hours|day|days`, N ≥ 1, singular only for 1, as
/// `rate(…)`.
pub fn rate_expression(text: &str) -> Result<String> {
    let bad = |why: &str| ScheduleSpecError::Rate {
        text: text.to_string(),
        why: why.to_string(),
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [n, unit] = parts.as_slice() else {
        return Err(bad(
            "expected a number and a unit, like '5 minutes' or '1 day'",
        ));
    };
    let n: u64 = n
        .parse()
        .map_err(|_| bad(&format!("the value '{n}' is not a whole number")))?;
    if n == 0 {
        return Err(bad("the value must be at least 1"));
    }
    let singular = match *unit {
        "minute" | "hour" | "day" => true,
        "minutes" | "hours" | "days" => false,
        other => {
            return Err(bad(&format!(
                "the unit '{other}' is not one of minute(s), hour(s), day(s)"
            )));
        }
    };
    if singular != (n == 1) {
        let fix = if n == 1 {
            unit.trim_end_matches('s').to_string()
        } else {
            format!("{unit}s")
        };
        return Err(bad(&format!(
            "the unit must be '{fix}' for the value {n} (singular only for 1)"
        )));
    }
    Ok(format!("rate({n} {unit})"))
}

/// One cron field's rules: its name, range, and the names it takes instead of numbers.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 6] = [
    Field {
        name: "minutes",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hours",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    Field {
        name: "day-of-week",
        min: 1,
        max: 7,
        names: WEEKDAYS,
    },
    Field {
        name: "year",
        min: 1970,
        max: 2199,
        names: &[],
    },
];

const DAY_OF_MONTH: usize = 2;
const DAY_OF_WEEK: usize = 4;

impl Field {
    fn value(&self, v: &str) -> std::result::Result<u32, String> {
        let upper = v.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.min + i as u32);
        }
        let n: u32 = v.parse().map_err(|_| {
            if self.names.is_empty() {
                format!("'{v}' is not a number")
            } else {
                format!("'{v}' is not a number or one of {}", self.names.join(","))
            }
        })?;
        if n < self.min || n > self.max {
            return Err(format!("{n} is outside {}-{}", self.min, self.max));
        }
        Ok(n)
    }

    /// `*`, `v`, `a-b`, optionally `/step`.
    fn range(&self, item: &str) -> std::result::Result<(), String> {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("the step '{s}' is not a number of at least 1")),
            }
        }
        if base == "*" {
            return Ok(());
        }
        match base.split_once('-') {
            Some((a, b)) => {
                self.value(a)?;
                self.value(b)?;
                Ok(())
            }
            None => self.value(base).map(|_| ()),
        }
    }

    fn item(&self, index: usize, item: &str) -> std::result::Result<(), String> {
        if index == DAY_OF_MONTH {
            // L (last day), LW (last weekday), 15W (weekday nearest the 15th).
            if item == "L" || item == "LW" {
                return Ok(());
            }
            if let Some(day) = item.strip_suffix('W') {
                return self.value(day).map(|_| ());
            }
        }
        if index == DAY_OF_WEEK {
            // 5L (last Thursday), MON#2 (second Monday).
            if item == "L" {
                return Ok(());
            }
            if let Some(day) = item.strip_suffix('L') {
                return self.value(day).map(|_| ());
            }
            if let Some((day, nth)) = item.split_once('#') {
                self.value(day)?;
                return match nth.parse::<u32>() {
                    Ok(1..=5) => Ok(()),
                    _ => Err(format!("'#{nth}' is not an occurrence from 1 to 5")),
                };
            }
        }
        self.range(item)
    }
}

/// Six fields — minutes hours day-of-month month day-of-week year — of which exactly
/// one of day-of-month and day-of-week is `?`, as `cron(…)`.
pub fn cron_expression(text: &str) -> Result<String> {
    let bad = |why: String| ScheduleSpecError::Cron {
        text: text.to_string(),
        why,
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(bad(format!(
            "expected 6 fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        )));
    }
    match (fields[DAY_OF_MONTH] == "?", fields[DAY_OF_WEEK] == "?") {
        (true, false) | (false, true) => {}
        (false, false) => {
            return Err(bad(
                "one of day-of-month (field 3) and day-of-week (field 5) must be '?'".into(),
            ));
        }
        (true, true) => {
            return Err(bad(
                "day-of-month (field 3) and day-of-week (field 5) cannot both be '?'".into(),
            ));
        }
    }
    for (i, (value, field)) in fields.iter().zip(FIELDS.iter()).enumerate() {
        if *value == "?" && (i == DAY_OF_MONTH || i == DAY_OF_WEEK) {
            continue;
        }
        for item in value.split(',') {
            field
                .item(i, item)
                .map_err(|why| bad(format!("field {} ({}) '{value}': {why}", i + 1, field.name)))?;
        }
    }
    Ok(format!("cron({})", fields.join(" ")))
}

/// An IANA time zone name (`UTC`, `Europe/Paris`, `America/Argentina/Buenos_Aires`,
/// `Etc/GMT+5`), looked up in the time zone database chrono-tz carries, so a name that
/// does not exist is refused here rather than by Scheduler after the AWS calls.
pub fn validate_timezone(tz: &str) -> Result<()> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| ScheduleSpecError::TimeZone(tz.to_string()))
}

/// The id a scheduled task gets: one per run, from the schedule's name.
pub fn task_id(name: &str) -> String {
    format!("{name}-{EXECUTION_ID}")
}

/// The `sns:publish` request for a scheduled task: the task as the message, and its
/// pool (the default pool when none is given) as the `pool` attribute.
pub fn publish_input(topic_arn: &str, task: &Task) -> Value {
    let pool = task
        .pool
        .clone()
        .unwrap_or_else(|| DEFAULT_POOL.to_string());
    let mut task = task.clone();
    task.pool = Some(pool.clone());
    json!({
        "TopicArn": topic_arn,
        "Message": task.to_json(),
        "MessageAttributes": {
            "pool": { "DataType": "String", "StringValue": pool }
        }
    })
}

/// A client token per run, the same for Scheduler's retries of that run (so a retry
/// launches nothing twice) and different for each schedule: the schedule's hash and
/// the run's scheduled time. At most 64 characters, as EC2 requires.
pub fn client_token(group: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{group}/{name}").as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("lease-{hash}-{SCHEDULED_TIME}")
}

/// The `ec2:runInstances` request for a scheduled launch: the plan `lease launch` would
/// send, with user data base64-encoded as the API takes it, the per-run client token,
/// and no `lease:expires-at` (a fixed deadline would be in the past after the first run).
pub fn run_instances_input(plan: &LaunchPlan, client_token: &str) -> Result<Value> {
    let mut v = serde_json::to_value(plan).map_err(ScheduleSpecError::LaunchInput)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "UserData".into(),
            Value::String(aws_smithy_types::base64::encode(plan.user_data.as_bytes())),
        );
        obj.insert("ClientToken".into(), Value::String(client_token.into()));
        if let Some(specs) = obj
            .get_mut("TagSpecifications")
            .and_then(Value::as_array_mut)
        {
            for spec in specs {
                if let Some(tags) = spec.get_mut("Tags").and_then(Value::as_array_mut) {
                    tags.retain(|t| t["Key"] != EXPIRES_AT);
                }
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_stack_partition() {
        assert_eq!(
            publish_target("aws"),
            "arn:aws:scheduler:::aws-sdk:sns:publish"
        );
        assert_eq!(
            run_instances_target("aws-cn"),
            "arn:aws-cn:scheduler:::aws-sdk:ec2:runInstances"
        );
        assert_eq!(kind_of_target(&publish_target("aws-us-gov")), "submit");
        assert_eq!(kind_of_target(&run_instances_target("aws-cn")), "launch");
    }

    #[test]
    fn rates() {
        assert_eq!(rate_expression("5 minutes").unwrap(), "rate(5 minutes)");
        assert_eq!(rate_expression("1 day").unwrap(), "rate(1 day)");
        for (bad, needle) in [
            ("1 minutes", "'minute'"),
            ("2 hour", "'hours'"),
            ("0 days", "at least 1"),
            ("-1 days", "whole number"),
            ("5 weeks", "'weeks'"),
            ("5", "a number and a unit"),
        ] {
            let err = rate_expression(bad).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("--rate"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn crons() {
        for good in [
            "0 9 * * ? *",
            "0/15 8-18 ? * MON-FRI *",
            "0 12 L * ? 2027",
            "30 6 15W 1,4,7,10 ? *",
            "0 0 ? JAN-DEC 6L *",
            "0 10 ? * MON#2 *",
        ] {
            assert_eq!(
                cron_expression(good).unwrap(),
                format!("cron({good})"),
                "{good}"
            );
        }
        for (bad, needle) in [
            ("0 9 * * *", "expected 6 fields"),
            ("0 9 1 * MON *", "must be '?'"),
            ("0 9 ? * ? *", "cannot both"),
            ("60 9 * * ? *", "field 1 (minutes)"),
            ("0 24 * * ? *", "field 2 (hours)"),
            ("0 9 32 * ? *", "field 3 (day-of-month)"),
            ("0 9 * FOO ? *", "field 4 (month)"),
            ("0 9 ? * MON#6 *", "field 5 (day-of-week)"),
            ("0 9 * * ? 1969", "field 6 (year)"),
            ("0/0 9 * * ? *", "step"),
        ] {
            let err = cron_expression(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn timezones_and_names() {
        for good in [
            "UTC",
            "Europe/Paris",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            validate_timezone(good).unwrap();
        }
        for bad in [
            "Paris",
            "Mars/Olympus",
            "Europe/",
            "europe/paris",
            "Europe/Paris Time",
            // The right shape, but no such zone.
            "Europe/Pariss",
        ] {
            let err = validate_timezone(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        validate_name("nightly-train_v2").unwrap();
        for bad in ["", "a b", "x/y", "v1.2", &"n".repeat(65), "reaper"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_per_schedule_and_run() {
        let a = client_token("lease-dev", "morning");
        assert_ne!(a, client_token("lease-dev", "evening"));
        assert!(a.ends_with(SCHEDULED_TIME));
        // A scheduled time is 20 characters: the token stays within EC2's 64.
        assert!(a.len() - SCHEDULED_TIME.len() + 20 <= 64);
    }
}
