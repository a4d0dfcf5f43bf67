//! `drctl list [POLICY]`: backups, newest first.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::catalog::BackupRow;
use crate::progress::human_bytes;
use crate::repo::manifest::Manifest;
use crate::time::parse::{rfc3339, rfc3339_ceil};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this policy
    policy: Option<String>,
}

/// One backup in `list --output json` (contract fields first).
#[derive(Debug, Serialize)]
pub struct Entry {
    pub id: String,
    pub policy: String,
    pub method: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub consistent_at: Option<String>,
    pub stored_bytes: Option<i64>,
    pub source_bytes: Option<i64>,
    pub pinned: bool,
    pub error: Option<String>,
    /// Physical: "full" or "incremental".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// An incremental's parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// An incremental's chain, its full first and itself last: what a
    /// restore of it reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Physical: how far this backup can be rolled forward with the
    /// archived WAL (the end of its recoverable window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<String>,
    /// Where a complete backup lives: "primary" and the [[copy]] names
    /// that hold it (policies with copies only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// The host whose drctl ran it (a shared catalog's workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Entry {
    pub fn from_row(r: &BackupRow) -> Entry {
        Entry {
            id: r.id.clone(),
            policy: r.policy.clone(),
            method: r.method.clone(),
            status: r.status.clone(),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            // Rounded up: a time copied from here selects this backup.
            consistent_at: r.consistent_at.map(rfc3339_ceil),
            stored_bytes: r.stored_bytes,
            source_bytes: r.source_bytes,
            pinned: r.pinned,
            error: r.error.clone(),
            kind: (r.method == "physical").then(|| r.kind.clone()),
            parent: r.parent.clone(),
            chain: Vec::new(),
            recoverable_until: None,
            repositories: Vec::new(),
            host: r.host.clone(),
        }
    }

    pub fn from_manifest(m: &Manifest) -> Entry {
        Entry {
            id: m.id.clone(),
            policy: m.policy.clone(),
            method: m.method.to_string(),
            status: "complete".into(),
            started_at: Some(rfc3339(m.started_at)),
            finished_at: Some(rfc3339(m.finished_at)),
            consistent_at: Some(rfc3339_ceil(m.consistent_at)),
            stored_bytes: Some(m.stored_bytes() as i64),
            source_bytes: Some(m.source_bytes() as i64),
            pinned: false,
            error: None,
            kind: (m.method == crate::policy::Method::Physical).then(|| m.kind.as_str().into()),
            parent: m.parent.clone(),
            chain: Vec::new(),
            recoverable_until: None,
            repositories: Vec::new(),
            host: None,
        }
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    if let Some(p) = &a.policy {
        ctx.load(p)?;
    }
    let catalog = ctx.catalog_for_reading().await?;
    let rows = catalog.list(a.policy.as_deref()).await?;
    let mut entries: Vec<Entry> = rows.iter().map(Entry::from_row).collect();
    chains(&mut entries);
    let windows = windows(ctx, &mut entries).await;
    repositories(ctx, &catalog, &rows, &mut entries).await?;
    if ctx.json() {
        ctx.print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!(
            "no backups{} in catalog {} (`drctl catalog rebuild` fills it from the repositories)",
            a.policy.map(|p| format!(" of {p}")).unwrap_or_default(),
            crate::catalog::shown(&ctx.catalog_path)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<16} {:<8} {:<9} {:<21} {:>10} {:>10}",
        "ID", "POLICY", "METHOD", "STATUS", "CONSISTENT AT", "STORED", "SOURCE"
    );
    for e in &entries {
        println!(
            "{:<22} {:<16} {:<8} {:<9} {:<21} {:>10} {:>10}{}",
            e.id,
            e.policy,
            e.method,
            e.status,
            e.consistent_at.as_deref().unwrap_or("-"),
            e.stored_bytes
                .map(|b| human_bytes(b as u64))
                .unwrap_or_else(|| "-".into()),
            e.source_bytes
                .map(|b| human_bytes(b as u64))
                .unwrap_or_else(|| "-".into()),
            if e.pinned { "  pinned" } else { "" }
        );
        if let Some(p) = &e.parent {
            println!(
                "{:<22} incremental on {p}; restores with {}: {}",
                "",
                super::count(e.chain.len(), "backup", "backups"),
                e.chain.join(" <- ")
            );
        }
        if !e.repositories.is_empty() {
            println!("{:<22} in: {}", "", e.repositories.join(", "));
        }
        match (&e.error, e.status.as_str()) {
            (Some(err), "failed") => {
                println!("{:<22} error: {}", "", err.lines().next().unwrap_or(""))
            }
            (Some(err), "cancelled") => {
                println!("{:<22} stopped: {}", "", err.lines().next().unwrap_or(""))
            }
            _ => {}
        }
    }
    for (policy, w) in &windows {
        println!("recoverable window of {policy}: {w}");
        for p in catalog.restore_points(policy).await? {
            println!(
                "restore point of {policy}: {} at {} ({})",
                p.name, p.lsn, p.at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fill `chain` for incrementals (a broken chain lists what there is,
/// from the first missing link's child on).
pub fn chains(entries: &mut [Entry]) {
    use crate::backup::incremental::{chain, Link};
    use crate::repo::manifest::Kind;
    let links: Vec<Link> = entries
        .iter()
        .filter(|e| e.status == "complete" && e.kind.is_some())
        .map(|e| Link {
            id: e.id.clone(),
            kind: if e.parent.is_some() {
                Kind::Incremental
            } else {
                Kind::Full
            },
            parent: e.parent.clone(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
        })
        .collect();
    for e in entries.iter_mut().filter(|e| e.parent.is_some()) {
        e.chain = chain(&e.id, &links).unwrap_or_else(|_| vec![e.id.clone()]);
    }
}

/// Fill `repositories` for the complete backups of policies with copies:
/// the primary unless the row came from a copy (a rebuild after the
/// primary was lost), and every copy the catalog says holds it.
async fn repositories(
    ctx: &Ctx,
    catalog: &crate::catalog::Catalog,
    rows: &[crate::catalog::BackupRow],
    entries: &mut [Entry],
) -> Result<()> {
    let copies = catalog.copies(None).await?;
    let mut policies: std::collections::HashMap<String, Option<crate::policy::Policy>> =
        Default::default();
    for (e, r) in entries.iter_mut().zip(rows) {
        let policy = policies
            .entry(r.policy.clone())
            .or_insert_with(|| ctx.load(&r.policy).ok());
        let Some(p) = policy.as_ref().filter(|p| !p.copies.is_empty()) else {
            continue;
        };
        if e.status != "complete" {
            continue;
        }
        let from_copy = p
            .copies
            .iter()
            .any(|c| r.repository.as_deref() == Some(c.repository.url.as_str()));
        if !from_copy {
            e.repositories.push(crate::policy::PRIMARY.to_string());
        }
        e.repositories
            .extend(copies.get(&e.id).into_iter().flatten().cloned());
    }
    Ok(())
}

/// Fill `recoverable_until` for physical backups from the WAL archive and
/// return each physical policy's window for display. A policy or
/// repository that cannot be read is reported, not fatal: `list` still
/// shows what the catalog knows.
async fn windows(ctx: &Ctx, entries: &mut [Entry]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut policies: Vec<String> = entries
        .iter()
        .filter(|e| e.method == "physical")
        .map(|e| e.policy.clone())
        .collect();
    policies.dedup();
    for name in policies {
        let Ok(policy) = ctx.load(&name) else {
            continue;
        };
        let result = async {
            let repo = crate::repo::open_for(&policy).await?;
            let w = crate::wal::archive::window(&*repo, &name).await?;
            for (id, until) in &w.per_backup {
                if let Some(e) = entries.iter_mut().find(|e| &e.id == id) {
                    e.recoverable_until = until.map(rfc3339);
                }
            }
            anyhow::Ok(w.describe())
        }
        .await;
        match result {
            Ok(w) => out.push((name, w)),
            Err(e) => {
                tracing::warn!(policy = %name, "cannot compute the recoverable window: {e:#}")
            }
        }
    }
    out
}
