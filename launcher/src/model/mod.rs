//! What `lease` builds before it calls AWS, as data and pure functions: tasks, the
//! launch plan and its user-data, schedule specs, IAM policies, and what a failed
//! launch means. Nothing here does I/O beyond reading a file a flag names, so every
//! rule is a unit test.

pub mod launch_plan;
pub mod policies;
pub mod quota;
pub mod schedule_spec;
pub mod task;
pub mod userdata;
