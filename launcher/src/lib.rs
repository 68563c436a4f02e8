//! `lease`: launch EC2 instances that cannot be forgotten. The binary's `main` parses
//! the command line and calls [`run`]; everything else lives here, written against the
//! [`aws`] traits.

pub mod aws;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod error;
pub mod launch_inputs;
pub mod logging;
pub mod model;
pub mod output;
pub mod resolve;
pub mod settings;
pub mod stack;
pub mod targets;

pub use error::{Error, Result};

pub async fn run(cli: cli::Cli) -> Result<()> {
    commands::dispatch(cli).await
}
