//! `drctl backup`: run one backup of a policy now.
//!
//! Commit protocol: the data object is finished only after pg_dump exited
//! cleanly, the manifest is written only after the data object is durable,
//! and the catalog says `complete` only after the manifest is. Any failure
//! before that leaves no manifest, so nothing can mistake it for a backup.

use std::io::Read;
use std::process::ExitStatus;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;

use crate::catalog::Catalog;
use crate::manifest::{self, CompressionInfo, EncryptionInfo, Manifest, ObjectEntry};
use crate::pg::{self, dump, Conn, ConnUrl};
use crate::pipeline::{self, EncodeOptions};
use crate::policy::{Method, Policy};
use crate::repo::{self, Repository};

pub fn source_conn(policy: &Policy) -> Result<Conn> {
    let url = policy.source.url.as_deref().ok_or_else(|| {
        crate::error::usage(format!("{}: source.url is required", policy.path.display()))
    })?;
    let url = ConnUrl::parse(url)
        .map_err(|e| crate::error::usage(format!("{}: source.url: {e}", policy.path.display())))?;
    Conn::new(url, policy.source.password_env.as_deref())
}

pub async fn open_repo(policy: &Policy) -> Result<std::sync::Arc<dyn Repository>> {
    let cfg = policy.repository.as_ref().ok_or_else(|| {
        crate::error::usage(format!(
            "{}: [repository] is required",
            policy.path.display()
        ))
    })?;
    repo::open(cfg).await
}

/// Run a backup and return its committed manifest. The caller holds the
/// policy lock (`jobs::backup`).
pub async fn run(policy: &Policy, catalog: &Catalog) -> Result<Manifest> {
    let method = policy.backup.method;
    if method == Method::RdsSnapshot {
        return Err(crate::error::usage(format!(
            "{}: backup.method = \"rds-snapshot\" is not supported by this drctl build yet; use \"dump\" or \"physical\"",
            policy.path.display()
        )));
    }
    let conn = source_conn(policy)?;
    let recipients = pipeline::parse_recipients(policy.recipients()).map_err(|e| {
        crate::error::usage(format!(
            "{}: encryption.recipients: {e}",
            policy.path.display()
        ))
    })?;
    let repo = open_repo(policy).await?;
    repo::ensure_initialized(&*repo).await?;
    // What killed runs left goes before this run adds its own (the caller
    // holds the policy lock: nothing of this policy is in flight).
    let swept = async {
        let inv = crate::inventory::scan(&*repo, Some(&policy.name)).await?;
        crate::prune::sweep(&policy.name, &*repo, &inv, false).await
    }
    .await;
    if let Err(e) = swept {
        tracing::warn!(policy = %policy.name, "cannot remove what earlier runs left: {e:#}");
    }

    let started = Timestamp::now();
    let id = manifest::new_backup_id(started);
    catalog
        .insert_running(&id, &policy.name, method.as_str(), started, repo.url())
        .await?;
    tracing::info!(policy = %policy.name, backup = %id, "backup started");
    let result = match method {
        Method::Physical => {
            crate::pg::physical::backup(policy, &conn, &repo, &recipients, &id, started).await
        }
        _ => dump_backup(policy, &conn, &*repo, &recipients, &id, started).await,
    };
    match result {
        Ok(m) => {
            catalog.upsert_complete(&m, repo.url()).await?;
            tracing::info!(policy = %policy.name, backup = %id, "backup complete");
            Ok(m)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if let Err(ce) = catalog.mark_failed(&id, Timestamp::now(), &msg).await {
                tracing::error!(error = %ce, "could not record the failure in the catalog");
            }
            Err(e.context(format!("backup {id} of policy {} failed", policy.name)))
        }
    }
}

/// A child process whose stdout is being encoded into the repository.
pub type Encoding = tokio::task::JoinHandle<(Result<pipeline::Digests>, Vec<u8>)>;

/// Stream `child`'s stdout through the pipeline into `key`. The object is
/// committed only if the child exits 0; the result carries its stderr.
pub async fn encode_child(
    policy: &Policy,
    repo: &dyn Repository,
    key: &str,
    recipients: &[age::x25519::Recipient],
    mut child: std::process::Child,
    what: &'static str,
) -> Result<Encoding> {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let writer = match repo.writer(key).await {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let level = policy.compression_level();
    let threads = policy.compression_threads();
    let recips = recipients.to_vec();
    Ok(tokio::task::spawn_blocking(move || {
        let bar = crate::progress::bytes_bar(what);
        let opts = EncodeOptions {
            level,
            threads,
            recipients: &recips,
        };
        let mut status: Option<ExitStatus> = None;
        let result = pipeline::encode(
            &mut stdout,
            writer,
            &opts,
            &|n| {
                bar.set_position(n);
                !crate::cancel::requested()
            },
            &mut || {
                // The child must have exited cleanly before the object is committed.
                let s = child
                    .wait()
                    .with_context(|| format!("waiting for {what}"))?;
                status = Some(s);
                if !s.success() {
                    bail!("{what} exited with {s}");
                }
                Ok(())
            },
        );
        bar.finish_and_clear();
        if result.is_err() && status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (result, stderr_thread.join().unwrap_or_default())
    }))
}

pub fn compression_info(policy: &Policy) -> CompressionInfo {
    CompressionInfo {
        algorithm: "zstd".into(),
        level: policy.compression_level(),
    }
}

pub fn encryption_info(recipients: &[age::x25519::Recipient]) -> EncryptionInfo {
    EncryptionInfo {
        algorithm: "age-x25519".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
    }
}

/// Commit a backup: write its manifest, or delete its objects if that fails.
pub async fn commit(repo: &dyn Repository, m: &Manifest) -> Result<()> {
    if let Err(e) = repo
        .put_bytes(
            &manifest::manifest_key(&m.policy, &m.id),
            m.to_json().into_bytes(),
        )
        .await
    {
        for o in &m.objects {
            let _ = repo.delete(&o.key).await;
        }
        return Err(e.context("writing the manifest (the backup is not committed)"));
    }
    Ok(())
}

async fn dump_backup(
    policy: &Policy,
    conn: &Conn,
    repo: &dyn Repository,
    recipients: &[age::x25519::Recipient],
    id: &str,
    started: Timestamp,
) -> Result<Manifest> {
    let pg_dump_version = pg::tool_version("pg_dump").await?;
    let mut snap = dump::export_snapshot(conn).await?;
    let child = dump::spawn_pg_dump(conn, &snap.id)?;
    let data_key = format!("{}data.zst.age", manifest::backup_prefix(&policy.name, id));
    let encoder = encode_child(policy, repo, &data_key, recipients, child, "pg_dump").await?;

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
        compression: compression_info(policy),
        encryption: encryption_info(recipients),
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
    commit(repo, &m).await?;
    Ok(m)
}
