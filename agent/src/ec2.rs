//! What the agent does to its own instance through the EC2 API, behind a small trait so
//! the decision loop is tested with a fake.

use std::collections::BTreeMap;
use std::fmt::Debug;

use aws_sdk_ec2::types::Filter;
use lease_common::tags::Action;

use crate::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("Failed to read the tags of instance '{instance_id}': {reason}")]
    DescribeTags { instance_id: String, reason: String },
    #[error("Failed to tag instance '{instance_id}': {reason}")]
    CreateTags { instance_id: String, reason: String },
    #[error("Failed to {action} instance '{instance_id}': {reason}")]
    Act {
        instance_id: String,
        action: Action,
        reason: String,
    },
}

pub trait Ec2Api: Send + Sync + Debug {
    /// Every tag of the instance (`DescribeTags`), for when metadata tags are off or
    /// IMDS does not answer.
    fn describe_tags<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, Ec2Error>>;

    fn create_tags<'a>(
        &'a self,
        instance_id: &'a str,
        tags: Vec<(String, String)>,
    ) -> BoxFuture<'a, Result<(), Ec2Error>>;

    /// Terminates, stops or hibernates the instance.
    fn act<'a>(
        &'a self,
        instance_id: &'a str,
        action: Action,
    ) -> BoxFuture<'a, Result<(), Ec2Error>>;
}

/// The SDK implementation.
#[derive(Debug, Clone)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
}

impl SdkEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        Self { client }
    }
}

fn sdk_reason<E>(e: &aws_sdk_ec2::error::SdkError<E>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    lease_common::sdk_error::render(e)
}

impl Ec2Api for SdkEc2 {
    fn describe_tags<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, Ec2Error>> {
        Box::pin(async move {
            let err = |reason| Ec2Error::DescribeTags {
                instance_id: instance_id.to_string(),
                reason,
            };
            let mut out = BTreeMap::new();
            let mut next: Option<String> = None;
            loop {
                let resp = self
                    .client
                    .describe_tags()
                    .filters(
                        Filter::builder()
                            .name("resource-id")
                            .values(instance_id)
                            .build(),
                    )
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| err(sdk_reason(&e)))?;
                for t in resp.tags() {
                    if let (Some(k), Some(v)) = (t.key(), t.value()) {
                        out.insert(k.to_string(), v.to_string());
                    }
                }
                match resp.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => return Ok(out),
                }
            }
        })
    }

    fn create_tags<'a>(
        &'a self,
        instance_id: &'a str,
        tags: Vec<(String, String)>,
    ) -> BoxFuture<'a, Result<(), Ec2Error>> {
        Box::pin(async move {
            let tags = tags
                .into_iter()
                .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                .collect();
            self.client
                .create_tags()
                .resources(instance_id)
                .set_tags(Some(tags))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::CreateTags {
                    instance_id: instance_id.to_string(),
                    reason: sdk_reason(&e),
                })
        })
    }

    fn act<'a>(
        &'a self,
        instance_id: &'a str,
        action: Action,
    ) -> BoxFuture<'a, Result<(), Ec2Error>> {
        Box::pin(async move {
            let err = |reason| Ec2Error::Act {
                instance_id: instance_id.to_string(),
                action,
                reason,
            };
            match action {
                Action::Terminate => self
                    .client
                    .terminate_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| err(sdk_reason(&e))),
                Action::Stop | Action::Hibernate => self
                    .client
                    .stop_instances()
                    .instance_ids(instance_id)
                    .hibernate(action == Action::Hibernate)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| err(sdk_reason(&e))),
            }
        })
    }
}

#[cfg(test)]
pub mod fake {
    //! An EC2 that records the tags written and the actions taken, and can be told to
    //! refuse the action a number of times.
    use std::sync::{Arc, Mutex};

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::clock::Clock;

    #[derive(Debug)]
    pub struct FakeEc2 {
        pub clock: Arc<dyn Clock>,
        pub acts: Mutex<Vec<(Action, DateTime<Utc>)>>,
        pub tagged: Mutex<Vec<(String, String)>>,
        pub fail_acts: Mutex<u32>,
    }

    impl FakeEc2 {
        pub fn new(clock: Arc<dyn Clock>) -> Self {
            Self {
                clock,
                acts: Mutex::default(),
                tagged: Mutex::default(),
                fail_acts: Mutex::new(0),
            }
        }
    }

    impl Ec2Api for FakeEc2 {
        fn describe_tags<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<BTreeMap<String, String>, Ec2Error>> {
            Box::pin(async move {
                Err(Ec2Error::DescribeTags {
                    instance_id: id.into(),
                    reason: "not used".into(),
                })
            })
        }
        fn create_tags<'a>(
            &'a self,
            _id: &'a str,
            tags: Vec<(String, String)>,
        ) -> BoxFuture<'a, Result<(), Ec2Error>> {
            self.tagged.lock().unwrap().extend(tags);
            Box::pin(async { Ok(()) })
        }
        fn act<'a>(&'a self, id: &'a str, action: Action) -> BoxFuture<'a, Result<(), Ec2Error>> {
            let mut fail = self.fail_acts.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Box::pin(async move {
                    Err(Ec2Error::Act {
                        instance_id: id.into(),
                        action,
                        reason: "injected".into(),
                    })
                });
            }
            self.acts.lock().unwrap().push((action, self.clock.now()));
            Box::pin(async { Ok(()) })
        }
    }
}
