//! What the node reports about itself while it runs: the heartbeat on the control bus
//! and its item in the node registry, both from the lease loop's snapshot.

pub mod heartbeat;
pub mod nodes;

pub use heartbeat::heartbeat;
