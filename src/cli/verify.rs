//! `drctl verify [POLICY|BACKUP_ID] [--deep]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::error::usage;
use crate::policy::Policy;
use crate::verify::{Left, Verdict, Work};

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
    /// Read this repository only ("primary" or a [[copy]] name); default:
    /// the primary, failing over to the copies in order
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
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
    let (work, inv) = select(ctx, a.target.as_deref(), a.repo.as_deref()).await?;
    let catalog = ctx.catalog().await?;
    // A manifest that fails its seal is no backup: reported, never verified
    // as one (and never restored from).
    let mut reports: Vec<Verdict> = inv
        .corrupt
        .into_iter()
        .map(|(policy, id, why)| Verdict {
            id,
            policy,
            deep: false,
            ok: false,
            problems: vec![why],
        })
        .collect();
    let json = ctx.json();
    if !json {
        for r in &reports {
            print_report(r);
        }
        for id in &inv.unsealed {
            println!("note    {id}: unsealed manifest (written before manifests carried a seal); its objects are checked, its fields cannot be");
        }
    }
    let mut left = Vec::new();
    for w in &work {
        let mut show = |r: &Verdict| {
            if !json {
                print_report(r)
            }
        };
        reports.extend(crate::verify::policy(w, ids.as_deref(), &catalog, &mut show).await?);
    }
    for w in &work {
        left.extend(crate::verify::left_behind(&w.policy, &inv.incomplete).await?);
    }
    // Each physical policy's WAL archive is checked beside its backups:
    // reported and counted apart from them.
    let (archives, reports): (Vec<Verdict>, Vec<Verdict>) =
        reports.into_iter().partition(|r| r.id == WAL);
    let failed = reports.iter().filter(|r| !r.ok).count();
    let failed_archives: Vec<&str> = archives
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.policy.as_str())
        .collect();
    if json {
        let archives: Vec<serde_json::Value> = archives
            .iter()
            .map(|r| {
                serde_json::json!({
                    "policy": r.policy, "ok": r.ok, "deep": r.deep, "problems": r.problems,
                })
            })
            .collect();
        ctx.print_json(&serde_json::json!({
            "ok": failed == 0 && failed_archives.is_empty(),
            "backups": reports,
            "failed": failed,
            "wal_archives": archives,
            "failed_wal_archives": failed_archives.len(),
            "incomplete": left,
            "unsealed": inv.unsealed,
        }))?;
    } else {
        for l in &left {
            print_left(l);
        }
        if reports.is_empty() && archives.is_empty() {
            println!("no complete backups to verify");
        }
        if failed > 0 {
            eprintln!(
                "drctl: error: {failed} of {} failed verification",
                super::count(reports.len(), "backup", "backups")
            );
        }
        if !failed_archives.is_empty() {
            eprintln!(
                "drctl: error: the WAL archive of {} failed verification",
                failed_archives.join(", ")
            );
        }
    }
    let failed = failed + failed_archives.len();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What to verify: the backups of one policy, of every policy with a
/// repository, or one backup; and what the scans found besides.
async fn select(
    ctx: &Ctx,
    target: Option<&str>,
    repo: Option<&str>,
) -> Result<(Vec<Work>, crate::repo::inventory::Inventory)> {
    let mut work: Vec<Work> = Vec::new();
    let mut inv = crate::repo::inventory::Inventory::default();
    let mut add = |p: Policy, found: crate::repo::inventory::Inventory| {
        inv.incomplete.extend(found.incomplete);
        inv.corrupt.extend(found.corrupt);
        inv.unsealed.extend(found.unsealed);
        let wal = p.backup.method == crate::policy::Method::Physical;
        work.push(Work {
            policy: p,
            manifests: found.complete,
            wal,
        });
    };
    match target {
        Some(t) if crate::policy::valid_name(t) && ctx.policy_names().iter().any(|n| n == t) => {
            let p = super::pin(ctx.load(t)?, repo)?;
            let found = scan(&p).await?;
            add(p, found);
        }
        _ if repo.is_some() => {
            return Err(usage(
                "--repo names one policy's repository: pass the policy name (drctl verify POLICY --repo NAME)",
            ));
        }
        Some(t) => {
            // One backup: its objects, not its policy's whole archive.
            let (p, m) = super::find_backup(ctx, t).await?;
            // An incremental is verified with its chain: it restores only
            // with every link.
            let manifests = if m.parent.is_some() {
                let found = scan(&p).await?;
                let all: Vec<&crate::repo::manifest::Manifest> = found.complete.iter().collect();
                match crate::restore::chain::of(&m, &all) {
                    Ok(c) => c,
                    Err(_) => vec![m],
                }
            } else {
                vec![m]
            };
            work.push(Work {
                policy: p,
                manifests,
                wal: false,
            });
        }
        None => {
            for p in ctx.load_all()? {
                if p.repository.is_some() {
                    let found = scan(&p).await?;
                    add(p, found);
                }
            }
        }
    }
    Ok((work, inv))
}

/// The id `verify::policy` gives a policy's WAL archive's verdict.
const WAL: &str = "wal";

fn print_report(r: &Verdict) {
    let what = if r.id == WAL {
        "WAL archive".to_string()
    } else {
        r.id.clone()
    };
    if r.ok {
        println!(
            "ok      {what} ({}{})",
            r.policy,
            if r.deep { ", deep" } else { "" }
        );
    } else {
        println!("FAILED  {what} ({}): {}", r.policy, r.problems.join("; "));
    }
}

fn print_left(l: &Left) {
    match l {
        Left::Incomplete { bytes, id, policy } => println!(
            "note    {id} ({policy}): incomplete (no manifest), {}; never restored from, removed by the next backup or prune",
            crate::progress::human_bytes(*bytes)
        ),
        Left::Leftover { bytes, leftover, .. } => println!(
            "note    {leftover}: left by an interrupted run, {}; removed by the next backup or prune",
            crate::progress::human_bytes(*bytes)
        ),
    }
}

async fn scan(p: &Policy) -> Result<crate::repo::inventory::Inventory> {
    let repo = crate::repo::open_for(p).await?;
    crate::repo::inventory::scan(&*repo, Some(&p.name)).await
}
