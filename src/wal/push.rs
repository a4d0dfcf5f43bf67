//! `wal-push` (archive_command).
//!
//! Runs once per file, as the postgres OS user, many times a minute: it
//! touches only the policy and the repository, never the catalog. Exit
//! status is the contract with PostgreSQL: 0 only once the file and its
//! sidecar are durable.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::pipeline::{self, EncodeOptions};
use crate::policy::{Method, Policy};
use crate::repo::Repository;
use crate::wal::{self, Sidecar};

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
async fn remove_own_leftovers(repo: &dyn Repository, keys: &[&str]) {
    for key in keys {
        let found = match repo.leftovers_of(key).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("cannot look for leftovers of {key}: {e:#}");
                continue;
            }
        };
        for l in &found {
            match repo.remove_leftover(l).await {
                Ok(()) => tracing::info!(key = %l.key, "removed what an interrupted wal-push left"),
                Err(e) => tracing::warn!(key = %l.key, "cannot remove a leftover: {e:#}"),
            }
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
    let repo = crate::repo::open_for(policy).await?;
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
        (wal::FileKind::Segment, Some((log, seg))) => {
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
                seg_start.and_then(|start| crate::wal::scan::last_commit_micros(data, start))
            })
        })
        .await
        .context("wal-push pipeline panicked")??;
    let last_commit_at = last_commit
        .and_then(|m| jiff::Timestamp::from_microsecond(m).ok())
        .map(crate::time::parse::rfc3339_micros);
    let last_write_at = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(crate::time::parse::rfc3339_micros);
    let history = if w.kind == wal::FileKind::History {
        wal::parse_history(&std::fs::read_to_string(path).unwrap_or_default())
    } else {
        Vec::new()
    };
    let backup = if w.kind == wal::FileKind::Backup {
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
        pushed_at: crate::time::parse::rfc3339(jiff::Timestamp::now()),
    };
    // The sidecar commits the push; without it the segment is not archived.
    repo.put_bytes(&side_key, side.to_json())
        .await
        .with_context(|| format!("cannot commit {} in {}", w.name, repo.url()))?;
    Ok(Pushed::Archived(Box::new(side)))
}
