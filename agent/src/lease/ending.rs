//! How the loop ends: the lease's ending (the worker's drain, the final events and
//! tags, the action through the EC2 API with retries, the poweroff fallback) and the
//! stop on a signal, which leaves the instance running.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::TimeDelta;
use lease_common::messages::EventKind;
use lease_common::tags::Action;

use super::DecisionLoop;
use super::input::{EndReason, Outcome, StopReason};

/// The worker's share of the one second between the deadline and the action.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(300);
/// How long the final events may hold up the action; they keep retrying after it.
pub const PUBLISH_WAIT: Duration = Duration::from_millis(250);
/// How long the final events may keep retrying after the action, before the agent exits.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(5);
/// Attempts at the EC2 action before falling back to a poweroff.
pub const ACT_ATTEMPTS: u32 = 4;
/// One attempt's hard limit.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGTERM waits for `NodeDeregistered` before the agent exits.
pub const STOP_PUBLISH_WAIT: Duration = Duration::from_secs(3);
/// How long tasks may take to stop when the whole machine is going down.
const MACHINE_STOP_DRAIN: Duration = Duration::from_secs(60);

impl DecisionLoop {
    /// Ends the lease: the worker drains, the final events go out (waited for only
    /// briefly), then the action on the instance, then the events get a few more
    /// seconds to finish.
    pub(super) async fn end(&mut self, reason: EndReason, wanted: Action) -> Outcome {
        let _pinging = self.keep_watchdog_fed();
        let now = self.deps.clock.now();
        let ending = self.state.ending(reason, wanted, now);
        let action = ending.action;
        self.publish_snapshot();
        self.deps
            .notifier
            .status(&format!("lease ended ({reason:?}); {action} in progress"));
        let until = now + TimeDelta::from_std(DRAIN_BUDGET).unwrap_or_default();
        if tokio::time::timeout(DRAIN_BUDGET, self.deps.worker.drain(until))
            .await
            .is_err()
        {
            tracing::warn!("task worker did not drain in {DRAIN_BUDGET:?}; going on");
        }
        let pending: Vec<_> = ending
            .events
            .into_iter()
            .map(|kind| self.deps.emitter.send(kind))
            .collect();
        let tagged = self.write_tags(ending.tags);
        let all = futures::future::join_all(pending);
        tokio::pin!(all);
        let early = tokio::time::timeout(PUBLISH_WAIT, &mut all).await.is_ok();
        let acted = self.act(action).await;
        if !early {
            let _ = tokio::time::timeout(PUBLISH_DRAIN, &mut all).await;
        }
        let _ = tokio::time::timeout(PUBLISH_DRAIN, tagged).await;
        Outcome::Ended {
            reason,
            action,
            acted,
        }
    }

    /// The action through the EC2 API, with retries; then the poweroff fallback where
    /// it is allowed.
    async fn act(&mut self, action: Action) -> bool {
        let id = self.state.identity.instance_id.clone();
        let id = id.as_str();
        let mut pause = Duration::from_millis(250);
        let mut done = false;
        for attempt in 1..=ACT_ATTEMPTS {
            match tokio::time::timeout(ACT_TIMEOUT, self.deps.ec2.act(id, action)).await {
                Ok(Ok(())) => {
                    tracing::warn!("{action} of instance '{id}' accepted by EC2");
                    done = true;
                    self.acted_through_api = true;
                    break;
                }
                Ok(Err(e)) => tracing::error!("{e} (attempt {attempt}/{ACT_ATTEMPTS})"),
                Err(_) => tracing::error!(
                    "Failed to {action} instance '{id}': no answer in {ACT_TIMEOUT:?} \
                     (attempt {attempt}/{ACT_ATTEMPTS})"
                ),
            }
            if attempt < ACT_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        match (done, action, self.deps.power.allowed()) {
            // After a terminate, `after_end` waits for the machine to go down.
            // Stop and hibernate are never followed by a poweroff: with shutdown
            // behaviour `terminate` it would destroy the instance they keep.
            (true, _, _) => true,
            (false, _, Ok(())) => {
                tracing::error!("every {action} attempt failed; falling back to a poweroff");
                match self.deps.power.power_off().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("{e}");
                        false
                    }
                }
            }
            (false, _, Err(why)) => {
                tracing::error!(
                    "every {action} attempt on instance '{id}' failed and no poweroff here \
                     ({why}); exiting so the service manager restarts the agent to try again"
                );
                false
            }
        }
    }

    /// After a successful terminate: EC2 takes the machine down within seconds, and
    /// systemd then stops the agent (SIGTERM), which ends this wait at once. Still
    /// running after the grace period means the call did not take (or this is not
    /// really that instance): power off, which the shutdown behaviour the launcher sets
    /// turns into a termination on EC2. Only where a poweroff is allowed at all.
    pub(super) async fn after_end(
        &self,
        outcome: Outcome,
        shutdown: Pin<&mut impl Future<Output = StopReason>>,
    ) -> Outcome {
        let terminated = matches!(
            outcome,
            Outcome::Ended {
                acted: true,
                action: Action::Terminate,
                ..
            }
        );
        if !terminated || !self.acted_through_api || self.deps.power.allowed().is_err() {
            return outcome;
        }
        let _pinging = self.keep_watchdog_fed();
        tokio::select! {
            reason = shutdown => {
                tracing::info!("stopping ({}) after the terminate: the machine is going down", reason.0);
            }
            () = tokio::time::sleep(self.deps.terminate_grace) => {
                tracing::warn!(
                    "still running {:?} after terminating; powering off",
                    self.deps.terminate_grace
                );
                if let Err(e) = self.deps.power.power_off().await {
                    tracing::error!("{e}");
                }
            }
        }
        outcome
    }

    /// Pings the systemd watchdog in the background while the loop is busy ending the
    /// lease (retries, grace periods), so a slow ending is not mistaken for a hang.
    fn keep_watchdog_fed(&self) -> Option<AbortOnDrop> {
        let every = self.deps.notifier.watchdog_every()?;
        let notifier = self.deps.notifier.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                notifier.watchdog();
                tokio::time::sleep(every).await;
            }
        })))
    }

    /// A signal: deregister and leave the instance running. When the whole machine is
    /// going down, running tasks are interrupted first (their partial results
    /// uploaded), since they will not survive it.
    pub(super) async fn stop(&mut self, reason: StopReason) -> Outcome {
        let _pinging = self.keep_watchdog_fed();
        tracing::info!(
            "stopping ({}): deregistering; the instance keeps running",
            reason.0
        );
        self.deps
            .notifier
            .stopping(&format!("stopping ({})", reason.0));
        if self.deps.power.machine_stopping().await {
            tracing::warn!("the machine is shutting down: interrupting running tasks");
            let until =
                self.deps.clock.now() + TimeDelta::from_std(MACHINE_STOP_DRAIN).unwrap_or_default();
            let _ = tokio::time::timeout(MACHINE_STOP_DRAIN, self.deps.worker.drain(until)).await;
        }
        let h = self.deps.emitter.send(EventKind::NodeDeregistered {
            reason: format!("agent stopped ({})", reason.0),
        });
        let _ = tokio::time::timeout(STOP_PUBLISH_WAIT, h).await;
        Outcome::Stopped(reason)
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
