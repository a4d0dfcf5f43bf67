//! Command-line interface: argument parsing, dispatch and output. One file
//! per command; each turns arguments into a library call and prints.

mod backup;
mod catalog_cmd;
mod check;
mod completions;
mod copy;
mod daemon;
mod deploy;
mod drill;
mod init;
mod list;
mod man;
mod pin;
mod policy_cmd;
mod prune;
mod report;
mod restore;
mod restore_point;
mod show;
mod status;
mod verify;
mod wal_fetch;
mod wal_prefetch;
mod wal_push;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::catalog::Catalog;
use crate::error::{exit_code, usage};
use crate::policy::{self, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "drctl",
    version,
    about = "Backup and disaster recovery for PostgreSQL and AWS RDS, with restores proven by drills"
)]
pub struct Cli {
    /// Directory of policy files (one TOML file per database)
    #[arg(long, env = "DRCTL_POLICIES", global = true, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Catalog: a SQLite file, or postgres://user@host/db shared by a fleet (password from PGPASSWORD or ~/.pgpass) [default: drctl.db beside the policies directory; without --policies, ./drctl.db when ./policies exists, else $XDG_STATE_HOME/drctl/catalog.db]
    #[arg(long, env = "DRCTL_CATALOG", global = true, value_name = "PATH")]
    catalog: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// Log format on stderr
    #[arg(
        long,
        value_enum,
        env = "DRCTL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    /// More logging (-v info, -vv debug) and full error chains
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an example policy and an age key pair (0600)
    Init(init::Args),
    /// Validate policies
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Prove the chain end to end: source, repository, WAL archiving
    Check(check::Args),
    /// Run one backup of a policy now (what cron calls)
    Backup(backup::Args),
    /// Run every policy's schedule; serve /metrics and /healthz
    Daemon(daemon::Args),
    /// Apply retention: delete what no rule keeps (--dry-run shows it)
    Prune(prune::Args),
    /// Bring [[copy]] repositories level with the primary (objects as stored)
    Copy(copy::Args),
    /// Keep a backup whatever the retention rules say
    Pin(pin::Args),
    /// Let the retention rules decide about a pinned backup again
    Unpin(pin::Args),
    /// Per policy: last backup, RPO now, recoverable window, failures, next run
    Status(status::Args),
    /// The status page as one self-contained HTML file (--html) or JSON: health, history, drills, retention
    Report(report::Args),
    /// Prove a backup restores: scratch server, checks, measured RTO/RPO, JUnit
    Drill(drill::Args),
    /// List backups, newest first
    List(list::Args),
    /// Show a backup's manifest and verification state
    Show(show::Args),
    /// Check stored objects against their manifests
    Verify(verify::Args),
    /// Restore a backup
    Restore(restore::Args),
    /// Name the WAL position now (pg_create_restore_point) for restore --to-name
    RestorePoint(restore_point::Args),
    /// Archive one WAL file (archive_command = 'drctl wal-push POLICY %p')
    WalPush(wal_push::Args),
    /// Restore one WAL file (restore_command = 'drctl wal-fetch POLICY %f %p')
    WalFetch(wal_fetch::Args),
    /// Internal: fetch the next WAL segments in the background
    #[command(hide = true)]
    WalPrefetch(wal_prefetch::Args),
    /// Catalog maintenance
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCmd),
    /// Generate deployment files from the policies (Kubernetes CronJobs)
    #[command(subcommand)]
    Deploy(deploy::DeployCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(completions::Args),
    /// Write man pages: drctl.1 and one per subcommand
    Man(man::Args),
}

/// Shared state every command gets.
pub struct Ctx {
    pub policies_dir: PathBuf,
    pub catalog_path: PathBuf,
    pub output: Output,
}

/// `--repo NAME`: the policy as seen from that one repository.
pub fn pin(policy: Policy, repo: Option<&str>) -> Result<Policy> {
    match repo {
        Some(r) => policy.pinned(r),
        None => Ok(policy),
    }
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    pub async fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_path).await
    }

    /// The catalog for a command that only reads it.
    pub async fn catalog_for_reading(&self) -> Result<Catalog> {
        Catalog::open_for_reading(&self.catalog_path).await
    }

    /// Load every policy; any problem in any file is a usage error.
    pub fn load_all(&self) -> Result<Vec<Policy>> {
        let (policies, problems) = self.read_dir()?;
        if let Some(p) = problems.first() {
            let more = if problems.len() > 1 {
                format!(
                    " (and {} more; run `drctl policy check`)",
                    problems.len() - 1
                )
            } else {
                String::new()
            };
            return Err(usage(format!("{p}{more}")));
        }
        Ok(policies)
    }

    pub fn read_dir(&self) -> Result<(Vec<Policy>, Vec<policy::Problem>)> {
        policy::load_dir(&self.policies_dir).map_err(|e| {
            usage(format!(
                "cannot read policies directory {}: {e}; run `drctl init` or pass --policies DIR",
                self.policies_dir.display()
            ))
        })
    }

    /// Load one policy by name; only that file's problems matter.
    pub fn load(&self, name: &str) -> Result<Policy> {
        if !policy::valid_name(name) {
            return Err(usage(format!("'{name}' is not a policy name")));
        }
        let path = self.policies_dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(usage(format!(
                    "{}: {}",
                    path.display(),
                    policy::read_problem(&e)
                )));
            }
            Err(_) => {
                let known = self.policy_names();
                return Err(usage(format!(
                    "no policy '{name}' ({} not found); known policies: {}",
                    path.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        };
        policy::parse(&path, &text).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            usage(lines.join("; "))
        })
    }

    pub fn policy_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.policies_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let p = e.path();
                        if p.extension()? != "toml" {
                            return None;
                        }
                        Some(p.file_stem()?.to_string_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Write a JSON document to stdout.
    pub fn print_json<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// The catalog when none is named: beside the policies directory when one
/// is given (so `DRCTL_POLICIES=/srv/x/policies drctl status` reads the same
/// catalog from any working directory), `./drctl.db` beside `./policies`,
/// else the user's state directory.
/// "1 backup", "2 backups".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn default_catalog(policies: Option<&Path>) -> PathBuf {
    if let Some(dir) = policies {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if let Some(parent) = abs.parent() {
            return parent.join("drctl.db");
        }
    }
    if Path::new("policies").is_dir() {
        return PathBuf::from("drctl.db");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("drctl/catalog.db")
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // A daemon's log is its record of what ran when: info by default.
    let daemon = matches!(cli.command, Command::Daemon(_));
    let level = match cli.verbose {
        0 if daemon => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("DRCTL_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},aws_config=warn,aws_smithy_runtime=warn,sqlx=warn,hyper=warn"
        ))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Entry point of the `drctl` binary.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(&cli);
    let verbose = cli.verbose;
    // archive_command and restore_command run once per WAL file: a runtime
    // without worker threads starts faster, and their work is one blocking
    // pipeline anyway.
    let per_file = matches!(
        cli.command,
        Command::WalPush(_) | Command::WalFetch(_) | Command::WalPrefetch(_)
    );
    let built = if per_file {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drctl: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The daemon handles its own signals: a graceful stop lets jobs finish.
    let own_signals = matches!(cli.command, Command::Daemon(_));
    // restore_command's exit 1 means "absent" and ends recovery: an
    // interrupted fetch must say failure (> 125) instead.
    let forced_exit = if matches!(cli.command, Command::WalFetch(_) | Command::WalPrefetch(_)) {
        wal_fetch::FATAL as i32
    } else {
        1
    };
    let result = rt.block_on(async {
        if !own_signals {
            tokio::spawn(watch_signals(forced_exit));
        }
        run(cli).await
    });
    match result {
        Ok(code) => code,
        // Output written with `?` (not println!) meets a closed pipe here.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) && crate::cli::stdout_closed() =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            if verbose > 0 {
                eprintln!("drctl: error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            } else {
                eprintln!("drctl: error: {e:#}");
            }
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

/// `drctl list | head -1`: Rust ignores SIGPIPE, so printing to a closed
/// pipe fails and `println!` panics. A reader that has seen enough is not
/// an error: exit 0, quietly. Every other panic keeps its report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether our stdout is a pipe nobody reads any more (so a BrokenPipe
/// error was ours, not a child's or a socket's).
fn stdout_closed() -> bool {
    use std::io::Write;
    matches!(std::io::stdout().flush(), Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) || {
        // SAFETY: poll on fd 1 with no side effect beyond reporting.
        let mut p = libc::pollfd {
            fd: 1,
            events: 0,
            revents: 0,
        };
        unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLERR != 0 }
    }
}

/// How long a cancelled command may take to clean up before it exits anyway:
/// the contract is that the first SIGTERM ends any command within 10 s.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// First SIGINT/SIGTERM: cancel cleanly (uploads aborted, catalog updated).
/// Second: exit now.
async fn watch_signals(forced_exit: i32) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        if round == 0 {
            tracing::warn!("interrupted: stopping cleanly (signal again to exit at once)");
            crate::cancel::request();
            // Every loop polls the cancel flag; this is the bound for one
            // that is stuck where it cannot (a blocking call in a library).
            std::thread::spawn(move || {
                std::thread::sleep(CANCEL_GRACE);
                eprintln!(
                    "drctl: error: still running {}s after the interrupt; exiting now (an interrupted backup has no manifest and is never listed or restored as complete)",
                    CANCEL_GRACE.as_secs()
                );
                std::process::exit(forced_exit);
            });
        } else {
            std::process::exit(if forced_exit == 1 { 130 } else { forced_exit });
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Ctx {
        policies_dir: cli
            .policies
            .clone()
            .unwrap_or_else(|| PathBuf::from("policies")),
        catalog_path: cli
            .catalog
            .clone()
            .unwrap_or_else(|| default_catalog(cli.policies.as_deref())),
        output: cli.output,
    };
    match cli.command {
        Command::Init(a) => init::run(&ctx, a).await,
        Command::Policy(c) => policy_cmd::run(&ctx, c),
        Command::Check(a) => check::run(&ctx, a).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::List(a) => list::run(&ctx, a).await,
        Command::Prune(a) => prune::run(&ctx, a).await,
        Command::Copy(a) => copy::run(&ctx, a).await,
        Command::Daemon(a) => daemon::run(&ctx, a).await,
        Command::Deploy(c) => deploy::run(&ctx, c).await,
        Command::Status(a) => status::run(&ctx, a).await,
        Command::Report(a) => report::run(&ctx, a).await,
        Command::Drill(a) => drill::run(&ctx, a).await,
        Command::Pin(a) => pin::run(&ctx, a, true).await,
        Command::Unpin(a) => pin::run(&ctx, a, false).await,
        Command::Show(a) => show::run(&ctx, a).await,
        Command::Verify(a) => verify::run(&ctx, a).await,
        Command::Restore(a) => restore::run(&ctx, a).await,
        Command::RestorePoint(a) => restore_point::run(&ctx, a).await,
        Command::Catalog(c) => catalog_cmd::run(&ctx, c).await,
        Command::WalPush(a) => wal_push::run(&ctx, a).await,
        Command::WalFetch(a) => wal_fetch::run(&ctx, a).await,
        Command::WalPrefetch(a) => wal_prefetch::run(&ctx, a).await,
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(a),
    }
}

/// Find a committed backup by id: the catalog says which policy, the
/// repository (the source of truth) supplies the manifest.
pub async fn find_backup(ctx: &Ctx, id: &str) -> Result<(Policy, crate::repo::manifest::Manifest)> {
    if !crate::repo::manifest::valid_backup_id(id) {
        return Err(usage(format!(
            "'{id}' is neither a policy nor a backup id (like 20261122T101500Z-3f9a)"
        )));
    }
    let catalog = ctx.catalog_for_reading().await?;
    let mut candidates: Vec<Policy> = Vec::new();
    if let Some((row, _)) = catalog.get(id).await? {
        candidates.push(ctx.load(&row.policy)?);
    } else {
        candidates = ctx.load_all()?;
    }
    for policy in candidates {
        let Some(_) = policy.repository else { continue };
        let repo = crate::repo::open_for_reading(&policy).await?;
        let key = crate::repo::manifest::manifest_key(&policy.name, id);
        if let Some(bytes) = repo.get_bytes(&key).await? {
            let m = crate::repo::manifest::Manifest::from_json(&bytes)
                .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            return Ok((policy, m));
        }
    }
    if let Some((row, _)) = catalog.get(id).await? {
        anyhow::bail!("backup {id} is {} in the catalog and has no manifest in the repository: it is not a restorable backup", row.status);
    }
    Err(usage(format!("no backup {id}; see `drctl list`")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
