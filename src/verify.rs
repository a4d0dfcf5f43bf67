//! `drctl verify`: prove stored objects are intact.
//!
//! Shallow: every object's size and sha256 against the manifest (no key).
//! Deep: also decrypt and decompress, check the plain sha256; for dumps
//! let `pg_restore --list` read the archive's table of contents, and
//! physical backups are extracted into a scratch directory and proven by
//! `pg_verifybackup` against the server's own backup manifest.

use std::process::Stdio;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pipeline::{self, DecodeError};
use crate::policy::Method;
use crate::repo::manifest::Manifest;
use crate::repo::Repository;

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub id: String,
    pub policy: String,
    pub deep: bool,
    pub ok: bool,
    pub problems: Vec<String>,
}

pub async fn verify(
    repo: &dyn Repository,
    m: &Manifest,
    chain: &[Manifest],
    identities: Option<&[age::x25519::Identity]>,
    bindir: Option<&std::path::Path>,
) -> Result<Verdict> {
    let mut problems = Vec::new();
    // Deep, a physical backup with the server's manifest is extracted into
    // a scratch directory (which checks every object's plain sha256 on the
    // way) and proven by pg_verifybackup, as a restore would be.
    let extract = identities.is_some() && m.server_manifest.is_some();
    for obj in &m.objects {
        match repo.head(&obj.key).await? {
            None => {
                problems.push(format!("{}: object is missing", obj.key));
                continue;
            }
            Some(size) if size != obj.stored_bytes => {
                problems.push(format!(
                    "{}: size {size} but the manifest says {}",
                    obj.key, obj.stored_bytes
                ));
                continue;
            }
            Some(_) => {}
        }
        if extract {
            continue;
        }
        let reader = repo.reader(&obj.key).await?;
        match identities {
            None => {
                let (n, sha) = tokio::task::spawn_blocking(move || pipeline::hash_stored(reader))
                    .await?
                    .with_context(|| format!("reading {}", obj.key))?;
                if n != obj.stored_bytes || sha != obj.stored_sha256 {
                    problems.push(format!(
                        "{}: sha256 {sha} but the manifest says {}",
                        obj.key, obj.stored_sha256
                    ));
                }
            }
            Some(ids) => {
                let ids = ids.to_vec();
                let entry = obj.clone();
                let pg_restore = match m.method {
                    Method::Dump => {
                        let major = m.source.server_version_num / 10000;
                        match crate::pg::tools::find("pg_restore", major, bindir) {
                            Ok(p) => Some(p),
                            Err(e) => {
                                problems.push(format!("{}: {e:#}", obj.key));
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                let r = tokio::task::spawn_blocking(move || {
                    deep_one(reader, &ids, &entry, pg_restore.as_deref())
                })
                .await?;
                if let Err(e) = r {
                    problems.push(format!("{}: {e}", obj.key));
                }
            }
        }
    }
    if let (true, true, Some(ids)) = (extract, problems.is_empty(), identities) {
        if let Err(e) = extract_and_prove(repo, m, chain, ids, bindir).await {
            problems.push(format!("{e:#}"));
        }
    }
    Ok(Verdict {
        id: m.id.clone(),
        policy: m.policy.clone(),
        deep: identities.is_some(),
        ok: problems.is_empty(),
        problems,
    })
}

/// Restore a physical backup into a scratch directory under `TMPDIR` (it
/// needs the backup's plain size there), run pg_verifybackup on it, and
/// remove it. An incremental is restored with its `chain` (full first),
/// combined as a restore would.
async fn extract_and_prove(
    repo: &dyn Repository,
    m: &Manifest,
    chain: &[Manifest],
    ids: &[age::x25519::Identity],
    bindir: Option<&std::path::Path>,
) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("drctl-verify-")
        .tempdir()
        .context("cannot create a scratch directory for verify --deep (set TMPDIR)")?;
    let dir = scratch.path().join("data");
    let places: Vec<crate::restore::TablespacePlacement> = m
        .tablespaces
        .iter()
        .map(|t| crate::restore::TablespacePlacement {
            oid: t.oid,
            location: t.location.clone(),
            restore_to: scratch
                .path()
                .join(t.object_name())
                .to_string_lossy()
                .into_owned(),
        })
        .collect();
    for d in std::iter::once(dir.clone()).chain(places.iter().map(|p| p.restore_to.clone().into()))
    {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    if chain.len() > 1 {
        crate::restore::extract::check_bytes(
            &m.id,
            &dir,
            crate::restore::chain::bytes_needed(chain),
        )
        .context("verify --deep combines the chain under TMPDIR (set TMPDIR to a larger place)")?;
        let sha = crate::restore::extract::Proof::Sha256;
        crate::restore::chain::restore(bindir, repo, chain, &places, ids, &dir, sha).await?;
        return crate::restore::physical::verify_restored(m, &dir, bindir).await;
    }
    crate::restore::extract::check_space(m, &dir, &places)
        .context("verify --deep extracts the backup under TMPDIR (set TMPDIR to a larger place)")?;
    // The manifest's plain sha256 is what --deep is asked to check.
    crate::restore::extract::extract(
        repo,
        m,
        &places,
        ids,
        &dir,
        crate::restore::extract::Proof::Sha256,
    )
    .await?;
    crate::restore::physical::verify_restored(m, &dir, bindir).await
}

/// The WAL archive of a physical policy: every committed file's object is
/// present with the size and stored sha256 its sidecar recorded (with
/// `identities`, also decrypted and decompressed against the plain
/// sha256), and every base backup reaches its stop point without a gap.
/// Missing segments are named.
pub async fn verify_wal(
    repo: &dyn Repository,
    policy: &str,
    backups: &[Manifest],
    identities: Option<&[age::x25519::Identity]>,
) -> Result<Verdict> {
    let physical: Vec<&Manifest> = backups
        .iter()
        .filter(|m| m.method == Method::Physical)
        .collect();
    let seg_size = crate::wal::archive::segment_size(physical.iter().copied());
    let archive = crate::wal::archive::read_archive(repo, policy, seg_size).await?;
    let mut problems = archive.corrupt.clone();
    for obj in &archive.objects {
        let (key, size) = (&obj.key, obj.stored_bytes);
        match repo.head(key).await? {
            None => {
                problems.push(format!("{key}: committed but the object is missing"));
                continue;
            }
            Some(n) if n != size => {
                problems.push(format!("{key}: size {n} but its sidecar says {size}"));
                continue;
            }
            Some(_) => {}
        }
        let reader = repo.reader(key).await?;
        let entry = obj.clone();
        let checked = match identities {
            None => {
                tokio::task::spawn_blocking(move || {
                    pipeline::hash_stored(reader)
                        .map_err(|e| e.to_string())
                        .and_then(|(n, sha)| {
                            if n == entry.stored_bytes && sha == entry.stored_sha256 {
                                Ok(())
                            } else {
                                Err(format!(
                                    "sha256 {sha} but its sidecar says {}",
                                    entry.stored_sha256
                                ))
                            }
                        })
                })
                .await?
            }
            Some(ids) => {
                let ids = ids.to_vec();
                tokio::task::spawn_blocking(move || deep_one(reader, &ids, &entry, None)).await?
            }
        };
        if let Err(e) = checked {
            problems.push(format!("{key}: {e}"));
        }
    }
    for m in &physical {
        let r = crate::wal::archive::reach(m, &archive)?;
        let w = m.wal.as_ref().expect("physical manifests carry WAL info");
        if !r.reaches_stop {
            problems.push(format!(
                "backup {}: WAL {} is missing, so it cannot reach its stop point {}",
                m.id,
                r.gap_at.as_deref().unwrap_or("?"),
                w.stop_segment
            ));
        }
    }
    // Gaps anywhere in each timeline's run of segments.
    let mut by_tli: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for (tli, n) in archive.segments.keys() {
        by_tli.entry(*tli).or_default().push(*n);
    }
    for (tli, segs) in &by_tli {
        let (lo, hi) = (segs[0], segs[segs.len() - 1]);
        let missing = crate::wal::missing(segs, lo, hi, 20);
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .map(|n| crate::wal::segment_name(*tli, *n, seg_size))
                .collect();
            problems.push(format!(
                "WAL gap on timeline {tli}: missing {}; times after the gap are not recoverable from backups before it",
                names.join(", ")
            ));
        }
    }
    Ok(Verdict {
        id: "wal".into(),
        policy: policy.to_string(),
        deep: identities.is_some(),
        ok: problems.is_empty(),
        problems,
    })
}

/// One policy's share of a `drctl verify` run: its complete backups, and
/// whether its WAL archive is checked too (physical policies, unless one
/// backup was named).
pub struct Work {
    pub policy: crate::policy::Policy,
    pub manifests: Vec<Manifest>,
    pub wal: bool,
}

/// Verify a policy's backups (recording each result in the catalog) and,
/// where asked, its WAL archive and the source's archiving; `on_report`
/// sees each report as it is made.
pub async fn policy(
    work: &Work,
    identities: Option<&[age::x25519::Identity]>,
    catalog: &crate::catalog::Catalog,
    on_report: &mut dyn FnMut(&Verdict),
) -> Result<Vec<Verdict>> {
    let repo = crate::repo::open_for(&work.policy).await?;
    let mut out = Vec::new();
    // Parents before their incrementals: a dependent's verdict includes
    // its chain's.
    let mut manifests: Vec<&Manifest> = work.manifests.iter().collect();
    manifests.sort_by_key(|m| (m.started_at, m.id.clone()));
    let mut failed: std::collections::HashSet<String> = Default::default();
    for m in manifests.iter().copied() {
        if crate::cancel::requested() {
            anyhow::bail!("cancelled");
        }
        let chain = match crate::restore::chain::of(m, &manifests) {
            Ok(c) if c.len() > 1 => c,
            Ok(_) => Vec::new(),
            Err(e) => {
                let r = Verdict {
                    id: m.id.clone(),
                    policy: m.policy.clone(),
                    deep: identities.is_some(),
                    ok: false,
                    problems: vec![format!("{e:#}")],
                };
                failed.insert(m.id.clone());
                catalog
                    .record_verify(&r.id, r.deep, r.ok, &r.problems.join("; "))
                    .await?;
                on_report(&r);
                out.push(r);
                continue;
            }
        };
        let mut r = verify(
            &*repo,
            m,
            &chain,
            identities,
            work.policy.source.pg_bindir.as_deref(),
        )
        .await?;
        if let Some(bad) = chain.iter().find(|l| failed.contains(&l.id)) {
            r.ok = false;
            r.problems.push(format!(
                "{}, a backup in its chain, failed verification: this incremental cannot be restored",
                bad.id
            ));
        }
        if !r.ok {
            failed.insert(m.id.clone());
        }
        // A verify cut short proves nothing either way: not recorded.
        if crate::cancel::requested() {
            anyhow::bail!("cancelled");
        }
        catalog
            .record_verify(&r.id, r.deep, r.ok, &r.problems.join("; "))
            .await?;
        on_report(&r);
        out.push(r);
    }
    if work.wal {
        let p = &work.policy;
        let mut r = verify_wal(&*repo, &p.name, &work.manifests, identities).await?;
        // The archive can be intact and still stale: the source says
        // whether archiving is keeping up.
        if let Some(h) = crate::status::server_archive_health(p)
            .await
            .filter(|h| h.failing == Some(true))
        {
            r.problems.push(format!(
                "{}; WAL after the last archived segment is not in the archive (run `drctl check {}`)",
                h.describe(),
                p.name
            ));
            r.ok = false;
        }
        on_report(&r);
        out.push(r);
    }
    Ok(out)
}

/// What an interrupted run left, with its size: the next backup of the
/// policy or prune removes it. (Fields in JSON's order.)
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Left {
    /// A backup folder without a manifest.
    Incomplete {
        bytes: u64,
        id: String,
        policy: String,
    },
    /// A temp file or an unfinished upload.
    Leftover {
        age_seconds: u64,
        bytes: u64,
        leftover: String,
        policy: String,
    },
}

/// Everything interrupted runs left under `policy`: its `incomplete`
/// backup ids (from the inventory) and the repository's leftovers.
pub async fn left_behind(
    policy: &crate::policy::Policy,
    incomplete: &[(String, String)],
) -> Result<Vec<Left>> {
    let repo = crate::repo::open_for(policy).await?;
    let mut out = Vec::new();
    for (p, id) in incomplete.iter().filter(|(p, _)| *p == policy.name) {
        let bytes: u64 = repo
            .list(&crate::repo::manifest::backup_prefix(p, id))
            .await?
            .iter()
            .map(|o| o.size)
            .sum();
        out.push(Left::Incomplete {
            bytes,
            id: id.clone(),
            policy: p.clone(),
        });
    }
    let mut leftovers = repo.leftovers(&format!("{}/", policy.name)).await?;
    leftovers.sort_by(|a, b| a.key.cmp(&b.key));
    for l in leftovers {
        out.push(Left::Leftover {
            age_seconds: l.age.as_secs(),
            bytes: l.size,
            leftover: l.key,
            policy: policy.name.clone(),
        });
    }
    Ok(out)
}

fn deep_one(
    reader: Box<dyn std::io::Read + Send>,
    ids: &[age::x25519::Identity],
    entry: &crate::repo::manifest::ObjectEntry,
    pg_restore: Option<&std::path::Path>,
) -> Result<(), String> {
    let Some(pg_restore) = pg_restore else {
        return pipeline::decode(reader, ids, entry, &mut std::io::sink(), false, &|_| {
            !crate::cancel::requested()
        })
        .map(|_| ())
        .map_err(|e| e.to_string());
    };
    let mut child = std::process::Command::new(pg_restore)
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", pg_restore.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let r = pipeline::decode(reader, ids, entry, &mut stdin, true, &|_| {
        !crate::cancel::requested()
    });
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match r {
        Err(DecodeError::WrongKey) => {
            return Err("the identity does not match this backup's recipients".into())
        }
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    if !out.status.success() {
        return Err(format!(
            "pg_restore --list rejected the archive: {}",
            crate::pg::stderr_summary(&out.stderr)
        ));
    }
    Ok(())
}
