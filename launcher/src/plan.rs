//! A launch as data: everything RunInstances will be sent, built by a pure function so
//! `--dry-run` prints exactly what a real launch would send.

use chrono::{DateTime, Utc};
use lease_common::HumanDuration;
use lease_common::tags::{Action, LeaseTags, NodeStatus};
use serde::Serialize;

use crate::cli::LaunchArgs;
use crate::error::{Error, Result};

/// The RunInstances request, field for field, in the API's own (PascalCase) names so the
/// `--dry-run` output reads like `aws ec2 run-instances --cli-input-json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchPlan {
    pub image_id: String,
    pub instance_type: String,
    pub min_count: i32,
    pub max_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<IamProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_market_options: Option<MarketOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hibernation_options: Option<HibernationOptions>,
    pub metadata_options: MetadataOptions,
    pub instance_initiated_shutdown_behavior: String,
    pub tag_specifications: Vec<TagSpec>,
    /// Makes a retried call launch nothing twice.
    pub client_token: String,
    /// Plain text here; base64-encoded on the wire.
    pub user_data: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct IamProfile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MarketOptions {
    pub market_type: String,
    pub spot_options: SpotOptions,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SpotOptions {
    pub spot_instance_type: String,
    pub instance_interruption_behavior: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HibernationOptions {
    pub configured: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MetadataOptions {
    pub http_tokens: String,
    pub http_endpoint: String,
    pub http_put_response_hop_limit: i32,
    pub instance_metadata_tags: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TagSpec {
    pub resource_type: String,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl TagSpec {
    pub fn tag_pairs(&self) -> Vec<(String, String)> {
        self.tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect()
    }
}

/// What the flags say about the lease, parsed and checked before any API call.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseTerms {
    /// `None` only for `--ttl none --yes`.
    pub ttl: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub on_idle: Action,
    pub on_expiry: Action,
    pub on_complete: Action,
}

impl LeaseTerms {
    pub fn from_args(args: &LaunchArgs, yes: bool) -> Result<Self> {
        let ttl = if args.ttl.trim().eq_ignore_ascii_case("none") {
            if !yes {
                return Err(Error::Refused(
                    "--ttl none launches an instance with no deadline; add --yes if you mean it"
                        .into(),
                ));
            }
            None
        } else {
            let ttl: HumanDuration = args
                .ttl
                .parse()
                .map_err(|e| Error::usage(format!("--ttl: {e}")))?;
            if ttl.as_secs() == 0 {
                return Err(Error::usage("--ttl must be longer than zero"));
            }
            Some(ttl)
        };
        let idle_timeout = args
            .idle_timeout
            .as_deref()
            .map(|s| {
                s.parse::<HumanDuration>()
                    .map_err(|e| Error::usage(format!("--idle-timeout: {e}")))
            })
            .transpose()?;
        if idle_timeout.is_some_and(|d| d.as_secs() == 0) {
            return Err(Error::usage("--idle-timeout must be longer than zero"));
        }
        Ok(Self {
            ttl,
            idle_timeout,
            on_idle: args.on_idle,
            on_expiry: args.on_expiry,
            on_complete: args.on_complete,
        })
    }

    pub fn wants_hibernation(&self) -> bool {
        [self.on_idle, self.on_expiry, self.on_complete].contains(&Action::Hibernate)
    }
}

/// The inputs resolved from AWS (or placeholders for a dry run).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub image_id: String,
    pub owner: String,
    pub user_data: String,
    pub client_token: String,
}

/// The tags of a new lease.
pub fn lease_tags(
    args: &LaunchArgs,
    terms: &LeaseTerms,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>> {
    let tags = LeaseTags {
        managed: true,
        name: args.name.clone(),
        owner: Some(owner.to_string()),
        job: args.job.clone(),
        ttl: terms.ttl,
        no_deadline: terms.ttl.is_none(),
        expires_at: terms
            .ttl
            .map(|t| lease_common::tags::ceil_to_second(now + t.to_chrono())),
        idle_timeout: terms.idle_timeout,
        on_idle: terms.on_idle,
        on_expiry: terms.on_expiry,
        on_complete: terms.on_complete,
        // The agent overwrites this once it runs; until then `lease list` says why
        // the instance has no agent status yet.
        status: Some(NodeStatus::Starting),
        task: None,
    };
    Ok(tags.render()?)
}

pub fn build(
    args: &LaunchArgs,
    terms: &LeaseTerms,
    resolved: Resolved,
    now: DateTime<Utc>,
) -> Result<LaunchPlan> {
    let pairs = lease_tags(args, terms, &resolved.owner, now)?;
    let tags: Vec<KeyValue> = pairs
        .into_iter()
        .map(|(key, value)| KeyValue { key, value })
        .collect();
    let iam_instance_profile = args.iam_instance_profile.as_ref().map(|p| {
        if p.starts_with("arn:") {
            IamProfile {
                arn: Some(p.clone()),
                name: None,
            }
        } else {
            IamProfile {
                arn: None,
                name: Some(p.clone()),
            }
        }
    });
    Ok(LaunchPlan {
        image_id: resolved.image_id,
        instance_type: args.instance_type.clone(),
        // All or nothing: a partial fleet is rarely what a person asked for, and EC2
        // then either launches every instance or none.
        min_count: args.count,
        max_count: args.count,
        key_name: args.key_name.clone(),
        subnet_id: args.subnet_id.clone(),
        security_group_ids: args.security_group_ids.clone(),
        iam_instance_profile,
        instance_market_options: (!args.on_demand).then(|| MarketOptions {
            market_type: "spot".into(),
            spot_options: SpotOptions {
                spot_instance_type: "one-time".into(),
                instance_interruption_behavior: "terminate".into(),
            },
        }),
        hibernation_options: terms
            .wants_hibernation()
            .then_some(HibernationOptions { configured: true }),
        metadata_options: MetadataOptions {
            http_tokens: "required".into(),
            http_endpoint: "enabled".into(),
            // 2, not 1: a container on the instance is one more hop from IMDS.
            http_put_response_hop_limit: 2,
            instance_metadata_tags: "enabled".into(),
        },
        // A `poweroff` from the agent's fallback path then ends the bill too.
        instance_initiated_shutdown_behavior: "terminate".into(),
        // The spot request is tagged too: the launcher's policy lets RunInstances
        // create it only with `lease:managed=true` in the request, like the instance.
        tag_specifications: ["instance", "volume", "spot-instances-request"]
            .into_iter()
            .filter(|r| !(args.on_demand && *r == "spot-instances-request"))
            .map(|r| TagSpec {
                resource_type: r.into(),
                tags: tags.clone(),
            })
            .collect(),
        client_token: resolved.client_token,
        user_data: resolved.user_data,
    })
}

/// The public SSM parameter naming the latest Amazon Linux 2023 AMI for `arch`.
pub fn al2023_parameter(arch: &str) -> String {
    format!("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}")
}

/// Picks the architecture for the default AMI: arm64 when the type is Graviton-only.
pub fn pick_arch(supported: &[String]) -> &str {
    if supported.iter().any(|a| a == "x86_64") {
        "x86_64"
    } else if supported.iter().any(|a| a == "arm64") {
        "arm64"
    } else {
        supported.first().map(String::as_str).unwrap_or("x86_64")
    }
}

/// The owner recorded for a caller: the last part of its ARN — the user name for an IAM
/// user, the session name (usually a person's e-mail under SSO) for an assumed role.
pub fn owner_from_arn(arn: &str) -> String {
    match arn.rsplit_once('/') {
        Some((_, last)) if !last.is_empty() => last.to_string(),
        // arn:aws:iam::123456789012:root
        _ => arn.rsplit(':').next().unwrap_or(arn).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use clap::Parser;

    fn args(extra: &[&str]) -> LaunchArgs {
        let mut argv = vec!["lease", "launch", "--instance-type", "t3.micro"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Launch(a) => *a,
            other => panic!("parsed {other:?}"),
        }
    }

    fn resolved() -> Resolved {
        Resolved {
            image_id: "ami-123".into(),
            owner: "alice".into(),
            user_data: "#cloud-config\n".into(),
            client_token: "tok".into(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
    }

    fn tag<'a>(plan: &'a LaunchPlan, key: &str) -> Option<&'a str> {
        plan.tag_specifications[0]
            .tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }

    #[test]
    fn default_launch_is_spot_with_a_four_hour_lease() {
        let a = args(&[]);
        let terms = LeaseTerms::from_args(&a, false).unwrap();
        let plan = build(&a, &terms, resolved(), now()).unwrap();
        let m = plan.instance_market_options.as_ref().unwrap();
        assert_eq!(m.market_type, "spot");
        assert_eq!(m.spot_options.spot_instance_type, "one-time");
        assert_eq!(m.spot_options.instance_interruption_behavior, "terminate");
        assert_eq!(tag(&plan, "lease:ttl"), Some("4h"));
        assert_eq!(tag(&plan, "lease:expires-at"), Some("2026-11-23T14:00:00Z"));
        assert_eq!(tag(&plan, "lease:managed"), Some("true"));
        assert_eq!(tag(&plan, "lease:owner"), Some("alice"));
        assert_eq!(plan.metadata_options.http_tokens, "required");
        assert_eq!(plan.metadata_options.instance_metadata_tags, "enabled");
        assert_eq!(plan.metadata_options.http_put_response_hop_limit, 2);
        assert_eq!(plan.instance_initiated_shutdown_behavior, "terminate");
        let kinds: Vec<_> = plan
            .tag_specifications
            .iter()
            .map(|t| t.resource_type.as_str())
            .collect();
        assert_eq!(kinds, ["instance", "volume", "spot-instances-request"]);
        assert_eq!(
            plan.tag_specifications[0],
            TagSpec {
                resource_type: "instance".into(),
                ..plan.tag_specifications[1].clone()
            }
        );
        assert!(plan.hibernation_options.is_none());
    }

    #[test]
    fn on_demand_hibernate_and_count() {
        let a = args(&[
            "--on-demand",
            "--on-idle",
            "hibernate",
            "--count",
            "3",
            "--idle-timeout",
            "30m",
        ]);
        let terms = LeaseTerms::from_args(&a, false).unwrap();
        let plan = build(&a, &terms, resolved(), now()).unwrap();
        assert!(plan.instance_market_options.is_none());
        // No spot request to tag.
        let kinds: Vec<_> = plan
            .tag_specifications
            .iter()
            .map(|t| t.resource_type.as_str())
            .collect();
        assert_eq!(kinds, ["instance", "volume"]);
        assert_eq!(
            plan.hibernation_options,
            Some(HibernationOptions { configured: true })
        );
        assert_eq!((plan.min_count, plan.max_count), (3, 3));
        assert_eq!(tag(&plan, "lease:idle-timeout"), Some("30m"));
        assert_eq!(tag(&plan, "lease:on-idle"), Some("hibernate"));
        assert_eq!(tag(&plan, "lease:on-complete"), Some("terminate"));
    }

    #[test]
    fn on_complete_is_tagged_and_hibernation_configured_for_it() {
        let a = args(&["--on-complete", "hibernate"]);
        let terms = LeaseTerms::from_args(&a, false).unwrap();
        let plan = build(&a, &terms, resolved(), now()).unwrap();
        assert_eq!(tag(&plan, "lease:on-complete"), Some("hibernate"));
        assert!(plan.hibernation_options.is_some());
    }

    #[test]
    fn ttl_none_needs_yes() {
        let a = args(&["--ttl", "none"]);
        let err = LeaseTerms::from_args(&a, false).unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err}");
        let terms = LeaseTerms::from_args(&a, true).unwrap();
        let plan = build(&a, &terms, resolved(), now()).unwrap();
        assert_eq!(tag(&plan, "lease:ttl"), Some("none"));
        assert_eq!(tag(&plan, "lease:expires-at"), None);
    }

    #[test]
    fn bad_flags_are_named() {
        let err = LeaseTerms::from_args(&args(&["--ttl", "soon"]), false).unwrap_err();
        assert!(err.to_string().contains("--ttl") && err.to_string().contains("soon"));
        let err = LeaseTerms::from_args(&args(&["--ttl", "0s"]), false).unwrap_err();
        assert!(err.to_string().contains("--ttl"));
        let err = LeaseTerms::from_args(&args(&["--idle-timeout", "1y"]), false).unwrap_err();
        assert!(err.to_string().contains("--idle-timeout"));
        let a = args(&["--job", &"j".repeat(300)]);
        let terms = LeaseTerms::from_args(&a, false).unwrap();
        let err = build(&a, &terms, resolved(), now()).unwrap_err();
        assert!(err.to_string().contains("lease:job"), "{err}");
    }

    #[test]
    fn owner_and_arch_helpers() {
        assert_eq!(
            owner_from_arn("arn:aws:iam::123456789012:user/alice"),
            "alice"
        );
        assert_eq!(
            owner_from_arn("arn:aws:sts::123456789012:assumed-role/Admin/bob@example.com"),
            "bob@example.com"
        );
        assert_eq!(owner_from_arn("arn:aws:iam::123456789012:root"), "root");
        assert_eq!(pick_arch(&["arm64".into()]), "arm64");
        assert_eq!(pick_arch(&["i386".into(), "x86_64".into()]), "x86_64");
        assert_eq!(
            al2023_parameter("arm64"),
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
        );
    }
}
