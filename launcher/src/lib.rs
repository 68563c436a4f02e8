//! `lease`: launch EC2 instances that cannot be forgotten. The binary's `main` parses
//! the command line and calls [`run`]; everything else lives here, written against the
//! [`aws`] traits.

pub mod aws;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod error;
pub mod iam;
pub mod logging;
pub mod output;
pub mod plan;
pub mod profile;
pub mod quota;
pub mod resolve;
pub mod schedule;
pub mod stack;
pub mod submit;
pub mod userdata;

pub use error::{Error, Result};

pub async fn run(cli: cli::Cli) -> Result<()> {
    commands::dispatch(cli).await
}
