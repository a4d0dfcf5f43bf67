//! `drctl backup`: a policy's backup job, the same whether cron runs
//! `drctl backup` or the daemon does: take the policy lock, back up by the
//! policy's method, prune, notify. A failed prune or an undeliverable
//! notification never turns a durable backup into a failure.
//!
//! One entry point per method: `dump::backup`, `physical::backup` (both
//! into the repository, sharing `store`) and `crate::rds::backup`.

pub mod delta;
pub mod dump;
pub mod incremental;
pub mod physical;
pub mod store;

use std::path::Path;

use anyhow::Result;
use jiff::Timestamp;

use crate::catalog::Catalog;
use crate::notify::{self, Event};
use crate::policy::{Method, Policy};
use crate::progress::human_bytes;
use crate::repo::manifest::{self, Manifest};

/// What a job made: a committed manifest, or an RDS snapshot.
pub enum Made {
    Repository(Box<Manifest>),
    Rds(Box<crate::rds::Backup>),
}

impl Made {
    pub fn id(&self) -> &str {
        match self {
            Made::Repository(m) => &m.id,
            Made::Rds(b) => &b.id,
        }
    }
}

pub struct BackupOutcome {
    pub made: Made,
    /// Copies that did not get the backup (name → what happened); the
    /// backup is complete in the primary all the same.
    pub copy_failures: std::collections::BTreeMap<String, String>,
    pub pruned: Option<crate::prune::Pruned>,
    pub prune_error: Option<String>,
    /// Why a wanted incremental is a full.
    pub note: Option<String>,
}

/// How one run was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--full` / `--incremental`; None: as the policy says.
    pub force: Option<manifest::Kind>,
    /// Told the backup's id once it has one (the daemon's slot marker).
    pub started: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

pub async fn run(
    policy: &Policy,
    catalog: &Catalog,
    catalog_path: &Path,
    opts: Options,
) -> Result<BackupOutcome> {
    if opts.force.is_some() && policy.backup.method != Method::Physical {
        return Err(crate::error::usage(format!(
            "--full and --incremental are for physical policies; {} is {} (always whole)",
            policy.name,
            policy.backup.method.as_str()
        )));
    }
    let guard = crate::guard::run_guard(catalog_path, policy, "backup", Some(catalog)).await?;
    guard.around(guarded(policy, catalog, opts)).await
}

/// The backup (and the prune after it) under the policy's guard.
async fn guarded(policy: &Policy, catalog: &Catalog, opts: Options) -> Result<BackupOutcome> {
    let rds = policy.backup.method == Method::RdsSnapshot;
    let mut copy_failures = std::collections::BTreeMap::new();
    let mut note = None;
    let made = if rds {
        crate::rds::backup(policy, catalog)
            .await
            .map(|b| Made::Rds(Box::new(b)))
    } else {
        into_repository(policy, catalog, opts)
            .await
            .map(|(m, failed, n)| {
                copy_failures = failed;
                note = n;
                Made::Repository(Box::new(m))
            })
    };
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            let event = if crate::cancel::requested() {
                Event::BackupCancelled
            } else {
                Event::BackupFailed
            };
            notify::send(policy, event, &format!("{e:#}")).await;
            return Err(e);
        }
    };
    let summary = match &made {
        Made::Repository(m) => format!(
            "backup {} complete: {} stored, consistent at {}",
            m.id,
            human_bytes(m.stored_bytes()),
            crate::time::parse::rfc3339(m.consistent_at)
        ),
        Made::Rds(b) => format!(
            "snapshot {} complete in {}{}, consistent at {}",
            b.snapshot,
            b.region,
            b.copy_region
                .as_deref()
                .map(|r| format!(" (copied to {r})"))
                .unwrap_or_default(),
            b.consistent_at
        ),
    };
    notify::send(policy, Event::BackupSucceeded, &summary).await;
    if !copy_failures.is_empty() {
        let msg = copy_failure_message(made.id(), &policy.name, &copy_failures);
        tracing::error!(policy = %policy.name, "{msg}");
        notify::send(policy, Event::CopyFailed, &msg).await;
    }
    let mut out = BackupOutcome {
        copy_failures,
        made,
        pruned: None,
        prune_error: None,
        note,
    };
    if !crate::prune::retention::Rules::from_policy(&policy.retention).is_empty() {
        let r = async {
            if rds {
                return crate::rds::prune(policy, catalog, false).await;
            }
            // The primary's report; a copy's failure is this prune's error.
            let mut primary = None;
            for (name, r) in crate::prune::everywhere(policy, catalog, false).await {
                match r {
                    Ok(r) if name == crate::policy::PRIMARY => primary = Some(r),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(primary.expect("the primary is pruned first"))
        }
        .await;
        match r {
            Ok(r) => out.pruned = Some(r),
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(policy = %policy.name, "prune after backup failed: {msg}");
                notify::send(policy, Event::PruneFailed, &msg).await;
                out.prune_error = Some(msg);
            }
        }
    }
    Ok(out)
}

/// A copy that took this backup also gets the earlier ones it missed
/// (while it was down): the next run catches it up. A copy that fails
/// here is one more failure of the job.
async fn catch_up(policy: &Policy, catalog: &Catalog, failures: &crate::repo::mirror::Failures) {
    // The catalog says which backups each copy holds: a copy that is level
    // costs no listing (scanning both repositories on every run would cost
    // a read per backup).
    let (Ok(rows), Ok(holds)) = (
        catalog.list(Some(&policy.name)).await,
        catalog.copies(Some(&policy.name)).await,
    ) else {
        return;
    };
    let behind = |name: &str| {
        !failures.has(name)
            && rows.iter().filter(|r| r.status == "complete").any(|r| {
                !holds
                    .get(&r.id)
                    .is_some_and(|h| h.iter().any(|c| c == name))
            })
    };
    if !policy.copies.iter().any(|c| behind(&c.name)) {
        return;
    }
    let all = match crate::repo::open_all(policy).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(policy = %policy.name, "cannot open the repositories to catch copies up: {e:#}");
            return;
        }
    };
    let (primary, copies) = all.split_first().expect("the primary comes first");
    for c in copies.iter().filter(|c| behind(&c.name)) {
        let r = crate::copy::level(
            policy,
            &*primary.repo,
            c,
            crate::copy::Scope::Backups,
            catalog,
        )
        .await;
        if let Some(e) = r.error {
            failures.record(&c.name, &anyhow::anyhow!("catching up: {e}"));
        } else if !r.backups.is_empty() {
            tracing::info!(policy = %policy.name, copy = %c.name, backups = ?r.backups, "copy caught up");
        }
    }
}

/// What to say when copies missed a backup, and how to bring them level.
pub fn copy_failure_message(
    id: &str,
    policy: &str,
    failures: &std::collections::BTreeMap<String, String>,
) -> String {
    let each: Vec<String> = failures.iter().map(|(n, e)| format!("{n}: {e}")).collect();
    format!(
        "backup {id} is complete in the primary repository but not in {} ({}); run `drctl copy {policy}` once the copy answers",
        failures.keys().cloned().collect::<Vec<_>>().join(", "),
        each.join("; ")
    )
}

/// A dump or physical backup into the policy's repository (and through it
/// every copy); returns its committed manifest and the copies that missed
/// it. The caller holds the policy lock.
async fn into_repository(
    policy: &Policy,
    catalog: &Catalog,
    opts: Options,
) -> Result<(
    Manifest,
    std::collections::BTreeMap<String, String>,
    Option<String>,
)> {
    let method = policy.backup.method;
    let conn = policy.source_conn()?;
    let recipients = crate::pipeline::parse_recipients(policy.recipients()).map_err(|e| {
        crate::error::usage(format!(
            "{}: encryption.recipients: {e}",
            policy.path.display()
        ))
    })?;
    let (repo, failures) = crate::repo::open_for_writing(policy).await?;
    crate::repo::ensure_initialized(&*repo).await?;
    // What killed runs left goes before this run adds its own (the caller
    // holds the policy lock: nothing of this policy is in flight).
    let swept = async {
        let inv = crate::repo::inventory::scan(&*repo, Some(&policy.name)).await?;
        crate::prune::sweep(&policy.name, &*repo, &inv, false).await
    }
    .await;
    if let Err(e) = swept {
        tracing::warn!(policy = %policy.name, "cannot remove what earlier runs left: {e:#}");
    }

    // Decided before anything is written: a forced incremental that
    // cannot be one is refused here.
    let (parent, mut note) = if method == Method::Physical {
        incremental::choose(policy, &conn, catalog, opts.force).await?
    } else {
        (None, None)
    };
    if let Some(n) = &note {
        // Info, not a warning: `drctl backup` prints it once as a note, and
        // the daemon logs at info.
        tracing::info!(policy = %policy.name, "taking a full backup: {n}");
    }
    let started = Timestamp::now();
    let id = manifest::new_backup_id(started);
    catalog
        .insert_running(&id, &policy.name, method.as_str(), started, repo.url())
        .await?;
    tracing::info!(policy = %policy.name, backup = %id, "backup started");
    if let Some(tx) = &opts.started {
        let _ = tx.send(id.clone());
    }
    let result = match method {
        Method::Physical => physical::backup(
            policy,
            &conn,
            &repo,
            &recipients,
            &id,
            started,
            parent,
            catalog,
        )
        .await
        .map(|t| {
            if t.note.is_some() {
                note = t.note;
            }
            (t.manifest, t.server_manifest)
        }),
        _ => dump::backup(policy, &conn, &*repo, &recipients, &id, started)
            .await
            .map(|m| (m, None)),
    };
    match result {
        Ok((m, server_manifest)) => {
            catalog.upsert_complete(&m, repo.url()).await?;
            // What a 17+ incremental on this backup is taken against (15
            // and 16 compare block maps, already recorded).
            if let (Some(json), true) = (server_manifest, m.source.server_version_num >= 170000) {
                catalog.put_server_manifest(&m.id, &json).await?;
            }
            for c in policy.copies.iter().filter(|c| !failures.has(&c.name)) {
                catalog.record_copy(&policy.name, &m.id, &c.name).await?;
            }
            catch_up(policy, catalog, &failures).await;
            tracing::info!(policy = %policy.name, backup = %id, "backup complete");
            Ok((m, failures.all(), note))
        }
        Err(e) => {
            let msg = format!("{e:#}");
            // Stopped by a signal: recorded as cancelled, not as a failure.
            let ended = if crate::cancel::requested() {
                catalog.mark_cancelled(&id, Timestamp::now(), &msg).await
            } else {
                catalog.mark_failed(&id, Timestamp::now(), &msg).await
            };
            if let Err(ce) = ended {
                tracing::error!(error = %ce, "could not record the failure in the catalog");
            }
            Err(e.context(format!("backup {id} of policy {} failed", policy.name)))
        }
    }
}
