//! Every IAM role of a stack, one way: the agents' role (assumed by EC2, carried onto
//! instances by the instance profile of the same name) and the reaper deployment's
//! roles (assumed by Lambda and Scheduler). Each has a trust policy and one inline
//! policy a region: IAM is global, so a stack set up in two regions shares its roles,
//! and a teardown in one region removes only its own region's policy, and the role
//! only once no region's policy is left on it.
//!
//! What IAM holds is read into [`ObservedRole`]; [`diff`] says what to send; the
//! async functions only read and carry the steps out.

use lease_common::stack::Location;
use serde_json::{Value, json};

use super::wanted::same_value;
use super::{Outcome, not_ours};
use crate::aws::StackTag;
use crate::aws::iam::{InstanceProfiles, ProfileInfo, RoleInfo, Roles};
use crate::error::{Error, Result};
use crate::model::policies::VERSION;

/// Lets `service` (e.g. `lambda.amazonaws.com`) assume a role; for services acting on
/// behalf of a caller (Scheduler), only for callers in this account, so another
/// account's schedule cannot borrow the role (the confused-deputy guard).
pub fn trust(service: &str, at: Option<&Location>) -> Value {
    let mut s = json!({
        "Effect": "Allow",
        "Principal": { "Service": service },
        "Action": "sts:AssumeRole",
    });
    if let (Some(at), Some(obj)) = (at, s.as_object_mut()) {
        obj.insert(
            "Condition".into(),
            json!({ "StringEquals": { "aws:SourceAccount": at.account.as_str() } }),
        );
    }
    json!({ "Version": VERSION, "Statement": [s] })
}

/// Only EC2 instances may assume the agents' role.
pub fn agent_trust() -> Value {
    trust("ec2.amazonaws.com", None)
}

/// A role as it should be.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub name: String,
    pub description: String,
    pub trust: Value,
    /// This region's inline policy: its name and document.
    pub policy_name: String,
    pub policy: Value,
}

/// What IAM holds of a role: `None` for a role that does not exist; its policy is
/// read only when it does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRole {
    pub role: Option<RoleInfo>,
    pub policy: Option<String>,
}

/// A write to bring a role to what is wanted, in the order to send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleStep {
    Create,
    SetTrust,
    Tag,
    PutPolicy,
}

/// The writes and what they make of the role and of its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDiff {
    pub steps: Vec<RoleStep>,
    pub role: Outcome,
    pub policy: Outcome,
}

impl RoleDiff {
    /// The role and its policy as one outcome, for reports with one row a role.
    pub fn combined(&self) -> Outcome {
        match (self.role, self.policy) {
            (Outcome::Created, _) => Outcome::Created,
            (Outcome::Exists, Outcome::Exists) => Outcome::Exists,
            _ => Outcome::Updated,
        }
    }
}

fn has(tags: &[(String, String)], tag: &StackTag) -> bool {
    tags.iter().any(|t| t == tag)
}

/// What to send so the role has the wanted trust policy, the stack's tag and this
/// region's policy. Documents compare by meaning (IAM returns them percent-encoded).
pub fn diff(observed: &ObservedRole, wanted: &RoleSpec, tag: &StackTag) -> RoleDiff {
    let Some(role) = &observed.role else {
        return RoleDiff {
            steps: vec![RoleStep::Create, RoleStep::PutPolicy],
            role: Outcome::Created,
            policy: Outcome::Created,
        };
    };
    let mut steps = Vec::new();
    let trust = wanted.trust.to_string();
    if !role
        .trust_policy
        .as_deref()
        .is_some_and(|d| same_value(d, &trust))
    {
        steps.push(RoleStep::SetTrust);
    }
    if !has(&role.tags, tag) {
        steps.push(RoleStep::Tag);
    }
    let role_outcome = Outcome::of(false, !steps.is_empty());
    let policy = match &observed.policy {
        Some(d) if same_value(d, &wanted.policy.to_string()) => Outcome::Exists,
        Some(_) => Outcome::Updated,
        None => Outcome::Created,
    };
    if policy != Outcome::Exists {
        steps.push(RoleStep::PutPolicy);
    }
    RoleDiff {
        steps,
        role: role_outcome,
        policy,
    }
}

pub async fn observe<I: Roles>(iam: &I, name: &str, policy_name: &str) -> Result<ObservedRole> {
    let role = iam.role(name).await?;
    let policy = match role {
        Some(_) => iam.role_policy(name, policy_name).await?,
        None => None,
    };
    Ok(ObservedRole { role, policy })
}

/// Brings the role to `wanted`; returns the diff it carried out.
pub async fn ensure_role<I: Roles>(iam: &I, wanted: &RoleSpec, tag: &StackTag) -> Result<RoleDiff> {
    let observed = observe(iam, &wanted.name, &wanted.policy_name).await?;
    let d = diff(&observed, wanted, tag);
    let name = &wanted.name;
    for step in &d.steps {
        match step {
            RoleStep::Create => {
                iam.create_role(name, &wanted.description, &wanted.trust.to_string(), tag)
                    .await?
            }
            RoleStep::SetTrust => {
                iam.set_trust_policy(name, &wanted.trust.to_string())
                    .await?
            }
            RoleStep::Tag => iam.tag_role(name, tag).await?,
            RoleStep::PutPolicy => {
                iam.put_role_policy(name, &wanted.policy_name, &wanted.policy.to_string())
                    .await?
            }
        }
    }
    Ok(d)
}

/// How teardown tells a role is the stack's.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// It carries the stack's tag (the agents' role, which a person may have made).
    Tagged(&'a StackTag),
    /// Its name is the stack's (the deployment's roles, named for the stack's reaper).
    ByName,
}

/// Whether teardown may touch the role: `Err` holds the outcome and note to report
/// when it may not.
pub fn may_remove(
    role: Option<&RoleInfo>,
    owner: Owner<'_>,
) -> std::result::Result<(), (Outcome, Option<String>)> {
    match (role, owner) {
        (None, _) => Err((Outcome::Absent, None)),
        (Some(r), Owner::Tagged(tag)) if !has(&r.tags, tag) => Err((Outcome::Kept, not_ours(tag))),
        _ => Ok(()),
    }
}

/// The regions whose policy (`<prefix><region>`) is still on a role.
pub fn other_regions(policies: &[String], prefix: &str) -> Vec<String> {
    policies
        .iter()
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect()
}

/// What removing this region's policy did, and the regions whose policies remain (the
/// role is still theirs then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRemoval {
    pub outcome: Outcome,
    pub note: Option<String>,
    pub others: Vec<String>,
}

/// Removes this region's inline policy from the stack's role.
pub async fn remove_region_policy<I: Roles>(
    iam: &I,
    role: &str,
    policy_name: &str,
    prefix: &str,
    owner: Owner<'_>,
) -> Result<PolicyRemoval> {
    if let Err((outcome, note)) = may_remove(iam.role(role).await?.as_ref(), owner) {
        return Ok(PolicyRemoval {
            outcome,
            note,
            others: Vec::new(),
        });
    }
    let outcome = if iam.delete_role_policy(role, policy_name).await? {
        Outcome::Deleted
    } else {
        Outcome::Absent
    };
    let others = iam
        .role_policies(role)
        .await?
        .map(|p| other_regions(&p, prefix))
        .unwrap_or_default();
    Ok(PolicyRemoval {
        outcome,
        note: None,
        others,
    })
}

/// Deletes the role, once no region's policy is left on it ([`remove_region_policy`]
/// first). A policy someone else attached makes IAM refuse, and the error names the
/// role.
pub async fn remove_role<I: Roles>(
    iam: &I,
    role: &str,
    owner: Owner<'_>,
) -> Result<(Outcome, Option<String>)> {
    if let Err(skip) = may_remove(iam.role(role).await?.as_ref(), owner) {
        return Ok(skip);
    }
    if iam.delete_role(role).await? {
        Ok((Outcome::Deleted, None))
    } else {
        Ok((Outcome::Absent, None))
    }
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

/// A write to bring the instance profile to what is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileStep {
    Create,
    Tag,
    AddRole,
}

/// What to send so the profile exists, carries the stack's tag and holds `role`;
/// `Err` names the other role a profile holds (an instance profile holds one role,
/// and someone else's is not overwritten).
pub fn profile_diff(
    observed: Option<&ProfileInfo>,
    role: &str,
    tag: &StackTag,
) -> std::result::Result<(Vec<ProfileStep>, Outcome), String> {
    let Some(p) = observed else {
        return Ok((
            vec![ProfileStep::Create, ProfileStep::AddRole],
            Outcome::Created,
        ));
    };
    let mut steps = Vec::new();
    if !has(&p.tags, tag) {
        steps.push(ProfileStep::Tag);
    }
    match profile_action(&p.roles, role) {
        ProfileAction::Holds => {}
        ProfileAction::Add => steps.push(ProfileStep::AddRole),
        ProfileAction::HoldsOther(other) => return Err(other),
    }
    let outcome = Outcome::of(false, !steps.is_empty());
    Ok((steps, outcome))
}

/// The instance profile exists and holds the role.
pub async fn ensure_instance_profile<I: InstanceProfiles>(
    iam: &I,
    profile: &str,
    role: &str,
    tag: &StackTag,
) -> Result<Outcome> {
    let observed = iam.profile(profile).await?;
    let (steps, outcome) = profile_diff(observed.as_ref(), role, tag).map_err(|other| {
        Error::Refused(format!(
            "Instance profile '{profile}' holds role '{other}', not '{role}': remove it from the profile first"
        ))
    })?;
    for step in steps {
        match step {
            ProfileStep::Create => iam.create_profile(profile, tag).await?,
            ProfileStep::Tag => iam.tag_profile(profile, tag).await?,
            ProfileStep::AddRole => iam.add_role(profile, role).await?,
        }
    }
    Ok(outcome)
}

pub async fn remove_instance_profile<I: InstanceProfiles>(
    iam: &I,
    profile: &str,
    role: &str,
    tag: &StackTag,
) -> Result<(Outcome, Option<String>)> {
    let Some(p) = iam.profile(profile).await? else {
        return Ok((Outcome::Absent, None));
    };
    if !has(&p.tags, tag) {
        return Ok((Outcome::Kept, not_ours(tag)));
    }
    if p.roles.iter().any(|r| r == role) {
        iam.remove_role(profile, role).await?;
    }
    iam.delete_profile(profile).await?;
    Ok((Outcome::Deleted, None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::aws::iam::fake::FakeIam;

    fn tag() -> StackTag {
        ("lease:stack".into(), "dev".into())
    }

    fn spec() -> RoleSpec {
        RoleSpec {
            name: "lease-dev-agent".into(),
            description: "agents".into(),
            trust: agent_trust(),
            policy_name: "lease-agent-eu-west-1".into(),
            policy: json!({"Version": VERSION, "Statement": []}),
        }
    }

    /// IAM's way of returning a document.
    fn encoded(v: &Value) -> String {
        percent_encoding::utf8_percent_encode(&v.to_string(), percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    #[test]
    fn a_missing_role_is_created_with_its_policy() {
        let d = diff(&ObservedRole::default(), &spec(), &tag());
        assert_eq!(d.steps, [RoleStep::Create, RoleStep::PutPolicy]);
        assert_eq!((d.role, d.policy), (Outcome::Created, Outcome::Created));
        assert_eq!(d.combined(), Outcome::Created);
    }

    #[test]
    fn a_role_as_wanted_needs_nothing_even_percent_encoded() {
        let s = spec();
        let observed = ObservedRole {
            role: Some(RoleInfo {
                trust_policy: Some(encoded(&s.trust)),
                tags: vec![tag()],
            }),
            policy: Some(encoded(&s.policy)),
        };
        let d = diff(&observed, &s, &tag());
        assert!(d.steps.is_empty(), "{:?}", d.steps);
        assert_eq!(d.combined(), Outcome::Exists);
    }

    #[test]
    fn only_what_differs_is_rewritten() {
        let s = spec();
        let observed = ObservedRole {
            role: Some(RoleInfo {
                trust_policy: Some(trust("lambda.amazonaws.com", None).to_string()),
                tags: Vec::new(),
            }),
            policy: Some(s.policy.to_string()),
        };
        let d = diff(&observed, &s, &tag());
        assert_eq!(d.steps, [RoleStep::SetTrust, RoleStep::Tag]);
        assert_eq!((d.role, d.policy), (Outcome::Updated, Outcome::Exists));
        let stale = ObservedRole {
            role: Some(RoleInfo {
                trust_policy: Some(s.trust.to_string()),
                tags: vec![tag()],
            }),
            policy: Some(json!({"Version": VERSION, "Statement": [1]}).to_string()),
        };
        let d = diff(&stale, &s, &tag());
        assert_eq!(d.steps, [RoleStep::PutPolicy]);
        assert_eq!((d.role, d.policy), (Outcome::Exists, Outcome::Updated));
        assert_eq!(d.combined(), Outcome::Updated);
        let missing = ObservedRole {
            policy: None,
            ..stale
        };
        assert_eq!(diff(&missing, &s, &tag()).policy, Outcome::Created);
    }

    #[test]
    fn scheduler_trust_is_for_this_account_only() {
        let at = Location::new("aws", "123456789012", "eu-west-1").unwrap();
        let t = trust("scheduler.amazonaws.com", Some(&at));
        assert_eq!(
            t["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"],
            "123456789012"
        );
        assert!(agent_trust()["Statement"][0].get("Condition").is_none());
        assert_eq!(
            agent_trust()["Statement"][0]["Principal"]["Service"],
            "ec2.amazonaws.com"
        );
    }

    #[test]
    fn teardown_touches_only_the_stacks_roles() {
        let t = tag();
        let ours = RoleInfo {
            trust_policy: None,
            tags: vec![t.clone()],
        };
        let theirs = RoleInfo::default();
        assert_eq!(
            may_remove(None, Owner::Tagged(&t)),
            Err((Outcome::Absent, None))
        );
        assert_eq!(may_remove(Some(&ours), Owner::Tagged(&t)), Ok(()));
        assert_eq!(
            may_remove(Some(&theirs), Owner::Tagged(&t)),
            Err((Outcome::Kept, not_ours(&t)))
        );
        assert_eq!(may_remove(Some(&theirs), Owner::ByName), Ok(()));
        let policies = ["lease-agent-us-east-1".to_string(), "other".to_string()];
        assert_eq!(other_regions(&policies, "lease-agent-"), ["us-east-1"]);
    }

    #[test]
    fn a_profile_gets_the_role_unless_it_holds_another() {
        let r = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(profile_action(&r(&[]), "a"), ProfileAction::Add);
        assert_eq!(profile_action(&r(&["a"]), "a"), ProfileAction::Holds);
        assert_eq!(
            profile_action(&r(&["b"]), "a"),
            ProfileAction::HoldsOther("b".into())
        );
        let t = tag();
        assert_eq!(
            profile_diff(None, "a", &t),
            Ok((
                vec![ProfileStep::Create, ProfileStep::AddRole],
                Outcome::Created
            ))
        );
        let untagged = ProfileInfo {
            roles: r(&["a"]),
            tags: Vec::new(),
        };
        assert_eq!(
            profile_diff(Some(&untagged), "a", &t),
            Ok((vec![ProfileStep::Tag], Outcome::Updated))
        );
        let other = ProfileInfo {
            roles: r(&["b"]),
            tags: vec![t.clone()],
        };
        assert_eq!(profile_diff(Some(&other), "a", &t), Err("b".into()));
    }

    /// The whole cycle through the fake: created, then nothing sent, then removed
    /// region by region.
    #[tokio::test]
    async fn ensure_then_again_then_remove_region_by_region() {
        let iam = FakeIam::default();
        let t = tag();
        let s = spec();
        assert_eq!(
            ensure_role(&iam, &s, &t).await.unwrap().combined(),
            Outcome::Created
        );
        assert_eq!(
            ensure_instance_profile(&iam, &s.name, &s.name, &t)
                .await
                .unwrap(),
            Outcome::Created
        );
        let sent = iam.writes().len();
        assert_eq!(
            ensure_role(&iam, &s, &t).await.unwrap().combined(),
            Outcome::Exists
        );
        assert_eq!(
            ensure_instance_profile(&iam, &s.name, &s.name, &t)
                .await
                .unwrap(),
            Outcome::Exists
        );
        assert_eq!(iam.writes().len(), sent, "a second run sends nothing");

        let us = RoleSpec {
            policy_name: "lease-agent-us-east-1".into(),
            ..spec()
        };
        ensure_role(&iam, &us, &t).await.unwrap();
        let r = remove_region_policy(
            &iam,
            &s.name,
            &s.policy_name,
            "lease-agent-",
            Owner::Tagged(&t),
        )
        .await
        .unwrap();
        assert_eq!(r.outcome, Outcome::Deleted);
        assert_eq!(r.others, ["us-east-1"]);
        let r = remove_region_policy(
            &iam,
            &s.name,
            &us.policy_name,
            "lease-agent-",
            Owner::Tagged(&t),
        )
        .await
        .unwrap();
        assert!(r.others.is_empty());
        assert_eq!(
            remove_instance_profile(&iam, &s.name, &s.name, &t)
                .await
                .unwrap(),
            (Outcome::Deleted, None)
        );
        assert_eq!(
            remove_role(&iam, &s.name, Owner::Tagged(&t)).await.unwrap(),
            (Outcome::Deleted, None)
        );
        assert_eq!(
            remove_role(&iam, &s.name, Owner::ByName).await.unwrap(),
            (Outcome::Absent, None)
        );
    }
}
