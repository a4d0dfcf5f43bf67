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

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::manifest::{self, Manifest};
use crate::policy::{Method, Policy};
use crate::repo::Repository;
use crate::retention::{self, Item, Rules};
use crate::timeparse::rfc3339;
use crate::wal;

pub const INCOMPLETE_GRACE: SignedDuration = SignedDuration::from_hours(6);
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
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy: String,
    pub method: Method,
    pub dry_run: bool,
    pub backups: Vec<Entry>,
    /// Incomplete backups removed (or, dry run, to remove).
    pub incomplete: Vec<String>,
    /// WAL files removed (or to remove), all before this segment.
    pub wal_files: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_kept_from: Option<String>,
    /// True when the policy has no [retention] rules: everything is kept.
    pub no_rules: bool,
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

/// When an incomplete backup was started, from its id.
fn id_time(id: &str) -> Option<Timestamp> {
    let t = id.get(..16)?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", t).ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

pub async fn run(
    policy: &Policy,
    repo: &dyn Repository,
    catalog: &Catalog,
    dry_run: bool,
) -> Result<Report> {
    let inv = crate::inventory::scan(repo, Some(&policy.name)).await?;
    let pins = pinned_ids(repo, &policy.name).await?;
    let rules = Rules::from_policy(&policy.retention);
    let no_rules = rules.is_empty();
    let items: Vec<Item> = inv
        .complete
        .iter()
        .map(|m| Item {
            id: m.id.clone(),
            at: m.consistent_at,
            pinned: pins.contains(&m.id),
        })
        .collect();
    let mut decisions = if no_rules {
        items
            .iter()
            .rev()
            .map(|i| retention::Decision {
                id: i.id.clone(),
                keep: true,
                reasons: vec!["no retention rules".into()],
            })
            .collect()
    } else {
        retention::decide(&items, &rules, &policy.timezone())
    };
    // Claims are held until the deletions are done, so no restore can
    // lease a backup between this check and its deletion.
    let mut claims = std::collections::BTreeMap::new();
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        match crate::lock::claim(catalog.path(), &policy.name, &d.id, dry_run) {
            Some(c) => {
                claims.insert(d.id.clone(), c);
            }
            None => {
                d.keep = true;
                d.reasons = vec!["in use by a running restore or drill".into()];
            }
        }
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
            }
        })
        .collect();
    let now = Timestamp::now();
    let incomplete: Vec<String> = inv
        .incomplete
        .iter()
        .map(|(_, id)| id.clone())
        .filter(|id| id_time(id).is_some_and(|t| now.duration_since(t) > INCOMPLETE_GRACE))
        .collect();

    // WAL before the oldest kept base backup's start is no longer needed.
    let kept: Vec<&Manifest> = backups
        .iter()
        .filter(|e| e.action == "keep")
        .filter_map(|e| inv.find(&e.id))
        .filter(|m| m.method == Method::Physical)
        .collect();
    let seg_size = crate::restore_physical::segment_size(kept.iter().copied());
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
        for o in repo.list(&wal::dir_key(&policy.name)).await? {
            let Some(file) = o.key.rsplit('/').next() else {
                continue;
            };
            let name = file
                .strip_suffix(".json")
                .or_else(|| file.strip_suffix(".zst.age"))
                .unwrap_or(file);
            let Ok(w) = wal::parse(name) else { continue };
            if w.kind == wal::Kind::History {
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
    let wal_files = wal_keys.iter().filter(|k| k.ends_with(".json")).count() as u64;

    if !dry_run {
        for e in backups.iter().filter(|e| e.action == "delete") {
            delete_backup(repo, &policy.name, &e.id).await?;
            tracing::info!(policy = %policy.name, backup = %e.id, "pruned");
            if let Some(c) = claims.remove(&e.id) {
                c.release_and_remove();
            }
        }
        for id in &incomplete {
            delete_backup(repo, &policy.name, id).await?;
            tracing::info!(policy = %policy.name, backup = %id, "removed incomplete backup");
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
        catalog.forget_missing(&policy.name, &present).await?;
    }
    Ok(Report {
        policy: policy.name.clone(),
        method: policy.backup.method,
        dry_run,
        backups,
        incomplete,
        wal_files,
        wal_kept_from: oldest_start.map(|(_, name)| name),
        no_rules,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_backups_are_dated_by_their_id() {
        assert_eq!(
            id_time("20261122T101500Z-3f9a"),
            Some("2026-11-22T10:15:00Z".parse().unwrap())
        );
        assert_eq!(id_time("garbage"), None);
    }
}
