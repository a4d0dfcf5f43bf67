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
use crate::walarchive::{self, Fetched};

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
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    match fetch(ctx, &a).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("drctl: wal-fetch {}: error: {e:#}", a.name);
            Ok(ExitCode::from(FATAL))
        }
    }
}

async fn fetch(ctx: &Ctx, a: &Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    let path = a.identity.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "restore_command needs the private key: pass --identity FILE or set DRCTL_IDENTITY"
        )
    })?;
    let ids = crate::pipeline::load_identities(path)?;
    match walarchive::fetch(&policy, &a.name, &a.dest, &ids, a.attempts).await? {
        Fetched::Restored { bytes } => {
            tracing::info!(name = %a.name, bytes, "restored from the archive");
            Ok(ExitCode::SUCCESS)
        }
        Fetched::Absent => {
            tracing::info!(name = %a.name, "not in the archive");
            Ok(ExitCode::from(1))
        }
    }
}
