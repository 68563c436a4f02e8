//! The spot poller: both notice paths every `spot-poll-interval`, each distinct notice
//! passed to the lease loop once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ticker;
use crate::imds::{ImdsError, Metadata};
use crate::lease::Input;
use crate::spot::{
    INSTANCE_ACTION, NoticeError, REBALANCE, parse_instance_action, parse_rebalance,
};

/// A notice not seen before, from one poll of its path. A repeat of the last body is
/// ignored (EC2 serves the same notice until the instance goes); a poll that fails
/// sets `failed` and is logged only when polling was working until now.
fn fresh<T>(
    polled: Result<Option<String>, ImdsError>,
    last: &mut Option<String>,
    parse: fn(&str) -> Result<T, NoticeError>,
    what: &str,
    failing: bool,
    failed: &mut bool,
) -> Option<T> {
    match polled {
        Ok(Some(body)) if last.as_deref() != Some(body.trim()) => {
            *last = Some(body.trim().to_string());
            parse(&body).map_err(|e| tracing::error!("{e}")).ok()
        }
        Ok(_) => None,
        Err(e) => {
            *failed = true;
            if !failing {
                tracing::warn!("{what} notice poll failed: {e}");
            }
            None
        }
    }
}

/// Polls both notice paths until the receiver goes away. A failed poll is logged (at
/// most once per failure streak) and retried on the next tick.
pub async fn watch(metadata: Arc<dyn Metadata>, every: Duration, to_loop: mpsc::Sender<Input>) {
    let mut tick = ticker(every);
    let mut last_action: Option<String> = None;
    let mut last_rebalance: Option<String> = None;
    let mut failing = false;
    loop {
        tick.tick().await;
        let (action, rebalance) =
            tokio::join!(metadata.get(INSTANCE_ACTION), metadata.get(REBALANCE));
        let mut failed = false;
        let spot = fresh(
            action,
            &mut last_action,
            parse_instance_action,
            "spot",
            failing,
            &mut failed,
        );
        if let Some(n) = spot
            && to_loop.send(Input::Spot(n)).await.is_err()
        {
            return;
        }
        let rebalance = fresh(
            rebalance,
            &mut last_rebalance,
            parse_rebalance,
            "rebalance",
            failing,
            &mut failed,
        );
        if let Some(n) = rebalance
            && to_loop.send(Input::Rebalance(n)).await.is_err()
        {
            return;
        }
        if failing && !failed {
            tracing::info!("spot notice polling works again");
        }
        failing = failed;
        if to_loop.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata whose answers a test changes: `None` is 404, `Err` a failed request.
    #[derive(Debug)]
    struct Scripted {
        action: std::sync::Mutex<Result<Option<String>, ()>>,
        polls: std::sync::atomic::AtomicU32,
    }

    impl Metadata for Scripted {
        fn get<'a>(
            &'a self,
            path: &'a str,
        ) -> crate::BoxFuture<'a, Result<Option<String>, ImdsError>> {
            let answer = if path == INSTANCE_ACTION {
                self.polls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.action.lock().unwrap().clone()
            } else {
                Ok(None)
            };
            Box::pin(async move {
                answer.map_err(|()| ImdsError::Status {
                    path: path.to_string(),
                    status: 500,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_passes_each_notice_on_once_and_survives_errors() {
        let m = Arc::new(Scripted {
            action: std::sync::Mutex::new(Ok(None)),
            polls: std::sync::atomic::AtomicU32::new(0),
        });
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(watch(m.clone(), Duration::from_secs(1), tx));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(rx.try_recv().is_err(), "no notice yet");
        *m.action.lock().unwrap() = Err(());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = r#"{"action": "stop", "time": "2026-11-23T01:02:03Z"}"#;
        *m.action.lock().unwrap() = Ok(Some(body.to_string()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        match rx.try_recv() {
            Ok(Input::Spot(n)) => assert_eq!(n.action, "stop"),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "the same notice is passed on once");
        // Polled every second throughout, errors included.
        let polls = m.polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!((9..=11).contains(&polls), "{polls}");
        task.abort();
    }
}
