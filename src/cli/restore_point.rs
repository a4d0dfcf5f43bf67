//! `drctl restore-point POLICY NAME`: pg_create_restore_point on the
//! policy's source, its segment switched out so the archive holds it at
//! once, and the point recorded in the catalog (`list` shows it; `restore
//! --to-name` starts from the newest backup that ends before it).

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Ctx;
use crate::error::usage;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name (a physical policy: restore points live in its WAL)
    policy: String,
    /// The point's name (1 to 63 bytes), for `restore --to-name NAME`
    name: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    if policy.backup.method != crate::policy::Method::Physical {
        return Err(usage(format!(
            "policy {} takes {} backups: restore points live in the WAL of physical policies",
            policy.name,
            policy.backup.method.as_str()
        )));
    }
    crate::restore::plan::Stop::parse_name(&a.name).map_err(usage)?;
    let conn = policy.source_conn()?;
    // The switch makes the point's segment archivable now, not at the next
    // archive_timeout: a restore can reach it as soon as it is archived.
    let row = conn
        .query(
            "select pg_create_restore_point(:'name')::text, \
             to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             pg_walfile_name(pg_switch_wal())",
            &[("name", &a.name)],
        )
        .await
        .with_context(|| format!("creating restore point {} on {}", a.name, conn.url.host()))?;
    let [lsn, at, segment] = row.first().map(|r| r.as_slice()).unwrap_or_default() else {
        anyhow::bail!("the server did not answer pg_create_restore_point");
    };
    let point = crate::catalog::RestorePoint {
        policy: policy.name.clone(),
        name: a.name.clone(),
        lsn: lsn.clone(),
        at: at.clone(),
        host: crate::lock::hostname(),
    };
    ctx.catalog().await?.add_restore_point(&point).await?;
    if ctx.json() {
        ctx.print_json(&point)?;
    } else {
        println!(
            "restore point {} of policy {} at {lsn} ({at}), in WAL segment {segment}; restore it with: drctl restore {} --to-name {}",
            a.name,
            policy.name,
            policy.name,
            crate::policy::shell_word(&a.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}
