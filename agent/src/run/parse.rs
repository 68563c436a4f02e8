//! Turning a task's raw output lines into readable ones, and a Claude Code session's
//! final `result` message into a [`Summary`].
//!
//! `claude -p --output-format stream-json --verbose` writes one JSON object per line:
//! `system` (subtype `init`: session id, model, cwd, tools; `api_retry` while the API
//! fails; `thinking_tokens`), `assistant` (one content block per line: `text`,
//! `tool_use` or `thinking`; the CLI's own error text comes as an assistant message
//! whose model is `<synthetic>`), `user` (`tool_result` blocks, content a string or
//! text blocks), and one final `result`. Its `subtype` is `success` even for an API
//! failure (then `is_error` is true, with `terminal_reason` and `api_error_status`);
//! `error_max_turns`, `error_max_budget_usd` and `error_during_execution` carry no
//! `result` but the reason in `errors[]`. Anything that is not JSON passes through as
//! text, so an error printed before the stream starts is still seen.

use lease_common::messages::TaskSpec;
use serde_json::Value;

/// A tool call's input is shown on one line, cut to this many characters, so one big
/// `Write` does not fill an output event.
const TOOL_INPUT_CHARS: usize = 200;

/// The model name Claude Code gives the messages it writes itself (API errors).
const SYNTHETIC_MODEL: &str = "<synthetic>";

/// What a Claude Code session's final `result` message says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub result: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u32>,
    pub is_error: bool,
    /// `success`, `error_max_turns`, `error_max_budget_usd`, `error_during_execution`.
    pub subtype: Option<String>,
    /// Why the session ended: `completed`, `api_error`, `max_turns`, …
    pub terminal_reason: Option<String>,
    /// The HTTP status of the API failure that ended the session.
    pub api_error_status: Option<u16>,
    /// The reasons a session that ended in an `error_*` subtype gives.
    pub errors: Vec<String>,
    /// The tools the session was refused, by name, in order.
    pub permission_denials: Vec<String>,
    /// The last error text Claude Code wrote itself (a `<synthetic>` message).
    pub synthetic_error: Option<String>,
    /// Whether a `result` line arrived at all.
    pub ended: bool,
}

impl Summary {
    /// Whether the session reported a failure.
    pub fn failed(&self) -> bool {
        self.is_error
            || self
                .subtype
                .as_deref()
                .is_some_and(|s| s.starts_with("error"))
    }

    /// What went wrong, in the CLI's words: the `errors[]` of an `error_*` ending,
    /// else its error text (the result of an API failure, or a synthetic message),
    /// with the API status and the ending's name; `None` for a session that did not
    /// fail.
    pub fn failure(&self) -> Option<String> {
        if !self.failed() {
            return None;
        }
        let what = if !self.errors.is_empty() {
            self.errors.join("; ")
        } else if let Some(text) = self.result.as_ref().filter(|t| !t.trim().is_empty()) {
            text.clone()
        } else if let Some(text) = &self.synthetic_error {
            text.clone()
        } else {
            "no reason given".to_string()
        };
        let mut tags: Vec<String> = Vec::new();
        if let Some(status) = self.api_error_status {
            tags.push(format!("API status {status}"));
        }
        for part in [&self.subtype, &self.terminal_reason].into_iter().flatten() {
            if !part.is_empty() && !tags.contains(part) {
                tags.push(part.clone());
            }
        }
        Some(if tags.is_empty() {
            what
        } else {
            format!("{what} ({})", tags.join(", "))
        })
    }
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
            Some("system") if str_at(m, "subtype") == Some("api_retry") => {
                // The CLI retries a failing API for minutes by default: each try is
                // shown as it happens, so the log is never silent meanwhile.
                let status = m
                    .get("error_status")
                    .and_then(Value::as_u64)
                    .map_or_else(|| "no status".to_string(), |s| format!("status {s}"));
                let delay = m
                    .get("retry_delay_ms")
                    .and_then(Value::as_u64)
                    .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_default();
                vec![format!(
                    "[claude] API error ({status}, {}): retry {} of {}{delay}",
                    str_at(m, "error").unwrap_or("unknown"),
                    m.get("attempt").and_then(Value::as_u64).unwrap_or(0),
                    m.get("max_retries").and_then(Value::as_u64).unwrap_or(0),
                )]
            }
            Some("assistant")
                if m.get("message").and_then(|msg| str_at(msg, "model"))
                    == Some(SYNTHETIC_MODEL) =>
            {
                // Claude Code's own words (an API error), not the model's.
                let text: Vec<&str> = content(m)
                    .iter()
                    .filter_map(|b| str_at(b, "text"))
                    .collect();
                let text = text.join("\n");
                self.summary.synthetic_error = Some(text.clone());
                text.lines()
                    .map(|l| format!("[claude error] {l}"))
                    .collect()
            }
            Some("system") if str_at(m, "subtype") == Some("permission_denied") => {
                vec![format!(
                    "[permission denied] {}: {}",
                    str_at(m, "tool_name").unwrap_or("?"),
                    first_line(str_at(m, "message").unwrap_or_default())
                )]
            }
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
                let synthetic_error = self.summary.synthetic_error.take();
                self.summary = Summary {
                    result: str_at(m, "result").map(str::to_string),
                    cost_usd: m.get("total_cost_usd").and_then(Value::as_f64),
                    turns: m
                        .get("num_turns")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    is_error: m.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    subtype: str_at(m, "subtype").map(str::to_string),
                    terminal_reason: str_at(m, "terminal_reason").map(str::to_string),
                    api_error_status: m
                        .get("api_error_status")
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok()),
                    errors: m
                        .get("errors")
                        .and_then(Value::as_array)
                        .map(|e| {
                            e.iter()
                                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    permission_denials: m
                        .get("permission_denials")
                        .and_then(Value::as_array)
                        .map(|d| {
                            d.iter()
                                .map(|v| str_at(v, "tool_name").unwrap_or("?").to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                    synthetic_error,
                    ended: true,
                };
                let mut lines = Vec::new();
                let mut line = match self.summary.failure() {
                    Some(why) => format!("[result] failed: {why}"),
                    None => format!("[result] {}", str_at(m, "subtype").unwrap_or("done")),
                };
                if let Some(turns) = self.summary.turns {
                    line.push_str(&format!(", {turns} turns"));
                }
                if let Some(cost) = self.summary.cost_usd {
                    line.push_str(&format!(", ${cost:.4}"));
                }
                lines.push(line);
                if !self.summary.permission_denials.is_empty() {
                    lines.push(format!(
                        "[result] permission denied for: {}",
                        self.summary.permission_denials.join(", ")
                    ));
                }
                lines
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

    /// Sessions of the real Claude Code CLI against the harness's fake Messages API,
    /// recorded by tests/tests/claude_cli.rs (which re-records them on request).
    const WRITE: &str = include_str!("testdata/claude/write.jsonl");
    const MAX_TURNS: &str = include_str!("testdata/claude/max-turns.jsonl");
    const INVALID_KEY: &str = include_str!("testdata/claude/invalid-key.jsonl");
    const SERVER_ERROR: &str = include_str!("testdata/claude/server-error.jsonl");
    const DENIED: &str = include_str!("testdata/claude/denied.jsonl");

    fn claude() -> OutputParser {
        OutputParser::for_spec(&TaskSpec::Claude(ClaudeSpec {
            prompt: "p".into(),
            model: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            max_turns: None,
        }))
    }

    fn parse(session: &str) -> (Vec<String>, Summary) {
        let mut p = claude();
        let lines = session.lines().flat_map(|l| p.push(l)).collect();
        (lines, p.summary())
    }

    #[test]
    fn a_session_that_wrote_a_file_becomes_tool_text_and_result_lines() {
        let (lines, s) = parse(WRITE);
        assert!(
            lines[0].starts_with("[claude] session ")
                && lines[0].ends_with(", in /var/lib/leased/tasks/t1/work"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1..],
            [
                "[tool] Write: /var/lib/leased/tasks/t1/work/hello.txt",
                "I wrote hello.txt.",
                "[result] success, 2 turns, $0.0016",
            ]
        );
        assert_eq!(s.result.as_deref(), Some("I wrote hello.txt."));
        assert_eq!(s.turns, Some(2));
        assert_eq!(s.cost_usd, Some(0.0016));
        assert_eq!(s.terminal_reason.as_deref(), Some("completed"));
        assert!(!s.failed() && s.ended);
        assert_eq!(s.failure(), None);
    }

    #[test]
    fn the_turn_limit_is_a_failure_with_the_clis_reason() {
        let (lines, s) = parse(MAX_TURNS);
        assert!(s.failed());
        assert_eq!(s.result, None);
        assert_eq!(
            s.failure().as_deref(),
            Some("Reached maximum number of turns (1) (error_max_turns, max_turns)")
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "[result] failed: Reached maximum number of turns (1) (error_max_turns, max_turns)"
            )),
            "{lines:?}"
        );
    }

    #[test]
    fn an_invalid_key_shows_each_retry_and_fails_with_the_status() {
        let (lines, s) = parse(INVALID_KEY);
        let retries: Vec<&String> = lines
            .iter()
            .filter(|l| {
                l.starts_with("[claude] API error (status 401, authentication_failed): retry ")
            })
            .collect();
        assert_eq!(retries.len(), 2, "{lines:?}");
        assert!(retries[0].contains("retry 1 of 2 in "), "{retries:?}");
        // The CLI's own words are marked as such, not shown as the model's.
        assert!(
            lines.contains(&"[claude error] Invalid API key · Fix external API key".to_string()),
            "{lines:?}"
        );
        assert!(s.is_error && s.failed());
        assert_eq!(s.subtype.as_deref(), Some("success"));
        assert_eq!(s.api_error_status, Some(401));
        assert_eq!(
            s.failure().as_deref(),
            Some("Invalid API key · Fix external API key (API status 401, success, api_error)")
        );
    }

    #[test]
    fn a_server_error_fails_with_its_status() {
        let (_, s) = parse(SERVER_ERROR);
        assert_eq!(s.api_error_status, Some(500));
        let why = s.failure().unwrap();
        assert!(why.starts_with("API Error: 500"), "{why}");
        assert!(
            why.contains("(API status 500, success, api_error)"),
            "{why}"
        );
    }

    #[test]
    fn a_refused_tool_is_reported_and_the_session_still_succeeds() {
        let (lines, s) = parse(DENIED);
        assert!(!s.failed());
        assert_eq!(s.permission_denials, ["Bash"]);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("[permission denied] Bash: ")),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("[result] permission denied for: Bash")
        );
    }

    #[test]
    fn a_session_cut_off_before_its_result_keeps_the_synthetic_error() {
        let mut p = claude();
        for l in INVALID_KEY
            .lines()
            .filter(|l| !l.contains(r#""type":"result""#))
        {
            p.push(l);
        }
        let s = p.summary();
        assert!(!s.ended);
        assert_eq!(
            s.synthetic_error.as_deref(),
            Some("Invalid API key · Fix external API key")
        );
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
