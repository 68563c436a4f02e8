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
    /// The root volume, sized and encrypted by lease rather than left at the AMI's
    /// default (8 GiB on Amazon Linux, unencrypted unless the account says otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
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
pub struct BlockDeviceMapping {
    pub device_name: String,
    pub ebs: EbsVolume,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct EbsVolume {
    /// GiB.
    pub volume_size: i32,
    pub volume_type: String,
    pub encrypted: bool,
    /// The volume ends with the instance: a lease leaves nothing behind that bills.
    pub delete_on_termination: bool,
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
        if !args.on_demand {
            check_spot_actions(args)?;
        }
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

/// Stop and hibernate are refused on spot, naming the flag, before any call. A one-time
/// spot instance (what lease launches) cannot be stopped or hibernated at all; a
/// persistent spot request could, but it launches a replacement whenever its instance
/// is terminated — and every lease ends in a terminate at the latest (the reaper's age
/// cap), so it would bring back the very instance the lease ended.
fn check_spot_actions(args: &LaunchArgs) -> Result<()> {
    let flags = [
        ("--on-idle", args.on_idle),
        ("--on-expiry", args.on_expiry),
        ("--on-complete", args.on_complete),
    ];
    match flags.iter().find(|(_, a)| a.keeps_instance()) {
        Some((flag, action)) => Err(Error::usage(format!(
            "{flag} {action} needs --on-demand: EC2 cannot stop or hibernate a one-time spot \
             instance, and a persistent spot request would relaunch the instance each time \
             its lease ends it. Add --on-demand, or keep {flag} terminate on spot"
        ))),
        None => Ok(()),
    }
}

/// What DescribeInstanceTypes says about a type, as far as a launch cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    pub architectures: Vec<String>,
    pub memory_mib: u64,
    /// NVIDIA GPUs: the ones the Deep Learning Base AMI has a driver for.
    pub nvidia_gpus: u32,
    pub hibernation_supported: bool,
}

/// What DescribeImages says about an AMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub name: String,
    pub architecture: Option<String>,
    pub root_device_name: String,
    /// The root snapshot's size (GiB); the root volume can be no smaller.
    pub root_size_gib: i32,
    /// Tags the image's owner can see (a shared image shows its owner none).
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The tag the AMI build (ami/leased.pkr.hcl) puts on an image with leased baked in.
pub const AGENT_VERSION_IMAGE_TAG: &str = "lease-agent-version";
/// The name prefix of those images (the default `ami_name_prefix`).
pub const AGENT_IMAGE_NAME_PREFIX: &str = "lease-leased-";

impl ImageInfo {
    /// An image lease knows to carry the agent: built by ami/ (its tag, or its name
    /// when the tags are not visible to this account).
    pub fn carries_agent(&self) -> bool {
        self.tags.contains_key(AGENT_VERSION_IMAGE_TAG)
            || self.name.starts_with(AGENT_IMAGE_NAME_PREFIX)
    }

    /// The login user of the image's distribution, for `lease attach --ssh`.
    pub fn login_user(&self) -> &'static str {
        login_user_for(&self.name)
    }
}

/// The login user cloud-init creates on an image, from its name: Ubuntu images (the
/// Deep Learning AMIs among them) use `ubuntu`, Debian's `admin`, Amazon Linux and
/// most others `ec2-user`.
pub fn login_user_for(image_name: &str) -> &'static str {
    let name = image_name.to_ascii_lowercase();
    if name.contains("ubuntu") {
        "ubuntu"
    } else if name.starts_with("debian") || name.starts_with(AGENT_IMAGE_NAME_PREFIX) {
        // ami/ bakes leased into Debian 12.
        "admin"
    } else {
        "ec2-user"
    }
}

/// The default image for a type, chosen from what DescribeInstanceTypes says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    pub arch: String,
    /// The public SSM parameter holding the latest AMI id.
    pub parameter: String,
    /// What the image is, for the line `lease launch` prints.
    pub description: &'static str,
    /// The default root volume (GiB) when the AMI's own is smaller.
    pub root_gib: i32,
}

/// The default root volume for a CPU type: room for Docker images and a build, where
/// the AMI's own 8 GiB fills with the first image pulled. gp3 costs about $0.08 per
/// GiB-month, so 30 GiB for a 4-hour lease is well under a cent.
pub const DEFAULT_ROOT_GIB: i32 = 30;
/// The default for a GPU type: CUDA images weigh 10–20 GiB each, and the Deep
/// Learning AMI itself takes about half of this.
pub const DEFAULT_GPU_ROOT_GIB: i32 = 100;

/// AWS's Deep Learning Base AMI (NVIDIA driver, Docker, NVIDIA Container Toolkit) on
/// Ubuntu 24.04, for `arch` (x86_64 or arm64).
pub fn dlami_parameter(arch: &str) -> String {
    format!(
        "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
    )
}

/// NVIDIA GPU types get the Deep Learning Base AMI, everything else Amazon Linux 2023,
/// each for the type's architecture (arm64 for Graviton).
pub fn default_image(t: &TypeInfo) -> ImageChoice {
    let arch = pick_arch(&t.architectures).to_string();
    if t.nvidia_gpus > 0 {
        ImageChoice {
            parameter: dlami_parameter(&arch),
            description: "AWS Deep Learning Base AMI (Ubuntu 24.04, NVIDIA driver, Docker)",
            root_gib: DEFAULT_GPU_ROOT_GIB,
            arch,
        }
    } else {
        ImageChoice {
            parameter: al2023_parameter(&arch),
            description: "Amazon Linux 2023",
            root_gib: DEFAULT_ROOT_GIB,
            arch,
        }
    }
}

/// The root volume the flags ask for, checked against the image and, with
/// hibernation, against what AWS requires: an encrypted root volume with room for the
/// image and all of RAM. Every refusal names the flag and the reason.
pub fn root_volume(
    args: &LaunchArgs,
    terms: &LeaseTerms,
    t: &TypeInfo,
    image: &ImageInfo,
    default_gib: i32,
) -> Result<BlockDeviceMapping> {
    let encrypted = !args.unencrypted;
    let mut minimum = image.root_size_gib;
    let mut default = default_gib.max(image.root_size_gib);
    if terms.wants_hibernation() {
        if !t.hibernation_supported {
            return Err(Error::Refused(format!(
                "instance type '{}' does not support hibernation; choose another type or \
                 another action than hibernate",
                t.name
            )));
        }
        if !encrypted {
            return Err(Error::usage(
                "hibernation needs an encrypted root volume (RAM is written to it); drop \
                 --unencrypted",
            ));
        }
        let ram_gib = i32::try_from(t.memory_mib.div_ceil(1024)).unwrap_or(i32::MAX);
        minimum = image.root_size_gib.saturating_add(ram_gib);
        default = default.max(minimum);
    }
    let size = match args.volume_size {
        Some(size) if size < minimum => {
            let why = if terms.wants_hibernation() {
                format!(
                    "hibernation needs room for the image ({} GiB) and all of RAM ({} MiB)",
                    image.root_size_gib, t.memory_mib
                )
            } else {
                format!(
                    "image {} has a {} GiB root snapshot",
                    image.id, image.root_size_gib
                )
            };
            return Err(Error::usage(format!(
                "--volume-size {size} is too small: {why}; give at least {minimum}"
            )));
        }
        Some(size) => size,
        None => default,
    };
    Ok(BlockDeviceMapping {
        device_name: image.root_device_name.clone(),
        ebs: EbsVolume {
            volume_size: size,
            volume_type: args.volume_type.clone(),
            encrypted,
            delete_on_termination: true,
        },
    })
}

/// The inputs resolved from AWS (or placeholders for a dry run).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub image_id: String,
    /// The root volume; `None` leaves the AMI's (a scheduled launch, whose AMI is
    /// resolved only when it runs).
    pub root_volume: Option<BlockDeviceMapping>,
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
        block_device_mappings: resolved.root_volume.into_iter().collect(),
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
            root_volume: None,
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
        let a = args(&["--on-demand", "--on-complete", "hibernate"]);
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

    #[test]
    fn stop_and_hibernate_on_spot_are_refused_naming_the_flag() {
        for flag in ["--on-idle", "--on-expiry", "--on-complete"] {
            for action in ["stop", "hibernate"] {
                let err = LeaseTerms::from_args(&args(&[flag, action]), false).unwrap_err();
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!("{flag} {action} needs --on-demand")),
                    "{text}"
                );
                assert_eq!(err.exit_code(), 2);
                assert!(
                    LeaseTerms::from_args(&args(&[flag, action, "--on-demand"]), false).is_ok()
                );
            }
        }
        // Spot with terminate everywhere (the default) stays a one-time request.
        assert!(LeaseTerms::from_args(&args(&[]), false).is_ok());
    }

    fn gpu_type(name: &str, archs: &[&str]) -> TypeInfo {
        TypeInfo {
            name: name.into(),
            architectures: archs.iter().map(|a| a.to_string()).collect(),
            memory_mib: 16384,
            nvidia_gpus: 1,
            hibernation_supported: false,
        }
    }

    fn cpu_type(archs: &[&str], memory_mib: u64) -> TypeInfo {
        TypeInfo {
            nvidia_gpus: 0,
            memory_mib,
            hibernation_supported: true,
            ..gpu_type("m7.large", archs)
        }
    }

    #[test]
    fn the_default_image_follows_architecture_and_gpus() {
        let c = default_image(&gpu_type("g5.xlarge", &["x86_64"]));
        assert_eq!(
            c.parameter,
            "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
        );
        assert_eq!(c.root_gib, DEFAULT_GPU_ROOT_GIB);
        let c = default_image(&gpu_type("g5g.xlarge", &["arm64"]));
        assert_eq!(
            c.parameter,
            "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
        );
        assert_eq!(c.arch, "arm64");
        let c = default_image(&cpu_type(&["arm64"], 8192));
        assert_eq!(
            c.parameter,
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
        );
        assert_eq!(c.root_gib, DEFAULT_ROOT_GIB);
        let c = default_image(&cpu_type(&["i386", "x86_64"], 1024));
        assert_eq!(
            c.parameter,
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
        );
    }

    fn image(root_gib: i32) -> ImageInfo {
        ImageInfo {
            id: "ami-1".into(),
            name: "al2023-ami-2023".into(),
            architecture: Some("x86_64".into()),
            root_device_name: "/dev/xvda".into(),
            root_size_gib: root_gib,
            tags: Default::default(),
        }
    }

    fn volume(
        flags: &[&str],
        t: &TypeInfo,
        img: &ImageInfo,
        default: i32,
    ) -> Result<BlockDeviceMapping> {
        let a = args(flags);
        let terms = LeaseTerms::from_args(&a, false)?;
        root_volume(&a, &terms, t, img, default)
    }

    #[test]
    fn the_root_volume_is_encrypted_and_sized_for_the_image_and_hibernation() {
        let t = cpu_type(&["x86_64"], 16384);
        let v = volume(&[], &t, &image(8), 30).unwrap();
        assert_eq!(v.device_name, "/dev/xvda");
        assert_eq!(
            v.ebs,
            EbsVolume {
                volume_size: 30,
                volume_type: "gp3".into(),
                encrypted: true,
                delete_on_termination: true
            }
        );
        // An image larger than the default keeps its size.
        assert_eq!(volume(&[], &t, &image(75), 30).unwrap().ebs.volume_size, 75);
        let v = volume(
            &[
                "--volume-size",
                "50",
                "--volume-type",
                "io2",
                "--unencrypted",
            ],
            &t,
            &image(8),
            30,
        )
        .unwrap();
        assert_eq!(
            (
                v.ebs.volume_size,
                v.ebs.volume_type.as_str(),
                v.ebs.encrypted
            ),
            (50, "io2", false)
        );
        let err = volume(&["--volume-size", "4"], &t, &image(8), 30).unwrap_err();
        assert!(
            err.to_string().contains("--volume-size 4") && err.to_string().contains("8 GiB"),
            "{err}"
        );

        // Hibernation: the image plus all of RAM (16 GiB), encrypted.
        let hib = ["--on-demand", "--on-idle", "hibernate"];
        let big = cpu_type(&["x86_64"], 65536);
        assert_eq!(
            volume(&hib, &big, &image(8), 30).unwrap().ebs.volume_size,
            72
        );
        assert_eq!(volume(&hib, &t, &image(8), 30).unwrap().ebs.volume_size, 30);
        let err = volume(
            &[&hib[..], &["--volume-size", "20"]].concat(),
            &t,
            &image(8),
            30,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("all of RAM") && err.to_string().contains("at least 24"),
            "{err}"
        );
        let err = volume(&[&hib[..], &["--unencrypted"]].concat(), &t, &image(8), 30).unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        let err = volume(&hib, &gpu_type("g5.xlarge", &["x86_64"]), &image(8), 30).unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(
            err.to_string()
                .contains("'g5.xlarge' does not support hibernation"),
            "{err}"
        );
    }

    #[test]
    fn the_login_user_follows_the_image() {
        assert_eq!(
            login_user_for("al2023-ami-2023.9.20261101.0-kernel-6.1-x86_64"),
            "ec2-user"
        );
        assert_eq!(
            login_user_for("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20261006"),
            "ubuntu"
        );
        assert_eq!(
            login_user_for("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-2026"),
            "ubuntu"
        );
        assert_eq!(login_user_for("debian-12-amd64-20261101-1"), "admin");
        assert_eq!(
            login_user_for("lease-leased-0.1.0-arm64-20261101-120000"),
            "admin"
        );
        let mut img = image(8);
        assert!(!img.carries_agent());
        img.tags
            .insert(AGENT_VERSION_IMAGE_TAG.into(), "0.1.0".into());
        assert!(img.carries_agent());
    }
}
