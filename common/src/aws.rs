//! Building the AWS SDK configuration the same way in every binary.

use aws_config::{BehaviorVersion, Region};
use aws_types::SdkConfig;

/// The connection flags every command takes. Unset fields fall back to the standard
/// environment (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …) and profile files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsOptions {
    pub profile: Option<String>,
    pub region: Option<String>,
    /// Send every API call here instead of AWS (an emulator such as moto's server).
    pub endpoint_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsConfigError {
    #[error(
        "no AWS region configured: pass --region, set AWS_REGION, or set a region in your AWS profile"
    )]
    NoRegion,
}

/// Loads the SDK config, failing early and clearly when no region can be found —
/// otherwise the first API call fails with a far vaguer message.
pub async fn load_sdk_config(opts: &AwsOptions) -> Result<SdkConfig, AwsConfigError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &opts.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &opts.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsConfigError::NoRegion);
    }
    Ok(config)
}

/// True when calls go to a custom endpoint (an emulator); S3 then needs path-style
/// addressing because `bucket.127.0.0.1` does not resolve.
pub fn uses_custom_endpoint(config: &SdkConfig) -> bool {
    config.endpoint_url().is_some()
}

/// An S3 client for `config`. Against a custom endpoint (an emulator on 127.0.0.1)
/// addressing is path-style, since `bucket.127.0.0.1` does not resolve.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(uses_custom_endpoint(config))
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}
