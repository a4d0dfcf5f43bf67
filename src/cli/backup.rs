//! `drctl backup POLICY`: one backup now.

use std::process::ExitCode;

use anyhow::Result;

use super::{list::Entry, Ctx};
use crate::progress::human_bytes;
use crate::timeparse::rfc3339;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    // Cron and the daemon share this lock: one job per policy at a time.
    let _lock = crate::lock::acquire(&ctx.catalog_path, &policy.name, "backup")?;
    let catalog = ctx.catalog().await?;
    let m = crate::backup::run(&policy, &catalog).await?;
    // Retention runs after each successful backup. The backup is durable
    // whatever happens here, so a failed prune is reported, not fatal.
    let pruned = if crate::retention::Rules::from_policy(&policy.retention).is_empty() {
        None
    } else {
        let r = async {
            let repo = crate::backup::open_repo(&policy).await?;
            crate::prune::run(&policy, &*repo, &catalog, false).await
        }
        .await;
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "drctl: warning: backup {} is complete, but pruning failed: {e:#}",
                    m.id
                );
                None
            }
        }
    };
    if ctx.json() {
        ctx.print_json(&Entry::from_manifest(&m))?;
    } else {
        let secs = m.finished_at.duration_since(m.started_at).as_secs_f64();
        println!(
            "backup {} complete: policy {}, consistent at {}, {} tables ({} counts), {} -> {} stored in {:.1}s",
            m.id,
            m.policy,
            rfc3339(m.consistent_at),
            m.tables.len(),
            m.row_counts,
            human_bytes(m.source_bytes()),
            human_bytes(m.stored_bytes()),
            secs
        );
        if let Some(r) = &pruned {
            super::prune::print_report(r);
        }
    }
    Ok(ExitCode::SUCCESS)
}
