//! The EC2 calls the reaper makes, behind a trait so `reap` is tested with a fake as
//! well as against the emulator.
//!
//! The reaper does not tag what it acts on (`lease:status=expiring` or similar):
//! `lease:status` is the agent's to write (ARCHITECTURE.md), an extra CreateTags per instance
//! is one more call that can fail between the decision and the action, and it would
//! widen the reaper's role to `ec2:CreateTags`. The reaper's report (its log) says what
//! it did and why; EC2's state transition reason records that the API stopped or
//! terminated the instance.

use std::future::Future;

use aws_sdk_ec2::types::Filter;
use lease_common::{sdk_error, tags};

use crate::decide::{InstanceFacts, InstanceState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    #[error("Failed to list managed instances: {0}")]
    List(String),
    #[error("Failed to re-read instance '{id}': {message}")]
    Describe { id: String, message: String },
    #[error("Failed to terminate instance '{id}': {message}")]
    Terminate { id: String, message: String },
    #[error("Failed to stop instance '{id}': {message}")]
    Stop { id: String, message: String },
}

/// What the reaper needs from EC2, and nothing more (its IAM role needs exactly
/// DescribeInstances, TerminateInstances and StopInstances).
pub trait Ec2 {
    /// Every instance tagged `lease:managed=true` in `pending`, `running`, `stopping`
    /// or `stopped`, across all pages.
    fn managed_instances(
        &self,
    ) -> impl Future<Output = Result<Vec<InstanceFacts>, Ec2Error>> + Send;
    /// One instance as it is now, read again just before acting on it; `None` once it
    /// is shutting down or terminated.
    fn instance(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<InstanceFacts>, Ec2Error>> + Send;
    fn terminate(&self, id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// [`Ec2`] over the SDK.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
}

impl AwsEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        Self { client }
    }
}

fn to_facts(i: &aws_sdk_ec2::types::Instance) -> Option<InstanceFacts> {
    let state = InstanceState::from_ec2(i.state()?.name()?.as_str())?;
    Some(InstanceFacts {
        id: i.instance_id()?.to_string(),
        state,
        launch_time: i
            .launch_time()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        market: i
            .instance_lifecycle()
            .map_or("on-demand", |l| l.as_str())
            .to_string(),
    })
}

impl Ec2 for AwsEc2 {
    async fn managed_instances(&self) -> Result<Vec<InstanceFacts>, Ec2Error> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", tags::MANAGED))
                    .values("true")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        InstanceState::ALL
                            .iter()
                            .map(|s| s.as_str().to_string())
                            .collect(),
                    ))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Ec2Error::List(sdk_error::render(&e)))?;
            out.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(to_facts),
            );
        }
        Ok(out)
    }

    async fn instance(&self, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
        let out = self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| Ec2Error::Describe {
                id: id.to_string(),
                message: sdk_error::render(&e),
            })?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(to_facts))
    }

    async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
        self.client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Ec2Error::Terminate {
                id: id.to_string(),
                message: sdk_error::render(&e),
            })
    }

    async fn stop(&self, id: &str) -> Result<(), Ec2Error> {
        self.client
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Ec2Error::Stop {
                id: id.to_string(),
                message: sdk_error::render(&e),
            })
    }
}
