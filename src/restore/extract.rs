//! Extracting a physical backup's archives: the data directory and each
//! tablespace from the repository into place (checked as they stream), and
//! a block-delta incremental laid over its restored parent. Used by
//! restores, chains, drills and `verify --deep`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::error::usage;
use crate::pipeline::{self, DecodeError};
use crate::repo::manifest::Manifest;
use crate::repo::Repository;
use crate::restore::TablespacePlacement;

/// Refuse before extracting into a filesystem too small for the backup:
/// its archives' plain size (what the manifest records) is about what the
/// files take once extracted.
pub fn check_space(m: &Manifest, dir: &Path, places: &[TablespacePlacement]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut need: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
    for obj in &m.objects {
        let into = match obj.name.strip_prefix("tablespace-") {
            _ if obj.name == "base" => dir.to_path_buf(),
            Some(oid) => places
                .iter()
                .find(|p| p.oid.to_string() == oid)
                .map(|p| PathBuf::from(&p.restore_to))
                .unwrap_or_else(|| dir.to_path_buf()),
            None => continue,
        };
        let dev = std::fs::metadata(&into)
            .with_context(|| format!("cannot read {}", into.display()))?
            .dev();
        need.entry(dev).or_insert((into, 0)).1 += obj.plain_bytes;
    }
    for (d, bytes) in need.into_values() {
        check_bytes(&m.id, &d, bytes)?;
    }
    Ok(())
}

/// Refuse when `d`'s filesystem has clearly less than `bytes` free.
pub fn check_bytes(id: &str, d: &Path, bytes: u64) -> Result<()> {
    let free = free_bytes(d)?;
    // Tar headers and padding make the archive a little larger than
    // the files it holds.
    if free < bytes / 100 * 95 {
        bail!(
            "No space left on device for backup {id}: {} has {} free, the backup needs about {}; free space there or restore elsewhere",
            d.display(),
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(bytes)
        );
    }
    Ok(())
}

fn free_bytes(d: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(d.as_os_str().as_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the free space of {}", d.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Extract the data directory into `dir` and each tablespace into its
/// placement, pointing `pg_tblspc/<oid>` there.
pub async fn extract(
    repo: &dyn Repository,
    m: &Manifest,
    places: &[TablespacePlacement],
    ids: &[age::x25519::Identity],
    dir: &Path,
    proof: Proof,
) -> Result<()> {
    extract_as(repo, m, places, ids, dir, None, proof).await
}

/// What proves the extracted files equal what was backed up. Either way
/// the stored bytes' sha256 and age's tag on every chunk are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The plain stream's sha256, against the manifest (`verify --deep`).
    Sha256,
    /// pg_verifybackup, run on the result against the server's manifest
    /// before anything uses it (a restore of a backup that has one).
    VerifyBackup,
}

impl Proof {
    /// The proof a restore of `m` (the newest of its chain) can have.
    pub fn for_restore(m: &Manifest) -> Proof {
        if m.server_manifest.is_some() {
            Proof::VerifyBackup
        } else {
            Proof::Sha256
        }
    }
}

/// Unpack a block-delta incremental over its restored parent in `dir`:
/// its files replace the parent's, its delta entries patch them. Without
/// `wal` its pg_wal/ is skipped: only the newest link's WAL is replayed.
pub async fn overlay(
    repo: &dyn Repository,
    m: &Manifest,
    places: &[TablespacePlacement],
    ids: &[age::x25519::Identity],
    dir: &Path,
    wal: bool,
    proof: Proof,
) -> Result<()> {
    extract_as(repo, m, places, ids, dir, Some(wal), proof).await
}

async fn extract_as(
    repo: &dyn Repository,
    m: &Manifest,
    places: &[TablespacePlacement],
    ids: &[age::x25519::Identity],
    dir: &Path,
    // An overlay, and whether it takes the link's WAL.
    over: Option<bool>,
    proof: Proof,
) -> Result<()> {
    let links: BTreeMap<String, PathBuf> = places
        .iter()
        .map(|t| (t.oid.to_string(), PathBuf::from(&t.restore_to)))
        .collect();
    let mut jobs = Vec::new();
    let mut server_manifest = None;
    for obj in &m.objects {
        let into = match obj.name.strip_prefix("tablespace-") {
            None if obj.name == "base" => dir.to_path_buf(),
            None if obj.name == crate::repo::manifest::SERVER_MANIFEST_OBJECT => {
                server_manifest = Some(obj.clone());
                continue;
            }
            None => bail!(
                "backup {} has an object {} this drctl does not know",
                m.id,
                obj.name
            ),
            Some(oid) => links.get(oid).cloned().with_context(|| {
                format!("backup {} has no tablespace entry for {}", m.id, obj.name)
            })?,
        };
        jobs.push((obj.clone(), into));
    }
    if !jobs.iter().any(|(o, _)| o.name == "base") {
        bail!("backup {} has no base object", m.id);
    }
    // One bar for the backup, however many archives it holds.
    let total = jobs.iter().map(|(o, _)| o.plain_bytes).sum();
    let bar = std::sync::Arc::new(crate::progress::Bar::new(
        &format!("restore {}", m.id),
        Some(total),
    ));
    let mut before = 0u64;
    for (obj, into) in jobs {
        let reader = repo.reader(&obj.key).await?;
        let bar = bar.clone();
        let at = before;
        before += obj.plain_bytes;
        let ids = ids.to_vec();
        let id = m.id.clone();
        let links = if obj.name == "base" {
            links.clone()
        } else {
            BTreeMap::new()
        };
        tokio::task::spawn_blocking(move || -> Result<()> {
            let (pr, mut pw) = pipeline::chunk_pipe(8);
            let into2 = into.clone();
            let untar = std::thread::spawn(move || {
                if let Some(wal) = over {
                    untar_over(pr, &into2, wal, &links)
                } else {
                    untar(pr, &into2, &links)
                }
            });
            let progress = |n| {
                bar.set(at + n);
                !crate::cancel::requested()
            };
            let r = match proof {
                Proof::Sha256 => pipeline::decode(reader, &ids, &obj, &mut pw, false, &progress),
                Proof::VerifyBackup => {
                    pipeline::decode_for_verifybackup(reader, &ids, &obj, &mut pw, &progress)
                }
            };
            // Whatever is buffered goes too (decode has checked it all by now).
            let r = r.and_then(|d| {
                std::io::Write::flush(&mut pw)
                    .map(|()| d)
                    .map_err(DecodeError::Sink)
            });
            drop(pw);
            let u = untar
                .join()
                .map_err(|_| anyhow!("tar extraction panicked"))?;
            let key = &obj.key;
            r.map_err(|e| match e {
                DecodeError::WrongKey => usage(format!("the identity does not match backup {id}")),
                DecodeError::Corrupt(why) => anyhow!("backup {id} is corrupt: {key}: {why}"),
                DecodeError::Sink(e) => anyhow!("extracting into {}: {e}", into.display()),
                DecodeError::Io(e) => {
                    anyhow!("reading {key} of backup {id} from the repository: {e}")
                }
                DecodeError::Cancelled => anyhow!("interrupted while extracting {key}"),
            })?;
            u.with_context(|| format!("extracting into {}", into.display()))?;
            Ok(())
        })
        .await
        .context("extraction panicked")??;
    }
    bar.finish();
    if let Some(obj) = server_manifest {
        // Where pg_basebackup leaves it too; the server ignores it.
        let reader = repo.reader(&obj.key).await?;
        let (ids, id, path) = (ids.to_vec(), m.id.clone(), dir.join("backup_manifest"));
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            if over.is_some() {
                let _ = std::fs::remove_file(&path);
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            pipeline::decode(reader, &ids, &obj, &mut f, false, &|_| {
                !crate::cancel::requested()
            })
            .map_err(|e| anyhow!("backup {id}: its server manifest ({}): {e}", obj.key))?;
            Ok(())
        })
        .await
        .context("extraction panicked")??;
    }
    Ok(())
}

/// Where `links` places the tablespace whose `pg_tblspc/<oid>` link the
/// entry is.
fn placed<'a>(
    e: &tar::Entry<impl std::io::Read>,
    path: &Path,
    links: &'a BTreeMap<String, PathBuf>,
) -> Option<(String, &'a PathBuf)> {
    if !e.header().entry_type().is_symlink() {
        return None;
    }
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(first), Some(oid), None) if first == "pg_tblspc" => {
            links.get(oid.as_ref()).map(|to| (oid.into_owned(), to))
        }
        _ => None,
    }
}

/// Unpack a tar stream; `pg_tblspc/<oid>` links point where `links` says.
fn untar(
    src: pipeline::ChunkReader,
    into: &Path,
    links: &BTreeMap<String, PathBuf>,
) -> std::io::Result<()> {
    let mut a = tar::Archive::new(src);
    a.set_preserve_permissions(true);
    a.set_overwrite(false);
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        if let Some((oid, to)) = placed(&e, &path, links) {
            std::fs::create_dir_all(into.join("pg_tblspc"))?;
            std::os::unix::fs::symlink(to, into.join("pg_tblspc").join(oid))?;
            continue;
        }
        if e.header().entry_type().is_file() {
            let mode = e.header().mode().unwrap_or(0o600);
            write_file(&mut e, mode, into, &path)?;
        } else {
            e.unpack_in(into)?;
        }
    }
    Ok(())
}

/// Unpack a block-delta incremental's tar over its parent's files.
fn untar_over(
    src: pipeline::ChunkReader,
    into: &Path,
    wal: bool,
    links: &BTreeMap<String, PathBuf>,
) -> std::io::Result<()> {
    let mut a = tar::Archive::new(src);
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        if !wal && path.starts_with("pg_wal") && !e.header().entry_type().is_dir() {
            continue;
        }
        inside(&path)?;
        if let Some((oid, to)) = placed(&e, &path, links) {
            // A tablespace the parent had is linked already.
            let link = into.join("pg_tblspc").join(oid);
            if std::fs::read_link(&link).ok().as_ref() != Some(to) {
                std::fs::create_dir_all(into.join("pg_tblspc"))?;
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(to, &link)?;
            }
            continue;
        }
        if let Some((file, _)) = crate::backup::delta::delta_target(&path.to_string_lossy()) {
            crate::backup::delta::apply(&mut e, &into.join(file))?;
            continue;
        }
        let kind = e.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(into.join(&path))?;
            continue;
        }
        match std::fs::remove_file(into.join(&path)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        if kind.is_file() {
            let mode = e.header().mode().unwrap_or(0o600);
            write_file(&mut e, mode, into, &path)?;
        } else {
            e.unpack_in(into)?;
        }
    }
    Ok(())
}

/// What tar's unpack_in guards against: nothing may land outside the
/// target directory.
fn inside(path: &Path) -> std::io::Result<()> {
    if path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "archive entry {} points outside the target directory",
        path.display()
    )))
}

/// Write one regular file of the archive, asking the kernel to write it
/// out as it goes. PostgreSQL fsyncs the whole data directory when it
/// starts on a restored backup; data already on disk makes that pass short
/// instead of a long stall after extraction, and the disk works while
/// decompression does (pgBackRest syncs as it restores too).
fn write_file(
    e: &mut dyn std::io::Read,
    mode: u32,
    into: &Path,
    path: &Path,
) -> std::io::Result<()> {
    use crate::repo::fs::start_writeback;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    inside(path)?;
    let dest = into.join(path);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(&dest)?;
    const WRITEBACK_EVERY: u64 = 8 << 20;
    let mut buf = vec![0u8; 1 << 20];
    let (mut written, mut flushed) = (0u64, 0u64);
    loop {
        let n = match e.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        f.write_all(&buf[..n])?;
        written += n as u64;
        if written - flushed >= WRITEBACK_EVERY {
            start_writeback(&f, flushed, written - flushed);
            flushed = written;
        }
    }
    start_writeback(&f, flushed, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_files_land_inside_the_target_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
        write_file(&mut &data[..], 0o600, dir.path(), Path::new("base/1/1234")).unwrap();
        let p = dir.path().join("base/1/1234");
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for bad in ["../escape", "/etc/escape", "base/../../escape"] {
            let e = write_file(&mut &b"x"[..], 0o600, dir.path(), Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("outside the target"), "{bad}: {e}");
        }
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
