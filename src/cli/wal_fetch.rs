//! `drctl wal-fetch POLICY NAME DEST`: PostgreSQL's restore_command.
//!
//! Exit 0: restored. Exit 1: not in the archive (PostgreSQL probes for
//! files that do not exist). Exit 126: anything else, including a bad
//! policy or key, so recovery stops instead of ending early and promoting
//! at the wrong point.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::wal::fetch::{self, Fetched};

/// The exit status that makes PostgreSQL abort recovery (> 125).
pub const FATAL: u8 = 126;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
    /// The archived file name (%f)
    name: String,
    /// Where to write it (%p)
    dest: PathBuf,
    /// age identity file (private key)
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Attempts before giving up on a failing repository
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Segments to fetch ahead in the background while PostgreSQL replays (0: off)
    #[arg(long, default_value_t = 4)]
    prefetch: u32,
    /// Read this repository only ("primary" or a [[copy]] name); default:
    /// the primary, failing over to the copies in order
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    // Recovery waits on each segment: a silent repository answers 126
    // within two request_timeouts, not after every retry.
    crate::repo::silence::set_silent_timeouts(1);
    let r = tokio::select! {
        r = fetch(ctx, &a) => r,
        () = crate::cancel::cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    match r {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("drctl: wal-fetch {}: error: {e:#}", a.name);
            Ok(ExitCode::from(FATAL))
        }
    }
}

async fn fetch(ctx: &Ctx, a: &Args) -> Result<ExitCode> {
    let policy = super::pin(ctx.load(&a.policy)?, a.repo.as_deref())?;
    let path = a.identity.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "restore_command needs the private key: pass --identity FILE or set DRCTL_IDENTITY"
        )
    })?;
    let ids = crate::pipeline::load_identities(path)?;
    let spool = fetch::spool_dir(&a.dest).filter(|_| a.prefetch > 0);
    if let Some(spool) = &spool {
        if fetch::take_prefetched(spool, &a.name, &a.dest) {
            tracing::info!(name = %a.name, "restored from the prefetch spool");
            spawn_prefetch(ctx, a, path, spool);
            return Ok(ExitCode::SUCCESS);
        }
    }
    match fetch::fetch(&policy, &a.name, &a.dest, &ids, a.attempts).await? {
        Fetched::Restored { bytes } => {
            tracing::info!(name = %a.name, bytes, "restored from the archive");
            if let Some(spool) = &spool {
                spawn_prefetch(ctx, a, path, spool);
            }
            Ok(ExitCode::SUCCESS)
        }
        Fetched::Absent => {
            tracing::info!(name = %a.name, "not in the archive");
            // The end of the archive (or a probe): nothing ahead to keep.
            if let Some(spool) = &spool {
                if crate::wal::parse(&a.name).is_ok_and(|w| w.kind == crate::wal::FileKind::Segment)
                {
                    let _ = std::fs::remove_dir_all(spool);
                }
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Start a detached `wal-prefetch` for the segments after this one. Best
/// effort: a failure here only costs speed, never correctness, because
/// every segment is still fetched and checked on demand.
fn spawn_prefetch(ctx: &Ctx, a: &Args, identity: &std::path::Path, spool: &std::path::Path) {
    if crate::wal::parse(&a.name).map_or(true, |w| w.kind != crate::wal::FileKind::Segment) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let policies = std::path::absolute(&ctx.policies_dir).unwrap_or(ctx.policies_dir.clone());
    let r = std::process::Command::new(exe)
        .arg("--policies")
        .arg(policies)
        .args([
            "wal-prefetch",
            &a.policy,
            &a.name,
            "--count",
            &a.prefetch.to_string(),
        ])
        .arg("--spool")
        .arg(spool)
        .arg("--identity")
        .arg(identity)
        .args(a.repo.iter().flat_map(|r| ["--repo", r.as_str()]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = r {
        tracing::warn!("cannot start prefetching: {e}");
    }
}
