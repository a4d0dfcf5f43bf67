//! `wal-fetch` (restore_command) and its prefetching helper.
//!
//! Runs once per file, as the postgres OS user: it touches only the policy
//! and the repository, never the catalog. Exit status is the contract with
//! PostgreSQL: 1 only when the file is truly absent, 126 (recovery aborts)
//! for anything it cannot vouch for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::pipeline::{self, DecodeError};
use crate::policy::Policy;
use crate::repo::Repository;
use crate::wal::{self, Sidecar, WalName};

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
        let r = pipeline::decode(reader, &ids, &entry, &mut f, false, &|_| {
            !crate::cancel::requested()
        });
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
                DecodeError::Cancelled => anyhow!("interrupted while fetching {name}"),
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
        let repo = match crate::repo::open_for_reading(policy).await {
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
    let Some((log, seg)) = w.log_seg.filter(|_| w.kind == wal::FileKind::Segment) else {
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
        let repo = crate::repo::open_for_reading(policy).await?;
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
