//! The thin loops around the pure decisions: the tag refresher, the idle sampler and
//! the heartbeat. Each feeds the decision loop (or the control bus) and does nothing
//! else; each ends when the decision loop is gone.

use std::sync::Arc;
use std::time::Duration;

use lease_common::config::IdleConfig;
use lease_common::messages::EventKind;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::Clock;
use crate::decide::{Input, Snapshot};
use crate::events::Emitter;
use crate::idle::{self, Sampler};
use crate::tagread::{Budget, TagSource};

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Re-reads the tags every `every`, so `lease extend` reaches the agent. The first
/// tick is skipped: the tags were read just before the loop started.
pub async fn refresh_tags(
    source: Arc<dyn TagSource>,
    every: Duration,
    to_loop: mpsc::Sender<Input>,
) {
    let mut tick = ticker(every);
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        let read = source.read(Budget::ROUTINE).await;
        match &read {
            Err(e) if !failing => {
                tracing::warn!("{e}; enforcing the deadline already known");
                failing = true;
            }
            Ok(_) if failing => {
                tracing::info!("tags readable again");
                failing = false;
            }
            _ => {}
        }
        let input = Input::Tags(read.map(|(tags, _)| tags).map_err(|e| e.to_string()));
        if to_loop.send(input).await.is_err() {
            return;
        }
    }
}

/// Samples the idle signals every `sample-interval`.
pub async fn sample_idle(config: IdleConfig, to_loop: mpsc::Sender<Input>) {
    let mut sampler = Sampler::from_env(config.session_input_within.as_duration());
    let mut tick = ticker(config.sample_interval.as_duration());
    loop {
        tick.tick().await;
        // Reading a few procfs files takes microseconds; not worth a blocking thread.
        let mut sample = sampler.sample();
        sample.gpu_percent = idle::gpu_percent().await;
        if to_loop.send(Input::Idle(sample)).await.is_err() {
            return;
        }
    }
}

/// Publishes `NodeHeartbeat` every `every`, from the loop's latest snapshot. Waits for
/// each publish (with its retries) before the next, so a slow bus never piles up
/// heartbeats.
pub async fn heartbeat(
    emitter: Emitter,
    snapshot: watch::Receiver<Snapshot>,
    clock: Arc<dyn Clock>,
    every: Duration,
) {
    let mut tick = ticker(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if snapshot.has_changed().is_err() {
            return; // the loop is gone
        }
        let s = snapshot.borrow().clone();
        let now = clock.now();
        let heartbeat = emitter.send(EventKind::NodeHeartbeat {
            node_name: s.node_name.clone(),
            instance_type: s.instance_type.clone(),
            market: s.market.clone(),
            time_left_secs: Some(s.time_left(now).num_seconds()),
            idle: s.idle,
            idle_for_secs: s
                .idle_since
                .map_or(0, |t| u64::try_from((now - t).num_seconds()).unwrap_or(0)),
            task_id: s.task.clone(),
            cpu_percent: s.cpu_percent.unwrap_or(0.0),
            memory_percent: s.memory_percent.unwrap_or(0.0),
        });
        // Waited for, so a bus that is down costs one heartbeat in flight, not a pile.
        let _ = heartbeat.await;
    }
}
