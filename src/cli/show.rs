//! `drctl show BACKUP_ID`: manifest and verification state.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::progress::human_bytes;
use crate::time::parse::rfc3339;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backup id
    id: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let (_policy, m) = super::find_backup(ctx, &a.id).await?;
    let catalog = ctx.catalog_for_reading().await?;
    let verification = catalog.last_verify(&m.id).await?;
    let pinned = catalog
        .get(&m.id)
        .await?
        .map(|(r, _)| r.pinned)
        .unwrap_or(false);
    // An incremental's chain, as the catalog knows the policy's backups.
    let mut entries: Vec<super::list::Entry> = catalog
        .list(Some(&m.policy))
        .await?
        .iter()
        .map(super::list::Entry::from_row)
        .collect();
    super::list::chains(&mut entries);
    let chain = entries
        .into_iter()
        .find(|e| e.id == m.id)
        .map(|e| e.chain)
        .unwrap_or_default();
    let physical = m.method == crate::policy::Method::Physical;
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "id": m.id, "policy": m.policy, "status": "complete", "pinned": pinned,
            "kind": physical.then(|| m.kind.as_str()), "parent": m.parent, "chain": chain,
            "manifest": m, "verification": verification,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("id:             {}", m.id);
    println!("policy:         {}", m.policy);
    println!("method:         {}", m.method);
    match &m.parent {
        Some(p) => println!(
            "kind:           incremental on {p}; restores with {}",
            chain.join(" <- ")
        ),
        None if physical => println!("kind:           full"),
        None => {}
    }
    println!(
        "status:         complete (manifest committed){}",
        if pinned { ", pinned" } else { "" }
    );
    println!("started:        {}", rfc3339(m.started_at));
    println!("finished:       {}", rfc3339(m.finished_at));
    println!(
        "consistent at:  {}",
        crate::time::parse::rfc3339_exact(m.consistent_at)
    );
    println!(
        "source:         {} on {} (PostgreSQL {})",
        m.source.database, m.source.host, m.source.server_version
    );
    if let Some(v) = &m.source.pg_dump_version {
        println!("pg_dump:        {v}");
    }
    println!(
        "size:           {} plain, {} stored (zstd {}, {})",
        human_bytes(m.source_bytes()),
        human_bytes(m.stored_bytes()),
        m.compression.level,
        m.encryption.algorithm
    );
    println!("recipients:     {}", m.encryption.recipients.join(", "));
    for o in &m.objects {
        println!(
            "object:         {} sha256(stored) {}",
            o.key, o.stored_sha256
        );
    }
    println!(
        "tables:         {} ({} row counts)",
        m.tables.len(),
        m.row_counts
    );
    for t in &m.tables {
        println!("  {:>12}  {}.{}", t.rows, t.schema, t.name);
    }
    match verification {
        Some(v) => println!(
            "verified:       {} at {} ({}){}",
            if v.ok { "ok" } else { "FAILED" },
            rfc3339(v.at),
            if v.deep { "deep" } else { "checksums" },
            if v.ok {
                String::new()
            } else {
                format!(": {}", v.detail)
            }
        ),
        None => println!("verified:       never; run `drctl verify {}`", m.id),
    }
    Ok(ExitCode::SUCCESS)
}
