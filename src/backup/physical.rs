//! Physical base backups: `BASE_BACKUP` spoken by drctl itself (see
//! `replication`; server-side zstd where the server can), or
//! `pg_basebackup -D - -Ft -X fetch` where only libpq will do (TLS), streamed
//! into the repository with WAL included so each backup is self-contained.
//! A base backup is committed only once every segment from its start to its
//! stop point is also in the WAL archive (`wal-push`), so point-in-time
//! recovery from it has no hole at its start.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;

use super::store;
use crate::pg::Conn;
use crate::policy::{Method, Policy};
use crate::poll::Gave;
use crate::repo::manifest::{self, Manifest, ObjectEntry, SourceInfo, Tablespace, WalInfo};
use crate::repo::Repository;
use crate::wal;

/// Start and stop of the backup as pg_basebackup -v reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Points {
    pub start_lsn: String,
    pub timeline: u32,
    pub stop_lsn: String,
}

/// Parse pg_basebackup -v's "write-ahead log start point: 0/2000028 on
/// timeline 1" and "write-ahead log end point: 0/2000100".
pub fn parse_points(stderr: &str) -> Option<Points> {
    let mut start = None;
    let mut stop = None;
    for line in stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut it = rest.split_whitespace();
            let lsn = it.next()?.to_string();
            let tli = rest.split("on timeline ").nth(1)?.trim().parse().ok()?;
            start = Some((lsn, tli));
        }
        if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            stop = Some(rest.split_whitespace().next()?.to_string());
        }
    }
    let (start_lsn, timeline) = start?;
    Some(Points {
        start_lsn,
        timeline,
        stop_lsn: stop?,
    })
}

/// What the server says about itself, and how many tablespaces it has
/// besides pg_default and pg_global.
async fn server_facts(policy: &Policy, conn: &Conn) -> Result<(SourceInfo, u64, u64)> {
    let rows = conn
        .query(
            "select current_setting('server_version'), current_setting('server_version_num'), \
             (select system_identifier::text from pg_control_system()), \
             (select count(*) from pg_tablespace where spcname not in ('pg_default', 'pg_global')), \
             current_setting('archive_mode'), \
             (select setting || ' ' || coalesce(unit, '') from pg_settings where name = 'wal_segment_size')",
            &[],
        )
        .await
        .with_context(|| format!("cannot query {}", conn.url))?;
    let r = rows
        .first()
        .ok_or_else(|| anyhow!("no answer from the server"))?;
    let tablespaces: u64 = r[3].parse().unwrap_or(0);
    let version: u32 = r[1].parse().unwrap_or(0);
    if tablespaces > 0 && version < 150000 {
        bail!(
            "the cluster has {tablespaces} tablespaces and runs PostgreSQL {}; drctl backs up clusters with tablespaces from PostgreSQL 15 on",
            r[0]
        );
    }
    if r[4] == "off" {
        return Err(crate::error::usage(format!(
            "archive_mode is off on {}: physical backups need the WAL archive; set archive_mode = on and archive_command = '{}' (then restart the server)",
            conn.url.host(),
            policy.archive_command()
        )));
    }
    let seg = match r[5].split_once(' ') {
        Some((n, "B")) => n.parse().ok(),
        Some((n, "8kB")) => n.parse::<u64>().ok().map(|n| n * 8192),
        Some((n, "MB")) => n.parse::<u64>().ok().map(|n| n << 20),
        _ => None,
    }
    .unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
    Ok((
        SourceInfo {
            database: conn.url.database(),
            host: conn.url.host(),
            server_version: r[0].clone(),
            server_version_num: version,
            pg_dump_version: None,
            encoding: None,
            system_identifier: Some(r[2].clone()),
        },
        seg,
        tablespaces,
    ))
}

/// Wait until every segment start..=stop has a committed sidecar; on
/// timeout, the names still missing.
async fn wait_for_wal(
    repo: &dyn Repository,
    policy: &str,
    p: &Points,
    seg_size: u64,
    timeout: Duration,
) -> Result<std::result::Result<(), Vec<String>>> {
    let first = wal::lsn_to_segno(&p.start_lsn, seg_size).context("bad start LSN")?;
    let last = wal::lsn_to_segno(&p.stop_lsn, seg_size).context("bad stop LSN")?;
    // Only what is still missing is asked for again on the next round.
    let mut missing: Vec<String> = (first..=last)
        .map(|s| wal::segment_name(p.timeline, s, seg_size))
        .collect();
    // The stop segment is usually archived within tens of milliseconds of
    // the backup's end: the poll asks often at first, then backs off.
    let mut poll = crate::poll::Poll::new(timeout);
    loop {
        let mut still = Vec::new();
        for name in missing {
            let w = wal::parse(&name).expect("valid name");
            if repo.head(&wal::sidecar_key(policy, &w)).await?.is_none() {
                still.push(name);
            }
        }
        missing = still;
        if missing.is_empty() {
            return Ok(Ok(()));
        }
        match poll.next().await {
            Ok(()) => {}
            Err(Gave::Up) => return Ok(Err(missing)),
            Err(Gave::Cancelled) => bail!(
                "cancelled while waiting for WAL {} to be archived",
                missing.join(", ")
            ),
        }
    }
}

/// Find the archived backup history file labelled for backup `id`.
async fn backup_points(
    repo: &dyn Repository,
    policy: &str,
    id: &str,
    timeout: Duration,
) -> Result<Points> {
    let label = format!("drctl {id}");
    let mut poll = crate::poll::Poll::new(timeout);
    loop {
        for o in repo.list(&wal::dir_key(policy)).await? {
            if !o.key.ends_with(".backup.json") {
                continue;
            }
            if let Some(b) = repo.get_bytes(&o.key).await? {
                if let Ok(side) = wal::Sidecar::from_json(&b) {
                    if let Some(h) = side.backup.filter(|h| h.label == label) {
                        return Ok(Points {
                            start_lsn: h.start_lsn,
                            timeline: h.start_timeline,
                            stop_lsn: h.stop_lsn,
                        });
                    }
                }
            }
        }
        match poll.next().await {
            Ok(()) => {}
            Err(Gave::Cancelled) => {
                bail!("cancelled while waiting for the server's backup history file")
            }
            Err(Gave::Up) => bail!(
                "the server's backup history file for {id} is not in the archive after {}s; check pg_stat_archiver on the server, and run `drctl check {policy}`, which says what archive_command should be",
                timeout.as_secs()
            ),
        }
    }
}

/// The archives of a base backup, stored, and the points the tool reported.
struct Streamed {
    /// The server's backup_manifest as it streamed by (drctl's own client).
    server_manifest_json: Option<Vec<u8>>,
    objects: Vec<ObjectEntry>,
    tablespaces: Vec<Tablespace>,
    points: Option<Points>,
    /// pg_basebackup's version, when it was used.
    tool: Option<String>,
    server_manifest: manifest::ServerManifest,
}

/// A committed physical backup.
pub struct Taken {
    pub manifest: Manifest,
    /// The server's backup_manifest, for the catalog (what an incremental
    /// on this backup is taken against).
    pub server_manifest: Option<Vec<u8>>,
    /// Why a wanted incremental is a full after all.
    pub note: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub async fn backup(
    policy: &Policy,
    conn: &Conn,
    repo: &Arc<dyn Repository>,
    recipients: &[age::x25519::Recipient],
    id: &str,
    started: Timestamp,
    parent: Option<super::incremental::Parent>,
    catalog: &crate::catalog::Catalog,
) -> Result<Taken> {
    let (source, seg_size, tablespaces) = server_facts(policy, conn).await?;
    // drctl's own replication client reads the archives straight off the
    // socket; pg_basebackup would relay every byte through its own buffers
    // and a pipe (a quarter of a backup's CPU, measured). It is used unless
    // the connection might want TLS, which only libpq speaks.
    // Its BASE_BACKUP syntax is PostgreSQL 15's.
    let own_client = tablespaces > 0
        || (!policy.backup.use_pg_basebackup
            && source.server_version_num >= 150000
            && crate::pg::replication::Params::from_conn(conn)
                .is_ok_and(|p| p.plain_is_what_libpq_would_do()));
    let (mut parent, mut note) = (parent, None);
    if parent.is_some() && !own_client {
        parent = None;
        note = Some("incrementals are taken by drctl's own replication client, which this policy does not use (use_pg_basebackup, or a connection that may want TLS)".into());
    }
    // PostgreSQL 15/16 with incrementals: every backup records its block
    // map, and an incremental stores only the pages that differ from its
    // parent's.
    let block_deltas = own_client
        && source.server_version_num < 170000
        && (policy.backup.incremental || parent.is_some());
    let blocks = block_deltas.then(|| Blocks {
        catalog: catalog.clone(),
        id: id.to_string(),
        parent: parent.as_ref().map(|p| p.id.clone()),
    });
    let streamed = if own_client {
        match over_replication(
            policy,
            conn,
            repo,
            recipients,
            id,
            parent.as_ref(),
            blocks.clone(),
        )
        .await
        {
            // The server may lack the WAL summaries an incremental needs
            // (summarize_wal turned on late, or older than
            // wal_summary_keep_time): a full, never a failed night.
            Err(e) if parent.is_some() && format!("{e:#}").contains("WAL summar") => {
                let why = format!("the server cannot take the incremental: {e:#}");
                tracing::info!(policy = %policy.name, "taking a full backup: {why}");
                note = Some(why);
                parent = None;
                over_replication(policy, conn, repo, recipients, id, None, None).await?
            }
            r => r?,
        }
    } else {
        let tool = policy.pg_tool("pg_basebackup", source.server_version_num / 10000)?;
        with_pg_basebackup(policy, conn, &tool, &**repo, recipients, id).await?
    };
    let keys: Vec<String> = streamed.objects.iter().map(|o| o.key.clone()).collect();
    let server_manifest = streamed.server_manifest_json.clone();
    let parent_id = parent.map(|p| p.id);
    match finish(
        policy, conn, &**repo, recipients, id, started, source, seg_size, streamed, parent_id,
    )
    .await
    {
        Ok(manifest) => Ok(Taken {
            manifest,
            server_manifest,
            note,
        }),
        Err(e) => {
            for k in keys {
                let _ = repo.delete(&k).await;
            }
            Err(e)
        }
    }
}

/// Single-tablespace clusters: pg_basebackup to stdout, so libpq's own
/// connection handling (TLS, service files) applies.
async fn with_pg_basebackup(
    policy: &Policy,
    conn: &Conn,
    tool: &std::path::Path,
    repo: &dyn Repository,
    recipients: &[age::x25519::Recipient],
    id: &str,
) -> Result<Streamed> {
    let mut cmd = conn.std_command(tool);
    // -X fetch puts the WAL from start to stop into the tar, so every base
    // backup restores on its own; the archive is still awaited below so
    // that the chain for point-in-time recovery has no hole.
    cmd.args(["-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "-v", "-w"])
        .arg(format!(
            "--manifest-checksums={}",
            crate::pg::replication::CHECKSUMS
        ))
        .arg(format!("--label=drctl {id}"))
        .arg(format!("--dbname={}", conn.url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    let key = format!(
        "{}base.tar.zst.age",
        manifest::backup_prefix(&policy.name, id)
    );
    let enc =
        store::encode_child(policy, repo, &key, recipients, child, "pg_basebackup", None).await?;
    let (encoded, stderr) = enc.await.context("backup pipeline panicked")?;
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let d = match encoded {
        Ok(d) => d,
        Err(e) if stderr.contains("error:") => {
            tracing::debug!("pipeline: {e:#}");
            bail!(
                "pg_basebackup failed: {}",
                crate::pg::stderr_summary(stderr.as_bytes())
            );
        }
        Err(e) => return Err(e),
    };
    Ok(Streamed {
        server_manifest_json: None,
        objects: vec![object_entry("base", key, d)],
        tablespaces: Vec::new(),
        points: parse_points(&stderr),
        tool: Some(crate::pg::tool_version(tool).await?),
        // Writing a tar to stdout, pg_basebackup puts its manifest into
        // the base archive.
        server_manifest: manifest::ServerManifest::InBase,
    })
}

fn object_entry(name: &str, key: String, d: crate::pipeline::Digests) -> ObjectEntry {
    ObjectEntry {
        name: name.into(),
        key,
        plain_bytes: d.plain_bytes,
        plain_sha256: d.plain_sha256,
        stored_bytes: d.stored_bytes,
        stored_sha256: d.stored_sha256,
    }
}

/// A block-delta backup (PostgreSQL 15/16): where its block map goes, and
/// the parent whose map it compares with.
#[derive(Clone)]
struct Blocks {
    catalog: crate::catalog::Catalog,
    id: String,
    parent: Option<String>,
}

/// Pass an archive (the data directory's or a tablespace's) through
/// `delta::transform` into the encoder.
fn encode_blocks(
    bb: &mut crate::pg::replication::BaseBackup,
    blocks: &Blocks,
    root: &str,
    handle: &tokio::runtime::Handle,
    writer: Box<dyn crate::repo::ObjectWriter>,
    opts: &crate::pipeline::EncodeOptions<'_>,
    progress: &dyn Fn(u64) -> bool,
) -> Result<crate::pipeline::Digests> {
    let (mut pr, mut pw) = crate::pipeline::chunk_pipe(8);
    let (digests, stats) = std::thread::scope(|s| {
        let t = s.spawn(move || {
            let io = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
            let r = super::delta::transform(
                bb,
                &mut pw,
                root,
                &mut |path| match &blocks.parent {
                    Some(p) => handle
                        .block_on(blocks.catalog.block_map(p, path))
                        .map_err(io),
                    None => Ok(None),
                },
                &mut |path, hashes| {
                    handle
                        .block_on(blocks.catalog.put_block_map(&blocks.id, path, hashes))
                        .map_err(io)
                },
            );
            r.and_then(|s| std::io::Write::flush(&mut pw).map(|()| s))
        });
        let d = crate::pipeline::encode(&mut pr, writer, opts, progress, &mut || Ok(()));
        // A failed encoder must not leave the transform blocked on the pipe.
        drop(pr);
        (d, t.join())
    });
    let stats = stats
        .map_err(|_| anyhow::anyhow!("the block delta thread panicked"))?
        .context("comparing pages with the parent's block map")?;
    let d = digests?;
    log_stats(blocks, &stats);
    Ok(d)
}

fn log_stats(blocks: &Blocks, stats: &super::delta::Stats) {
    tracing::info!(
        backup = %blocks.id,
        parent = blocks.parent.as_deref().unwrap_or("none"),
        "{} of {} pages in {} relation files stored",
        stats.stored_pages,
        stats.pages,
        stats.paged_files
    );
}

/// A block-delta full the server compressed is stored as it came; its
/// block map is read from the plain bytes on their way to the hash.
fn record_blocks(
    plain: &mut dyn std::io::Read,
    blocks: &Blocks,
    root: &str,
    handle: &tokio::runtime::Handle,
) -> Result<()> {
    let stats = super::delta::transform(
        plain,
        &mut std::io::sink(),
        root,
        &mut |_| Ok(None),
        &mut |path, hashes| {
            handle
                .block_on(blocks.catalog.put_block_map(&blocks.id, path, hashes))
                .map_err(|e| std::io::Error::other(format!("{e:#}")))
        },
    )
    .context("recording the block map")?;
    log_stats(blocks, &stats);
    Ok(())
}

/// BASE_BACKUP spoken by drctl, each archive (the data directory, then one
/// per tablespace) into its own object.
#[allow(clippy::too_many_arguments)]
async fn over_replication(
    policy: &Policy,
    conn: &Conn,
    repo: &Arc<dyn Repository>,
    recipients: &[age::x25519::Recipient],
    id: &str,
    parent: Option<&super::incremental::Parent>,
    blocks: Option<Blocks>,
) -> Result<Streamed> {
    let params = crate::pg::replication::Params::from_conn(conn)?;
    let parent_manifest = parent.and_then(|p| p.manifest.clone());
    let handle = tokio::runtime::Handle::current();
    let prefix = manifest::backup_prefix(&policy.name, id);
    let label = format!("drctl {id}");
    let (level, threads) = (policy.compression_level(), policy.compression_threads());
    let recips = recipients.to_vec();
    let written = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let repo2 = repo.clone();
    let written2 = written.clone();
    // A block-delta incremental compares plain pages as they come: the
    // server does not compress. A full is compressed by the server like
    // any other, and its block map read from the decompressed copy that
    // is hashed anyway.
    let on_server = policy.compression.on_server.unwrap_or(true)
        && blocks.as_ref().is_none_or(|b| b.parent.is_none());
    let result = tokio::task::spawn_blocking(move || -> Result<Streamed> {
        let (mut bb, server_zstd) = start_base_backup(
            &params,
            &label,
            on_server,
            (level, threads),
            parent_manifest.as_deref(),
        )?;
        let mut server_manifest_json = None;
        let opts = crate::pipeline::EncodeOptions {
            level,
            threads,
            recipients: &recips,
        };
        let mut objects = Vec::new();
        let mut tablespaces = Vec::new();
        // One bar for every archive, moved by what the server says it has
        // read (plain bytes), against its estimate of the whole.
        // The estimate leaves out the WAL the data directory's archive
        // ends with: at least one segment.
        let bar = crate::progress::Bar::new(
            "base backup",
            bb.total_bytes.map(|t| t + crate::wal::DEFAULT_SEGMENT_SIZE),
        );
        let done = bb.done.clone();
        let progress = |_| {
            bar.set(done.load(std::sync::atomic::Ordering::Relaxed));
            !crate::cancel::requested()
        };
        while let Some(h) = bb.next_archive()? {
            let name = object_name(&h, &mut tablespaces)?;
            let key = if h.is_manifest {
                format!("{prefix}{name}.zst.age")
            } else {
                format!("{prefix}{name}.tar.zst.age")
            };
            let writer = handle.block_on(repo2.writer(&key))?;
            written2.lock().expect("not poisoned").push(key.clone());
            // Block maps are keyed by the path in the data directory.
            let root = match name.strip_prefix("tablespace-") {
                Some(oid) => format!("pg_tblspc/{oid}/"),
                None => String::new(),
            };
            let d = if server_zstd && !h.is_manifest {
                let (root, handle) = (&root, &handle);
                let mut inspect = blocks
                    .as_ref()
                    .map(|b| move |r: &mut dyn std::io::Read| record_blocks(r, b, root, handle));
                crate::pipeline::encode_compressed(
                    &mut bb,
                    writer,
                    &recips,
                    &progress,
                    inspect.as_mut().map(|f| f as crate::pipeline::Inspect<'_>),
                )
            } else if let (Some(b), false) = (&blocks, h.is_manifest) {
                encode_blocks(&mut bb, b, &root, &handle, writer, &opts, &progress)
            } else if h.is_manifest {
                // Kept as it goes by: the next incremental is taken
                // against it, and the catalog (not the encrypted
                // repository) is where it is read from.
                let mut tee = Tee {
                    inner: &mut bb,
                    copy: Vec::new(),
                };
                let d = crate::pipeline::encode(&mut tee, writer, &opts, &progress, &mut || Ok(()));
                server_manifest_json = Some(tee.copy);
                d
            } else {
                crate::pipeline::encode(&mut bb, writer, &opts, &progress, &mut || Ok(()))
            };
            objects.push(object_entry(&name, key, d?));
        }
        bar.finish();
        let start_lsn = bb.start_lsn.clone();
        let timeline = bb.timeline;
        let stop_lsn = bb.finish()?;
        // The data directory first: that is the order a reader expects.
        objects.sort_by_key(|o| o.name != "base");
        if !objects
            .iter()
            .any(|o| o.name == manifest::SERVER_MANIFEST_OBJECT)
        {
            bail!("the server sent no backup manifest");
        }
        Ok(Streamed {
            server_manifest_json,
            objects,
            tablespaces,
            points: Some(Points {
                start_lsn,
                timeline,
                stop_lsn,
            }),
            tool: None,
            server_manifest: manifest::ServerManifest::Object,
        })
    })
    .await
    .context("base backup thread panicked")?;
    if result.is_err() {
        let keys = std::mem::take(&mut *written.lock().expect("not poisoned"));
        for k in keys {
            let _ = repo.delete(&k).await;
        }
    }
    result
}

/// A reader that keeps a copy of what it reads.
struct Tee<R> {
    inner: R,
    copy: Vec<u8>,
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Start BASE_BACKUP. The server compresses when it can (only compressed
/// bytes cross the wire, and nothing relays plain bytes); a server built
/// without zstd refuses the option before its checkpoint, and drctl
/// compresses instead. The bool says whether the server compresses.
fn start_base_backup(
    params: &crate::pg::replication::Params,
    label: &str,
    on_server: bool,
    zstd: (i32, u32),
    parent: Option<&[u8]>,
) -> Result<(crate::pg::replication::BaseBackup, bool)> {
    let start = |zstd| {
        crate::pg::replication::BaseBackup::start(params, label, zstd, parent)
            .with_context(|| format!("base backup over replication from {params:?}"))
    };
    if !on_server {
        return Ok((start(None)?, false));
    }
    match start(Some(zstd)) {
        Ok(bb) => Ok((bb, true)),
        Err(e) if format!("{e:#}").contains("compression") => {
            tracing::info!("server-side zstd unavailable ({e:#}); compressing here");
            Ok((start(None)?, false))
        }
        Err(e) => Err(e),
    }
}

/// The manifest object name of one archive the server sends; a
/// tablespace's archive also adds it to `tablespaces`.
fn object_name(
    h: &crate::pg::replication::ArchiveHeader,
    tablespaces: &mut Vec<Tablespace>,
) -> Result<String> {
    if h.is_manifest {
        return Ok(manifest::SERVER_MANIFEST_OBJECT.to_string());
    }
    if h.location.is_empty() {
        return Ok("base".to_string());
    }
    let oid = h
        .name
        .strip_suffix(".tar.zst")
        .or_else(|| h.name.strip_suffix(".tar"))
        .and_then(|o| o.parse().ok())
        .with_context(|| format!("unexpected archive name {} from the server", h.name))?;
    let t = Tablespace {
        oid,
        location: h.location.clone(),
    };
    let name = t.object_name();
    tablespaces.push(t);
    Ok(name)
}

/// Wait for the WAL the backup needs, then write its manifest.
#[allow(clippy::too_many_arguments)]
async fn finish(
    policy: &Policy,
    conn: &Conn,
    repo: &dyn Repository,
    recipients: &[age::x25519::Recipient],
    id: &str,
    started: Timestamp,
    mut source: SourceInfo,
    seg_size: u64,
    streamed: Streamed,
    parent: Option<String>,
) -> Result<Manifest> {
    let wait = policy.archive_timeout();
    let points = match streamed.points {
        Some(p) => p,
        // With -X none pg_basebackup does not print them; the server's
        // backup history file, archived by wal-push, has them.
        None => backup_points(repo, &policy.name, id, wait).await?,
    };
    // The tables a PITR drill expects to find (unless dropped later): read
    // before consistent_at is taken, so each existed by then.
    let (row_counts, tables) = match policy.backup.row_counts {
        crate::policy::RowCounts::Off => ("off", Vec::new()),
        // The planner's estimates: a cheap catalog read (rows move on
        // during and after a base backup anyway).
        _ => match crate::pg::dump::count_tables(conn, crate::policy::RowCounts::Estimate).await {
            Ok(t) => ("estimate", t),
            Err(e) => {
                tracing::warn!(policy = %policy.name, "cannot list tables for the manifest: {e:#}");
                ("off", Vec::new())
            }
        },
    };
    // Upper bound of the stop record's time: restoring to any time at or
    // after it reaches consistency.
    let consistent_at: Timestamp = conn
        .query_one(
            "select to_char(statement_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await?
        .parse()
        .context("parsing the server's timestamp")?;
    if let Err(missing) = wait_for_wal(repo, &policy.name, &points, seg_size, wait).await? {
        let why = crate::pg::archiver::status(conn)
            .await
            .unwrap_or_else(|| "pg_stat_archiver could not be read".into());
        bail!(
            "WAL {} needed by this backup did not reach the archive within archive_timeout ({}s); {why}",
            missing.join(", "),
            wait.as_secs()
        );
    }
    source.pg_dump_version = streamed.tool;
    let start_segno = wal::lsn_to_segno(&points.start_lsn, seg_size).unwrap_or(0);
    let stop_segno = wal::lsn_to_segno(&points.stop_lsn, seg_size).unwrap_or(0);
    let m = Manifest {
        format: manifest::FORMAT_VERSION,
        id: id.to_string(),
        policy: policy.name.clone(),
        method: Method::Physical,
        kind: if parent.is_some() {
            manifest::Kind::Incremental
        } else {
            manifest::Kind::Full
        },
        parent,
        started_at: started,
        finished_at: Timestamp::now(),
        consistent_at,
        source,
        wal: Some(WalInfo {
            timeline: points.timeline,
            start_lsn: points.start_lsn.clone(),
            stop_lsn: points.stop_lsn.clone(),
            start_segment: wal::segment_name(points.timeline, start_segno, seg_size),
            stop_segment: wal::segment_name(points.timeline, stop_segno, seg_size),
            segment_size: seg_size,
        }),
        objects: streamed.objects,
        tablespaces: streamed.tablespaces,
        server_manifest: Some(streamed.server_manifest),
        compression: store::compression_info(policy),
        encryption: store::encryption_info(recipients),
        row_counts: row_counts.into(),
        tables,
        drctl_version: env!("CARGO_PKG_VERSION").into(),
    };
    store::commit(repo, &m).await?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_from_pg_basebackup_output() {
        let err = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: checkpoint completed\n\
                   pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                   pg_basebackup: write-ahead log end point: 0/2000100\n\
                   pg_basebackup: base backup completed\n";
        assert_eq!(
            parse_points(err),
            Some(Points {
                start_lsn: "0/2000028".into(),
                timeline: 1,
                stop_lsn: "0/2000100".into()
            })
        );
        assert_eq!(
            parse_points("pg_basebackup: error: connection failed"),
            None
        );
    }
}
