//! `drctl restore` for dump backups.
//!
//! Order of events, so that a refusal touches nothing: pick the backup
//! (pure plan), check the identity against the object's age header, check
//! the target, and only then create the database and stream into
//! `pg_restore --single-transaction`. The decoder withholds the end of the
//! archive until every checksum matched, so a corrupt artifact or a wrong
//! key aborts before pg_restore can commit; a database drctl created is
//! dropped again on failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::error::usage;
use crate::inventory;
use crate::manifest::Manifest;
use crate::pg::{self, Conn, ConnUrl};
use crate::pipeline::{self, DecodeError};
use crate::plan::{self, Target};
use crate::policy::{Method, Policy};
use crate::timeparse::rfc3339;

pub struct Request {
    pub target: Target,
    pub database: Option<String>,
    pub identity: Option<PathBuf>,
    pub jobs: u32,
    pub dry_run: bool,
    pub force: bool,
    pub no_owner: bool,
    pub no_acl: bool,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub policy: String,
    pub backup_id: String,
    pub method: Method,
    /// The requested time, or the backup's consistent point for --latest/--backup.
    pub target_time: String,
    pub consistent_at: String,
    pub gap_seconds: Option<i64>,
    pub wal_segments: Vec<String>,
    pub target: Option<String>,
    pub stored_bytes: u64,
    pub source_bytes: u64,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub plan: Plan,
    pub created_database: bool,
    pub duration_seconds: f64,
}

pub async fn plan(policy: &Policy, req: &Request) -> Result<(Plan, Manifest)> {
    let repo = crate::backup::open_repo(policy).await?;
    let inv = inventory::scan(&*repo, Some(&policy.name)).await?;
    let choice = plan::choose(&inv.candidates(), &req.target).map_err(|e| match req.target {
        Target::Latest => anyhow!(e),
        _ => usage(e),
    })?;
    let m = inv
        .find(&choice.id)
        .expect("chosen from the inventory")
        .clone();
    let target_time = match req.target {
        Target::Time(t) => t,
        _ => m.consistent_at,
    };
    Ok((
        Plan {
            policy: policy.name.clone(),
            backup_id: m.id.clone(),
            method: m.method,
            target_time: rfc3339(target_time),
            consistent_at: rfc3339(m.consistent_at),
            gap_seconds: choice.gap.map(|g| g.as_secs()),
            wal_segments: Vec::new(),
            target: req.database.clone(),
            stored_bytes: m.stored_bytes(),
            source_bytes: m.source_bytes(),
            dry_run: req.dry_run,
        },
        m,
    ))
}

/// Resolve `--identity` / `DRCTL_IDENTITY` and load it.
pub fn identities(path: Option<&PathBuf>) -> Result<Vec<age::x25519::Identity>> {
    let p = path.ok_or_else(|| {
        usage("restoring needs the private key: pass --identity FILE or set DRCTL_IDENTITY")
    })?;
    pipeline::load_identities(p)
}

/// Decrypt only the age header: proves the key fits before anything is touched.
pub async fn check_identity(
    policy: &Policy,
    m: &Manifest,
    ids: &[age::x25519::Identity],
    id_path: &std::path::Path,
) -> Result<()> {
    let repo = crate::backup::open_repo(policy).await?;
    let obj = m.objects.first().context("manifest lists no objects")?;
    let reader = repo.reader(&obj.key).await?;
    let ids = ids.to_vec();
    let ok = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let d = age::Decryptor::new_buffered(std::io::BufReader::new(reader))
            .map_err(|e| e.to_string())?;
        match d.decrypt(ids.iter().map(|i| i as &dyn age::Identity)) {
            Ok(_) => Ok(true),
            Err(age::DecryptError::NoMatchingKeys) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(usage(format!(
            "the identity in {} does not match backup {} (encrypted to {}); use the key that belongs to the policy's recipients",
            id_path.display(),
            m.id,
            m.encryption.recipients.join(", ")
        ))),
        Err(e) => bail!("backup {} is unreadable: {e}", m.id),
    }
}

pub async fn run(policy: &Policy, req: &Request) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let (plan, m) = plan(policy, req).await?;
    if m.method != Method::Dump {
        bail!(
            "backup {} is a {} backup; this drctl build restores dump backups",
            m.id,
            m.method
        );
    }
    let target_url = match req.database.as_deref() {
        Some(t) => Some(ConnUrl::parse(t).map_err(|e| usage(format!("--target: {e}")))?),
        None if req.dry_run => None,
        None => {
            return Err(usage(
                "a dump backup restores into a database: pass --target postgres://host/newdb",
            ))
        }
    };
    if req.jobs == 0 {
        return Err(usage("--jobs must be at least 1"));
    }
    if req.jobs > 1 {
        return Err(usage(
            "--jobs > 1 needs a seekable archive and drctl never writes a plaintext copy to disk; dump restores stream with one job",
        ));
    }
    let ids = match (&req.identity, req.dry_run) {
        (None, true) => None,
        (p, _) => Some(identities(p.as_ref())?),
    };
    if let (Some(ids), Some(p)) = (&ids, &req.identity) {
        check_identity(policy, &m, ids, p).await?;
    }
    if req.dry_run {
        return Ok(Outcome {
            plan,
            created_database: false,
            duration_seconds: started.elapsed().as_secs_f64(),
        });
    }
    let ids = ids.expect("loaded unless dry-run");
    let target_url = target_url.expect("required unless dry-run");

    // Target checks: nothing is created or changed before they pass.
    let target = Conn::new(target_url.clone(), None)?;
    let db = target_url.database();
    let admin = target.with_database("postgres");
    let exists = admin
        .query_one(
            "select count(*) from pg_database where datname = :'db'",
            &[("db", &db)],
        )
        .await
        .with_context(|| format!("cannot reach the target server {}", target_url.host()))?
        == "1";
    let mut clean = false;
    if exists {
        let n: i64 = target
            .query_one(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('r','p','v','m','S','f') \
                 and n.nspname not in ('pg_catalog','information_schema') and n.nspname !~ '^pg_toast'",
                &[],
            )
            .await?
            .parse()
            .unwrap_or(0);
        if n > 0 && !req.force {
            bail!(
                "target database \"{db}\" already exists and has {n} relations; restore into a new database name, or pass --force to replace its contents"
            );
        }
        clean = n > 0;
    } else {
        let enc = m.source.encoding.clone().unwrap_or_else(|| "UTF8".into());
        admin
            .query(
                "create database :\"db\" template template0 encoding :'enc'",
                &[("db", &db), ("enc", &enc)],
            )
            .await
            .with_context(|| format!("cannot create database \"{db}\""))?;
    }
    let created = !exists;

    let result = stream_into(policy, &m, &target, ids, req, clean).await;
    if let Err(e) = result {
        if created {
            if let Err(de) = admin
                .query(
                    "drop database if exists :\"db\" with (force)",
                    &[("db", &db)],
                )
                .await
            {
                tracing::error!(error = %de, "could not drop the half-restored database \"{db}\"; drop it by hand");
            }
            return Err(e.context(format!(
                "restore of {} failed; the database \"{db}\" drctl created was dropped",
                m.id
            )));
        }
        return Err(e.context(format!(
            "restore of {} failed; pg_restore ran in one transaction, so \"{db}\" is unchanged",
            m.id
        )));
    }
    Ok(Outcome {
        plan,
        created_database: created,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

async fn stream_into(
    policy: &Policy,
    m: &Manifest,
    target: &Conn,
    ids: Vec<age::x25519::Identity>,
    req: &Request,
    clean: bool,
) -> Result<()> {
    let repo = crate::backup::open_repo(policy).await?;
    let obj = m
        .objects
        .first()
        .context("manifest lists no objects")?
        .clone();
    let reader = repo.reader(&obj.key).await?;
    let mut cmd = target.std_command("pg_restore");
    cmd.args(["-w", "--exit-on-error", "--single-transaction"]);
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if req.no_owner {
        cmd.arg("--no-owner");
    }
    if req.no_acl {
        cmd.arg("--no-acl");
    }
    cmd.arg(format!("--dbname={}", target.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("cannot run pg_restore (install the PostgreSQL client tools)")?;
    let id = m.id.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut stdin = child.stdin.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(stderr, 64 << 10), &mut buf);
            buf
        });
        let bar = crate::progress::bytes_bar("restore");
        let r = pipeline::decode(reader, &ids, &obj, &mut stdin, false, &|n| bar.set_position(n));
        bar.finish_and_clear();
        match r {
            Ok(_) => {
                drop(stdin);
                let status = child.wait()?;
                let err = err_thread.join().unwrap_or_default();
                if !status.success() {
                    let s = pg::stderr_summary(&err);
                    let hint = if s.contains("role") && s.contains("does not exist") {
                        "; create the role on the target or pass --no-owner --no-acl"
                    } else {
                        ""
                    };
                    bail!("pg_restore failed: {s}{hint}");
                }
                Ok(())
            }
            Err(e) => {
                // Kill before closing stdin: pg_restore must never see the end.
                let _ = child.kill();
                let _ = child.wait();
                let err = err_thread.join().unwrap_or_default();
                Err(match e {
                    DecodeError::WrongKey => usage(format!("the identity does not match backup {id}")),
                    DecodeError::Corrupt(why) => anyhow!("backup {id} is corrupt: {why}; nothing was committed. Run `drctl verify {id}` and restore an older backup with --backup ID"),
                    DecodeError::Sink(_) => anyhow!("pg_restore failed: {}", pg::stderr_summary(&err)),
                    DecodeError::Io(e) => anyhow!("reading backup {id} from the repository: {e}"),
                })
            }
        }
    })
    .await
    .context("restore pipeline panicked")?
}

/// Write the plan for humans.
pub fn print_plan(out: &mut dyn Write, p: &Plan) -> std::io::Result<()> {
    writeln!(
        out,
        "backup:        {} ({}, consistent at {})",
        p.backup_id, p.method, p.consistent_at
    )?;
    writeln!(out, "target time:   {}", p.target_time)?;
    if let Some(g) = p.gap_seconds {
        writeln!(
            out,
            "data-loss gap: {}",
            plan::describe_gap(jiff::SignedDuration::from_secs(g))
        )?;
    }
    if let Some(t) = &p.target {
        writeln!(out, "into:          {t}")?;
    }
    writeln!(
        out,
        "size:          {} stored, {} plain",
        crate::progress::human_bytes(p.stored_bytes),
        crate::progress::human_bytes(p.source_bytes)
    )?;
    Ok(())
}
