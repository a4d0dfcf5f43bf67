//! `drctl wal-prefetch` (internal): started in the background by
//! `wal-fetch` to fetch the next segments while PostgreSQL replays.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    policy: String,
    /// The segment just restored; prefetch the ones after it
    name: String,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long, default_value_t = 4)]
    count: u32,
    #[arg(long, env = "DRCTL_IDENTITY")]
    identity: PathBuf,
    #[arg(long)]
    repo: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = super::pin(ctx.load(&a.policy)?, a.repo.as_deref())?;
    let ids = crate::pipeline::load_identities(&a.identity)?;
    let n = crate::wal::fetch::prefetch(&policy, &a.name, a.count, &a.spool, &ids).await?;
    tracing::info!(fetched = n, "prefetched");
    Ok(ExitCode::SUCCESS)
}
