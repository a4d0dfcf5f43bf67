//! `drctl restore`: dump restores (`dump`) and point-in-time recovery of
//! physical backups (`physical`, its chains in `chain`, its started
//! server in `recovery`), planned by the pure `plan` over the
//! repository's inventory. Shared here: what a restore plans and reports
//! (`Plan`, `Outcome`) and the key check every restore makes before it
//! touches anything.

pub mod chain;
pub mod dump;
pub mod extract;
pub mod physical;
pub mod plan;
pub mod recovery;
pub mod toc;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::error::usage;
use crate::pipeline;
use crate::policy::{Method, Policy};
use crate::repo::manifest::Manifest;
use crate::time::parse::rfc3339;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub policy: String,
    /// The repository the restore reads: "primary" or a `[[copy]]` name.
    pub repository: String,
    pub backup_id: String,
    pub method: Method,
    /// The requested time, or the backup's consistent point for --latest/--backup.
    pub target_time: String,
    pub consistent_at: String,
    pub gap_seconds: Option<i64>,
    pub wal_segments: Vec<String>,
    pub target: Option<String>,
    pub stored_bytes: u64,
    pub source_bytes: u64,
    pub dry_run: bool,
    /// Physical: the policy's recoverable window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// Physical: every continuous range, oldest first (gaps split them);
    /// window_start/window_end are the newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<crate::wal::archive::RangeJson>>,
    /// Physical: the last commit in the newest range, where the archive
    /// recorded commits; a target after it restores that commit's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
    /// Physical: how far the archived WAL reaches from this backup (exact):
    /// what a restore can provably recover, commits or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_end: Option<String>,
    /// Physical: where each tablespace of the backup goes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<TablespacePlacement>,
    /// Restoring over the policy's own source (`--overwrite-source`): what
    /// is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrites_source: Option<String>,
    /// Physical incrementals: the backups the restore combines, the full
    /// first and `backup_id` last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Their manifests (same order), for the restore itself.
    #[serde(skip)]
    pub links: Vec<Manifest>,
    /// Physical: replay stops at this LSN, transaction or restore point
    /// ("lsn 0/3000060", "xid 745", "name before-migration").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target: Option<String>,
    /// Physical: what the server does at the target (promote, pause,
    /// shutdown), when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_action: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TablespacePlacement {
    pub oid: u32,
    /// Its directory on the source server.
    pub location: String,
    pub restore_to: String,
}

impl Plan {
    /// The fields every plan has; the method's planner fills in the rest.
    pub fn new(policy: &Policy, m: &Manifest, target_time: jiff::Timestamp, dry_run: bool) -> Plan {
        Plan {
            policy: policy.name.clone(),
            repository: policy.reads_from(),
            backup_id: m.id.clone(),
            method: m.method,
            target_time: crate::time::parse::rfc3339_exact(target_time),
            consistent_at: rfc3339(m.consistent_at),
            gap_seconds: None,
            wal_segments: Vec::new(),
            target: None,
            stored_bytes: m.stored_bytes(),
            source_bytes: m.source_bytes(),
            dry_run,
            window_start: None,
            window_end: None,
            windows: None,
            last_commit_at: None,
            archive_end: None,
            tablespaces: Vec::new(),
            overwrites_source: None,
            chain: Vec::new(),
            links: Vec::new(),
            recovery_target: None,
            target_action: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub plan: Plan,
    pub created_database: bool,
    pub duration_seconds: f64,
    /// Physical with --start: the point recovery reached, per the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<String>,
    /// Physical with --start: the port the restored server listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Physical with --start: "promoted", "paused" (in recovery at the
    /// target, `--target-action pause`) or "shut down" (`shutdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_state: Option<&'static str>,
}

/// Resolve `--identity` / `DRCTL_IDENTITY` and load it.
pub fn identities(path: Option<&PathBuf>) -> Result<Vec<age::x25519::Identity>> {
    let p = path.ok_or_else(|| {
        usage("restoring needs the private key: pass --identity FILE or set DRCTL_IDENTITY")
    })?;
    pipeline::load_identities(p)
}

/// Decrypt only the age header: proves the key fits before anything is touched.
pub async fn check_identity(
    policy: &Policy,
    m: &Manifest,
    ids: &[age::x25519::Identity],
    id_path: &std::path::Path,
) -> Result<()> {
    let repo = crate::repo::open_for_reading(policy).await?;
    let obj = m.objects.first().context("manifest lists no objects")?;
    let reader = repo.reader(&obj.key).await?;
    let ids = ids.to_vec();
    let ok = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let d = age::Decryptor::new_buffered(std::io::BufReader::new(reader))
            .map_err(|e| e.to_string())?;
        match d.decrypt(ids.iter().map(|i| i as &dyn age::Identity)) {
            Ok(_) => Ok(true),
            Err(age::DecryptError::NoMatchingKeys) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(usage(format!(
            "the identity in {} does not match backup {} (encrypted to {}); use the key that belongs to the policy's recipients",
            id_path.display(),
            m.id,
            m.encryption.recipients.join(", ")
        ))),
        Err(e) => bail!("backup {} is unreadable: {e}", m.id),
    }
}

/// What a restore holds once the shared preamble let it go ahead.
pub struct Go {
    pub ids: Vec<age::x25519::Identity>,
    /// Prune keeps the backup (and its chain) while this restore reads it.
    pub _lease: Vec<crate::lock::Lease>,
    /// The same in an S3 repository, for a prune on another host.
    pub _remote: Vec<crate::repo::lease::RunLease>,
}

/// The preamble every restore runs after its own checks: load the key and
/// prove it opens the backup (on a dry run too, when one is given), stop
/// there for a dry run (None), else lease the backup.
pub async fn preamble(
    policy: &Policy,
    m: &Manifest,
    identity: Option<&PathBuf>,
    dry_run: bool,
    lease_catalog: Option<&PathBuf>,
    chain: &[String],
) -> Result<Option<Go>> {
    let ids = match (identity, dry_run) {
        (None, true) => None,
        (p, _) => Some(identities(p)?),
    };
    if let (Some(ids), Some(p)) = (&ids, identity) {
        check_identity(policy, m, ids, p).await?;
    }
    if dry_run {
        return Ok(None);
    }
    let read: Vec<String> = std::iter::once(&m.id)
        .chain(chain.iter().filter(|id| **id != m.id))
        .cloned()
        .collect();
    let mut lease = Vec::new();
    if let Some(c) = lease_catalog {
        for id in &read {
            lease.push(crate::lock::lease(c, &policy.name, id)?);
        }
    }
    Ok(Some(Go {
        ids: ids.expect("loaded unless dry-run"),
        _lease: lease,
        _remote: remote_leases(policy, &read).await,
    }))
}

/// Lease the backups read in the policy's S3 repository, so a prune on any
/// host keeps them. A restore matters more than that protection: when the
/// leases cannot be written (the primary is down, and the restore reads a
/// copy) it goes on, saying so.
async fn remote_leases(policy: &Policy, ids: &[String]) -> Vec<crate::repo::lease::RunLease> {
    let Some(cfg) = &policy.repository else {
        return Vec::new();
    };
    let leased = async {
        let repo = crate::repo::open(cfg).await?;
        if !repo.conditional_writes() {
            return anyhow::Ok(Vec::new());
        }
        crate::repo::lease::lease_backups(repo, &policy.name, ids, "restore", cfg.lease_ttl()).await
    }
    .await;
    leased.unwrap_or_else(|e| {
        tracing::warn!(
            policy = %policy.name,
            "cannot lease the backups this restore reads ({e:#}): a prune on another host may delete them meanwhile"
        );
        Vec::new()
    })
}

impl Outcome {
    /// A dry run's outcome: the plan, nothing done.
    pub fn dry_run(plan: Plan, started: std::time::Instant) -> Outcome {
        Outcome {
            plan,
            created_database: false,
            duration_seconds: started.elapsed().as_secs_f64(),
            reached_at: None,
            port: None,
            server_state: None,
        }
    }
}
