//! Single flight per policy. `backup` and `prune` (and the daemon's jobs)
//! hold an exclusive `flock` on `<catalog dir>/locks/<policy>.lock`, so cron
//! and the daemon never run two jobs of one policy at once. The kernel drops
//! the lock when the process ends however it ends, kill -9 included, so a
//! crash never leaves a stale lock behind. The file names the holder, for
//! the message a second run prints.
//!
//! Leases protect a backup a restore (or drill) is reading from prune: the
//! reader holds a shared `flock` on `locks/<policy>.<backup id>.lease`, and
//! prune keeps any backup whose lease it cannot lock exclusively. Like the
//! policy lock it dies with its process, and it covers the drctl processes
//! sharing this catalog directory (one host); a repository shared between
//! hosts needs pins for long reads elsewhere.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Held until dropped.
#[derive(Debug)]
pub struct PolicyLock {
    _file: File,
}

/// Whether process `pid` exists on this host (signal 0 touches nothing;
/// EPERM means it exists under another user).
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    let r = unsafe { libc::kill(pid, 0) };
    let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// A process that has exited but is not yet reaped answers signal 0, yet
/// holds nothing: a holder killed with -9 whose parent died too waits for
/// PID 1 to reap it (seen taking 1.5 s), and its lease must not look held
/// meanwhile.
fn is_zombie(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// This host's name, recorded beside a holder's pid.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `catalog` names a PostgreSQL catalog (`postgres://…`) rather
/// than a SQLite file.
pub fn catalog_is_url(catalog: &Path) -> bool {
    catalog
        .to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// The folder the catalog lives in; for a PostgreSQL catalog, this host's
/// state folder (`DRCTL_STATE_DIR`, else `$XDG_RUNTIME_DIR/drctl`, else
/// `/tmp/drctl-<uid>`): the policy locks are per host.
pub fn catalog_dir(catalog: &Path) -> PathBuf {
    if catalog_is_url(catalog) {
        if let Some(d) = std::env::var_os("DRCTL_STATE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("drctl");
        }
        // SAFETY: geteuid has no preconditions.
        return std::env::temp_dir().join(format!("drctl-{}", unsafe { libc::geteuid() }));
    }
    catalog
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Where the policy locks, leases and the migration lock live.
pub fn locks_dir(catalog: &Path) -> PathBuf {
    catalog_dir(catalog).join("locks")
}

pub fn lock_path(catalog: &Path, policy: &str) -> PathBuf {
    locks_dir(catalog).join(format!("{policy}.lock"))
}

fn lease_path(catalog: &Path, policy: &str, backup: &str) -> PathBuf {
    locks_dir(catalog).join(format!("{policy}.{backup}.lease"))
}

fn open_rw(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                let dir = path.parent().unwrap_or(Path::new("."));
                format!(
                    "; the locks beside the catalog belong to another user: run drctl as their owner, or chown -R {} {}",
                    whoami(),
                    dir.parent().unwrap_or(dir).display()
                )
            } else {
                String::new()
            };
            anyhow::Error::new(e).context(format!(
                "cannot open the lock file {} as {}{hint}",
                path.display(),
                whoami()
            ))
        })
}

fn flock(file: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A reader's hold on one backup; prune keeps it until this is dropped.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

/// Lease `backup` of `policy` for as long as the returned value lives.
pub fn lease(catalog: &Path, policy: &str, backup: &str) -> Result<Lease> {
    let path = lease_path(catalog, policy, backup);
    let file = open_rw(&path)?;
    flock(&file, libc::LOCK_SH).with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(Lease { _file: file })
}

/// Prune's side of a lease: held while a backup is deleted, so no reader
/// can lease it in the meantime.
#[derive(Debug)]
pub struct Claim {
    _file: Option<File>,
    path: PathBuf,
}

impl Claim {
    /// The backup is gone: so is its lease file.
    pub fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Claim `backup` for deletion, or None while a restore or drill holds a
/// lease on it. A lease file that cannot be opened counts as held: prune
/// must not guess. `look_only` (a dry run) creates no lease file.
pub fn claim(catalog: &Path, policy: &str, backup: &str, look_only: bool) -> Option<Claim> {
    let path = lease_path(catalog, policy, backup);
    if look_only && !path.exists() {
        return Some(Claim { _file: None, path });
    }
    let file = open_rw(&path).ok()?;
    flock(&file, libc::LOCK_EX | libc::LOCK_NB).ok()?;
    Some(Claim {
        _file: Some(file),
        path,
    })
}

/// Serialise catalog migrations between processes: SQLite has no advisory
/// lock of its own, and two drctl processes opening a new catalog at once
/// (the daemon starting while cron runs `drctl backup`) would both apply
/// migration 1. Blocks until the holder is done; held until dropped.
pub fn migration_lock(catalog: &Path) -> Result<File> {
    let name = catalog
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "catalog".into());
    let path = locks_dir(catalog).join(format!("{name}.migrate.lock"));
    let file = open_rw(&path)?;
    flock(&file, libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// Take the policy's lock for `what` ("backup", "prune"), or fail at once
/// naming who holds it.
pub fn acquire(catalog: &Path, policy: &str, what: &str) -> Result<PolicyLock> {
    let path = lock_path(catalog, policy);
    let mut file = open_rw(&path)?;
    if let Err(err) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(anyhow!("cannot lock {}: {err}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(crate::error::busy(format!(
            "policy {policy} is busy: {}; wait for it to finish (lock {})",
            if holder.is_empty() {
                "another drctl holds it"
            } else {
                holder
            },
            path.display()
        )));
    }
    let note = format!(
        "{what} by pid {} on {} since {}",
        std::process::id(),
        hostname(),
        crate::time::parse::rfc3339(jiff::Timestamp::now())
    );
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(note.as_bytes())?;
    Ok(PolicyLock { _file: file })
}

/// The name of the user with `uid`.
pub fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid returns static storage or null; copied out at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Who this process runs as, by name.
pub fn whoami() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_but_unreaped_process_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i64::from(child.id());
        assert!(pid_alive(pid));
        child.kill().unwrap();
        // Not waited for: a zombie until reaped, which signal 0 still finds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_zombie(pid as libc::pid_t) {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0);
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(pid_alive(i64::from(std::process::id())));
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("catalog.db");
        let first = acquire(&cat, "orders", "backup").unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        let e = acquire(&cat, "orders", "prune").unwrap_err().to_string();
        assert!(e.contains("policy orders is busy: backup by pid"), "{e}");
        assert!(acquire(&cat, "billing", "backup").is_ok());
        drop(first);
        assert!(acquire(&cat, "orders", "prune").is_ok());
    }

    #[test]
    fn a_leased_backup_cannot_be_claimed_until_every_reader_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("catalog.db");
        let id = "20261122T101500Z-3f9a";
        let free = |id| claim(&cat, "orders", id, false).is_some();
        assert!(claim(&cat, "orders", id, true).is_some());
        assert!(
            !lease_path(&cat, "orders", id).exists(),
            "a look created a file"
        );
        assert!(free(id));
        let a = lease(&cat, "orders", id).unwrap();
        // Two readers of one backup share it.
        let b = lease(&cat, "orders", id).unwrap();
        assert!(!free(id));
        assert!(free("20261122T101500Z-0000"));
        drop(a);
        assert!(!free(id));
        drop(b);
        let c = claim(&cat, "orders", id, false).unwrap();
        // While prune holds its claim, a second claim fails.
        assert!(!free(id));
        c.release_and_remove();
        assert!(free(id));
    }
}
