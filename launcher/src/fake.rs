//! An in-memory [`Cloud`] for unit tests of command logic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lease_common::tags::Action;

use crate::cloud::{Cloud, Instance, Query};
use crate::error::{Error, Result};
use crate::plan::LaunchPlan;

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
    /// Agent packages in buckets: (bucket, key) to the sha256 recorded with it.
    pub agent_packages: BTreeMap<(String, String), String>,
}

impl FakeCloud {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.into(),
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

    async fn architectures(&self, _t: &str) -> Result<Vec<String>> {
        self.check()?;
        Ok(vec!["x86_64".into()])
    }

    async fn parameter(&self, _name: &str) -> Result<String> {
        self.check()?;
        Ok("ami-fake".into())
    }

    async fn caller_arn(&self) -> Result<String> {
        self.check()?;
        Ok("arn:aws:iam::123456789012:user/tester".into())
    }

    async fn run_instances(&self, plan: &LaunchPlan) -> Result<Vec<Instance>> {
        self.check()?;
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
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .filter(|i| matches(i, q))
            .cloned()
            .collect())
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
