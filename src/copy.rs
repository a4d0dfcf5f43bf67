//! `drctl copy`: bring a `[[copy]]` level with the primary, and the
//! catch-up wal-push does for a copy that was down.
//!
//! Objects travel as stored: nothing is decrypted or recompressed, so the
//! copy needs no key. Each object's stored SHA-256 (from its manifest or
//! WAL sidecar) is checked on the way; a mismatch aborts that object's
//! write, so a copy never holds bytes the primary did not vouch for. The
//! commit order is the primary's: a backup's objects, then its manifest; a
//! segment, then its sidecar. What the copy already holds is skipped.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::policy::Policy;
use crate::repo::manifest;
use crate::repo::mirror::Named;
use crate::repo::Repository;

/// Copy one object as stored; with `expect`, only if its bytes have that
/// SHA-256. Returns the bytes copied.
pub async fn object(
    from: &dyn Repository,
    to: &Arc<dyn Repository>,
    key: &str,
    expect: Option<&str>,
) -> Result<u64> {
    let reader = from.reader(key).await?;
    let mut writer = to.writer(key).await?;
    let expect = expect.map(str::to_string);
    let key = key.to_string();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut hashed = crate::pipeline::HashReader::new(reader);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // A copy can be long: the first SIGTERM must end it.
            if crate::cancel::requested() {
                bail!("cancelled");
            }
            let got = hashed
                .read(&mut buf)
                .with_context(|| format!("reading {key}"))?;
            if got == 0 {
                break;
            }
            writer
                .write_all(&buf[..got])
                .with_context(|| format!("writing {key}"))?;
        }
        let (n, sha) = hashed.finish();
        if let Some(e) = expect {
            if sha != e {
                // Dropping the writer aborts it: nothing lands.
                bail!("{key} in the primary has sha256 {sha}, its record says {e}: not copied; run `drctl verify`");
            }
        }
        writer.finish()?;
        Ok(n)
    })
    .await
    .context("copy thread panicked")?
}

/// Copy one committed backup: every object under its folder, the manifest
/// last. Objects the copy already holds at the recorded size are skipped.
async fn backup(
    from: &dyn Repository,
    to: &Arc<dyn Repository>,
    m: &manifest::Manifest,
) -> Result<u64> {
    let prefix = manifest::backup_prefix(&m.policy, &m.id);
    let manifest_key = manifest::manifest_key(&m.policy, &m.id);
    let have: BTreeSet<(String, u64)> = to
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let mut bytes = 0;
    for o in from.list(&prefix).await? {
        if o.key == manifest_key || have.contains(&(o.key.clone(), o.size)) {
            continue;
        }
        let expect = m
            .objects
            .iter()
            .find(|e| e.key == o.key)
            .map(|e| e.stored_sha256.as_str());
        bytes += object(from, to, &o.key, expect).await?;
    }
    let body = from
        .get_bytes(&manifest_key)
        .await?
        .with_context(|| format!("{manifest_key} vanished from the primary"))?;
    to.put_bytes(&manifest_key, body).await?;
    Ok(bytes)
}

/// Copy one archived WAL file (segment, history or backup-history file)
/// and then its sidecar, which commits it. `side_key` names the sidecar.
pub async fn wal_file(
    from: &dyn Repository,
    to: &Arc<dyn Repository>,
    side_key: &str,
) -> Result<u64> {
    let body = from
        .get_bytes(side_key)
        .await?
        .with_context(|| format!("{side_key} is not in the primary"))?;
    let side =
        crate::wal::Sidecar::from_json(&body).map_err(|e| anyhow::anyhow!("{side_key}: {e}"))?;
    let obj_key = format!(
        "{}.zst.age",
        side_key.strip_suffix(".json").unwrap_or(side_key)
    );
    let n = object(from, to, &obj_key, Some(&side.stored_sha256)).await?;
    to.put_bytes(side_key, body).await?;
    Ok(n)
}

/// What `drctl copy` did for one copy.
#[derive(Debug, Serialize)]
pub struct Copied {
    pub policy: String,
    pub copy: String,
    pub backups: Vec<String>,
    pub wal_files: u64,
    pub bytes: u64,
    /// Why it stopped short, if it did.
    pub error: Option<String>,
}

/// What `level` brings over.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    /// One backup, as the caller found it in the primary.
    Backup(&'a manifest::Manifest),
    /// Every complete backup the copy lacks (a backup job's catch-up; WAL
    /// is wal-push's).
    Backups,
    /// Every backup and every archived WAL file, then the WAL backlog.
    Everything,
}

/// Bring `to` level with the primary, as far as `scope` says.
pub async fn level(
    policy: &Policy,
    from: &dyn Repository,
    to: &Named,
    scope: Scope<'_>,
    catalog: &crate::catalog::Catalog,
) -> Copied {
    let mut out = Copied {
        policy: policy.name.clone(),
        copy: to.name.clone(),
        backups: Vec::new(),
        wal_files: 0,
        bytes: 0,
        error: None,
    };
    if let Err(e) = level_into(policy, from, to, scope, catalog, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn level_into(
    policy: &Policy,
    from: &dyn Repository,
    to: &Named,
    scope: Scope<'_>,
    catalog: &crate::catalog::Catalog,
    out: &mut Copied,
) -> Result<()> {
    crate::repo::ensure_initialized(&*to.repo).await?;
    let inv;
    let wanted: &[manifest::Manifest] = match scope {
        Scope::Backup(m) => std::slice::from_ref(m),
        _ => {
            inv = crate::repo::inventory::scan(from, Some(&policy.name)).await?;
            &inv.complete
        }
    };
    let there = crate::repo::inventory::scan(&*to.repo, Some(&policy.name)).await?;
    for m in wanted {
        if there.find(&m.id).is_none() {
            out.bytes += backup(from, &to.repo, m)
                .await
                .with_context(|| format!("copying backup {} to {}", m.id, to.name))?;
            out.backups.push(m.id.clone());
        }
        catalog.record_copy(&policy.name, &m.id, &to.name).await?;
    }
    if !matches!(scope, Scope::Everything)
        || policy.backup.method != crate::policy::Method::Physical
    {
        return Ok(());
    }
    let wal_prefix = format!("{}/wal/", policy.name);
    let have: BTreeSet<String> = to
        .repo
        .list(&wal_prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    for o in from.list(&wal_prefix).await? {
        if !o.key.ends_with(".json") || have.contains(&o.key) {
            continue;
        }
        out.bytes += wal_file(from, &to.repo, &o.key)
            .await
            .with_context(|| format!("copying {} to {}", o.key, to.name))?;
        out.wal_files += 1;
    }
    // Everything the backlog named is there now.
    for m in from.list(&backlog_prefix(&policy.name, &to.name)).await? {
        from.delete(&m.key).await?;
    }
    Ok(())
}

/// Where the primary records WAL a copy has not received yet: one empty
/// marker per file, named after its sidecar key.
pub fn backlog_prefix(policy: &str, copy: &str) -> String {
    format!("{policy}/copies/{copy}/wal-backlog/")
}

fn backlog_key(policy: &str, copy: &str, side_key: &str) -> String {
    format!(
        "{}{}",
        backlog_prefix(policy, copy),
        side_key.replace('/', "~")
    )
}

/// How long wal-push waits on one copy before leaving the file in its
/// backlog: a copy far away or down must not hold up archiving.
const COPY_WAIT: Duration = Duration::from_secs(30);
/// The same for a copy that already has a backlog.
const BEHIND_WAIT: Duration = Duration::from_secs(5);

/// `wal_to_copies` for the file wal-push was given.
pub async fn after_push(policy: &Policy, path: &std::path::Path) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| crate::error::usage(format!("{} names no file", path.display())))?;
    let w = crate::wal::parse(name).map_err(crate::error::usage)?;
    let primary = crate::repo::open_for(policy).await?;
    wal_to_copies(
        policy,
        &*primary,
        &crate::wal::sidecar_key(&policy.name, &w),
    )
    .await
}

/// After wal-push made `side_key` durable in the primary: give it, and
/// whatever each copy missed before, to every copy. A copy that fails keeps
/// a backlog in the primary; past its `max_lag` that is an error (the
/// primary holds the file either way).
pub async fn wal_to_copies(
    policy: &Policy,
    primary: &dyn Repository,
    side_key: &str,
) -> Result<()> {
    let mut behind = Vec::new();
    for c in &policy.copies {
        let prefix = backlog_prefix(&policy.name, &c.name);
        let mut pending: Vec<String> = primary
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mine = backlog_key(&policy.name, &c.name, side_key);
        // A copy already behind was failing a moment ago: it gets a short
        // try, and this file waits in the backlog with the rest.
        let wait = if pending.is_empty() {
            COPY_WAIT
        } else {
            if !pending.contains(&mine) {
                primary.put_bytes(&mine, Vec::new()).await?;
                pending.push(mine.clone());
            }
            BEHIND_WAIT
        };
        let drained = tokio::time::timeout(wait, async {
            let repo = crate::repo::open(&c.repository).await?;
            crate::repo::ensure_initialized(&*repo).await?;
            if pending.is_empty() {
                wal_file(primary, &repo, side_key).await?;
            }
            for m in &pending {
                let side = m.strip_prefix(&prefix).unwrap_or(m).replace('~', "/");
                wal_file(primary, &repo, &side).await?;
                primary.delete(m).await?;
            }
            anyhow::Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {}s", wait.as_secs())));
        if drained.is_err() && pending.is_empty() {
            primary.put_bytes(&mine, Vec::new()).await?;
        }
        if let Err(e) = drained {
            behind.push((c, e));
        }
    }
    let mut late = Vec::new();
    for (c, e) in behind {
        // A copy that answered and refused (permissions, a full disk, a
        // missing bucket) is a failure now; only one that cannot be reached
        // may lag, up to max_lag.
        if !unreachable(&e) {
            late.push(format!("copy {} refused the file: {e:#}", c.name));
            continue;
        }
        let oldest = oldest_backlog(primary, &policy.name, &c.name).await?;
        let lag = oldest.map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs());
        tracing::warn!(policy = %policy.name, copy = %c.name, "WAL not copied yet: {e:#}");
        if lag.is_some_and(|l| l > c.max_lag()) {
            late.push(format!(
                "copy {} has not taken WAL for {}s (max_lag {}s): {e:#}",
                c.name,
                lag.unwrap_or_default().as_secs(),
                c.max_lag().as_secs()
            ));
        }
    }
    if !late.is_empty() {
        bail!(
            "the primary holds the file, but {}; fix the copy or run `drctl copy {}`",
            late.join("; "),
            policy.name
        );
    }
    Ok(())
}

/// Whether a copy's failure is that it could not be reached (connection,
/// timeout) rather than an answer refusing the write. The S3 SDK reports
/// the first as a dispatch failure or a timeout.
fn unreachable(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}").to_ascii_lowercase();
    // No credentials (the archiving user's environment lacks them) comes
    // as a dispatch failure too, but no wait will fix it: a refusal.
    if s.contains("credential") {
        return false;
    }
    [
        "dispatch failure",
        "timeout",
        "timed out",
        "no answer within",
        "connection refused",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// When the oldest file still owed to a copy was archived. Marker names
/// sort as WAL does (timeline, then segment), so the first is the oldest:
/// one read, however long the backlog.
async fn oldest_backlog(
    primary: &dyn Repository,
    policy: &str,
    copy: &str,
) -> Result<Option<jiff::Timestamp>> {
    let prefix = backlog_prefix(policy, copy);
    let Some(first) = primary.list(&prefix).await?.into_iter().next() else {
        return Ok(None);
    };
    let side = first
        .key
        .strip_prefix(&prefix)
        .unwrap_or(&first.key)
        .replace('~', "/");
    let Some(body) = primary.get_bytes(&side).await? else {
        return Ok(None);
    };
    let s = crate::wal::Sidecar::from_json(&body).map_err(|e| anyhow::anyhow!("{side}: {e}"))?;
    Ok(s.pushed_at.parse().ok())
}
