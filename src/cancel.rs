//! Process-wide cancellation: set by SIGINT/SIGTERM (or the daemon's grace
//! period running out), polled by streaming loops so an interrupted backup
//! aborts its upload instead of committing.
//!
//! Polling alone cannot stop a child that is blocked without output (a
//! pg_dump waiting for a table lock, a psql session waiting on a count), so
//! a request also sends SIGTERM to every child process of drctl: their
//! pipes then end, the pipelines fail and abort their uploads, and the
//! catalog records the failure.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

pub fn request() {
    CANCELLED.store(true, Ordering::SeqCst);
    terminate_children();
}

pub fn requested() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Resolves once cancellation is requested: race it against work that
/// cannot poll the flag itself (a request waiting on a silent server).
pub async fn cancelled() {
    while !requested() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// SIGTERM to every process whose parent is this one. Scanning /proc keeps
/// this in one place instead of every spawn site registering its child.
fn terminate_children() {
    for pid in children() {
        // SAFETY: kill(2) with a pid read from /proc and a valid signal.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn children() -> Vec<i32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            (parent_of(&stat) == Some(me)).then_some(pid)
        })
        .collect()
}

/// The ppid field of /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so parse from the last ')'.
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_is_read_past_odd_command_names() {
        assert_eq!(parent_of("42 (pg_dump) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (a) b (c)) R 9 1 1"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn children_are_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Other tests run in this process too: look, but kill only ours.
        let found = children().contains(&(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found, "the spawned child is not among children()");
    }
}
