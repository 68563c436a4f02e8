//! The sources of the lease loop's inputs: thin loops around a reading, each feeding
//! the one channel of [`Input`](crate::lease::Input) and doing nothing else; each ends
//! when the loop is gone. The decisions about what they read are the loop's.
//!
//! - [`tags`]: the instance's tags, re-read so `lease extend` reaches the agent;
//! - [`idle`]: the idle signals, sampled;
//! - [`spot`]: spot interruption and rebalance notices, polled.
//!
//! The control socket ([`crate::control`]) and the one-shot task's end
//! ([`crate::work::LeaseEnd`]) feed the same channel.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

pub mod idle;
pub mod spot;
pub mod tags;

/// A ticker that, after a stall, carries on at its pace instead of catching up.
pub(crate) fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}
