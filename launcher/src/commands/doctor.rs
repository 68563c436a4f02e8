//! `lease doctor`: is this account and region ready for `lease`? Gathers the checks of
//! [`crate::doctor`] and prints one line each (ok, warn, fail, skipped) with its fix;
//! fails (exit 1) only when a check failed.

use std::path::Path;

use crate::aws::Cloud;
use crate::cli::{DoctorArgs, OutputFormat};
use crate::commands::Ctx;
use crate::doctor::{self, Check, Clients, Inputs, Status};
use crate::error::{Error, Result};
use crate::output;
use crate::settings::Settings;
use crate::targets::{location, stack_name};

/// Every check, in the order a first-run user fixes them: who and where, then the
/// network, the stack, what it runs, and permissions.
pub async fn checks<C: Cloud>(
    cloud: &C,
    clients: &Clients,
    args: &DoctorArgs,
    settings_path: &Path,
    emulator: bool,
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let caller = match cloud.caller_arn().await {
        Ok(arn) => {
            out.push(Check::ok("credentials", &arn));
            Some(arn)
        }
        Err(e) => {
            out.push(Check::new(
                "credentials",
                Status::Fail,
                e.to_string(),
                Some("configure credentials: `aws configure`, AWS_PROFILE or --profile"),
            ));
            None
        }
    };
    if cloud.region().is_empty() {
        out.push(Check::new(
            "region",
            Status::Fail,
            "no region configured",
            Some("pass --region or set AWS_REGION"),
        ));
        return Ok(out);
    }
    let regions = clients
        .ec2
        .describe_regions()
        .send()
        .await
        .map(|o| {
            o.regions()
                .iter()
                .filter_map(|r| r.region_name().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .map_err(|e| lease_common::sdk_error::render(&e));
    match regions {
        Ok(regions) if regions.iter().any(|r| r == cloud.region()) => {
            out.push(Check::ok("region", cloud.region()));
        }
        Ok(_) => out.push(Check::new(
            "region",
            Status::Fail,
            format!(
                "'{}' is not a region enabled for this account",
                cloud.region()
            ),
            Some("pick an enabled region (`aws ec2 describe-regions`) or enable it"),
        )),
        Err(e) => out.push(Check::new(
            "region",
            Status::Warn,
            format!("{}: cannot list the account's regions: {e}", cloud.region()),
            Some("allow ec2:DescribeRegions"),
        )),
    }
    if caller.is_none() {
        // Every other check would fail for the same reason.
        return Ok(out);
    }
    let at = location(cloud).await?;
    out.push(doctor::default_vpc(&clients.ec2).await);

    let settings = Settings::load(settings_path)?;
    let stack = stack_name(args.stack.as_deref(), &settings)?;
    let section = settings.section(stack.name(), at.region.as_str()).cloned();
    let inputs = Inputs {
        pools: section.as_ref().map_or_else(
            || vec![lease_common::stack::DEFAULT_POOL.to_string()],
            |s| s.pools.keys().cloned().collect(),
        ),
        claude_auth: section.as_ref().map(|s| s.claude_auth).unwrap_or_default(),
        stack,
        emulator,
        instance_types: args.instance_types.clone(),
    };
    let bus = at.arn("sns", &inputs.stack.bus_topic());
    let exists = clients
        .setup
        .sns
        .get_topic_attributes()
        .topic_arn(&bus)
        .send()
        .await
        .is_ok();
    if !exists && section.is_none() {
        out.push(Check::new(
            format!("stack {}", inputs.stack),
            Status::Fail,
            format!("not set up in {}", at.region.as_str()),
            Some(format!("run `lease setup --stack {}`", inputs.stack)),
        ));
    } else {
        out.push(Check::ok(
            format!("stack {}", inputs.stack),
            match &section {
                Some(_) => "recorded in your settings".to_string(),
                None => "found in AWS (not in your settings: `lease setup` records it)".to_string(),
            },
        ));
        out.extend(doctor::stack_resources(clients, &at, &inputs).await);
        out.extend(doctor::agent_packages(clients, &at, &inputs.stack).await);
        out.extend(doctor::reaper(clients, &inputs).await);
    }
    out.extend(doctor::quotas(clients, &inputs, at.region.as_str()).await);
    out.extend(doctor::permissions(clients, &at, &inputs, caller.as_deref()).await);
    Ok(out)
}

fn render(checks: &[Check]) -> String {
    let mut text = String::new();
    for c in checks {
        text.push_str(&format!(
            "{:<8} {}: {}\n",
            c.status.as_str(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("{:<8} fix: {fix}\n", ""));
        }
    }
    let [ok, warn, fail, skipped] = doctor::tally(checks);
    text.push_str(&format!(
        "\n{ok} ok, {warn} warn, {fail} fail, {skipped} skipped\n"
    ));
    text
}

pub async fn run<C: Cloud>(
    cloud: &C,
    clients: &Clients,
    ctx: &Ctx,
    args: &DoctorArgs,
    settings_path: &Path,
    emulator: bool,
) -> Result<()> {
    let checks = checks(cloud, clients, args, settings_path, emulator).await?;
    match ctx.output {
        OutputFormat::Json => output::print_json(&serde_json::json!({ "checks": checks }))?,
        OutputFormat::Table => output::print(&render(&checks))?,
    }
    if doctor::passed(&checks) {
        Ok(())
    } else {
        let [_, _, fail, _] = doctor::tally(&checks);
        Err(Error::Aws {
            what: "lease doctor".into(),
            message: format!("{fail} check(s) failed; each says how to fix it"),
        })
    }
}
