//! `drctl copy POLICY [--to NAME] [--backup ID]`: bring copies level with
//! the primary, objects as stored (no key needed).

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::error::usage;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
    /// Only this copy ([[copy]] name) [default: every copy]
    #[arg(long, value_name = "NAME")]
    to: Option<String>,
    /// Only this backup (and no WAL)
    #[arg(long, value_name = "ID")]
    backup: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    if policy.copies.is_empty() {
        return Err(usage(format!(
            "policy {} has no [[copy]] repositories to copy to",
            policy.name
        )));
    }
    if let Some(to) = &a.to {
        if !policy.copies.iter().any(|c| c.name == *to) {
            let names: Vec<&str> = policy.copies.iter().map(|c| c.name.as_str()).collect();
            return Err(usage(format!(
                "policy {} has no copy named '{to}'; its copies: {}",
                policy.name,
                names.join(", ")
            )));
        }
    }
    let mut all = crate::repo::open_all(&policy).await?.into_iter();
    let primary = all.next().expect("the primary comes first");
    // "Nothing to copy" only from a primary that provably exists.
    if !crate::repo::has_marker(&*primary.repo).await? {
        let catalog = ctx.catalog_for_reading().await?;
        let held = catalog.copies(Some(&policy.name)).await.unwrap_or_default();
        let mut by_copy: std::collections::BTreeMap<&str, usize> = Default::default();
        for repos in held.values() {
            for r in repos.iter().filter(|r| *r != crate::policy::PRIMARY) {
                *by_copy.entry(r.as_str()).or_default() += 1;
            }
        }
        let holders = if by_copy.is_empty() {
            "the catalog knows of no copy holding its backups".to_string()
        } else {
            let list: Vec<String> = by_copy
                .iter()
                .map(|(c, n)| format!("{c} ({})", super::count(*n, "backup", "backups")))
                .collect();
            format!(
                "its backups are still held by {}: restore with --repo {}",
                list.join(", "),
                by_copy.keys().next().expect("non-empty")
            )
        };
        anyhow::bail!(
            "the primary repository {} of policy {} is missing (no drctl-repo.json there: a folder gone, a wrong URL or bucket); nothing was copied; {holders}",
            primary.repo.url(),
            policy.name
        );
    }
    // Backups must not be pruned or written meanwhile (the guard comes
    // after the primary is known to exist: a missing primary has no lease).
    let catalog = ctx.catalog().await?;
    let guard = crate::guard::run_guard(&ctx.catalog_path, &policy, "copy", Some(&catalog)).await?;
    let reports = guard
        .around(async {
            // One backup: found once here (an unknown id is the caller's
            // mistake), not again per copy.
            let one = match &a.backup {
                Some(id) => {
                    let inv =
                        crate::repo::inventory::scan(&*primary.repo, Some(&policy.name)).await?;
                    let m = inv.find(id).cloned().ok_or_else(|| {
                        usage(format!(
                            "no complete backup {id} of policy {} in the primary repository; see `drctl list {}`",
                            policy.name, policy.name
                        ))
                    })?;
                    Some(m)
                }
                None => None,
            };
            let scope = match &one {
                Some(m) => crate::copy::Scope::Backup(m),
                None => crate::copy::Scope::Everything,
            };
            let mut reports = Vec::new();
            for to in all.filter(|c| a.to.as_ref().is_none_or(|t| *t == c.name)) {
                reports.push(crate::copy::level(&policy, &*primary.repo, &to, scope, &catalog).await);
            }
            anyhow::Ok(reports)
        })
        .await?;
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if ctx.json() {
        ctx.print_json(&reports)?;
    } else {
        for r in &reports {
            println!(
                "copy {} of policy {}: {}{} copied, {}",
                r.copy,
                r.policy,
                super::count(r.backups.len(), "backup", "backups"),
                if a.backup.is_some() {
                    String::new()
                } else {
                    format!(" and {} WAL files", r.wal_files)
                },
                crate::progress::human_bytes(r.bytes)
            );
            if let Some(e) = &r.error {
                eprintln!("drctl: error: copy {} is not level: {e}", r.copy);
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
