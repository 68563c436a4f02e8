//! The idle sampler: the idle signals ([`crate::idle`]) read every `sample-interval`.

use lease_common::config::IdleConfig;
use tokio::sync::mpsc;

use super::ticker;
use crate::idle::{self, Sampler};
use crate::lease::Input;

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
