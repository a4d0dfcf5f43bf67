//! `drctl wal-push POLICY PATH`: PostgreSQL's archive_command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::wal::push::{self, Pushed};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
    /// The file to archive (%p)
    path: PathBuf,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    let started = std::time::Instant::now();
    match push::push(&policy, &a.path).await? {
        Pushed::Archived(s) => tracing::info!(
            name = %s.name,
            plain = s.plain_bytes,
            stored = s.stored_bytes,
            ms = started.elapsed().as_millis() as u64,
            "archived"
        ),
        Pushed::AlreadyArchived => {
            tracing::info!(path = %a.path.display(), "already archived with identical content")
        }
    }
    // Durable in the primary; now every copy (a retry of a file already
    // archived tries the copies again: that is how a lagging copy's
    // failure clears).
    if !policy.copies.is_empty() {
        crate::copy::after_push(&policy, &a.path).await?;
    }
    Ok(ExitCode::SUCCESS)
}
