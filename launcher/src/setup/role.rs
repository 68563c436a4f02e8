//! IAM: the agents' role (assumable by EC2 only, with the policy `lease iam-policy
//! agent` prints) and the instance profile that carries it onto instances.

use aws_sdk_iam::Client;
use aws_sdk_iam::types::Tag;
use serde_json::Value;

use super::plan::{self, AGENT_POLICY_PREFIX};
use super::{Outcome, not_ours};
use crate::error::{Error, Result};

fn iam_tag(tag: &(String, String)) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| Error::usage(format!("tag {}: {e}", tag.0)))
}

fn has(tags: &[Tag], tag: &(String, String)) -> bool {
    tags.iter().any(|t| t.key() == tag.0 && t.value() == tag.1)
}

/// The role exists with EC2 as its only trusted principal, the agent policy inline
/// and the stack's tag. Returns the outcomes of the role and of its policy.
pub async fn ensure_role(
    iam: &Client,
    role: &str,
    policy_name: &str,
    policy: &Value,
    tag: &(String, String),
) -> Result<(Outcome, Outcome)> {
    let trust = plan::trust_policy().to_string();
    let role_outcome = match iam.get_role().role_name(role).send().await {
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            iam.create_role()
                .role_name(role)
                .assume_role_policy_document(&trust)
                .description("lease agents: consume the stack's queues, publish events, write bundles, end their own instance")
                .tags(iam_tag(tag)?)
                .send()
                .await
                .map_err(|e| Error::aws(format!("Failed to create role '{role}'"), e))?;
            Outcome::Created
        }
        Err(e) => return Err(Error::aws(format!("Failed to read role '{role}'"), e)),
        Ok(out) => {
            let current = out.role().cloned();
            let mut updated = false;
            let same_trust = current
                .as_ref()
                .and_then(|r| r.assume_role_policy_document())
                .is_some_and(|d| plan::same_value(d, &trust));
            if !same_trust {
                iam.update_assume_role_policy()
                    .role_name(role)
                    .policy_document(&trust)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::aws(
                            format!("Failed to set the trust policy of role '{role}'"),
                            e,
                        )
                    })?;
                updated = true;
            }
            if !current.as_ref().is_some_and(|r| has(r.tags(), tag)) {
                iam.tag_role()
                    .role_name(role)
                    .tags(iam_tag(tag)?)
                    .send()
                    .await
                    .map_err(|e| Error::aws(format!("Failed to tag role '{role}'"), e))?;
                updated = true;
            }
            Outcome::of(false, updated)
        }
    };

    let wanted = policy.to_string();
    let policy_outcome = match iam
        .get_role_policy()
        .role_name(role)
        .policy_name(policy_name)
        .send()
        .await
    {
        Ok(out) if plan::same_value(out.policy_document(), &wanted) => Outcome::Exists,
        Ok(_) => {
            put_policy(iam, role, policy_name, &wanted).await?;
            Outcome::Updated
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            put_policy(iam, role, policy_name, &wanted).await?;
            Outcome::Created
        }
        Err(e) => {
            return Err(Error::aws(
                format!("Failed to read policy '{policy_name}' of role '{role}'"),
                e,
            ));
        }
    };
    Ok((role_outcome, policy_outcome))
}

async fn put_policy(iam: &Client, role: &str, name: &str, document: &str) -> Result<()> {
    iam.put_role_policy()
        .role_name(role)
        .policy_name(name)
        .policy_document(document)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to put policy '{name}' on role '{role}'"), e))?;
    Ok(())
}

/// Removes this region's inline policy from the stack's role; returns the regions
/// whose policies remain (the role is still theirs then).
pub async fn remove_region_policy(
    iam: &Client,
    role: &str,
    policy_name: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>, Vec<String>)> {
    let r = match iam.get_role().role_name(role).send().await {
        Ok(out) => out.role().cloned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return Ok((Outcome::Absent, None, Vec::new()));
        }
        Err(e) => return Err(Error::aws(format!("Failed to read role '{role}'"), e)),
    };
    if !r.as_ref().is_some_and(|r| has(r.tags(), tag)) {
        return Ok((Outcome::Kept, not_ours(tag), Vec::new()));
    }
    let outcome = match iam
        .delete_role_policy()
        .role_name(role)
        .policy_name(policy_name)
        .send()
        .await
    {
        Ok(_) => Outcome::Deleted,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Outcome::Absent
        }
        Err(e) => {
            return Err(Error::aws(
                format!("Failed to delete policy '{policy_name}' of role '{role}'"),
                e,
            ));
        }
    };
    let listed = iam
        .list_role_policies()
        .role_name(role)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to list the policies of role '{role}'"), e))?;
    let others = listed
        .policy_names()
        .iter()
        .filter_map(|n| n.strip_prefix(AGENT_POLICY_PREFIX).map(str::to_string))
        .collect();
    Ok((outcome, None, others))
}

/// The instance profile exists and holds the role (an instance profile holds one
/// role; one holding another is an error, not something to overwrite).
pub async fn ensure_instance_profile(
    iam: &Client,
    profile: &str,
    role: &str,
    tag: &(String, String),
) -> Result<Outcome> {
    let (created, roles) = match iam
        .get_instance_profile()
        .instance_profile_name(profile)
        .send()
        .await
    {
        Ok(out) => {
            let p = out.instance_profile();
            let roles: Vec<String> = p
                .map(|p| {
                    p.roles()
                        .iter()
                        .map(|r| r.role_name().to_string())
                        .collect()
                })
                .unwrap_or_default();
            if !p.is_some_and(|p| has(p.tags(), tag)) {
                iam.tag_instance_profile()
                    .instance_profile_name(profile)
                    .tags(iam_tag(tag)?)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::aws(format!("Failed to tag instance profile '{profile}'"), e)
                    })?;
                if roles.iter().any(|r| r == role) {
                    return Ok(Outcome::Updated);
                }
            }
            (false, roles)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            iam.create_instance_profile()
                .instance_profile_name(profile)
                .tags(iam_tag(tag)?)
                .send()
                .await
                .map_err(|e| {
                    Error::aws(format!("Failed to create instance profile '{profile}'"), e)
                })?;
            (true, Vec::new())
        }
        Err(e) => {
            return Err(Error::aws(
                format!("Failed to read instance profile '{profile}'"),
                e,
            ));
        }
    };
    match profile_action(&roles, role) {
        ProfileAction::Holds => return Ok(Outcome::Exists),
        ProfileAction::HoldsOther(other) => {
            return Err(Error::Refused(format!(
                "Instance profile '{profile}' holds role '{other}', not '{role}': remove it from the profile first"
            )));
        }
        ProfileAction::Add => {}
    }
    iam.add_role_to_instance_profile()
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
    Ok(Outcome::of(created, true))
}

/// What an instance profile needs to carry `role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileAction {
    Holds,
    Add,
    /// A profile holds at most one role; someone else's is not replaced.
    HoldsOther(String),
}

pub fn profile_action(roles: &[String], role: &str) -> ProfileAction {
    if roles.iter().any(|r| r == role) {
        ProfileAction::Holds
    } else if let Some(other) = roles.first() {
        ProfileAction::HoldsOther(other.clone())
    } else {
        ProfileAction::Add
    }
}

pub async fn remove_instance_profile(
    iam: &Client,
    profile: &str,
    role: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    let p = match iam
        .get_instance_profile()
        .instance_profile_name(profile)
        .send()
        .await
    {
        Ok(out) => out.instance_profile().cloned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return Ok((Outcome::Absent, None));
        }
        Err(e) => {
            return Err(Error::aws(
                format!("Failed to read instance profile '{profile}'"),
                e,
            ));
        }
    };
    if !p.as_ref().is_some_and(|p| has(p.tags(), tag)) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    let roles: Vec<String> = p
        .map(|p| {
            p.roles()
                .iter()
                .map(|r| r.role_name().to_string())
                .collect()
        })
        .unwrap_or_default();
    for r in roles.iter().filter(|r| *r == role) {
        iam.remove_role_from_instance_profile()
            .instance_profile_name(profile)
            .role_name(r)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("Failed to remove role '{r}' from instance profile '{profile}'"),
                    e,
                )
            })?;
    }
    iam.delete_instance_profile()
        .instance_profile_name(profile)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to delete instance profile '{profile}'"), e))?;
    Ok((Outcome::Deleted, None))
}

/// Deletes the role, once no region's policy is left on it (`remove_region_policy`
/// first). A policy someone else attached makes IAM refuse, and the error names the
/// role.
pub async fn remove_role(
    iam: &Client,
    role: &str,
    tag: &(String, String),
) -> Result<(Outcome, Option<String>)> {
    let r = match iam.get_role().role_name(role).send().await {
        Ok(out) => out.role().cloned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return Ok((Outcome::Absent, None));
        }
        Err(e) => return Err(Error::aws(format!("Failed to read role '{role}'"), e)),
    };
    if !r.as_ref().is_some_and(|r| has(r.tags(), tag)) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    iam.delete_role()
        .role_name(role)
        .send()
        .await
        .map_err(|e| Error::aws(format!("Failed to delete role '{role}'"), e))?;
    Ok((Outcome::Deleted, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_gets_the_role_unless_it_holds_another() {
        let r = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(profile_action(&r(&[]), "a"), ProfileAction::Add);
        assert_eq!(profile_action(&r(&["a"]), "a"), ProfileAction::Holds);
        assert_eq!(
            profile_action(&r(&["b"]), "a"),
            ProfileAction::HoldsOther("b".into())
        );
    }
}
