//! `NodeHeartbeat` on the control bus, from the lease loop's latest snapshot.

use std::sync::Arc;
use std::time::Duration;

use lease_common::messages::EventKind;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::events::Emitter;
use crate::lease::Snapshot;
use crate::sources::ticker;

/// Publishes `NodeHeartbeat` every `every` until the loop is gone. Waits for each
/// publish (with its retries) before the next, so a slow bus never piles up
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
