//! `drctl restore` for physical backups: point-in-time recovery.
//!
//! Everything that can refuse happens before a byte is written: pick the
//! newest base backup at or before the target, follow the archived WAL from
//! its start through the timelines (from the history sidecars, no key
//! needed) and refuse a target outside the reachable window, check the key,
//! check the target directory is empty. Then extract the base backup
//! (streamed, checksummed), write `recovery.signal` and the recovery
//! settings, and with `--start` run the server until it has promoted and
//! report the point it actually reached (`recovery`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;

use crate::error::usage;
use crate::pg::tools::{is_root, owner_command};
use crate::policy::{Method, Policy};
use crate::repo::inventory;
use crate::repo::manifest::{Manifest, Tablespace};
use crate::repo::Repository;
use crate::restore::extract;
use crate::restore::plan::{self, Target};
use crate::restore::recovery::{start_and_wait, AsksForPassword};
use crate::restore::{Outcome, Plan, TablespacePlacement};
use crate::time::parse::rfc3339;
use crate::wal;
use crate::wal::archive::{
    check_in_window, reach_toward, read_archive, segment_size, window_of, RangeJson, Reach,
};

pub struct Request {
    pub target: Target,
    /// `--backup ID` with `--to`: replay from this backup, not the newest
    /// one before the target.
    pub from_backup: Option<String>,
    pub target_dir: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub dry_run: bool,
    /// Lease the backup (beside this catalog) while restoring, so prune
    /// leaves it alone.
    pub lease_catalog: Option<PathBuf>,
    pub start: bool,
    pub port: Option<u16>,
    /// Absolute policies directory, for restore_command.
    pub policies_dir: PathBuf,
    /// `OLD=NEW` relocations: OLD is a tablespace's OID or its directory on
    /// the source.
    pub tablespace_map: Vec<String>,
    /// Leave the source's archiving settings in force (the restored server
    /// replaces the primary). Default: `archive_mode = 'off'`.
    pub keep_archiving: bool,
    /// Replay up to an LSN, a transaction or a restore point instead of a
    /// time (`target` then picks the base backup: Latest, or Backup).
    pub stop: Option<plan::Stop>,
    /// What the server does at the target (default: promote).
    pub action: Option<plan::Action>,
    /// Where the `--to-name` restore point is (from the catalog), to pick
    /// the newest backup that ends before it.
    pub name_lsn: Option<u64>,
}

/// Where each tablespace of `ts` is restored: where `maps` says, else where
/// it was on the source (what pgBackRest does too).
pub fn place_tablespaces(
    ts: &[Tablespace],
    maps: &[String],
) -> std::result::Result<Vec<TablespacePlacement>, String> {
    let known = || {
        if ts.is_empty() {
            "it has none".to_string()
        } else {
            let list: Vec<String> = ts
                .iter()
                .map(|t| format!("{} at {}", t.oid, t.location))
                .collect();
            format!("it has {}", list.join(", "))
        }
    };
    let mut to: BTreeMap<u32, String> = BTreeMap::new();
    for m in maps {
        let (old, new) = m
            .split_once('=')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| format!("--tablespace-map {m}: expected OLD=NEW (OLD: the tablespace's OID or its directory on the source)"))?;
        if !Path::new(new).is_absolute() {
            return Err(format!(
                "--tablespace-map {m}: {new} is not an absolute path"
            ));
        }
        let old_dir = old.trim_end_matches('/');
        let t = ts
            .iter()
            .find(|t| t.oid.to_string() == old || t.location.trim_end_matches('/') == old_dir)
            .ok_or_else(|| {
                format!(
                    "--tablespace-map {m}: the backup has no tablespace {old} ({})",
                    known()
                )
            })?;
        if to
            .insert(t.oid, new.trim_end_matches('/').to_string())
            .is_some()
        {
            return Err(format!(
                "--tablespace-map: tablespace {} is mapped twice",
                t.oid
            ));
        }
    }
    let placed: Vec<TablespacePlacement> = ts
        .iter()
        .map(|t| TablespacePlacement {
            oid: t.oid,
            location: t.location.clone(),
            restore_to: to.remove(&t.oid).unwrap_or_else(|| t.location.clone()),
        })
        .collect();
    for (i, a) in placed.iter().enumerate() {
        if placed[..i].iter().any(|b| b.restore_to == a.restore_to) {
            return Err(format!(
                "two tablespaces would be restored into {}; give each its own directory with --tablespace-map",
                a.restore_to
            ));
        }
    }
    Ok(placed)
}

pub async fn plan(policy: &Policy, req: &Request) -> Result<(Plan, Manifest, Reach)> {
    let repo = crate::repo::open_for_reading(policy).await?;
    let inv = inventory::scan(&*repo, Some(&policy.name)).await?;
    let planned = plan_from(policy, req, &*repo, &inv).await;
    crate::error::noted(planned, inv.left_out(&policy.name))
}

async fn plan_from(
    policy: &Policy,
    req: &Request,
    repo: &dyn Repository,
    inv: &inventory::Inventory,
) -> Result<(Plan, Manifest, Reach)> {
    let physical: Vec<&Manifest> = inv
        .complete
        .iter()
        .filter(|m| m.method == Method::Physical)
        .collect();
    let cands: Vec<plan::Candidate> = physical
        .iter()
        .map(|m| plan::Candidate {
            id: m.id.clone(),
            consistent_at: m.consistent_at,
        })
        .collect();
    let seg_size = segment_size(physical.iter().copied());
    let archive = read_archive(repo, &policy.name, seg_size).await?;
    // A sidecar that fails its seal hides its segment: a refusal says so.
    let wal_note = (!archive.corrupt.is_empty()).then(|| {
        format!(
            "WAL left out because it is corrupt, never replayed: {}; run `drctl verify {}`",
            archive.corrupt.join(", "),
            policy.name
        )
    });
    let planned: Result<(Plan, Manifest, Reach)> = async {
        let window = window_of(&physical, &archive)?;
        plan::refuse_future(&req.target, Timestamp::now(), &window.describe()).map_err(usage)?;
        if let Target::Time(t) = req.target {
            check_in_window(t, &window)?;
        }
        let lsn_bound = match &req.stop {
            Some(plan::Stop::Lsn(v)) => Some(*v),
            Some(plan::Stop::Name(_)) => req.name_lsn,
            _ => None,
        };
        let choice = match (&req.from_backup, &req.target) {
            // An LSN target (or a restore point whose LSN the catalog
            // knows): the newest backup that ends at or before it.
            (None, Target::Latest) if lsn_bound.is_some() => {
                let v = lsn_bound.expect("checked");
                let before: Vec<plan::Candidate> = cands
                    .iter()
                    .filter(|c| {
                        physical.iter().any(|m| {
                            m.id == c.id
                                && m.wal.as_ref().is_some_and(|w| {
                                    crate::wal::lsn_value(&w.stop_lsn).is_some_and(|s| s <= v)
                                })
                        })
                    })
                    .cloned()
                    .collect();
                plan::choose(&before, &Target::Latest).map_err(|_| {
                    usage(format!(
                        "no backup of policy {} ends at or before LSN {}; pick a later target (each backup's stop_lsn is in `drctl show ID`)",
                        policy.name,
                        plan::lsn_text(v)
                    ))
                })?
            }
            (Some(id), Target::Time(t)) => {
                let c = plan::choose(&cands, &Target::Backup(id.clone())).map_err(usage)?;
                if c.consistent_at > *t {
                    return Err(usage(format!(
                        "backup {id} is consistent only at {}, after --to {}; pick an earlier backup or leave out --backup",
                        rfc3339(c.consistent_at),
                        rfc3339(*t)
                    )));
                }
                c
            }
            _ => plan::choose(&cands, &req.target).map_err(|e| match req.target {
                Target::Latest => anyhow!(e),
                _ => usage(e),
            })?,
        };
        let m = (*physical
            .iter()
            .find(|m| m.id == choice.id)
            .expect("chosen from the inventory"))
        .clone();
        let target = match req.target {
            Target::Time(t) => Some(t),
            _ => None,
        };
        let r = reach_toward(&m, &archive, target)?;
        // An LSN, xid or name stops wherever replay finds it: every
        // segment reachable from the base is offered.
        let replay_to = if req.stop.is_some() {
            &Target::Latest
        } else {
            &req.target
        };
        let target_time = target_time(&m, &r, replay_to, &window)?;
        let segs = match replay_to {
            Target::Time(_) => r.segments_until(Some(target_time)),
            // The backup's own WAL, start to stop, and not a segment more.
            Target::Backup(_) => through_stop(r.segments_until(None), &m),
            Target::Latest => r.segments_until(None),
        };
        let tablespaces = place_tablespaces(&m.tablespaces, &req.tablespace_map).map_err(usage)?;
        let links = crate::restore::chain::of(&m, &physical)?;
        let (chain, links) = if links.len() > 1 {
            (links.iter().map(|l| l.id.clone()).collect(), links)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok((
            Plan {
                // Replay stops at the target itself: nothing committed before it is lost.
                gap_seconds: matches!(req.target, Target::Time(_)).then_some(0),
                wal_segments: segs,
                target: req.target_dir.as_ref().map(|d| d.display().to_string()),
                window_start: window.newest().map(|w| w.printed().0),
                window_end: window.newest().map(|w| w.printed().1),
                windows: Some(window.ranges.iter().map(RangeJson::from).collect()),
                last_commit_at: window
                    .newest()
                    .and_then(|r| r.last_commit)
                    .map(crate::time::parse::rfc3339_exact),
                archive_end: r
                    .end
                    .map(|e| crate::time::parse::rfc3339_exact(e.max(m.consistent_at))),
                tablespaces,
                chain,
                links,
                recovery_target: req.stop.as_ref().map(plan::Stop::describe),
                target_action: req.action.map(plan::Action::as_str),
                ..Plan::new(policy, &m, target_time, req.dry_run)
            },
            m,
            r,
        ))
    }
    .await;
    crate::error::noted(planned, wal_note)
}

/// Where replay of backup `m` stops: the target time, or (latest) the end
/// of the WAL reachable from it. A backup whose own WAL is not all archived
/// cannot be restored at all.
fn target_time(
    m: &Manifest,
    r: &Reach,
    target: &Target,
    window: &crate::wal::archive::Window,
) -> Result<Timestamp> {
    if !r.reaches_stop {
        bail!(
            "backup {} cannot be restored: WAL from its start {} to its stop {} is not all in the archive (missing {})",
            m.id,
            m.wal.as_ref().map(|w| w.start_segment.as_str()).unwrap_or("?"),
            m.wal.as_ref().map(|w| w.stop_segment.as_str()).unwrap_or("?"),
            r.gap_at.as_deref().unwrap_or("?")
        );
    }
    let end = r.end.map_or(m.consistent_at, |e| e.max(m.consistent_at));
    match *target {
        // The window said yes, this backup's WAL says no: the archive
        // changed under us, or a timeline ends early.
        Target::Time(t) if t > end => Err(usage(format!(
            "{} is past the WAL reachable from backup {} (it ends at {}); recoverable window: {}",
            rfc3339(t),
            m.id,
            rfc3339(end),
            window.describe()
        ))),
        Target::Time(t) => Ok(t),
        // A named backup means its consistent state, not the end of the archive.
        Target::Backup(_) => Ok(m.consistent_at),
        Target::Latest => Ok(end),
    }
}

/// `segs` cut after the backup's stop segment.
fn through_stop(mut segs: Vec<String>, m: &Manifest) -> Vec<String> {
    if let Some(stop) = m.wal.as_ref().map(|w| &w.stop_segment) {
        if let Some(i) = segs.iter().position(|s| s == stop) {
            segs.truncate(i + 1);
        }
    }
    segs
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The data directory to restore into (None only for a dry run without
/// one); it and every tablespace's directory must be empty or absent.
fn check_targets(req: &Request, plan: &Plan) -> Result<Option<PathBuf>> {
    let dir = match (&req.target_dir, req.dry_run) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => None,
        (None, false) => {
            return Err(usage(
                "a physical backup restores into a data directory: pass --target-dir DIR (empty or absent)",
            ))
        }
    };
    if let Some(d) = &dir {
        if !empty_or_absent(d)? {
            return Err(usage(format!(
                "--target-dir {} is not empty; restore into an empty or new directory",
                d.display()
            )));
        }
    }
    for t in &plan.tablespaces {
        if !empty_or_absent(Path::new(&t.restore_to))? {
            let how = if t.restore_to == t.location {
                "its place on the source"
            } else {
                "per --tablespace-map"
            };
            return Err(usage(format!(
                "tablespace {} would be restored into {} ({how}), which is not empty; pass --tablespace-map {}=NEWDIR",
                t.oid, t.restore_to, t.oid
            )));
        }
    }
    Ok(dir)
}

fn readable_by_postgres(paths: &[&Path]) -> Result<()> {
    for p in paths {
        let ok = std::process::Command::new(crate::pg::tools::runuser())
            .args(["-u", "postgres", "--", "test", "-r"])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(usage(format!(
                "the postgres user cannot read {}, which restore_command needs; make it readable by postgres (the key only by postgres)",
                p.display()
            )));
        }
    }
    Ok(())
}

pub async fn run(policy: &Policy, req: &Request) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let (plan, m, _reach) = plan(policy, req).await?;
    let dir = check_targets(req, &plan)?;
    let Some(go) = crate::restore::preamble(
        policy,
        &m,
        req.identity.as_ref(),
        req.dry_run,
        req.lease_catalog.as_ref(),
        &plan.chain,
    )
    .await?
    else {
        return Ok(Outcome::dry_run(plan, started));
    };
    let dir = std::path::absolute(dir.expect("required unless dry-run"))?;
    // The tools of the backup's major, found before a byte is written.
    let major = m.source.server_version_num / 10000;
    if m.server_manifest.is_some() {
        policy.pg_tool("pg_verifybackup", major)?;
    }
    let pg_ctl = if req.start {
        Some(policy.pg_tool("pg_ctl", major)?)
    } else {
        None
    };
    let ids = &go.ids;
    let identity = std::path::absolute(req.identity.clone().expect("checked"))?;
    if is_root() {
        // The server runs restore_command as postgres: it must read these.
        readable_by_postgres(&[&identity, &req.policies_dir])?;
    }
    // Every directory written into, and whether drctl created it.
    let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
    for d in std::iter::once(dir.clone()).chain(
        plan.tablespaces
            .iter()
            .map(|t| PathBuf::from(&t.restore_to)),
    ) {
        dirs.push((d.clone(), !d.exists()));
        crate::restore::chain::mkdir_private(&d)?;
    }
    let prepared = async {
        let repo = crate::repo::open_for_reading(policy).await?;
        // verify_restored below proves every file.
        let proof = extract::Proof::for_restore(&m);
        if plan.links.is_empty() {
            extract::check_space(&m, &dir, &plan.tablespaces)?;
            extract::extract(&*repo, &m, &plan.tablespaces, ids, &dir, proof).await?;
        } else {
            extract::check_bytes(
                &m.id,
                &dir,
                crate::restore::chain::bytes_needed(&plan.links),
            )?;
            crate::restore::chain::restore(
                policy.source.pg_bindir.as_deref(),
                &*repo,
                &plan.links,
                &plan.tablespaces,
                ids,
                &dir,
                proof,
            )
            .await?;
        }
        verify_restored(&m, &dir, policy.source.pg_bindir.as_deref()).await?;
        write_recovery(policy, req, &plan, &dir, &identity)
    }
    .await;
    // A half-extracted or unproven directory must not be mistaken for a
    // restore, and must not block the retry. A cancel that came while the
    // last step finished is still a cancel, whatever step noticed it.
    if crate::cancel::requested() {
        bail!("cancelled; {}", clear_all(&dirs));
    }
    if let Err(e) = prepared {
        let note = clear_all(&dirs);
        return Err(e.context(note));
    }
    // A server that was started keeps its directory (and log) for a look,
    // unless the restore was cancelled: then what drctl started stops and
    // what it extracted goes.
    let (recovered, port) = match &pg_ctl {
        Some(pg_ctl) => {
            // Never PostgreSQL's default: on a host that runs the
            // production server (or a standby) the restore would collide
            // with it or be taken for it.
            let port = match req.port {
                Some(p) => p,
                None => free_port()?,
            };
            let action = req.action.unwrap_or(plan::Action::Promote);
            let r = start_and_wait(pg_ctl, &dir, port, &plan, req.keep_archiving, action).await;
            match r {
                // Cancelled, even if recovery finished meanwhile.
                _ if crate::cancel::requested() => {
                    let stopped = stop_server(pg_ctl, &dir);
                    bail!("cancelled; {stopped}{}", clear_all(&dirs));
                }
                Ok(r) => (Some(r), Some(port)),
                Err(e) if e.downcast_ref::<AsksForPassword>().is_some() => {
                    let stopped = stop_server(pg_ctl, &dir);
                    bail!(
                        "{}; {stopped}{} ({:#})",
                        AsksForPassword,
                        clear_all(&dirs),
                        e
                    );
                }
                Err(e) => return Err(e),
            }
        }
        None => (None, None),
    };
    Ok(Outcome {
        plan,
        created_database: false,
        duration_seconds: started.elapsed().as_secs_f64(),
        reached_at: recovered.as_ref().map(|r| r.reached.clone()),
        server_state: recovered.map(|r| r.state),
        port,
    })
}

/// Empty what a failed or cancelled restore wrote (removing directories it
/// created), and say what became of it.
fn clear_all(dirs: &[(PathBuf, bool)]) -> String {
    let mut out = Vec::new();
    for (d, created) in dirs {
        // A writer that has not quite stopped can refill a directory
        // while it is removed: one more pass.
        let r = clear_dir(d, *created).or_else(|_| {
            std::thread::sleep(Duration::from_millis(200));
            clear_dir(d, *created)
        });
        out.push(match (r, created) {
            (Ok(()), true) => format!("removed {}", d.display()),
            (Ok(()), false) => format!("emptied {} again", d.display()),
            (Err(e), _) => format!("could not clear {}: {e}; remove it by hand", d.display()),
        });
    }
    out.join(", ")
}

/// Stop a restored server drctl started (immediate: it is thrown away).
fn stop_server(pg_ctl: &Path, dir: &Path) -> String {
    if !dir.join("postmaster.pid").exists() {
        return String::new();
    }
    let ok = owner_command(pg_ctl)
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "-t", "5", "stop"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        "stopped the restored server, ".into()
    } else {
        format!(
            "could not stop the restored server in {} (stop it with pg_ctl -D {} stop), ",
            dir.display(),
            dir.display()
        )
    }
}

/// A loopback port no server listens on, over TCP or on /tmp's socket.
fn free_port() -> Result<u16> {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for the restored server; pass --port")?
            .port();
        if !Path::new(&format!("/tmp/.s.PGSQL.{port}")).exists() {
            return Ok(port);
        }
    }
    bail!("cannot find a free port for the restored server; pass --port")
}

/// Prove a freshly extracted directory with PostgreSQL's own tool: every
/// file the server sent, by size and CRC32C from the server's backup
/// manifest, and the WAL from start to stop parsed by pg_waldump. A
/// difference fails naming the file. Backups taken before drctl asked for
/// the server's manifest have none to check against: a note says so.
pub async fn verify_restored(m: &Manifest, dir: &Path, bindir: Option<&Path>) -> Result<()> {
    if m.server_manifest.is_none() {
        tracing::info!(
            backup = %m.id,
            "this backup has no server manifest (taken by an older drctl): pg_verifybackup skipped"
        );
        return Ok(());
    }
    // pg_verifybackup runs pg_waldump from its own folder: both come from
    // the backup's major.
    let tool = crate::pg::tools::find(
        "pg_verifybackup",
        m.source.server_version_num / 10000,
        bindir,
    )?;
    let run = |parse_wal: bool| {
        let mut c = tokio::process::Command::new(&tool);
        c.arg("--quiet");
        if !parse_wal {
            c.arg("--no-parse-wal");
        }
        c.arg(dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
    };
    let out = run(true).await.map_err(|e| {
        anyhow!(
            "cannot run {} to check the restored directory: {e}",
            tool.display()
        )
    })?;
    // Only a missing (or other-version) pg_waldump, which comes with the
    // server package, falls back to checking the files alone: WAL that
    // fails to parse stays a failure.
    let said = String::from_utf8_lossy(&out.stderr);
    let no_waldump = said.contains("\"pg_waldump\" is needed by")
        || said.contains("\"pg_waldump\" was found by");
    let out = if !out.status.success() && no_waldump {
        tracing::warn!(
            "pg_waldump is not installed: pg_verifybackup checks the files but not the WAL"
        );
        run(false).await?
    } else {
        out
    };
    if !out.status.success() && crate::cancel::requested() {
        // pg_verifybackup was stopped, not refuted: no word on the backup.
        bail!("cancelled while pg_verifybackup checked {}", dir.display());
    }
    if !out.status.success() {
        bail!(
            "backup {}: the restored files differ from what the server sent (pg_verifybackup {}): {}",
            m.id,
            dir.display(),
            crate::pg::stderr_summary(&out.stderr)
        );
    }
    Ok(())
}

fn empty_or_absent(d: &Path) -> Result<bool> {
    if !d.exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(d)
        .with_context(|| format!("cannot read {}", d.display()))?
        .next()
        .is_none())
}

fn clear_dir(dir: &Path, remove_self: bool) -> std::io::Result<()> {
    if remove_self {
        return std::fs::remove_dir_all(dir);
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn write_recovery(
    policy: &Policy,
    req: &Request,
    plan: &Plan,
    dir: &Path,
    identity: &Path,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the drctl executable")?;
    let restore_command = format!(
        "{} --policies {} wal-fetch {} %f %p --identity {}{}",
        crate::policy::shell_word(&exe.display().to_string()),
        crate::policy::shell_word(&req.policies_dir.display().to_string()),
        policy.name,
        crate::policy::shell_word(&identity.display().to_string()),
        // A restore pinned to one repository fetches its WAL there too.
        policy
            .pinned_to
            .as_deref()
            .map(|r| format!(" --repo {r}"))
            .unwrap_or_default()
    );
    let mut conf = format!(
        "\n# drctl restore of backup {} ({})\nrestore_command = {}\nrecovery_target_timeline = '{}'\n",
        plan.backup_id,
        rfc3339(Timestamp::now()),
        sql_quote(&restore_command),
        recovery_timeline(plan)
    );
    let action = req.action.unwrap_or(plan::Action::Promote).as_str();
    match (&req.stop, &req.target) {
        (Some(stop), _) => {
            let (key, value) = stop.setting();
            conf.push_str(&format!(
                "{key} = {}\nrecovery_target_action = '{action}'\n",
                sql_quote(&value)
            ));
        }
        (None, Target::Time(t)) => {
            // PostgreSQL rejects some ISO forms; this one it accepts.
            let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
            conf.push_str(&format!(
                "recovery_target_time = '{}+00'\nrecovery_target_action = '{action}'\n",
                utc.strftime("%Y-%m-%d %H:%M:%S%.6f")
            ));
        }
        // The backup's consistent point, as pgBackRest's --type=immediate:
        // nothing written after the backup is replayed.
        (None, Target::Backup(_)) => conf.push_str(&format!(
            "recovery_target = 'immediate'\nrecovery_target_action = '{action}'\n"
        )),
        (None, Target::Latest) => {}
    }
    if !req.keep_archiving {
        // The source's ALTER SYSTEM settings came along in this file; the
        // last line wins, so a restored copy cannot push its own timeline
        // into the production archive, whoever starts it and how.
        conf.push_str(ARCHIVING_OFF);
    }
    // pg_ctl restart reuses the options of the last start, which were the
    // source's; a restored directory starts from its own configuration.
    match std::fs::remove_file(dir.join("postmaster.opts")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("cannot remove the stale postmaster.opts");
        }
        _ => {}
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("postgresql.auto.conf"))?;
    f.write_all(conf.as_bytes())?;
    std::fs::write(dir.join("recovery.signal"), b"")?;
    if is_root() {
        for d in std::iter::once(dir.to_path_buf()).chain(
            plan.tablespaces
                .iter()
                .map(|t| PathBuf::from(&t.restore_to)),
        ) {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&d)
                .status()?;
            if !st.success() {
                bail!("cannot give {} to the postgres user", d.display());
            }
        }
    }
    Ok(())
}

/// Written last into a restored cluster's postgresql.auto.conf unless
/// `--keep-archiving`.
const ARCHIVING_OFF: &str = "# a restored copy never archives into the source's repository;\n# remove this line (or restore with --keep-archiving) only when this server replaces the primary\narchive_mode = 'off'\n";

/// The timeline recovery follows: the one the plan's last segment is on,
/// which holds the target, rather than 'latest' (which would follow any
/// timeline a restored copy once pushed into the archive).
fn recovery_timeline(plan: &Plan) -> String {
    plan.wal_segments
        .last()
        .and_then(|n| wal::parse(n).ok())
        .map(|w| w.timeline.to_string())
        .unwrap_or_else(|| "current".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespaces_go_where_mapped_else_home() {
        let ts = vec![
            Tablespace {
                oid: 16390,
                location: "/srv/ts1".into(),
            },
            Tablespace {
                oid: 16391,
                location: "/srv/ts2/".into(),
            },
        ];
        let p = place_tablespaces(&ts, &["/srv/ts2=/restore/ts2".into()]).unwrap();
        assert_eq!(p[0].restore_to, "/srv/ts1");
        assert_eq!(p[1].restore_to, "/restore/ts2");
        let p = place_tablespaces(&ts, &["16390=/r/a/".into(), "16391=/r/b".into()]).unwrap();
        assert_eq!(
            (p[0].restore_to.as_str(), p[1].restore_to.as_str()),
            ("/r/a", "/r/b")
        );
        let e = place_tablespaces(&ts, &["16399=/r/a".into()]).unwrap_err();
        assert!(
            e.contains("no tablespace 16399") && e.contains("16390 at /srv/ts1"),
            "{e}"
        );
        assert!(place_tablespaces(&ts, &["16390=relative".into()])
            .unwrap_err()
            .contains("absolute"));
        assert!(place_tablespaces(&ts, &["16390".into()])
            .unwrap_err()
            .contains("OLD=NEW"));
        assert!(
            place_tablespaces(&ts, &["16390=/r/a".into(), "/srv/ts1=/r/b".into()])
                .unwrap_err()
                .contains("mapped twice")
        );
        assert!(
            place_tablespaces(&ts, &["16390=/srv/ts2".into(), "16391=/srv/ts2".into()])
                .unwrap_err()
                .contains("two tablespaces")
        );
        assert!(place_tablespaces(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        use crate::policy::shell_word;
        assert_eq!(shell_word("/usr/bin/drctl"), "/usr/bin/drctl");
        assert_eq!(shell_word("/a b/$x"), "\"/a b/\\$x\"");
    }
}
