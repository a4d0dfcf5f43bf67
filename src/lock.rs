//! Single flight per policy. `backup` and `prune` (and the daemon's jobs)
//! hold an exclusive `flock` on `<catalog dir>/locks/<policy>.lock`, so cron
//! and the daemon never run two jobs of one policy at once. The kernel drops
//! the lock when the process ends however it ends, kill -9 included, so a
//! crash never leaves a stale lock behind. The file names the holder, for
//! the message a second run prints.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Held until dropped.
#[derive(Debug)]
pub struct PolicyLock {
    _file: File,
    pub path: PathBuf,
}

pub fn lock_path(catalog: &Path, policy: &str) -> PathBuf {
    catalog
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("locks")
        .join(format!("{policy}.lock"))
}

/// Take the policy's lock for `what` ("backup", "prune"), or fail at once
/// naming who holds it.
pub fn acquire(catalog: &Path, policy: &str, what: &str) -> Result<PolicyLock> {
    let path = lock_path(catalog, policy);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(anyhow!("cannot lock {}: {err}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(anyhow!(
            "policy {policy} is busy: {}; wait for it to finish (lock {})",
            if holder.is_empty() {
                "another drctl holds it"
            } else {
                holder
            },
            path.display()
        ));
    }
    let note = format!(
        "{what} by pid {} on {} since {}",
        std::process::id(),
        crate::catalog::hostname(),
        crate::timeparse::rfc3339(jiff::Timestamp::now())
    );
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(note.as_bytes())?;
    Ok(PolicyLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
