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

use super::check::{self, CheckResult};
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
    let restored = rds::restore_with(
        policy,
        point,
        &scratch,
        false,
        true,
        Some(rds::scratch_tags(&policy.name, started)),
        policy
            .drill
            .as_ref()
            .and_then(|d| d.instance_class.as_deref()),
    )
    .await;
    let conn = match restored {
        Ok(r) => match r.ready.as_ref().map(|e| connection(policy, e)) {
            Some(Ok(conn)) => Some(conn),
            Some(Err(e)) => {
                report.checks.push(CheckResult::fail("restore", e));
                None
            }
            None => {
                report.checks.push(CheckResult::fail(
                    "restore",
                    format!("instance {scratch} is available but reports no endpoint"),
                ));
                None
            }
        },
        Err(e) => {
            report.checks.push(CheckResult::fail(
                "restore",
                format!("into scratch instance {scratch}: {e:#}"),
            ));
            None
        }
    };

    if let Some(conn) = &conn {
        match answer(conn).await {
            Ok(()) => {
                report.rto_seconds = Some(t0.elapsed().as_secs_f64());
                report.checks.push(CheckResult::pass(
                    "restore",
                    format!("scratch instance {scratch} answers at {}", conn.url.host()),
                ));
                report.rpo_seconds = match snapshot_time {
                    // A snapshot holds the data up to its creation.
                    Some(at) => Some(target.duration_since(at).as_secs_f64().max(0.0)),
                    None => super::replayed_until(conn)
                        .await
                        .map(|at| target.duration_since(at).as_secs_f64().max(0.0)),
                };
                super::run_checks(policy, conn, report).await;
            }
            Err(e) => report.checks.push(CheckResult::fail(
                "restore",
                format!("scratch instance {scratch} is available but does not answer: {e:#}"),
            )),
        }
    }
    budgets(policy, report);

    if opts.keep {
        let how = conn
            .as_ref()
            .map(|c| format!("psql {}   ", c.url))
            .unwrap_or_default();
        report.scratch = Some(format!(
            "{how}(when done: aws rds delete-db-instance --region {region} --db-instance-identifier {scratch} --skip-final-snapshot --delete-automated-backups)"
        ));
        return;
    }
    report.checks.push(match rds::delete_instance(&region, &scratch).await {
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
    let mut snaps = rds::list_snapshots(&c, rds::Kind::Instance, &policy.name, region)
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
async fn answer(conn: &Conn) -> anyhow::Result<()> {
    let mut poll = crate::poll::Poll::every(CONNECT_PATIENCE, Duration::from_secs(2));
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

/// RTO and RPO against the policy's budgets. A point-in-time restore whose
/// server does not say what it replayed has no RPO: that passes only when
/// there is no RPO budget to hold it against.
fn budgets(policy: &Policy, report: &mut Report) {
    let d = policy.drill.clone().unwrap_or_default();
    report.checks.push(check::budget(
        "RTO",
        report.rto_seconds,
        super::seconds(&d.max_rto),
    ));
    let max_rpo = super::seconds(&d.max_rpo);
    report.checks.push(
        match (report.rpo_seconds, max_rpo, report.rto_seconds.is_some()) {
            (None, None, true) => CheckResult::pass(
                "RPO",
                "not measurable: the restored server reports no replayed transaction (no budget)",
            ),
            _ => check::budget("RPO", report.rpo_seconds, max_rpo),
        },
    );
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
