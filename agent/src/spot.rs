//! Spot interruption and rebalance notices from IMDS: their paths and what EC2
//! documents about their bodies. The poller is [`crate::sources::spot`]; the lease loop
//! handles a notice once (and remembers it across a restart).

use chrono::{DateTime, Utc};
use serde::Deserialize;

pub const INSTANCE_ACTION: &str = "meta-data/spot/instance-action";
pub const REBALANCE: &str = "meta-data/events/recommendations/rebalance";

/// `spot/instance-action`: `{"action": "terminate", "time": "2026-11-23T01:02:03Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    pub time: DateTime<Utc>,
    /// The body as served, so a repeated notice is recognised and a restart can tell a
    /// handled notice from a new one.
    #[serde(skip)]
    pub raw: String,
}

/// `events/recommendations/rebalance`: `{"noticeTime": "2026-11-23T01:02:03Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rebalance {
    pub notice_time: DateTime<Utc>,
    #[serde(skip)]
    pub raw: String,
}

#[derive(Debug, thiserror::Error)]
#[error("IMDS '{path}' returned a notice that does not parse ({reason}): {body}")]
pub struct NoticeError {
    pub path: &'static str,
    pub reason: String,
    pub body: String,
}

pub fn parse_instance_action(body: &str) -> Result<InstanceAction, NoticeError> {
    let mut n: InstanceAction = serde_json::from_str(body).map_err(|e| NoticeError {
        path: INSTANCE_ACTION,
        reason: e.to_string(),
        body: body.to_string(),
    })?;
    n.raw = body.trim().to_string();
    Ok(n)
}

pub fn parse_rebalance(body: &str) -> Result<Rebalance, NoticeError> {
    let mut n: Rebalance = serde_json::from_str(body).map_err(|e| NoticeError {
        path: REBALANCE,
        reason: e.to_string(),
        body: body.to_string(),
    })?;
    n.raw = body.trim().to_string();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_bodies() {
        let n = parse_instance_action(r#"{"action": "terminate", "time": "2026-11-23T01:02:03Z"}"#)
            .unwrap();
        assert_eq!(n.action, "terminate");
        assert_eq!(n.time.to_rfc3339(), "2026-11-23T01:02:03+00:00");
        let r = parse_rebalance(r#"{"noticeTime": "2026-11-23T01:02:03Z"}"#).unwrap();
        assert_eq!(r.notice_time, n.time);
        let err = parse_instance_action("<html>").unwrap_err();
        assert!(err.to_string().contains("spot/instance-action"), "{err}");
    }
}
