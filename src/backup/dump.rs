//! Dump backups: `pg_dump -Fc` inside an exported snapshot, streamed into
//! one object, with the row counts a drill judges by read in the same
//! snapshot.

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;

use super::store;
use crate::pg::{self, dump, Conn};
use crate::policy::{Method, Policy};
use crate::repo::manifest::{self, Manifest, ObjectEntry};
use crate::repo::Repository;

pub(crate) async fn backup(
    policy: &Policy,
    conn: &Conn,
    repo: &dyn Repository,
    recipients: &[age::x25519::Recipient],
    id: &str,
    started: Timestamp,
) -> Result<Manifest> {
    let mut snap = dump::export_snapshot(conn).await?;
    let pg_dump = policy.pg_tool("pg_dump", snap.source.server_version_num / 10000)?;
    let pg_dump_version = pg::tool_version(&pg_dump).await?;
    let child = dump::spawn_pg_dump(conn, &pg_dump, &snap.id)?;
    let data_key = format!("{}data.zst.age", manifest::backup_prefix(&policy.name, id));
    let encoder = store::encode_child(
        policy,
        repo,
        &data_key,
        recipients,
        child,
        "pg_dump",
        snap.estimated_bytes,
    )
    .await?;

    let counts = dump::row_counts(&mut snap.session, policy.backup.row_counts).await;
    let (encoded, stderr_text) = encoder.await.context("backup pipeline panicked")?;
    let stderr_summary = pg::stderr_summary(&stderr_text);
    let encoded = match encoded {
        Ok(d) => d,
        Err(e) if String::from_utf8_lossy(&stderr_text).contains("error:") => {
            tracing::debug!("pipeline: {e:#}");
            return Err(anyhow!("pg_dump failed: {stderr_summary}"));
        }
        Err(e) => return Err(e),
    };
    let stderr_str = String::from_utf8_lossy(&stderr_text);
    if stderr_str.contains("error:") {
        // An error pg_dump reported but did not exit on: the dump is suspect.
        let _ = repo.delete(&data_key).await;
        bail!("pg_dump reported an error: {stderr_summary}");
    }
    for line in stderr_str.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!("{line}");
    }
    let tables = match counts {
        Ok(t) => t,
        Err(e) => {
            let _ = repo.delete(&data_key).await;
            return Err(e);
        }
    };
    snap.session.close().await.ok();

    let mut source = snap.source;
    source.pg_dump_version = Some(pg_dump_version);
    let d = encoded;
    let m = Manifest {
        format: manifest::FORMAT_VERSION,
        id: id.to_string(),
        policy: policy.name.clone(),
        method: Method::Dump,
        kind: manifest::Kind::Full,
        parent: None,
        started_at: started,
        finished_at: Timestamp::now(),
        consistent_at: snap.consistent_at,
        source,
        wal: None,
        objects: vec![ObjectEntry {
            name: "data".into(),
            key: data_key.clone(),
            plain_bytes: d.plain_bytes,
            plain_sha256: d.plain_sha256,
            stored_bytes: d.stored_bytes,
            stored_sha256: d.stored_sha256,
        }],
        compression: store::compression_info(policy),
        encryption: store::encryption_info(recipients),
        row_counts: match policy.backup.row_counts {
            crate::policy::RowCounts::Exact => "exact",
            crate::policy::RowCounts::Estimate => "estimate",
            crate::policy::RowCounts::Off => "off",
        }
        .into(),
        tables,
        tablespaces: Vec::new(),
        server_manifest: None,
        drctl_version: env!("CARGO_PKG_VERSION").into(),
    };
    // The commit point.
    store::commit(repo, &m).await?;
    Ok(m)
}
