//! Turning task flags into task messages: one task, an array (`--array N`,
//! `{index}`), or one per combination of `--param KEY=v1,v2` values (`{KEY}`) for
//! `lease submit`; one task per instance for `lease launch`. Pure: the command modules
//! send what this builds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lease_common::HumanDuration;
use lease_common::messages::{ClaudeSpec, DockerSpec, ShellSpec, Task, TaskSpec};

use crate::cli::{SubmitArgs, TaskArgs};
use crate::error::{Error, Result};

/// `@FILE` reads the text from a file: a long prompt does not fit on a command line
/// (Linux limits one argument to 128 KiB).
fn text_or_file(flag: &str, value: &str) -> Result<String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("Failed to read {flag} file '{path}'"), e)),
        None => Ok(value.to_string()),
    }
}

/// The spec the flags describe, before substitution.
pub fn template(args: &TaskArgs) -> Result<TaskSpec> {
    let spec = match (&args.claude, &args.image, &args.shell) {
        (Some(prompt), None, None) => TaskSpec::Claude(ClaudeSpec {
            prompt: text_or_file("--claude", prompt)?,
            model: args.model.clone(),
            permission_mode: args.permission_mode.clone(),
            allowed_tools: args.allowed_tools.clone(),
            max_turns: args.max_turns,
        }),
        (None, Some(image), None) => {
            let mut env = BTreeMap::new();
            for kv in &args.env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Error::usage(format!("--env '{kv}': expected KEY=VALUE")))?;
                if k.is_empty() {
                    return Err(Error::usage(format!("--env '{kv}': the name is empty")));
                }
                env.insert(k.to_string(), v.to_string());
            }
            TaskSpec::Docker(DockerSpec {
                image: image.clone(),
                args: args.args.clone(),
                env,
                gpus: args.gpus.clone(),
            })
        }
        (None, None, Some(command)) => TaskSpec::Shell(ShellSpec {
            command: text_or_file("--shell", command)?,
        }),
        _ => {
            return Err(Error::usage(
                "give exactly one of --claude, --image or --shell",
            ));
        }
    };
    if !args.args.is_empty() && !matches!(spec, TaskSpec::Docker(_)) {
        return Err(Error::usage(
            "arguments after `--` are for --image tasks only",
        ));
    }
    Ok(spec)
}

/// `--param KEY=v1,v2` flags, parsed and checked.
pub fn params(raw: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in raw {
        let (k, vs) = p
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("--param '{p}': expected KEY=v1,v2,...")))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::usage(format!(
                "--param '{p}': the name must be letters, digits or '_'"
            )));
        }
        if k == "index" {
            return Err(Error::usage("--param: 'index' is reserved for --array"));
        }
        if out.iter().any(|(name, _)| name == k) {
            return Err(Error::usage(format!("--param '{k}' is given twice")));
        }
        let values: Vec<String> = vs.split(',').map(str::to_string).collect();
        if values.iter().any(String::is_empty) {
            return Err(Error::usage(format!("--param '{p}': a value is empty")));
        }
        out.push((k.to_string(), values));
    }
    Ok(out)
}

/// Every substitution map: the cartesian product of the params, times the array.
pub fn combinations(
    array: Option<u32>,
    params: &[(String, Vec<String>)],
) -> Vec<BTreeMap<String, String>> {
    let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (key, values) in params {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(key.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    if let Some(n) = array {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..n).map(move |i| {
                    let mut c = c.clone();
                    c.insert("index".into(), i.to_string());
                    c
                })
            })
            .collect();
    }
    combos
}

fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    vars.iter().fold(text.to_string(), |acc, (k, v)| {
        acc.replace(&format!("{{{k}}}"), v)
    })
}

fn substitute_spec(spec: &TaskSpec, vars: &BTreeMap<String, String>) -> TaskSpec {
    let s = |t: &str| substitute(t, vars);
    match spec {
        TaskSpec::Claude(c) => TaskSpec::Claude(ClaudeSpec {
            prompt: s(&c.prompt),
            ..c.clone()
        }),
        TaskSpec::Docker(d) => TaskSpec::Docker(DockerSpec {
            image: s(&d.image),
            args: d.args.iter().map(|a| s(a)).collect(),
            env: d.env.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
            gpus: d.gpus.clone(),
        }),
        TaskSpec::Shell(sh) => TaskSpec::Shell(ShellSpec {
            command: s(&sh.command),
        }),
    }
}

/// A sortable id: when it was submitted, and enough randomness to never collide.
pub fn base_id(now: DateTime<Utc>, random: &str) -> String {
    format!(
        "{}-{}",
        now.format("%Y%m%d-%H%M%S"),
        &random[..random.len().min(6)]
    )
}

fn timeout(args: &TaskArgs) -> Result<Option<HumanDuration>> {
    args.timeout
        .as_deref()
        .map(|t| {
            t.parse::<HumanDuration>()
                .map_err(|e| Error::usage(format!("--timeout: {e}")))
        })
        .transpose()
}

/// `count` copies of one task with ids `<base>` (one) or `<base>-0`… (several), for
/// `lease launch`: each instance gets a task id of its own, because the id keys the
/// task's record, log and claim, and two instances sharing one would fight over them.
pub fn per_instance(
    args: &TaskArgs,
    count: usize,
    now: DateTime<Utc>,
    random: &str,
) -> Result<Vec<Task>> {
    let spec = template(args)?;
    let timeout = timeout(args)?;
    let base = base_id(now, random);
    Ok((0..count)
        .map(|n| {
            let id = if count == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let mut task = Task::new(id, spec.clone());
            task.timeout = timeout;
            task.bundle = args.bundle.clone();
            task
        })
        .collect())
}

/// Longest summary kept in a task record: a table row, not the whole prompt.
pub const SUMMARY_CHARS: usize = 80;

/// The one-line summary a task record carries: the shell command, the image with its
/// arguments, or the prompt's start, on one line and cut at [`SUMMARY_CHARS`].
pub fn summary(spec: &TaskSpec) -> String {
    let text = match spec {
        TaskSpec::Shell(s) => s.command.clone(),
        TaskSpec::Docker(d) => std::iter::once(d.image.as_str())
            .chain(d.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        TaskSpec::Claude(c) => c.prompt.clone(),
    };
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= SUMMARY_CHARS {
        one_line
    } else {
        let cut: String = one_line.chars().take(SUMMARY_CHARS - 1).collect();
        format!("{cut}…")
    }
}

/// The tasks to send, in order.
pub fn build(args: &SubmitArgs, now: DateTime<Utc>, random: &str) -> Result<Vec<Task>> {
    let spec = template(&args.task)?;
    let timeout = timeout(&args.task)?;
    if args.array == Some(0) {
        return Err(Error::usage("--array must be at least 1"));
    }
    let params = params(&args.param)?;
    let combos = combinations(args.array, &params);
    let base = base_id(now, random);
    let single = combos.len() == 1;
    Ok(combos
        .iter()
        .enumerate()
        .map(|(n, vars)| {
            let id = if single {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let mut task = Task::new(id, substitute_spec(&spec, vars));
            task.timeout = timeout;
            task.bundle = args.task.bundle.as_deref().map(|b| substitute(b, vars));
            task.pool = args.pool.clone();
            task
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use clap::Parser;

    fn args(extra: &[&str]) -> SubmitArgs {
        let mut argv = vec!["lease", "submit", "--queue-url", "http://q"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Submit(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
    }

    #[test]
    fn one_shell_task() {
        let tasks = build(
            &args(&["--shell", "make test", "--timeout", "1h"]),
            now(),
            "abcdef12",
        )
        .unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "20261123-100000-abcdef");
        assert_eq!(tasks[0].timeout.unwrap().as_secs(), 3_600);
        assert!(matches!(&tasks[0].spec, TaskSpec::Shell(s) if s.command == "make test"));
        Task::parse(&tasks[0].to_json()).unwrap();
    }

    #[test]
    fn array_and_params_multiply() {
        let tasks = build(
            &args(&[
                "--shell",
                "train --lr {lr} --seed {index} --opt {opt}",
                "--array",
                "2",
                "--param",
                "lr=0.1,0.01",
                "--param",
                "opt=sgd,adam,lamb",
            ]),
            now(),
            "abcdef",
        )
        .unwrap();
        assert_eq!(tasks.len(), 12);
        let commands: Vec<String> = tasks
            .iter()
            .map(|t| match &t.spec {
                TaskSpec::Shell(s) => s.command.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert!(commands.contains(&"train --lr 0.01 --seed 1 --opt lamb".to_string()));
        let unique: std::collections::BTreeSet<_> = commands.iter().collect();
        assert_eq!(unique.len(), 12);
        assert_eq!(tasks[11].id, "20261123-100000-abcdef-11");
    }

    #[test]
    fn docker_env_and_args() {
        let tasks = build(
            &args(&[
                "--image",
                "trainer:1",
                "--gpus",
                "all",
                "--env",
                "LR=0.1",
                "--",
                "--epochs",
                "3",
            ]),
            now(),
            "abcdef",
        )
        .unwrap();
        match &tasks[0].spec {
            TaskSpec::Docker(d) => {
                assert_eq!(d.args, ["--epochs", "3"]);
                assert_eq!(d.env["LR"], "0.1");
                assert_eq!(d.gpus.as_deref(), Some("all"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn launch_tasks_get_one_id_per_instance() {
        let a = args(&["--shell", "make", "--timeout", "5m", "--bundle", "out"]);
        let one = per_instance(&a.task, 1, now(), "abcdef").unwrap();
        assert_eq!(one[0].id, "20261123-100000-abcdef");
        let three = per_instance(&a.task, 3, now(), "abcdef").unwrap();
        let ids: Vec<&str> = three.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "20261123-100000-abcdef-0",
                "20261123-100000-abcdef-1",
                "20261123-100000-abcdef-2"
            ]
        );
        assert!(three.iter().all(|t| t.timeout.unwrap().as_secs() == 300
            && t.bundle.as_deref() == Some("out")
            && t.pool.is_none()));
    }

    #[test]
    fn summaries_are_one_short_line() {
        let shell = TaskSpec::Shell(ShellSpec {
            command: "make\n  test".into(),
        });
        assert_eq!(summary(&shell), "make test");
        let docker = TaskSpec::Docker(DockerSpec {
            image: "trainer:1".into(),
            args: vec!["--epochs".into(), "3".into()],
            env: BTreeMap::new(),
            gpus: None,
        });
        assert_eq!(summary(&docker), "trainer:1 --epochs 3");
        let claude = TaskSpec::Claude(ClaudeSpec {
            prompt: "é".repeat(200),
            model: None,
            permission_mode: None,
            allowed_tools: vec![],
            max_turns: None,
        });
        let s = summary(&claude);
        assert_eq!(s.chars().count(), SUMMARY_CHARS);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn bad_flags_are_named() {
        for (flags, needle) in [
            (&["--shell", "x", "--timeout", "soon"][..], "--timeout"),
            (&["--image", "i", "--env", "NOEQUALS"], "NOEQUALS"),
            (&["--shell", "x", "--param", "lr"], "lr"),
            (&["--shell", "x", "--param", "index=1,2"], "index"),
            (&["--shell", "x", "--param", "a=1,,2"], "empty"),
            (&["--shell", "x", "--array", "0"], "--array"),
            (&["--shell", "x", "--", "extra"], "--image"),
        ] {
            let err = build(&args(flags), now(), "abcdef").unwrap_err();
            assert!(err.to_string().contains(needle), "{flags:?}: {err}");
        }
    }
}
