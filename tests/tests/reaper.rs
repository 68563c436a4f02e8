//! The backstop reaper's library against moto's server: every result read back with
//! DescribeInstances. Each test passes its own "now", so lease deadlines and the age
//! cap are reached without waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_ec2::types::InstanceStateName;
use chrono::{DateTime, TimeDelta, Utc};
use lease_common::tags::render_time;
use lease_reaper::{AwsEc2, ReapAction, ReaperConfig, Report, reap};
use lease_tests::Moto;

/// Launches one instance with these tags, the way `lease launch` would (tags set by
/// RunInstances itself).
async fn run(moto: &Moto, tags: &[(&str, String)]) -> String {
    let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    moto.run_instance(&tags).await
}

fn managed(expires_at: DateTime<Utc>) -> Vec<(&'static str, String)> {
    vec![
        ("lease:managed", "true".into()),
        ("lease:ttl", "1d".into()),
        ("lease:expires-at", render_time(expires_at)),
    ]
}

async fn state(moto: &Moto, id: &str) -> InstanceStateName {
    moto.instance(id)
        .await
        .state()
        .unwrap()
        .name()
        .unwrap()
        .clone()
}

async fn run_reaper(moto: &Moto, now: DateTime<Utc>) -> Report {
    let ec2 = AwsEc2::new(moto.ec2().await);
    reap(now, &ec2, &ReaperConfig::default()).await.unwrap()
}

fn acted_on(report: &Report) -> Vec<(String, ReapAction)> {
    report
        .acted
        .iter()
        .map(|o| (o.instance_id.clone(), o.action))
        .collect()
}

#[tokio::test]
async fn expired_beyond_grace_is_terminated_live_and_within_grace_are_kept_and_a_rerun_is_a_no_op()
{
    let moto = Moto::start();
    let now = Utc::now();
    let expired = run(&moto, &managed(now - TimeDelta::hours(1))).await;
    let in_grace = run(&moto, &managed(now - TimeDelta::minutes(5))).await;
    let live = run(&moto, &managed(now + TimeDelta::hours(1))).await;
    // Unmanaged and long past any deadline: not ours.
    let unmanaged = run(
        &moto,
        &[
            ("lease:ttl", "1s".into()),
            ("lease:expires-at", render_time(now - TimeDelta::days(30))),
        ],
    )
    .await;

    let report = run_reaper(&moto, now).await;
    assert_eq!(
        acted_on(&report),
        [(expired.clone(), ReapAction::Terminate)]
    );
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(report.examined, 3);
    assert_eq!(report.kept, 2);
    assert_eq!(
        state(&moto, &expired).await,
        InstanceStateName::Terminated,
        "read back with DescribeInstances"
    );
    for id in [&in_grace, &live, &unmanaged] {
        assert_eq!(state(&moto, id).await, InstanceStateName::Running, "{id}");
    }

    // Idempotent: the terminated instance is no longer listed, nothing else is due.
    let again = run_reaper(&moto, now).await;
    assert!(again.acted.is_empty(), "{again:?}");
    assert_eq!(again.examined, 2);
    for id in [&in_grace, &live, &unmanaged] {
        assert_eq!(state(&moto, id).await, InstanceStateName::Running, "{id}");
    }
}

#[tokio::test]
async fn on_expiry_stop_stops_once_and_a_rerun_does_not_stop_again() {
    let moto = Moto::start();
    let now = Utc::now();
    let mut tags = managed(now - TimeDelta::hours(1));
    tags.push(("lease:on-expiry", "stop".into()));
    let id = run(&moto, &tags).await;

    let report = run_reaper(&moto, now).await;
    assert_eq!(acted_on(&report), [(id.clone(), ReapAction::Stop)]);
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(state(&moto, &id).await, InstanceStateName::Stopped);

    let again = run_reaper(&moto, now).await;
    assert!(again.acted.is_empty(), "{again:?}");
    assert_eq!(again.examined, 1, "a stopped instance is still examined");
    assert_eq!(state(&moto, &id).await, InstanceStateName::Stopped);
}

#[tokio::test]
async fn the_age_cap_applies_to_leases_without_a_deadline_and_to_bad_tags() {
    let moto = Moto::start();
    let no_deadline = run(
        &moto,
        &[
            ("lease:managed", "true".into()),
            ("lease:ttl", "none".into()),
        ],
    )
    .await;
    let bad_tag = run(
        &moto,
        &[
            ("lease:managed", "true".into()),
            ("lease:ttl", "forever".into()),
        ],
    )
    .await;

    // Within the cap: both kept, the bad tag reported by name.
    let report = run_reaper(&moto, Utc::now() + TimeDelta::days(6)).await;
    assert!(report.acted.is_empty(), "{report:?}");
    assert_eq!(report.bad_tags.len(), 1, "{report:?}");
    assert_eq!(report.bad_tags[0].instance_id, bad_tag);
    assert!(report.bad_tags[0].error.contains("lease:ttl"), "{report:?}");

    // Past the 7-day cap: both terminated.
    let report = run_reaper(&moto, Utc::now() + TimeDelta::days(8)).await;
    let mut acted = acted_on(&report);
    acted.sort();
    let mut expected = vec![
        (no_deadline.clone(), ReapAction::Terminate),
        (bad_tag.clone(), ReapAction::Terminate),
    ];
    expected.sort();
    assert_eq!(acted, expected);
    assert!(
        report.acted.iter().all(|o| o.reason.contains("age cap")),
        "{report:?}"
    );
    for id in [&no_deadline, &bad_tag] {
        assert_eq!(state(&moto, id).await, InstanceStateName::Terminated);
    }
}

#[tokio::test]
async fn a_stopped_instance_past_its_deadline_is_terminated_when_on_expiry_is_terminate() {
    let moto = Moto::start();
    let now = Utc::now();
    let id = run(&moto, &managed(now - TimeDelta::hours(1))).await;
    moto.ec2()
        .await
        .stop_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(state(&moto, &id).await, InstanceStateName::Stopped);

    let report = run_reaper(&moto, now).await;
    assert_eq!(acted_on(&report), [(id.clone(), ReapAction::Terminate)]);
    assert_eq!(state(&moto, &id).await, InstanceStateName::Terminated);
}
