//! The SQLite catalog: an index of the repositories plus run history.
//!
//! A cache, never the source of truth: `drctl catalog rebuild` recreates the
//! backup rows from repository manifests alone. WAL mode so `status` and
//! `list` read while a backup writes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::repo::manifest::Manifest;
use crate::time::parse::rfc3339_micros;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The embedded SQLite file, or a PostgreSQL database many hosts share.
#[derive(Clone)]
enum Db {
    Lite(SqlitePool),
    Pg(PgPool),
}

/// Run `$body` with `$p` bound to whichever pool the catalog has: the SQL
/// is the same for both (`$N` parameters, standard SQL), each arm decodes
/// its own rows.
macro_rules! on {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.db {
            Db::Lite($p) => $body,
            Db::Pg($p) => $body,
        }
    };
}

/// A named point in a policy's WAL (pg_create_restore_point).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestorePoint {
    pub policy: String,
    pub name: String,
    pub lsn: String,
    pub at: String,
    pub host: String,
}

#[derive(Clone)]
pub struct Catalog {
    db: Db,
    /// The SQLite file, or the `postgres://` URL; policy locks live beside
    /// the file, or in the host's state folder (`crate::lock::catalog_dir`).
    path: std::path::PathBuf,
}

/// Whether `path` names a PostgreSQL catalog (`postgres://…`).
pub fn is_url(path: &Path) -> bool {
    crate::lock::catalog_is_url(path)
}

/// A catalog URL without its password, for messages.
pub fn shown(path: &Path) -> String {
    let text = path.to_string_lossy();
    match url::Url::parse(&text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.into_owned(),
    }
}

/// One drill as the catalog keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillRow {
    pub id: String,
    pub policy: String,
    pub backup_id: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub id: String,
    pub policy: String,
    pub method: String,
    pub status: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub consistent_at: Option<Timestamp>,
    pub stored_bytes: Option<i64>,
    pub source_bytes: Option<i64>,
    pub repository: Option<String>,
    pub error: Option<String>,
    pub pinned: bool,
    /// "full" or "incremental" (physical backups).
    pub kind: String,
    /// An incremental's parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The host whose drctl ran it (None for rows rebuilt from the
    /// repository): with a shared catalog, which worker it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What `record_lease` writes: a lease's holder as it last wrote itself.
pub struct LeaseRecord<'a> {
    pub token: &'a str,
    pub what: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub started: Timestamp,
    pub expires: Timestamp,
}

/// A lease as the catalog last heard of it (see `record_lease`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseRow {
    #[serde(skip)]
    pub policy: String,
    /// "run" (backup, prune, copy) or "drill".
    pub lease: String,
    pub what: String,
    pub host: String,
    pub pid: i64,
    #[serde(serialize_with = "crate::time::parse::ser_rfc3339")]
    pub started: Timestamp,
    #[serde(serialize_with = "crate::time::parse::ser_rfc3339")]
    pub expires: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyRow {
    pub at: Timestamp,
    pub deep: bool,
    pub ok: bool,
    pub detail: String,
}

fn ts(s: Option<String>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// A `BackupRow` from a row of either backend (a macro: each arm of `on!`
/// decodes its own row type).
macro_rules! backup_row {
    ($r:expr) => {{
        let r = $r;
        BackupRow {
            id: r.get("id"),
            policy: r.get("policy"),
            method: r.get("method"),
            status: r.get("status"),
            started_at: ts(r.get("started_at")),
            finished_at: ts(r.get("finished_at")),
            consistent_at: ts(r.get("consistent_at")),
            stored_bytes: r.get("stored_bytes"),
            source_bytes: r.get("source_bytes"),
            repository: r.get("repository"),
            error: r.get("error"),
            pinned: r.get::<i64, _>("pinned") != 0,
            kind: r.get("kind"),
            parent: r.get("parent"),
            host: r.get("host"),
        }
    }};
}

/// A `DrillRow` from the first eight columns (id, policy, backup_id,
/// started_at, finished_at, passed, rto_seconds, rpo_seconds) of a row of
/// either backend.
macro_rules! drill_row {
    ($r:expr) => {{
        let r = $r;
        DrillRow {
            id: r.get(0),
            policy: r.get(1),
            backup_id: r.get(2),
            started_at: ts(r.get(3)).unwrap_or_default(),
            finished_at: ts(r.get(4)).unwrap_or_default(),
            passed: r.get::<i64, _>(5) != 0,
            rto_seconds: r.get(6),
            rpo_seconds: r.get(7),
        }
    }};
}

/// What `backup_row!` reads: everything but the manifest JSON, which lists never
/// need (a macro so queries stay static strings).
macro_rules! row_columns {
    () => {
        "id, policy, method, status, started_at, finished_at, consistent_at, \
         stored_bytes, source_bytes, repository, error, pinned, kind, parent, host"
    };
}

impl Catalog {
    /// The database file; policy locks and leases live beside it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn open(path: &Path) -> Result<Catalog> {
        if is_url(path) {
            return Self::open_pg(path).await;
        }
        Self::open_rw(path).await.map_err(|e| explain(path, e))
    }

    /// A PostgreSQL catalog: connect (the password from the URL, PGPASSWORD
    /// or ~/.pgpass), migrate under sqlx's advisory lock (many workers may
    /// start at once), repair this host's orphaned rows.
    async fn open_pg(path: &Path) -> Result<Catalog> {
        let url = path.to_string_lossy();
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| anyhow!("catalog URL {}: {e}", shown(path)))?;
        let opts = opts.application_name("drctl");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot connect to the catalog {}", shown(path)))?;
        PG_MIGRATOR
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the catalog {}", shown(path)))?;
        let cat = Catalog {
            db: Db::Pg(pool),
            path: path.to_path_buf(),
        };
        cat.repair_orphans().await?;
        Ok(cat)
    }

    /// Close the connections (SQLite checkpoints and removes -wal/-shm).
    pub async fn close(self) {
        on!(self, p => p.close().await)
    }

    /// For commands that only read (status, list, show): a user who may
    /// read the catalog but not write it or its locks (the archiving user
    /// looking at a catalog root made, a monitoring account) still gets an
    /// answer, from a read-only connection that takes no lock.
    pub async fn open_for_reading(path: &Path) -> Result<Catalog> {
        if is_url(path) {
            return Self::open_pg(path).await;
        }
        match Self::open_rw(path).await {
            Err(e) if denied(&e) && path.is_file() => {
                tracing::debug!("catalog not writable, reading it only: {e:#}");
                Self::open_read_only(path)
                    .await
                    .map_err(|e| explain(path, e))
            }
            Err(e) => Err(explain(path, e)),
            r => r,
        }
    }

    async fn open_read_only(path: &Path) -> Result<Catalog> {
        let url = format!("sqlite://{}", path.display());
        let ro = SqliteConnectOptions::from_str(&url)?
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = match Self::migrated(ro, path).await {
            Ok(p) => p,
            // A WAL database needs its -shm beside it; when this user
            // cannot create it, read the file as it stands.
            Err(e) => {
                tracing::debug!("read-only catalog: {e:#}; reading it as immutable");
                Self::migrated(SqliteConnectOptions::from_str(&url)?.immutable(true), path).await?
            }
        };
        Ok(Catalog {
            db: Db::Lite(pool),
            path: path.to_path_buf(),
        })
    }

    /// A pool on `opts` whose catalog has every migration this drctl knows.
    async fn migrated(opts: SqliteConnectOptions, path: &Path) -> Result<SqlitePool> {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot read catalog {}", path.display()))?;
        let have: Option<i64> = sqlx::query_scalar("select max(version) from _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .with_context(|| format!("cannot read catalog {}", path.display()))?;
        let want = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if have.unwrap_or(0) < want {
            bail!(
                "catalog {} was made by an older drctl and this user cannot migrate it; run any drctl command once as its owner",
                path.display()
            );
        }
        Ok(pool)
    }

    async fn open_rw(path: &Path) -> Result<Catalog> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create catalog directory {}", dir.display())
                })?;
            }
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // Connecting sets WAL mode, which needs the database to itself and
        // gets SQLITE_BUSY at once (no busy wait) while another process
        // migrates: so connect under the migration lock too. Seen as
        // "database is locked" with 8 processes opening a new catalog on a
        // loaded machine.
        let owned = path.to_path_buf();
        let guard = tokio::task::spawn_blocking(move || crate::lock::migration_lock(&owned))
            .await
            .context("migration lock thread")??;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot open catalog {}", path.display()))?;
        MIGRATOR
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate catalog {}", path.display()))?;
        drop(guard);
        let cat = Catalog {
            db: Db::Lite(pool),
            path: path.to_path_buf(),
        };
        cat.repair_orphans().await?;
        Ok(cat)
    }
}

/// The catalog's files: the database, and SQLite's -wal and -shm beside it.
pub fn files(path: &Path) -> [std::path::PathBuf; 3] {
    ["", "-wal", "-shm"].map(|ext| {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        p.into()
    })
}

/// What to do about a catalog that cannot be opened: rebuild a damaged
/// one, or run as (or chown to) the user that owns it.
fn explain(path: &Path, e: anyhow::Error) -> anyhow::Error {
    if damaged(&e) {
        return e.context(format!(
            "the catalog {} is damaged; `drctl catalog rebuild` recreates it from the repositories (it keeps the damaged file aside)",
            path.display()
        ));
    }
    if !denied(&e) {
        return e;
    }
    let dir = crate::lock::catalog_dir(path);
    anyhow!(
        "cannot write the catalog {} or its locks in {} as {}: {}; run drctl as the user that owns them ({}), or give them to this one: chown -R {} {}",
        path.display(),
        crate::lock::locks_dir(path).display(),
        crate::lock::whoami(),
        e.root_cause(),
        owner_of(path).or_else(|| owner_of(&dir)).unwrap_or_else(|| "?".into()),
        crate::lock::whoami(),
        dir.display()
    )
}

/// SQLite's words for a file that is not (or no longer) a database.
pub fn damaged(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let t = c.to_string();
        t.contains("file is not a database") || t.contains("malformed") || t.contains("disk image")
    })
}

/// A permission problem anywhere in the chain (a lock file, the database
/// file, its folder).
fn denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            || {
                let t = c.to_string();
                t.contains("Permission denied")
                    || t.contains("readonly database")
                    || t.contains("unable to open database file")
            }
    })
}

fn owner_of(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(p).ok()?.uid();
    Some(crate::lock::user_name(uid).unwrap_or_else(|| uid.to_string()))
}

impl Catalog {
    /// A `running` row whose process is gone on this host died mid-run
    /// (kill -9, power loss): it failed.
    async fn repair_orphans(&self) -> Result<()> {
        let host = crate::lock::hostname();
        let rows: Vec<(String, Option<i64>)> = on!(self, p => sqlx::query("select id, pid from backups where status = 'running' and host = $1")
            .bind(&host)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect());
        for (id, pid) in rows {
            if !pid.is_some_and(crate::lock::pid_alive) {
                tracing::warn!(backup = %id, "backup was left running by a process that died; marking it failed");
                self.mark_failed(
                    &id,
                    Timestamp::now(),
                    "drctl process died during the backup",
                )
                .await?;
            }
        }
        Ok(())
    }

    pub async fn insert_running(
        &self,
        id: &str,
        policy: &str,
        method: &str,
        started_at: Timestamp,
        repo: &str,
    ) -> Result<()> {
        on!(self, p => sqlx::query("insert into backups (id, policy, method, status, started_at, repository, host, pid) values ($1, $2, $3, 'running', $4, $5, $6, $7)")
            .bind(id)
            .bind(policy)
            .bind(method)
            .bind(rfc3339_micros(started_at))
            .bind(repo)
            .bind(crate::lock::hostname())
            .bind(std::process::id() as i64)
            .execute(p)
            .await.map(|r| r.rows_affected()))
            .context("recording the backup in the catalog")?;
        Ok(())
    }

    /// Insert or replace a committed backup from its manifest.
    pub async fn upsert_complete(&self, m: &Manifest, repo: &str) -> Result<()> {
        on!(self, p => sqlx::query(
            "insert into backups (id, policy, method, status, started_at, finished_at, consistent_at, stored_bytes, source_bytes, repository, manifest, kind, parent)
             values ($1, $2, $3, 'complete', $4, $5, $6, $7, $8, $9, $10, $11, $12)
             on conflict(id) do update set status = 'complete', finished_at = excluded.finished_at,
               consistent_at = excluded.consistent_at, stored_bytes = excluded.stored_bytes,
               source_bytes = excluded.source_bytes, repository = excluded.repository,
               manifest = excluded.manifest, kind = excluded.kind, parent = excluded.parent,
               error = null, pid = null",
        )
        .bind(&m.id)
        .bind(&m.policy)
        .bind(m.method.as_str())
        .bind(rfc3339_micros(m.started_at))
        .bind(rfc3339_micros(m.finished_at))
        .bind(rfc3339_micros(m.consistent_at))
        .bind(m.stored_bytes() as i64)
        .bind(m.source_bytes() as i64)
        .bind(repo)
        .bind(m.to_json())
        .bind(m.kind.as_str())
        .bind(&m.parent)
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .context("recording the completed backup in the catalog")?;
        Ok(())
    }

    /// Keep the server's `backup_manifest` of a physical backup (what the
    /// next incremental is taken against).
    pub async fn put_server_manifest(&self, id: &str, json: &[u8]) -> Result<()> {
        let body = zstd::bulk::compress(json, 3).context("compressing a server manifest")?;
        on!(self, p => sqlx::query("insert into server_manifests (backup_id, body) values ($1, $2) on conflict (backup_id) do update set body = excluded.body")
            .bind(id)
            .bind(body)
            .execute(p)
            .await.map(|r| r.rows_affected()))
            .context("keeping the server manifest in the catalog")?;
        Ok(())
    }

    /// One relation file's block map in backup `id` (see backup::delta).
    pub async fn put_block_map(&self, id: &str, path: &str, hashes: &[u64]) -> Result<()> {
        let blob: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        on!(self, p => sqlx::query("insert into block_maps (backup_id, path, hashes) values ($1, $2, $3) on conflict (backup_id, path) do update set hashes = excluded.hashes")
            .bind(id)
            .bind(path)
            .bind(blob)
            .execute(p)
            .await.map(|r| r.rows_affected()))
            .context("keeping a block map in the catalog")?;
        Ok(())
    }

    pub async fn block_map(&self, id: &str, path: &str) -> Result<Option<Vec<u64>>> {
        let blob: Option<Vec<u8>> = on!(self, p => sqlx::query_scalar("select hashes from block_maps where backup_id = $1 and path = $2")
                .bind(id)
                .bind(path)
                .fetch_optional(p)
                .await)?;
        Ok(blob.map(|b| {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        }))
    }

    /// Whether backup `id` has a block map (an incremental can be taken
    /// on it by page comparison).
    pub async fn has_block_map(&self, id: &str) -> Result<bool> {
        let n: i64 = on!(self, p => sqlx::query_scalar("select count(*) from block_maps where backup_id = $1")
            .bind(id)
            .fetch_one(p)
            .await)?;
        Ok(n > 0)
    }

    /// What the catalog keeps beside a backup that is gone or failed.
    async fn forget_kept(&self, id: &str) -> Result<()> {
        for q in [
            "delete from server_manifests where backup_id = $1",
            "delete from block_maps where backup_id = $1",
        ] {
            on!(self, p => sqlx::query(q).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    /// The server's `backup_manifest` of a backup, if the catalog has it.
    pub async fn server_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let body: Option<Vec<u8>> = on!(self, p => sqlx::query_scalar("select body from server_manifests where backup_id = $1")
                .bind(id)
                .fetch_optional(p)
                .await)?;
        body.map(|b| {
            let mut out = Vec::new();
            zstd::stream::copy_decode(&b[..], &mut out)
                .with_context(|| format!("the catalog's server manifest of {id} is damaged"))?;
            Ok(out)
        })
        .transpose()
    }

    /// Every `running` row of `policy`, on any host, failed: called by a
    /// backup that has just taken the policy's run lease, which proves no
    /// other run of it lives (a pod killed on a lost node, a holder in
    /// another pid namespace: no host check can tell).
    pub async fn fail_abandoned(&self, policy: &str, error: &str) -> Result<Vec<String>> {
        let ids: Vec<String> = on!(self, p => sqlx::query("select id from backups where policy = $1 and status = 'running'")
            .bind(policy)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect());
        for id in &ids {
            self.mark_failed(id, Timestamp::now(), error).await?;
        }
        Ok(ids)
    }

    pub async fn mark_failed(&self, id: &str, at: Timestamp, error: &str) -> Result<()> {
        self.mark_ended(id, at, "failed", error).await
    }

    /// A run stopped by a signal: not a failure (FAILURES and
    /// drctl_backup_failures_total count only `failed`).
    pub async fn mark_cancelled(&self, id: &str, at: Timestamp, why: &str) -> Result<()> {
        self.mark_ended(id, at, "cancelled", why).await
    }

    async fn mark_ended(&self, id: &str, at: Timestamp, status: &str, error: &str) -> Result<()> {
        on!(self, p => sqlx::query("update backups set status = $1, finished_at = $2, error = $3, pid = null where id = $4 and status = 'running'")
            .bind(status)
            .bind(rfc3339_micros(at))
            .bind(error)
            .bind(id)
            .execute(p)
            .await.map(|r| r.rows_affected()))
            .with_context(|| format!("recording the backup as {status} in the catalog"))?;
        self.forget_kept(id).await?;
        Ok(())
    }

    /// Mark a backup stored outside a drctl repository (an RDS snapshot)
    /// complete: there is no manifest, the catalog row is the record.
    pub async fn complete_external(
        &self,
        id: &str,
        finished: Timestamp,
        consistent: Timestamp,
        stored_bytes: i64,
    ) -> Result<()> {
        on!(self, p => sqlx::query("update backups set status = 'complete', finished_at = $1, consistent_at = $2, stored_bytes = $3, pid = null where id = $4")
            .bind(rfc3339_micros(finished))
            .bind(rfc3339_micros(consistent))
            .bind(stored_bytes)
            .bind(id)
            .execute(p)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Insert or refresh a complete backup stored outside a drctl
    /// repository (catalog rebuild of RDS snapshots from their tags).
    pub async fn upsert_external(
        &self,
        id: &str,
        policy: &str,
        method: &str,
        at: Timestamp,
        stored_bytes: i64,
        location: &str,
    ) -> Result<()> {
        on!(self, p => sqlx::query(
            "insert into backups (id, policy, method, status, started_at, finished_at, consistent_at, stored_bytes, repository)
             values ($1, $2, $3, 'complete', $4, $5, $6, $7, $8)
             on conflict(id) do update set status = 'complete', consistent_at = excluded.consistent_at,
               stored_bytes = excluded.stored_bytes, repository = excluded.repository, error = null, pid = null",
        )
        .bind(id)
        .bind(policy)
        .bind(method)
        .bind(rfc3339_micros(at))
        .bind(rfc3339_micros(at))
        .bind(rfc3339_micros(at))
        .bind(stored_bytes)
        .bind(location)
        .execute(p)
        .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Per policy, newest first, only the rows `status::summarize` looks
    /// at: the newest and oldest complete backups (by consistent point) and
    /// every other attempt since the newest complete one started. One query
    /// whose size follows the policies, not the history: sqlx hands SQLite
    /// rows over one by one, which over 30,000 rows costs 0.4 s.
    pub async fn status_rows(&self) -> Result<HashMap<String, Vec<BackupRow>>> {
        let rows: Vec<BackupRow> = on!(self, p => sqlx::query(
            "with ok as (
                 select policy, max(consistent_at) as newest, min(consistent_at) as oldest
                 from backups where status = 'complete' group by policy
             ), last as (
                 select b.policy, max(b.started_at) as started
                 from backups b join ok on ok.policy = b.policy and b.consistent_at = ok.newest
                 where b.status = 'complete' group by b.policy
             )
             select b.id, b.policy, b.method, b.status, b.started_at, b.finished_at, b.consistent_at,
                    b.stored_bytes, b.source_bytes, b.repository, b.error, b.pinned, b.kind, b.parent, b.host
             from backups b
             left join ok on ok.policy = b.policy
             left join last on last.policy = b.policy
             where (b.status = 'complete' and (b.consistent_at = ok.newest or b.consistent_at = ok.oldest))
                or (b.status <> 'complete' and (last.started is null or b.started_at > last.started))
             order by b.started_at desc, b.id desc",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| backup_row!(r))
        .collect());
        let mut out: HashMap<String, Vec<BackupRow>> = HashMap::new();
        for r in rows {
            out.entry(r.policy.clone()).or_default().push(r);
        }
        Ok(out)
    }

    /// Per policy: bytes stored by complete backups, and failed attempts.
    pub async fn totals(&self) -> Result<HashMap<String, (u64, u64)>> {
        // Casts: PostgreSQL sums bigints as numeric.
        let rows: Vec<(String, i64, i64)> = on!(self, p => sqlx::query(
            "select policy,
                    cast(coalesce(sum(case when status = 'complete' then stored_bytes end), 0) as bigint),
                    cast(sum(case when status = 'failed' then 1 else 0 end) as bigint)
             from backups group by policy",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect());
        Ok(rows
            .into_iter()
            .map(|(policy, stored, failed)| (policy, (stored.max(0) as u64, failed.max(0) as u64)))
            .collect())
    }

    /// Backups, newest first.
    pub async fn list(&self, policy: Option<&str>) -> Result<Vec<BackupRow>> {
        Ok(on!(self, pool => sqlx::query(concat!(
            "select ",
            row_columns!(),
            " from backups where cast($1 as text) is null or policy = $1 order by started_at desc, id desc"
        ))
        .bind(policy)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| backup_row!(r))
        .collect()))
    }

    pub async fn get(&self, id: &str) -> Result<Option<(BackupRow, Option<String>)>> {
        Ok(
            on!(self, p => sqlx::query("select * from backups where id = $1")
            .bind(id)
            .fetch_optional(p)
            .await?
            .map(|r| (backup_row!(&r), r.get("manifest")))),
        )
    }

    pub async fn set_pinned(&self, id: &str, pinned: bool) -> Result<()> {
        on!(self, p => sqlx::query("update backups set pinned = $1 where id = $2")
            .bind(pinned as i64)
            .bind(id)
            .execute(p)
            .await.map(|r| r.rows_affected()))
        .context("recording the pin in the catalog")?;
        Ok(())
    }

    /// Remove complete rows of a policy that the repository no longer has.
    pub async fn forget_missing(&self, policy: &str, present: &[String]) -> Result<u64> {
        let ids: Vec<String> = on!(self, p => sqlx::query_scalar("select id from backups where policy = $1 and status = 'complete'")
            .bind(policy)
            .fetch_all(p)
            .await?);
        let mut n = 0;
        for id in ids {
            if !present.contains(&id) {
                on!(self, p => sqlx::query("delete from backups where id = $1")
                    .bind(&id)
                    .execute(p)
                    .await.map(|r| r.rows_affected()))?;
                self.forget_kept(&id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Copy `copy` holds backup `id` (its manifest is committed there).
    pub async fn record_copy(&self, policy: &str, id: &str, copy: &str) -> Result<()> {
        on!(self, p => sqlx::query(
            "insert into backup_copies (backup_id, policy, copy, at) values ($1, $2, $3, $4) \
             on conflict (backup_id, copy) do nothing",
        )
        .bind(id)
        .bind(policy)
        .bind(copy)
        .bind(rfc3339_micros(Timestamp::now()))
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .context("recording a copy in the catalog")?;
        Ok(())
    }

    /// Forget copy rows of `copy` for backups it no longer holds.
    pub async fn forget_copy_missing(
        &self,
        policy: &str,
        copy: &str,
        present: &[String],
    ) -> Result<()> {
        let ids: Vec<String> = on!(self, p => sqlx::query_scalar("select backup_id from backup_copies where policy = $1 and copy = $2")
            .bind(policy)
            .bind(copy)
            .fetch_all(p)
            .await?);
        for id in ids {
            if !present.contains(&id) {
                on!(self, p => sqlx::query("delete from backup_copies where backup_id = $1 and copy = $2")
                    .bind(&id)
                    .bind(copy)
                    .execute(p)
                    .await.map(|r| r.rows_affected()))?;
            }
        }
        Ok(())
    }

    /// A restore point `drctl restore-point` made on the policy's source.
    pub async fn add_restore_point(&self, p: &RestorePoint) -> Result<()> {
        on!(self, pool => sqlx::query(
            "insert into restore_points (policy, name, lsn, at, host) values ($1, $2, $3, $4, $5) \
             on conflict (policy, name, lsn) do nothing",
        )
        .bind(&p.policy)
        .bind(&p.name)
        .bind(&p.lsn)
        .bind(&p.at)
        .bind(&p.host)
        .execute(pool)
        .await.map(|r| r.rows_affected()))
        .context("recording the restore point in the catalog")?;
        Ok(())
    }

    /// The policy's restore points, oldest first.
    pub async fn restore_points(&self, policy: &str) -> Result<Vec<RestorePoint>> {
        Ok(on!(self, p => sqlx::query(
            "select policy, name, lsn, at, host from restore_points where policy = $1 order by at",
        )
        .bind(policy)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| RestorePoint {
            policy: r.get(0),
            name: r.get(1),
            lsn: r.get(2),
            at: r.get(3),
            host: r.get(4),
        })
        .collect()))
    }

    /// Per backup id of the policy (every policy: None), the copies that
    /// hold it, by name.
    pub async fn copies(&self, policy: Option<&str>) -> Result<HashMap<String, Vec<String>>> {
        let rows: Vec<(String, String)> = on!(self, p => sqlx::query(
            "select backup_id, copy from backup_copies where cast($1 as text) is null or policy = $1 order by copy",
        )
        .bind(policy)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect());
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (id, copy) in rows {
            out.entry(id).or_default().push(copy);
        }
        Ok(out)
    }

    pub async fn record_verify(&self, id: &str, deep: bool, ok: bool, detail: &str) -> Result<()> {
        on!(self, p => sqlx::query(
            "insert into verifications (backup_id, at, deep, ok, detail) values ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(rfc3339_micros(Timestamp::now()))
        .bind(deep as i64)
        .bind(ok as i64)
        .bind(detail)
        .execute(p)
        .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Record a finished drill (`report` is its JSON report).
    pub async fn insert_drill(&self, d: &DrillRow, report: &str) -> Result<()> {
        on!(self, p => sqlx::query("insert into drills (id, policy, backup_id, started_at, finished_at, passed, rto_seconds, rpo_seconds, report) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&d.id)
            .bind(&d.policy)
            .bind(&d.backup_id)
            .bind(rfc3339_micros(d.started_at))
            .bind(rfc3339_micros(d.finished_at))
            .bind(d.passed as i64)
            .bind(d.rto_seconds)
            .bind(d.rpo_seconds)
            .bind(report)
            .execute(p)
            .await.map(|r| r.rows_affected()))
            .context("recording the drill in the catalog")?;
        Ok(())
    }

    /// Per policy: its newest drill, and its newest passed drill.
    pub async fn last_drills(&self) -> Result<HashMap<String, (DrillRow, Option<DrillRow>)>> {
        let rows: Vec<DrillRow> = on!(self, p => sqlx::query(
            "select id, policy, backup_id, started_at, finished_at, passed, rto_seconds, rpo_seconds
             from drills d
             where started_at = (select max(started_at) from drills where policy = d.policy)
                or started_at = (select max(started_at) from drills where policy = d.policy and passed = 1)
             order by started_at desc",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| drill_row!(r))
        .collect());
        let mut out: HashMap<String, (DrillRow, Option<DrillRow>)> = HashMap::new();
        for d in rows {
            match out.get_mut(&d.policy) {
                None => {
                    let passed = d.passed.then(|| d.clone());
                    out.insert(d.policy.clone(), (d, passed));
                }
                Some((_, ok @ None)) if d.passed => *ok = Some(d),
                Some(_) => {}
            }
        }
        Ok(out)
    }

    /// The newest `n` drills of every policy, oldest first: the RTO/RPO
    /// trend.
    pub async fn recent_drills(&self, n: i64) -> Result<HashMap<String, Vec<DrillRow>>> {
        let rows: Vec<DrillRow> = on!(self, p => sqlx::query(
            "select id, policy, backup_id, started_at, finished_at, passed, rto_seconds, rpo_seconds from
               (select *, row_number() over (partition by policy order by started_at desc) as k from drills) d
             where k <= $1 order by policy, started_at",
        )
        .bind(n)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| drill_row!(r))
        .collect());
        let mut out: HashMap<String, Vec<DrillRow>> = HashMap::new();
        for d in rows {
            out.entry(d.policy.clone()).or_default().push(d);
        }
        Ok(out)
    }

    /// A policy's newest `n` drills, newest first, each with its JSON
    /// report (the checks).
    pub async fn drill_history(&self, policy: &str, n: i64) -> Result<Vec<(DrillRow, String)>> {
        Ok(on!(self, p => sqlx::query(
            "select id, policy, backup_id, started_at, finished_at, passed, rto_seconds, rpo_seconds, report
             from drills where policy = $1 order by started_at desc limit $2",
        )
        .bind(policy)
        .bind(n)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| (drill_row!(r), r.get(8)))
        .collect()))
    }

    /// Record the lease `h` of `policy` (object `lease`: "run" or
    /// "drill") as its holder last wrote it.
    pub async fn record_lease(&self, policy: &str, lease: &str, h: &LeaseRecord<'_>) -> Result<()> {
        on!(self, p => sqlx::query(
            "insert into leases (policy, lease, token, what, host, pid, started, expires) values ($1, $2, $3, $4, $5, $6, $7, $8)
             on conflict (policy, lease) do update set token = excluded.token, what = excluded.what, host = excluded.host,
               pid = excluded.pid, started = excluded.started, expires = excluded.expires",
        )
        .bind(policy)
        .bind(lease)
        .bind(h.token)
        .bind(h.what)
        .bind(h.host)
        .bind(i64::from(h.pid))
        .bind(rfc3339_micros(h.started))
        .bind(rfc3339_micros(h.expires))
        .execute(p)
        .await.map(|r| r.rows_affected()))
        .context("recording a lease in the catalog")?;
        Ok(())
    }

    /// The holder released its lease (only its own row: a successor's
    /// stays).
    pub async fn drop_lease(&self, policy: &str, lease: &str, token: &str) -> Result<()> {
        on!(self, p => sqlx::query("delete from leases where policy = $1 and lease = $2 and token = $3")
            .bind(policy)
            .bind(lease)
            .bind(token)
            .execute(p)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Every recorded lease, by policy.
    pub async fn leases(&self) -> Result<HashMap<String, Vec<LeaseRow>>> {
        let rows: Vec<LeaseRow> = on!(self, p => sqlx::query(
            "select policy, lease, what, host, pid, started, expires from leases order by policy, lease",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| LeaseRow {
            policy: r.get(0),
            lease: r.get(1),
            what: r.get(2),
            host: r.get(3),
            pid: r.get(4),
            started: ts(r.get(5)).unwrap_or_default(),
            expires: ts(r.get(6)).unwrap_or_default(),
        })
        .collect());
        let mut out: HashMap<String, Vec<LeaseRow>> = HashMap::new();
        for l in rows {
            out.entry(l.policy.clone()).or_default().push(l);
        }
        Ok(out)
    }

    pub async fn last_verify(&self, id: &str) -> Result<Option<VerifyRow>> {
        Ok(
            on!(self, p => sqlx::query("select at, deep, ok, detail from verifications where backup_id = $1 order by at desc limit 1")
            .bind(id)
            .fetch_optional(p)
            .await?
            .map(|r| VerifyRow {
                at: ts(r.get(0)).unwrap_or_default(),
                deep: r.get::<i64, _>(1) != 0,
                ok: r.get::<i64, _>(2) != 0,
                detail: r.get(3),
            })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Catalog {
        fn lite(&self) -> &SqlitePool {
            match &self.db {
                Db::Lite(p) => p,
                Db::Pg(_) => panic!("a SQLite catalog"),
            }
        }
    }

    /// `status_rows` must summarize exactly like the full history does.
    #[tokio::test]
    async fn status_rows_summarize_like_the_full_history() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).await.unwrap();
        let add = |id: &str, policy: &str, status: &str, minute: i64, consistent: Option<i64>| {
            let at = |m: i64| {
                rfc3339_micros(
                    "2026-11-01T00:00:00Z".parse::<Timestamp>().unwrap()
                        + jiff::SignedDuration::from_mins(m),
                )
            };
            sqlx::query("insert into backups (id, policy, method, status, started_at, finished_at, consistent_at, stored_bytes, error) values ($1, $2, 'dump', $3, $4, $5, $6, 10, $7)")
                .bind(id.to_string())
                .bind(policy.to_string())
                .bind(status.to_string())
                .bind(at(minute))
                .bind(at(minute + 1))
                .bind(consistent.map(at))
                .bind((status == "failed").then(|| format!("error {id}")))
                .execute(cat.lite())
        };
        // a: failures before and after successes; b: never succeeded;
        // c: a newer-started backup with an older consistent point.
        for (id, p, st, m, c) in [
            ("a1", "a", "failed", 0, None),
            ("a2", "a", "complete", 10, Some(11)),
            ("a3", "a", "failed", 20, None),
            ("a4", "a", "complete", 30, Some(31)),
            ("a5", "a", "complete", 40, Some(41)),
            ("a6", "a", "failed", 50, None),
            ("a7", "a", "failed", 60, None),
            ("a8", "a", "running", 70, None),
            ("b1", "b", "failed", 5, None),
            ("b2", "b", "failed", 6, None),
            ("c1", "c", "complete", 10, Some(50)),
            ("c2", "c", "complete", 20, Some(30)),
            ("c3", "c", "failed", 15, None),
            ("c4", "c", "failed", 25, None),
        ] {
            add(id, p, st, m, c).await.unwrap();
        }
        let now: Timestamp = "2026-11-02T00:00:00Z".parse().unwrap();
        let mut few = cat.status_rows().await.unwrap();
        for name in ["a", "b", "c"] {
            let policy = crate::policy::parse(
                std::path::Path::new(&format!("{name}.toml")),
                "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\nschedule = \"0 2 * * *\"\n[repository]\nurl = \"file:///tmp/r\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n",
            )
            .unwrap();
            let full = cat.list(Some(name)).await.unwrap();
            let part = few.remove(name).unwrap();
            if name == "a" {
                // a1, a3 (failures before a success) and a4 (neither
                // newest nor oldest) are not needed.
                let ids: Vec<&str> = part.iter().map(|r| r.id.as_str()).collect();
                assert_eq!(ids, ["a8", "a7", "a6", "a5", "a2"]);
            }
            assert_eq!(
                crate::status::summarize(&policy, &part, None, now),
                crate::status::summarize(&policy, &full, None, now),
                "{name}"
            );
        }
        let t = cat.totals().await.unwrap();
        assert_eq!(t["a"], (30, 4));
        assert_eq!(t["b"], (0, 2));
    }

    /// A fresh catalog holding one `running` row owned by this process.
    async fn with_running_row(dir: &tempfile::TempDir, id: &str) -> (Catalog, std::path::PathBuf) {
        let path = dir.path().join("c.db");
        let cat = Catalog::open(&path).await.unwrap();
        cat.insert_running(id, "p", "dump", Timestamp::now(), "file:///r")
            .await
            .unwrap();
        (cat, path)
    }

    #[tokio::test]
    async fn orphaned_running_rows_are_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, path) = with_running_row(&dir, "20261122T101500Z-0001").await;
        // Pretend a dead process owned it.
        sqlx::query("update backups set pid = 999999999")
            .execute(cat.lite())
            .await
            .unwrap();
        drop(cat);
        let cat = Catalog::open(&path).await.unwrap();
        let rows = cat.list(None).await.unwrap();
        assert_eq!(rows[0].status, "failed");
        assert!(rows[0].error.as_deref().unwrap().contains("died"));
    }

    #[tokio::test]
    async fn live_running_rows_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, path) = with_running_row(&dir, "20261122T101500Z-0002").await;
        drop(cat);
        let cat = Catalog::open(&path).await.unwrap();
        assert_eq!(cat.list(Some("p")).await.unwrap()[0].status, "running");
    }

    #[tokio::test]
    async fn a_lease_holder_fails_the_policys_running_rows_of_any_host() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = with_running_row(&dir, "20261122T101500Z-0003").await;
        // Another host's run, whose pid means nothing here.
        sqlx::query("update backups set host = 'elsewhere', pid = 1")
            .execute(cat.lite())
            .await
            .unwrap();
        cat.insert_running(
            "20261122T101600Z-0004",
            "q",
            "dump",
            Timestamp::now(),
            "file:///r",
        )
        .await
        .unwrap();
        let failed = cat.fail_abandoned("p", "gone").await.unwrap();
        assert_eq!(failed, vec!["20261122T101500Z-0003".to_string()]);
        assert_eq!(cat.list(Some("p")).await.unwrap()[0].status, "failed");
        assert_eq!(cat.list(Some("q")).await.unwrap()[0].status, "running");
    }
}
