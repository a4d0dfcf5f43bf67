//! `drctl pin BACKUP_ID` / `drctl unpin BACKUP_ID`: pinned backups are never
//! pruned.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backup id (see `drctl list`)
    id: String,
}

pub async fn run(ctx: &Ctx, a: Args, pinned: bool) -> Result<ExitCode> {
    let (policy, m) = super::find_backup(ctx, &a.id).await?;
    let repo = crate::repo::open_for(&policy).await?;
    let catalog = ctx.catalog().await?;
    crate::prune::set_pinned(&*repo, &catalog, &m, pinned).await?;
    if ctx.json() {
        ctx.print_json(&serde_json::json!({ "id": m.id, "policy": m.policy, "pinned": pinned }))?;
    } else if pinned {
        println!("pinned {} (policy {}): prune will keep it", m.id, m.policy);
    } else {
        println!(
            "unpinned {} (policy {}): retention rules decide again",
            m.id, m.policy
        );
    }
    Ok(ExitCode::SUCCESS)
}
