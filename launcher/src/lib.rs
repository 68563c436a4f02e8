//! `lease`: launch EC2 instances that cannot be forgotten. The binary's `main` parses
//! the command line and calls [`run`]; everything else lives here, written against the
//! [`cloud::Cloud`] trait.

pub mod bucket;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod doctor;
pub mod error;
pub mod iam;
pub mod logging;
pub mod operator_policy;
pub mod output;
pub mod plan;
pub mod profile;
pub mod queue;
pub mod quota;
pub mod reaper_deploy;
pub mod resolve;
pub mod schedule;
pub mod scheduler;
pub mod setup;
pub mod submit;
pub mod table;
pub mod userdata;

pub use error::{Error, Result};

pub async fn run(cli: cli::Cli) -> Result<()> {
    commands::dispatch(cli).await
}

#[cfg(test)]
mod fake;
