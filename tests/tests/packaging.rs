//! The packaged default config, `packaging/config.yaml` (installed as
//! `/etc/leased/config.yaml`), must stay in step with the agent's config schema: as
//! shipped (everything commented out) it is the default config, and with every setting
//! uncommented it still parses, to the same defaults wherever it shows a default.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lease_common::config::AgentConfig;

fn shipped() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Setting lines are written `#key: value` (indented under their section); prose
/// comments are `# text`. Uncommenting removes the `#` of the former only.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            match body.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => {
                    format!("{indent}{rest}")
                }
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_shipped_config_is_the_default() {
    let parsed = AgentConfig::from_yaml(Path::new("packaging/config.yaml"), &shipped())
        .expect("the shipped config parses");
    assert_eq!(parsed, AgentConfig::default());
}

#[test]
fn every_setting_shown_is_a_real_key_with_its_default() {
    let text = uncommented(&shipped());
    let parsed = AgentConfig::from_yaml(Path::new("packaging/config.yaml (uncommented)"), &text)
        .unwrap_or_else(|e| panic!("{e}\n--- uncommented ---\n{text}"));
    // The identity and control-plane settings show examples, not defaults.
    assert!(parsed.queue_url.is_some() && parsed.topic_arn.is_some());
    assert!(parsed.node_id.is_some() && parsed.claude.model.is_some());
    assert_eq!(parsed.claude.cli_version.as_deref(), Some("stable"));
    let defaults_only = AgentConfig {
        node_id: None,
        node_name: None,
        queue_url: None,
        topic_arn: None,
        log_bucket: None,
        tasks_table: None,
        nodes_table: None,
        region: None,
        profile: None,
        claude: lease_common::config::ClaudeConfig {
            model: None,
            cli_version: None,
            ..parsed.claude.clone()
        },
        ..parsed
    };
    assert_eq!(defaults_only, AgentConfig::default());
}

#[test]
fn the_config_documents_every_key() {
    // Rendering the default config lists every key that is always serialised; each must
    // appear in the shipped file, so a new setting is not forgotten there.
    let rendered = AgentConfig::default().to_yaml().unwrap();
    let text = shipped();
    for line in rendered.lines() {
        let key = line.trim_start().split(':').next().unwrap_or_default();
        if key.is_empty() || key.starts_with('-') {
            continue;
        }
        assert!(
            text.contains(&format!("#{key}:")),
            "packaging/config.yaml does not show '{key}'"
        );
    }
}
