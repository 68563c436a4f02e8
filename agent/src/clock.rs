//! Time for the agent. A lease ends at a wall-clock UTC instant (a tag written by the
//! launcher, anchored on AWS time), but the agent waits with tokio's monotonic timers.
//! The two meet here:
//!
//! - [`Clock::now`] is the only source of "what time is it in UTC" for decisions.
//! - Waiting is always done in naps of at most [`MAX_NAP`] towards a UTC instant
//!   ([`nap_towards`]), and the clock is read again after every nap. A wall clock that
//!   steps (NTP correcting a drifted boot clock, a hibernated instance resuming) is
//!   therefore noticed within one nap, and the deadline is met on wall time.
//!
//! In production the clock is [`SystemClock`]. Tests use [`TokioClock`], whose UTC time
//! is derived from tokio's clock: with `tokio::time::pause()`, `advance()` moves both
//! the UTC clock the decisions read and the timers the loop sleeps on, so a test can
//! walk a four-hour lease in microseconds and still see every warning in order.

use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest the agent sleeps without looking at the wall clock again. Long enough
/// to cost nothing, short enough that a stepped clock delays an action by at most this.
pub const MAX_NAP: Duration = Duration::from_secs(5);

pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's UTC clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// UTC time that advances with tokio's clock, anchored at a chosen instant. Under
/// `tokio::time::pause()` it stands still until the test advances time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_utc: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base_utc: DateTime<Utc>) -> Self {
        Self {
            base_utc,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.base_utc + chrono::TimeDelta::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
    }
}

/// How long to sleep from `now` towards `target`: the time left, but at most `max`,
/// and zero when `target` has passed.
pub fn nap_towards(now: DateTime<Utc>, target: DateTime<Utc>, max: Duration) -> Duration {
    (target - now).to_std().unwrap_or(Duration::ZERO).min(max)
}

/// Sleeps until `target` on the given clock, in naps of at most [`MAX_NAP`].
pub async fn sleep_until(clock: &dyn Clock, target: DateTime<Utc>) {
    loop {
        let nap = nap_towards(clock.now(), target, MAX_NAP);
        if nap.is_zero() {
            return;
        }
        tokio::time::sleep(nap).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    #[test]
    fn naps_are_bounded_and_never_negative() {
        let max = Duration::from_secs(5);
        assert_eq!(
            nap_towards(t0(), t0() + chrono::TimeDelta::seconds(60), max),
            max
        );
        assert_eq!(
            nap_towards(t0(), t0() + chrono::TimeDelta::milliseconds(1500), max),
            Duration::from_millis(1500)
        );
        assert_eq!(
            nap_towards(t0(), t0() - chrono::TimeDelta::seconds(1), max),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(t0());
        assert_eq!(clock.now(), t0());
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), t0() + chrono::TimeDelta::seconds(90));
        let target = t0() + chrono::TimeDelta::hours(4);
        sleep_until(&clock, target).await;
        assert!(clock.now() >= target);
        assert!(clock.now() - target < chrono::TimeDelta::milliseconds(5));
    }
}
