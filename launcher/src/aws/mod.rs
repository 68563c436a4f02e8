//! One file per AWS service the launcher uses: a trait shaped around what `lease` does
//! with the service, its SDK implementation, and (in tests) a fake beside it. Commands
//! are written against the traits, so their logic is tested with the fakes; the
//! integration tests run the SDK implementations against the emulator.

pub mod dynamodb;
pub mod ec2;
pub mod iam;
pub mod lambda;
pub mod logs;
pub mod s3;
pub mod scheduler;
pub mod sns;
pub mod sqs;
pub mod ssm;
pub mod sts;

use aws_types::SdkConfig;
use lease_common::tags::Action;

use crate::error::Result;
use crate::model::launch_plan::{ImageInfo, LaunchPlan, TypeInfo};
use ec2::{AwsEc2, Ec2, Instance, Query};
use s3::{AgentPackages, AwsBucket};
use ssm::{AwsParameters, Parameters};
use sts::{AwsIdentity, Identity};

/// The stack's tag as a key and value, in the shape every service's tag builder takes.
pub type StackTag = (String, String);

/// What an instance command asks of AWS in one region: its instances, the AMI
/// parameters, the caller, and the agent package a launch points at. One bound, so a
/// command takes one value and its tests one fake.
pub trait Cloud: Ec2 + Parameters + Identity + AgentPackages {}

impl<T: Ec2 + Parameters + Identity + AgentPackages> Cloud for T {}

/// The SDK implementations of [`Cloud`], one region per value.
#[derive(Debug, Clone)]
pub struct AwsCloud {
    ec2: AwsEc2,
    ssm: AwsParameters,
    sts: AwsIdentity,
    s3: AwsBucket,
}

impl AwsCloud {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            ec2: AwsEc2::new(config),
            ssm: AwsParameters::new(config),
            sts: AwsIdentity::new(config),
            s3: AwsBucket::new(config),
        }
    }

    pub fn in_region(config: &SdkConfig, region: &str) -> Self {
        let config = config
            .to_builder()
            .region(aws_config::Region::new(region.to_string()))
            .build();
        Self::new(&config)
    }

    /// Enabled regions of the account, for `lease list --all-regions`.
    pub async fn enabled_regions(&self) -> Result<Vec<String>> {
        self.ec2.enabled_regions().await
    }
}

impl Ec2 for AwsCloud {
    fn region(&self) -> &str {
        self.ec2.region()
    }

    async fn type_info(&self, instance_type: &str) -> Result<TypeInfo> {
        self.ec2.type_info(instance_type).await
    }

    async fn image(&self, image_id: &str) -> Result<ImageInfo> {
        self.ec2.image(image_id).await
    }

    async fn run_instances(&self, plan: &LaunchPlan) -> Result<Vec<Instance>> {
        self.ec2.run_instances(plan).await
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        self.ec2.describe(query).await
    }

    async fn create_tags(&self, ids: &[String], tags: &[(String, String)]) -> Result<()> {
        self.ec2.create_tags(ids, tags).await
    }

    async fn console_output(&self, id: &str) -> Result<Option<String>> {
        self.ec2.console_output(id).await
    }

    async fn change_state(&self, ids: &[String], action: Action) -> Result<Vec<(String, String)>> {
        self.ec2.change_state(ids, action).await
    }
}

impl Parameters for AwsCloud {
    async fn parameter(&self, name: &str) -> Result<String> {
        self.ssm.parameter(name).await
    }
}

impl Identity for AwsCloud {
    async fn caller_arn(&self) -> Result<String> {
        self.sts.caller_arn().await
    }
}

impl AgentPackages for AwsCloud {
    async fn agent_package_sha256(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        self.s3.agent_package_sha256(bucket, key).await
    }
}

/// One in-memory [`Cloud`] for unit tests of command logic: its state is shared by the
/// services' fakes (each beside its trait), so a test configures a region in one value.
#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::ec2::Instance;
    use crate::error::{Error, Result};
    use crate::model::launch_plan::{ImageInfo, LaunchPlan, TypeInfo};

    #[derive(Debug, Default)]
    pub struct FakeCloud {
        pub region: String,
        pub instances: Mutex<Vec<Instance>>,
        /// Every call fails, as a region with an outage or no permissions would.
        pub broken: bool,
        /// RunInstances returns at most this many.
        pub launch_limit: Option<usize>,
        pub launched: Mutex<Vec<LaunchPlan>>,
        /// Instance types by name; any other is a 1 GiB x86_64 type with hibernation.
        pub types: BTreeMap<String, TypeInfo>,
        /// Images by id; any other is an Amazon Linux image with an 8 GiB root.
        pub images: BTreeMap<String, ImageInfo>,
        /// SSM parameters by name; others answer as described at `parameter`.
        pub params: BTreeMap<String, String>,
        /// SSM parameters read, in order.
        pub parameters_read: Mutex<Vec<String>>,
        /// Errors ("Code: message") RunInstances returns, first to last, before it
        /// launches anything.
        pub run_errors: Mutex<std::collections::VecDeque<String>>,
        /// How many DescribeInstances calls by id answer InvalidInstanceID.NotFound, as EC2
        /// does for a few seconds after RunInstances.
        pub describe_misses: Mutex<u32>,
        /// Agent packages in buckets: (bucket, key) to the sha256 recorded with it.
        pub agent_packages: BTreeMap<(String, String), String>,
    }

    impl FakeCloud {
        /// A region whose bucket `agents` holds the agent package for both architectures
        /// (what tests pass as `--agent-bucket` when the agent is not their subject).
        pub fn new(region: &str) -> Self {
            let package = |arch: &str| {
                (
                    (
                        "agents".to_string(),
                        lease_common::layout::agent_deb_key(lease_common::VERSION, arch),
                    ),
                    "ab".repeat(32),
                )
            };
            Self {
                region: region.into(),
                agent_packages: [package("amd64"), package("arm64")].into(),
                ..Default::default()
            }
        }

        pub(crate) fn check(&self) -> Result<()> {
            if self.broken {
                return Err(Error::Aws {
                    what: format!("Failed to describe instances in {}", self.region),
                    message: "UnauthorizedOperation: not allowed".into(),
                });
            }
            Ok(())
        }
    }
}
