//! `drctl prune [POLICY] [--dry-run]`: apply retention, print keep/delete
//! and the rules that decided.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::prune::{Entry, Pruned};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name (default: every policy with a repository)
    policy: Option<String>,
    /// Show what would be deleted and change nothing
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policies = match &a.policy {
        Some(p) => vec![ctx.load(p)?],
        None => ctx
            .load_all()?
            .into_iter()
            .filter(|p| {
                p.repository.is_some() || p.backup.method == crate::policy::Method::RdsSnapshot
            })
            .collect(),
    };
    let catalog = ctx.catalog().await?;
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for policy in &policies {
        let guard =
            crate::guard::run_guard(&ctx.catalog_path, policy, "prune", Some(&catalog)).await?;
        let primary_failed = guard
            .around(async {
                if policy.backup.method == crate::policy::Method::RdsSnapshot {
                    reports.push(crate::rds::prune(policy, &catalog, a.dry_run).await?);
                    return Ok(());
                }
                for (name, r) in crate::prune::everywhere(policy, &catalog, a.dry_run).await {
                    match r {
                        Ok(r) => reports.push(r),
                        // The primary's failure fails the command as before; a
                        // copy's is reported after the rest is done.
                        Err(e) if name == crate::policy::PRIMARY => return Err(e),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
                Ok(())
            })
            .await;
        primary_failed?;
    }
    if ctx.json() {
        // Each entry says whether it was done or only planned: the
        // contract's array stays an array.
        let mut all = Vec::new();
        for e in reports.into_iter().flat_map(json_entries) {
            let mut v = serde_json::to_value(e)?;
            v["dry_run"] = a.dry_run.into();
            all.push(v);
        }
        ctx.print_json(&all)?;
    } else {
        for r in &reports {
            print_report(r);
        }
    }
    for e in &failed {
        eprintln!("drctl: error: prune of {e}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The contract's array: backups, and incomplete ones as deletions.
fn json_entries(r: Pruned) -> Vec<Entry> {
    let mut v = r.backups;
    for id in r.incomplete {
        v.push(Entry {
            id,
            policy: r.policy.clone(),
            method: r.method,
            consistent_at: None,
            action: "delete",
            reasons: vec!["incomplete".into()],
            stored_bytes: 0,
            repository: r.repository.clone(),
        });
    }
    v
}

pub fn print_report(r: &Pruned) {
    let kept = r.backups.iter().filter(|e| e.action == "keep").count();
    let deleted = r.backups.len() - kept;
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let place = r
        .repository
        .as_deref()
        .map(|c| format!(" (copy {c})"))
        .unwrap_or_default();
    let mut line = format!("prune {}{place}: {kept} kept, {deleted} {verb}", r.policy);
    if !r.incomplete.is_empty() {
        line.push_str(&format!(", {} incomplete {verb}", r.incomplete.len()));
    }
    if r.leftovers > 0 {
        line.push_str(&format!(
            ", {} leftovers of interrupted runs ({}) {verb}",
            r.leftovers,
            crate::progress::human_bytes(r.leftover_bytes)
        ));
    }
    if let Some(from) = &r.wal_kept_from {
        line.push_str(&format!(
            ", {} WAL files {verb} (WAL kept from {from})",
            r.wal_files
        ));
    }
    if r.wal_locked > 0 {
        line.push_str(&format!(
            ", {} WAL files kept under Object Lock",
            r.wal_locked
        ));
    }
    if r.dry_run {
        line.push_str(" — dry run, nothing changed");
    }
    println!("{line}");
    if r.no_rules {
        println!("  (the policy has no [retention] rules: everything is kept)");
    }
    for e in &r.backups {
        let why = if e.reasons.is_empty() {
            "no rule keeps it".to_string()
        } else {
            e.reasons.join(", ")
        };
        println!(
            "  {:<6}  {}  {}  {}",
            e.action,
            e.id,
            e.consistent_at.as_deref().unwrap_or(""),
            why
        );
    }
    for id in &r.incomplete {
        println!("  delete  {id}  incomplete (no manifest)");
    }
}
