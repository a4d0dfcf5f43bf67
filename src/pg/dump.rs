//! Logical backups: pg_dump in custom format, taken from a snapshot that
//! drctl exports and holds open, so the consistent point and the row counts
//! describe exactly the data in the dump.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use jiff::Timestamp;
use std::process::Child;

use super::{Conn, Session};
use crate::policy::RowCounts;
use crate::repo::manifest::{SourceInfo, TableCount};

pub struct Snapshot {
    pub session: Session,
    pub id: String,
    pub consistent_at: Timestamp,
    pub source: SourceInfo,
    /// What pg_dump will write, roughly: the dumped tables' heap and TOAST
    /// (not pg_database_size, whose indexes and catalogs a dump does not
    /// hold). For the progress bar only.
    pub estimated_bytes: Option<u64>,
}

/// Open a repeatable-read transaction and export its snapshot.
pub async fn export_snapshot(conn: &Conn) -> Result<Snapshot> {
    let mut session = Session::open(conn).await?;
    session
        .query("begin isolation level repeatable read, read only;")
        .await
        .with_context(|| format!("cannot connect to {}", conn.url))?;
    // statement_timestamp() is taken before the snapshot: every transaction
    // that committed before it is visible to the dump.
    let rows = session
        .query(
            "select pg_export_snapshot(), \
             to_char(statement_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             current_setting('server_version'), current_setting('server_version_num'), \
             current_database(), pg_encoding_to_char(encoding) \
             from pg_database where datname = current_database();",
        )
        .await
        .with_context(|| format!("cannot export a snapshot on {}", conn.url))?;
    let [row] = rows.as_slice() else {
        bail!("snapshot query returned {} rows", rows.len())
    };
    let consistent_at: Timestamp = row[1].parse().context("parsing the server's timestamp")?;
    // On its own connection: nothing may abort the snapshot's transaction.
    let estimated_bytes = conn
        .query_one(
            &format!("select coalesce(sum(pg_table_size(c.oid)), 0)::bigint {TABLES}"),
            &[],
        )
        .await
        .ok()
        .and_then(|n| n.parse().ok());
    Ok(Snapshot {
        session,
        id: row[0].clone(),
        consistent_at,
        source: SourceInfo {
            database: row[4].clone(),
            host: conn.url.host(),
            server_version: row[2].clone(),
            server_version_num: row[3].parse().unwrap_or(0),
            pg_dump_version: None,
            encoding: Some(row[5].clone()),
            system_identifier: None,
        },
        estimated_bytes,
    })
}

/// Tables whose data pg_dump writes (no extension-owned tables, no temp).
const TABLES: &str = "from pg_class c join pg_namespace n on n.oid = c.relnamespace \
     where c.relkind = 'r' and c.relpersistence <> 't' \
     and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast' \
     and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass \
                     and d.objid = c.oid and d.deptype = 'e')";

/// Row counts inside the snapshot's transaction.
pub async fn row_counts(session: &mut Session, mode: RowCounts) -> Result<Vec<TableCount>> {
    let sql = match mode {
        RowCounts::Off => return Ok(Vec::new()),
        RowCounts::Estimate => format!(
            "select n.nspname, c.relname, greatest(c.reltuples, 0)::bigint {TABLES} order by 1, 2;"
        ),
        // One count(*) per table, generated server-side so names are quoted
        // by format(), run as a single UNION ALL so psql prints one result.
        // Unreadable tables are skipped: an error here would abort the
        // transaction and with it the snapshot pg_dump is importing; pg_dump
        // itself reports the missing privilege.
        RowCounts::Exact => format!(
            "select string_agg(format('select %L, %L, count(*) from only %I.%I', n.nspname, c.relname, n.nspname, c.relname), \
             ' union all ' order by n.nspname, c.relname) {TABLES} and has_table_privilege(c.oid, 'SELECT') \\gexec"
        ),
    };
    let rows = session.query(&sql).await.context("counting rows")?;
    let mut out: Vec<TableCount> = rows
        .into_iter()
        .filter(|r| r.len() == 3)
        .map(|r| TableCount {
            schema: r[0].clone(),
            name: r[1].clone(),
            rows: r[2].parse().unwrap_or(-1),
        })
        .collect();
    out.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    Ok(out)
}

/// Row counts in a session of their own (not tied to a dump's snapshot).
pub async fn count_tables(conn: &Conn, mode: RowCounts) -> Result<Vec<TableCount>> {
    let mut s = Session::open(conn).await?;
    // One snapshot for every count; `close` commits it (without a
    // transaction the server logs "there is no transaction in progress").
    s.query("begin isolation level repeatable read, read only;")
        .await?;
    let t = row_counts(&mut s, mode).await;
    s.close().await.ok();
    t
}

/// Start `pg_dump -Fc -Z0` (zstd compresses later) on the exported snapshot.
pub fn spawn_pg_dump(conn: &Conn, pg_dump: &std::path::Path, snapshot: &str) -> Result<Child> {
    let mut cmd = conn.std_command(pg_dump);
    cmd.args(["-Fc", "-Z0", "-w"])
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={}", conn.url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
        .with_context(|| format!("cannot run {}", pg_dump.display()))
}
