//! `lease`: launch EC2 instances that cannot be forgotten. The binary's `main` parses
//! the command line and calls [`run`]; everything else lives here, written against the
//! [`cloud::Cloud`] trait.

pub mod bucket;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod error;
pub mod iam;
pub mod output;
pub mod plan;
pub mod queue;
pub mod resolve;
pub mod submit;
pub mod userdata;

use clap::CommandFactory;

pub use error::{Error, Result};

pub async fn run(cli: cli::Cli) -> Result<()> {
    if let cli::Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut cli::Cli::command(), "lease", &mut out);
        return output::print(&String::from_utf8_lossy(&out));
    }
    commands::dispatch(cli).await
}

#[cfg(test)]
mod fake;
