//! `drctl restore POLICY (--to TIME | --backup ID | --latest) --target URL`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::ArgGroup;

use super::Ctx;
use crate::error::usage;
use crate::progress::human_bytes;
use crate::restore::plan::Target;
use crate::time::parse::{parse_time, rfc3339_exact};

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("point").required(true).multiple(true).args(["to", "backup", "latest", "to_lsn", "to_xid", "to_name"])))]
#[command(group(ArgGroup::new("stop").args(["to_lsn", "to_xid", "to_name"]).conflicts_with_all(["to", "latest"])))]
#[command(group(ArgGroup::new("dest").args(["target", "target_dir", "target_instance"])))]
pub struct Args {
    /// Policy name
    policy: String,
    /// Restore the state as of TIME (RFC 3339, 'YYYY-MM-DD HH:MM[:SS]' local, '2h-ago', 'now')
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Restore this backup: its consistent state (physical: recovery_target
    /// 'immediate'), or with --to, replayed from it up to TIME
    #[arg(long, value_name = "ID")]
    backup: Option<String>,
    /// Restore the newest backup
    #[arg(long, conflicts_with_all = ["to", "backup"])]
    latest: bool,
    /// Physical: replay up to this WAL position (16/B374D848), from the
    /// newest backup that ends before it (or --backup ID)
    #[arg(long, value_name = "LSN")]
    to_lsn: Option<String>,
    /// Physical: replay up to and including this transaction (the number
    /// txid_current() returned), from the newest backup (or --backup ID)
    #[arg(long, value_name = "XID")]
    to_xid: Option<String>,
    /// Physical: replay up to this restore point (`drctl restore-point` or
    /// pg_create_restore_point), from the newest backup (or --backup ID)
    #[arg(long, value_name = "NAME")]
    to_name: Option<String>,
    /// Physical: what the server does at the target [default: promote]
    #[arg(long, value_enum, value_name = "ACTION")]
    target_action: Option<crate::restore::plan::Action>,
    /// Target database (created if absent): postgres://user@host:5432/newdb
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// Target data directory (physical backups)
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Target RDS instance (rds-snapshot backups)
    #[arg(long, value_name = "RDS_ID")]
    target_instance: Option<String>,
    /// age identity file (private key)
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Read this repository only ("primary" or a [[copy]] name); default:
    /// the primary, failing over to the copies in order
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    /// pg_restore parallelism [default: the policy's [backup] jobs, else 1]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Replace the contents of an existing, non-empty target database
    #[arg(long)]
    force: bool,
    /// Allow --target to be the policy's own source database (its data
    /// written since the backup is lost; the plan says how much)
    #[arg(long)]
    overwrite_source: bool,
    /// Do not restore object ownership (when the roles do not exist on the target)
    #[arg(long)]
    no_owner: bool,
    /// Do not restore privileges (GRANT/REVOKE)
    #[arg(long)]
    no_acl: bool,
    /// RDS: return once the restore has started, without waiting for the
    /// new instance to become available
    #[arg(long)]
    no_wait: bool,
    /// Start the restored server (physical restores)
    #[arg(long)]
    start: bool,
    /// Port for --start (default: a free port, printed; never 5432)
    #[arg(long, requires = "start")]
    port: Option<u16>,
    /// Restore a tablespace elsewhere: OLD is its OID or its directory on the
    /// source (default: where it was). Repeatable.
    #[arg(long, value_name = "OLD=NEW")]
    tablespace_map: Vec<String>,
    /// Physical: keep the source's archive settings, for a server that
    /// replaces the primary (default: archive_mode = 'off')
    #[arg(long)]
    keep_archiving: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = super::pin(ctx.load(&a.policy)?, a.repo.as_deref())?;
    let physical = policy.backup.method == crate::policy::Method::Physical;
    let rds = policy.backup.method == crate::policy::Method::RdsSnapshot;
    // Replay targets exist only where WAL is replayed.
    if !physical
        && (a.to_lsn.is_some()
            || a.to_xid.is_some()
            || a.to_name.is_some()
            || a.target_action.is_some())
    {
        return Err(usage(format!(
            "policy {} takes {} backups: --to-lsn, --to-xid, --to-name and --target-action are for physical policies (WAL replay)",
            policy.name,
            policy.backup.method.as_str()
        )));
    }
    if rds {
        return run_rds(ctx, &a, policy).await;
    }
    if a.target_instance.is_some() {
        return Err(usage(format!(
            "policy {} is not an RDS policy: --target-instance is for rds-snapshot policies",
            policy.name
        )));
    }
    if physical && a.target.is_some() {
        return Err(usage(format!(
            "policy {} takes physical backups: restore them with --target-dir DIR, not --target",
            policy.name
        )));
    }
    if !physical && a.to.is_some() && a.backup.is_some() {
        return Err(usage(format!(
            "policy {} takes dumps: a dump restores to its own snapshot; pass --backup ID or --to TIME, not both",
            policy.name
        )));
    }
    if !physical
        && (a.target_dir.is_some() || a.start || !a.tablespace_map.is_empty() || a.keep_archiving)
    {
        return Err(usage(format!(
            "policy {} takes dumps: restore them into a database with --target postgres://host/newdb",
            policy.name
        )));
    }
    if physical && a.jobs.is_some() {
        return Err(usage(format!(
            "policy {} takes physical backups: --jobs is pg_restore's parallelism for dump policies",
            policy.name
        )));
    }
    if physical {
        return run_physical(ctx, &a, policy).await;
    }
    if a.target.is_none() && !a.dry_run {
        return Err(usage(
            "where to? pass --target postgres://user@host:5432/newdb",
        ));
    }
    let target = resolve_target(ctx, &a)?;
    let req = crate::restore::dump::Request {
        target,
        database: a.target.clone(),
        identity: a.identity.clone(),
        jobs: a.jobs.or(policy.backup.jobs).unwrap_or(1),
        dry_run: a.dry_run,
        lease_catalog: Some(ctx.catalog_path.clone()),
        force: a.force,
        overwrite_source: a.overwrite_source,
        no_owner: a.no_owner,
        no_acl: a.no_acl,
    };
    let outcome = crate::restore::dump::run(&policy, &req).await?;
    if ctx.json() {
        ctx.print_json(&outcome)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout();
    print_plan(&mut out, &outcome.plan)?;
    if a.dry_run {
        println!("dry run: nothing was changed");
    } else {
        println!(
            "restored {} into {} in {:.1}s ({}{})",
            outcome.plan.backup_id,
            a.target.as_deref().unwrap_or("-"),
            outcome.duration_seconds,
            human_bytes(outcome.plan.source_bytes),
            if outcome.created_database {
                ", database created"
            } else {
                ""
            }
        );
        println!("next: run ANALYZE on the restored database before serving traffic");
    }
    Ok(ExitCode::SUCCESS)
}

/// Parse --to/--backup/--latest; relative times resolve against now and are
/// echoed as absolute UTC.
fn resolve_target(ctx: &Ctx, a: &Args) -> Result<Target> {
    let now = jiff::Timestamp::now();
    Ok(match (&a.to, &a.backup) {
        (Some(t), _) => {
            let ts = parse_time(t, now, &jiff::tz::TimeZone::system())
                .map_err(|e| usage(format!("--to: {e}")))?;
            if !ctx.json() {
                println!("resolved --to {t} as {}", rfc3339_exact(ts));
            }
            Target::Time(ts)
        }
        (None, Some(id)) => Target::Backup(id.clone()),
        (None, None) => Target::Latest,
    })
}

/// --to-lsn, --to-xid or --to-name, parsed.
fn resolve_stop(a: &Args) -> Result<Option<crate::restore::plan::Stop>> {
    use crate::restore::plan::Stop;
    let parsed = match (&a.to_lsn, &a.to_xid, &a.to_name) {
        (Some(l), _, _) => Stop::parse_lsn(l).map_err(|e| format!("--to-lsn: {e}")),
        (_, Some(x), _) => Stop::parse_xid(x).map_err(|e| format!("--to-xid: {e}")),
        (_, _, Some(n)) => Stop::parse_name(n).map_err(|e| format!("--to-name: {e}")),
        _ => return Ok(None),
    };
    parsed.map(Some).map_err(usage)
}

async fn run_physical(ctx: &Ctx, a: &Args, policy: crate::policy::Policy) -> Result<ExitCode> {
    let stop = resolve_stop(a)?;
    match a.target_action {
        Some(_) if a.latest || (a.to.is_none() && a.backup.is_none() && stop.is_none()) => {
            return Err(usage(
                "--target-action needs a target: --to, --to-lsn, --to-xid, --to-name or --backup (the end of the archive always promotes)",
            ))
        }
        _ => {}
    }
    let target = resolve_target(ctx, a)?;
    // A restore point drctl made: the catalog knows where it is.
    let mut name_lsn = None;
    if let (Some(crate::restore::plan::Stop::Name(n)), None) = (&stop, &a.backup) {
        let points = ctx.catalog().await?.restore_points(&policy.name).await?;
        match points.iter().rev().find(|p| &p.name == n) {
            Some(p) => name_lsn = crate::wal::lsn_value(&p.lsn),
            None => eprintln!(
                "drctl: note: restore point {n} is not in the catalog (made outside drctl?): replaying from the newest backup; if the point is older, recovery will not find it: pass --backup ID"
            ),
        }
    }
    let policies_dir = std::path::absolute(&ctx.policies_dir)?;
    let req = crate::restore::physical::Request {
        target,
        from_backup: a.to.as_ref().and(a.backup.clone()),
        target_dir: a.target_dir.clone(),
        identity: a.identity.clone(),
        dry_run: a.dry_run,
        lease_catalog: Some(ctx.catalog_path.clone()),
        start: a.start,
        port: a.port,
        policies_dir,
        tablespace_map: a.tablespace_map.clone(),
        keep_archiving: a.keep_archiving,
        stop,
        action: a.target_action,
        name_lsn,
    };
    let outcome = crate::restore::physical::run(&policy, &req).await?;
    if ctx.json() {
        ctx.print_json(&outcome)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout();
    print_plan(&mut out, &outcome.plan)?;
    println!("wal segments:  {}", outcome.plan.wal_segments.len());
    if a.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = a.target_dir.as_ref().expect("checked").display();
    let archiving = if a.keep_archiving {
        format!("archiving into policy {} as the source did", policy.name)
    } else {
        "archiving off".to_string()
    };
    let port = outcome.port.map_or("?".into(), |p| p.to_string());
    match (&outcome.reached_at, outcome.server_state) {
        (Some(r), Some("paused")) => {
            println!(
                "restored {} into {dir}; recovery is paused at the target: {r} (server running read-only in recovery on port {port}, {archiving})",
                outcome.plan.backup_id
            );
            println!(
                "next: look at the data (psql -p {port}); SELECT pg_wal_replay_resume() promotes it, or stop it and restore with another target"
            );
        }
        (Some(r), Some("shut down")) => {
            println!(
                "restored {} into {dir}; recovery reached the target and the server shut down: {r} ({archiving})",
                outcome.plan.backup_id
            );
            println!(
                "next: a start replays to the same target and stops again; to promote, set recovery_target_action = 'promote' at the end of {dir}/postgresql.auto.conf, then: {}",
                start_hint(&dir.to_string(), crate::pg::tools::is_root())
            );
        }
        (Some(r), _) => {
            println!(
                "restored {} into {dir} and recovered: {r} (server running on port {port}, {archiving})",
                outcome.plan.backup_id
            );
            if !a.keep_archiving {
                println!(
                    "next: check the data, then cut over; to make it the primary, delete the archive_mode = 'off' line at the end of {dir}/postgresql.auto.conf and restart it"
                );
            }
        }
        (None, _) => {
            println!(
                "restored {} into {dir} in {:.1}s; recovery.signal and restore_command are set, {archiving}",
                outcome.plan.backup_id, outcome.duration_seconds
            );
            println!(
                "next: {}",
                start_hint(&dir.to_string(), crate::pg::tools::is_root())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How to start a prepared directory. PostgreSQL refuses to run as root,
/// so for root the hint goes through the postgres user: it works as typed.
fn start_hint(dir: &str, root: bool) -> String {
    let as_owner = if root { "runuser -u postgres -- " } else { "" };
    format!(
        "{as_owner}pg_ctl -D {dir} -l {dir}/recovery.log -o '-p 5433' start   (a port the primary does not use)"
    )
}

async fn run_rds(ctx: &Ctx, a: &Args, policy: crate::policy::Policy) -> Result<ExitCode> {
    if a.target.is_some() || a.target_dir.is_some() || a.start {
        return Err(usage(format!(
            "policy {} backs up RDS: restore into a new instance with --target-instance NAME",
            policy.name
        )));
    }
    let Some(target) = a.target_instance.as_deref() else {
        return Err(usage(
            "where to? pass --target-instance NEW_INSTANCE_NAME (never the source)",
        ));
    };
    let point = match resolve_target(ctx, a)? {
        Target::Time(t) => crate::rds::RestorePoint::Time(t),
        Target::Backup(id) => crate::rds::RestorePoint::Backup(id),
        Target::Latest => crate::rds::RestorePoint::Latest,
    };
    let how = crate::rds::Creation {
        dry_run: a.dry_run,
        wait: !a.no_wait,
        ..Default::default()
    };
    let r = crate::rds::restore(&policy, point, target, &how).await?;
    if ctx.json() {
        ctx.print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let from = match (&r.snapshot, &r.target_time) {
        (Some(s), _) => format!("snapshot {s}"),
        (None, Some(t)) => format!("{} as of {t}", r.source_instance),
        (None, None) => r.source_instance.clone(),
    };
    if r.dry_run {
        println!(
            "would restore {from} into new instance {}",
            r.target_instance
        );
        if let (Some(a), Some(b)) = (&r.window_start, &r.window_end) {
            println!("restorable window: {a} .. {b}");
        }
    } else {
        println!(
            "restored {from} into {} ({}){}",
            r.target_instance,
            r.status,
            r.endpoint
                .as_deref()
                .map(|e| format!("; endpoint {e}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the plan for humans.
pub(crate) fn print_plan(
    out: &mut dyn std::io::Write,
    p: &crate::restore::Plan,
) -> std::io::Result<()> {
    writeln!(
        out,
        "backup:        {} ({}, consistent at {})",
        p.backup_id, p.method, p.consistent_at
    )?;
    match &p.recovery_target {
        // Replay stops where it finds the target; the time is the end of
        // what the archive offers.
        Some(t) => writeln!(out, "stops at:      {t} (WAL offered to {})", p.target_time)?,
        None => writeln!(out, "target time:   {}", p.target_time)?,
    }
    if let Some(a) = p.target_action {
        writeln!(out, "at the target: {a}")?;
    }
    writeln!(out, "repository:    {}", p.repository)?;
    if let Some(g) = p.gap_seconds {
        writeln!(
            out,
            "data-loss gap: {}",
            crate::restore::plan::describe_gap(jiff::SignedDuration::from_secs(g))
        )?;
    }
    if let Some(t) = &p.target {
        writeln!(out, "into:          {t}")?;
    }
    if let Some(w) = &p.overwrites_source {
        writeln!(out, "overwrites:    {w}")?;
    }
    for t in &p.tablespaces {
        writeln!(
            out,
            "tablespace:    {} (was {}) into {}",
            t.oid, t.location, t.restore_to
        )?;
    }
    writeln!(
        out,
        "size:          {} stored, {} plain",
        crate::progress::human_bytes(p.stored_bytes),
        crate::progress::human_bytes(p.source_bytes)
    )?;
    if !p.chain.is_empty() {
        writeln!(
            out,
            "chain:         {} ({}: about {} on disk while it runs)",
            p.chain.join(" <- "),
            if p.links.last().is_some_and(crate::restore::chain::is_native) {
                "combined by pg_combinebackup"
            } else {
                "each incremental laid over the full"
            },
            crate::progress::human_bytes(crate::restore::chain::bytes_needed(&p.links))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_hints_work_as_typed_for_root_and_others() {
        assert_eq!(
            super::start_hint("/srv/r", true),
            "runuser -u postgres -- pg_ctl -D /srv/r -l /srv/r/recovery.log -o '-p 5433' start   (a port the primary does not use)"
        );
        assert!(super::start_hint("/srv/r", false).starts_with("pg_ctl -D /srv/r "));
    }
}
