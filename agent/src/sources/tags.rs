//! The tag refresher: re-reads the instance's tags so `lease extend` reaches the agent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ticker;
use crate::lease::Input;
use crate::tagread::{Budget, TagSource};

/// Re-reads the tags every `every`. The first tick is skipped: the tags were read just
/// before the loop started.
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
