//! A task record, typed: the item the task table holds, read and written through the
//! attribute names in [`super::task`]. Every attribute but the key is optional, since
//! each writer sets only its own part (`lease submit` the queued record, the agent the
//! claim and what follows) and an older or newer version may lack or add attributes.

use std::fmt;

use chrono::{DateTime, Utc};

use super::attr::{Attr, Item, SdkItem, from_sdk_item, get_n, get_s, get_time, put, to_sdk_item};
use super::{EXPIRES, TASK_ID, TASK_RETENTION_SECS, TaskState, task};

/// A state as recorded: one this build knows, or another (a newer agent's), kept as
/// written so that readers show it rather than hide the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedState {
    Known(TaskState),
    Unknown(String),
}

impl RecordedState {
    pub fn parse(s: &str) -> Self {
        s.parse().map_or_else(
            |_| RecordedState::Unknown(s.to_string()),
            RecordedState::Known,
        )
    }

    pub fn as_str(&self) -> &str {
        match self {
            RecordedState::Known(s) => s.as_str(),
            RecordedState::Unknown(s) => s,
        }
    }

    pub fn known(&self) -> Option<TaskState> {
        match self {
            RecordedState::Known(s) => Some(*s),
            RecordedState::Unknown(_) => None,
        }
    }
}

impl From<TaskState> for RecordedState {
    fn from(s: TaskState) -> Self {
        RecordedState::Known(s)
    }
}

impl fmt::Display for RecordedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The task table's item. Times are RFC 3339 strings in whole seconds on the wire;
/// `claim_until` and `expires` are epoch seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRecord {
    pub task_id: String,
    pub state: Option<RecordedState>,
    pub kind: Option<String>,
    pub pool: Option<String>,
    pub attempt: Option<u32>,
    pub node_id: Option<String>,
    pub instance_id: Option<String>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub claim_until: Option<i64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub bundle: Option<String>,
    pub log: Option<String>,
    pub summary: Option<String>,
    pub expires: Option<i64>,
}

impl TaskRecord {
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            ..Self::default()
        }
    }

    /// The state, when it is one this build knows.
    pub fn task_state(&self) -> Option<TaskState> {
        self.state.as_ref().and_then(RecordedState::known)
    }

    /// The retention a record gets once its task ended (or, for a queued record, from
    /// its submission): [`TASK_RETENTION_SECS`] after `at`.
    pub fn expires_after(at: DateTime<Utc>) -> i64 {
        at.timestamp() + TASK_RETENTION_SECS
    }

    /// The item: the key, and each attribute that is set. An empty `task_id` (a
    /// partial record for an update, whose key travels apart) is left out.
    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        if !self.task_id.is_empty() {
            item.insert(TASK_ID.to_string(), Attr::s(&self.task_id));
        }
        put(&mut item, task::STATE, self.state.as_ref(), |s| {
            Attr::s(s.as_str())
        });
        put(&mut item, task::KIND, self.kind.as_ref(), Attr::s);
        put(&mut item, task::POOL, self.pool.as_ref(), Attr::s);
        put(&mut item, task::ATTEMPT, self.attempt, Attr::n);
        put(&mut item, task::NODE_ID, self.node_id.as_ref(), Attr::s);
        put(
            &mut item,
            task::INSTANCE_ID,
            self.instance_id.as_ref(),
            Attr::s,
        );
        put(&mut item, task::SUBMITTED_AT, self.submitted_at, Attr::time);
        put(&mut item, task::STARTED_AT, self.started_at, Attr::time);
        put(&mut item, task::ENDED_AT, self.ended_at, Attr::time);
        put(&mut item, task::UPDATED_AT, self.updated_at, Attr::time);
        put(&mut item, task::CLAIM_UNTIL, self.claim_until, Attr::n);
        put(&mut item, task::EXIT_CODE, self.exit_code, Attr::n);
        put(&mut item, task::REASON, self.reason.as_ref(), Attr::s);
        put(&mut item, task::BUNDLE, self.bundle.as_ref(), Attr::s);
        put(&mut item, task::LOG, self.log.as_ref(), Attr::s);
        put(&mut item, task::SUMMARY, self.summary.as_ref(), Attr::s);
        put(&mut item, EXPIRES, self.expires, Attr::n);
        item
    }

    /// Reads what it can: an attribute missing, of another type, or not parsing is
    /// `None`; attributes it does not know are ignored (the item itself keeps them).
    pub fn from_item(item: &Item) -> Self {
        let s = |name: &str| get_s(item, name).map(str::to_string);
        Self {
            task_id: s(TASK_ID).unwrap_or_default(),
            state: get_s(item, task::STATE).map(RecordedState::parse),
            kind: s(task::KIND),
            pool: s(task::POOL),
            attempt: get_n(item, task::ATTEMPT),
            node_id: s(task::NODE_ID),
            instance_id: s(task::INSTANCE_ID),
            submitted_at: get_time(item, task::SUBMITTED_AT),
            started_at: get_time(item, task::STARTED_AT),
            ended_at: get_time(item, task::ENDED_AT),
            updated_at: get_time(item, task::UPDATED_AT),
            claim_until: get_n(item, task::CLAIM_UNTIL),
            exit_code: get_n(item, task::EXIT_CODE),
            reason: s(task::REASON),
            bundle: s(task::BUNDLE),
            log: s(task::LOG),
            summary: s(task::SUMMARY),
            expires: get_n(item, EXPIRES),
        }
    }

    pub fn to_sdk_item(&self) -> SdkItem {
        to_sdk_item(&self.to_item())
    }

    pub fn from_sdk_item(item: &SdkItem) -> Self {
        Self::from_item(&from_sdk_item(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).unwrap()
    }

    fn full() -> TaskRecord {
        TaskRecord {
            task_id: "20261123T100000Z-ab12".into(),
            state: Some(TaskState::Complete.into()),
            kind: Some("shell".into()),
            pool: Some("gpu".into()),
            attempt: Some(2),
            node_id: Some("node-1".into()),
            instance_id: Some("i-0abc".into()),
            submitted_at: Some(at(10)),
            started_at: Some(at(11)),
            ended_at: Some(at(12)),
            updated_at: Some(at(12)),
            claim_until: Some(at(13).timestamp()),
            exit_code: Some(-1),
            reason: Some("exited with status 255".into()),
            bundle: Some("s3://ctl/jobs/i-0abc/20261123T100000Z-ab12/bundle/".into()),
            log: Some("s3://ctl/logs/20261123T100000Z-ab12.log".into()),
            summary: Some("make test".into()),
            expires: Some(TaskRecord::expires_after(at(12))),
        }
    }

    /// The wire format ARCHITECTURE.md fixes, attribute by attribute: a change here is
    /// a change of the contract between agents and launchers of different versions.
    #[test]
    fn golden_item() {
        use aws_sdk_dynamodb::types::AttributeValue::{N, S};
        let golden = SdkItem::from([
            ("task_id".into(), S("20261123T100000Z-ab12".into())),
            ("state".into(), S("complete".into())),
            ("kind".into(), S("shell".into())),
            ("pool".into(), S("gpu".into())),
            ("attempt".into(), N("2".into())),
            ("node_id".into(), S("node-1".into())),
            ("instance_id".into(), S("i-0abc".into())),
            ("submitted_at".into(), S("2026-11-23T10:00:00Z".into())),
            ("started_at".into(), S("2026-11-23T11:00:00Z".into())),
            ("ended_at".into(), S("2026-11-23T12:00:00Z".into())),
            ("updated_at".into(), S("2026-11-23T12:00:00Z".into())),
            ("claim_until".into(), N("1795438800".into())),
            ("exit_code".into(), N("-1".into())),
            ("reason".into(), S("exited with status 255".into())),
            (
                "bundle".into(),
                S("s3://ctl/jobs/i-0abc/20261123T100000Z-ab12/bundle/".into()),
            ),
            (
                "log".into(),
                S("s3://ctl/logs/20261123T100000Z-ab12.log".into()),
            ),
            ("summary".into(), S("make test".into())),
            ("expires".into(), N("1798027200".into())),
        ]);
        assert_eq!(full().to_sdk_item(), golden);
        assert_eq!(TaskRecord::from_sdk_item(&golden), full());
    }

    #[test]
    fn round_trips_keep_what_is_set_and_write_nothing_else() {
        let queued = TaskRecord {
            state: Some(TaskState::Queued.into()),
            attempt: Some(1),
            ..TaskRecord::new("t-1")
        };
        let item = queued.to_item();
        assert_eq!(
            item.keys().map(String::as_str).collect::<Vec<_>>(),
            ["attempt", "state", "task_id"]
        );
        assert_eq!(TaskRecord::from_item(&item), queued);
        assert_eq!(TaskRecord::from_item(&full().to_item()), full());
        // A partial record for an update carries no key.
        let change = TaskRecord {
            exit_code: Some(0),
            ..TaskRecord::default()
        };
        assert_eq!(change.to_item().keys().collect::<Vec<_>>(), ["exit_code"]);
    }

    #[test]
    fn a_newer_agents_record_still_reads() {
        let mut item = full().to_item();
        item.insert(task::STATE.into(), Attr::s("paused"));
        item.insert(task::SUBMITTED_AT.into(), Attr::s("not a time"));
        item.insert(task::ATTEMPT.into(), Attr::s("2"));
        item.insert("priority".into(), Attr::n(5));
        let r = TaskRecord::from_item(&item);
        assert_eq!(r.state, Some(RecordedState::Unknown("paused".into())));
        assert_eq!(r.state.as_ref().map(RecordedState::as_str), Some("paused"));
        assert_eq!(r.task_state(), None);
        assert_eq!(r.submitted_at, None);
        assert_eq!(r.attempt, None, "a string is not a number");
        assert_eq!(r.started_at, Some(at(11)));
        assert_eq!(TaskRecord::from_item(&Item::new()), TaskRecord::default());
    }
}
