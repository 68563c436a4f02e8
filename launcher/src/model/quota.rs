//! What a failed RunInstances means for a first-time user: an instance profile IAM has
//! not finished propagating (wait and retry), a vCPU quota too low for the type (name
//! the quota and where to raise it), or no capacity right now. Pure functions of the
//! service's error code and message, so every case is a unit test.

/// Why RunInstances failed, as far as lease can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchFailure {
    /// A new instance profile is not visible to EC2 yet: IAM is eventually consistent,
    /// and a launch right after `lease setup` can see "Invalid IAM Instance Profile".
    ProfilePropagating,
    /// The account's vCPU quota for the type's family is too low (0 on many new
    /// accounts for GPU types).
    Quota,
    /// EC2 has no capacity for the type in the zone right now.
    Capacity,
    Other,
}

/// Classifies the `"Code: message"` text of an EC2 error.
pub fn classify(message: &str) -> LaunchFailure {
    let code = message.split(':').next().unwrap_or_default().trim();
    match code {
        "InvalidParameterValue" | "InvalidParameterCombination"
            if message.contains("Invalid IAM Instance Profile") =>
        {
            LaunchFailure::ProfilePropagating
        }
        "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded" | "InstanceLimitExceeded" => {
            LaunchFailure::Quota
        }
        "InsufficientInstanceCapacity" | "InsufficientCapacity" | "UnfulfillableCapacity" => {
            LaunchFailure::Capacity
        }
        _ => LaunchFailure::Other,
    }
}

/// One Service Quotas quota: its code and its name as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub code: &'static str,
    pub name: &'static str,
}

/// The vCPU quota an instance type counts against, by market. `None` for families
/// with a quota of their own that lease does not list (HPC, Trainium, Mac, high
/// memory); the message then points at the console's EC2 quota list.
pub fn quota_for(instance_type: &str, spot: bool) -> Option<Quota> {
    let family: String = instance_type
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    let q = |code, name| Some(Quota { code, name });
    let group = match family.as_str() {
        f if f.starts_with("hpc") || f.starts_with("trn") || f.starts_with("mac") => None,
        "g" | "gr" | "vt" => Some('g'),
        "p" => Some('p'),
        "inf" => Some('i'),
        "f" => Some('f'),
        "x" => Some('x'),
        "dl" => Some('d'),
        f if f.starts_with(['a', 'c', 'd', 'h', 'i', 'm', 'r', 't', 'z']) => Some('s'),
        _ => None,
    }?;
    match (group, spot) {
        ('s', true) => q(
            "L-34B43A08",
            "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
        ),
        ('s', false) => q(
            "L-1216C47A",
            "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        ),
        ('g', true) => q("L-3819A6DF", "All G and VT Spot Instance Requests"),
        ('g', false) => q("L-DB2E81BA", "Running On-Demand G and VT instances"),
        ('p', true) => q("L-7212CCBC", "All P Spot Instance Requests"),
        ('p', false) => q("L-417A185B", "Running On-Demand P instances"),
        ('i', true) => q("L-B5D1601B", "All Inf Spot Instance Requests"),
        ('i', false) => q("L-1945791B", "Running On-Demand Inf instances"),
        ('f', true) => q("L-88CF9481", "All F Spot Instance Requests"),
        ('f', false) => q("L-74FC7D96", "Running On-Demand F instances"),
        ('x', true) => q("L-E3A00192", "All X Spot Instance Requests"),
        ('x', false) => q("L-7295265B", "Running On-Demand X instances"),
        ('d', true) => q("L-85EED4F7", "All DL Spot Instance Requests"),
        _ => None,
    }
}

/// The Service Quotas console page of `code` in `region`.
pub fn console_url(region: &str, code: &str) -> String {
    format!("https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}")
}

/// What to tell the user after a quota or capacity failure; `None` for anything else.
pub fn advice(
    failure: &LaunchFailure,
    instance_type: &str,
    spot: bool,
    region: &str,
) -> Option<String> {
    let market = if spot { "spot" } else { "on-demand" };
    match failure {
        LaunchFailure::Quota => {
            let other = quota_for(instance_type, !spot);
            let switch = match (spot, other) {
                (true, Some(o)) => format!(
                    " On-demand counts against another quota, '{}' ({}): --on-demand may work today.",
                    o.name, o.code
                ),
                _ => String::new(),
            };
            Some(match quota_for(instance_type, spot) {
                Some(q) => format!(
                    "your account's {market} vCPU quota '{}' ({}) in {region} is too small for \
                     {instance_type} (new accounts often start at 0 for GPU types). Request an \
                     increase at {} — approval takes from minutes to days.{switch}",
                    q.name,
                    q.code,
                    console_url(region, q.code)
                ),
                None => format!(
                    "your account's {market} vCPU quota for {instance_type}'s family in {region} \
                     is too small. Find it at \
                     https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas \
                     and request an increase.{switch}"
                ),
            })
        }
        LaunchFailure::Capacity => Some(format!(
            "EC2 has no {market} capacity for {instance_type} in this zone of {region} right \
             now. Try again in a few minutes, another zone (--subnet-id), another type{}",
            if spot { ", or --on-demand" } else { "" }
        )),
        LaunchFailure::ProfilePropagating | LaunchFailure::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code() {
        assert_eq!(
            classify(
                "InvalidParameterValue: Value (lease-main-agent) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            ),
            LaunchFailure::ProfilePropagating
        );
        assert_eq!(
            classify("MaxSpotInstanceCountExceeded: Max spot instance count exceeded"),
            LaunchFailure::Quota
        );
        assert_eq!(
            classify(
                "VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 0 allows"
            ),
            LaunchFailure::Quota
        );
        assert_eq!(
            classify("InsufficientInstanceCapacity: There is no Spot capacity available"),
            LaunchFailure::Capacity
        );
        assert_eq!(
            classify("InvalidParameterValue: Invalid value 'x' for instanceType"),
            LaunchFailure::Other
        );
    }

    #[test]
    fn each_family_has_its_quota_per_market() {
        let code = |t, spot| quota_for(t, spot).map(|q| q.code);
        assert_eq!(code("g5.xlarge", true), Some("L-3819A6DF"));
        assert_eq!(code("g4dn.xlarge", false), Some("L-DB2E81BA"));
        assert_eq!(code("vt1.3xlarge", true), Some("L-3819A6DF"));
        assert_eq!(code("p4d.24xlarge", true), Some("L-7212CCBC"));
        assert_eq!(code("p5.48xlarge", false), Some("L-417A185B"));
        assert_eq!(code("t3.micro", true), Some("L-34B43A08"));
        assert_eq!(code("m7g.large", false), Some("L-1216C47A"));
        assert_eq!(code("inf2.xlarge", true), Some("L-B5D1601B"));
        assert_eq!(code("trn1.2xlarge", true), None);
        assert_eq!(code("hpc7g.4xlarge", false), None);
        assert_eq!(code("mac2.metal", false), None);
    }

    #[test]
    fn quota_advice_names_the_quota_the_page_and_the_other_market() {
        let text = advice(&LaunchFailure::Quota, "g5.xlarge", true, "eu-west-1").unwrap();
        assert!(
            text.contains("'All G and VT Spot Instance Requests' (L-3819A6DF)"),
            "{text}"
        );
        assert!(
            text.contains("https://eu-west-1.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-3819A6DF"),
            "{text}"
        );
        assert!(
            text.contains("(L-DB2E81BA)") && text.contains("--on-demand"),
            "{text}"
        );
        let text = advice(&LaunchFailure::Quota, "g5.xlarge", false, "eu-west-1").unwrap();
        assert!(
            text.contains("L-DB2E81BA") && !text.contains("--on-demand"),
            "{text}"
        );
        let text = advice(&LaunchFailure::Capacity, "p5.48xlarge", true, "us-east-1").unwrap();
        assert!(
            text.contains("no spot capacity") && text.contains("--on-demand"),
            "{text}"
        );
        assert_eq!(
            advice(&LaunchFailure::Other, "t3.micro", true, "us-east-1"),
            None
        );
    }
}
