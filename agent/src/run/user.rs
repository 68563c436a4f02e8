//! Who a task runs as, and the environment it gets.
//!
//! An agent running as root runs every task (and the tmux server holding it) as the
//! configured task user, through `runuser`; an agent running as anyone else runs
//! tasks as itself. Either way the task's environment is built here from nothing
//! (`env -i`): a long-lived tmux server's environment is whatever it was started
//! with, so inheriting it would hand a task stale or foreign variables.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The directories a task's `PATH` holds after the user's own `~/.local/bin` (where
/// Claude Code's installer puts `claude`).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// A UTF-8 locale every Debian and Ubuntu image has without `locales` installed.
const LANG: &str = "C.UTF-8";
/// The terminal tmux gives its panes by default; its terminfo is in ncurses-base.
const TERM: &str = "screen";

/// The user a task runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The agent is root and this is another user: commands go through `runuser`
    /// and the task's files are handed to the user.
    pub switch: bool,
}

impl TaskUser {
    /// `name` from the password database when the agent is root; the agent's own
    /// user otherwise. The reason names the user when it does not exist.
    pub async fn resolve(name: &str) -> Result<Self, String> {
        let me = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .map_err(|e| format!("cannot tell which user the agent runs as: {e}"))?;
        let key = if me == 0 {
            name.to_string()
        } else {
            me.to_string()
        };
        let out = tokio::process::Command::new("getent")
            .args(["passwd", &key])
            .output()
            .await
            .map_err(|e| format!("cannot run getent to look up user '{key}': {e}"))?;
        let line = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || line.trim().is_empty() {
            return Err(if me == 0 {
                format!(
                    "the task user '{name}' does not exist (create it with \
                     `useradd --system --create-home {name}`, or set task-user)"
                )
            } else {
                format!("uid {me}, the agent's user, is not in the password database")
            });
        }
        let mut user = parse_passwd(line.trim())
            .ok_or_else(|| format!("getent passwd {key} answered {:?}", line.trim()))?;
        user.switch = me == 0 && user.uid != 0;
        Ok(user)
    }

    /// `program args` run as this user.
    pub fn command(&self, program: &str, args: &[String]) -> (String, Vec<String>) {
        if !self.switch {
            return (program.to_string(), args.to_vec());
        }
        let mut all: Vec<String> = vec!["-u".into(), self.name.clone(), "--".into()];
        all.push(program.to_string());
        all.extend(args.iter().cloned());
        ("runuser".to_string(), all)
    }

    /// Hands `path` to the user (a no-op unless commands are switched to it).
    pub fn give(&self, path: &Path) -> std::io::Result<()> {
        if self.switch {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }

    /// Hands `dir` and everything in it to the user: an earlier attempt's files, or
    /// ones the agent put there, must be the task's to change.
    pub fn give_tree(&self, dir: &Path) -> std::io::Result<()> {
        if !self.switch {
            return Ok(());
        }
        self.give(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                self.give_tree(&entry.path())?;
            } else {
                self.give(&entry.path())?;
            }
        }
        Ok(())
    }

    /// The base of every task's environment: `PATH` (the user's `~/.local/bin`
    /// first), `HOME`, `USER`, `LOGNAME`, `LANG`, `TERM`.
    pub fn base_env(&self) -> Vec<(String, String)> {
        let home = self.home.display().to_string();
        vec![
            ("PATH".into(), format!("{home}/.local/bin:{SYSTEM_PATH}")),
            ("HOME".into(), home),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            ("LANG".into(), LANG.into()),
            ("TERM".into(), TERM.into()),
        ]
    }
}

/// One `getent passwd` line: `name:x:uid:gid:gecos:home:shell`.
pub fn parse_passwd(line: &str) -> Option<TaskUser> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _, uid, gid, _, home, _] = fields.as_slice() else {
        return None;
    };
    Some(TaskUser {
        name: name.to_string(),
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        home: PathBuf::from(home),
        switch: false,
    })
}

/// `base`, then each later list, a later value replacing an earlier one of the same
/// name in place: the order of first appearance is kept, so the script reads in a
/// stable order.
pub fn merge_env(lists: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for list in lists {
        for (k, v) in list.iter() {
            match out.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(switch: bool) -> TaskUser {
        TaskUser {
            name: "lease".into(),
            uid: 999,
            gid: 995,
            home: "/home/lease".into(),
            switch,
        }
    }

    #[test]
    fn a_passwd_line_names_the_user_and_home() {
        assert_eq!(
            parse_passwd("lease:x:999:995::/home/lease:/bin/bash"),
            Some(user(false))
        );
        assert_eq!(parse_passwd("lease:x:nine:995::/home/lease:/bin/sh"), None);
        assert_eq!(parse_passwd("short:x:1"), None);
    }

    #[test]
    fn commands_switch_user_only_when_asked() {
        let args = vec!["-S".to_string(), "/run/s".to_string(), "ls".to_string()];
        assert_eq!(
            user(true).command("tmux", &args),
            (
                "runuser".to_string(),
                ["-u", "lease", "--", "tmux", "-S", "/run/s", "ls"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            user(false).command("tmux", &args),
            ("tmux".to_string(), args.clone())
        );
    }

    #[test]
    fn the_path_starts_with_the_users_local_bin() {
        let env = user(true).base_env();
        assert_eq!(env[0].0, "PATH");
        assert!(env[0].1.starts_with("/home/lease/.local/bin:"), "{env:?}");
        assert!(env.contains(&("HOME".into(), "/home/lease".into())));
        assert!(env.contains(&("USER".into(), "lease".into())));
    }

    #[test]
    fn later_variables_replace_earlier_ones_in_place() {
        let a = vec![("A".to_string(), "1".to_string()), ("B".into(), "2".into())];
        let b = vec![("C".to_string(), "3".to_string()), ("A".into(), "9".into())];
        assert_eq!(
            merge_env(&[&a, &b]),
            vec![
                ("A".to_string(), "9".to_string()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into())
            ]
        );
    }
}
