//! IAM, as setup and teardown use it: roles with one trust policy and inline policies
//! a region, and the agents' instance profile. Shaped like the grant `lease setup`
//! needs, so the role module's decisions are tested against [`fake::FakeIam`].

use aws_sdk_iam::Client;
use aws_sdk_iam::types::Tag;

use super::StackTag;
use crate::error::{Error, Result};

/// A role as IAM holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleInfo {
    /// The trust policy, as IAM returns it (percent-encoded JSON).
    pub trust_policy: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// An instance profile as IAM holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileInfo {
    pub roles: Vec<String>,
    pub tags: Vec<(String, String)>,
}

/// What setup does with roles: read, create, correct and delete one, and keep one
/// inline policy a region on it.
pub trait Roles: Sync {
    /// `None` when there is no such role.
    fn role(&self, name: &str) -> impl Future<Output = Result<Option<RoleInfo>>> + Send;
    fn create_role(
        &self,
        name: &str,
        description: &str,
        trust: &str,
        tag: &StackTag,
    ) -> impl Future<Output = Result<()>> + Send;
    fn set_trust_policy(&self, name: &str, trust: &str) -> impl Future<Output = Result<()>> + Send;
    fn tag_role(&self, name: &str, tag: &StackTag) -> impl Future<Output = Result<()>> + Send;
    /// The inline policy's document as IAM returns it; `None` when absent.
    fn role_policy(
        &self,
        role: &str,
        policy: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn put_role_policy(
        &self,
        role: &str,
        policy: &str,
        document: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `false` when there was nothing to delete.
    fn delete_role_policy(
        &self,
        role: &str,
        policy: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The names of the role's inline policies; `None` when there is no such role.
    fn role_policies(&self, role: &str)
    -> impl Future<Output = Result<Option<Vec<String>>>> + Send;
    /// `false` when there was nothing to delete.
    fn delete_role(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
}

/// What setup does with the agents' instance profile.
pub trait InstanceProfiles: Sync {
    /// `None` when there is no such profile.
    fn profile(&self, name: &str) -> impl Future<Output = Result<Option<ProfileInfo>>> + Send;
    fn create_profile(&self, name: &str, tag: &StackTag)
    -> impl Future<Output = Result<()>> + Send;
    fn tag_profile(&self, name: &str, tag: &StackTag) -> impl Future<Output = Result<()>> + Send;
    fn add_role(&self, profile: &str, role: &str) -> impl Future<Output = Result<()>> + Send;
    fn remove_role(&self, profile: &str, role: &str) -> impl Future<Output = Result<()>> + Send;
    fn delete_profile(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

fn iam_tag(tag: &StackTag) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| Error::usage(format!("tag {}: {e}", tag.0)))
}

fn pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect()
}

/// IAM's "no such role, policy or profile".
fn missing<E>(e: &aws_sdk_iam::error::SdkError<E>) -> bool
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    e.code() == Some("NoSuchEntity")
}

impl Roles for Client {
    async fn role(&self, name: &str) -> Result<Option<RoleInfo>> {
        match self.get_role().role_name(name).send().await {
            Ok(out) => Ok(Some(RoleInfo {
                trust_policy: out
                    .role()
                    .and_then(|r| r.assume_role_policy_document())
                    .map(str::to_string),
                tags: out.role().map(|r| pairs(r.tags())).unwrap_or_default(),
            })),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(Error::aws(format!("Failed to read role '{name}'"), e)),
        }
    }

    async fn create_role(
        &self,
        name: &str,
        description: &str,
        trust: &str,
        tag: &StackTag,
    ) -> Result<()> {
        self.create_role()
            .role_name(name)
            .assume_role_policy_document(trust)
            .description(description)
            .tags(iam_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create role '{name}'"), e))?;
        Ok(())
    }

    async fn set_trust_policy(&self, name: &str, trust: &str) -> Result<()> {
        self.update_assume_role_policy()
            .role_name(name)
            .policy_document(trust)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to set the trust policy of role '{name}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn tag_role(&self, name: &str, tag: &StackTag) -> Result<()> {
        self.tag_role()
            .role_name(name)
            .tags(iam_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag role '{name}'"), e))?;
        Ok(())
    }

    async fn role_policy(&self, role: &str, policy: &str) -> Result<Option<String>> {
        match self
            .get_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.policy_document().to_string())),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(Error::aws(
                format!("Failed to read policy '{policy}' of role '{role}'"),
                e,
            )),
        }
    }

    async fn put_role_policy(&self, role: &str, policy: &str, document: &str) -> Result<()> {
        self.put_role_policy()
            .role_name(role)
            .policy_name(policy)
            .policy_document(document)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to put policy '{policy}' on role '{role}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn delete_role_policy(&self, role: &str, policy: &str) -> Result<bool> {
        match self
            .delete_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(Error::aws(
                format!("Failed to delete policy '{policy}' of role '{role}'"),
                e,
            )),
        }
    }

    async fn role_policies(&self, role: &str) -> Result<Option<Vec<String>>> {
        match self.list_role_policies().role_name(role).send().await {
            Ok(out) => Ok(Some(out.policy_names().to_vec())),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(Error::aws(
                format!("Failed to list the policies of role '{role}'"),
                e,
            )),
        }
    }

    async fn delete_role(&self, name: &str) -> Result<bool> {
        match self.delete_role().role_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(Error::aws(format!("Failed to delete role '{name}'"), e)),
        }
    }
}

impl InstanceProfiles for Client {
    async fn profile(&self, name: &str) -> Result<Option<ProfileInfo>> {
        match self
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.instance_profile()
                    .map(|p| ProfileInfo {
                        roles: p
                            .roles()
                            .iter()
                            .map(|r| r.role_name().to_string())
                            .collect(),
                        tags: pairs(p.tags()),
                    })
                    .unwrap_or_default(),
            )),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(Error::aws(
                format!("Failed to read instance profile '{name}'"),
                e,
            )),
        }
    }

    async fn create_profile(&self, name: &str, tag: &StackTag) -> Result<()> {
        self.create_instance_profile()
            .instance_profile_name(name)
            .tags(iam_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create instance profile '{name}'"), e))?;
        Ok(())
    }

    async fn tag_profile(&self, name: &str, tag: &StackTag) -> Result<()> {
        self.tag_instance_profile()
            .instance_profile_name(name)
            .tags(iam_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag instance profile '{name}'"), e))?;
        Ok(())
    }

    async fn add_role(&self, profile: &str, role: &str) -> Result<()> {
        self.add_role_to_instance_profile()
            .instance_profile_name(profile)
            .role_name(role)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to add role '{role}' to instance profile '{profile}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn remove_role(&self, profile: &str, role: &str) -> Result<()> {
        self.remove_role_from_instance_profile()
            .instance_profile_name(profile)
            .role_name(role)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to remove role '{role}' from instance profile '{profile}'"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        self.delete_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to delete instance profile '{name}'"), e))?;
        Ok(())
    }
}

#[cfg(test)]
pub mod fake {
    //! IAM in memory: roles with their trust policy, tags and inline policies, and
    //! instance profiles, with every write recorded so tests can say what was sent.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Clone, Default)]
    pub struct FakeRole {
        pub info: RoleInfo,
        pub policies: BTreeMap<String, String>,
    }

    #[derive(Debug, Default)]
    pub struct FakeIam {
        pub roles: Mutex<BTreeMap<String, FakeRole>>,
        pub profiles: Mutex<BTreeMap<String, ProfileInfo>>,
        /// Every write, as `"<call> <name>"`.
        pub writes: Mutex<Vec<String>>,
    }

    impl FakeIam {
        fn wrote(&self, what: String) {
            self.writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(what);
        }

        pub fn writes(&self) -> Vec<String> {
            self.writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }

        fn roles(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FakeRole>> {
            self.roles.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn profiles(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProfileInfo>> {
            self.profiles.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn no_role(name: &str) -> Error {
            Error::Aws {
                what: format!("role '{name}'"),
                message: "NoSuchEntity".into(),
            }
        }
    }

    impl Roles for FakeIam {
        async fn role(&self, name: &str) -> Result<Option<RoleInfo>> {
            Ok(self.roles().get(name).map(|r| r.info.clone()))
        }

        async fn create_role(
            &self,
            name: &str,
            _description: &str,
            trust: &str,
            tag: &StackTag,
        ) -> Result<()> {
            self.wrote(format!("CreateRole {name}"));
            self.roles().insert(
                name.to_string(),
                FakeRole {
                    info: RoleInfo {
                        trust_policy: Some(trust.to_string()),
                        tags: vec![tag.clone()],
                    },
                    policies: BTreeMap::new(),
                },
            );
            Ok(())
        }

        async fn set_trust_policy(&self, name: &str, trust: &str) -> Result<()> {
            self.wrote(format!("UpdateAssumeRolePolicy {name}"));
            let mut roles = self.roles();
            let r = roles.get_mut(name).ok_or_else(|| Self::no_role(name))?;
            r.info.trust_policy = Some(trust.to_string());
            Ok(())
        }

        async fn tag_role(&self, name: &str, tag: &StackTag) -> Result<()> {
            self.wrote(format!("TagRole {name}"));
            let mut roles = self.roles();
            let r = roles.get_mut(name).ok_or_else(|| Self::no_role(name))?;
            r.info.tags.retain(|(k, _)| k != &tag.0);
            r.info.tags.push(tag.clone());
            Ok(())
        }

        async fn role_policy(&self, role: &str, policy: &str) -> Result<Option<String>> {
            Ok(self
                .roles()
                .get(role)
                .and_then(|r| r.policies.get(policy).cloned()))
        }

        async fn put_role_policy(&self, role: &str, policy: &str, document: &str) -> Result<()> {
            self.wrote(format!("PutRolePolicy {role}/{policy}"));
            let mut roles = self.roles();
            let r = roles.get_mut(role).ok_or_else(|| Self::no_role(role))?;
            r.policies.insert(policy.to_string(), document.to_string());
            Ok(())
        }

        async fn delete_role_policy(&self, role: &str, policy: &str) -> Result<bool> {
            self.wrote(format!("DeleteRolePolicy {role}/{policy}"));
            Ok(self
                .roles()
                .get_mut(role)
                .is_some_and(|r| r.policies.remove(policy).is_some()))
        }

        async fn role_policies(&self, role: &str) -> Result<Option<Vec<String>>> {
            Ok(self
                .roles()
                .get(role)
                .map(|r| r.policies.keys().cloned().collect()))
        }

        async fn delete_role(&self, name: &str) -> Result<bool> {
            self.wrote(format!("DeleteRole {name}"));
            Ok(self.roles().remove(name).is_some())
        }
    }

    impl InstanceProfiles for FakeIam {
        async fn profile(&self, name: &str) -> Result<Option<ProfileInfo>> {
            Ok(self.profiles().get(name).cloned())
        }

        async fn create_profile(&self, name: &str, tag: &StackTag) -> Result<()> {
            self.wrote(format!("CreateInstanceProfile {name}"));
            self.profiles().insert(
                name.to_string(),
                ProfileInfo {
                    roles: Vec::new(),
                    tags: vec![tag.clone()],
                },
            );
            Ok(())
        }

        async fn tag_profile(&self, name: &str, tag: &StackTag) -> Result<()> {
            self.wrote(format!("TagInstanceProfile {name}"));
            if let Some(p) = self.profiles().get_mut(name) {
                p.tags.push(tag.clone());
            }
            Ok(())
        }

        async fn add_role(&self, profile: &str, role: &str) -> Result<()> {
            self.wrote(format!("AddRoleToInstanceProfile {profile}"));
            if let Some(p) = self.profiles().get_mut(profile) {
                p.roles.push(role.to_string());
            }
            Ok(())
        }

        async fn remove_role(&self, profile: &str, role: &str) -> Result<()> {
            self.wrote(format!("RemoveRoleFromInstanceProfile {profile}"));
            if let Some(p) = self.profiles().get_mut(profile) {
                p.roles.retain(|r| r != role);
            }
            Ok(())
        }

        async fn delete_profile(&self, name: &str) -> Result<()> {
            self.wrote(format!("DeleteInstanceProfile {name}"));
            self.profiles().remove(name);
            Ok(())
        }
    }
}
