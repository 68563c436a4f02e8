//! Turning what a person typed (`i-0abc…` or a Name) into managed instances.

use crate::aws::Cloud;
use crate::aws::ec2::{Instance, Query};
use crate::error::{Error, Result};
use lease_common::tags::{MANAGED, NAME};

/// True for an EC2 instance id (`i-` and 8 or 17 hex digits).
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// Resolves each target to exactly one managed instance. Ids must exist and carry
/// `lease:managed=true` (lease never touches what it did not launch); a name must match
/// exactly one live managed instance. Every target is checked before anything is done.
pub async fn resolve<C: Cloud>(cloud: &C, targets: &[String]) -> Result<Vec<Instance>> {
    let (ids, names): (Vec<String>, Vec<String>) =
        targets.iter().cloned().partition(|t| is_instance_id(t));
    let mut found = Vec::new();
    if !ids.is_empty() {
        let described = cloud
            .describe(&Query {
                ids: ids.clone(),
                filters: Vec::new(),
            })
            .await
            .map_err(|e| match &e {
                Error::Aws { message, .. } if message.contains("InvalidInstanceID") => {
                    Error::NotFound(format!("No such instance: {message}"))
                }
                _ => e,
            })?;
        for id in &ids {
            let inst = described.iter().find(|i| &i.id == id).ok_or_else(|| {
                Error::NotFound(format!("No instance '{id}' in {}", cloud.region()))
            })?;
            if inst.tags.get(MANAGED).map(String::as_str) != Some("true") {
                return Err(Error::Refused(format!(
                    "Instance '{id}' is not managed by lease (no {MANAGED}=true tag); lease acts only on instances it launched"
                )));
            }
            found.push(inst.clone());
        }
    }
    if !names.is_empty() {
        let described = cloud
            .describe(&Query::managed().filter(format!("tag:{NAME}"), names.clone()))
            .await?;
        for name in &names {
            let matches: Vec<&Instance> = described
                .iter()
                .filter(|i| i.name() == Some(name.as_str()) && i.state != "terminated")
                .collect();
            match matches.as_slice() {
                [] => {
                    return Err(Error::NotFound(format!(
                        "No managed instance named '{name}' in {}",
                        cloud.region()
                    )));
                }
                [one] => found.push((*one).clone()),
                many => {
                    let ids: Vec<&str> = many.iter().map(|i| i.id.as_str()).collect();
                    return Err(Error::usage(format!(
                        "Name '{name}' matches {} instances ({}); use an instance id",
                        many.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    }
    found.dedup_by(|a, b| a.id == b.id);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_instance_ids() {
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(is_instance_id("i-1234abcd"));
        assert!(!is_instance_id("i-xyz"));
        assert!(!is_instance_id("web-1"));
        assert!(!is_instance_id("i-0123456789abcdef"));
    }
}
