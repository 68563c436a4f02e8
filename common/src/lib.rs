//! Contracts shared by `lease` (the launcher) and `leased` (the agent): the tag schema,
//! durations, the agent's config file, task and event messages, the S3 layout, the
//! DynamoDB records, how AWS clients are configured and how their errors are worded.
//! Nothing here performs I/O beyond building SDK config.

pub mod aws;
pub mod config;
pub mod duration;
pub mod layout;
pub mod manifest;
pub mod messages;
pub mod records;
pub mod sdk_error;
pub mod session;
pub mod stack;
pub mod tags;

pub use duration::HumanDuration;

/// The version both binaries report, and the agent package's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
