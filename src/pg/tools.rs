//! Where drctl finds PostgreSQL's programs.
//!
//! Debian puts only wrappers for a few client tools on PATH (pg_dump, psql,
//! pg_restore, pg_basebackup); pg_verifybackup, pg_waldump, pg_ctl and
//! initdb live in `/usr/lib/postgresql/N/bin` alone, and a service's PATH
//! (`/usr/local/bin:/usr/bin:/bin`) never has that folder. So a tool is
//! looked up for the server's major: `[source] pg_bindir` when set, then
//! `/usr/lib/postgresql/N/bin`, then `pg_config --bindir`, then PATH. A
//! candidate outside the first two must say it is of the right major
//! (server tools) or at least that major (client tools, which read older
//! servers' data but refuse newer ones).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, Result};

/// How a tool's major must relate to the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// pg_verifybackup, pg_waldump, pg_ctl, initdb, postgres.
    Same,
    /// pg_dump, pg_restore, pg_basebackup: a newer one reads an older server.
    AtLeast,
}

impl Fit {
    fn of(program: &str) -> Fit {
        match program {
            "pg_dump" | "pg_restore" | "pg_basebackup" | "psql" => Fit::AtLeast,
            _ => Fit::Same,
        }
    }
}

type Key = (String, u32, Option<PathBuf>);
static FOUND: Mutex<Option<HashMap<Key, PathBuf>>> = Mutex::new(None);

/// The path of `program` for a PostgreSQL `major` server (`major` 0:
/// unknown, the first found wins). `bindir` is the policy's `pg_bindir`.
pub fn find(program: &str, major: u32, bindir: Option<&Path>) -> Result<PathBuf> {
    let key = (program.to_string(), major, bindir.map(Path::to_path_buf));
    if let Some(p) = FOUND.lock().unwrap().get_or_insert_default().get(&key) {
        return Ok(p.clone());
    }
    let found = search(program, major, bindir, &path_dirs())?;
    FOUND
        .lock()
        .unwrap()
        .get_or_insert_default()
        .insert(key, found.clone());
    Ok(found)
}

/// The folder holding every one of `programs` for `major` (the scratch
/// server needs initdb and postgres side by side).
pub fn bindir_with(programs: &[&str], major: u32, bindir: Option<&Path>) -> Result<PathBuf> {
    let first = find(programs[0], major, bindir)?;
    let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    for p in &programs[1..] {
        if !is_program(&dir.join(p)) {
            return Err(anyhow!(
                "{} has {} but not {p}; install the PostgreSQL {major} server package (postgresql-{major}) or set [source] pg_bindir",
                dir.display(),
                programs[0]
            ));
        }
    }
    Ok(dir)
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect()
}

fn search(program: &str, major: u32, bindir: Option<&Path>, path: &[PathBuf]) -> Result<PathBuf> {
    let mut looked: Vec<String> = Vec::new();
    if let Some(d) = bindir {
        let p = d.join(program);
        if is_program(&p) {
            return Ok(p);
        }
        looked.push(format!("[source] pg_bindir {}", d.display()));
    }
    if major > 0 {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        let p = d.join(program);
        if is_program(&p) {
            return Ok(p);
        }
        looked.push(d.display().to_string());
    }
    let fit = Fit::of(program);
    let mut wrong: Vec<String> = Vec::new();
    let consider = |p: PathBuf, wrong: &mut Vec<String>| -> Option<PathBuf> {
        if !is_program(&p) {
            return None;
        }
        if major == 0 {
            return Some(p);
        }
        match major_of(&p) {
            Some(m) if m == major || (fit == Fit::AtLeast && m > major) => Some(p),
            Some(m) => {
                wrong.push(format!("{} is PostgreSQL {m}", p.display()));
                None
            }
            None => None,
        }
    };
    match pg_config_bindir() {
        Some(d) => {
            if let Some(p) = consider(d.join(program), &mut wrong) {
                return Ok(p);
            }
            looked.push(format!("pg_config --bindir ({})", d.display()));
        }
        None => looked.push("pg_config --bindir (no pg_config)".into()),
    }
    for d in path {
        if let Some(p) = consider(d.join(program), &mut wrong) {
            return Ok(p);
        }
    }
    looked.push(format!(
        "PATH ({})",
        std::env::join_paths(path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let version = if major > 0 {
        format!(" for PostgreSQL {major}")
    } else {
        String::new()
    };
    let wrong = if wrong.is_empty() {
        String::new()
    } else {
        format!(" (found {})", wrong.join(", "))
    };
    let install = if major > 0 {
        format!("install postgresql-{major} or set [source] pg_bindir")
    } else {
        "install the PostgreSQL server package or set [source] pg_bindir".into()
    };
    Err(anyhow!(
        "no {program}{version}: looked in {}{wrong}; {install}",
        looked.join(", ")
    ))
}

/// psql itself for drctl's own queries. On Debian, `psql` on PATH is
/// pg_wrapper, a Perl script that takes ~90 ms a call before it runs the
/// real psql (a backup makes several queries), and that points a URL
/// without a port at the local default cluster, where pg_dump and the
/// other tools, run from their bin folders, use libpq's default: the
/// newest `/usr/lib/postgresql/N/bin/psql` (a newer psql reads older
/// servers), else `pg_config --bindir`, else PATH.
pub fn psql() -> &'static Path {
    static PSQL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PSQL.get_or_init(|| {
        newest_in(Path::new("/usr/lib/postgresql"), "psql")
            .or_else(|| find("psql", 0, None).ok())
            .unwrap_or_else(|| PathBuf::from("psql"))
    })
}

/// `root/N/bin/program` of the highest major N that has it.
fn newest_in(root: &Path, program: &str) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(program);
            is_program(&p).then_some((n, p))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Whether drctl runs as root (PostgreSQL's programs then run as postgres).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL server tool as the cluster owner: `postgres` when we are
/// root (the server refuses root), else ourselves.
pub fn owner_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new(runuser());
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// runuser by its full path: util-linux keeps it in /usr/sbin, which a
/// service's PATH (and cron's) does not have.
pub fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser"]
        .into_iter()
        .find(|p| is_program(Path::new(p)))
        .unwrap_or("runuser")
}

fn is_program(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!d.is_empty()).then(|| PathBuf::from(d))
}

/// The major a program says it is of (`pg_dump (PostgreSQL) 15.18` -> 15).
fn major_of(p: &Path) -> Option<u32> {
    let out = Command::new(p).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    major_in(&String::from_utf8_lossy(&out.stdout))
}

fn major_in(text: &str) -> Option<u32> {
    super::version_word(text)
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_newest_major_folder_with_the_program_wins() {
        let root = tempfile::tempdir().unwrap();
        for (major, has) in [("15", true), ("17", true), ("18", false), ("x", true)] {
            let bin = root.path().join(major).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if has {
                tool(&bin, "psql", "17.0");
            }
        }
        assert_eq!(
            newest_in(root.path(), "psql").unwrap(),
            root.path().join("17/bin/psql")
        );
        assert_eq!(newest_in(root.path(), "pg_dump"), None);
        assert_eq!(newest_in(&root.path().join("none"), "psql"), None);
    }

    fn tool(dir: &Path, name: &str, version: &str) {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn majors_are_read_from_version_lines() {
        assert_eq!(
            major_in("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(major_in("pg_ctl (PostgreSQL) 18.6"), Some(18));
        assert_eq!(major_in("pg_ctl (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(major_in("something else"), None);
    }

    #[test]
    fn the_policy_folder_wins_then_path_by_major() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        tool(a.path(), "pg_verifybackup", "16.2");
        tool(b.path(), "pg_verifybackup", "17.1");
        tool(a.path(), "pg_dump", "16.2");
        let path = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        // 99: no /usr/lib/postgresql/99 here, so PATH decides.
        let e = search("pg_verifybackup", 99, None, &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no pg_verifybackup for PostgreSQL 99")
                && e.contains("/usr/lib/postgresql/99/bin")
                && e.contains("PostgreSQL 16")
                && e.contains("postgresql-99"),
            "{e}"
        );
        // Same major for server tools: the 17 one, though the 16 is first.
        let p = super::search("pg_verifybackup", 17, None, &path);
        assert_eq!(p.unwrap(), b.path().join("pg_verifybackup"));
        // Client tools may be newer than the server, never older.
        assert_eq!(
            search("pg_dump", 16, None, &path).unwrap(),
            a.path().join("pg_dump")
        );
        assert!(search("pg_dump", 99, None, &path).is_err());
        // pg_bindir is taken as the user set it.
        assert_eq!(
            search("pg_verifybackup", 99, Some(a.path()), &path).unwrap(),
            a.path().join("pg_verifybackup")
        );
        let e = search("pg_waldump", 99, Some(a.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("[source] pg_bindir {}", a.path().display())),
            "{e}"
        );
    }
}
