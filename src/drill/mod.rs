//! `drctl drill`: prove a backup restores, into a real server, and that the
//! data in it is right.
//!
//! A drill picks its restore point, restores it into a scratch server
//! (`pg::scratch`, or a database on `--scratch URL`), measures RTO (drill
//! start until the restored database answers) and RPO (target time minus
//! the newest data present), runs the built-in checks (every table of the
//! manifest with its row count; amcheck on btree indexes when available)
//! and the policy's `[[drill.checks]]`, holds the results against
//! `max_rto`/`max_rpo`, and records the report in the catalog. Anything that
//! goes wrong after the plan is fixed is a failed check in the report, not
//! an early exit: CI gets a JUnit file saying what broke.

pub mod check;
pub mod junit;
mod rds;
pub mod scratch;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use jiff::Timestamp;
use serde::Serialize;

use crate::catalog::{Catalog, DrillRow};
use crate::pg::{Conn, ConnUrl};
use crate::policy::{Method, Policy};
use crate::repo::manifest::Manifest;
use crate::time::parse::{rfc3339, rfc3339_exact};
use check::CheckResult;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    /// The newest backup; RPO is measured against the drill's start.
    Latest,
    Time(Timestamp),
    /// A random backup, as AWS Backup's restore testing picks one.
    Random,
}

pub struct Options {
    pub point: Point,
    pub scratch_url: Option<String>,
    pub keep: bool,
    pub identity: Option<PathBuf>,
    pub catalog_path: PathBuf,
    /// Absolute policies directory: a PITR drill's restore_command names it.
    pub policies_dir: PathBuf,
}

/// The drill report (`--output json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub policy: String,
    /// The repository the drill read: "primary" or a `[[copy]]` name.
    pub repository: String,
    pub passed: bool,
    pub backup_id: Option<String>,
    pub target_time: Option<String>,
    pub started_at: String,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    /// Point-in-time drills: the last transaction the restore replayed
    /// (RPO counts from what the archive covers, not from this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
    pub duration_seconds: f64,
    pub checks: Vec<CheckResult>,
    /// Why the drill could not run at all (no backup to drill, say).
    pub error: Option<String>,
    /// With --keep: how to reach the restored server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
}

/// Pick the backup a drill restores: (manifest, target time).
pub fn choose(
    complete: &[Manifest],
    point: Point,
    now: Timestamp,
    pick: impl FnOnce(usize) -> usize,
) -> Result<(Manifest, Timestamp), String> {
    let mut sorted: Vec<&Manifest> = complete.iter().collect();
    sorted.sort_by_key(|m| m.consistent_at);
    let Some(newest) = sorted.last() else {
        return Err("no complete backup to drill; run `drctl backup` first".into());
    };
    match point {
        Point::Latest => Ok(((*newest).clone(), now)),
        Point::Random => {
            let m = sorted[pick(sorted.len()) % sorted.len()];
            Ok((m.clone(), m.consistent_at))
        }
        Point::Time(t) => sorted
            .iter()
            .rev()
            .find(|m| m.consistent_at <= t)
            .map(|m| ((*m).clone(), t))
            .ok_or_else(|| {
                format!(
                    "no backup at or before {}; the oldest is consistent at {}",
                    rfc3339(t),
                    rfc3339(sorted[0].consistent_at)
                )
            }),
    }
}

fn seconds(d: &Option<String>) -> Option<f64> {
    d.as_deref()
        .and_then(|v| crate::time::parse::parse_duration(v).ok())
        .map(|d| d.as_secs_f64())
}

/// Run one drill and record it. Errors only for what stops a drill before
/// it starts (no repository, unreadable policy); everything after is in the
/// report.
pub async fn run(policy: &Policy, opts: &Options, catalog: &Catalog) -> Result<Report> {
    let guard = crate::guard::run_guard(&opts.catalog_path, policy, "drill", Some(catalog)).await?;
    guard.around(drill(policy, opts, catalog)).await
}

async fn drill(policy: &Policy, opts: &Options, catalog: &Catalog) -> Result<Report> {
    let started = Timestamp::now();
    let t0 = Instant::now();
    let mut report = Report {
        policy: policy.name.clone(),
        repository: policy.reads_from(),
        passed: false,
        backup_id: None,
        target_time: None,
        started_at: rfc3339(started),
        rto_seconds: None,
        rpo_seconds: None,
        last_commit_at: None,
        duration_seconds: 0.0,
        checks: Vec::new(),
        error: None,
        scratch: None,
    };
    if policy.backup.method == Method::RdsSnapshot {
        if policy.source.cluster.is_some() {
            return Err(crate::error::usage(format!(
                "policy {}: drills of Aurora clusters are not supported by this drctl build yet",
                policy.name
            )));
        }
        if opts.scratch_url.is_some() {
            return Err(crate::error::usage(format!(
                "policy {}: --scratch is for PostgreSQL backups; an RDS drill restores into a scratch instance",
                policy.name
            )));
        }
        // Before an instance exists: a missing secret is the policy's fault.
        if let Some(var) = &policy.source.password_env {
            if std::env::var_os(var).is_none() {
                return Err(crate::error::usage(format!(
                    "policy {}: password_env names {var}, but {var} is not set in drctl's environment; the drill's checks log in with it",
                    policy.name
                )));
            }
        }
        rds::drill(policy, opts, started, t0, &mut report).await;
        return finish(policy, catalog, report, started, t0).await;
    }
    let repo = crate::repo::open_for_reading(policy).await?;
    let inv = crate::repo::inventory::scan(&*repo, Some(&policy.name)).await?;
    let physical = policy.backup.method == Method::Physical;
    match choose(&inv.complete, opts.point, started, |n| {
        rand::random::<u64>() as usize % n
    }) {
        Ok((m, _)) if physical => {
            drill_physical(
                policy,
                opts,
                &*repo,
                (&m, &inv.complete),
                started,
                t0,
                &mut report,
            )
            .await;
        }
        Ok((m, target)) => {
            report.backup_id = Some(m.id.clone());
            report.target_time = Some(rfc3339(target));
            drill_dump(policy, opts, &m, target, t0, &mut report).await;
        }
        Err(e) => {
            report.error = Some(e.clone());
            report.checks.push(CheckResult::fail("restore", e));
        }
    }
    finish(policy, catalog, report, started, t0).await
}

/// Decide, record in the catalog, hand back.
async fn finish(
    policy: &Policy,
    catalog: &Catalog,
    mut report: Report,
    started: Timestamp,
    t0: Instant,
) -> Result<Report> {
    report.passed = report.error.is_none() && report.checks.iter().all(|c| c.passed);
    report.duration_seconds = t0.elapsed().as_secs_f64();
    let json = serde_json::to_string(&report)?;
    catalog
        .insert_drill(
            &DrillRow {
                id: format!(
                    "{}-{:04x}",
                    started.strftime("%Y%m%dT%H%M%SZ"),
                    rand::random::<u16>()
                ),
                policy: policy.name.clone(),
                backup_id: report.backup_id.clone(),
                started_at: started,
                finished_at: Timestamp::now(),
                passed: report.passed,
                rto_seconds: report.rto_seconds,
                rpo_seconds: report.rpo_seconds,
            },
            &json,
        )
        .await?;
    Ok(report)
}

/// Where the restored database lives for the drill's duration.
enum Place {
    Scratch(crate::drill::scratch::Scratch),
    /// A database created on a given server, dropped afterwards.
    Given {
        server: Conn,
        db: String,
    },
}

async fn drill_dump(
    policy: &Policy,
    opts: &Options,
    m: &Manifest,
    target: Timestamp,
    t0: Instant,
    report: &mut Report,
) {
    let (place, url) = match dump_place(policy, opts, m).await {
        Ok(p) => p,
        Err(e) => {
            report.checks.push(CheckResult::fail("restore", e));
            return;
        }
    };
    let req = crate::restore::dump::Request {
        target: crate::restore::plan::Target::Backup(m.id.clone()),
        database: Some(url.clone()),
        identity: opts.identity.clone(),
        // The same parallelism a restore would use: the drill measures it.
        jobs: policy.backup.jobs.unwrap_or(1),
        dry_run: false,
        force: false,
        overwrite_source: false,
        // The scratch server has none of the source's roles.
        no_owner: true,
        no_acl: true,
        lease_catalog: Some(opts.catalog_path.clone()),
    };
    let restored = crate::restore::dump::run(policy, &req)
        .await
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| {
            let u = ConnUrl::parse(&url)?;
            Ok(Restored {
                conn: Conn::new(u, None).map_err(|e| e.to_string())?,
                done: format!("backup {} restored in {:.1}s", m.id, o.duration_seconds),
                silent: "restored, but the database does not answer".into(),
                patience: None,
                newest: Newest::At(m.consistent_at),
                rows_of: Some(m.clone()),
            })
        });
    // For a dump the newest data present is its consistent point, restored
    // or not.
    report.rpo_seconds = Some(
        target
            .duration_since(m.consistent_at)
            .as_secs_f64()
            .max(0.0),
    );
    judge(policy, report, t0, target, &restored).await;
    release(place, &url, opts.keep, report).await;
}

/// Where a dump drill restores, and that database's URL: a new database on
/// `--scratch`, or a scratch server of the dump's major version.
async fn dump_place(
    policy: &Policy,
    opts: &Options,
    m: &Manifest,
) -> Result<(Place, String), String> {
    if let Some(u) = &opts.scratch_url {
        let server = ConnUrl::parse(u)
            .map_err(|e| anyhow!("--scratch: {e}"))
            .and_then(|url| Conn::new(url, None))
            .map_err(|e| format!("{e:#}"))?;
        let db = format!(
            "drctl_drill_{}_{:08x}",
            policy.name.replace('-', "_"),
            rand::random::<u32>()
        );
        let url = server.url.with_database(&db).as_str().to_string();
        return Ok((Place::Given { server, db }, url));
    }
    let major = m.source.server_version_num / 10000;
    let s = crate::drill::scratch::start(major, policy.source.pg_bindir.as_deref(), opts.keep)
        .await
        .map_err(|e| format!("cannot start a scratch server: {e:#}"))?;
    let db = if m.source.database.is_empty() {
        policy.name.clone()
    } else {
        m.source.database.clone()
    };
    let url = s.url(&db);
    Ok((Place::Scratch(s), url))
}

/// Stop the scratch server or drop the drill database, unless kept (then
/// the report says how to reach it).
async fn release(place: Place, url: &str, keep: bool, report: &mut Report) {
    match place {
        Place::Scratch(s) if s.kept() => {
            report.scratch = Some(keep_note(&s, url));
        }
        Place::Scratch(s) => drop(s),
        Place::Given { server, db } if !keep => {
            let admin = server.with_database("postgres");
            if let Err(e) = admin
                .query(
                    &format!("drop database if exists \"{db}\" with (force)"),
                    &[],
                )
                .await
            {
                tracing::warn!("could not drop the drill database {db}: {e:#}");
            }
        }
        Place::Given { .. } => report.scratch = Some(format!("psql {url}")),
    }
}

/// amcheck and the policy's own checks, against the restored database.
async fn run_checks(policy: &Policy, conn: &Conn, report: &mut Report) {
    if let Some(c) = amcheck(conn).await {
        report.checks.push(c);
    }
    for c in policy
        .drill
        .as_ref()
        .map(|d| d.checks.as_slice())
        .unwrap_or(&[])
    {
        let t = Instant::now();
        let answer = conn
            .query(&c.sql, &[])
            .await
            .map_err(|e| scrub_port(&format!("{e:#}"), conn.url.port()));
        let mut judged = check::judge(c, answer);
        judged.seconds = Some(t.elapsed().as_secs_f64());
        report.checks.push(judged);
    }
}

/// `msg` without the scratch server's port, which changes every run: two
/// runs of one failure read the same (CI systems group by message).
fn scrub_port(msg: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => msg
            .replace(&format!(":{p}/"), ":PORT/")
            .replace(&format!(":{p}"), ":PORT")
            .replace(&format!("port {p}"), "port PORT"),
        None => msg.to_string(),
    }
}

/// A drill's restore step, done: the restored database and what the
/// shared part needs to judge it.
struct Restored {
    conn: Conn,
    /// The "restore" check's message once the database answers.
    done: String,
    /// Said (before the error) when it does not answer.
    silent: String,
    /// How long a just-created server may take to accept connections
    /// (RDS); None asks once.
    patience: Option<std::time::Duration>,
    newest: Newest,
    /// The manifest whose tables the restored database is held against.
    rows_of: Option<Manifest>,
}

/// The newest data a restored database holds.
enum Newest {
    /// Known without asking (a dump's snapshot, an RDS snapshot's time).
    At(Timestamp),
    /// What the server replayed, or this when it does not say.
    Replayed(Option<Timestamp>),
    /// A point-in-time restore: how far the archive provably covers. A
    /// quiet stretch before the target lost nothing; the last commit is
    /// reported on its own.
    Covered(Option<Timestamp>),
}

/// What every drill does once its restore step is done, in one order: RTO
/// when the restored database answers, RPO, the tables and row counts,
/// amcheck and the policy's checks, then the budgets.
async fn judge(
    policy: &Policy,
    report: &mut Report,
    t0: Instant,
    target: Timestamp,
    restored: &Result<Restored, String>,
) {
    match restored {
        Err(e) => report.checks.push(CheckResult::fail("restore", e.clone())),
        Ok(r) => {
            let answered = match r.patience {
                Some(p) => rds::answer(&r.conn, p).await,
                None => r.conn.query_one("select 1", &[]).await.map(|_| ()),
            };
            match answered {
                Err(e) => report
                    .checks
                    .push(CheckResult::fail("restore", format!("{}: {e:#}", r.silent))),
                Ok(()) => {
                    report.rto_seconds = Some(t0.elapsed().as_secs_f64());
                    let mut restore = CheckResult::pass("restore", r.done.clone());
                    restore.seconds = report.rto_seconds;
                    report.checks.push(restore);
                    let newest = match r.newest {
                        Newest::At(t) => Some(t),
                        Newest::Replayed(fallback) => replayed_until(&r.conn).await.or(fallback),
                        Newest::Covered(end) => {
                            let last = replayed_until(&r.conn).await;
                            report.last_commit_at = last.map(rfc3339_exact);
                            end.map(|e| e.min(target))
                        }
                    };
                    report.rpo_seconds =
                        newest.map(|at| target.duration_since(at).as_secs_f64().max(0.0));
                    if let Some(m) = &r.rows_of {
                        report.checks.push(row_count_check(&r.conn, m).await);
                    }
                    run_checks(policy, &r.conn, report).await;
                }
            }
        }
    }
    budgets(policy, report);
}

/// RTO and RPO against the policy's budgets. A point-in-time restore whose
/// server does not say what it replayed has no RPO: that passes only when
/// there is no RPO budget to hold it against.
fn budgets(policy: &Policy, report: &mut Report) {
    let d = policy.drill.clone().unwrap_or_default();
    report.checks.push(check::budget(
        "RTO",
        report.rto_seconds,
        seconds(&d.max_rto),
    ));
    let max_rpo = seconds(&d.max_rpo);
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

fn keep_note(s: &crate::drill::scratch::Scratch, url: &str) -> String {
    let as_owner = if crate::pg::tools::is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    format!(
        "psql {url}   (when done: {as_owner}{} -D {} stop -m fast && rm -rf {})",
        s.bindir.join("pg_ctl").display(),
        s.data_dir().display(),
        s.dir().display()
    )
}

/// A PITR drill: restore the cluster into a scratch directory (tablespaces
/// beside it), start it there as drctl's child with archiving off, wait for
/// recovery to reach the target and promote, then check.
async fn drill_physical(
    policy: &Policy,
    opts: &Options,
    repo: &dyn crate::repo::Repository,
    (newest, complete): (&Manifest, &[Manifest]),
    started: Timestamp,
    t0: Instant,
    report: &mut Report,
) {
    use crate::restore::plan::Target;
    let target = match physical_target(policy, opts.point, repo).await {
        Ok(t) => t,
        Err(e) => {
            report.checks.push(CheckResult::fail("restore", e));
            budgets(policy, report);
            return;
        }
    };
    let aim = match target {
        Target::Time(t) => t,
        _ => started,
    };
    report.target_time = Some(rfc3339(aim));
    let major = newest.source.server_version_num / 10000;
    let scratch =
        match crate::drill::scratch::create(major, policy.source.pg_bindir.as_deref(), opts.keep) {
            Ok(s) => s,
            Err(e) => {
                report.checks.push(CheckResult::fail(
                    "restore",
                    format!("cannot prepare a scratch directory: {e:#}"),
                ));
                budgets(policy, report);
                return;
            }
        };
    let map: Vec<String> = newest
        .tablespaces
        .iter()
        .map(|t| format!("{}={}/ts-{}", t.oid, scratch.dir().display(), t.oid))
        .collect();
    let req = crate::restore::physical::Request {
        from_backup: None,
        target,
        target_dir: Some(scratch.data_dir()),
        identity: opts.identity.clone(),
        dry_run: false,
        lease_catalog: Some(opts.catalog_path.clone()),
        start: false,
        port: None,
        policies_dir: opts.policies_dir.clone(),
        tablespace_map: map,
        keep_archiving: false,
        stop: None,
        action: None,
        name_lsn: None,
    };
    let outcome = match crate::restore::physical::run(policy, &req).await {
        Ok(o) => o,
        Err(e) => {
            report
                .checks
                .push(CheckResult::fail("restore", format!("{e:#}")));
            budgets(policy, report);
            return;
        }
    };
    report.backup_id = Some(outcome.plan.backup_id.clone());
    let (scratch, promoted) = recover(scratch, &outcome.plan.target_time).await;
    let db = policy
        .source
        .url
        .as_deref()
        .and_then(|u| ConnUrl::parse(u).ok())
        .map(|u| u.database())
        .unwrap_or_else(|| "postgres".into());
    let url = scratch.url(&db);
    let restored = promoted.map_err(|e| format!("{e:#}")).and_then(|reached| {
        let u = ConnUrl::parse(&url)?;
        Ok(Restored {
            conn: Conn::new(u, None).map_err(|e| format!("{e:#}"))?,
            done: format!(
                "backup {} restored and recovered to {reached}",
                outcome.plan.backup_id
            ),
            silent: format!("recovered, but database {db} does not answer"),
            patience: None,
            newest: Newest::Covered(
                outcome
                    .plan
                    .archive_end
                    .as_deref()
                    .and_then(|e| e.parse().ok()),
            ),
            rows_of: complete
                .iter()
                .find(|m| m.id == outcome.plan.backup_id && m.row_counts != "off")
                .cloned(),
        })
    });
    judge(policy, report, t0, aim, &restored).await;
    if scratch.kept() {
        report.scratch = Some(keep_note(&scratch, &url));
    }
}

/// The recovery target of a PITR drill; `--random` is uniform over every
/// recoverable range, gaps left out.
async fn physical_target(
    policy: &Policy,
    point: Point,
    repo: &dyn crate::repo::Repository,
) -> Result<crate::restore::plan::Target, String> {
    use crate::restore::plan::Target;
    Ok(match point {
        Point::Latest => Target::Latest,
        Point::Time(t) => Target::Time(t),
        Point::Random => {
            let w = crate::wal::archive::window(repo, &policy.name)
                .await
                .map_err(|e| format!("cannot read the recoverable window: {e:#}"))?;
            match random_point(&w.ranges, rand::random::<u64>()) {
                Some(t) => Target::Time(t),
                None => Target::Latest,
            }
        }
    })
}

/// Start the restored cluster as drctl's child and wait until it reaches
/// the target and promotes. A recovery that ends before the target (it can
/// end before the server is seen listening) is run again to the archive's
/// end. Hands the server back with the point reached.
async fn recover(
    mut scratch: crate::drill::scratch::Scratch,
    target_time: &str,
) -> (crate::drill::scratch::Scratch, Result<String>) {
    let launched = scratch.launch(false).await;
    // Shared by the two closures wait_promoted calls in turn.
    let cell = std::sync::Mutex::new(scratch);
    let lock = || cell.lock().unwrap_or_else(|e| e.into_inner());
    let admin = ConnUrl::parse(&lock().url("postgres"))
        .map_err(|e| anyhow!(e))
        .and_then(|u| Conn::new(u, None));
    let promoted = match (launched, &admin) {
        (Ok(()), Ok(admin)) => {
            crate::restore::recovery::wait_promoted(
                admin,
                || lock().log(),
                || lock().alive(),
                target_time,
            )
            .await
        }
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(anyhow!("{e:#}")),
    };
    let ended = promoted
        .as_ref()
        .is_err_and(crate::restore::recovery::ended_before_target)
        || (promoted.is_err() && crate::restore::recovery::ended_in_log(&lock().log()));
    let scratch = cell.into_inner().unwrap_or_else(|e| e.into_inner());
    if ended {
        recover_to_end(scratch, target_time).await
    } else {
        (scratch, promoted)
    }
}

/// Count every table of the restored database in full and hold them
/// against the manifest: a dump's list (with its counts when exact), or a
/// base backup's tables at a PITR target.
async fn row_count_check(conn: &Conn, m: &Manifest) -> CheckResult {
    match crate::pg::dump::count_tables(conn, crate::policy::RowCounts::Exact).await {
        Ok(actual) if m.method == Method::Physical => {
            check::tables_at_target(&m.id, &m.tables, &actual)
        }
        Ok(actual) => check::row_counts(&m.tables, &actual, m.row_counts == "exact"),
        Err(e) => CheckResult::fail("tables and row counts", format!("error: {e:#}")),
    }
}

/// The newest transaction a recovery replayed, when the server says.
pub(crate) async fn replayed_until(conn: &Conn) -> Option<Timestamp> {
    conn.query_one(
        "select coalesce(to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '')",
        &[],
    )
    .await
    .ok()
    .and_then(|t| t.trim().parse().ok())
}

/// amcheck's bt_index_check on every btree index of user schemas, when the
/// server has the extension (postgresql-contrib).
async fn amcheck(conn: &Conn) -> Option<CheckResult> {
    const NAME: &str = "amcheck (btree indexes)";
    let available = conn
        .query_one(
            "select count(*) from pg_available_extensions where name = 'amcheck'",
            &[],
        )
        .await
        .ok()?;
    if available.trim() != "1" {
        return None;
    }
    let sql = "create extension if not exists amcheck;
        select count(bt_index_check(c.oid)) || '' from pg_index i
        join pg_class c on c.oid = i.indexrelid
        join pg_am a on a.oid = c.relam
        join pg_namespace n on n.oid = c.relnamespace
        where a.amname = 'btree' and i.indisvalid and i.indisready
          and c.relpersistence <> 't'
          and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast';";
    Some(match conn.query(sql, &[]).await {
        Ok(rows) => {
            let n = rows
                .last()
                .and_then(|r| r.first())
                .cloned()
                .unwrap_or_default();
            CheckResult::pass(NAME, format!("{n} indexes checked"))
        }
        Err(e) => CheckResult::fail(NAME, format!("error: {e:#}")),
    })
}

/// No commit followed the target in the archive: start the scratch server
/// again to recover to the end of the archive, the same state.
async fn recover_to_end(
    mut scratch: crate::drill::scratch::Scratch,
    target_time: &str,
) -> (crate::drill::scratch::Scratch, Result<String>) {
    let stopped = crate::poll::until(std::time::Duration::from_secs(60), || {
        std::future::ready(!scratch.alive())
    })
    .await
    .map_err(|e| anyhow!("the scratch server did not stop after recovery ended: {e}"));
    if let Err(e) = stopped {
        return (scratch, Err(e));
    }
    if let Err(e) = crate::restore::recovery::recover_to_end(&scratch.data_dir()) {
        return (scratch, Err(e));
    }
    if let Err(e) = scratch.launch(false).await {
        return (scratch, Err(e));
    }
    let admin = match ConnUrl::parse(&scratch.url("postgres"))
        .map_err(|e| anyhow!(e))
        .and_then(|u| Conn::new(u, None))
    {
        Ok(a) => a,
        Err(e) => return (scratch, Err(e)),
    };
    let cell = std::sync::Mutex::new(scratch);
    let lock = || cell.lock().unwrap_or_else(|e| e.into_inner());
    let r = crate::restore::recovery::wait_promoted(
        &admin,
        || lock().log(),
        || lock().alive(),
        target_time,
    )
    .await
    .map(|reached| crate::restore::recovery::no_commit_after(target_time, &reached));
    (cell.into_inner().unwrap_or_else(|e| e.into_inner()), r)
}

/// The point `r` (a random number) picks, uniformly over the ranges'
/// total length; None without ranges.
fn random_point(ranges: &[crate::wal::archive::Range], r: u64) -> Option<Timestamp> {
    let len = |x: &crate::wal::archive::Range| x.end.duration_since(x.start).as_millis() as u64;
    let total: u64 = ranges.iter().map(len).sum();
    let mut off = r % total.max(1);
    for x in ranges {
        if off <= len(x) {
            return Some(x.start + jiff::SignedDuration::from_millis(off as i64));
        }
        off -= len(x);
    }
    ranges.first().map(|x| x.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, at: &str) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "policy": "p", "method": "dump",
            "started_at": at, "finished_at": at, "consistent_at": at,
            "source": {"database": "d", "host": "h", "server_version": "15", "server_version_num": 150000},
            "objects": [], "compression": {"algorithm": "zstd", "level": 3},
            "encryption": {"algorithm": "age-x25519", "recipients": []},
            "row_counts": "exact", "tables": [], "drctl_version": "0"
        }))
        .unwrap();
        m.id = id.into();
        m
    }

    #[test]
    fn choose_latest_time_and_random() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let all = vec![
            m("b2", "2026-11-22T10:00:00Z"),
            m("b1", "2026-11-22T08:00:00Z"),
            m("b3", "2026-11-22T11:00:00Z"),
        ];
        let (b, t) = choose(&all, Point::Latest, now, |_| 0).unwrap();
        assert_eq!((b.id.as_str(), t), ("b3", now));
        let t9: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
        let (b, t) = choose(&all, Point::Time(t9), now, |_| 0).unwrap();
        assert_eq!((b.id.as_str(), t), ("b1", t9));
        let e = choose(
            &all,
            Point::Time("2026-11-22T07:00:00Z".parse().unwrap()),
            now,
            |_| 0,
        )
        .unwrap_err();
        assert!(
            e.contains("oldest is consistent at 2026-11-22T08:00:00Z"),
            "{e}"
        );
        let (b, t) = choose(&all, Point::Random, now, |n| n - 2).unwrap();
        assert_eq!(b.id, "b2");
        assert_eq!(t, b.consistent_at);
        assert!(choose(&[], Point::Latest, now, |_| 0).is_err());
    }
}
