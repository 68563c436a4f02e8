//! The deployment's IAM roles: each with a trust policy and one inline policy a region
//! ([`policy::inline_policy`]), brought to what is wanted, or removed region by region.

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use lease_common::stack::Stack;
use serde_json::Value;

use super::{Change, DeployClients, DeployError, ROLE, STACK_TAG, aws_error, build_error, policy};

/// An IAM policy document as IAM returns it (URL-encoded JSON) or as sent, parsed.
fn parse_document(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(text)?).ok())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A role with this trust policy and `inline` as its policy `policy_name`.
pub(super) async fn ensure_role(
    c: &DeployClients,
    stack: &Stack,
    name: &str,
    description: &str,
    trust: &Value,
    (policy_name, inline): (&str, &Value),
) -> Result<Change, DeployError> {
    let mut change = Change::Exists;
    match c.iam.get_role().role_name(name).send().await {
        Ok(out) => {
            let current = out
                .role()
                .and_then(|r| r.assume_role_policy_document())
                .and_then(parse_document);
            if current.as_ref() != Some(trust) {
                c.iam
                    .update_assume_role_policy()
                    .role_name(name)
                    .policy_document(trust.to_string())
                    .send()
                    .await
                    .map_err(|e| aws_error("update the trust policy of", ROLE, name, &e))?;
                change = Change::Updated;
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            c.iam
                .create_role()
                .role_name(name)
                .description(description)
                .assume_role_policy_document(trust.to_string())
                .tags(
                    aws_sdk_iam::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(stack.name())
                        .build()
                        .map_err(|e| build_error("tag", ROLE, name, &e))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("create", ROLE, name, &e))?;
            change = Change::Created;
        }
        Err(e) => return Err(aws_error("read", ROLE, name, &e)),
    }
    let current = match c
        .iam
        .get_role_policy()
        .role_name(name)
        .policy_name(policy_name)
        .send()
        .await
    {
        Ok(out) => parse_document(out.policy_document()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(e) => return Err(aws_error("read the policy of", ROLE, name, &e)),
    };
    if current.as_ref() != Some(inline) {
        c.iam
            .put_role_policy()
            .role_name(name)
            .policy_name(policy_name)
            .policy_document(inline.to_string())
            .send()
            .await
            .map_err(|e| aws_error("write the policy of", ROLE, name, &e))?;
        if change == Change::Exists {
            change = Change::Updated;
        }
    }
    Ok(change)
}

/// IAM's "no such role or policy".
fn missing<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchEntity")
}

/// Deletes the role's policy `policy_name`, then the role unless a policy of ours for
/// another region is left on it (the stack still runs there): then it is `Kept`.
pub(super) async fn remove_role(
    c: &DeployClients,
    name: &str,
    policy_name: &str,
) -> Result<Change, DeployError> {
    match c
        .iam
        .delete_role_policy()
        .role_name(name)
        .policy_name(policy_name)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if missing(&e) => {}
        Err(e) => return Err(aws_error("delete the policy of", ROLE, name, &e)),
    }
    match c.iam.list_role_policies().role_name(name).send().await {
        Ok(out)
            if out
                .policy_names()
                .iter()
                .any(|p| p.starts_with(policy::INLINE_POLICY_PREFIX)) =>
        {
            return Ok(Change::Kept);
        }
        Ok(_) => {}
        Err(e) if missing(&e) => return Ok(Change::Absent),
        Err(e) => return Err(aws_error("list the policies of", ROLE, name, &e)),
    }
    match c.iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(Change::Deleted),
        Err(e) if missing(&e) => Ok(Change::Absent),
        Err(e) => Err(aws_error("delete", ROLE, name, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_back_url_encoded_or_not() {
        let doc = serde_json::json!({"Version": "2012-10-17", "Statement": []});
        assert_eq!(parse_document(&doc.to_string()), Some(doc.clone()));
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(parse_document(encoded), Some(doc));
        assert_eq!(parse_document("%ZZ"), None);
    }
}
