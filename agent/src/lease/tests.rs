//! The loop's tests: the loop driven with fakes, through paused time, for what only
//! the loop can show (timing, retries, the poweroff fallback); and the decisions
//! alone, on [`LeaseState`], asserting on the effects with no fakes at all.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use lease_common::config::AgentConfig;
use lease_common::messages::EventKind;
use lease_common::tags::{self, Action, NodeStatus};
use tokio::sync::{mpsc, oneshot, watch};

use super::*;
use crate::clock::TokioClock;
use crate::control::protocol::Request;
use crate::deadline::DeadlineSource;
use crate::ec2::fake::FakeEc2;
use crate::events::fake::RecordingPublisher;
use crate::idle;
use crate::power::{CountingPowerOff, NeverPowerOff};
use crate::spot;
use crate::state::{self, SavedState};
use crate::tagread::fake::{FakeTags, TagMap};
use crate::tagwrite::StatusTags;
use crate::work::worker::fake::RecordingWorker;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

struct Rig {
    power: Arc<dyn PowerOff>,
    clock: Arc<TokioClock>,
    ec2: Arc<FakeEc2>,
    tags: TagMap,
    publisher: Arc<RecordingPublisher>,
    worker: Arc<RecordingWorker>,
    state_dir: tempfile::TempDir,
    market: &'static str,
}

fn tags(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// An on-demand instance unless a test says otherwise: on spot every end is a
/// terminate, which would hide the stop and hibernate paths.
fn identity() -> InstanceIdentity {
    identity_on("on-demand")
}

fn identity_on(market: &str) -> InstanceIdentity {
    InstanceIdentity {
        instance_id: "i-0abc".into(),
        region: "us-east-1".into(),
        instance_type: "t3.micro".into(),
        market: market.into(),
        launched_at: Some(t0()),
    }
}

impl Rig {
    fn new(initial: Option<BTreeMap<String, String>>) -> Self {
        let clock = Arc::new(TokioClock::starting_at(t0()));
        Self {
            ec2: Arc::new(FakeEc2::new(clock.clone())),
            clock: clock.clone(),
            power: Arc::new(NeverPowerOff::default()),
            tags: Arc::new(Mutex::new(initial)),
            publisher: Arc::new(RecordingPublisher::default()),
            worker: Arc::new(RecordingWorker::new(clock.clone())),
            state_dir: tempfile::tempdir().unwrap(),
            market: "on-demand",
        }
    }

    fn build(&self, saved: Option<SavedState>) -> (DecisionLoop, watch::Receiver<Snapshot>) {
        let deps = Deps {
            clock: self.clock.clone(),
            ec2: self.ec2.clone(),
            status: StatusTags::new(self.ec2.clone(), "i-0abc".into()),
            tags: Arc::new(FakeTags(self.tags.clone())),
            emitter: Emitter::new(
                self.publisher.clone(),
                self.clock.clone(),
                "node-1".into(),
                "i-0abc".into(),
            ),
            worker: self.worker.clone(),
            power: self.power.clone(),
            notifier: Notifier::disabled(),
            reload: None,
            terminate_grace: Duration::from_secs(60),
            wall: false,
        };
        let mut settings = Settings::from_config(&AgentConfig::default());
        settings.state_dir = self.state_dir.path().to_path_buf();
        let initial = self.tags.lock().unwrap().clone();
        DecisionLoop::new(
            deps,
            settings,
            identity_on(self.market),
            "node-1".into(),
            "i-0abc".into(),
            initial,
            saved,
        )
    }

    fn acts(&self) -> Vec<(Action, DateTime<Utc>)> {
        self.ec2.acts.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn the_status_line_says_time_left_idle_and_task() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T15:59:00Z")]));
    let (_l, snap) = rig.build(None);
    let mut s = snap.borrow().clone();
    assert_eq!(
        s.line(t0()),
        "lease ends in 3h59m (2026-11-23T15:59:00Z, then terminate) · active · no task"
    );
    s.idle = true;
    s.idle_since = Some(t0() - TimeDelta::seconds(90));
    s.task = Some("t-7".into());
    assert_eq!(
        s.line(t0()),
        "lease ends in 3h59m (2026-11-23T15:59:00Z, then terminate) · idle for 1m30s · task t-7"
    );
}

fn never() -> impl Future<Output = StopReason> {
    std::future::pending()
}

#[tokio::test(start_paused = true)]
async fn warns_at_15_5_1_minutes_then_terminates_at_the_deadline() {
    let rig = Rig::new(tags(&[
        (tags::EXPIRES_AT, "2026-11-23T12:20:00Z"),
        (tags::TTL, "2h"),
    ]));
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l.run(rx, never()).await;
    assert_eq!(
        outcome,
        Outcome::Ended {
            reason: EndReason::Expired,
            action: Action::Terminate,
            acted: true
        }
    );
    let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
    let acts = rig.acts();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].0, Action::Terminate);
    let late = acts[0].1 - deadline;
    assert!(
        late >= TimeDelta::zero() && late < TimeDelta::milliseconds(50),
        "acted {late} after the deadline"
    );
    let events = rig.publisher.events.lock().unwrap().clone();
    let expiring: Vec<(u64, DateTime<Utc>)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LeaseExpiring { minutes_left, .. } => Some((minutes_left, e.at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        expiring.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        vec![15, 5, 1]
    );
    assert_eq!(expiring[0].1, deadline - TimeDelta::minutes(15));
    let types = rig.publisher.types();
    let expired = types.iter().position(|t| *t == "LeaseExpired").unwrap();
    let dereg = types.iter().position(|t| *t == "NodeDeregistered").unwrap();
    assert!(expired > 0 && dereg > 0);
    assert_eq!(*rig.worker.drains.lock().unwrap(), 1);
    assert!(
        rig.ec2
            .tagged
            .lock()
            .unwrap()
            .contains(&(tags::STATUS.into(), "expiring".into()))
    );
    assert!(
        rig.ec2
            .tagged
            .lock()
            .unwrap()
            .contains(&(tags::END_REASON.into(), "expired".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_task_is_drained_the_lead_before_the_deadline() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
    *rig.worker.task.lock().unwrap() = Some("t-1".into());
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l.run(rx, never()).await;
    assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
    let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
    let calls = rig.worker.drain_calls.lock().unwrap().clone();
    // The default lead is a minute: the drain starts then, limited by the deadline;
    // the usual short drain at the deadline follows, and the action is on time.
    assert_eq!(calls[0], (deadline - TimeDelta::seconds(60), deadline));
    assert_eq!(calls.len(), 2, "{calls:?}");
    let late = rig.acts()[0].1 - deadline;
    assert!(late >= TimeDelta::zero() && late < TimeDelta::milliseconds(50));
}

#[tokio::test(start_paused = true)]
async fn a_task_started_inside_the_lead_is_drained_within_a_second() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let worker = rig.worker.clone();
    let clock = rig.clock.clone();
    let starts_at = Utc.with_ymd_and_hms(2026, 11, 23, 12, 19, 30).unwrap();
    tokio::spawn(async move {
        clock::sleep_until(clock.as_ref(), starts_at).await;
        *worker.task.lock().unwrap() = Some("t-2".into());
    });
    l.run(rx, never()).await;
    let calls = rig.worker.drain_calls.lock().unwrap().clone();
    let (at, until) = calls[0];
    assert_eq!(until, starts_at + TimeDelta::seconds(30));
    assert!(
        at >= starts_at && at - starts_at <= TimeDelta::seconds(1),
        "drain started at {at}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_task_the_deadline_alone_drains() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")]));
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    l.run(rx, never()).await;
    let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
    let calls = rig.worker.drain_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].0 >= deadline);
}

#[tokio::test(start_paused = true)]
async fn an_extend_a_second_before_the_deadline_wins() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:30Z")]));
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let map = rig.tags.clone();
    let clock = rig.clock.clone();
    tokio::spawn(async move {
        let at = t0() + TimeDelta::seconds(29);
        clock::sleep_until(clock.as_ref(), at).await;
        map.lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .insert(tags::EXPIRES_AT.into(), "2026-11-23T12:10:00Z".into());
    });
    let outcome = l.run(rx, never()).await;
    assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
    let acts = rig.acts();
    assert_eq!(acts.len(), 1);
    assert_eq!(
        acts[0].1.timestamp(),
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 10, 0)
            .unwrap()
            .timestamp()
    );
}

#[tokio::test(start_paused = true)]
async fn no_deadline_tag_means_the_default_ttl_from_launch() {
    let rig = Rig::new(tags(&[(tags::MANAGED, "true"), (tags::ON_EXPIRY, "stop")]));
    let (l, snap) = rig.build(None);
    assert_eq!(l.deadline(), t0() + TimeDelta::hours(4));
    assert_eq!(snap.borrow().deadline_source, DeadlineSource::DefaultTtl);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l.run(rx, never()).await;
    assert_eq!(
        outcome,
        Outcome::Ended {
            reason: EndReason::Expired,
            action: Action::Stop,
            acted: true
        }
    );
    assert_eq!(
        rig.acts()[0].1.timestamp(),
        (t0() + TimeDelta::hours(4)).timestamp()
    );
}

#[tokio::test(start_paused = true)]
async fn unreadable_tags_fall_back_to_the_saved_deadline() {
    let rig = Rig::new(None);
    let saved = SavedState::new(
        identity(),
        t0() + TimeDelta::seconds(42),
        DeadlineSource::Tags,
    );
    let (l, _snap) = rig.build(Some(saved));
    assert_eq!(l.deadline(), t0() + TimeDelta::seconds(42));
    let (_tx, rx) = mpsc::channel(8);
    l.run(rx, never()).await;
    assert_eq!(
        rig.acts()[0].1.timestamp(),
        (t0() + TimeDelta::seconds(42)).timestamp()
    );
    // The state it leaves behind names the same deadline, for the next restart.
    let again = state::load(rig.state_dir.path()).unwrap();
    assert_eq!(again.deadline, t0() + TimeDelta::seconds(42));
}

#[tokio::test(start_paused = true)]
async fn a_spot_notice_is_handled_once() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")]));
    let (l, snap) = rig.build(None);
    let (tx, rx) = mpsc::channel(8);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(l.run(rx, async move {
        let _ = stop_rx.await;
        StopReason("test".into())
    }));
    let body = r#"{"action": "terminate", "time": "2026-11-23T12:02:00Z"}"#;
    for _ in 0..2 {
        tx.send(Input::Spot(spot::parse_instance_action(body).unwrap()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(()).unwrap();
    assert_eq!(
        run.await.unwrap(),
        Outcome::Stopped(StopReason("test".into()))
    );
    let types = rig.publisher.types();
    assert_eq!(
        types.iter().filter(|t| **t == "SpotInterruption").count(),
        1
    );
    assert_eq!(
        *rig.worker.checkpoints.lock().unwrap(),
        vec![Utc.with_ymd_and_hms(2026, 11, 23, 12, 1, 45).unwrap()]
    );
    assert!(
        rig.ec2
            .tagged
            .lock()
            .unwrap()
            .contains(&(tags::STATUS.into(), "interrupted".into()))
    );
    assert_eq!(snap.borrow().status, NodeStatus::Interrupted);
    assert!(
        rig.acts().is_empty(),
        "a spot notice leaves the ending to EC2"
    );
    // A restart remembers it.
    let saved = state::load(rig.state_dir.path()).unwrap();
    assert_eq!(saved.spot_notice.as_deref(), Some(body));
}

fn quiet_sample() -> idle::Sample {
    idle::Sample {
        cpu_percent: Ok(Some(0.5)),
        net_bytes_per_sec: Ok(Some(10.0)),
        disk_iops: Ok(Some(0.0)),
        active_sessions: Ok(0),
        ssm_sessions: Ok(0),
        gpu_percent: None,
        task: None,
        memory_percent: Some(20.0),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_for_the_idle_timeout_takes_the_idle_action() {
    let rig = Rig::new(tags(&[
        (tags::EXPIRES_AT, "2026-11-23T14:00:00Z"),
        (tags::IDLE_TIMEOUT, "30s"),
        (tags::ON_IDLE, "stop"),
    ]));
    let (l, _snap) = rig.build(None);
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        // Busy once (resets), then quiet every 10 s.
        let busy = idle::Sample {
            cpu_percent: Ok(Some(80.0)),
            ..quiet_sample()
        };
        let _ = tx.send(Input::Idle(busy)).await;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if tx.send(Input::Idle(quiet_sample())).await.is_err() {
                return;
            }
        }
    });
    let outcome = l.run(rx, never()).await;
    assert_eq!(
        outcome,
        Outcome::Ended {
            reason: EndReason::Idle,
            action: Action::Stop,
            acted: true
        }
    );
    // First quiet sample at 10 s, idle for 30 s at 40 s.
    assert_eq!(
        rig.acts()[0].1.timestamp(),
        (t0() + TimeDelta::seconds(40)).timestamp()
    );
    assert!(rig.publisher.types().contains(&"IdleShutdown"));
}

#[tokio::test(start_paused = true)]
async fn sigterm_deregisters_and_leaves_the_instance_alone() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")]));
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l
        .run(rx, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StopReason("SIGTERM".into())
        })
        .await;
    assert_eq!(outcome, Outcome::Stopped(StopReason("SIGTERM".into())));
    assert!(rig.acts().is_empty());
    assert_eq!(rig.publisher.types(), vec!["NodeDeregistered"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_ec2_api_is_retried_and_reported() {
    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
    *rig.ec2.fail_acts.lock().unwrap() = 2;
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    assert!(matches!(
        l.run(rx, never()).await,
        Outcome::Ended { acted: true, .. }
    ));
    assert_eq!(rig.acts().len(), 1);

    let rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
    *rig.ec2.fail_acts.lock().unwrap() = 99;
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    assert!(matches!(
        l.run(rx, never()).await,
        Outcome::Ended { acted: false, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn complete_ends_the_lease_with_the_on_complete_action() {
    let rig = Rig::new(tags(&[
        (tags::EXPIRES_AT, "2026-11-23T14:00:00Z"),
        (tags::ON_COMPLETE, "stop"),
    ]));
    let (l, _snap) = rig.build(None);
    let (tx, rx) = mpsc::channel(8);
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send(Input::Control(
        Request::Complete {
            failed: true,
            message: Some("boom".into()),
        },
        reply_tx,
    ))
    .await
    .unwrap();
    let outcome = l.run(rx, never()).await;
    assert_eq!(
        outcome,
        Outcome::Ended {
            reason: EndReason::Failed,
            action: Action::Stop,
            acted: true
        }
    );
    assert!(reply_rx.await.unwrap().ok);
    assert!(
        rig.ec2
            .tagged
            .lock()
            .unwrap()
            .contains(&(tags::STATUS.into(), "failed".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn where_allowed_a_terminate_that_does_not_take_is_followed_by_a_poweroff() {
    let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
    let power = Arc::new(CountingPowerOff::default());
    rig.power = power.clone();
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let started = tokio::time::Instant::now();
    assert!(matches!(
        l.run(rx, never()).await,
        Outcome::Ended { acted: true, .. }
    ));
    assert_eq!(*power.0.lock().unwrap(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(70),
        "10 s + the 60 s grace"
    );

    // SIGTERM during the grace (the machine going down) ends it without a poweroff.
    let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
    let power = Arc::new(CountingPowerOff::default());
    rig.power = power.clone();
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l
        .run(rx, async {
            tokio::time::sleep(Duration::from_secs(15)).await;
            StopReason("SIGTERM".into())
        })
        .await;
    assert!(matches!(outcome, Outcome::Ended { acted: true, .. }));
    assert_eq!(*power.0.lock().unwrap(), 0);

    // Every API attempt failing: the poweroff is the action.
    let mut rig = Rig::new(tags(&[(tags::EXPIRES_AT, "2026-11-23T12:00:10Z")]));
    *rig.ec2.fail_acts.lock().unwrap() = 99;
    let power = Arc::new(CountingPowerOff::default());
    rig.power = power.clone();
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    assert!(matches!(
        l.run(rx, never()).await,
        Outcome::Ended { acted: true, .. }
    ));
    assert_eq!(*power.0.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stop_is_never_followed_by_a_poweroff() {
    let mut rig = Rig::new(tags(&[
        (tags::EXPIRES_AT, "2026-11-23T12:00:10Z"),
        (tags::ON_EXPIRY, "stop"),
    ]));
    let power = Arc::new(CountingPowerOff::default());
    rig.power = power.clone();
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    l.run(rx, never()).await;
    assert_eq!(rig.acts()[0].0, Action::Stop);
    assert_eq!(*power.0.lock().unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn on_spot_a_stop_becomes_a_terminate() {
    let mut rig = Rig::new(tags(&[
        (tags::EXPIRES_AT, "2026-11-23T12:00:10Z"),
        (tags::ON_EXPIRY, "stop"),
    ]));
    rig.market = "spot";
    let (l, _snap) = rig.build(None);
    let (_tx, rx) = mpsc::channel(8);
    let outcome = l.run(rx, never()).await;
    assert!(
        matches!(
            outcome,
            Outcome::Ended {
                action: Action::Terminate,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(rig.acts()[0].0, Action::Terminate);
}

// The decisions alone: state + input + now → effects, no fakes.

fn state_with(pairs: &[(&str, &str)], market: &str) -> LeaseState {
    LeaseState::new(
        Settings::from_config(&AgentConfig::default()),
        identity_on(market),
        ("node-1".into(), "i-0abc".into()),
        tags(pairs),
        None,
        t0(),
    )
}

#[test]
fn a_spot_notice_decides_once_to_checkpoint_tag_and_tell() {
    let mut s = state_with(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")], "spot");
    let body = r#"{"action": "terminate", "time": "2026-11-23T12:02:00Z"}"#;
    let notice = spot::parse_instance_action(body).unwrap();
    let effects = s.on_spot(notice.clone(), t0());
    assert_eq!(
        effects,
        vec![
            Effect::Persist,
            Effect::Publish,
            Effect::Emit(EventKind::SpotInterruption {
                action: "terminate".into(),
                time: notice.time,
            }),
            Effect::Tag(vec![(tags::STATUS.into(), "interrupted".into())]),
            // The notice's time minus the default 15 s margin.
            Effect::Checkpoint {
                until: Utc.with_ymd_and_hms(2026, 11, 23, 12, 1, 45).unwrap()
            },
        ]
    );
    assert_eq!(s.snapshot(None).status, NodeStatus::Interrupted);
    assert!(s.on_spot(notice, t0()).is_empty(), "a repeat is ignored");
    assert_eq!(s.saved().spot_notice.as_deref(), Some(body));
}

#[test]
fn the_deadline_warns_then_asks_the_tags_before_expiring() {
    let mut s = state_with(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")], "on-demand");
    let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
    assert_eq!(
        s.next(t0(), false),
        Next::WaitUntil(deadline - TimeDelta::minutes(15))
    );
    let at = deadline - TimeDelta::minutes(15);
    match s.next(at, false) {
        Next::Act(effects) => assert!(
            matches!(
                effects[0],
                Effect::Emit(EventKind::LeaseExpiring {
                    minutes_left: 15,
                    ..
                })
            ),
            "{effects:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.next(deadline, false),
        Next::Act(vec![Effect::Confirm(Pending::Expiry)])
    );
    // An extend read at the last moment wins: no ending.
    let later = tags(&[(tags::EXPIRES_AT, "2026-11-23T12:30:00Z")]).unwrap();
    let effects = s.confirm(Pending::Expiry, Ok(later), deadline);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::End { .. })),
        "{effects:?}"
    );
    // Unreadable tags: the deadline already known is acted on.
    let late = Utc.with_ymd_and_hms(2026, 11, 23, 12, 30, 0).unwrap();
    assert_eq!(
        s.confirm(Pending::Expiry, Err("down".into()), late),
        vec![Effect::End {
            reason: EndReason::Expired,
            action: Action::Terminate
        }]
    );
}

#[test]
fn a_running_task_is_drained_once_per_deadline() {
    let mut s = state_with(&[(tags::EXPIRES_AT, "2026-11-23T12:20:00Z")], "on-demand");
    let deadline = Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap();
    let lead = deadline - TimeDelta::seconds(60);
    // Past the warnings, inside the lead: the drain starts, once.
    let mut at = lead;
    let mut drains = Vec::new();
    for _ in 0..8 {
        if let Next::Act(effects) = s.next(at, true) {
            drains.extend(
                effects
                    .into_iter()
                    .filter(|e| matches!(e, Effect::Drain { .. })),
            );
        }
        at += TimeDelta::seconds(1);
    }
    assert_eq!(drains, vec![Effect::Drain { until: deadline }]);
}

#[test]
fn complete_answers_then_ends_with_on_complete() {
    let mut s = state_with(
        &[
            (tags::EXPIRES_AT, "2026-11-23T14:00:00Z"),
            (tags::ON_COMPLETE, "stop"),
        ],
        "on-demand",
    );
    let effects = s.on_control(Request::Complete {
        failed: true,
        message: Some("boom".into()),
    });
    assert_eq!(
        effects,
        vec![
            Effect::Reply(Reply::message("recorded failed; the instance will stop")),
            Effect::End {
                reason: EndReason::Failed,
                action: Action::Stop
            },
        ]
    );
    // The one-shot task's end takes the same way, with no one to answer.
    let mut s = state_with(&[(tags::ON_COMPLETE, "stop")], "on-demand");
    assert_eq!(
        s.on_task_done(false, "task 't-1' complete".into()),
        vec![Effect::End {
            reason: EndReason::Complete,
            action: Action::Stop
        }]
    );
    assert_eq!(s.snapshot(None).status, NodeStatus::Complete);
}

#[test]
fn an_ending_on_spot_terminates_and_says_why_in_the_tags() {
    let mut s = state_with(
        &[
            (tags::EXPIRES_AT, "2026-11-23T12:00:10Z"),
            (tags::ON_EXPIRY, "stop"),
        ],
        "spot",
    );
    let ending = s.ending(EndReason::Expired, Action::Stop, t0());
    assert_eq!(ending.action, Action::Terminate);
    assert_eq!(
        ending.tags,
        vec![
            (tags::STATUS.into(), "expiring".into()),
            (tags::END_REASON.into(), "expired".into()),
        ]
    );
    let types: Vec<_> = ending
        .events
        .iter()
        .map(|k| match k {
            EventKind::LeaseExpired { .. } => "LeaseExpired",
            EventKind::NodeDeregistered { .. } => "NodeDeregistered",
            _ => "other",
        })
        .collect();
    assert_eq!(types, vec!["LeaseExpired", "NodeDeregistered"]);
}

#[test]
fn a_reload_that_fails_is_refused_and_changes_nothing() {
    let mut s = state_with(&[(tags::EXPIRES_AT, "2026-11-23T14:00:00Z")], "on-demand");
    assert_eq!(s.on_control(Request::Reload), vec![Effect::Reload]);
    let before = s.snapshot(None);
    assert_eq!(
        s.reloaded(Err("bad yaml".into()), None, t0()),
        vec![Effect::Reply(Reply::error("bad yaml"))]
    );
    assert_eq!(s.snapshot(None), before);
}
