//! The integration-test harness: real programs wherever possible (moto's server for
//! AWS, sshd, tmux, the `lease`, `leased` and reaper `bootstrap` binaries), the fake IMDS,
//! and a stand-in for the Lambda Runtime API that the real `bootstrap` polls.
//!
//! Harness code may panic: a harness that cannot start its emulator has nothing useful
//! to return, and the panic message is the test's failure message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod agent;
pub mod anthropic;
pub mod bins;
pub mod claude;
pub mod imds;
pub mod lambda_api;
pub mod moto;
pub mod netns;
pub mod nspawn;
pub mod plane;
pub mod procfs;
pub mod recorder;
pub mod s3;
pub mod sshd;
pub mod stack;
pub mod wait;

pub use bins::{Cmd, bin_path};
pub use imds::FakeImds;
pub use lambda_api::RuntimeApi;
pub use moto::Moto;
pub use wait::wait_until;
