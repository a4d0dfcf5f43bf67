//! `prune`: apply a policy's retention to its repository.
//!
//! The repository is the source of truth: backups come from its manifests,
//! pins from its `pinned` markers, so a rebuilt catalog prunes the same way.
//! A backup is deleted manifest first (from then on it is incomplete, never
//! restorable), then its objects. For physical policies, WAL wholly before
//! the oldest kept base backup's start goes with it; timeline history files
//! always stay. Incomplete backups (objects, no manifest) older than a grace
//! period are removed: the policy lock guarantees none of this policy's
//! backups is being written meanwhile, the grace covers other hosts.

pub mod retention;

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use jiff::Timestamp;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::policy::{Method, Policy};
use crate::repo::manifest::{self, Manifest};
use crate::repo::Repository;
use crate::time::parse::rfc3339;
use crate::wal;
use retention::{Item, Rules};

/// Temp objects and uploads under `wal/` older than this are dead: wal-push
/// takes no lock, and one push never takes this long.
pub const WAL_LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
pub const PIN_MARKER: &str = "pinned";

#[derive(Debug, Serialize)]
pub struct Entry {
    pub id: String,
    pub policy: String,
    pub method: Method,
    /// None for an incomplete backup.
    pub consistent_at: Option<String>,
    /// "keep" or "delete".
    pub action: &'static str,
    /// The rules that keep it; empty when none does.
    pub reasons: Vec<String>,
    pub stored_bytes: u64,
    /// The [[copy]] it is in; absent for the primary repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Pruned {
    pub policy: String,
    /// The [[copy]] pruned; absent for the primary repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub method: Method,
    pub dry_run: bool,
    pub backups: Vec<Entry>,
    /// Incomplete backups removed (or, dry run, to remove).
    pub incomplete: Vec<String>,
    /// Temp objects and unfinished uploads of killed runs removed (or to
    /// remove), and the bytes they held where the store says.
    pub leftovers: u64,
    pub leftover_bytes: u64,
    /// WAL files removed (or to remove), all before this segment.
    pub wal_files: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_kept_from: Option<String>,
    /// WAL files retention lets go that stay under S3 Object Lock.
    #[serde(skip_serializing_if = "is_zero")]
    pub wal_locked: u64,
    /// True when the policy has no [retention] rules: everything is kept.
    pub no_rules: bool,
}

/// The copy a pinned policy reads, None for the primary.
fn copy_name(policy: &Policy) -> Option<String> {
    policy
        .pinned_to
        .clone()
        .filter(|n| n != crate::policy::PRIMARY)
}

/// Prune the primary with the policy's retention and each copy with its
/// own (or the policy's). A copy that fails does not hide the others.
pub async fn everywhere(
    policy: &Policy,
    catalog: &Catalog,
    dry_run: bool,
) -> Vec<(String, Result<Pruned>)> {
    let mut out = Vec::new();
    let primary = async {
        let repo = crate::repo::open_for(policy).await?;
        run(policy, &*repo, catalog, dry_run).await
    }
    .await;
    out.push((crate::policy::PRIMARY.to_string(), primary));
    for c in &policy.copies {
        let r = async {
            let pinned = policy.pinned(&c.name)?;
            let repo = crate::repo::open_for(&pinned).await?;
            run(&pinned, &*repo, catalog, dry_run).await
        }
        .await;
        out.push((
            c.name.clone(),
            r.map_err(|e| e.context(format!("copy {}", c.name))),
        ));
    }
    out
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn pin_key(policy: &str, id: &str) -> String {
    format!("{}{PIN_MARKER}", manifest::backup_prefix(policy, id))
}

/// Pin or unpin a committed backup (marker in the repository, mirrored in
/// the catalog).
pub async fn set_pinned(
    repo: &dyn Repository,
    catalog: &Catalog,
    m: &Manifest,
    pinned: bool,
) -> Result<()> {
    let key = pin_key(&m.policy, &m.id);
    if pinned {
        let body = serde_json::json!({ "pinned_at": rfc3339(Timestamp::now()) });
        repo.put_bytes(&key, serde_json::to_vec_pretty(&body)?)
            .await
            .with_context(|| format!("cannot write {key}"))?;
    } else {
        repo.delete(&key)
            .await
            .with_context(|| format!("cannot delete {key}"))?;
    }
    catalog.set_pinned(&m.id, pinned).await
}

pub async fn pinned_ids(repo: &dyn Repository, policy: &str) -> Result<BTreeSet<String>> {
    let prefix = format!("{policy}/backups/");
    Ok(repo
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix(&prefix)?;
            let (id, name) = rest.split_once('/')?;
            (name == PIN_MARKER).then(|| id.to_string())
        })
        .collect())
}

/// Claim each backup to delete against leases; one a running restore or
/// drill holds is kept instead. The claims, by backup id.
pub(crate) fn claim(
    catalog: &Catalog,
    policy: &str,
    decisions: &mut [retention::Decision],
    dry_run: bool,
) -> std::collections::BTreeMap<String, crate::lock::Claim> {
    let mut claims = std::collections::BTreeMap::new();
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        match crate::lock::claim(catalog.path(), policy, &d.id, dry_run) {
            Some(c) => {
                claims.insert(d.id.clone(), c);
            }
            None => {
                d.keep = true;
                d.reasons = vec!["in use by a running restore or drill".into()];
            }
        }
    }
    claims
}

pub async fn run(
    policy: &Policy,
    repo: &dyn Repository,
    catalog: &Catalog,
    dry_run: bool,
) -> Result<Pruned> {
    let inv = crate::repo::inventory::scan(repo, Some(&policy.name)).await?;
    let pins = pinned_ids(repo, &policy.name).await?;
    let rules = Rules::from_policy(&policy.retention);
    let no_rules = rules.is_empty();
    let items: Vec<Item> = inv
        .complete
        .iter()
        .map(|m| Item::of(m, pins.contains(&m.id)))
        .collect();
    let mut decisions = retention::decide_or_keep(&items, &rules, &policy.timezone());
    let parents: std::collections::HashMap<String, String> = inv
        .complete
        .iter()
        .filter_map(|m| Some((m.id.clone(), m.parent.clone()?)))
        .collect();
    retention::keep_ancestors(&mut decisions, &parents);
    // Claims are held until the deletions are done, so no restore can
    // lease a backup between this check and its deletion.
    let mut claims = claim(catalog, &policy.name, &mut decisions, dry_run);
    // Restores and drills on other hosts lease what they read in S3.
    if repo.conditional_writes() {
        let readers = crate::repo::lease::readers(repo, &policy.name, !dry_run)
            .await
            .context("cannot read the leases of running restores; nothing was deleted")?;
        for d in decisions.iter_mut().filter(|d| !d.keep) {
            if let Some(h) = readers.get(&d.id) {
                d.keep = true;
                d.reasons = vec![format!(
                    "in use by a {} on {} (pid {}), leased until {}",
                    h.what,
                    h.host,
                    h.pid,
                    rfc3339(h.expires)
                )];
                claims.remove(&d.id);
            }
        }
    }
    // Asked once: a bucket without Object Lock holds no locked object.
    let lockable = repo.lockable().await?;
    if lockable {
        hold_locked(repo, &policy.name, &mut decisions, &mut claims).await?;
    }
    // A dependent kept by a lease or a lock keeps its chain too.
    for id in retention::keep_ancestors(&mut decisions, &parents) {
        claims.remove(&id);
    }
    let backups: Vec<Entry> = decisions
        .into_iter()
        .map(|d| {
            let m = inv.find(&d.id).expect("decided from the inventory");
            Entry {
                id: d.id,
                policy: policy.name.clone(),
                method: m.method,
                consistent_at: Some(rfc3339(m.consistent_at)),
                action: if d.keep { "keep" } else { "delete" },
                reasons: d.reasons,
                stored_bytes: m.stored_bytes(),
                repository: copy_name(policy),
            }
        })
        .collect();
    // WAL before the oldest kept base backup's start is no longer needed.
    let kept: Vec<&Manifest> = backups
        .iter()
        .filter(|e| e.action == "keep")
        .filter_map(|e| inv.find(&e.id))
        .filter(|m| m.method == Method::Physical)
        .collect();
    let (mut wal_keys, wal_kept_from) = wal_before(repo, &policy.name, &kept).await?;
    let mut wal_locked = 0;
    if lockable {
        (wal_keys, wal_locked) = unlocked(repo, wal_keys).await?;
    }
    let wal_files = wal_keys.iter().filter(|k| k.ends_with(".json")).count() as u64;

    let swept = sweep(&policy.name, repo, &inv, dry_run).await?;
    if !dry_run {
        for e in backups.iter().filter(|e| e.action == "delete") {
            delete_backup(repo, &policy.name, &e.id).await?;
            tracing::info!(policy = %policy.name, backup = %e.id, "pruned");
            if let Some(c) = claims.remove(&e.id) {
                c.release_and_remove();
            }
        }
        for k in &wal_keys {
            repo.delete(k)
                .await
                .with_context(|| format!("cannot delete {k}"))?;
        }
        let present: Vec<String> = backups
            .iter()
            .filter(|e| e.action == "keep")
            .map(|e| e.id.clone())
            .collect();
        // The catalog's rows are the primary's; a copy has its own list.
        match copy_name(policy) {
            None => catalog.forget_missing(&policy.name, &present).await?,
            Some(c) => {
                catalog
                    .forget_copy_missing(&policy.name, &c, &present)
                    .await?;
                0
            }
        };
    }
    Ok(Pruned {
        policy: policy.name.clone(),
        repository: copy_name(policy),
        method: policy.backup.method,
        dry_run,
        backups,
        incomplete: swept.incomplete,
        leftovers: swept.leftovers,
        leftover_bytes: swept.leftover_bytes,
        wal_files,
        wal_kept_from,
        wal_locked,
        no_rules,
    })
}

/// The keys whose objects are not under Object Lock, and how many are.
async fn unlocked(repo: &dyn Repository, keys: Vec<String>) -> Result<(Vec<String>, u64)> {
    let mut free = Vec::with_capacity(keys.len());
    let mut held = 0;
    for k in keys {
        if locked(repo, &k).await?.is_some() {
            held += 1;
        } else {
            free.push(k);
        }
    }
    Ok((free, held))
}

/// When the object's lock ends, if it has not yet.
async fn locked(repo: &dyn Repository, key: &str) -> Result<Option<Timestamp>> {
    let until = repo
        .locked_until(key)
        .await
        .with_context(|| format!("cannot read the Object Lock of {key}"))?;
    Ok(until.filter(|u| *u > Timestamp::now()))
}

/// Keep every backup retention lets go whose objects are still under S3
/// Object Lock, saying until when: deleting them would only hide them
/// behind delete markers (or be refused).
async fn hold_locked(
    repo: &dyn Repository,
    policy: &str,
    decisions: &mut [retention::Decision],
    claims: &mut std::collections::BTreeMap<String, crate::lock::Claim>,
) -> Result<()> {
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        let mut keys: Vec<String> = repo
            .list(&manifest::backup_prefix(policy, &d.id))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.push(manifest::manifest_key(policy, &d.id));
        keys.dedup();
        let mut until: Option<Timestamp> = None;
        for k in &keys {
            until = until.max(locked(repo, k).await?);
        }
        if let Some(u) = until {
            d.keep = true;
            d.reasons = vec![if u == Timestamp::MAX {
                "under an Object Lock legal hold".to_string()
            } else {
                format!("locked until {}", rfc3339(u))
            }];
            claims.remove(&d.id);
        }
    }
    Ok(())
}

/// What a sweep removed (or, dry run, would remove).
#[derive(Debug, Default)]
pub struct Swept {
    pub incomplete: Vec<String>,
    pub leftovers: u64,
    pub leftover_bytes: u64,
}

/// Remove what killed runs of `policy` left: backup folders without a
/// manifest, temp objects, unfinished multipart uploads. The caller holds
/// the policy lock (backup and prune both take it), so no backup of this
/// policy is in flight and everything under its backups/ that is not
/// committed is dead, whatever its age; wal-push takes no lock, so under
/// wal/ only leftovers older than `WAL_LEFTOVER_GRACE` go.
pub async fn sweep(
    policy: &str,
    repo: &dyn Repository,
    inv: &crate::repo::inventory::Inventory,
    dry_run: bool,
) -> Result<Swept> {
    let mut out = Swept {
        incomplete: inv
            .incomplete
            .iter()
            .filter(|(p, _)| p == policy)
            .map(|(_, id)| id.clone())
            .collect(),
        ..Swept::default()
    };
    let mut dead = repo.leftovers(&format!("{policy}/backups/")).await?;
    dead.extend(
        repo.leftovers(&wal::dir_key(policy))
            .await?
            .into_iter()
            .filter(|l| l.age > WAL_LEFTOVER_GRACE),
    );
    out.leftovers = dead.len() as u64;
    out.leftover_bytes = dead.iter().map(|l| l.size).sum();
    if dry_run {
        return Ok(out);
    }
    for id in &out.incomplete {
        delete_backup(repo, policy, id).await?;
        tracing::info!(policy, backup = %id, "removed incomplete backup");
    }
    for l in &dead {
        repo.remove_leftover(l)
            .await
            .with_context(|| format!("cannot remove the leftover {}", l.key))?;
        tracing::info!(policy, key = %l.key, bytes = l.size, "removed what an interrupted run left");
    }
    Ok(out)
}

/// WAL no physical backup in `kept` needs (every segment before the oldest
/// one's start; history files stay), sidecars (the commit markers) first,
/// and the segment they are kept from.
async fn wal_before(
    repo: &dyn Repository,
    policy: &str,
    kept: &[&Manifest],
) -> Result<(Vec<String>, Option<String>)> {
    let seg_size = crate::wal::archive::segment_size(kept.iter().copied());
    let oldest_start = kept
        .iter()
        .filter_map(|m| m.wal.as_ref())
        .filter_map(|w| {
            let p = wal::parse(&w.start_segment).ok()?;
            let (log, seg) = p.log_seg?;
            Some((wal::segno(log, seg, seg_size), w.start_segment.clone()))
        })
        .min();
    let mut wal_keys = Vec::new();
    if let Some((start, _)) = &oldest_start {
        for o in repo.list(&wal::dir_key(policy)).await? {
            let Some(file) = o.key.rsplit('/').next() else {
                continue;
            };
            let name = file
                .strip_suffix(".json")
                .or_else(|| file.strip_suffix(".zst.age"))
                .unwrap_or(file);
            let Ok(w) = wal::parse(name) else { continue };
            if w.kind == wal::FileKind::History {
                continue;
            }
            if let Some((log, seg)) = w.log_seg {
                if wal::segno(log, seg, seg_size) < *start {
                    wal_keys.push(o.key);
                }
            }
        }
    }
    // Sidecars (the commit markers) go first.
    wal_keys.sort_by_key(|k| !k.ends_with(".json"));
    Ok((wal_keys, oldest_start.map(|(_, name)| name)))
}

/// Manifest first: from that moment the backup is incomplete, so a prune
/// that dies halfway leaves nothing anyone could restore from by mistake.
async fn delete_backup(repo: &dyn Repository, policy: &str, id: &str) -> Result<()> {
    repo.delete(&manifest::manifest_key(policy, id))
        .await
        .with_context(|| format!("cannot delete the manifest of {id}"))?;
    for o in repo.list(&manifest::backup_prefix(policy, id)).await? {
        repo.delete(&o.key)
            .await
            .with_context(|| format!("cannot delete {}", o.key))?;
    }
    Ok(())
}
