//! Restoring an incremental: its chain (the full, then each incremental
//! up to it) made into one data directory, which pg_verifybackup then
//! proves against the newest link's server manifest like any full.
//!
//! PostgreSQL 17+ (the server's own incrementals): the links are extracted
//! side by side next to the target directory (same filesystem) and
//! combined by that major's `pg_combinebackup`, then removed. On 18 the
//! combined files are hard links into the full's extraction (`--link`),
//! so a chain needs about the full plus its incrementals; on 17 the
//! combined copy is written too: about twice the full plus the
//! incrementals, for the length of the restore.
//!
//! PostgreSQL 15 and 16 (drctl's block deltas, `backup::delta`): the full
//! is extracted into the target directory and each incremental is laid
//! over it in order (its files replace, its deltas patch, files its
//! server manifest no longer lists go): the full plus the growth since.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::TablespacePlacement;
use crate::repo::manifest::{Kind, Manifest};
use crate::repo::Repository;

/// The chain that restores `m` among the policy's complete physical
/// backups: its full first, `m` last. A missing link fails, naming it.
pub fn of(m: &Manifest, physical: &[&Manifest]) -> Result<Vec<Manifest>> {
    let mut out = vec![m.clone()];
    while let Some(parent) = out.last().and_then(|l| l.parent.clone()) {
        if out.len() > physical.len() {
            bail!("the chain of backup {} loops at {parent}", m.id);
        }
        let p = physical.iter().find(|p| p.id == parent).ok_or_else(|| {
            anyhow!(
                "backup {} cannot be restored: {parent}, a backup in its chain, is missing from the repository",
                m.id
            )
        })?;
        out.push((*p).clone());
    }
    if out.last().map(|l| l.kind) != Some(Kind::Full) {
        bail!("the chain of backup {} does not start with a full", m.id);
    }
    out.reverse();
    Ok(out)
}

/// Bytes a restore of `chain` writes at its peak (see the module's note).
pub fn bytes_needed(chain: &[Manifest]) -> u64 {
    let all: u64 = chain.iter().map(|m| m.source_bytes()).sum();
    match chain {
        [_] => all,
        // 18 links the combined files into the full's extraction, but
        // not with tablespaces (see `restore`).
        [full, .., last]
            if is_native(last)
                && (last.source.server_version_num < 180000 || !last.tablespaces.is_empty()) =>
        {
            all + full.source_bytes()
        }
        _ => all,
    }
}

/// The server's own incremental (17+), not a drctl block delta.
pub fn is_native(m: &Manifest) -> bool {
    m.source.server_version_num >= 170000
}

/// Where the links of a chain are extracted: beside `dir`, removed
/// however the restore ends.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Restore `chain` (full first) into the empty directory `dir`, its
/// newest link's tablespaces where `places` says.
pub async fn restore(
    bindir: Option<&Path>,
    repo: &dyn Repository,
    chain: &[Manifest],
    places: &[TablespacePlacement],
    ids: &[age::x25519::Identity],
    dir: &Path,
    proof: super::extract::Proof,
) -> Result<()> {
    let last = chain.last().context("an empty chain")?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    sweep_killed(parent, &name);
    let work = Work(parent.join(format!(".{name}.drctl-chain-{}", std::process::id())));
    if !is_native(last) {
        return restore_deltas(repo, chain, places, &work, ids, dir, proof).await;
    }
    let major = last.source.server_version_num / 10000;
    let tool = crate::pg::tools::find("pg_combinebackup", major, bindir)?;
    let mut inputs = Vec::new();
    let mut relocate = Vec::new();
    for (i, m) in chain.iter().enumerate() {
        let d = work.0.join(format!("{i}-{}", m.id));
        mkdir_private(&d)?;
        // Each link's tablespaces beside its data directory; the newest
        // link's are moved where `places` says as they are combined.
        let link_places = scratch_places(&m.tablespaces, &work.0, &format!("{i}-{}-", m.id))?;
        super::extract::extract(repo, m, &link_places, ids, &d, proof).await?;
        if crate::cancel::requested() {
            bail!("cancelled");
        }
        if i == chain.len() - 1 {
            for p in &link_places {
                let to = places.iter().find(|t| t.oid == p.oid).with_context(|| {
                    format!(
                        "no place to restore tablespace {} of backup {}",
                        p.oid, m.id
                    )
                })?;
                relocate.push(format!(
                    "--tablespace-mapping={}={}",
                    p.restore_to, to.restore_to
                ));
            }
        }
        inputs.push(d);
    }
    let mut cmd = tokio::process::Command::new(&tool);
    cmd.args(&inputs).arg("-o").arg(dir).args(&relocate);
    if !relocate.is_empty() {
        // A tablespace may live on another filesystem than the links:
        // neither hard links nor copy_file_range reach across.
    } else if major >= 18 {
        // The output's files are hard links into the extracted full,
        // which goes once combined: no second copy of the cluster.
        cmd.arg("--link");
    } else {
        // Same filesystem: the kernel copies, not pg_combinebackup.
        cmd.arg("--copy-file-range");
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        if crate::cancel::requested() {
            bail!("cancelled while pg_combinebackup combined the chain");
        }
        bail!(
            "pg_combinebackup could not combine the chain of {} ({}): {}",
            last.id,
            chain
                .iter()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(" <- "),
            crate::pg::stderr_summary(&out.stderr)
        );
    }
    drop(work);
    Ok(())
}

/// Remove what an earlier restore to the same place left when it was
/// killed (SIGTERM cleans up; kill -9 and a crash cannot): a folder of
/// extracted links whose pid is gone.
fn sweep_killed(parent: &Path, name: &str) {
    let prefix = format!(".{name}.drctl-chain-");
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i64>().ok())
        else {
            continue;
        };
        if crate::lock::pid_alive(pid) {
            continue;
        }
        let path = e.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => eprintln!(
                "drctl: note: removed {}, left by a restore (pid {pid}) that was killed",
                path.display()
            ),
            Err(err) => tracing::warn!(
                "cannot remove {}, left by a killed restore (pid {pid}): {err}",
                path.display()
            ),
        }
    }
}

/// Create `d` (and its parents) readable by its owner alone: PostgreSQL
/// refuses a data directory others can read.
pub(crate) fn mkdir_private(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", d.display()))
}

/// A folder under `work` for each of `ts`, named after `prefix`.
fn scratch_places(
    ts: &[crate::repo::manifest::Tablespace],
    work: &Path,
    prefix: &str,
) -> Result<Vec<TablespacePlacement>> {
    ts.iter()
        .map(|t| {
            let d = work.join(format!("{prefix}{}", t.object_name()));
            mkdir_private(&d)?;
            Ok(TablespacePlacement {
                oid: t.oid,
                location: t.location.clone(),
                restore_to: d.to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// The full into `dir`, then each block-delta incremental over it. A
/// tablespace an older link has and the newest has not (dropped since)
/// goes into `work`, and its link out of `pg_tblspc`, at the end.
async fn restore_deltas(
    repo: &dyn Repository,
    chain: &[Manifest],
    places: &[TablespacePlacement],
    work: &Work,
    ids: &[age::x25519::Identity],
    dir: &Path,
    proof: super::extract::Proof,
) -> Result<()> {
    let mut all = places.to_vec();
    for m in chain {
        let gone: Vec<_> = m
            .tablespaces
            .iter()
            .filter(|t| !all.iter().any(|p| p.oid == t.oid))
            .cloned()
            .collect();
        all.extend(scratch_places(&gone, &work.0, "dropped-")?);
    }
    super::extract::extract(repo, &chain[0], &all, ids, dir, proof).await?;
    for (i, m) in chain.iter().enumerate().skip(1) {
        if crate::cancel::requested() {
            bail!("cancelled");
        }
        // The newest link's WAL is the one recovery starts with; the
        // others' is never written.
        let newest = i == chain.len() - 1;
        if newest {
            clear_files(&dir.join("pg_wal"))?;
        }
        super::extract::overlay(repo, m, &all, ids, dir, newest, proof).await?;
        drop_unlisted(dir, &all)
            .with_context(|| format!("laying backup {} over its parent", m.id))?;
    }
    for p in all
        .iter()
        .filter(|p| !places.iter().any(|t| t.oid == p.oid))
    {
        // A tablespace made and dropped between two links may never have
        // had its link laid down: gone already is what is wanted.
        let link = dir.join("pg_tblspc").join(p.oid.to_string());
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", link.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Remove the regular files under `d` (not its subdirectories).
fn clear_files(d: &Path) -> Result<()> {
    for e in walk(d)? {
        std::fs::remove_file(&e).with_context(|| format!("cannot remove {}", e.display()))?;
    }
    Ok(())
}

/// Every regular file under `d`, recursively.
fn walk(d: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![d.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
        };
        for e in rd {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// After an overlay: the files the newest server manifest does not list
/// (dropped tables and databases) go, as they went on the server; in the
/// tablespaces too, which the manifest lists under `pg_tblspc/<oid>/`.
fn drop_unlisted(dir: &Path, places: &[TablespacePlacement]) -> Result<()> {
    let text = std::fs::read(dir.join("backup_manifest")).context("reading backup_manifest")?;
    let v: serde_json::Value = serde_json::from_slice(&text).context("parsing backup_manifest")?;
    let mut listed = std::collections::HashSet::new();
    for f in v["Files"]
        .as_array()
        .context("backup_manifest has no Files")?
    {
        if let Some(p) = f["Path"].as_str() {
            listed.insert(p.to_string());
        } else if let Some(hex) = f["Encoded-Path"].as_str() {
            let raw = hex::decode(hex).context("a bad Encoded-Path in backup_manifest")?;
            listed.insert(String::from_utf8_lossy(&raw).into_owned());
        }
    }
    let mut files: Vec<(PathBuf, String)> = walk(dir)?
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            (f, rel)
        })
        .collect();
    for p in places {
        let home = Path::new(&p.restore_to);
        for f in walk(home)? {
            let rel = f
                .strip_prefix(home)
                .expect("under it")
                .to_string_lossy()
                .into_owned();
            files.push((f, format!("pg_tblspc/{}/{rel}", p.oid)));
        }
    }
    for (f, rel) in files {
        if rel.starts_with("pg_wal/") || rel == "backup_manifest" || listed.contains(&rel) {
            continue;
        }
        std::fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
    }
    // Databases dropped since the parent leave empty folders.
    if let Ok(rd) = std::fs::read_dir(dir.join("base")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, parent: Option<&str>) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 2, "id": id, "policy": "p", "method": "physical",
            "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:00:01Z",
            "consistent_at": "2026-12-01T00:00:01Z",
            "source": {"database": "postgres", "host": "h", "server_version": "17.1", "server_version_num": 170001},
            "objects": [{"name": "base", "key": "k", "plain_bytes": 100, "plain_sha256": "",
                         "stored_bytes": 10, "stored_sha256": ""}],
            "compression": {"algorithm": "zstd", "level": 3},
            "encryption": {"algorithm": "age", "recipients": []},
            "row_counts": "off", "tables": [], "drctl_version": "0"
        }))
        .unwrap();
        if let Some(p) = parent {
            m.kind = Kind::Incremental;
            m.parent = Some(p.into());
            m.objects[0].plain_bytes = 5;
        }
        m
    }

    #[test]
    fn a_chain_is_its_full_then_each_incremental() {
        let (a, b, c) = (m("a", None), m("b", Some("a")), m("c", Some("b")));
        let all = [&a, &b, &c];
        let ids: Vec<String> = of(&c, &all).unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let e = of(&c, &[&b, &c]).unwrap_err().to_string();
        assert!(e.contains("a, a backup in its chain, is missing"), "{e}");
        // 17 writes the combined copy beside the extracted chain.
        assert_eq!(bytes_needed(&of(&c, &all).unwrap()), 100 + 5 + 5 + 100);
        assert_eq!(bytes_needed(&[a]), 100);
    }
}
