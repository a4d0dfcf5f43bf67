//! `drctl restore` for dump backups.
//!
//! Order of events, so that a refusal touches nothing: pick the backup
//! (pure plan), check the identity against the object's age header, check
//! the target, and only then create the database and stream into
//! `pg_restore --single-transaction`. The decoder withholds the end of the
//! archive until every checksum matched, so a corrupt artifact or a wrong
//! key aborts before pg_restore can commit; a database drctl created is
//! dropped again on failure. `--jobs N` restores the data section with N
//! streaming workers (see `toc`); it is not one transaction, which is why
//! it only goes into a new or empty database.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};

use crate::error::usage;
use crate::pg::{self, Conn, ConnUrl};
use crate::pipeline::{self, DecodeError};
use crate::policy::{Method, Policy};
use crate::repo::inventory;
use crate::repo::manifest::Manifest;
use crate::restore::plan::{self, Target};
use crate::restore::{Outcome, Plan};
use crate::time::parse::rfc3339;

pub struct Request {
    pub target: Target,
    pub database: Option<String>,
    pub identity: Option<PathBuf>,
    pub jobs: u32,
    pub dry_run: bool,
    /// Lease the backup (beside this catalog) while restoring, so prune
    /// leaves it alone.
    pub lease_catalog: Option<PathBuf>,
    pub force: bool,
    /// Allow `--target` to be the policy's own source database.
    pub overwrite_source: bool,
    pub no_owner: bool,
    pub no_acl: bool,
}

pub async fn plan(policy: &Policy, req: &Request) -> Result<(Plan, Manifest)> {
    let repo = crate::repo::open_for_reading(policy).await?;
    let inv = inventory::scan(&*repo, Some(&policy.name)).await?;
    // A refusal names backups left out as corrupt (they may be why).
    crate::error::noted(plan_from(policy, req, &inv), inv.left_out(&policy.name))
}

fn plan_from(
    policy: &Policy,
    req: &Request,
    inv: &inventory::Inventory,
) -> Result<(Plan, Manifest)> {
    plan::refuse_future(
        &req.target,
        jiff::Timestamp::now(),
        &plan::describe_window(&inv.candidates()),
    )
    .map_err(usage)?;
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
            gap_seconds: choice.gap.map(|g| g.as_secs()),
            target: req.database.clone(),
            ..Plan::new(policy, &m, target_time, req.dry_run)
        },
        m,
    ))
}

/// Whether `target` is the policy's own source: the same database on the
/// same server as spelled, or, when both answer, the same cluster (system
/// identifier and data directory) under another name.
async fn is_own_source(policy: &Policy, target: &ConnUrl) -> bool {
    let Some(src) = policy
        .source
        .url
        .as_deref()
        .and_then(|u| ConnUrl::parse(u).ok())
    else {
        return false;
    };
    if src.same_database(target) {
        return true;
    }
    if src.database() != target.database() {
        return false;
    }
    let q = "select (select system_identifier::text from pg_control_system()) || ' ' || current_setting('data_directory')";
    let ask = |conn: Option<Conn>| async move {
        tokio::time::timeout(std::time::Duration::from_secs(5), conn?.query_one(q, &[]))
            .await
            .ok()?
            .ok()
    };
    let (a, b) = tokio::join!(
        ask(Conn::new(src, policy.source.password_env.as_deref()).ok()),
        ask(Conn::new(target.clone(), None).ok())
    );
    matches!((a, b), (Some(a), Some(b)) if a == b)
}

pub async fn run(policy: &Policy, req: &Request) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let (mut plan, m) = plan(policy, req).await?;
    let target_url = refusals(policy, req, &m, &mut plan).await?;
    let Some(go) = crate::restore::preamble(
        policy,
        &m,
        req.identity.as_ref(),
        req.dry_run,
        req.lease_catalog.as_ref(),
        &[],
    )
    .await?
    else {
        return Ok(Outcome::dry_run(plan, started));
    };
    let target_url = target_url.expect("required unless dry-run");
    let t = TargetDb::prepare(&target_url, &m, req.force).await?;
    let result = stream_into(policy, &m, &t.conn, go.ids.clone(), req, t.clean).await;
    if let Err(e) = result {
        if t.created {
            // Say what happened to it, not what was hoped: the server that
            // failed the restore may refuse the drop too.
            let db = &t.db;
            let fate = match t
                .admin
                .query(
                    "drop database if exists :\"db\" with (force)",
                    &[("db", db)],
                )
                .await
            {
                Ok(_) => format!("the database \"{db}\" drctl created was dropped"),
                Err(de) => format!(
                    "the database \"{db}\" drctl created is LEFT BEHIND half-restored (dropping it failed: {de:#}); drop it by hand before retrying"
                ),
            };
            return Err(e.context(format!("restore of {} failed; {fate}", m.id)));
        }
        let state = if req.jobs > 1 {
            "it ran in several transactions, so \"{db}\" may hold part of the backup: empty it before retrying"
        } else {
            "pg_restore ran in one transaction, so \"{db}\" is unchanged"
        };
        return Err(e.context(format!(
            "restore of {} failed; {}",
            m.id,
            state.replace("{db}", &t.db)
        )));
    }
    Ok(Outcome {
        plan,
        created_database: t.created,
        duration_seconds: started.elapsed().as_secs_f64(),
        reached_at: None,
        port: None,
        server_state: None,
    })
}

/// What a dump restore refuses before it touches anything: another
/// method's backup, no or a bad --target, --jobs 0, the policy's own
/// source without --overwrite-source (with it, the plan says what is
/// lost), --jobs > 1 with --force. The target, unless a dry run has none.
async fn refusals(
    policy: &Policy,
    req: &Request,
    m: &Manifest,
    plan: &mut Plan,
) -> Result<Option<ConnUrl>> {
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
    if let Some(t) = &target_url {
        if is_own_source(policy, t).await {
            if !req.overwrite_source {
                return Err(usage(format!(
                    "--target {} is policy {}'s own source database: restoring there replaces production data with backup {} (consistent at {}); restore into a new database, or pass --overwrite-source (with --force) if that is really what you want",
                    t.host(),
                    policy.name,
                    m.id,
                    rfc3339(m.consistent_at)
                )));
            }
            plan.overwrites_source = Some(format!(
                "THE SOURCE DATABASE: everything written to it since {} ({} ago) is lost",
                rfc3339(m.consistent_at),
                crate::time::parse::human_duration(
                    jiff::Timestamp::now().duration_since(m.consistent_at)
                )
            ));
        }
    }
    if req.jobs > 1 && req.force {
        return Err(usage(
            "--jobs > 1 restores in several transactions, so it cannot replace an existing database's contents safely; drop --force and restore into a new database, or use --jobs 1",
        ));
    }
    Ok(target_url)
}

/// The target database, checked and made ready: nothing is created or
/// changed before the checks pass.
struct TargetDb {
    conn: Conn,
    admin: Conn,
    db: String,
    /// drctl created it (and drops it again if the restore fails).
    created: bool,
    /// It existed with relations (--force): pg_restore cleans first.
    clean: bool,
}

impl TargetDb {
    async fn prepare(url: &ConnUrl, m: &Manifest, force: bool) -> Result<TargetDb> {
        let conn = Conn::new(url.clone(), None)?;
        let db = url.database();
        let admin = conn.with_database("postgres");
        let exists = admin
            .query_one(
                "select count(*) from pg_database where datname = :'db'",
                &[("db", &db)],
            )
            .await
            .with_context(|| format!("cannot reach the target server {}", url.host()))?
            == "1";
        let mut clean = false;
        if exists {
            let n: i64 = conn
                .query_one(
                    "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                     where c.relkind in ('r','p','v','m','S','f') \
                     and n.nspname not in ('pg_catalog','information_schema') and n.nspname !~ '^pg_toast'",
                    &[],
                )
                .await?
                .parse()
                .unwrap_or(0);
            if n > 0 && !force {
                // A refusal before anything is touched, like a non-empty
                // --target-dir: exit 2.
                return Err(crate::error::usage(format!(
                    "target database \"{db}\" already exists and has {n} relations; restore into a new database name, or pass --force to replace its contents"
                )));
            }
            clean = n > 0;
        } else {
            let enc = m.source.encoding.clone().unwrap_or_else(|| "UTF8".into());
            let made = admin
                .query(
                    "create database :\"db\" template template0 encoding :'enc'",
                    &[("db", &db), ("enc", &enc)],
                )
                .await;
            if let Err(e) = made {
                // A create cut short (SIGTERM reaching psql) may have
                // committed all the same: it was absent a moment ago, so
                // it is ours to drop.
                let there = admin
                    .query_one(
                        "select count(*) from pg_database where datname = :'db'",
                        &[("db", &db)],
                    )
                    .await
                    .is_ok_and(|n| n == "1");
                let dropped = there
                    && admin
                        .query("drop database if exists :\"db\"", &[("db", &db)])
                        .await
                        .is_ok();
                let again = if dropped {
                    "; it was dropped again"
                } else {
                    ""
                };
                let what = if crate::cancel::requested() {
                    "cancelled while creating"
                } else {
                    "cannot create"
                };
                bail!("{what} database \"{db}\" ({e:#}){again}");
            }
        }
        Ok(TargetDb {
            conn,
            admin,
            db,
            created: !exists,
            clean,
        })
    }
}

/// Restore the dump: one `pg_restore --single-transaction` fed by one
/// stream, or with `--jobs N` three phases (pre-data, data split over N
/// workers each fed by its own stream, post-data); see `toc`.
async fn stream_into(
    policy: &Policy,
    m: &Manifest,
    target: &Conn,
    ids: Vec<age::x25519::Identity>,
    req: &Request,
    clean: bool,
) -> Result<()> {
    let repo = crate::repo::open_for_reading(policy).await?;
    let tool = policy.pg_tool("pg_restore", m.source.server_version_num / 10000)?;
    let tool = &tool;
    let mut common: Vec<String> = vec!["-w".into(), "--exit-on-error".into()];
    if req.no_owner {
        common.push("--no-owner".into());
    }
    if req.no_acl {
        common.push("--no-acl".into());
    }
    common.push(format!("--dbname={}", target.url));
    let one = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(common.iter().cloned());
        v
    };
    if req.jobs <= 1 {
        let mut args = one(&["--single-transaction"]);
        if clean {
            args.extend(["--clean".into(), "--if-exists".into()]);
        }
        feed(tool, &repo, m, target, &ids, args, false, "restore").await?;
        return Ok(());
    }

    let toc = feed(
        tool,
        &repo,
        m,
        target,
        &ids,
        vec!["--list".into()],
        true,
        "reading TOC",
    )
    .await?;
    let lists = crate::restore::toc::partition(&toc, &m.tables, req.jobs as usize);
    tracing::info!(
        workers = lists.len(),
        "parallel restore: pre-data, data, post-data"
    );
    feed(
        tool,
        &repo,
        m,
        target,
        &ids,
        one(&["--section=pre-data", "--single-transaction"]),
        true,
        "restore schema",
    )
    .await?;

    let mut files = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for (i, list) in lists.iter().enumerate() {
        let mut f = tempfile::Builder::new()
            .prefix("drctl-toc-")
            .tempfile()
            .context("cannot write a restore list")?;
        f.write_all(list.as_bytes())?;
        f.flush()?;
        let mut args = one(&["--section=data", "--single-transaction", "-L"]);
        args.insert(3, f.path().display().to_string());
        files.push(f);
        let (repo, m, target, ids) = (repo.clone(), m.clone(), target.clone(), ids.clone());
        let tool = tool.clone();
        set.spawn(async move {
            let label = if i == 0 { "restore data" } else { "" };
            feed(&tool, &repo, &m, &target, &ids, args, true, label).await
        });
    }
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let r = r
            .map_err(|e| anyhow!("restore worker panicked: {e}"))
            .and_then(|r| r);
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    drop(files);
    if let Some(e) = first_err {
        return Err(e);
    }
    feed(
        tool,
        &repo,
        m,
        target,
        &ids,
        one(&["--section=post-data", "--single-transaction"]),
        true,
        "restore indexes",
    )
    .await?;
    Ok(())
}

/// Stream the backup's object into one `pg_restore ARGS` and return its
/// stdout. With `drain`, pg_restore may stop reading early (`--list`, one
/// section, a share of the data); the rest is still read so every checksum
/// is checked. An empty `label` hides progress.
#[allow(clippy::too_many_arguments)]
async fn feed(
    tool: &std::path::Path,
    repo: &std::sync::Arc<dyn crate::repo::Repository>,
    m: &Manifest,
    target: &Conn,
    ids: &[age::x25519::Identity],
    args: Vec<String>,
    drain: bool,
    label: &'static str,
) -> Result<String> {
    let obj = m
        .objects
        .first()
        .context("manifest lists no objects")?
        .clone();
    let reader = repo.reader(&obj.key).await?;
    // A SIGTERM between two steps finds no child to stop: check before
    // starting one.
    if crate::cancel::requested() {
        bail!("interrupted before {}", tool.display());
    }
    let mut cmd = target.std_command(tool);
    cmd.args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    let id = m.id.clone();
    let ids = ids.to_vec();
    tokio::task::spawn_blocking(move || -> Result<String> {
        let mut stdin = child.stdin.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(stderr, 64 << 10), &mut buf);
            buf
        });
        let out_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut stdout, 64 << 20), &mut buf);
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            buf
        });
        let bar = if label.is_empty() {
            crate::progress::hidden()
        } else {
            crate::progress::Bar::new(label, Some(obj.plain_bytes))
        };
        let r = pipeline::decode(reader, &ids, &obj, &mut stdin, drain, &|n| {
            bar.set(n);
            !crate::cancel::requested()
        });
        bar.finish();
        match r {
            Ok(_) => {
                drop(stdin);
                let status = child.wait()?;
                let err = err_thread.join().unwrap_or_default();
                let out = out_thread.join().unwrap_or_default();
                if !status.success() {
                    let s = pg::stderr_summary(&err);
                    let hint = if s.contains("role") && s.contains("does not exist") {
                        "; create the role on the target or pass --no-owner --no-acl"
                    } else {
                        ""
                    };
                    bail!("pg_restore failed: {s}{hint}");
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
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
                    DecodeError::Cancelled => anyhow!("interrupted while restoring backup {id}"),
                })
            }
        }
    })
    .await
    .context("restore pipeline panicked")?
}
