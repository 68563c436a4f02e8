//! Where tasks run on a node and who runs them: the agent creates these sessions and
//! `lease attach` joins them, so both read the names from here.

/// The unprivileged user tasks run as (created by the agent's package and the
/// user-data install). Claude Code refuses `bypassPermissions` as root, and a task
/// must not hold the instance role's power to change the machine's own software.
pub const DEFAULT_TASK_USER: &str = "lease";

/// The tmux server the agent starts tasks in, run as the task user. A socket of its
/// own, rather than the task user's default one, so the agent never joins a tmux a
/// person started and `lease attach` can name it exactly.
pub const DEFAULT_TMUX_SOCKET: &str = "/run/leased/tmux/default";

/// The session `lease attach` opens (creating it when missing) when no task runs.
pub const SHELL_SESSION: &str = "lease";

/// The tmux session of a task.
pub fn task_session(task_id: &str) -> String {
    format!("lease-{task_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_session_never_collides_with_the_shell_session() {
        assert_eq!(task_session("t-1"), "lease-t-1");
        assert_ne!(task_session(""), SHELL_SESSION);
    }
}
