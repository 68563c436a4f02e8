//! Turning a task's raw output lines into readable ones, and a Claude Code session's
//! final `result` message into a [`Summary`].
//!
//! `claude -p --output-format stream-json --verbose` writes one JSON object per line:
//! `system` (subtype `init`: session id, model, cwd, tools), `assistant` (with
//! `message.content[]` of `text`, `tool_use` and `thinking` blocks), `user` (with
//! `tool_result` blocks), and one final `result` (`subtype`, `result`, `is_error`,
//! `num_turns`, `total_cost_usd`). Anything that is not JSON passes through as text,
//! so an error printed before the stream starts is still seen.

use lease_common::messages::TaskSpec;
use serde_json::Value;

/// A tool call's input is shown on one line, cut to this many characters, so one big
/// `Write` does not fill an output event.
const TOOL_INPUT_CHARS: usize = 200;

/// What a Claude Code session's final `result` message says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub result: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u32>,
    pub is_error: bool,
}

/// One per task: `claude` lines are stream-json; every other kind's lines pass
/// through, stripped of terminal escape sequences.
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

    /// The readable lines one raw log line becomes (none for stream-json messages that
    /// carry nothing to read, such as a tool's result).
    pub fn push(&mut self, raw_line: &str) -> Vec<String> {
        let line = strip_terminal_escapes(raw_line);
        if !self.stream_json {
            return vec![line];
        }
        let trimmed = line.trim();
        if !trimmed.starts_with('{') {
            return vec![line];
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(message) => self.message(&message),
            Err(_) => vec![line],
        }
    }

    /// What the session's `result` message said (all empty until it arrived).
    pub fn summary(&self) -> Summary {
        self.summary.clone()
    }

    fn message(&mut self, m: &Value) -> Vec<String> {
        match str_at(m, "type") {
            Some("system") if str_at(m, "subtype") == Some("init") => {
                vec![format!(
                    "[claude] session {} started: model {}, in {}",
                    str_at(m, "session_id").unwrap_or("?"),
                    str_at(m, "model").unwrap_or("?"),
                    str_at(m, "cwd").unwrap_or("?"),
                )]
            }
            Some("assistant") => content(m)
                .iter()
                .flat_map(|block| match str_at(block, "type") {
                    Some("text") => str_at(block, "text")
                        .map(|t| t.lines().map(str::to_string).collect())
                        .unwrap_or_default(),
                    Some("tool_use") => vec![format!(
                        "[tool] {}: {}",
                        str_at(block, "name").unwrap_or("?"),
                        tool_input(block.get("input"))
                    )],
                    _ => Vec::new(),
                })
                .collect(),
            Some("user") => content(m)
                .iter()
                .filter(|b| {
                    str_at(b, "type") == Some("tool_result")
                        && b.get("is_error").and_then(Value::as_bool) == Some(true)
                })
                .map(|b| format!("[tool error] {}", first_line(&tool_result_text(b))))
                .collect(),
            Some("result") => {
                self.summary = Summary {
                    result: str_at(m, "result").map(str::to_string),
                    cost_usd: m.get("total_cost_usd").and_then(Value::as_f64),
                    turns: m
                        .get("num_turns")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    is_error: m.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                };
                let mut line = format!("[result] {}", str_at(m, "subtype").unwrap_or("done"));
                if let Some(turns) = self.summary.turns {
                    line.push_str(&format!(", {turns} turns"));
                }
                if let Some(cost) = self.summary.cost_usd {
                    line.push_str(&format!(", ${cost:.4}"));
                }
                vec![line]
            }
            _ => Vec::new(),
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn content(m: &Value) -> &[Value] {
    m.get("message")
        .and_then(|msg| msg.get("content"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The field that says what a call does (`command` for Bash, `file_path` for the file
/// tools, …), or the whole input as compact JSON; cut to [`TOOL_INPUT_CHARS`].
fn tool_input(input: Option<&Value>) -> String {
    const TELLING: [&str; 6] = ["command", "file_path", "pattern", "url", "query", "path"];
    let Some(input) = input else {
        return String::new();
    };
    let text = TELLING
        .iter()
        .find_map(|k| str_at(input, k))
        .map(str::to_string)
        .unwrap_or_else(|| input.to_string());
    cut(&first_line(&text), TOOL_INPUT_CHARS)
}

/// A `tool_result`'s content is a string or a list of `{type: text, text}` blocks.
fn tool_result_text(block: &Value) -> String {
    match block.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| str_at(p, "text"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn cut(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Removes what a terminal would interpret rather than show: CSI sequences (colours,
/// cursor moves), OSC sequences (window titles) and stray carriage returns, so an
/// event shows the text a person saw.
pub(crate) fn strip_terminal_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ends with BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Two-character escapes (charset selection and the like).
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_common::messages::{ClaudeSpec, ShellSpec};

    /// A Claude Code session in `stream-json --verbose` form: init, text, two tool
    /// calls with their results (one an error), thinking, and the final result.
    const SESSION: &str = include_str!("testdata/claude-stream.jsonl");

    fn claude() -> OutputParser {
        OutputParser::for_spec(&TaskSpec::Claude(ClaudeSpec {
            prompt: "p".into(),
            model: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            max_turns: None,
        }))
    }

    #[test]
    fn a_recorded_session_becomes_text_tool_lines_and_a_summary() {
        let mut p = claude();
        let lines: Vec<String> = SESSION.lines().flat_map(|l| p.push(l)).collect();
        assert_eq!(
            lines,
            vec![
                "[claude] session 7f9c1e52-3b1a-4c8e-9d2f-5a6b7c8d9e0f started: model claude-sonnet-4-5-20250929, in /var/lib/leased/tasks/fix-readme/work",
                "I'll look at the README first.",
                "[tool] Bash: ls -la",
                "[tool] Read: /var/lib/leased/tasks/fix-readme/work/README.md",
                "[tool error] File does not exist.",
                "There is no README yet; I'll write one.",
                "",
                "It will describe the project in two lines.",
                "[tool] Write: /var/lib/leased/tasks/fix-readme/work/README.md",
                "Done: README.md now describes the project.",
                "[result] success, 4 turns, $0.0421",
            ]
        );
        assert_eq!(
            p.summary(),
            Summary {
                result: Some("Done: README.md now describes the project.".into()),
                cost_usd: Some(0.042_135_5),
                turns: Some(4),
                is_error: false,
            }
        );
    }

    #[test]
    fn a_failed_session_reports_its_error() {
        let mut p = claude();
        p.push(r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2,"total_cost_usd":0.01,"session_id":"s"}"#);
        let s = p.summary();
        assert!(s.is_error);
        assert_eq!(s.turns, Some(2));
        assert_eq!(s.result, None);
    }

    #[test]
    fn lines_that_are_not_json_pass_through() {
        let mut p = claude();
        assert_eq!(
            p.push("Error: Invalid API key\r"),
            vec!["Error: Invalid API key"]
        );
        assert_eq!(p.push("{not json"), vec!["{not json"]);
        assert_eq!(p.summary(), Summary::default());
    }

    #[test]
    fn shell_lines_lose_terminal_escapes_only() {
        let mut p = OutputParser::for_spec(&TaskSpec::Shell(ShellSpec {
            command: "ls".into(),
        }));
        assert_eq!(
            p.push("\u{1b}[01;34mdir\u{1b}[0m  file\r"),
            vec!["dir  file"]
        );
        assert_eq!(
            p.push("\u{1b}]0;title\u{7}{\"type\":\"result\"}"),
            vec!["{\"type\":\"result\"}"]
        );
    }

    #[test]
    fn long_tool_input_is_cut() {
        let input = serde_json::json!({ "command": "x".repeat(500) });
        let shown = tool_input(Some(&input));
        assert_eq!(shown.chars().count(), TOOL_INPUT_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
