//! `drctl backup POLICY`: one backup now.

use std::process::ExitCode;

use anyhow::Result;

use super::{list::Entry, Ctx};
use crate::progress::human_bytes;
use crate::time::parse::rfc3339;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
    /// Take a full backup, whatever [backup] incremental says
    #[arg(long, conflicts_with = "incremental")]
    full: bool,
    /// Take an incremental on the newest backup (fails, naming why, when
    /// none can be taken), past full_every and max_chain
    #[arg(long)]
    incremental: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    let catalog = ctx.catalog().await?;
    let force = match (a.full, a.incremental) {
        (true, _) => Some(crate::repo::manifest::Kind::Full),
        (_, true) => Some(crate::repo::manifest::Kind::Incremental),
        _ => None,
    };
    let opts = crate::backup::Options {
        force,
        started: None,
    };
    let out = crate::backup::run(&policy, &catalog, &ctx.catalog_path, opts).await?;
    if let Some(n) = &out.note {
        eprintln!("drctl: note: a full backup, not an incremental: {n}");
    }
    if let Some(e) = &out.prune_error {
        eprintln!(
            "drctl: warning: backup {} is complete, but pruning failed: {e}",
            out.made.id()
        );
    }
    match &out.made {
        crate::backup::Made::Rds(b) => {
            if ctx.json() {
                ctx.print_json(b)?;
            } else {
                println!(
                    "backup {} complete: policy {}, snapshot {} in {}{}, consistent at {}",
                    b.id,
                    b.policy,
                    b.snapshot,
                    b.region,
                    b.copy_region
                        .as_deref()
                        .map(|r| format!(", copied to {r}"))
                        .unwrap_or_default(),
                    b.consistent_at
                );
            }
        }
        crate::backup::Made::Repository(m) if ctx.json() => {
            ctx.print_json(&Entry::from_manifest(m))?;
        }
        crate::backup::Made::Repository(m) => {
            let secs = m.finished_at.duration_since(m.started_at).as_secs_f64();
            let kind = match &m.parent {
                Some(p) => format!(" (incremental on {p})"),
                None if m.method == crate::policy::Method::Physical => " (full)".into(),
                None => String::new(),
            };
            println!(
                "backup {}{kind} complete: policy {}, consistent at {}, {} tables ({} counts), {} -> {} stored in {:.1}s",
                m.id,
                m.policy,
                rfc3339(m.consistent_at),
                m.tables.len(),
                m.row_counts,
                human_bytes(m.source_bytes()),
                human_bytes(m.stored_bytes()),
                secs
            );
        }
    }
    if !ctx.json() {
        if let Some(r) = &out.pruned {
            super::prune::print_report(r);
        }
    }
    if !out.copy_failures.is_empty() {
        // The backup is durable in the primary; a missing second copy is
        // still a failed job.
        eprintln!(
            "drctl: error: {}",
            crate::backup::copy_failure_message(out.made.id(), &policy.name, &out.copy_failures)
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
