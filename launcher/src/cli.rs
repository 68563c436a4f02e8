//! The command line: flags and subcommands, nothing else.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use lease_common::stack::ClaudeAuth;
use lease_common::tags::Action;

pub const EXIT_CODES: &str = "\
Exit status:
  0   success
  1   an AWS call or an operation failed (the message names what and why)
  2   bad usage: unknown flag, bad duration, illegal tag, missing argument
  3   nothing matched: no managed instance (or task) with that id or name
  4   refused: needs confirmation (--yes), or the instance (or task) is in the wrong state
  5   a required local program is missing (ssh, aws, session-manager-plugin)";

#[derive(Debug, Parser)]
#[command(
    name = "lease",
    version,
    about = "Ephemeral EC2 compute that cannot be forgotten: every instance has a deadline, an owner and a job.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// AWS profile to use (default: AWS_PROFILE, then the default profile).
    #[arg(long, global = true, env = "AWS_PROFILE", hide_env_values = true)]
    pub profile: Option<String>,
    /// AWS region (default: AWS_REGION, then the profile's region). `list` takes it
    /// more than once to query several regions.
    #[arg(long = "region", global = true, action = ArgAction::Append)]
    pub regions: Vec<String>,
    /// Send API calls to this endpoint instead of AWS (e.g. a local emulator);
    /// AWS_ENDPOINT_URL works too.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// Output format for results on stdout.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// More log output on stderr (-v info, -vv debug, -vvv trace including the SDK).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Answer yes to every confirmation.
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Launch instances with a deadline (spot by default).
    Launch(Box<LaunchArgs>),
    /// List managed instances (default: yours, not terminated).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Everything lease knows about one instance.
    Status(TargetArg),
    /// Move an instance's deadline forward: `lease extend i-0abc 2h`.
    Extend(ExtendArgs),
    /// Terminate instances.
    Terminate(ActionArgs),
    /// Stop instances (EBS-backed only).
    Stop(ActionArgs),
    /// Hibernate instances (launched with hibernation configured).
    Hibernate(ActionArgs),
    /// Attach to the instance's tmux session over SSM (default) or SSH.
    Attach(AttachArgs),
    /// Queue work for the fleet: a Claude Code prompt, a Docker image or a shell command.
    Submit(Box<SubmitArgs>),
    /// Queue depth, tasks in flight and dead letters, and tasks by state.
    Stats(StatsArgs),
    /// Task records: list (default), show one, cancel one.
    Tasks(TasksArgs),
    /// The node registry: agents, their status, task and deadline.
    Nodes(NodesArgs),
    /// Print a task's log; -f keeps following it.
    Logs(LogsArgs),
    /// Download a task's result bundle, or every bundle of an instance.
    Download(DownloadArgs),
    /// Print a least-privilege IAM policy for the agents' role or for `lease` users.
    IamPolicy(IamPolicyArgs),
    /// Run a `submit` or a `launch` on a cron or rate schedule (EventBridge Scheduler).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Create or check a stack's control plane (topics, queues, bucket, tables, the
    /// agents' role) and record it for the other commands. Safe to run again.
    Setup(SetupArgs),
    /// Delete everything `lease setup` created for a stack, bucket contents included.
    Teardown(TeardownArgs),
    /// Check that this account and region are ready for lease: credentials, region,
    /// network, the stack's resources, the agent package, the reaper, permissions.
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The most `--slots` takes: one instance running more tasks than this at once is
/// better served by more instances (SQS hands out at most 10 messages a receive, and
/// every task has its own tmux session and log uploads).
pub const MAX_SLOTS: u32 = 64;

#[derive(Debug, Args, Clone)]
pub struct LaunchArgs {
    /// EC2 instance type, e.g. t3.micro or g5.xlarge.
    #[arg(long, short = 't')]
    pub instance_type: String,
    /// Lifetime: 90s, 30m, 2h, 1d, 1h30m. `none` only with --yes.
    #[arg(long, default_value = "4h")]
    pub ttl: String,
    /// Shut down after this long without activity (CPU, network, disk, sessions, tasks).
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// What to do when idle.
    #[arg(long, value_parser = parse_action, default_value = "terminate")]
    pub on_idle: Action,
    /// What to do at the deadline.
    #[arg(long, value_parser = parse_action, default_value = "terminate")]
    pub on_expiry: Action,
    /// What to do once the launch's task (--shell, --image, --claude) has finished.
    #[arg(long, value_parser = parse_action, default_value = "terminate")]
    pub on_complete: Action,
    /// Use on-demand capacity instead of spot.
    #[arg(long)]
    pub on_demand: bool,
    /// How many instances (all or none: EC2 launches the full count or fails).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub count: i32,
    /// Job name, free text (tag lease:job).
    #[arg(long)]
    pub job: Option<String>,
    /// Instance name (tag Name).
    #[arg(long)]
    pub name: Option<String>,
    /// Owner (default: your AWS identity).
    #[arg(long)]
    pub owner: Option<String>,
    /// AMI id (default: for NVIDIA GPU types the AWS Deep Learning Base AMI, else
    /// Amazon Linux 2023; each the latest, for the type's architecture).
    #[arg(long)]
    pub ami: Option<String>,
    /// Root volume size in GiB (default: 30, 100 on GPU types, or the image's own size
    /// when larger; with hibernation at least the image plus RAM).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=16384))]
    pub volume_size: Option<i32>,
    /// Root volume type.
    #[arg(long, default_value = "gp3", value_parser = ["gp3", "gp2", "io1", "io2", "standard"])]
    pub volume_type: String,
    /// Leave the root volume unencrypted (default: encrypted with the account's EBS key;
    /// hibernation needs encryption).
    #[arg(long)]
    pub unencrypted: bool,
    #[arg(long)]
    pub key_name: Option<String>,
    #[arg(long)]
    pub subnet_id: Option<String>,
    #[arg(long = "security-group-id")]
    pub security_group_ids: Vec<String>,
    /// Instance profile name or ARN (the agent's role).
    #[arg(long)]
    pub iam_instance_profile: Option<String>,
    /// Extra user-data: a shell script or cloud-config, merged after lease's own.
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Bucket holding the agent .deb, for AMIs without the agent baked in (default:
    /// the stack's).
    #[arg(long)]
    pub agent_bucket: Option<String>,
    /// The pool whose queue the agent serves, with a stack from `lease setup`
    /// (default: `default`).
    #[arg(long)]
    pub pool: Option<String>,
    /// Extra lines for the agent's config file (YAML), e.g. queue and topic.
    #[arg(long)]
    pub agent_config: Option<PathBuf>,
    /// Tasks each instance's agent runs at once (agent config `max-concurrent-tasks`;
    /// default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub slots: Option<u32>,
    /// Wait until the instances are running, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Print the full request and call nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One task for each instance to run once, then end the lease per --on-complete.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Bucket for the task's log and result bundle (needed with a task).
    #[arg(long, env = "LEASE_BUCKET")]
    pub bucket: Option<String>,
    /// DynamoDB task table the agent records the task's state in (`lease tasks`).
    #[arg(long, env = "LEASE_TASKS_TABLE")]
    pub tasks_table: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    /// Everyone's instances, not only yours.
    #[arg(long, short = 'a')]
    pub all: bool,
    #[arg(long)]
    pub job: Option<String>,
    /// Instance state(s): pending, running, stopping, stopped, shutting-down,
    /// terminated (default: all but terminated).
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Query every enabled region.
    #[arg(long)]
    pub all_regions: bool,
    /// Only instances owned by this owner (default: you, unless --all).
    #[arg(long)]
    pub owner: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct TargetArg {
    /// Instance id or Name tag.
    pub target: String,
}

#[derive(Debug, Args, Clone)]
pub struct ExtendArgs {
    /// Instance ids or names, then the duration: `lease extend web-1 web-2 2h`.
    #[arg(required = true, num_args = 2.., value_name = "ID|NAME... DURATION")]
    pub args: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ActionArgs {
    /// Instance ids or names.
    pub targets: Vec<String>,
    /// Every managed instance of this job.
    #[arg(long)]
    pub job: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct AttachArgs {
    /// Instance id or Name tag.
    pub target: String,
    /// Over SSM Session Manager (default). With --ssh: SSH tunnelled through SSM, with
    /// your key pushed by EC2 Instance Connect, so no inbound port or key pair is needed.
    #[arg(long)]
    pub ssm: bool,
    /// Over SSH; honours your ssh config. LEASE_SSH_COMMAND overrides `ssh`.
    #[arg(long)]
    pub ssh: bool,
    /// Login user for SSH (default: the image's: ec2-user, ubuntu or admin).
    #[arg(long)]
    pub user: Option<String>,
    /// Private key for --ssh --ssm; its .pub is pushed (default: ~/.ssh/id_ed25519,
    /// id_ecdsa or id_rsa).
    #[arg(long, requires = "ssh")]
    pub identity: Option<PathBuf>,
    /// tmux session to attach to (default: the one running the instance's task, else `lease`).
    #[arg(long)]
    pub session: Option<String>,
    /// Print the command instead of running it.
    #[arg(long)]
    pub print: bool,
}

/// Where the fleet's work queue and bucket are. Without them, the stack `lease setup`
/// recorded is used (`submit` then publishes to its command topic, which routes each
/// task to its pool's queue).
#[derive(Debug, Args, Clone)]
pub struct WorkArgs {
    /// URL of the SQS task queue (default: the stack's).
    #[arg(long, env = "LEASE_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// Control-plane bucket (task specs too large for SQS, logs, bundles; default: the
    /// stack's).
    #[arg(long, env = "LEASE_BUCKET")]
    pub bucket: Option<String>,
}

/// What a task runs: shared by `lease submit` and `lease launch`.
#[derive(Debug, Args, Clone, Default)]
#[command(group(clap::ArgGroup::new("task").args(["claude", "image", "shell"])))]
pub struct TaskArgs {
    /// A Claude Code prompt, run with `claude -p`; `@FILE` reads it from a file.
    #[arg(long)]
    pub claude: Option<String>,
    #[arg(long, requires = "claude")]
    pub model: Option<String>,
    #[arg(long, requires = "claude")]
    pub permission_mode: Option<String>,
    /// Comma-separated tool names Claude may use.
    #[arg(long, requires = "claude", value_delimiter = ',')]
    pub allowed_tools: Vec<String>,
    #[arg(long, requires = "claude")]
    pub max_turns: Option<u32>,
    /// A Docker image to run; the bundle directory is mounted at /out.
    #[arg(long)]
    pub image: Option<String>,
    /// GPUs for the container (`all`, or a count).
    #[arg(long, requires = "image")]
    pub gpus: Option<String>,
    /// KEY=VALUE for the container's environment (repeatable).
    #[arg(long, requires = "image")]
    pub env: Vec<String>,
    /// A shell command, run with `bash -lc` in the bundle directory; `@FILE` reads it
    /// from a file.
    #[arg(long)]
    pub shell: Option<String>,
    /// Stop the task and report it failed after this long.
    #[arg(long, requires = "task")]
    pub timeout: Option<String>,
    /// Directory whose contents become the result bundle (default: the task's own).
    #[arg(long, requires = "task")]
    pub bundle: Option<String>,
    /// Arguments for the --image container, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

impl TaskArgs {
    /// Whether any task kind was given (`lease launch` runs a task only then).
    pub fn is_given(&self) -> bool {
        self.claude.is_some() || self.image.is_some() || self.shell.is_some()
    }
}

/// The DynamoDB task table, optional where a command works without it.
#[derive(Debug, Args, Clone)]
pub struct TasksTableArg {
    /// DynamoDB table of task records (`lease tasks`, `lease stats`).
    #[arg(long, env = "LEASE_TASKS_TABLE")]
    pub tasks_table: Option<String>,
}

#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["claude", "image", "shell"])))]
pub struct SubmitArgs {
    #[command(flatten)]
    pub work: WorkArgs,
    #[command(flatten)]
    pub table: TasksTableArg,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Pool of nodes to run on.
    #[arg(long)]
    pub pool: Option<String>,
    /// Submit N copies; `{index}` in the spec becomes 0..N-1.
    #[arg(long)]
    pub array: Option<u32>,
    /// KEY=v1,v2,...: one task per combination; `{KEY}` in the spec becomes each value.
    #[arg(long)]
    pub param: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct StatsArgs {
    #[command(flatten)]
    pub work: WorkArgs,
    #[command(flatten)]
    pub table: TasksTableArg,
}

#[derive(Debug, Args, Clone)]
pub struct TasksArgs {
    /// DynamoDB table of task records.
    #[arg(long, env = "LEASE_TASKS_TABLE", global = true)]
    pub tasks_table: Option<String>,
    #[command(subcommand)]
    pub command: Option<TasksCommand>,
    /// `lease tasks` alone lists, with these filters (a subcommand takes its own).
    #[command(flatten)]
    pub list: TaskListArgs,
}

#[derive(Debug, Subcommand, Clone)]
pub enum TasksCommand {
    /// Tasks, newest first: id, state, kind, node, attempt, last update, summary.
    #[command(alias = "ls")]
    List(TaskListArgs),
    /// Every attribute of one task, and where its log and bundle are in S3.
    Show(TaskIdArgs),
    /// Cancel a task unless it already finished.
    Cancel(TaskIdArgs),
}

#[derive(Debug, Args, Clone, PartialEq)]
pub struct TaskListArgs {
    /// Only tasks in this state (repeatable): queued, running, uploading, complete,
    /// failed, interrupted, cancelled.
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Show at most this many (the newest).
    #[arg(long, default_value_t = DEFAULT_TASK_LIMIT)]
    pub limit: usize,
}

/// Rows `lease tasks` shows unless told otherwise: a screenful of the newest.
pub const DEFAULT_TASK_LIMIT: usize = 50;

impl Default for TaskListArgs {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            limit: DEFAULT_TASK_LIMIT,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct TaskIdArgs {
    pub task_id: String,
    /// Control-plane bucket, to name the log and bundle locations the record lacks.
    #[arg(long, env = "LEASE_BUCKET")]
    pub bucket: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct NodesArgs {
    /// DynamoDB table of registered nodes.
    #[arg(long, env = "LEASE_NODES_TABLE")]
    pub nodes_table: Option<String>,
    /// Include deregistered nodes and stale ones (no heartbeat for three intervals).
    #[arg(long, short = 'a')]
    pub all: bool,
}

#[derive(Debug, Args, Clone)]
pub struct LogsArgs {
    pub task_id: String,
    /// Keep printing as the log grows, until the task ends (known from the task table)
    /// or until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Control-plane bucket (default: the stack's).
    #[arg(long, env = "LEASE_BUCKET")]
    pub bucket: Option<String>,
    /// Task table that tells `-f` when the task has ended (default: the stack's).
    #[arg(long, env = "LEASE_TASKS_TABLE")]
    pub tasks_table: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct DownloadArgs {
    /// A task id, or an instance id for every bundle it produced.
    pub target: String,
    /// Directory to download into; each task gets a subdirectory.
    #[arg(long, default_value = ".")]
    pub to: PathBuf,
    /// Control-plane bucket (default: the stack's).
    #[arg(long, env = "LEASE_BUCKET")]
    pub bucket: Option<String>,
    /// Also the partial bundles interrupted attempts left, into `<task>.attempt-<n>/`.
    #[arg(long)]
    pub partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    /// The role every instance's agent runs with.
    Agent,
    /// Whoever runs `lease` (a person, or CI).
    Launcher,
    /// The backstop reaper's Lambda execution role.
    Reaper,
    /// The role EventBridge Scheduler invokes the reaper with.
    ReaperInvoke,
    /// The role the targets of `lease schedule` run with.
    Schedules,
    /// Whoever runs `lease setup` and `lease teardown` (an operator).
    Setup,
}

#[derive(Debug, Args, Clone)]
pub struct IamPolicyArgs {
    /// Which policy: `agent` or `launcher`.
    #[arg(value_enum)]
    pub kind: PolicyKind,
    /// The control-plane stack whose resources the policy names.
    #[arg(long, default_value = lease_common::stack::DEFAULT_STACK)]
    pub stack: String,
    /// AWS account id (default: the account of your AWS identity).
    #[arg(long)]
    pub account: Option<String>,
    /// AWS partition: aws, aws-cn or aws-us-gov.
    #[arg(long, default_value = lease_common::stack::DEFAULT_PARTITION)]
    pub partition: String,
    /// Limit the agent to these pools' queues (repeatable; default: every pool of the stack).
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// How Claude Code tasks authenticate (none, bedrock, api-key): what the agent's
    /// policy adds for it (default: the stack's choice in your settings, else none).
    #[arg(long, value_parser = parse_claude_auth)]
    pub claude_auth: Option<ClaudeAuth>,
}

/// The stack whose schedule group holds the schedules.
#[derive(Debug, Args, Clone)]
pub struct StackArg {
    /// The control-plane stack (its schedule group is `lease-<stack>`).
    #[arg(long, default_value = lease_common::stack::DEFAULT_STACK)]
    pub stack: String,
}

#[derive(Debug, Subcommand, Clone)]
pub enum ScheduleCommand {
    /// Create a schedule: `lease schedule create nightly --cron "0 9 * * ? *" -- submit --shell "make test"`.
    Create(Box<ScheduleCreateArgs>),
    /// The stack's schedules, with state and expression.
    List(StackArg),
    /// Delete a schedule.
    Delete(ScheduleNameArgs),
    /// Stop a schedule from running, keeping it.
    Pause(ScheduleNameArgs),
    /// Let a paused schedule run again.
    Resume(ScheduleNameArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ScheduleNameArgs {
    pub name: String,
    #[command(flatten)]
    pub stack: StackArg,
}

#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("expression").required(true).args(["cron", "rate"])))]
pub struct ScheduleCreateArgs {
    /// Letters, digits, '-' and '_'; each scheduled task's id is NAME-<run id>.
    pub name: String,
    /// Six fields: minutes hours day-of-month month day-of-week year, one of the two
    /// days being '?', e.g. "0 9 ? * MON-FRI *".
    #[arg(long)]
    pub cron: Option<String>,
    /// N minute(s)|hour(s)|day(s), e.g. "5 minutes" or "1 day".
    #[arg(long)]
    pub rate: Option<String>,
    /// IANA time zone the cron expression is read in (default UTC), e.g. Europe/Paris.
    #[arg(long)]
    pub timezone: Option<String>,
    #[command(flatten)]
    pub stack: StackArg,
    /// Command topic scheduled tasks are published to (default: the stack's,
    /// lease-<stack>-commands).
    #[arg(long, env = "LEASE_COMMAND_TOPIC")]
    pub topic_arn: Option<String>,
    /// Role the schedule runs its target with (default: the stack's lease-<stack>-schedules,
    /// made by `lease setup`).
    #[arg(long)]
    pub role_arn: Option<String>,
    /// What to run, after `--`: `submit …` or `launch …`, with their usual flags.
    #[arg(last = true, required = true, value_name = "submit|launch ARGS")]
    pub command: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct SetupArgs {
    /// Stack name: lowercase letters and digits (default: LEASE_STACK, the default
    /// stack of your settings, then `main`).
    #[arg(long, env = "LEASE_STACK", hide_env_values = true)]
    pub stack: Option<String>,
    /// A pool of nodes to make a queue for (repeatable). The `default` pool is always
    /// made, and pools made before are kept.
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// The agent package (`leased_<version>_<arch>.deb`) to upload for instances whose
    /// AMI lacks the agent (default: any in target/debian/).
    #[arg(long)]
    pub agent_deb: Option<PathBuf>,
    /// The backstop reaper's Lambda package, as packaging/build-reaper.sh makes it
    /// (default: target/lambda/lease-reaper.zip, built first when run from a checkout).
    #[arg(long)]
    pub reaper_zip: Option<PathBuf>,
    /// Accept a stack without the backstop reaper: an instance whose agent is gone
    /// then runs (and costs) until you end it. Without this flag setup fails when it
    /// cannot deploy the reaper.
    #[arg(long)]
    pub no_backstop: bool,
    /// How Claude Code tasks on the stack's nodes authenticate: none, bedrock (the
    /// agents' role may invoke Anthropic models on Bedrock) or api-key (it may read the
    /// key parameter `/lease/<stack>/anthropic-api-key`). Default: what the stack
    /// was set up with, else none.
    #[arg(long, value_parser = parse_claude_auth)]
    pub claude_auth: Option<ClaudeAuth>,
}

#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// Stack name (default: LEASE_STACK, the default stack of your settings, then `main`).
    #[arg(long, env = "LEASE_STACK", hide_env_values = true)]
    pub stack: Option<String>,
    /// An instance type you mean to launch (repeatable), for the vCPU quota check.
    #[arg(long = "type")]
    pub instance_types: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct TeardownArgs {
    /// Stack name (default: LEASE_STACK, the default stack of your settings, then `main`).
    #[arg(long, env = "LEASE_STACK", hide_env_values = true)]
    pub stack: Option<String>,
    /// Tear down even while managed instances of the stack still run.
    #[arg(long)]
    pub force: bool,
}

fn parse_claude_auth(s: &str) -> Result<ClaudeAuth, String> {
    s.parse()
}

fn parse_action(s: &str) -> Result<Action, String> {
    s.parse()
}
