//! `drctl verify [POLICY|BACKUP_ID] [--deep]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::error::usage;
use crate::policy::Policy;
use crate::repo::manifest::Manifest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A policy name or a backup id [default: every policy]
    target: Option<String>,
    /// Also decrypt and decompress; for dumps run `pg_restore --list`
    #[arg(long)]
    deep: bool,
    /// age identity file (for --deep)
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let ids = if a.deep {
        Some(crate::pipeline::load_identities(
            a.identity.as_ref().ok_or_else(|| {
                usage("--deep decrypts: pass --identity FILE or set DRCTL_IDENTITY")
            })?,
        )?)
    } else {
        None
    };
    let mut work: Vec<(Policy, Vec<Manifest>)> = Vec::new();
    let mut incomplete = Vec::new();
    let mut corrupt = Vec::new();
    let mut unsealed: Vec<String> = Vec::new();
    match a.target.as_deref() {
        Some(t) if crate::policy::valid_name(t) && ctx.policy_names().iter().any(|n| n == t) => {
            let p = ctx.load(t)?;
            let inv = scan(&p).await?;
            incomplete.extend(inv.incomplete);
            corrupt.extend(inv.corrupt);
            unsealed.extend(inv.unsealed);
            work.push((p, inv.complete));
        }
        Some(t) => {
            let (p, m) = super::find_backup(ctx, t).await?;
            work.push((p, vec![m]));
        }
        None => {
            for p in ctx.load_all()? {
                if p.repository.is_none() {
                    continue;
                }
                let inv = scan(&p).await?;
                incomplete.extend(inv.incomplete);
                corrupt.extend(inv.corrupt);
                unsealed.extend(inv.unsealed);
                work.push((p, inv.complete));
            }
        }
    }
    let catalog = ctx.catalog().await?;
    // A manifest that fails its seal is no backup: reported, never verified
    // as one (and never restored from).
    let mut reports: Vec<crate::verify::Report> = corrupt
        .into_iter()
        .map(|(policy, id, why)| crate::verify::Report {
            id,
            policy,
            deep: false,
            ok: false,
            problems: vec![why],
        })
        .collect();
    if !ctx.json() {
        for r in &reports {
            println!("FAILED  {} ({}): {}", r.id, r.policy, r.problems.join("; "));
        }
        for id in &unsealed {
            println!("note    {id}: unsealed manifest (written before manifests carried a seal); its objects are checked, its fields cannot be");
        }
    }
    for (policy, manifests) in &work {
        let repo = crate::repo::open_for(policy).await?;
        for m in manifests {
            let r = crate::verify::verify(&*repo, m, ids.as_deref()).await?;
            catalog
                .record_verify(&r.id, r.deep, r.ok, &r.problems.join("; "))
                .await?;
            if !ctx.json() {
                if r.ok {
                    println!(
                        "ok      {} ({}{})",
                        r.id,
                        r.policy,
                        if r.deep { ", deep" } else { "" }
                    );
                } else {
                    println!("FAILED  {} ({}): {}", r.id, r.policy, r.problems.join("; "));
                }
            }
            reports.push(r);
        }
        if policy.backup.method == crate::policy::Method::Physical
            && !a
                .target
                .as_deref()
                .is_some_and(crate::repo::manifest::valid_backup_id)
        {
            let mut r =
                crate::verify::verify_wal(&*repo, &policy.name, manifests, ids.as_deref()).await?;
            // The archive can be intact and still stale: the source says
            // whether archiving is keeping up.
            if let Some(h) = crate::status::server_archive_health(policy)
                .await
                .filter(|h| h.failing == Some(true))
            {
                r.problems.push(format!(
                    "{}; WAL after the last archived segment is not in the archive (run `drctl check {}`)",
                    h.describe(),
                    policy.name
                ));
                r.ok = false;
            }
            if !ctx.json() {
                if r.ok {
                    println!(
                        "ok      WAL archive ({}{})",
                        r.policy,
                        if r.deep { ", deep" } else { "" }
                    );
                } else {
                    println!(
                        "FAILED  WAL archive ({}): {}",
                        r.policy,
                        r.problems.join("; ")
                    );
                }
            }
            reports.push(r);
        }
    }
    // What interrupted runs left, with its size: the next backup of the
    // policy or prune removes it.
    let mut left: Vec<serde_json::Value> = Vec::new();
    for (policy, _) in &work {
        let repo = crate::repo::open_for(policy).await?;
        for (p, id) in incomplete.iter().filter(|(p, _)| *p == policy.name) {
            let bytes: u64 = repo
                .list(&crate::repo::manifest::backup_prefix(p, id))
                .await?
                .iter()
                .map(|o| o.size)
                .sum();
            left.push(serde_json::json!({"policy": p, "id": id, "bytes": bytes}));
        }
        let mut leftovers = repo.leftovers(&format!("{}/", policy.name)).await?;
        leftovers.sort_by(|a, b| a.key.cmp(&b.key));
        for l in leftovers {
            left.push(serde_json::json!({"policy": policy.name, "leftover": l.key, "bytes": l.size, "age_seconds": l.age.as_secs()}));
        }
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "ok": failed == 0,
            "backups": reports,
            "incomplete": left,
            "unsealed": unsealed,
        }))?;
    } else {
        for l in &left {
            let size = crate::progress::human_bytes(l["bytes"].as_u64().unwrap_or(0));
            match (l["id"].as_str(), l["leftover"].as_str()) {
                (Some(id), _) => println!(
                    "note    {id} ({}): incomplete (no manifest), {size}; never restored from, removed by the next backup or prune",
                    l["policy"].as_str().unwrap_or("")
                ),
                (_, Some(key)) => println!(
                    "note    {key}: left by an interrupted run, {size}; removed by the next backup or prune"
                ),
                _ => {}
            }
        }
        if reports.is_empty() {
            println!("no complete backups to verify");
        } else if failed > 0 {
            eprintln!(
                "drctl: error: {failed} of {} backups failed verification",
                reports.len()
            );
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn scan(p: &Policy) -> Result<crate::repo::inventory::Inventory> {
    let repo = crate::repo::open_for(p).await?;
    crate::repo::inventory::scan(&*repo, Some(&p.name)).await
}
