//! An in-memory [`Cloud`] for unit tests of command logic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lease_common::tags::Action;

use crate::cloud::{Cloud, Instance, Query};
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

    fn check(&self) -> Result<()> {
        if self.broken {
            return Err(Error::Aws {
                what: format!("Failed to describe instances in {}", self.region),
                message: "UnauthorizedOperation: not allowed".into(),
            });
        }
        Ok(())
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

impl Cloud for FakeCloud {
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

    /// The AMI parameters read: `ami-fake` for Amazon Linux (the default), else an id
    /// naming the parameter's family, so a test sees which one was chosen.
    async fn parameter(&self, name: &str) -> Result<String> {
        self.check()?;
        self.parameters_read.lock().unwrap().push(name.to_string());
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        Ok(if name.contains("/deeplearning/") {
            "ami-dlami".into()
        } else {
            "ami-fake".into()
        })
    }

    async fn caller_arn(&self) -> Result<String> {
        self.check()?;
        Ok("arn:aws:iam::123456789012:user/tester".into())
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

    async fn change_state(&self, ids: &[String], action: Action) -> Result<Vec<(String, String)>> {
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

    async fn agent_package_sha256(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        self.check()?;
        Ok(self
            .agent_packages
            .get(&(bucket.to_string(), key.to_string()))
            .cloned())
    }
}
