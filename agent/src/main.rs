//! `leased`: wiring only. The logic is in the `leased` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};
use lease_common::HumanDuration;
use lease_common::config::AgentConfig;
use leased::config::{self, Overrides};
use leased::control::{self, Reply, Request};
use leased::{Deps, Outcome, RunOptions, StopReason};

/// sysexits' EX_CONFIG: the configuration is wrong. systemd units can tell it apart
/// (`RestartPreventExitStatus=78`) so a bad config is not restarted in a loop.
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "leased",
    version = lease_common::VERSION,
    about = "The lease agent: enforces this instance's deadline, idle and spot policies",
    propagate_version = true
)]
struct Cli {
    /// Config file [default: /etc/leased/config.yaml, when it exists]
    #[arg(long, global = true, env = "LEASED_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// More logging: -v info, -vv debug, -vvv trace
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (what systemd starts)
    Run(RunArgs),
    /// Show what the running daemon enforces
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Tell the daemon the workload is done; the instance then ends as lease:on-complete says
    Complete {
        /// The workload failed
        #[arg(long)]
        failed: bool,
        /// A note for the log
        #[arg(short, long, value_name = "MSG")]
        message: Option<String>,
    },
    /// Re-read the config file and the tags
    Reload,
    /// Check a config file and exit (status 78 when it is invalid)
    ValidateConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn duration(s: &str) -> Result<HumanDuration, String> {
    s.parse::<HumanDuration>().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
struct RunArgs {
    /// SQS queue to take tasks from
    #[arg(long, env = "LEASED_QUEUE_URL", value_name = "URL")]
    queue_url: Option<String>,
    /// SNS topic (control bus) for events
    #[arg(long, env = "LEASED_TOPIC_ARN", value_name = "ARN")]
    topic_arn: Option<String>,
    /// Bucket for task logs and result bundles
    #[arg(long, env = "LEASED_LOG_BUCKET", value_name = "BUCKET")]
    log_bucket: Option<String>,
    /// Node id in events [default: the instance id]
    #[arg(long, env = "LEASED_NODE_ID")]
    node_id: Option<String>,
    /// Node name in events [default: the instance's Name tag]
    #[arg(long, env = "LEASED_NODE_NAME")]
    node_name: Option<String>,
    /// How often NodeHeartbeat is published [default: 30s]
    #[arg(long, env = "LEASED_HEARTBEAT_INTERVAL", value_parser = duration, value_name = "DURATION")]
    heartbeat_interval: Option<HumanDuration>,
    /// Simulate tasks instead of running them
    #[arg(long, env = "LEASED_MOCK_MODE")]
    mock_mode: bool,
    /// AWS profile (outside EC2; on an instance the role is used)
    #[arg(long, env = "LEASED_PROFILE")]
    profile: Option<String>,
    /// AWS region [default: the instance's]
    #[arg(long, env = "LEASED_REGION")]
    region: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            queue_url: self.queue_url.clone(),
            topic_arn: self.topic_arn.clone(),
            log_bucket: self.log_bucket.clone(),
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            heartbeat_interval: self.heartbeat_interval,
            mock_mode: self.mock_mode,
            profile: self.profile.clone(),
            region: self.region.clone(),
        }
    }
}

fn main() -> ExitCode {
    leased::memory::single_arena();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Two workers: the agent's work is a few timers and small requests; more
        // threads would only cost memory on the instance it is meant to save.
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leased: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::ValidateConfig { file } => match AgentConfig::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("leased: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run(args) => {
            let file = config::config_file(cli.config.as_deref());
            let overrides = args.overrides();
            let config = match config::resolve(file.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("leased: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let opts = RunOptions {
                config,
                config_file: file,
                overrides,
            };
            let deps = match Deps::system(std::env::var_os("LEASED_TMUX_SOCKET").map(PathBuf::from))
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("leased: {e}");
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match leased::run(opts, deps, signals()).await {
                Ok(Outcome::Stopped(_)) => ExitCode::SUCCESS,
                Ok(Outcome::Ended { acted: true, .. }) => ExitCode::SUCCESS,
                Ok(Outcome::Ended { acted: false, .. }) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("leased: {e}");
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json } => client(cli.config.as_deref(), Request::Status, json).await,
        Command::Complete { failed, message } => {
            client(
                cli.config.as_deref(),
                Request::Complete { failed, message },
                false,
            )
            .await
        }
        Command::Reload => client(cli.config.as_deref(), Request::Reload, false).await,
    }
}

/// `status`, `complete`, `reload`: find the socket through the config's runtime-dir.
async fn client(config_file: Option<&Path>, req: Request, json: bool) -> ExitCode {
    let file = config::config_file(config_file);
    let runtime_dir = match config::runtime_dir(file.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("leased: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let reply = match control::request(&runtime_dir, &req).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leased: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_reply(&reply, json);
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_reply(reply: &Reply, json: bool) {
    if let Some(e) = &reply.error {
        eprintln!("leased: {e}");
        return;
    }
    if let Some(m) = &reply.message {
        println!("{m}");
    }
    let Some(s) = &reply.status else { return };
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    let field = |k: &str| match s.get(k) {
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    };
    println!("{}", field("summary"));
    for (label, key) in [
        ("instance", "instance_id"),
        ("node", "node_name"),
        ("type", "instance_type"),
        ("market", "market"),
        ("status", "status"),
        ("deadline", "deadline"),
        ("deadline from", "deadline_source"),
        ("on expiry", "on_expiry"),
        ("idle timeout", "idle_timeout"),
        ("on idle", "on_idle"),
        ("active because", "active_because"),
        ("task", "task"),
        ("spot notice", "spot_notice"),
    ] {
        println!("{label:>15}: {}", field(key));
    }
}

/// Resolves on SIGTERM or SIGINT. If the handlers cannot be installed the daemon still
/// runs (and enforces), it just cannot be stopped gracefully.
async fn signals() -> StopReason {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => StopReason("SIGTERM".into()),
            _ = int.recv() => StopReason("SIGINT".into()),
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}");
            std::future::pending().await
        }
    }
}

/// Logs go to the journal when systemd gave us one (`JOURNAL_STREAM`) and it answers,
/// else to stderr. `RUST_LOG` overrides the verbosity flags; dependencies stay at warn.
fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // `RUST_LOG` as `target=level` directives. A plain target filter rather than
    // `EnvFilter`, whose regular expressions would stay resident in a daemon that never
    // uses them.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(LevelFilter::WARN)
                .with_target("leased", level)
                .with_target("lease_common", level)
        });
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::env::var_os("NO_COLOR").is_none()),
            )
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        assert_eq!(
            lease_common::config::DEFAULT_CONFIG_PATH,
            "/etc/leased/config.yaml"
        );
    }
}
