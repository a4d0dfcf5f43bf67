//! `drctl daemon`: every policy's backup schedule, in one process.
//!
//! - Each policy's next run is computed from its cron schedule in its time
//!   zone and logged. Jobs run under a global concurrency limit; one policy
//!   never runs two jobs at once (in-process, and the policy lock that
//!   `drctl backup` from cron also takes).
//! - A run missed while the daemon was down (the catalog's newest attempt is
//!   older than the schedule's last due time) runs once at start-up, unless
//!   `--no-catch-up`. A run due while the previous one still runs is skipped.
//! - SIGHUP reloads policies; an invalid file is reported and the last good
//!   version of that policy keeps running.
//! - SIGTERM/SIGINT stop scheduling, give running jobs `--grace` to finish,
//!   then cancel them (children killed, uploads aborted, catalog marks them
//!   failed) and exit 0.
//! - The scheduler loop also watches each policy's RPO against
//!   `[notify] max_rpo`, notifying once when it goes over.
//! - `--listen` serves `/metrics` (Prometheus) and `/healthz` (200 while the
//!   loop is alive).
//! - Policies on S3: daemons on several hosts share the schedule; each slot
//!   is claimed once in the repository (`slots`), a dead runner's slot is
//!   taken over after its lease expires.

pub mod metrics;
pub mod slots;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use jiff::Timestamp;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::time::parse::rfc3339;
use crate::time::schedule::Schedule;

pub struct Options {
    pub policies_dir: PathBuf,
    pub catalog_path: PathBuf,
    pub listen: Option<SocketAddr>,
    pub max_concurrent: usize,
    pub catch_up: bool,
    pub grace: Duration,
    /// Schedule and log, run nothing (scripts/bench-daemon.sh measures
    /// scheduling drift with it).
    pub dry_run: bool,
    /// For scheduled drills (`[drill] schedule`): the age identity.
    pub identity: Option<PathBuf>,
}

/// Longest the loop sleeps: bounds how stale /healthz and the RPO watch get.
const TICK: Duration = Duration::from_secs(15);

/// How often a slot running on another daemon is looked at.
const WATCH: Duration = Duration::from_secs(1);

struct Shared {
    catalog: Catalog,
    policies_dir: PathBuf,
    /// Unix seconds of the scheduler loop's last turn.
    heartbeat: AtomicI64,
    /// What /metrics and the status page show, gathered at most every
    /// `CACHE_FOR` (reading the WAL archive and asking each source is not
    /// free); both render from the same gathering.
    cache: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Gathered>)>>,
    /// Slots claimed elsewhere and still running there: looked at again
    /// until they finish, or taken over if their runner dies.
    /// `true`: deferred by this daemon because its own run was going; such
    /// a slot is recorded as skipped unless another daemon claimed it.
    watching: std::sync::Mutex<BTreeMap<(String, JobKind, Timestamp), bool>>,
    /// Per (policy, kind): slots this daemon ran, and slots others ran.
    slots: std::sync::Mutex<BTreeMap<(String, JobKind), [u64; 2]>>,
    /// Whether the last (re)load read every policy file, and when it ran.
    reload_ok: std::sync::atomic::AtomicBool,
    reload_at: AtomicI64,
}

impl Shared {
    fn reloaded(&self, ok: bool) {
        self.reload_ok.store(ok, Ordering::Relaxed);
        self.reload_at
            .store(Timestamp::now().as_second(), Ordering::Relaxed);
        // /metrics says so at once, not after its cache expires.
        if let Ok(mut c) = self.cache.try_lock() {
            *c = None;
        }
    }

    fn count(&self, policy: &str, kind: JobKind, mine: bool) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.entry((policy.to_string(), kind)).or_default()[usize::from(!mine)] += 1;
    }

    fn watch(&self, policy: &str, kind: JobKind, due: Timestamp, on: Option<bool>) {
        let mut w = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        let key = (policy.to_string(), kind, due);
        match on {
            Some(deferred) => {
                let d = w.entry(key).or_insert(deferred);
                *d &= deferred;
            }
            None => {
                w.remove(&key);
            }
        }
    }
}

/// How a scheduled run ended, for its slot marker: the backup it made.
type Ran = Result<Option<String>>;

/// Run `work` as slot `due` of `policy`'s `kind` runs. On an S3 repository
/// the slot is claimed first (daemon::slots): a slot another daemon ran or
/// is running is left to it. Elsewhere `work` just runs. Callers hold a job
/// slot first, the look at the slot included: unthrottled, the watchers'
/// looks (two GETs a second per watched slot) swamped a small S3 server in
/// the fleet bench.
async fn in_slot(
    shared: &Shared,
    policy: &Policy,
    kind: JobKind,
    due: Timestamp,
    deferred: bool,
    work: impl std::future::Future<Output = Ran>,
    started: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Result<()> {
    let what = kind.as_str();
    let repo = match &policy.repository {
        Some(cfg) => Some((crate::repo::open(cfg).await?, cfg.lease_ttl())),
        None => None,
    };
    let Some((repo, ttl)) = repo.filter(|(r, _)| r.conditional_writes()) else {
        return work.await.map(|_| ());
    };
    let mut held = match slots::claim(&*repo, &policy.name, what, due, ttl).await? {
        slots::Claimed::Mine(h) => h,
        slots::Claimed::Done(why) => {
            shared.watch(&policy.name, kind, due, None);
            shared.count(&policy.name, kind, false);
            tracing::info!(slot = %rfc3339(due), "slot already run: {why}");
            return Ok(());
        }
        slots::Claimed::Watch(why) => {
            shared.watch(&policy.name, kind, due, Some(false));
            tracing::info!(slot = %rfc3339(due), "slot taken by another daemon: {why}");
            return Ok(());
        }
    };
    shared.watch(&policy.name, kind, due, None);
    if deferred && held.took_over.is_none() {
        // As one daemon alone would: a slot due while the previous run went
        // on is skipped, and recorded so, once.
        let why = format!("the previous {what} was still going at {}", rfc3339(due));
        tracing::warn!(slot = %rfc3339(due), "skipped: {why}");
        held.finish(&*repo, &policy.name, what, "skipped", None, Some(why))
            .await?;
        return Ok(());
    }
    if let Some(why) = &held.took_over {
        tracing::warn!(slot = %rfc3339(due), "taking over the {what} slot: {why}");
    }
    shared.count(&policy.name, kind, true);
    // The backup's id goes into the marker as soon as it has one, while
    // the run goes on.
    let record = async {
        if let Some(mut rx) = started {
            if let Some(id) = rx.recv().await {
                held.started(&*repo, id).await;
            }
        }
    };
    let (ran, ()) = tokio::join!(work, record);
    let (outcome, id, detail) = match &ran {
        Ok(id) => ("complete", id.clone(), None),
        Err(e) if crate::error::is_busy(e) => ("skipped", None, Some(format!("{e:#}"))),
        Err(e) => ("failed", None, Some(format!("{e:#}"))),
    };
    if let Err(e) = held
        .finish(&*repo, &policy.name, what, outcome, id, detail)
        .await
    {
        tracing::warn!(slot = %rfc3339(due), "cannot record the slot's outcome: {e:#}");
    }
    ran.map(|_| ())
}

#[derive(Clone)]
struct Entry {
    policy: Policy,
    schedule: Option<Schedule>,
    next: Option<Timestamp>,
    drill_schedule: Option<Schedule>,
    drill_next: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum JobKind {
    Backup,
    Drill,
}

impl JobKind {
    fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Drill => "drill",
        }
    }
}

/// The policies in `dir` as schedule entries (a file that no longer
/// parses keeps its previous version), and whether every file loaded.
fn load(dir: &std::path::Path, old: &BTreeMap<String, Entry>) -> (BTreeMap<String, Entry>, bool) {
    let (policies, problems) = match crate::policy::load_dir(dir) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(
                "cannot read policies from {}: {e}; keeping the loaded ones",
                dir.display()
            );
            return (old.clone(), false);
        }
    };
    let ok = problems.is_empty();
    let mut out = BTreeMap::new();
    let now = Timestamp::now();
    for p in policies {
        let schedule = p
            .backup
            .schedule
            .as_deref()
            .and_then(|s| Schedule::parse(s).ok());
        let next = match old.get(&p.name) {
            // Unchanged schedule: keep the run already planned.
            Some(o)
                if o.policy.backup.schedule == p.backup.schedule
                    && o.policy.backup.timezone == p.backup.timezone =>
            {
                o.next
            }
            _ => schedule
                .as_ref()
                .and_then(|s| s.next_after(now, &p.timezone())),
        };
        let drill_expr = p.drill.as_ref().and_then(|d| d.schedule.clone());
        let drill_schedule = drill_expr.as_deref().and_then(|s| Schedule::parse(s).ok());
        let drill_next = match old.get(&p.name) {
            Some(o)
                if o.policy.drill.as_ref().and_then(|d| d.schedule.clone()) == drill_expr
                    && o.policy.backup.timezone == p.backup.timezone =>
            {
                o.drill_next
            }
            _ => drill_schedule
                .as_ref()
                .and_then(|s| s.next_after(now, &p.timezone())),
        };
        out.insert(
            p.name.clone(),
            Entry {
                policy: p,
                schedule,
                next,
                drill_schedule,
                drill_next,
            },
        );
    }
    for problem in problems {
        let name = problem
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::error!("invalid policy: {problem}");
        if let Some(o) = old.get(&name) {
            out.entry(name).or_insert_with_key(|name| {
                tracing::warn!(policy = %name, "keeping the previous valid version of the policy");
                o.clone()
            });
        }
    }
    (out, ok)
}

/// What a reload changed: "added a (next 02:00Z), removed b, changed c
/// (next …)", or "no policy changed".
fn reload_summary(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> String {
    let next = |e: &Entry| match e.next {
        Some(n) => format!("next backup {}", rfc3339(n)),
        None => "not scheduled".into(),
    };
    let mut parts = Vec::new();
    let added: Vec<String> = new
        .iter()
        .filter(|(k, _)| !old.contains_key(*k))
        .map(|(k, e)| format!("{k} ({})", next(e)))
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(String::as_str)
        .collect();
    // Policy has no PartialEq; its Debug form covers every field.
    let changed: Vec<String> = new
        .iter()
        .filter(|(k, e)| {
            old.get(*k)
                .is_some_and(|o| format!("{:?}", o.policy) != format!("{:?}", e.policy))
        })
        .map(|(k, e)| format!("{k} ({})", next(e)))
        .collect();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    if !changed.is_empty() {
        parts.push(format!("changed {}", changed.join(", ")));
    }
    if parts.is_empty() {
        "no policy changed".into()
    } else {
        parts.join("; ")
    }
}

fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

async fn drill_job(
    shared: Arc<Shared>,
    catalog_path: PathBuf,
    sem: Arc<Semaphore>,
    policy: Policy,
    identity: Option<PathBuf>,
    due: Timestamp,
    deferred: bool,
) -> Result<()> {
    let _permit = sem.acquire_owned().await.context("scheduler closed")?;
    let work = drill_work(&shared, catalog_path, &policy, identity);
    in_slot(&shared, &policy, JobKind::Drill, due, deferred, work, None).await
}

async fn drill_work(
    shared: &Shared,
    catalog_path: PathBuf,
    policy: &Policy,
    identity: Option<PathBuf>,
) -> Ran {
    let policy = policy.clone();
    let opts = crate::drill::Options {
        point: crate::drill::Point::Latest,
        scratch_url: None,
        keep: false,
        identity,
        catalog_path,
        policies_dir: std::path::absolute(&shared.policies_dir)?,
    };
    let r = match crate::drill::run(&policy, &opts, &shared.catalog).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("scheduled drill could not run: {msg}");
            crate::notify::send(&policy, crate::notify::Event::DrillFailed, &msg).await;
            return Err(e);
        }
    };
    if r.passed {
        tracing::info!(
            rto_seconds = r.rto_seconds,
            rpo_seconds = r.rpo_seconds,
            "scheduled drill passed"
        );
        return Ok(r.backup_id);
    }
    let failed: Vec<String> = r
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let msg = format!(
        "drill of backup {} failed: {}",
        r.backup_id.as_deref().unwrap_or("-"),
        failed.join("; ")
    );
    tracing::error!("{msg}");
    crate::notify::send(&policy, crate::notify::Event::DrillFailed, &msg).await;
    Err(anyhow::anyhow!(msg))
}

async fn job(
    shared: Arc<Shared>,
    catalog_path: PathBuf,
    sem: Arc<Semaphore>,
    policy: Policy,
    due: Timestamp,
    deferred: bool,
) -> Result<()> {
    let _permit = sem.acquire_owned().await.context("scheduler closed")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let work = backup_work(&shared, catalog_path, &policy, tx);
    let started = Some(rx);
    in_slot(
        &shared,
        &policy,
        JobKind::Backup,
        due,
        deferred,
        work,
        started,
    )
    .await
}

async fn backup_work(
    shared: &Shared,
    catalog_path: PathBuf,
    policy: &Policy,
    on_start: tokio::sync::mpsc::UnboundedSender<String>,
) -> Ran {
    let policy = policy.clone();
    let started = std::time::Instant::now();
    match crate::backup::run(
        &policy,
        &shared.catalog,
        &catalog_path,
        crate::backup::Options {
            force: None,
            started: Some(on_start),
        },
    )
    .await
    {
        Ok(out) => {
            tracing::info!(
                backup = %out.made.id(),
                seconds = started.elapsed().as_secs_f64(),
                "scheduled backup complete"
            );
            if out.copy_failures.is_empty() {
                Ok(Some(out.made.id().to_string()))
            } else {
                Err(anyhow::anyhow!(crate::backup::copy_failure_message(
                    out.made.id(),
                    &policy.name,
                    &out.copy_failures
                )))
            }
        }
        Err(e) => {
            tracing::error!("scheduled backup failed: {e:#}");
            Err(e)
        }
    }
}

pub async fn run(opts: Options) -> Result<()> {
    // A job that loses its lease ends in error; the other policies' jobs
    // go on.
    crate::repo::lease::keep_process_on_loss();
    let catalog = Catalog::open(&opts.catalog_path).await?;
    let shared = Arc::new(Shared {
        catalog,
        policies_dir: opts.policies_dir.clone(),
        heartbeat: AtomicI64::new(Timestamp::now().as_second()),
        cache: tokio::sync::Mutex::new(None),
        watching: Default::default(),
        slots: Default::default(),
        reload_ok: std::sync::atomic::AtomicBool::new(false),
        reload_at: AtomicI64::new(0),
    });
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let (mut entries, ok) = load(&opts.policies_dir, &BTreeMap::new());
    shared.reloaded(ok);
    if entries.is_empty() {
        tracing::warn!(
            "no valid policies in {}; waiting for SIGHUP",
            opts.policies_dir.display()
        );
    }
    if opts.catch_up {
        catch_up(&shared.catalog, &mut entries).await?;
    }
    announce(&entries, &opts);
    if let Some(addr) = opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            "serving the status page (/), /metrics and /healthz on http://{}",
            listener.local_addr()?
        );
        tokio::spawn(serve(listener, shared.clone()));
    }

    let mut runner = Runner {
        sem: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
        opts: &opts,
        shared: shared.clone(),
        jobs: JoinSet::new(),
        running: BTreeSet::new(),
        last_watch: std::time::Instant::now(),
    };
    let mut over_rpo: BTreeSet<String> = BTreeSet::new();
    let mut archive_failing: BTreeSet<String> = BTreeSet::new();
    let mut last_rpo_check = std::time::Instant::now() - TICK;
    loop {
        let now = Timestamp::now();
        shared.heartbeat.store(now.as_second(), Ordering::Relaxed);
        for e in entries.values_mut() {
            runner.start_due(e, now);
        }
        runner.start_watched(&entries);
        if last_rpo_check.elapsed() >= TICK {
            last_rpo_check = std::time::Instant::now();
            watch_rpo(&shared, &entries, &mut over_rpo).await;
            watch_archive(&entries, &mut archive_failing).await;
        }
        let until_next = entries
            .values()
            .flat_map(|e| [e.next, e.drill_next])
            .flatten()
            .min()
            .map(|n| n.duration_since(Timestamp::now()).unsigned_abs())
            .unwrap_or(TICK)
            .min(TICK)
            .min(
                if shared
                    .watching
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                {
                    TICK
                } else {
                    WATCH
                },
            );
        tokio::select! {
            _ = tokio::time::sleep(until_next) => {}
            Some(done) = runner.jobs.join_next(), if !runner.jobs.is_empty() => {
                if let Ok((key, _)) = done {
                    runner.running.remove(&key);
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading policies");
                let (new, ok) = load(&opts.policies_dir, &entries);
                tracing::info!(
                    ok,
                    "SIGHUP: policies reloaded: {}",
                    reload_summary(&entries, &new)
                );
                entries = new;
                shared.reloaded(ok);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    runner.drain().await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs missed while the daemon was down (the newest attempt is older than
/// the schedule's last due time) are due now.
async fn catch_up(catalog: &Catalog, entries: &mut BTreeMap<String, Entry>) -> Result<()> {
    let now = Timestamp::now();
    for e in entries.values_mut() {
        let Some(s) = &e.schedule else { continue };
        let rows = catalog.list(Some(&e.policy.name)).await?;
        let last = rows.iter().filter_map(|r| r.started_at).max();
        if let Some(due) = last.and_then(|l| s.next_after(l, &e.policy.timezone())) {
            if due <= now {
                tracing::info!(policy = %e.policy.name, missed = %rfc3339(due), "a run was missed while drctl was down; running it now");
                // As its own slot, so daemons sharing the repository agree
                // on it (and run it once).
                e.next = Some(due);
            }
        }
    }
    Ok(())
}

/// One line per policy: when its backup and drill run next.
fn announce(entries: &BTreeMap<String, Entry>, opts: &Options) {
    for e in entries.values() {
        if let (Some(s), Some(n)) = (&e.drill_schedule, e.drill_next) {
            tracing::info!(policy = %e.policy.name, schedule = %s.expr(), next = %rfc3339(n), "drill scheduled");
            if opts.identity.is_none()
                && e.policy.backup.method != crate::policy::Method::RdsSnapshot
            {
                tracing::error!(policy = %e.policy.name, "[drill] schedule set but the daemon has no --identity (DRCTL_IDENTITY): its drills will fail");
            }
        }
        match (&e.schedule, e.next) {
            (Some(s), Some(n)) => {
                tracing::info!(policy = %e.policy.name, schedule = %s.expr(), next = %rfc3339(n), "scheduled")
            }
            _ => tracing::info!(policy = %e.policy.name, "no backup.schedule: not scheduled"),
        }
    }
}

/// The running jobs, at most one of each kind per policy.
struct Runner<'a> {
    opts: &'a Options,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    jobs: JoinSet<((String, JobKind), Result<()>)>,
    running: BTreeSet<(String, JobKind)>,
    last_watch: std::time::Instant,
}

impl Runner<'_> {
    /// Looks again at slots other daemons were running: a finished one is
    /// forgotten, a dead runner's is taken over (see `in_slot`).
    fn start_watched(&mut self, entries: &BTreeMap<String, Entry>) {
        if self.last_watch.elapsed() < WATCH {
            return;
        }
        self.last_watch = std::time::Instant::now();
        let watched: Vec<_> = self
            .shared
            .watching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, d)| (k.clone(), *d))
            .collect();
        for ((name, kind, due), deferred) in watched {
            let Some(e) = entries.get(&name) else {
                self.shared.watch(&name, kind, due, None);
                continue;
            };
            if self.running.contains(&(name.clone(), kind)) {
                continue;
            }
            let (shared, path, sem, policy) = (
                self.shared.clone(),
                self.opts.catalog_path.clone(),
                self.sem.clone(),
                e.policy.clone(),
            );
            match kind {
                JobKind::Backup => {
                    self.start_quiet(&name, kind, job(shared, path, sem, policy, due, deferred))
                }
                JobKind::Drill => {
                    let id = self.opts.identity.clone();
                    let fut = drill_job(shared, path, sem, policy, id, due, deferred);
                    self.start_quiet(&name, kind, fut)
                }
            }
        }
    }

    /// Start a job without the "starting" log line (a watched slot is
    /// looked at every few seconds).
    fn start_quiet(
        &mut self,
        policy: &str,
        kind: JobKind,
        fut: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) {
        if self.opts.dry_run {
            return;
        }
        let key = (policy.to_string(), kind);
        self.running.insert(key.clone());
        let span = tracing::info_span!("slot", policy, kind = kind.as_str());
        self.jobs
            .spawn(async move { (key, fut.await) }.instrument(span));
    }

    /// Starts the entry's drill and backup if due, and plans their next runs.
    fn start_due(&mut self, e: &mut Entry, now: Timestamp) {
        if let Some(due) = e.drill_next.filter(|n| *n <= now) {
            e.drill_next = e
                .drill_schedule
                .as_ref()
                .and_then(|s| s.next_after(now, &e.policy.timezone()));
            let fut = drill_job(
                self.shared.clone(),
                self.opts.catalog_path.clone(),
                self.sem.clone(),
                e.policy.clone(),
                self.opts.identity.clone(),
                due,
                false,
            );
            self.start(&e.policy, JobKind::Drill, due, fut);
        }
        if let Some(due) = e.next.filter(|n| *n <= now) {
            e.next = e
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(now, &e.policy.timezone()));
            let fut = job(
                self.shared.clone(),
                self.opts.catalog_path.clone(),
                self.sem.clone(),
                e.policy.clone(),
                due,
                false,
            );
            self.start(&e.policy, JobKind::Backup, due, fut);
        }
    }

    fn start(
        &mut self,
        p: &Policy,
        kind: JobKind,
        due: Timestamp,
        fut: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) {
        let policy = p.name.as_str();
        let key = (policy.to_string(), kind);
        let what = kind.as_str();
        if self.running.contains(&key) {
            // On S3 the slot is shared with other daemons: look at it again
            // once this job is done (another daemon may run it meanwhile).
            if p.repository
                .as_ref()
                .is_some_and(|r| r.url.starts_with("s3://"))
            {
                self.shared.watch(policy, kind, due, Some(true));
                return;
            }
            tracing::warn!(policy, due = %rfc3339(due), "previous {what} still going; skipping this one");
            return;
        }
        let id = run_id();
        tracing::info!(policy, run_id = %id, due = %rfc3339(due), "starting scheduled {what}");
        if self.opts.dry_run {
            return;
        }
        self.running.insert(key.clone());
        let span = match kind {
            JobKind::Backup => tracing::info_span!("job", policy, run_id = %id),
            JobKind::Drill => tracing::info_span!("drill", policy, run_id = %id),
        };
        self.jobs
            .spawn(async move { (key, fut.await) }.instrument(span));
    }

    /// Gives running jobs the grace period, then cancels them.
    async fn drain(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        tracing::info!(
            jobs = self.jobs.len(),
            "stopping: waiting up to {}s for running jobs",
            self.opts.grace.as_secs()
        );
        let drained = tokio::time::timeout(self.opts.grace, async {
            while self.jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over: cancelling the running jobs");
            crate::cancel::request();
            while self.jobs.join_next().await.is_some() {}
        }
    }
}

/// Notify once when a policy's RPO goes over `[notify] max_rpo`, again only
/// after it has come back under.
async fn watch_rpo(
    shared: &Shared,
    entries: &BTreeMap<String, Entry>,
    over: &mut BTreeSet<String>,
) {
    let watched: Vec<Policy> = entries
        .values()
        .filter(|e| e.policy.notify.max_rpo.is_some())
        .map(|e| e.policy.clone())
        .collect();
    if watched.is_empty() {
        return;
    }
    let Ok(statuses) = crate::status::collect(&watched, &shared.catalog, Timestamp::now()).await
    else {
        return;
    };
    for (p, s) in watched.iter().zip(statuses) {
        let Some(max) = p
            .notify
            .max_rpo
            .as_deref()
            .and_then(|m| crate::time::parse::parse_duration(m).ok())
        else {
            continue;
        };
        // No recoverable point at all is over any budget.
        let rpo = s.rpo_seconds.unwrap_or(i64::MAX);
        if rpo > max.as_secs() {
            if over.insert(p.name.clone()) {
                let msg = match s.rpo_seconds {
                    Some(r) => format!(
                        "RPO is {} (budget {}); newest recoverable point {}",
                        crate::time::parse::human_duration(jiff::SignedDuration::from_secs(r)),
                        p.notify.max_rpo.as_deref().unwrap_or(""),
                        s.window_end.as_deref().unwrap_or("?")
                    ),
                    None => "no recoverable backup".into(),
                };
                tracing::warn!(policy = %p.name, "{msg}");
                crate::notify::send(p, crate::notify::Event::RpoExceeded, &msg).await;
            }
        } else {
            over.remove(&p.name);
        }
    }
}

/// Notify once when a physical policy's archive_command starts failing
/// (the source's pg_stat_archiver says its newest attempt failed), and once
/// when it archives again.
async fn watch_archive(entries: &BTreeMap<String, Entry>, failing: &mut BTreeSet<String>) {
    for e in entries.values() {
        let p = &e.policy;
        if p.backup.method != crate::policy::Method::Physical || p.notify.webhook_url.is_none() {
            continue;
        }
        // An unreachable source is not news here: RPO and status say so.
        let Some(h) = crate::status::server_archive_health(p).await else {
            continue;
        };
        match h.failing {
            Some(true) if failing.insert(p.name.clone()) => {
                let msg = h.describe();
                tracing::warn!(policy = %p.name, "{msg}");
                crate::notify::send(p, crate::notify::Event::ArchiveFailing, &msg).await;
            }
            Some(false) if failing.remove(&p.name) => {
                let msg = h.describe();
                tracing::info!(policy = %p.name, "{msg}");
                crate::notify::send(p, crate::notify::Event::ArchiveRecovered, &msg).await;
            }
            _ => {}
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// An HTML page: read-only, never framed by another site, never cached
/// (it is the state now).
fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = text(status, body, "text/html; charset=utf-8");
    let h = r.headers_mut();
    for (k, v) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        ),
    ] {
        h.insert(
            hyper::header::HeaderName::from_static(k),
            hyper::header::HeaderValue::from_static(v),
        );
    }
    r
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("n={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != hyper::Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".into(),
            PLAIN,
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => {
            let age = Timestamp::now().as_second() - shared.heartbeat.load(Ordering::Relaxed);
            if age <= 3 * TICK.as_secs() as i64 {
                text(StatusCode::OK, "ok\n".into(), PLAIN)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("scheduler loop stalled for {age}s\n"),
                    PLAIN,
                )
            }
        }
        "/metrics" => match metrics_text(&shared).await {
            Ok(body) => text(
                StatusCode::OK,
                body,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"), PLAIN),
        },
        "/" => match index_page(&shared).await {
            Ok(body) => page(StatusCode::OK, body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"), PLAIN),
        },
        path => {
            let name = path
                .strip_prefix("/policy/")
                .map(|n| percent_decode(n.trim_end_matches('/')));
            match name {
                Some(name) => match policy_page(&shared, &name).await {
                    Ok(Some(body)) => page(StatusCode::OK, body),
                    Ok(None) => text(
                        StatusCode::NOT_FOUND,
                        format!("no policy {name:?}; / lists them\n"),
                        PLAIN,
                    ),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"), PLAIN),
                },
                None => text(
                    StatusCode::NOT_FOUND,
                    "try /, /policy/NAME, /metrics or /healthz\n".into(),
                    PLAIN,
                ),
            }
        }
    })
}

/// How long one gathering serves /metrics and the page.
const CACHE_FOR: Duration = Duration::from_secs(10);

/// The policies as last read and what was learnt about them.
struct Gathered {
    policies: Vec<crate::policy::Policy>,
    unreadable: Vec<crate::report::Unreadable>,
    metrics: Vec<crate::daemon::metrics::PolicyMetrics>,
    at: Timestamp,
}

async fn gathered(shared: &Shared) -> Result<Arc<Gathered>> {
    let mut cache = shared.cache.lock().await;
    if let Some((at, g)) = cache.as_ref() {
        if at.elapsed() < CACHE_FOR {
            return Ok(g.clone());
        }
    }
    let (policies, problems) = crate::policy::load_dir(&shared.policies_dir)?;
    let metrics = crate::daemon::metrics::collect(&policies, &shared.catalog).await?;
    let unreadable = crate::report::Unreadable::from_problems(problems);
    let g = Arc::new(Gathered {
        policies,
        unreadable,
        metrics,
        at: Timestamp::now(),
    });
    *cache = Some((std::time::Instant::now(), g.clone()));
    Ok(g)
}

async fn metrics_text(shared: &Shared) -> Result<String> {
    let g = gathered(shared).await?;
    let mut body = crate::daemon::metrics::render(&g.metrics);
    body.push_str(&format!(
        "# HELP drctl_scheduler_heartbeat_timestamp_seconds Last turn of the scheduler loop (Unix time).\n# TYPE drctl_scheduler_heartbeat_timestamp_seconds gauge\ndrctl_scheduler_heartbeat_timestamp_seconds {}\n",
        shared.heartbeat.load(Ordering::Relaxed)
    ));
    Ok(body + &daemon_metrics(shared) + &slot_metrics(shared))
}

/// How often the page asks the browser to reload it.
const PAGE_REFRESH_SECONDS: u32 = 30;

fn page_report(g: &Gathered) -> crate::report::Report {
    crate::report::build(
        &g.policies,
        g.metrics.iter().map(|m| m.status.clone()).collect(),
        g.unreadable.clone(),
        g.at,
    )
}

/// `/`: every policy's row.
async fn index_page(shared: &Shared) -> Result<String> {
    let g = gathered(shared).await?;
    Ok(crate::report::html::index(
        &page_report(&g),
        crate::report::html::Mode::Daemon {
            refresh_seconds: PAGE_REFRESH_SECONDS,
        },
    ))
}

/// `/policy/NAME`: its row, history, drills and retention plan; None for
/// a policy the directory does not hold.
async fn policy_page(shared: &Shared, name: &str) -> Result<Option<String>> {
    let g = gathered(shared).await?;
    let Some(p) = g.policies.iter().find(|p| p.name == name) else {
        return Ok(None);
    };
    let r = page_report(&g);
    let Some(pr) = r.policies.iter().find(|x| x.policy == name) else {
        return Ok(None);
    };
    let d = crate::report::detail(p, &shared.catalog).await?;
    Ok(Some(crate::report::html::policy(
        &r,
        pr,
        &d,
        PAGE_REFRESH_SECONDS,
    )))
}

/// The daemon's own state: its version, and how the last policy reload
/// went (as Prometheus' own prometheus_config_last_reload_* do). Not cached.
fn daemon_metrics(shared: &Shared) -> String {
    format!(
        "# HELP drctl_build_info The running drctl's version.\n# TYPE drctl_build_info gauge\ndrctl_build_info{{version=\"{}\"}} 1\n\
         # HELP drctl_policy_reload_success Whether the last policy (re)load read every policy file (1) or kept a previous version of some (0).\n# TYPE drctl_policy_reload_success gauge\ndrctl_policy_reload_success {}\n\
         # HELP drctl_policy_reload_timestamp_seconds When policies were last (re)loaded (Unix time).\n# TYPE drctl_policy_reload_timestamp_seconds gauge\ndrctl_policy_reload_timestamp_seconds {}\n",
        env!("CARGO_PKG_VERSION"),
        u8::from(shared.reload_ok.load(Ordering::Relaxed)),
        shared.reload_at.load(Ordering::Relaxed)
    )
}

/// Which scheduled slots this daemon ran and which it left to others
/// (daemons sharing an S3 repository; see daemon::slots). Not cached.
fn slot_metrics(shared: &Shared) -> String {
    let slots = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
    if slots.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP drctl_daemon_slots_total Scheduled slots this daemon saw, by who ran them (ran=\"this\": this daemon; \"other\": another daemon sharing the repository).\n# TYPE drctl_daemon_slots_total counter\n",
    );
    for ((policy, kind), [mine, others]) in slots.iter() {
        for (ran, n) in [("this", mine), ("other", others)] {
            out.push_str(&format!(
                "drctl_daemon_slots_total{{policy=\"{}\",kind=\"{}\",ran=\"{ran}\"}} {n}\n",
                policy.replace('\\', "\\\\").replace('"', "\\\""),
                kind.as_str()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, schedule: &str, next: Option<&str>) -> (String, Entry) {
        let text = format!(
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\nschedule = \"{schedule}\"\n[repository]\nurl = \"file:///r\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n"
        );
        let policy =
            crate::policy::parse(std::path::Path::new(&format!("p/{name}.toml")), &text).unwrap();
        (
            name.to_string(),
            Entry {
                policy,
                schedule: None,
                next: next.map(|n| n.parse().unwrap()),
                drill_schedule: None,
                drill_next: None,
            },
        )
    }

    #[test]
    fn a_reload_names_what_it_added_removed_and_changed() {
        let old: BTreeMap<_, _> = [
            entry("a", "0 2 * * *", None),
            entry("b", "0 2 * * *", None),
            entry("c", "0 2 * * *", None),
        ]
        .into_iter()
        .collect();
        let new: BTreeMap<_, _> = [
            entry("a", "0 2 * * *", None),
            entry("c", "0 3 * * *", Some("2026-12-04T03:00:00Z")),
            entry("d", "0 4 * * *", Some("2026-12-04T04:00:00Z")),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            reload_summary(&old, &new),
            "added d (next backup 2026-12-04T04:00:00Z); removed b; changed c (next backup 2026-12-04T03:00:00Z)"
        );
        assert_eq!(reload_summary(&old, &old), "no policy changed");
    }
}
