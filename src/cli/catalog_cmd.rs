//! `drctl catalog rebuild`: recreate backup rows from repository manifests.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCmd {
    /// Recreate the catalog's backups from the repositories alone (no key needed)
    Rebuild,
}

pub async fn run(ctx: &Ctx, cmd: CatalogCmd) -> Result<ExitCode> {
    let CatalogCmd::Rebuild = cmd;
    let policies = ctx.load_all()?;
    let catalog = match ctx.catalog().await {
        Err(e) if crate::catalog::damaged(&e) => {
            // The repositories are the source of truth: start afresh and
            // keep the damaged file for a look.
            let aside = ctx.catalog_path.with_extension(format!(
                "damaged-{}",
                jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
            ));
            std::fs::rename(&ctx.catalog_path, &aside).with_context(|| {
                format!(
                    "cannot move the damaged catalog {} aside",
                    ctx.catalog_path.display()
                )
            })?;
            for side in &crate::catalog::files(&ctx.catalog_path)[1..] {
                let _ = std::fs::remove_file(side);
            }
            eprintln!(
                "drctl: the catalog {} was damaged; moved it to {} and rebuilding a new one (backups come back from the repositories; run and drill history does not)",
                ctx.catalog_path.display(),
                aside.display()
            );
            ctx.catalog().await?
        }
        r => r?,
    };
    let mut seen_repos: Vec<String> = Vec::new();
    let (mut complete, mut incomplete, mut forgotten) = (0usize, 0usize, 0u64);
    let mut by_policy: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut rds = 0usize;
    for p in &policies {
        if p.backup.method == crate::policy::Method::RdsSnapshot {
            let ids = crate::rds::rebuild(p, &catalog).await?;
            rds += ids.len();
            complete += ids.len();
            by_policy.insert(p.name.clone(), ids);
            continue;
        }
        let Some(cfg) = &p.repository else { continue };
        by_policy.entry(p.name.clone()).or_default();
        if seen_repos.contains(&cfg.url) {
            continue;
        }
        seen_repos.push(cfg.url.clone());
        let repo = crate::repo::open(cfg).await?;
        let inv = crate::repo::inventory::scan(&*repo, None).await?;
        for m in &inv.complete {
            catalog.upsert_complete(m, repo.url()).await?;
            by_policy
                .entry(m.policy.clone())
                .or_default()
                .push(m.id.clone());
            complete += 1;
        }
        incomplete += inv.incomplete.len();
        let policies: std::collections::BTreeSet<&str> =
            inv.complete.iter().map(|m| m.policy.as_str()).collect();
        for policy in policies {
            for id in crate::prune::pinned_ids(&*repo, policy).await? {
                catalog.set_pinned(&id, true).await?;
            }
        }
    }
    // Every copy: where each backup lives, and the backups only a copy
    // still has (the primary lost) come back as rows too.
    for p in &policies {
        for c in &p.copies {
            let repo = crate::repo::open(&c.repository).await?;
            let inv = crate::repo::inventory::scan(&*repo, Some(&p.name))
                .await
                .with_context(|| format!("copy {} of policy {}", c.name, p.name))?;
            let ids = by_policy.entry(p.name.clone()).or_default();
            let mut present = Vec::new();
            for m in &inv.complete {
                if !ids.contains(&m.id) {
                    catalog.upsert_complete(m, repo.url()).await?;
                    ids.push(m.id.clone());
                    complete += 1;
                }
                catalog.record_copy(&p.name, &m.id, &c.name).await?;
                present.push(m.id.clone());
            }
            catalog
                .forget_copy_missing(&p.name, &c.name, &present)
                .await?;
            if !seen_repos.contains(&c.repository.url) {
                seen_repos.push(c.repository.url.clone());
            }
        }
    }
    for (policy, ids) in &by_policy {
        forgotten += catalog.forget_missing(policy, ids).await?;
    }
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "repositories": seen_repos, "backups": complete, "incomplete": incomplete, "removed": forgotten,
            "rds_snapshots": rds,
        }))?;
    } else {
        println!(
            "catalog rebuilt from {} and RDS tags: {} ({}), {incomplete} incomplete (no manifest) ignored, {} removed",
            super::count(seen_repos.len(), "repository", "repositories"),
            super::count(complete, "backup", "backups"),
            super::count(rds, "RDS snapshot", "RDS snapshots"),
            super::count(forgotten as usize, "stale row", "stale rows"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
