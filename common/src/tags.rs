//! The `lease:*` tag schema: what the launcher writes on an instance and its volumes,
//! and what the agent, `lease list` and the reaper read back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

pub const MANAGED: &str = "lease:managed";
pub const OWNER: &str = "lease:owner";
pub const JOB: &str = "lease:job";
pub const TTL: &str = "lease:ttl";
pub const EXPIRES_AT: &str = "lease:expires-at";
pub const IDLE_TIMEOUT: &str = "lease:idle-timeout";
pub const ON_IDLE: &str = "lease:on-idle";
pub const ON_EXPIRY: &str = "lease:on-expiry";
pub const ON_COMPLETE: &str = "lease:on-complete";
pub const STATUS: &str = "lease:status";
pub const TASK: &str = "lease:task";
/// How the lease ended, written by the agent with its last `lease:status` when it ends
/// the lease itself: `expired`, `idle`, `complete` or `failed` (the `NodeDeregistered`
/// reason). `lease list` shows it once the instance has stopped or gone, since
/// `lease:status` then still says what the agent was doing (`expiring`).
pub const END_REASON: &str = "lease:end-reason";
/// EC2's own display-name tag; not ours, but `lease launch --name` sets it.
pub const NAME: &str = "Name";

/// The `lease:ttl` value of a lease deliberately launched without a deadline.
pub const TTL_NONE: &str = "none";

/// EC2 refuses tag values longer than this.
pub const MAX_VALUE_LEN: usize = 256;
/// EC2 refuses tag keys longer than this.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    #[error(
        "tag key '{0}' is not allowed in instance metadata: use only letters, digits and + - = . , _ : @ (no '/' or spaces)"
    )]
    IllegalKey(String),
    #[error("tag key '{key}' is {len} characters long; EC2 allows at most {MAX_KEY_LEN}")]
    KeyTooLong { key: String, len: usize },
    #[error("value of tag '{key}' is {len} characters long; EC2 allows at most {MAX_VALUE_LEN}")]
    ValueTooLong { key: String, len: usize },
    #[error("tag '{key}' has invalid value '{value}': {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("tag '{0}' is required but missing")]
    Missing(&'static str),
}

/// Checks a key against what instance-metadata tags allow, so the agent can always
/// read every tag the launcher wrote through IMDS.
pub fn validate_key(key: &str) -> Result<(), TagError> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c))
    {
        return Err(TagError::IllegalKey(key.to_string()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(TagError::KeyTooLong {
            key: key.to_string(),
            len: key.len(),
        });
    }
    Ok(())
}

pub fn validate_value(key: &str, value: &str) -> Result<(), TagError> {
    let len = value.chars().count();
    if len > MAX_VALUE_LEN {
        return Err(TagError::ValueTooLong {
            key: key.to_string(),
            len,
        });
    }
    Ok(())
}

/// What to do with an instance when its lease ends, it goes idle or its task completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Terminate,
    Stop,
    Hibernate,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Terminate, Action::Stop, Action::Hibernate];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Terminate => "terminate",
            Action::Stop => "stop",
            Action::Hibernate => "hibernate",
        }
    }

    /// The action to carry out on an instance of `market` (EC2's `instance-life-cycle`:
    /// `spot`, `on-demand`, …) in place of `self`. A one-time spot instance — the only
    /// spot kind lease launches — cannot be stopped or hibernated: EC2 refuses both, so
    /// on spot every end is a terminate. (A persistent spot request could stop, but it
    /// launches a replacement whenever its instance is terminated, which is how every
    /// lease ends; `lease launch` refuses stop and hibernate on spot for that reason.)
    pub fn on_market(self, market: &str) -> Action {
        if market == "spot" {
            Action::Terminate
        } else {
            self
        }
    }

    /// Whether this action needs an instance that can be stopped (not one-time spot).
    pub fn keeps_instance(self) -> bool {
        self != Action::Terminate
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not one of terminate, stop, hibernate"))
    }
}

/// The agent's view of the node, published in `lease:status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    Starting,
    Idle,
    Running,
    Uploading,
    Complete,
    Failed,
    Interrupted,
    Expiring,
    /// Set by the user-data's install step, not the agent: the agent package could not
    /// be installed (download, digest or install failed), so no agent runs here.
    InstallFailed,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 9] = [
        NodeStatus::Starting,
        NodeStatus::Idle,
        NodeStatus::Running,
        NodeStatus::Uploading,
        NodeStatus::Complete,
        NodeStatus::Failed,
        NodeStatus::Interrupted,
        NodeStatus::Expiring,
        NodeStatus::InstallFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Starting => "starting",
            NodeStatus::Idle => "idle",
            NodeStatus::Running => "running",
            NodeStatus::Uploading => "uploading",
            NodeStatus::Complete => "complete",
            NodeStatus::Failed => "failed",
            NodeStatus::Interrupted => "interrupted",
            NodeStatus::Expiring => "expiring",
            NodeStatus::InstallFailed => "install-failed",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeStatus::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a known lease status"))
    }
}

/// Every `lease:*` tag, typed. Absent optional tags are `None`; `Name` rides along
/// because `lease list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LeaseTags {
    pub managed: bool,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub job: Option<String>,
    /// `None` when the tag is absent, or when it says `none` (see `no_deadline`).
    pub ttl: Option<HumanDuration>,
    /// `lease:ttl=none`: launched with `--ttl none --yes`, deliberately without a
    /// deadline. Distinct from a missing tag, which the agent replaces with its
    /// default TTL.
    pub no_deadline: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub idle_timeout: Option<HumanDuration>,
    pub on_idle: Action,
    pub on_expiry: Action,
    pub on_complete: Action,
    pub status: Option<NodeStatus>,
    pub task: Option<String>,
}

/// Deadlines are written to the second, in UTC, with a `Z`: what `lease list` shows,
/// what IMDS returns and what a person types into `--expires-at` all agree.
pub fn render_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Rounds up to a whole second: tags hold whole seconds, and rounding down would
/// shorten a lease by a fraction of a second that then shows as `2h59m59s`.
pub fn ceil_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    if nanos == 0 {
        t
    } else {
        t - chrono::TimeDelta::nanoseconds(i64::from(nanos)) + chrono::TimeDelta::seconds(1)
    }
}

pub fn parse_time(key: &str, value: &str) -> Result<DateTime<Utc>, TagError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| TagError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: format!("not an RFC 3339 time ({e})"),
        })
}

impl LeaseTags {
    /// The tags to write, in a stable order, validated so a bad value is refused before
    /// any API call rather than by EC2 halfway through a launch.
    pub fn render(&self) -> Result<Vec<(String, String)>, TagError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v));
        put(MANAGED, self.managed.to_string());
        if let Some(n) = &self.name {
            put(NAME, n.clone());
        }
        if let Some(o) = &self.owner {
            put(OWNER, o.clone());
        }
        if let Some(j) = &self.job {
            put(JOB, j.clone());
        }
        if let Some(t) = self.ttl {
            put(TTL, t.to_string());
        } else if self.no_deadline {
            put(TTL, TTL_NONE.to_string());
        }
        if let Some(t) = self.expires_at {
            put(EXPIRES_AT, render_time(t));
        }
        if let Some(t) = self.idle_timeout {
            put(IDLE_TIMEOUT, t.to_string());
        }
        put(ON_IDLE, self.on_idle.to_string());
        put(ON_EXPIRY, self.on_expiry.to_string());
        put(ON_COMPLETE, self.on_complete.to_string());
        if let Some(s) = self.status {
            put(STATUS, s.to_string());
        }
        if let Some(t) = &self.task {
            put(TASK, t.clone());
        }
        for (k, v) in &out {
            validate_key(k)?;
            validate_value(k, v)?;
        }
        Ok(out)
    }

    /// Reads the tags of one instance. Keys outside the schema are ignored; a schema
    /// key with a value that does not parse is an error naming the key.
    pub fn parse<'a, I>(tags: I) -> Result<Self, TagError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut t = LeaseTags::default();
        let invalid = |key: &str, value: &str, reason: String| TagError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        for (k, v) in tags {
            match k {
                MANAGED => t.managed = v == "true",
                NAME => t.name = Some(v.to_string()),
                OWNER => t.owner = Some(v.to_string()),
                JOB => t.job = Some(v.to_string()),
                TTL if v == TTL_NONE => t.no_deadline = true,
                TTL => {
                    t.ttl = Some(v.parse().map_err(|e: crate::duration::DurationError| {
                        invalid(k, v, e.to_string())
                    })?)
                }
                EXPIRES_AT => t.expires_at = Some(parse_time(k, v)?),
                IDLE_TIMEOUT => {
                    t.idle_timeout =
                        Some(v.parse().map_err(|e: crate::duration::DurationError| {
                            invalid(k, v, e.to_string())
                        })?)
                }
                ON_IDLE => t.on_idle = v.parse().map_err(|e| invalid(k, v, e))?,
                ON_EXPIRY => t.on_expiry = v.parse().map_err(|e| invalid(k, v, e))?,
                ON_COMPLETE => t.on_complete = v.parse().map_err(|e| invalid(k, v, e))?,
                STATUS => t.status = Some(v.parse().map_err(|e| invalid(k, v, e))?),
                TASK => t.task = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(t)
    }

    /// Convenience over [`LeaseTags::parse`] for a map.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, TagError> {
        Self::parse(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The deadline the agent enforces: the earlier of `lease:expires-at` and launch
    /// time plus `lease:ttl`, so a tampered or stale tag can only shorten a lease.
    pub fn deadline(&self, launched_at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let from_ttl = launched_at
            .zip(self.ttl)
            .and_then(|(launch, ttl)| launch.checked_add_signed(ttl.to_chrono()));
        match (self.expires_at, from_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    fn sample() -> LeaseTags {
        LeaseTags {
            managed: true,
            name: Some("trainer".into()),
            owner: Some("alice@example.com".into()),
            job: Some("resnet sweep #4".into()),
            ttl: Some(HumanDuration::from_secs(7_200)),
            no_deadline: false,
            expires_at: Some(at(12, 0)),
            idle_timeout: Some(HumanDuration::from_secs(1_800)),
            on_idle: Action::Stop,
            on_expiry: Action::Terminate,
            on_complete: Action::Terminate,
            status: Some(NodeStatus::Running),
            task: Some("t-123".into()),
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let tags = sample();
        let rendered = tags.render().unwrap();
        let parsed =
            LeaseTags::parse(rendered.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(parsed, tags);
        assert!(rendered.contains(&(EXPIRES_AT.into(), "2026-11-23T12:00:00Z".into())));
        assert!(rendered.contains(&(TTL.into(), "2h".into())));
    }

    #[test]
    fn every_schema_key_is_legal_for_instance_metadata() {
        for k in [
            MANAGED,
            OWNER,
            JOB,
            TTL,
            EXPIRES_AT,
            IDLE_TIMEOUT,
            ON_IDLE,
            ON_EXPIRY,
            ON_COMPLETE,
            STATUS,
            TASK,
            NAME,
        ] {
            validate_key(k).unwrap();
        }
    }

    #[test]
    fn illegal_keys_and_long_values_are_refused_by_name() {
        assert_eq!(
            validate_key("lease/owner"),
            Err(TagError::IllegalKey("lease/owner".into()))
        );
        assert!(validate_key("has space").is_err());
        assert!(validate_key("").is_err());
        let mut tags = sample();
        tags.job = Some("x".repeat(257));
        let err = tags.render().unwrap_err();
        assert_eq!(
            err,
            TagError::ValueTooLong {
                key: JOB.into(),
                len: 257
            }
        );
        assert!(err.to_string().contains("lease:job"));
        tags.job = Some("é".repeat(256));
        tags.render().unwrap();
    }

    #[test]
    fn bad_values_name_the_tag() {
        let err = LeaseTags::parse([(TTL, "forever")]).unwrap_err();
        assert!(err.to_string().contains("lease:ttl"), "{err}");
        let err = LeaseTags::parse([(EXPIRES_AT, "tomorrow")]).unwrap_err();
        assert!(err.to_string().contains("lease:expires-at"), "{err}");
        let err = LeaseTags::parse([(ON_IDLE, "explode")]).unwrap_err();
        assert!(err.to_string().contains("lease:on-idle"), "{err}");
        // Tags outside the schema are someone else's business.
        assert!(LeaseTags::parse([("team", "x"), ("aws:foo", "y")]).is_ok());
    }

    #[test]
    fn deadline_is_the_earlier_of_tag_and_launch_plus_ttl() {
        let mut t = LeaseTags {
            ttl: Some(HumanDuration::from_secs(3_600)),
            expires_at: Some(at(12, 0)),
            ..Default::default()
        };
        assert_eq!(t.deadline(Some(at(10, 0))), Some(at(11, 0)));
        assert_eq!(t.deadline(Some(at(11, 30))), Some(at(12, 0)));
        assert_eq!(t.deadline(None), Some(at(12, 0)));
        t.expires_at = None;
        assert_eq!(t.deadline(Some(at(10, 0))), Some(at(11, 0)));
        t.ttl = None;
        assert_eq!(t.deadline(Some(at(10, 0))), None);
    }

    #[test]
    fn ttl_none_is_explicit_and_round_trips() {
        let t = LeaseTags {
            managed: true,
            no_deadline: true,
            ..Default::default()
        };
        let rendered = t.render().unwrap();
        assert!(rendered.contains(&(TTL.into(), "none".into())));
        let parsed = LeaseTags::parse([(TTL, "none")]).unwrap();
        assert!(parsed.no_deadline);
        assert_eq!(parsed.ttl, None);
        assert!(!LeaseTags::parse([]).unwrap().no_deadline);
    }

    #[test]
    fn spot_ends_every_lease_with_a_terminate() {
        for a in Action::ALL {
            assert_eq!(a.on_market("spot"), Action::Terminate, "{a}");
            assert_eq!(a.on_market("on-demand"), a, "{a}");
        }
        assert!(!Action::Terminate.keeps_instance());
        assert!(Action::Stop.keeps_instance() && Action::Hibernate.keeps_instance());
    }
}
