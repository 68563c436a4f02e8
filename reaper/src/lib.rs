//! The backstop reaper: terminates (or stops, per `lease:on-expiry`) managed instances
//! whose deadline passed more than a grace period ago — their agent should have acted
//! and did not, so it may be dead — and caps every managed instance's age, even with
//! `lease:ttl=none`.
//!
//! [`decide::evaluate`] is the pure rule for one instance; [`reap`] lists the managed
//! instances through an [`ec2::Ec2`], acts on every one that is due, keeps going when a
//! call fails, and reports each outcome. It is idempotent: what it terminated is no
//! longer listed, and it never stops an instance that is already stopping or stopped.
//! [`function`] is the Lambda function that runs it on a schedule (the `bootstrap`
//! binary is its wiring).

pub mod decide;
pub mod ec2;
pub mod function;

use chrono::{DateTime, Utc};
use lease_common::tags::LeaseTags;
use serde::Serialize;

pub use decide::{
    Decision, InstanceFacts, InstanceState, ReapAction, ReaperConfig, Reason, evaluate,
};
pub use ec2::{AwsEc2, Ec2, Ec2Error};

/// What happened to one instance the reaper acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Outcome {
    pub instance_id: String,
    pub action: ReapAction,
    /// Why, in words (also in `reason_detail`).
    pub reason: String,
    pub reason_detail: Reason,
    /// `None` when the call succeeded; otherwise the error, naming the instance.
    pub error: Option<String>,
}

impl Outcome {
    fn new(id: &str, action: ReapAction, reason: Reason, error: Option<Ec2Error>) -> Self {
        Self {
            instance_id: id.to_string(),
            action,
            reason: reason.to_string(),
            reason_detail: reason,
            error: error.map(|e| e.to_string()),
        }
    }
}

/// An instance whose lease tags do not parse: only the age cap applies to it until a
/// person fixes the tag, so it is reported every run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BadTags {
    pub instance_id: String,
    /// The parse error, which names the tag and its value.
    pub error: String,
}

/// One run of the reaper.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// Managed instances listed.
    pub examined: usize,
    /// Of those, how many were left alone.
    pub kept: usize,
    pub acted: Vec<Outcome>,
    pub bad_tags: Vec<BadTags>,
}

impl Report {
    /// How many actions failed: the run is a failure (for alarms) when this is not zero.
    pub fn failures(&self) -> usize {
        self.acted.iter().filter(|o| o.error.is_some()).count()
    }
}

/// Lists every managed instance and acts on those [`evaluate`] says are due. Only the
/// listing failing is an error; a failed terminate or stop is recorded in the report
/// and the run goes on to the next instance.
pub async fn reap<E: Ec2>(
    now: DateTime<Utc>,
    ec2: &E,
    config: &ReaperConfig,
) -> Result<Report, Ec2Error> {
    let instances = ec2.managed_instances().await?;
    let mut report = Report::default();
    for facts in &instances {
        // The listing filters on the tag, but the rule does not rest on a filter.
        if !facts.is_managed() {
            continue;
        }
        report.examined += 1;
        if let Err(e) = LeaseTags::from_map(&facts.tags) {
            report.bad_tags.push(BadTags {
                instance_id: facts.id.clone(),
                error: e.to_string(),
            });
        }
        let Decision::Act { action, reason } = evaluate(now, facts, config) else {
            report.kept += 1;
            continue;
        };
        // Like the agent, re-read the tags immediately before acting, so a `lease
        // extend` that landed after the listing still wins.
        let (action, reason) = match ec2.instance(&facts.id).await {
            Ok(Some(fresh)) => match evaluate(now, &fresh, config) {
                Decision::Act { action, reason } => (action, reason),
                Decision::Keep => {
                    report.kept += 1;
                    continue;
                }
            },
            // Already shutting down or gone: nothing left to do.
            Ok(None) => {
                report.kept += 1;
                continue;
            }
            Err(e) => {
                report
                    .acted
                    .push(Outcome::new(&facts.id, action, reason, Some(e)));
                continue;
            }
        };
        let result = match action {
            ReapAction::Terminate => ec2.terminate(&facts.id).await,
            ReapAction::Stop => ec2.stop(&facts.id).await,
        };
        report
            .acted
            .push(Outcome::new(&facts.id, action, reason, result.err()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;
    use std::sync::Mutex;

    /// Records calls; `fail` names instances whose action fails.
    #[derive(Debug, Default)]
    struct FakeEc2 {
        instances: Vec<InstanceFacts>,
        /// What a re-read returns instead of the listed facts (an extend that landed).
        fresh: Vec<InstanceFacts>,
        fail: Vec<String>,
        calls: Mutex<Vec<(String, String)>>,
    }

    impl FakeEc2 {
        fn call(&self, what: &str, id: &str) -> Result<(), Ec2Error> {
            self.calls
                .lock()
                .unwrap()
                .push((what.to_string(), id.to_string()));
            if self.fail.iter().any(|f| f == id) {
                return Err(Ec2Error::Terminate {
                    id: id.to_string(),
                    message: "UnauthorizedOperation: no".into(),
                });
            }
            Ok(())
        }
    }

    impl Ec2 for FakeEc2 {
        async fn managed_instances(&self) -> Result<Vec<InstanceFacts>, Ec2Error> {
            Ok(self.instances.clone())
        }
        async fn instance(&self, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
            Ok(self
                .fresh
                .iter()
                .chain(&self.instances)
                .find(|i| i.id == id)
                .cloned())
        }
        async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
            self.call("terminate", id)
        }
        async fn stop(&self, id: &str) -> Result<(), Ec2Error> {
            self.call("stop", id)
        }
    }

    fn instance(id: &str, tags: &[(&str, &str)]) -> InstanceFacts {
        InstanceFacts {
            id: id.into(),
            state: InstanceState::Running,
            launch_time: Some(Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            market: "on-demand".into(),
        }
    }

    #[tokio::test]
    async fn acts_on_each_due_instance_keeps_going_after_a_failure_and_reports_bad_tags() {
        let m = ("lease:managed", "true");
        let ec2 = FakeEc2 {
            instances: vec![
                instance("i-fails", &[m, ("lease:ttl", "1h")]),
                instance("i-expired", &[m, ("lease:ttl", "1h")]),
                instance(
                    "i-stop",
                    &[m, ("lease:ttl", "1h"), ("lease:on-expiry", "stop")],
                ),
                instance("i-live", &[m, ("lease:ttl", "1d")]),
                instance("i-badtag", &[m, ("lease:ttl", "forever")]),
                // Listed by a broken filter: still never touched.
                instance("i-unmanaged", &[("lease:ttl", "1h")]),
            ],
            fail: vec!["i-fails".into()],
            ..Default::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let report = reap(now, &ec2, &ReaperConfig::default()).await.unwrap();
        assert_eq!(
            *ec2.calls.lock().unwrap(),
            [
                ("terminate".to_string(), "i-fails".to_string()),
                ("terminate".into(), "i-expired".into()),
                ("stop".into(), "i-stop".into()),
            ]
        );
        assert_eq!(report.examined, 5);
        assert_eq!(report.kept, 2);
        assert_eq!(report.failures(), 1);
        let failed = &report.acted[0];
        assert_eq!(
            failed.error.as_deref(),
            Some("Failed to terminate instance 'i-fails': UnauthorizedOperation: no")
        );
        assert!(
            failed
                .reason
                .contains("lease expired at 2026-11-23T11:00:00Z")
        );
        assert_eq!(report.acted[1].error, None);
        assert_eq!(report.bad_tags.len(), 1);
        assert_eq!(report.bad_tags[0].instance_id, "i-badtag");
        assert!(report.bad_tags[0].error.contains("lease:ttl"));
    }

    #[tokio::test]
    async fn an_extend_that_lands_after_the_listing_wins() {
        let m = ("lease:managed", "true");
        // Listed: launched 10:00 with a 1h lease, so due at 12:00. Re-read just before
        // acting: extended to 3h.
        let ec2 = FakeEc2 {
            instances: vec![instance("i-extended", &[m, ("lease:ttl", "1h")])],
            fresh: vec![instance("i-extended", &[m, ("lease:ttl", "3h")])],
            ..Default::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let report = reap(now, &ec2, &ReaperConfig::default()).await.unwrap();
        assert!(ec2.calls.lock().unwrap().is_empty(), "{report:?}");
        assert_eq!(report.kept, 1);
        assert!(report.acted.is_empty());
    }
}
