//! `wal-push` (archive_command) and `wal-fetch` (restore_command).
//!
//! Both run once per file, as the postgres OS user, many times a minute:
//! they touch only the policy and the repository, never the catalog.
//! Exit status is the contract with PostgreSQL: push exits 0 only once the
//! file and its sidecar are durable; fetch exits 1 only when the file is
//! truly absent, and 126 (recovery aborts) for anything it cannot vouch for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::pipeline::{self, DecodeError, EncodeOptions};
use crate::policy::{Method, Policy};
use crate::repo::Repository;
use crate::wal::{self, Sidecar, WalName};

#[derive(Debug)]
pub enum Pushed {
    Archived(Box<Sidecar>),
    /// The same content was archived before (PostgreSQL retries after a crash).
    AlreadyArchived,
}

fn check_method(policy: &Policy) -> Result<()> {
    if policy.backup.method != Method::Physical {
        return Err(crate::error::usage(format!(
            "{}: WAL archiving needs backup.method = \"physical\" (it is \"{}\")",
            policy.path.display(),
            policy.backup.method
        )));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

/// Archive one file. Never overwrites: identical content is success,
/// different content an error.
/// What a killed wal-push of this same file left (temp files, unfinished
/// uploads for `keys`). PostgreSQL archives one file at a time, so nothing
/// writes them now; were something to, its commit would fail loudly, never
/// succeed falsely. Best effort: the prune sweep catches the rest later.
async fn remove_own_leftovers(repo: &dyn crate::repo::Repository, keys: &[&str]) {
    let Some((dir, _)) = keys.first().and_then(|k| k.rsplit_once('/')) else {
        return;
    };
    let found = match repo.leftovers(&format!("{dir}/")).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("cannot list leftovers in {dir}: {e:#}");
            return;
        }
    };
    for l in found
        .iter()
        .filter(|l| keys.iter().any(|k| wal::is_leftover_of(&l.key, k)))
    {
        match repo.remove_leftover(l).await {
            Ok(()) => tracing::info!(key = %l.key, "removed what an interrupted wal-push left"),
            Err(e) => tracing::warn!(key = %l.key, "cannot remove a leftover: {e:#}"),
        }
    }
}

pub async fn push(policy: &Policy, path: &Path) -> Result<Pushed> {
    check_method(policy)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| crate::error::usage(format!("{} names no file", path.display())))?;
    let w = wal::parse(file_name).map_err(crate::error::usage)?;
    let recipients = pipeline::parse_recipients(policy.recipients()).map_err(|e| {
        crate::error::usage(format!(
            "{}: encryption.recipients: {e}",
            policy.path.display()
        ))
    })?;
    let repo = crate::backup::open_repo(policy).await?;
    let side_key = wal::sidecar_key(&policy.name, &w);
    if let Some(bytes) = repo.get_bytes(&side_key).await? {
        let old =
            Sidecar::from_json(&bytes).map_err(|e| anyhow!("{side_key} in {}: {e}", repo.url()))?;
        let p = path.to_path_buf();
        let (n, sha) = tokio::task::spawn_blocking(move || sha256_file(&p)).await??;
        if n == old.plain_bytes && sha == old.plain_sha256 {
            return Ok(Pushed::AlreadyArchived);
        }
        bail!(
            "{} is already archived for policy {} with different content (archived sha256 {}, this file {sha}); refusing to overwrite: is another server archiving into this policy?",
            w.name,
            policy.name,
            &old.plain_sha256
        );
    }
    crate::repo::ensure_initialized(&*repo).await?;
    let obj_key = wal::object_key(&policy.name, &w);
    remove_own_leftovers(&*repo, &[&obj_key, &side_key]).await;
    let writer = repo.writer(&obj_key).await?;
    let level = policy.wal_compression_level();
    let threads = policy.compression_threads();
    let p = path.to_path_buf();
    // A segment's last commit time, read from its records while it is
    // mapped anyway: the window's honest end for a --to target.
    let seg_start = match (w.kind, w.log_seg) {
        (wal::Kind::Segment, Some((log, seg))) => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            (size > 0).then(|| wal::segno(log, seg, size) * size)
        }
        _ => None,
    };
    let (digests, last_commit) =
        tokio::task::spawn_blocking(move || -> Result<(pipeline::Digests, Option<i64>)> {
            let opts = EncodeOptions {
                level,
                threads,
                recipients: &recipients,
            };
            pipeline::encode_file(&p, writer, &opts, |data| {
                seg_start.and_then(|start| crate::walscan::last_commit_micros(data, start))
            })
        })
        .await
        .context("wal-push pipeline panicked")??;
    let last_commit_at = last_commit
        .and_then(|m| jiff::Timestamp::from_microsecond(m).ok())
        .map(crate::timeparse::rfc3339_micros);
    let last_write_at = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(crate::timeparse::rfc3339_micros);
    let history = if w.kind == wal::Kind::History {
        wal::parse_history(&std::fs::read_to_string(path).unwrap_or_default())
    } else {
        Vec::new()
    };
    let backup = if w.kind == wal::Kind::Backup {
        wal::parse_backup_history(&std::fs::read_to_string(path).unwrap_or_default())
    } else {
        None
    };
    let side = Sidecar {
        last_write_at,
        last_commit_at,
        history,
        backup,
        name: w.name.clone(),
        plain_bytes: digests.plain_bytes,
        plain_sha256: digests.plain_sha256,
        stored_bytes: digests.stored_bytes,
        stored_sha256: digests.stored_sha256,
        pushed_at: crate::timeparse::rfc3339(jiff::Timestamp::now()),
    };
    // The sidecar commits the push; without it the segment is not archived.
    repo.put_bytes(&side_key, side.to_json())
        .await
        .with_context(|| format!("cannot commit {} in {}", w.name, repo.url()))?;
    Ok(Pushed::Archived(Box::new(side)))
}

/// A fetch failure that retrying cannot fix: a wrong key, a corrupt object.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Permanent(String);

#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Restored { bytes: u64 },
    Absent,
}

async fn fetch_once(
    repo: &dyn Repository,
    policy: &str,
    w: &WalName,
    dest: &Path,
    ids: &[age::x25519::Identity],
) -> Result<Fetched> {
    let Some(bytes) = repo.get_bytes(&wal::sidecar_key(policy, w)).await? else {
        // "Absent" ends recovery, so say it only of a repository that
        // provably answers: an unmounted disk or a wrong bucket also has
        // no such file, and ending there would silently lose the rest.
        return match repo.get_bytes(crate::repo::REPO_MARKER).await? {
            Some(_) => Ok(Fetched::Absent),
            None => Err(anyhow!(
                "{} has no {}: the repository is missing or not mounted, so drctl cannot tell whether {} was archived",
                repo.url(),
                crate::repo::REPO_MARKER,
                w.name
            )),
        };
    };
    let side = Sidecar::from_json(&bytes)
        .map_err(|e| anyhow::Error::new(Permanent(format!("{}: {e}", w.name))))?;
    let key = wal::object_key(policy, w);
    let entry = side.object_entry(&key);
    let reader = repo
        .reader(&key)
        .await
        .with_context(|| format!("{} is committed but its object is unreadable", w.name))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(".drctl-fetch-{}-{}", w.name, std::process::id()));
    let ids = ids.to_vec();
    let dest = dest.to_path_buf();
    let name = w.name.clone();
    tokio::task::spawn_blocking(move || -> Result<Fetched> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let r = pipeline::decode(reader, &ids, &entry, &mut f, false, &|_| {});
        let done = r
            .map_err(|e| match e {
                DecodeError::WrongKey => anyhow::Error::new(Permanent(format!(
                    "the identity does not match the key {name} was archived with"
                ))),
                DecodeError::Corrupt(why) => {
                    anyhow::Error::new(Permanent(format!("archived {name} is corrupt: {why}")))
                }
                DecodeError::Sink(e) => anyhow!("cannot write {}: {e}", tmp.display()),
                DecodeError::Io(e) => anyhow!("reading {name} from the repository: {e}"),
            })
            .and_then(|d| {
                // No fsync: restore_command's file is scratch for recovery,
                // which fetches it again after a crash.
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("cannot rename into {}", dest.display()))?;
                Ok(d)
            });
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(Fetched::Restored {
            bytes: done?.plain_bytes,
        })
    })
    .await
    .context("wal-fetch pipeline panicked")?
}

/// Restore one archived file to `dest` (written to a temp file, then
/// renamed). Transient failures are retried `attempts` times.
pub async fn fetch(
    policy: &Policy,
    name: &str,
    dest: &Path,
    ids: &[age::x25519::Identity],
    attempts: u32,
) -> Result<Fetched> {
    let w = wal::parse(name).map_err(|e| anyhow!(e))?;
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
        }
        let repo = match crate::backup::open_repo(policy).await {
            Ok(r) => r,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match fetch_once(&*repo, &policy.name, &w, dest, ids).await {
            Ok(f) => return Ok(f),
            Err(e) => {
                tracing::warn!(attempt, error = %format!("{e:#}"), "wal-fetch {name} failed");
                let permanent = e.downcast_ref::<Permanent>().is_some();
                last = Some(e);
                if permanent {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
}

/// Where prefetched segments wait: `drctl-prefetch/` in the data directory
/// (restore_command runs there with %p = pg_wal/RECOVERYXLOG), on the same
/// filesystem as pg_wal so handing one over is a rename. None when `dest`
/// is not in a pg_wal directory: then there is nothing to prefetch for.
pub fn spool_dir(dest: &Path) -> Option<PathBuf> {
    let wal_dir = dest.parent()?;
    if wal_dir.file_name()? != "pg_wal" {
        return None;
    }
    let data_dir = wal_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(data_dir.join("drctl-prefetch"))
}

/// Hand over a prefetched segment, if there is one.
pub fn take_prefetched(spool: &Path, name: &str, dest: &Path) -> bool {
    std::fs::rename(spool.join(name), dest).is_ok()
}

/// The next `count` segment names after `name` on its timeline.
pub fn following(name: &str, count: u32, segment_size: u64) -> Vec<String> {
    let Ok(w) = wal::parse(name) else {
        return Vec::new();
    };
    let Some((log, seg)) = w.log_seg.filter(|_| w.kind == wal::Kind::Segment) else {
        return Vec::new();
    };
    let n = wal::segno(log, seg, segment_size);
    (1..=count as u64)
        .map(|i| wal::segment_name(w.timeline, n + i, segment_size))
        .collect()
}

/// Fetch the segments after `name` into the spool, stopping at the first
/// one not in the archive. Files already there are kept; older ones, which
/// recovery has passed, are removed. One prefetcher per spool (lock file).
pub async fn prefetch(
    policy: &Policy,
    name: &str,
    count: u32,
    spool: &Path,
    ids: &[age::x25519::Identity],
) -> Result<usize> {
    std::fs::create_dir_all(spool)?;
    let lock = spool.join(".lock");
    let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
    else {
        let holder: i32 = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: kill with signal 0 only checks that the process exists.
        if holder > 0 && unsafe { libc::kill(holder, 0) } == 0 {
            return Ok(0);
        }
        let _ = std::fs::remove_file(&lock);
        return Ok(0);
    };
    use std::io::Write;
    let _ = write!(f, "{}", std::process::id());
    drop(f);
    let result = async {
        for e in std::fs::read_dir(spool)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if wal::parse(&n).is_ok() && n.as_str() <= name {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let repo = crate::backup::open_repo(policy).await?;
        let mut fetched = 0;
        for next in following(name, count, wal::DEFAULT_SEGMENT_SIZE) {
            let dest = spool.join(&next);
            if dest.exists() {
                continue;
            }
            let w = wal::parse(&next).expect("generated name");
            match fetch_once(&*repo, &policy.name, &w, &dest, ids).await? {
                Fetched::Restored { .. } => fetched += 1,
                Fetched::Absent => break,
            }
        }
        anyhow::Ok(fetched)
    }
    .await;
    let _ = std::fs::remove_file(&lock);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_lives_beside_pg_wal_only() {
        assert_eq!(
            spool_dir(Path::new("pg_wal/RECOVERYXLOG")),
            Some(PathBuf::from("./drctl-prefetch"))
        );
        assert_eq!(
            spool_dir(Path::new("/srv/pg/pg_wal/RECOVERYXLOG")),
            Some(PathBuf::from("/srv/pg/drctl-prefetch"))
        );
        assert_eq!(
            spool_dir(Path::new("/tmp/x/000000010000000000000001")),
            None
        );
    }

    #[test]
    fn following_segments() {
        let ss = wal::DEFAULT_SEGMENT_SIZE;
        assert_eq!(
            following("0000000100000000000000FE", 3, ss),
            vec![
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert!(following("00000002.history", 3, ss).is_empty());
        assert!(following("000000010000000000000003.partial", 3, ss).is_empty());
    }
}
