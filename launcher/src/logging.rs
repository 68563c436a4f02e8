//! What `lease` logs to stderr at each `-v`, as a filter the binary installs.

/// The SDK looks for a region and credentials in IMDS last, after the environment and
/// the profile files. On a laptop there is no IMDS: each miss is logged as a warning
/// (three of them for a launch with no region), printed before lease's own clear error
/// and telling the user nothing they can act on. IMDS stays in the chain, since lease
/// also runs on EC2 instances whose role is their only credential; only its warnings
/// are held back to errors until `-vvv`, which shows everything.
const QUIET_IMDS: &str = "aws_config::imds=error";

/// The `tracing` filter for `-v` given `verbose` times (`LEASE_LOG` overrides it).
/// Our own logs follow -v; the SDK's stay quiet until -vvv, where they help.
pub fn default_filter(verbose: u8) -> String {
    match verbose {
        0 => format!("warn,{QUIET_IMDS},lease_launcher=warn"),
        1 => format!("warn,{QUIET_IMDS},lease_launcher=info,lease=info"),
        2 => format!("warn,{QUIET_IMDS},lease_launcher=debug,lease=debug"),
        _ => "trace".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_warnings_stay_out_of_the_terminal_below_vvv() {
        for v in 0..3 {
            let f: tracing_subscriber::EnvFilter = default_filter(v).parse().unwrap();
            let text = f.to_string();
            assert!(text.contains("aws_config::imds=error"), "{v}: {text}");
        }
        assert_eq!(default_filter(3), "trace");
    }
}
