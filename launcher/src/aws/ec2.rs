//! EC2: the instances `lease` launches, lists, tags and stops, and the instance types
//! and images a launch plan is built from.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HibernationOptionsRequest, HttpTokensState,
    IamInstanceProfileSpecification, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataTagsState, InstanceStateName, InstanceType,
    MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, VolumeType,
};
use aws_types::SdkConfig;
use chrono::{DateTime, Utc};
use lease_common::tags::{Action, LeaseTags, TagError};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::plan::{ImageInfo, LaunchPlan, TypeInfo};

/// One EC2 instance as the launcher sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Instance {
    pub id: String,
    pub region: String,
    pub instance_type: String,
    pub state: String,
    /// `spot` or `on-demand`.
    pub market: String,
    pub launch_time: Option<DateTime<Utc>>,
    pub availability_zone: Option<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub public_dns: Option<String>,
    pub architecture: Option<String>,
    pub image_id: Option<String>,
    pub key_name: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn lease_tags(&self) -> Result<LeaseTags, TagError> {
        LeaseTags::from_map(&self.tags)
    }

    pub fn name(&self) -> Option<&str> {
        self.tags.get(lease_common::tags::NAME).map(String::as_str)
    }

    /// The deadline the agent enforces (see `LeaseTags::deadline`); `None` when the tags
    /// name none or do not parse.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.lease_tags()
            .ok()
            .and_then(|t| t.deadline(self.launch_time))
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.state.as_str(), "terminated" | "shutting-down")
    }

    /// How long a running instance has gone without its agent: still `lease:status`
    /// `starting` (the launcher's value, which the agent replaces as soon as it runs)
    /// for longer than [`BOOT_LIMIT`] since launch. `None` when nothing is wrong.
    pub fn agent_missing_for(&self, now: DateTime<Utc>) -> Option<chrono::TimeDelta> {
        let starting = self
            .tags
            .get(lease_common::tags::STATUS)
            .map(String::as_str)
            == Some(lease_common::tags::NodeStatus::Starting.as_str());
        let since = now - self.launch_time?;
        (self.state == "running" && starting && since > BOOT_LIMIT).then_some(since)
    }
}

/// Longer than any boot should take: from RunInstances to a running agent is about a
/// minute on Amazon Linux and a few on a Deep Learning AMI that installs Docker; ten
/// minutes without the agent means the install failed or the agent does not start.
pub const BOOT_LIMIT: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// A DescribeInstances query: explicit ids and/or filters (`tag:lease:job`, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub ids: Vec<String>,
    pub filters: Vec<(String, Vec<String>)>,
}

impl Query {
    pub fn managed() -> Self {
        Self {
            ids: Vec::new(),
            filters: vec![(
                format!("tag:{}", lease_common::tags::MANAGED),
                vec!["true".into()],
            )],
        }
    }

    pub fn filter(mut self, name: impl Into<String>, values: Vec<String>) -> Self {
        self.filters.push((name.into(), values));
        self
    }
}

/// The EC2 operations the launcher performs, in its own terms.
pub trait Ec2: Sync {
    fn region(&self) -> &str;
    /// What a launch needs to know of an instance type (DescribeInstanceTypes); an
    /// unknown type is an error naming it.
    fn type_info(&self, instance_type: &str) -> impl Future<Output = Result<TypeInfo>> + Send;
    /// An AMI's name, root device and tags (DescribeImages); a missing one is an error
    /// naming it.
    fn image(&self, image_id: &str) -> impl Future<Output = Result<ImageInfo>> + Send;
    fn run_instances(
        &self,
        plan: &LaunchPlan,
    ) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    fn describe(&self, query: &Query) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    fn create_tags(
        &self,
        ids: &[String],
        tags: &[(String, String)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// The instance's serial console output (GetConsoleOutput), newest available;
    /// `None` when EC2 has none yet.
    fn console_output(&self, id: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Terminate, stop or hibernate; returns each instance's new state.
    fn change_state(
        &self,
        ids: &[String],
        action: Action,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
}

/// The SDK implementation, one region per value.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    region: String,
    ec2: aws_sdk_ec2::Client,
}

impl AwsEc2 {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            region: config.region().map(ToString::to_string).unwrap_or_default(),
            ec2: aws_sdk_ec2::Client::new(config),
        }
    }

    /// Enabled regions of the account, for `lease list --all-regions`.
    pub async fn enabled_regions(&self) -> Result<Vec<String>> {
        let out = self
            .ec2
            .describe_regions()
            .send()
            .await
            .map_err(|e| Error::aws("Failed to list regions", e))?;
        let mut regions: Vec<String> = out
            .regions()
            .iter()
            .filter(|r| r.opt_in_status() != Some("not-opted-in"))
            .filter_map(|r| r.region_name().map(str::to_string))
            .collect();
        regions.sort();
        Ok(regions)
    }
}

fn to_instance(region: &str, i: &aws_sdk_ec2::types::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        region: region.to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| "unknown".into()),
        market: i
            .instance_lifecycle()
            .map(|l| l.as_str().to_string())
            .unwrap_or_else(|| "on-demand".into()),
        launch_time: i
            .launch_time()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_string),
        private_ip: i.private_ip_address().map(str::to_string),
        public_ip: i.public_ip_address().map(str::to_string),
        public_dns: i
            .public_dns_name()
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        architecture: i.architecture().map(|a| a.as_str().to_string()),
        image_id: i.image_id().map(str::to_string),
        key_name: i.key_name().map(str::to_string),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
    }
}

fn tags_of(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn ids_text(ids: &[String]) -> String {
    ids.iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ec2 for AwsEc2 {
    fn region(&self) -> &str {
        &self.region
    }

    async fn type_info(&self, instance_type: &str) -> Result<TypeInfo> {
        let unknown = || {
            Error::usage(format!(
                "Unknown instance type '{instance_type}' in {}",
                self.region
            ))
        };
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| {
                if aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)
                    == Some("InvalidInstanceType")
                {
                    unknown()
                } else {
                    Error::aws(
                        format!("Failed to look up instance type '{instance_type}'"),
                        e,
                    )
                }
            })?;
        let t = out.instance_types().first().ok_or_else(unknown)?;
        let architectures: Vec<String> = t
            .processor_info()
            .map(|p| {
                p.supported_architectures()
                    .iter()
                    .map(|a| a.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if architectures.is_empty() {
            return Err(unknown());
        }
        let nvidia_gpus = t
            .gpu_info()
            .map(|g| {
                g.gpus()
                    .iter()
                    .filter(|d| {
                        d.manufacturer()
                            .is_some_and(|m| m.eq_ignore_ascii_case("nvidia"))
                    })
                    .map(|d| d.count().unwrap_or(0).max(0).unsigned_abs())
                    .sum()
            })
            .unwrap_or(0);
        Ok(TypeInfo {
            name: instance_type.to_string(),
            architectures,
            memory_mib: t
                .memory_info()
                .and_then(|m| m.size_in_mib())
                .map_or(0, |m| m.max(0).unsigned_abs()),
            nvidia_gpus,
            hibernation_supported: t.hibernation_supported().unwrap_or(false),
        })
    }

    async fn image(&self, image_id: &str) -> Result<ImageInfo> {
        let what = || format!("Failed to look up image '{image_id}' in {}", self.region);
        let out = self
            .ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| {
                let code = aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e);
                if code.is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    Error::NotFound(format!(
                        "Image '{image_id}' does not exist in {} (or is not shared with this \
                         account)",
                        self.region
                    ))
                } else {
                    Error::aws(what(), e)
                }
            })?;
        let i = out.images().first().ok_or_else(|| {
            Error::NotFound(format!(
                "Image '{image_id}' does not exist in {}",
                self.region
            ))
        })?;
        let root_device_name = i.root_device_name().unwrap_or("/dev/xvda").to_string();
        let root_size_gib = i
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(root_device_name.as_str()))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .unwrap_or(0);
        Ok(ImageInfo {
            id: image_id.to_string(),
            name: i.name().unwrap_or_default().to_string(),
            architecture: i.architecture().map(|a| a.as_str().to_string()),
            root_device_name,
            root_size_gib,
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
        })
    }

    async fn run_instances(&self, plan: &LaunchPlan) -> Result<Vec<Instance>> {
        let mut req = self
            .ec2
            .run_instances()
            .image_id(&plan.image_id)
            .instance_type(InstanceType::from(plan.instance_type.as_str()))
            .min_count(plan.min_count)
            .max_count(plan.max_count)
            .client_token(&plan.client_token)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::from(
                plan.instance_initiated_shutdown_behavior.as_str(),
            ))
            .metadata_options(
                aws_sdk_ec2::types::InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::from(
                        plan.metadata_options.http_tokens.as_str(),
                    ))
                    .http_endpoint(InstanceMetadataEndpointState::from(
                        plan.metadata_options.http_endpoint.as_str(),
                    ))
                    .http_put_response_hop_limit(plan.metadata_options.http_put_response_hop_limit)
                    .instance_metadata_tags(InstanceMetadataTagsState::from(
                        plan.metadata_options.instance_metadata_tags.as_str(),
                    ))
                    .build(),
            )
            .user_data(aws_smithy_types::base64::encode(plan.user_data.as_bytes()))
            .set_key_name(plan.key_name.clone())
            .set_subnet_id(plan.subnet_id.clone())
            .set_security_group_ids(
                (!plan.security_group_ids.is_empty()).then(|| plan.security_group_ids.clone()),
            );
        for spec in &plan.tag_specifications {
            req = req.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::from(spec.resource_type.as_str()))
                    .set_tags(Some(tags_of(&spec.tag_pairs())))
                    .build(),
            );
        }
        if let Some(m) = &plan.instance_market_options {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::from(m.market_type.as_str()))
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::from(
                                m.spot_options.spot_instance_type.as_str(),
                            ))
                            .instance_interruption_behavior(InstanceInterruptionBehavior::from(
                                m.spot_options.instance_interruption_behavior.as_str(),
                            ))
                            .build(),
                    )
                    .build(),
            );
        }
        for m in &plan.block_device_mappings {
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&m.device_name)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(m.ebs.volume_size)
                            .volume_type(VolumeType::from(m.ebs.volume_type.as_str()))
                            .encrypted(m.ebs.encrypted)
                            .delete_on_termination(m.ebs.delete_on_termination)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(h) = &plan.hibernation_options {
            req = req.hibernation_options(
                HibernationOptionsRequest::builder()
                    .configured(h.configured)
                    .build(),
            );
        }
        if let Some(p) = &plan.iam_instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            let spec = match (&p.arn, &p.name) {
                (Some(arn), _) => spec.arn(arn),
                (None, Some(name)) => spec.name(name),
                (None, None) => spec,
            };
            req = req.iam_instance_profile(spec.build());
        }
        let out = req.send().await.map_err(|e| {
            Error::aws(
                format!(
                    "Failed to launch {} x {} in {}",
                    plan.max_count, plan.instance_type, self.region
                ),
                e,
            )
        })?;
        Ok(out
            .instances()
            .iter()
            .map(|i| to_instance(&self.region, i))
            .collect())
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let filters: Vec<Filter> = query
            .filters
            .iter()
            .map(|(name, values)| {
                Filter::builder()
                    .name(name)
                    .set_values(Some(values.clone()))
                    .build()
            })
            .collect();
        let mut req = self.ec2.describe_instances().set_filters(Some(filters));
        if query.ids.is_empty() {
            // The largest page EC2 serves: fewest round trips over a big fleet.
            req = req.max_results(1000);
        } else {
            req = req.set_instance_ids(Some(query.ids.clone()));
        }
        let mut pages = req.into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Error::aws(
                    format!("Failed to describe instances in {}", self.region),
                    e,
                )
            })?;
            for r in page.reservations() {
                found.extend(r.instances().iter().map(|i| to_instance(&self.region, i)));
            }
        }
        Ok(found)
    }

    async fn console_output(&self, id: &str) -> Result<Option<String>> {
        let out = self
            .ec2
            .get_console_output()
            .instance_id(id)
            .latest(true)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to read the console output of instance '{id}'"),
                    e,
                )
            })?;
        let Some(encoded) = out.output().filter(|o| !o.is_empty()) else {
            return Ok(None);
        };
        let bytes = aws_smithy_types::base64::decode(encoded).map_err(|e| Error::Aws {
            what: format!("Failed to read the console output of instance '{id}'"),
            message: format!("not base64: {e}"),
        })?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn create_tags(&self, ids: &[String], tags: &[(String, String)]) -> Result<()> {
        self.ec2
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(tags_of(tags)))
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag instance {}", ids_text(ids)), e))?;
        Ok(())
    }

    async fn change_state(&self, ids: &[String], action: Action) -> Result<Vec<(String, String)>> {
        let what = |verb: &str| format!("Failed to {verb} instance {}", ids_text(ids));
        let changes = match action {
            Action::Terminate => self
                .ec2
                .terminate_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(|e| Error::aws(what("terminate"), e))?
                .terminating_instances
                .unwrap_or_default(),
            Action::Stop | Action::Hibernate => self
                .ec2
                .stop_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .hibernate(action == Action::Hibernate)
                .send()
                .await
                .map_err(|e| Error::aws(what(action.as_str()), e))?
                .stopping_instances
                .unwrap_or_default(),
        };
        Ok(changes
            .iter()
            .map(|c| {
                (
                    c.instance_id().unwrap_or_default().to_string(),
                    c.current_state()
                        .and_then(|s| s.name())
                        .map(InstanceStateName::as_str)
                        .unwrap_or("unknown")
                        .to_string(),
                )
            })
            .collect())
    }
}

#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;

    use lease_common::tags::Action;

    use super::{Ec2, Instance, Query};
    use crate::aws::fake::FakeCloud;
    use crate::error::{Error, Result};
    use crate::plan::{ImageInfo, LaunchPlan, TypeInfo};

    /// A running spot t3.micro with the given tags, for tests of pure command logic.
    pub fn instance(id: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            region: "us-east-1".into(),
            instance_type: "t3.micro".into(),
            state: "running".into(),
            market: "spot".into(),
            launch_time: None,
            availability_zone: None,
            private_ip: None,
            public_ip: None,
            public_dns: None,
            architecture: None,
            image_id: None,
            key_name: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A plain x86_64 type with 1 GiB of RAM, no GPU, hibernation supported.
    pub fn plain_type(name: &str) -> TypeInfo {
        TypeInfo {
            name: name.into(),
            architectures: vec!["x86_64".into()],
            memory_mib: 1024,
            nvidia_gpus: 0,
            hibernation_supported: true,
        }
    }

    /// An Amazon Linux 2023 image with an 8 GiB root snapshot.
    pub fn al2023_image(id: &str) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            name: "al2023-ami-2023.9.20261101.0-kernel-6.1-x86_64".into(),
            architecture: Some("x86_64".into()),
            root_device_name: "/dev/xvda".into(),
            root_size_gib: 8,
            tags: BTreeMap::new(),
        }
    }

    fn matches(i: &Instance, q: &Query) -> bool {
        (q.ids.is_empty() || q.ids.contains(&i.id))
            && q.filters.iter().all(|(name, values)| {
                let actual = match name.strip_prefix("tag:") {
                    Some(key) => i.tags.get(key).cloned(),
                    None if name == "instance-state-name" => Some(i.state.clone()),
                    None => None,
                };
                actual.is_some_and(|a| values.contains(&a))
            })
    }

    impl Ec2 for FakeCloud {
        fn region(&self) -> &str {
            &self.region
        }

        async fn type_info(&self, t: &str) -> Result<TypeInfo> {
            self.check()?;
            Ok(self.types.get(t).cloned().unwrap_or_else(|| plain_type(t)))
        }

        async fn image(&self, id: &str) -> Result<ImageInfo> {
            self.check()?;
            Ok(self
                .images
                .get(id)
                .cloned()
                .unwrap_or_else(|| al2023_image(id)))
        }

        async fn run_instances(&self, plan: &LaunchPlan) -> Result<Vec<Instance>> {
            self.check()?;
            if let Some(message) = self.run_errors.lock().unwrap().pop_front() {
                return Err(Error::Aws {
                    what: format!(
                        "Failed to launch {} x {}",
                        plan.max_count, plan.instance_type
                    ),
                    message,
                });
            }
            self.launched.lock().unwrap().push(plan.clone());
            let n = self
                .launch_limit
                .unwrap_or(plan.max_count as usize)
                .min(plan.max_count as usize);
            let tags: BTreeMap<String, String> =
                plan.tag_specifications[0].tag_pairs().into_iter().collect();
            let mut all = self.instances.lock().unwrap();
            let new: Vec<Instance> = (0..n)
                .map(|k| Instance {
                    state: "pending".into(),
                    instance_type: plan.instance_type.clone(),
                    image_id: Some(plan.image_id.clone()),
                    region: self.region.clone(),
                    tags: tags.clone(),
                    ..instance(&format!("i-{:017x}", all.len() + k + 1), &[])
                })
                .collect();
            all.extend(new.clone());
            Ok(new)
        }

        async fn describe(&self, q: &Query) -> Result<Vec<Instance>> {
            self.check()?;
            {
                let mut misses = self.describe_misses.lock().unwrap();
                if !q.ids.is_empty() && *misses > 0 {
                    *misses -= 1;
                    return Err(Error::Aws {
                        what: "Failed to describe instances".into(),
                        message: format!(
                            "InvalidInstanceID.NotFound: The instance ID '{}' does not exist",
                            q.ids[0]
                        ),
                    });
                }
            }
            Ok(self
                .instances
                .lock()
                .unwrap()
                .iter()
                .filter(|i| matches(i, q))
                .cloned()
                .collect())
        }

        async fn console_output(&self, id: &str) -> Result<Option<String>> {
            self.check()?;
            Ok(Some(format!(
                "[  OK  ] Reached target Cloud-init target.\nboot of {id}\nleased.service: Failed with result 'exit-code'.\n"
            )))
        }

        async fn create_tags(&self, ids: &[String], tags: &[(String, String)]) -> Result<()> {
            self.check()?;
            for i in self.instances.lock().unwrap().iter_mut() {
                if ids.contains(&i.id) {
                    i.tags.extend(tags.iter().cloned());
                }
            }
            Ok(())
        }

        async fn change_state(
            &self,
            ids: &[String],
            action: Action,
        ) -> Result<Vec<(String, String)>> {
            self.check()?;
            let state = match action {
                Action::Terminate => "shutting-down",
                Action::Stop | Action::Hibernate => "stopping",
            };
            let mut out = Vec::new();
            for i in self.instances.lock().unwrap().iter_mut() {
                if ids.contains(&i.id) {
                    i.state = state.into();
                    out.push((i.id.clone(), state.to_string()));
                }
            }
            Ok(out)
        }
    }
}
