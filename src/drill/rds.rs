//! RDS drills: restore a drctl snapshot (or a point in time) into a scratch
//! instance, run the checks against its endpoint, and delete it (no final
//! snapshot) whatever happened — also after a cancel. Scratch instances
//! carry drill tags, so one left behind by a killed drill is swept by the
//! next drill of the policy once it is older than any drill can run.
//!
//! Checks connect as `[source] url`'s user and database with its host and
//! port replaced by the scratch endpoint, or else as the instance's master
//! user to its database; the password comes from `password_env` (or libpq's
//! PGPASSWORD / ~/.pgpass). drctl never sets or reads the master password.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::check::CheckResult;
use super::{Options, Point, Report};
use crate::pg::{Conn, ConnUrl};
use crate::policy::Policy;
use crate::rds::{self, Endpoint, RestorePoint};
use crate::time::parse::rfc3339;

/// How long a freshly available instance may take to accept connections
/// (DNS, security groups settling).
const CONNECT_PATIENCE: Duration = Duration::from_secs(120);

pub async fn drill(
    policy: &Policy,
    opts: &Options,
    started: Timestamp,
    t0: Instant,
    report: &mut Report,
) {
    let region = rds::region(policy);
    sweep(policy, started).await;

    // The restore point: a drctl snapshot, or a time in the instance's window.
    let (point, snapshot_time) = match opts.point {
        Point::Time(t) => (RestorePoint::Time(t), None),
        Point::Latest | Point::Random => match pick_snapshot(policy, &region, opts.point).await {
            Ok(s) => {
                report.backup_id = Some(s.backup_id.clone());
                (RestorePoint::Backup(s.backup_id), s.created)
            }
            Err(e) => {
                report.error = Some(e.clone());
                report.checks.push(CheckResult::fail("restore", e));
                return;
            }
        },
    };
    let target = match (opts.point, snapshot_time) {
        (Point::Time(t), _) => t,
        (Point::Latest, _) => started,
        (Point::Random, Some(t)) => t,
        (Point::Random, None) => started,
    };
    report.target_time = Some(rfc3339(target));
    // Prune keeps the snapshot while the drill restores from it.
    let _lease = match &report.backup_id {
        Some(id) => crate::lock::lease(&opts.catalog_path, &policy.name, id).ok(),
        None => None,
    };

    let scratch =
        rds::plan::scratch_identifier(&policy.name, &format!("{:08x}", rand::random::<u32>()));
    let how = rds::Creation {
        dry_run: false,
        wait: true,
        tags: Some(rds::scratch_tags(&policy.name, started)),
        class: policy.drill.as_ref().and_then(|d| d.instance_class.clone()),
    };
    let restored = rds::restore(policy, point, &scratch, &how).await;
    let restored = match restored {
        Ok(r) => match r.ready.as_ref().map(|e| connection(policy, e)) {
            Some(Ok(conn)) => Ok(super::Restored {
                done: format!("scratch instance {scratch} answers at {}", conn.url.host()),
                conn,
                silent: format!("scratch instance {scratch} is available but does not answer"),
                patience: Some(CONNECT_PATIENCE),
                // A snapshot holds the data up to its creation.
                newest: match snapshot_time {
                    Some(at) => super::Newest::At(at),
                    None => super::Newest::Replayed(None),
                },
                rows_of: None,
            }),
            Some(Err(e)) => Err(e),
            None => Err(format!(
                "instance {scratch} is available but reports no endpoint"
            )),
        },
        Err(e) => Err(format!("into scratch instance {scratch}: {e:#}")),
    };
    super::judge(policy, report, t0, target, &restored).await;
    let conn = restored.ok().map(|r| r.conn);
    release(&region, &scratch, conn.as_ref(), opts.keep, report).await;
}

/// Delete scratch instances earlier drills left (killed before cleanup).
async fn sweep(policy: &Policy, started: Timestamp) {
    match rds::sweep_scratch(policy, started, rds::scratch_max_age()).await {
        Ok(swept) if !swept.is_empty() => tracing::warn!(
            policy = %policy.name,
            "deleted scratch instances left by earlier drills: {}",
            swept.join(", ")
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(policy = %policy.name, "could not look for leftover scratch instances: {e:#}")
        }
    }
}

/// Delete the scratch instance (a failed delete is a failed check: it costs
/// money), or with --keep say how to reach and delete it.
async fn release(
    region: &str,
    scratch: &str,
    conn: Option<&crate::pg::Conn>,
    keep: bool,
    report: &mut Report,
) {
    if keep {
        let how = conn
            .map(|c| format!("psql {}   ", c.url))
            .unwrap_or_default();
        report.scratch = Some(format!(
            "{how}(when done: aws rds delete-db-instance --region {region} --db-instance-identifier {scratch} --skip-final-snapshot --delete-automated-backups)"
        ));
        return;
    }
    report.checks.push(match rds::delete_instance(region, scratch).await {
        Ok(()) => CheckResult::pass(
            "cleanup",
            format!("scratch instance {scratch} deleted (no final snapshot)"),
        ),
        Err(e) => CheckResult::fail(
            "cleanup",
            format!(
                "scratch instance {scratch} was NOT deleted and costs money: {e:#}; delete it with `aws rds delete-db-instance --region {region} --db-instance-identifier {scratch} --skip-final-snapshot`"
            ),
        ),
    });
}

async fn pick_snapshot(
    policy: &Policy,
    region: &str,
    point: Point,
) -> Result<rds::Snapshot, String> {
    let c = rds::client(Some(region)).await;
    let mut snaps = rds::list_snapshots(&c, rds::SnapshotKind::Instance, &policy.name, region)
        .await
        .map_err(|e| format!("{e:#}"))?;
    snaps.retain(|s| s.status == "available");
    snaps.sort_by_key(|s| s.created);
    if snaps.is_empty() {
        return Err(format!(
            "no available drctl snapshot of policy {} in {region}; run `drctl backup {}` first",
            policy.name, policy.name
        ));
    }
    let i = match point {
        Point::Random => rand::random::<u64>() as usize % snaps.len(),
        _ => snaps.len() - 1,
    };
    Ok(snaps.swap_remove(i))
}

/// Who the checks connect as: the policy's url (user, database, options)
/// on the scratch endpoint, or the master user to the instance's database.
fn connection(policy: &Policy, e: &Endpoint) -> Result<Conn, String> {
    let url = match &policy.source.url {
        Some(u) => ConnUrl::parse(u)?.with_host(&e.address, e.port)?,
        None => ConnUrl::from_parts(
            &e.address,
            e.port,
            e.master_username.as_deref().unwrap_or("postgres"),
            e.db_name.as_deref().unwrap_or("postgres"),
        )?,
    };
    Conn::new(url, policy.source.password_env.as_deref()).map_err(|e| format!("{e:#}"))
}

/// Wait for the first answer: a just-available instance can take a moment
/// to accept connections.
pub(super) async fn answer(conn: &Conn, patience: Duration) -> anyhow::Result<()> {
    let mut poll = crate::poll::Poll::every(patience, Duration::from_secs(2));
    loop {
        match conn.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if !not_up_yet(&format!("{e:#}")) || poll.next().await.is_err() => {
                return Err(e)
            }
            Err(_) => {}
        }
    }
}

/// Errors that mean "not reachable yet" rather than "wrong": a bad
/// password or a missing database is not worth waiting for.
fn not_up_yet(msg: &str) -> bool {
    [
        "Connection refused",
        "could not translate host name",
        "timeout expired",
        "Network is unreachable",
        "No route to host",
        "the database system is starting up",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_servers_are_waited_for() {
        assert!(not_up_yet(
            "connection to server at \"10.0.0.5\", port 5432 failed: Connection refused"
        ));
        assert!(not_up_yet(
            "could not translate host name \"x.rds.amazonaws.com\" to address"
        ));
        assert!(!not_up_yet(
            "FATAL:  password authentication failed for user \"admin\""
        ));
        assert!(!not_up_yet("FATAL:  database \"billing\" does not exist"));
    }
}
