//! `drctl check POLICY`: prove the backup chain end to end before it is
//! needed. For physical policies (pgBackRest's `check`, with the cause
//! named): the server's WAL settings point at drctl for this policy, the
//! repository is writable by the OS user archive_command runs as, a forced
//! WAL switch lands in the repository as an object whose checksum (and,
//! with a key, content) is right, and the newest base backup's WAL is all
//! there. Checks run in order and stop at the first failure, since each
//! depends on the one before.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::pg::Conn;
use crate::policy::{Method, Policy};
use crate::repo::{RepoUrl, Repository};
use crate::wal;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Findings {
    pub policy: String,
    pub passed: bool,
    pub checks: Vec<Step>,
}

/// A failed step: what is wrong and what to do.
struct Failed(String);

type StepResult = std::result::Result<String, Failed>;

fn fail<T>(msg: impl Into<String>) -> std::result::Result<T, Failed> {
    Err(Failed(msg.into()))
}

impl From<anyhow::Error> for Failed {
    fn from(e: anyhow::Error) -> Failed {
        Failed(format!("{e:#}"))
    }
}

pub struct Options<'a> {
    pub policies_dir: &'a Path,
    pub identity: Option<&'a Path>,
}

pub async fn run(policy: &Policy, opts: &Options<'_>) -> Result<Findings> {
    if policy.backup.method == Method::RdsSnapshot {
        return Err(crate::error::usage(format!(
            "policy {} backs up RDS: `drctl check` checks PostgreSQL sources; run `drctl backup {}` to test the RDS API",
            policy.name, policy.name
        )));
    }
    let mut report = Findings {
        policy: policy.name.clone(),
        passed: true,
        checks: Vec::new(),
    };
    let conn = policy.source_conn()?;
    let repo = crate::repo::open_for(policy).await?;
    let physical = policy.backup.method == Method::Physical;
    let user;
    let mut switched = None;
    macro_rules! step {
        ($name:expr, $body:expr) => {{
            let r: StepResult = $body;
            let passed = r.is_ok();
            let detail = match r {
                Ok(d) => d,
                Err(Failed(d)) => d,
            };
            report.checks.push(Step {
                name: $name.to_string(),
                passed,
                detail,
            });
            if !passed {
                report.passed = false;
                return Ok(report);
            }
        }};
    }
    step!("source answers", source_answers(&conn).await);
    // Before the write probe: a bucket without Object Lock refuses every
    // locked write, and this step says why.
    if let Some(days) = policy.repository.as_ref().and_then(|r| r.object_lock_days) {
        step!(
            "Object Lock",
            object_lock(&*repo, &policy.name, days, "repository.object_lock_days").await
        );
    }
    step!(
        "repository writable",
        probe_write(&*repo, &policy.name).await
    );
    // Every copy takes every write: each must answer and accept one now.
    for c in &policy.copies {
        let copy = crate::repo::open(&c.repository).await?;
        if let Some(days) = c.repository.object_lock_days {
            step!(
                format!("copy {}: Object Lock", c.name),
                object_lock(
                    &*copy,
                    &policy.name,
                    days,
                    &format!("object_lock_days of [[copy]] {}", c.name)
                )
                .await
            );
        }
        step!(
            format!("copy {} writable", c.name),
            probe_write(&*copy, &policy.name).await
        );
    }
    if !physical {
        return Ok(report);
    }
    step!(
        "archive settings",
        settings(&conn, &policy.name, opts.policies_dir).await
    );
    step!("archiving user", {
        let (detail, who) = archiving_user(&conn).await;
        user = who;
        Ok(detail)
    });
    step!(
        "archiving user can write the repository",
        user_can_write(policy, user.as_ref())
    );
    step!(
        "WAL switch reaches the repository",
        switch_lands(&conn, &*repo, policy).await.map(|(d, seg)| {
            switched = Some(seg);
            d
        })
    );
    if let Some(seg) = &switched {
        for c in &policy.copies {
            step!(
                format!("WAL switch reaches copy {}", c.name),
                lands_in_copy(&*repo, policy, c, seg).await
            );
        }
    }
    step!(
        "archived WAL decodes",
        decodes(&*repo, &policy.name, switched.as_deref(), opts.identity).await
    );
    step!(
        "newest base backup's WAL is archived",
        base_backup_wal(&*repo, &policy.name).await
    );
    if policy.backup.incremental {
        step!("WAL summarization", summarize_wal(&conn).await);
    }
    Ok(report)
}

/// Incrementals on PostgreSQL 17+ need summarize_wal: without it every
/// backup is a full (with a note), and the policy does not do what it says.
/// 15 and 16 need nothing of the server.
async fn summarize_wal(conn: &Conn) -> StepResult {
    let version = conn.server_version_num().await?;
    if version < 170000 {
        return Ok(format!(
            "PostgreSQL {}: incrementals are drctl's block deltas (the server sends every page, drctl stores the changed ones); summarize_wal is a 17+ setting",
            version / 10000
        ));
    }
    let on = conn
        .query_one("select current_setting('summarize_wal')", &[])
        .await?;
    let keep = conn
        .query_one("select current_setting('wal_summary_keep_time')", &[])
        .await?;
    if on != "on" {
        return fail(
            "summarize_wal is off: incrementals need it (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();), until then every backup is a full",
        );
    }
    Ok(format!(
        "summarize_wal = on, summaries kept {keep} (wal_summary_keep_time): incrementals read only changed blocks"
    ))
}

async fn source_answers(conn: &Conn) -> StepResult {
    let v = conn
        .query_one("select current_setting('server_version')", &[])
        .await
        .map_err(|e| Failed(format!("{e:#}; check source.url and the password")))?;
    Ok(format!("PostgreSQL {v} at {}", conn.url.host()))
}

async fn probe_write(repo: &dyn Repository, policy: &str) -> StepResult {
    crate::repo::ensure_initialized(repo).await?;
    let key = format!("{policy}/.drctl-check-{:08x}", rand::random::<u32>());
    repo.put_bytes(&key, b"drctl check\n".to_vec())
        .await
        .map_err(|e| Failed(format!("{e:#}")))?;
    repo.delete(&key).await?;
    Ok(format!(
        "wrote and removed a probe object in {}",
        repo.url()
    ))
}

/// A policy that asks for Object Lock needs a bucket that has it, and an
/// object drctl writes must come back locked: otherwise the backups are not
/// immutable and the user believes they are.
async fn object_lock(repo: &dyn Repository, policy: &str, days: u32, key: &str) -> StepResult {
    if !repo.lockable().await? {
        return fail(format!(
            "{} does not have S3 Object Lock enabled, but {key} = {days} asks for immutable backups; use a bucket created with Object Lock (aws s3api create-bucket --object-lock-enabled-for-bucket) or remove it",
            repo.url()
        ));
    }
    let key = format!("{policy}/.drctl-lock-probe");
    repo.put_bytes(&key, b"drctl check: Object Lock probe\n".to_vec())
        .await
        .map_err(|e| Failed(format!("{e:#}")))?;
    match repo.locked_until(&key).await? {
        Some(until) if until > jiff::Timestamp::now() => Ok(format!(
            "objects written now stay locked until {}",
            crate::time::parse::rfc3339(until)
        )),
        _ => fail(format!(
            "wrote {key} with a retain-until date but S3 reports it unlocked; check the bucket's Object Lock settings"
        )),
    }
}

/// The words of a shell command line, quotes removed (enough to find
/// drctl's own arguments in archive_command, and to run the runbook's).
pub fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in cmd.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Why `archive_command` does not archive into `policy` (as drctl reading
/// `policies_dir`), or None when it does.
pub fn archive_command_problem(cmd: &str, policy: &str, policies_dir: &Path) -> Option<String> {
    let w = words(cmd);
    let Some(i) = w.iter().position(|x| x == "wal-push") else {
        let exe = std::env::current_exe()
            .map(|e| e.display().to_string())
            .unwrap_or_else(|_| "drctl".into());
        return Some(format!(
            "archive_command = '{cmd}' does not run drctl wal-push; set archive_command = '{} --policies {} wal-push {policy} %p'",
            crate::policy::shell_word(&exe),
            crate::policy::shell_word(&policies_dir.display().to_string())
        ));
    };
    if w.get(i + 1).map(String::as_str) != Some(policy) {
        return Some(format!(
            "archive_command = '{cmd}' archives into policy {}, not {policy}",
            w.get(i + 1).map(String::as_str).unwrap_or("(none)")
        ));
    }
    if w.get(i + 2).map(String::as_str) != Some("%p") {
        return Some(format!(
            "archive_command = '{cmd}' does not pass %p after the policy name"
        ));
    }
    let named = w
        .iter()
        .position(|x| x == "--policies")
        .and_then(|j| w.get(j + 1).cloned())
        .or_else(|| {
            w.iter()
                .find_map(|x| x.strip_prefix("--policies=").map(String::from))
        });
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    match named {
        Some(d) if canon(Path::new(&d)) != canon(policies_dir) => Some(format!(
            "archive_command = '{cmd}' reads policies from {d}, this check from {}: they must be the same files",
            policies_dir.display()
        )),
        Some(_) => None,
        None if !w.iter().any(|x| x.starts_with("DRCTL_POLICIES=")) => Some(format!(
            "archive_command = '{cmd}' names no --policies DIR: it runs in the server's data directory, where ./policies is not; add --policies {}",
            policies_dir.display()
        )),
        None => None,
    }
}

async fn settings(conn: &Conn, policy: &str, policies_dir: &Path) -> StepResult {
    let rows = conn
        .query(
            "select current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command')",
            &[],
        )
        .await?;
    let r = rows.first().ok_or_else(|| anyhow!("no answer"))?;
    let (level, mode, cmd) = (&r[0], &r[1], &r[2]);
    if !matches!(level.as_str(), "replica" | "logical") {
        return fail(format!(
            "wal_level = {level}: set wal_level = replica in postgresql.conf and restart the server"
        ));
    }
    if !matches!(mode.as_str(), "on" | "always") {
        return fail(format!(
            "archive_mode = {mode}: set archive_mode = on in postgresql.conf and restart the server"
        ));
    }
    let dir = std::path::absolute(policies_dir).unwrap_or(policies_dir.to_path_buf());
    if let Some(p) = archive_command_problem(cmd, policy, &dir) {
        return fail(format!("{p}; then SELECT pg_reload_conf()"));
    }
    Ok(format!(
        "wal_level = {level}, archive_mode = {mode}, archive_command = '{cmd}'"
    ))
}

/// An OS user, by name and id.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
}

/// archive_command runs as the server's OS user: the owner of its data
/// directory, when that directory is on this host.
async fn archiving_user(conn: &Conn) -> (String, Option<OsUser>) {
    use std::os::unix::fs::MetadataExt;
    let dir = conn
        .query_one("select current_setting('data_directory')", &[])
        .await;
    match dir {
        Ok(d) => match std::fs::metadata(&d) {
            Ok(m) => {
                let name = crate::lock::user_name(m.uid()).unwrap_or_else(|| m.uid().to_string());
                (
                    format!("archive_command runs as {name} (owner of {d})"),
                    Some(OsUser { name, uid: m.uid() }),
                )
            }
            Err(_) => (
                format!("the data directory {d} is not on this host: the archiving user's permissions are proven by the WAL switch below"),
                None,
            ),
        },
        Err(_) => (
            "cannot read data_directory (needs pg_read_all_settings): the archiving user's permissions are proven by the WAL switch below".into(),
            None,
        ),
    }
}

/// Whether `user` may create files in `dir`.
fn can_write(user: &OsUser, dir: &Path) -> std::io::Result<bool> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if me == user.uid {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: a valid C string; access(2) only checks permissions.
        return Ok(unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0);
    }
    if me == 0 {
        let st = std::process::Command::new(crate::pg::tools::runuser())
            .args(["-u", &user.name, "--", "test", "-w"])
            .arg(dir)
            .arg("-a")
            .arg("-x")
            .arg(dir)
            .status()?;
        return Ok(st.success());
    }
    Err(std::io::Error::other(format!(
        "cannot test as {} (run drctl check as {} or root)",
        user.name, user.name
    )))
}

fn user_can_write(policy: &Policy, user: Option<&OsUser>) -> StepResult {
    let Some(user) = user else {
        return Ok("skipped: the archiving user is not known here".into());
    };
    let url = policy
        .repository
        .as_ref()
        .map(|r| r.url.as_str())
        .unwrap_or_default();
    let Ok(RepoUrl::File(root)) = RepoUrl::parse(url) else {
        return Ok(format!(
            "skipped for {url}: S3 access is the credentials' matter, proven by the WAL switch below"
        ));
    };
    if !root.exists() {
        return fail(format!(
            "the repository {} does not exist; create it and give it to {}",
            root.display(),
            user.name
        ));
    }
    // Where wal-push creates files: each timeline's folder that exists, the
    // deepest existing folder on the way to a new timeline's, and the root
    // while the repository marker is still to be written.
    let wal_dir: PathBuf = root.join(&policy.name).join("wal");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    if let Some(d) = wal_dir.ancestors().find(|p| p.exists()) {
        dirs.push(d.to_path_buf());
    }
    if !root.join(crate::repo::REPO_MARKER).exists() {
        dirs.push(root.clone());
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        match can_write(user, d) {
            Ok(true) => {}
            Ok(false) => {
                return fail(format!(
                    "{} cannot write {}, so archive_command fails with \"Permission denied\": run `chown -R {} {}`",
                    user.name,
                    d.display(),
                    user.name,
                    root.display()
                ))
            }
            Err(e) => return Ok(format!("skipped: {e}")),
        }
    }
    Ok(format!("{} can write {}", user.name, wal_dir.display()))
}

/// The archiver's failure count, last failed segment, and whether it has
/// stalled (segments waiting, no word from it).
async fn archiver_failures(
    conn: &Conn,
) -> std::result::Result<(u64, Option<String>, bool), Failed> {
    let h = crate::pg::archiver::health(conn)
        .await
        .ok_or_else(|| Failed("pg_stat_archiver does not answer".into()))?;
    Ok((
        h.failed_count.unwrap_or(0),
        h.last_failed_wal,
        h.stalled == Some(true),
    ))
}

/// Force a segment switch and wait, up to archive_timeout, for that
/// segment's sidecar in the repository; stop early when the server says
/// archive_command failed on it.
async fn switch_lands(
    conn: &Conn,
    repo: &dyn Repository,
    policy: &Policy,
) -> std::result::Result<(String, String), Failed> {
    let (failed_before, _, _) = archiver_failures(conn).await?;
    // A WAL record, so the switch below is never a no-op on an idle server.
    if let Err(e) = conn
        .query_one("select pg_create_restore_point('drctl check')", &[])
        .await
    {
        tracing::debug!("pg_create_restore_point: {e:#}");
    }
    let seg = conn
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| {
            Failed(format!(
                "{e:#}; pg_switch_wal needs superuser or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the policy's user"
            ))
        })?;
    let w = wal::parse(&seg).map_err(|e| Failed(format!("the server named segment {seg}: {e}")))?;
    let key = wal::sidecar_key(&policy.name, &w);
    let timeout = policy.archive_timeout();
    let t0 = Instant::now();
    let mut poll = crate::poll::Poll::new(timeout);
    loop {
        if repo.head(&key).await?.is_some() {
            return Ok((
                format!(
                    "{seg} archived into {} in {:.1}s",
                    repo.url(),
                    t0.elapsed().as_secs_f64()
                ),
                seg,
            ));
        }
        let (failed, last_failed, stalled) = archiver_failures(conn).await?;
        // Durable in the primary and failed all the same (a copy refused
        // it) is the primary's success: the copy steps name the copy.
        if failed > failed_before
            && last_failed.as_deref() == Some(seg.as_str())
            && repo.head(&key).await?.is_none()
        {
            let why = crate::pg::archiver::status(conn).await.unwrap_or_default();
            return fail(format!("archive_command failed on {seg}; {why}"));
        }
        if stalled {
            let why = crate::pg::archiver::status(conn).await.unwrap_or_default();
            return fail(format!("{seg} is not archived: {why}"));
        }
        match poll.next().await {
            Ok(()) => {}
            Err(crate::poll::Gave::Cancelled) => return fail("cancelled"),
            Err(crate::poll::Gave::Up) => {
                let why = crate::pg::archiver::status(conn).await.unwrap_or_default();
                return fail(format!(
                    "{seg} did not reach {} within archive_timeout ({}s); {why}",
                    repo.url(),
                    timeout.as_secs()
                ));
            }
        }
    }
}

/// wal-push hands each segment to every copy after the primary; the
/// forced one must be there too, or the check names the copy. drctl check
/// may run as root with credentials the archiving user lacks: only what
/// wal-push (as that user) delivered counts.
async fn lands_in_copy(
    primary: &dyn Repository,
    policy: &Policy,
    c: &crate::policy::Copy,
    seg: &str,
) -> StepResult {
    let w = wal::parse(seg).map_err(|e| Failed(format!("segment {seg}: {e}")))?;
    let key = wal::sidecar_key(&policy.name, &w);
    let copy = crate::repo::open(&c.repository).await?;
    let t0 = Instant::now();
    // wal-push gives the copy the file right after the primary: a few
    // seconds at most, unless it queued it.
    let mut poll = crate::poll::Poll::new(Duration::from_secs(15).min(policy.archive_timeout()));
    loop {
        if copy.head(&key).await?.is_some() {
            return Ok(format!(
                "{seg} in {} after {:.1}s",
                copy.url(),
                t0.elapsed().as_secs_f64()
            ));
        }
        match poll.next().await {
            Ok(()) => {}
            Err(crate::poll::Gave::Cancelled) => return fail("cancelled"),
            Err(crate::poll::Gave::Up) => {
                let backlog = primary
                    .list(&crate::copy::backlog_prefix(&policy.name, &c.name))
                    .await
                    .map(|l| l.len())
                    .unwrap_or(0);
                return fail(format!(
                    "{seg} is in the primary but not in copy {} ({}); wal-push did not deliver it ({backlog} files owed to this copy): archive_command runs as the server's OS user with that user's environment, which must reach the copy too (credentials, network); its error is in the server log; then `drctl copy {}`",
                    c.name,
                    copy.url(),
                    policy.name
                ));
            }
        }
    }
}

async fn decodes(
    repo: &dyn Repository,
    policy: &str,
    seg: Option<&str>,
    identity: Option<&Path>,
) -> StepResult {
    let seg = seg.ok_or_else(|| Failed("no segment was switched".into()))?;
    let w = wal::parse(seg).map_err(|e| Failed(e.to_string()))?;
    let bytes = repo
        .get_bytes(&wal::sidecar_key(policy, &w))
        .await?
        .ok_or_else(|| Failed(format!("the sidecar of {seg} vanished")))?;
    let side = wal::Sidecar::from_json(&bytes).map_err(|e| Failed(format!("{seg}: {e}")))?;
    let key = wal::object_key(policy, &w);
    let entry = side.object_entry(&key);
    let reader = repo.reader(&key).await?;
    match identity {
        None => {
            let (n, sha) =
                tokio::task::spawn_blocking(move || crate::pipeline::hash_stored(reader))
                    .await
                    .map_err(|e| Failed(e.to_string()))?
                    .map_err(|e| Failed(format!("reading {key}: {e}")))?;
            if n != side.stored_bytes || sha != side.stored_sha256 {
                return fail(format!(
                    "{key}: {n} bytes with sha256 {sha}, but its sidecar says {} bytes with {}",
                    side.stored_bytes, side.stored_sha256
                ));
            }
            Ok(format!(
                "{seg}: stored checksum matches (pass --identity to decrypt it too)"
            ))
        }
        Some(path) => {
            let ids = crate::pipeline::load_identities(path)?;
            let r = tokio::task::spawn_blocking(move || {
                crate::pipeline::decode(reader, &ids, &entry, &mut std::io::sink(), false, &|_| {
                    !crate::cancel::requested()
                })
            })
            .await
            .map_err(|e| Failed(e.to_string()))?;
            match r {
                Ok(d) => Ok(format!(
                    "{seg}: decrypted and decompressed, {} bytes, sha256 matches",
                    d.plain_bytes
                )),
                Err(e) => fail(format!("{key}: {e}")),
            }
        }
    }
}

async fn base_backup_wal(repo: &dyn Repository, policy: &str) -> StepResult {
    let inv = crate::repo::inventory::scan(repo, Some(policy)).await?;
    let Some(newest) = inv
        .complete
        .iter()
        .filter(|m| m.method == Method::Physical)
        .max_by_key(|m| m.consistent_at)
    else {
        return Ok(format!(
            "no base backup yet: run `drctl backup {policy}` to start the recoverable window"
        ));
    };
    let seg_size = newest
        .wal
        .as_ref()
        .map(|w| w.segment_size)
        .unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
    let archive = crate::wal::archive::read_archive(repo, policy, seg_size).await?;
    let r = crate::wal::archive::reach(newest, &archive)?;
    if !r.reaches_stop {
        return fail(format!(
            "base backup {} cannot be restored: WAL {} is missing from the archive",
            newest.id,
            r.gap_at.as_deref().unwrap_or("?")
        ));
    }
    Ok(format!(
        "base backup {}: every segment from its start to its stop is archived",
        newest.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_commands_are_read_like_a_shell() {
        let dir = Path::new("/etc/drctl/policies");
        assert_eq!(
            archive_command_problem(
                "/usr/bin/drctl --policies /etc/drctl/policies wal-push orders %p",
                "orders",
                dir
            ),
            None
        );
        assert_eq!(
            archive_command_problem(
                "'/opt/my drctl' --policies=/etc/drctl/policies wal-push orders %p",
                "orders",
                dir
            ),
            None
        );
        let p = archive_command_problem("cp %p /mnt/archive/%f", "orders", dir).unwrap();
        assert!(p.contains("does not run drctl wal-push"), "{p}");
        let p = archive_command_problem(
            "drctl --policies /etc/drctl/policies wal-push billing %p",
            "orders",
            dir,
        )
        .unwrap();
        assert!(p.contains("policy billing, not orders"), "{p}");
        let p = archive_command_problem(
            "drctl --policies /srv/other wal-push orders %p",
            "orders",
            dir,
        )
        .unwrap();
        assert!(p.contains("/srv/other"), "{p}");
        let p = archive_command_problem("drctl wal-push orders %p", "orders", dir).unwrap();
        assert!(p.contains("names no --policies"), "{p}");
        let p = archive_command_problem(
            "drctl --policies /etc/drctl/policies wal-push orders",
            "orders",
            dir,
        )
        .unwrap();
        assert!(p.contains("%p"), "{p}");
    }
}
