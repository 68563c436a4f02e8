//! The test harness's instance metadata service as a program, for the demo and the
//! benchmarks: `fake-imds INSTANCE_ID` serves IMDSv2 for that instance of the emulator
//! that AWS_ENDPOINT_URL points at, prints the endpoint as
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:PORT` on its first line, and
//! runs until SIGTERM or SIGINT.
#![allow(clippy::print_stderr)]

use lease_common::aws::{AwsOptions, load_sdk_config};
use lease_tests::FakeImds;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(instance_id), None) = (args.next(), args.next()) else {
        eprintln!("usage: fake-imds INSTANCE_ID (with AWS_ENDPOINT_URL set to the emulator)");
        return std::process::ExitCode::from(2);
    };
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        eprintln!(
            "fake-imds: AWS_ENDPOINT_URL must point at the emulator; it serves no real instance"
        );
        return std::process::ExitCode::from(2);
    }
    let sdk = match load_sdk_config(&AwsOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-imds: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let imds = FakeImds::for_instance(aws_sdk_ec2::Client::new(&sdk), &instance_id).await;
    for (k, v) in imds.env() {
        println!("{k}={v}");
    }
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake-imds: cannot install signal handlers");
        return std::process::ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(imds);
    std::process::ExitCode::SUCCESS
}
