//! `bootstrap`: the reaper's Lambda function (runtime `provided.al2023`). Wiring only:
//! configuration from the environment, the EC2 client from the standard AWS
//! environment (`AWS_ENDPOINT_URL` included, so it runs against an emulator), and
//! [`lease_reaper::function::handle`] for every invocation.

use std::process::ExitCode;

use chrono::Utc;
use lambda_runtime::{LambdaEvent, service_fn};
use lease_common::aws::{AwsOptions, load_sdk_config};
use lease_reaper::AwsEc2;
use lease_reaper::function;

fn main() -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber();
    // Checked before the runtime starts: a bad setting fails the function's init, where
    // the Lambda console and logs show it, rather than every invocation.
    let config = match function::config_from_env(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One invocation at a time, one thread: Lambda gives the function a fraction of a
    // core, and the reaper's calls are sequential anyway.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let sdk = load_sdk_config(&AwsOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let ec2 = AwsEc2::new(aws_sdk_ec2::Client::new(&sdk));
        let ec2 = &ec2;
        let config = &config;
        lambda_runtime::run(service_fn(
            move |_event: LambdaEvent<serde_json::Value>| async move {
                function::handle(Utc::now(), ec2, config)
                    .await
                    .map(|summary| summary.to_json())
            },
        ))
        .await
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
