//! Run leases in an S3 repository, so one policy never runs twice at once
//! anywhere: not on two hosts, not in two pods after a node failure.
//!
//! A lease is one small JSON object, `<policy>/lease.json` (drills:
//! `<policy>/lease-drill.json`, so a drill and a backup may overlap as they
//! do on one host). S3 arbitrates with conditional writes:
//!
//! - take: PutObject with `If-None-Match: *`; of racing writers exactly one
//!   gets 200, the rest 412 (409 on AWS while the winner is in flight);
//! - renew, every third of the lease's time: PutObject with `If-Match` on
//!   the ETag the holder last wrote;
//! - take over a holder that stopped renewing (killed, partitioned) once its
//!   `expires` has passed: PutObject with `If-Match` on the dead holder's
//!   ETag, so of two takers again only one wins; logged;
//! - release: DeleteObject with `If-Match`, so a holder that lost its lease
//!   never deletes its successor's.
//!
//! A store that ignored the conditions would let every writer win, silently.
//! After each take drctl writes once more with `If-None-Match: *`, which
//! must be refused, and reads the lease back, which must be its own; a store
//! that accepts the second write is named and the run refused.
//!
//! `expires` is the holder's clock plus the lease time: hosts sharing a
//! repository need synchronised clocks (NTP), as their schedules do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Conditional, Precondition, Repository};
use crate::time::parse::rfc3339;

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Random, one per run: how a holder knows its own lease.
    pub token: String,
    /// "backup", "prune", "copy", "drill".
    pub what: String,
    pub host: String,
    pub pid: u32,
    /// The kernel boot and pid namespace the pid lives in: where they are
    /// this process's own, the pid can be asked whether it lives.
    #[serde(default)]
    pub boot: String,
    pub started: Timestamp,
    pub expires: Timestamp,
    #[serde(default)]
    pub renewals: u64,
}

impl Holder {
    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }

    /// "backup by pid 4121 on db-2 since …; its lease expires at … (in 1m
    /// 40s) unless renewed".
    pub fn describe(&self, now: Timestamp) -> String {
        let left = self.expires.as_second() - now.as_second();
        let when = if left >= 0 {
            format!("in {}", human_secs(left))
        } else {
            format!("{} ago", human_secs(-left))
        };
        format!(
            "{} by pid {} on {} since {}; its lease expires at {} ({when}) unless renewed",
            self.what,
            self.pid,
            self.host,
            rfc3339(self.started),
            rfc3339(self.expires)
        )
    }
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Which lease a run of kind `what` takes: "drill", or "run" (backup,
/// prune, copy share one).
pub fn object(what: &str) -> &'static str {
    if what == "drill" {
        "drill"
    } else {
        "run"
    }
}

/// The lease object of `policy` for runs of kind `what`.
pub fn key(policy: &str, what: &str) -> String {
    match object(what) {
        "drill" => format!("{policy}/lease-drill.json"),
        _ => format!("{policy}/lease.json"),
    }
}

/// This process's boot id and pid namespace: two processes that share both
/// see each other's pids. A host name alone does not prove that (two
/// machines may both be called "debian"; pods share a node's boot).
pub fn boot_identity() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if boot.trim().is_empty() || ns.is_empty() {
        return String::new();
    }
    format!("{}/{ns}", boot.trim())
}

/// What to do about the lease object as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// None there: create it.
    Create,
    /// Ours already (a write that succeeded though its answer was lost).
    Ours,
    /// Someone else's, alive.
    Busy,
    /// Someone else's, expired: take it over.
    TakeOver,
}

/// The decision, apart from the I/O. `dead` says whether the holder is
/// provably gone before its lease expires: a process of this boot and pid
/// namespace that no longer exists (a run killed -9 here need not cost the
/// next one the lease time).
pub fn decide(
    found: Option<&Holder>,
    token: &str,
    now: Timestamp,
    dead: impl Fn(&Holder) -> bool,
) -> Step {
    match found {
        None => Step::Create,
        Some(h) if h.token == token => Step::Ours,
        Some(h) if h.expired(now) || dead(h) => Step::TakeOver,
        Some(_) => Step::Busy,
    }
}

/// Whether `h` ran here (same boot, same pid namespace) and its process is
/// gone.
fn gone_from_here(h: &Holder, here: &str) -> bool {
    !here.is_empty() && h.boot == here && !crate::lock::pid_alive(i64::from(h.pid))
}

/// Lease loss ends the process's run (as a first SIGTERM would) unless the
/// daemon, which runs many policies in one process, says otherwise.
static KEEP_PROCESS_ON_LOSS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The daemon's jobs end with an error on loss instead of cancelling the
/// whole process.
pub fn keep_process_on_loss() {
    KEEP_PROCESS_ON_LOSS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A held lease, renewed in the background until `release`.
pub struct RunLease {
    repo: Arc<dyn Repository>,
    key: String,
    state: Arc<Mutex<State>>,
    stop: tokio::sync::watch::Sender<bool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

struct State {
    holder: Holder,
    etag: String,
    /// Why the lease is no longer ours, once it is not.
    lost: Option<String>,
    /// Where `status` learns of it: the catalog, this policy, this object.
    record: Option<(crate::catalog::Catalog, String, &'static str)>,
    /// A restore's lease on what it reads: losing it ends nothing (the
    /// restore matters more than the protection from a prune elsewhere).
    reader: bool,
}

impl State {
    /// Tell the catalog (best effort: the lease itself is in S3).
    async fn record(record: Option<(crate::catalog::Catalog, String, &'static str)>, h: &Holder) {
        if let Some((cat, policy, lease)) = record {
            let r = crate::catalog::LeaseRecord {
                token: &h.token,
                what: &h.what,
                host: &h.host,
                pid: h.pid,
                started: h.started,
                expires: h.expires,
            };
            if let Err(e) = cat.record_lease(&policy, lease, &r).await {
                tracing::warn!("cannot record the lease in the catalog: {e:#}");
            }
        }
    }
}

impl std::fmt::Debug for RunLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLease").field("key", &self.key).finish()
    }
}

fn where_(repo: &dyn Repository, key: &str) -> String {
    format!("{}/{key}", repo.url().trim_end_matches('/'))
}

fn parse(repo: &dyn Repository, key: &str, bytes: &[u8]) -> Result<Holder> {
    serde_json::from_slice(bytes).map_err(|e| {
        anyhow!(
            "the lease {} is not a drctl lease ({e}); if no drctl run of this policy is going on anywhere, delete it",
            where_(repo, key)
        )
    })
}

/// Take the lease of `policy` for a run of kind `what`, or fail at once
/// naming the holder and when its lease expires.
pub async fn acquire(
    repo: Arc<dyn Repository>,
    policy: &str,
    what: &str,
    ttl: Duration,
) -> Result<RunLease> {
    let key = key(policy, what);
    let token = format!("{:016x}", rand::random::<u64>());
    let started = Timestamp::now();
    let ttl_span = jiff::SignedDuration::try_from(ttl)?;
    let here = where_(&*repo, &key);
    let boot = boot_identity();
    for _ in 0..5 {
        let now = Timestamp::now();
        let mine = Holder {
            token: token.clone(),
            what: what.to_string(),
            host: crate::lock::hostname(),
            pid: std::process::id(),
            boot: boot.clone(),
            started,
            expires: now.checked_add(ttl_span)?,
            renewals: 0,
        };
        let found = repo
            .get_tagged(&key)
            .await
            .with_context(|| format!("cannot read the lease {here}"))?;
        let found = match found {
            Some((bytes, etag)) => Some((parse(&*repo, &key, &bytes)?, etag)),
            None => None,
        };
        let cond = match decide(found.as_ref().map(|(h, _)| h), &token, now, |h| {
            gone_from_here(h, &boot)
        }) {
            Step::Busy => {
                let (h, _) = found.expect("busy means found");
                return Err(crate::error::busy(format!(
                    "policy {policy} is busy: {}; wait for it to finish (lease {here})",
                    h.describe(now)
                )));
            }
            Step::Ours => {
                let (_, etag) = found.expect("ours means found");
                return confirm(repo, key, mine, etag, ttl).await;
            }
            Step::Create => Precondition::Absent,
            Step::TakeOver => Precondition::Matches(found.as_ref().expect("found").1.clone()),
        };
        let body = serde_json::to_vec_pretty(&mine)?;
        match repo
            .put_if(&key, body, &cond)
            .await
            .with_context(|| format!("cannot write the lease {here}"))?
        {
            Conditional::Written(etag) => {
                if let Some((old, _)) = &found {
                    let why = if old.expired(now) {
                        "it was not renewed"
                    } else {
                        "its process is gone from this host"
                    };
                    tracing::warn!(
                        policy,
                        lease = %here,
                        "took over the lease of {}: {why}",
                        old.describe(now)
                    );
                }
                return confirm(repo, key, mine, etag, ttl).await;
            }
            // Another writer won this round: look again.
            Conditional::Refused => continue,
        }
    }
    bail!("cannot take the lease {here}: it changed hands five times while drctl looked; try again")
}

/// Prove the lease is ours and the store enforces the conditions, then
/// start renewing.
async fn confirm(
    repo: Arc<dyn Repository>,
    key: String,
    mine: Holder,
    etag: String,
    ttl: Duration,
) -> Result<RunLease> {
    let here = where_(&*repo, &key);
    let body = serde_json::to_vec_pretty(&mine)?;
    match repo
        .put_if(&key, body, &Precondition::Absent)
        .await
        .with_context(|| format!("cannot check the lease {here}"))?
    {
        Conditional::Refused => {}
        Conditional::Written(e) => {
            let _ = repo.delete_if(&key, &e).await;
            bail!(
                "{} ignores If-None-Match: a second write of {here} that must be refused was accepted, so leases cannot keep two runs apart there; use a store with conditional writes (AWS S3, MinIO, Cloudflare R2, Ceph RGW 18+)",
                repo.url()
            );
        }
    }
    let now = Timestamp::now();
    let (bytes, etag_now) = repo
        .get_tagged(&key)
        .await
        .with_context(|| format!("cannot read the lease {here}"))?
        .ok_or_else(|| anyhow!("the lease {here} vanished right after drctl wrote it"))?;
    let there = parse(&*repo, &key, &bytes)?;
    if there.token != mine.token {
        return Err(crate::error::busy(format!(
            "policy {} is busy: {}; wait for it to finish (lease {here})",
            key.split('/').next().unwrap_or_default(),
            there.describe(now)
        )));
    }
    // The read's ETag is the one to renew on (a store may quote or case
    // the write's differently).
    let _ = etag;
    Ok(start(repo, key, mine, etag_now, ttl, false))
}

/// Renew a lease just written, in the background, from now on.
fn start(
    repo: Arc<dyn Repository>,
    key: String,
    mine: Holder,
    etag: String,
    ttl: Duration,
    reader: bool,
) -> RunLease {
    let state = Arc::new(Mutex::new(State {
        holder: mine,
        etag,
        lost: None,
        record: None,
        reader,
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let renewer = tokio::spawn(renew(
        repo.clone(),
        key.clone(),
        state.clone(),
        ttl.max(Duration::from_secs(1)),
        stopped,
    ));
    RunLease {
        repo,
        key,
        state,
        stop,
        renewer: Some(renewer),
        released: false,
    }
}

/// Where a reader's lease on one backup lives: one object per reader, so
/// readers never contend; prune lists them.
pub fn reader_key(policy: &str, backup: &str, token: &str) -> String {
    format!("{policy}/leases/{backup}/{token}.json")
}

/// Lease `ids` of `policy` for a restore or drill (`what`) reading them:
/// a prune on any host keeps them while the leases live.
pub async fn lease_backups(
    repo: Arc<dyn Repository>,
    policy: &str,
    ids: &[String],
    what: &str,
    ttl: Duration,
) -> Result<Vec<RunLease>> {
    let ttl_span = jiff::SignedDuration::try_from(ttl)?;
    let mut out = Vec::new();
    for id in ids {
        let token = format!("{:016x}", rand::random::<u64>());
        let key = reader_key(policy, id, &token);
        let now = Timestamp::now();
        let mine = Holder {
            token,
            what: what.to_string(),
            host: crate::lock::hostname(),
            pid: std::process::id(),
            boot: boot_identity(),
            started: now,
            expires: now.checked_add(ttl_span)?,
            renewals: 0,
        };
        let here = where_(&*repo, &key);
        match repo
            .put_if(
                &key,
                serde_json::to_vec_pretty(&mine)?,
                &Precondition::Absent,
            )
            .await
            .with_context(|| format!("cannot write the lease {here}"))?
        {
            Conditional::Written(etag) => out.push(start(repo.clone(), key, mine, etag, ttl, true)),
            Conditional::Refused => {
                bail!("the lease {here} exists already: a random token repeated")
            }
        }
    }
    Ok(out)
}

/// The live readers' leases on backups of `policy`, by backup id. Expired
/// ones, and ones whose process is gone from this host, are not counted;
/// with `tidy` they are deleted.
pub async fn readers(
    repo: &dyn Repository,
    policy: &str,
    tidy: bool,
) -> Result<std::collections::BTreeMap<String, Holder>> {
    let prefix = format!("{policy}/leases/");
    let here = boot_identity();
    let now = Timestamp::now();
    let mut out = std::collections::BTreeMap::new();
    for o in repo.list(&prefix).await? {
        let Some((id, _)) = o.key[prefix.len()..].split_once('/') else {
            continue;
        };
        let Some(bytes) = repo.get_bytes(&o.key).await? else {
            continue;
        };
        match serde_json::from_slice::<Holder>(&bytes) {
            Ok(h) if !h.expired(now) && !gone_from_here(&h, &here) => {
                out.insert(id.to_string(), h);
            }
            _ if tidy => repo.delete(&o.key).await?,
            _ => {}
        }
    }
    Ok(out)
}

/// Renew every third of the lease time until told to stop or the lease is
/// lost. Each attempt is bounded by what is left of the lease.
async fn renew(
    repo: Arc<dyn Repository>,
    key: String,
    state: Arc<Mutex<State>>,
    ttl: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let every = ttl / 3;
    let here = where_(&*repo, &key);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        let (mut next, etag) = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            (s.holder.clone(), s.etag.clone())
        };
        let deadline = next.expires;
        let now = Timestamp::now();
        let Ok(span) = jiff::SignedDuration::try_from(ttl) else {
            return;
        };
        next.expires = now.saturating_add(span).unwrap_or(now);
        next.renewals += 1;
        let left = Duration::try_from(deadline.duration_since(now))
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(100));
        let attempt = async {
            let body = serde_json::to_vec_pretty(&next)?;
            match repo
                .put_if(&key, body, &Precondition::Matches(etag))
                .await?
            {
                Conditional::Written(e) => Ok(Ok(e)),
                Conditional::Refused => {
                    // Ours after all when a retried write had succeeded.
                    match repo.get_tagged(&key).await? {
                        Some((b, e)) => match serde_json::from_slice::<Holder>(&b) {
                            Ok(h) if h == next => Ok(Ok(e)),
                            Ok(h) => Ok(Err(format!("taken by {}", h.describe(Timestamp::now())))),
                            Err(_) => Ok(Err("overwritten by something not a drctl lease".into())),
                        },
                        None => Ok(Err("deleted by someone else".to_string())),
                    }
                }
            }
        };
        let outcome: Result<Result<String, String>> =
            match tokio::time::timeout(left, attempt).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("no answer before the lease expired")),
            };
        let lost = match outcome {
            Ok(Ok(etag)) => {
                let record = {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.holder = next.clone();
                    s.etag = etag;
                    s.record.clone()
                };
                State::record(record, &next).await;
                continue;
            }
            Ok(Err(why)) => why,
            Err(e) if Timestamp::now() < deadline => {
                tracing::warn!(lease = %here, "cannot renew the lease yet: {e:#}");
                continue;
            }
            Err(e) => format!("not renewed before it expired: {e:#}"),
        };
        let reader = state.lock().unwrap_or_else(|e| e.into_inner()).reader;
        if reader {
            tracing::warn!(
                lease = %here,
                "lost the lease on a backup this restore reads: {lost}; a prune elsewhere may now delete it"
            );
            return;
        }
        let msg = format!("lost the lease {here}: {lost}; another run of the policy may start");
        tracing::error!("{msg}");
        state.lock().unwrap_or_else(|e| e.into_inner()).lost = Some(msg);
        if !KEEP_PROCESS_ON_LOSS.load(std::sync::atomic::Ordering::SeqCst) {
            crate::cancel::request();
        }
        return;
    }
}

impl RunLease {
    /// Keep the catalog told of this lease (taken, renewed, released), for
    /// `status` on any host. `lease` names the object: "run" or "drill".
    pub async fn record_in(
        &self,
        catalog: &crate::catalog::Catalog,
        policy: &str,
        lease: &'static str,
    ) {
        let (record, holder) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.record = Some((catalog.clone(), policy.to_string(), lease));
            (s.record.clone(), s.holder.clone())
        };
        State::record(record, &holder).await;
    }

    /// Stop renewing and delete the lease if it is still ours. Returns why
    /// it was lost, if it was. A failed delete only costs the next run the
    /// lease's expiry: logged, not an error of the run.
    pub async fn release(mut self) -> Option<String> {
        self.released = true;
        let _ = self.stop.send(true);
        if let Some(r) = self.renewer.take() {
            let _ = r.await;
        }
        let (etag, lost, record, token) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                s.etag.clone(),
                s.lost.clone(),
                s.record.clone(),
                s.holder.token.clone(),
            )
        };
        if let Some((cat, policy, lease)) = record {
            let _ = cat.drop_lease(&policy, lease, &token).await;
        }
        if lost.is_some() {
            return lost;
        }
        let here = where_(&*self.repo, &self.key);
        match self.repo.delete_if(&self.key, &etag).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(lease = %here, "the lease was no longer this run's at release")
            }
            Err(e) => {
                tracing::warn!(lease = %here, "cannot release the lease; it expires by itself: {e:#}")
            }
        }
        None
    }
}

/// A lease dropped without `release` (a restore's, an error path) stops
/// renewing and is deleted, within a bound; where that cannot be done it
/// expires.
impl Drop for RunLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let _ = self.stop.send(true);
        let (etag, lost, record, token) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                s.etag.clone(),
                s.lost.is_some(),
                s.record.clone(),
                s.holder.token.clone(),
            )
        };
        let (repo, key) = (self.repo.clone(), self.key.clone());
        let delete = async move {
            let bound = Duration::from_secs(5);
            if let Some((cat, policy, lease)) = record {
                let _ = tokio::time::timeout(bound, cat.drop_lease(&policy, lease, &token)).await;
            }
            if !lost {
                let _ = tokio::time::timeout(bound, repo.delete_if(&key, &etag)).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            // Wait (bounded) so a command about to exit still releases.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(delete))
            }
            Ok(h) => {
                h.spawn(delete);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(token: &str, expires: &str) -> Holder {
        Holder {
            token: token.into(),
            what: "backup".into(),
            host: "db-2".into(),
            pid: 4121,
            boot: String::new(),
            started: "2026-12-03T08:00:00Z".parse().unwrap(),
            expires: expires.parse().unwrap(),
            renewals: 3,
        }
    }

    #[test]
    fn a_live_holder_is_busy_an_expired_one_is_taken_over_and_ours_is_ours() {
        let now: Timestamp = "2026-12-03T08:05:00Z".parse().unwrap();
        let alive = |_: &Holder| false;
        assert_eq!(decide(None, "a", now, alive), Step::Create);
        let live = holder("b", "2026-12-03T08:06:40Z");
        assert_eq!(decide(Some(&live), "a", now, alive), Step::Busy);
        assert_eq!(decide(Some(&live), "b", now, alive), Step::Ours);
        // A holder provably gone from this host is taken over at once.
        assert_eq!(decide(Some(&live), "a", now, |_| true), Step::TakeOver);
        let dead = holder("b", "2026-12-03T08:05:00Z");
        assert_eq!(decide(Some(&dead), "a", now, alive), Step::TakeOver);
        // Even an expired lease of our own is ours: no takeover of oneself.
        assert_eq!(decide(Some(&dead), "b", now, alive), Step::Ours);
    }

    #[test]
    fn only_a_holder_of_this_boot_and_pid_namespace_is_judged_by_its_pid() {
        let here = boot_identity();
        assert!(!here.is_empty(), "no boot id or pid namespace in /proc");
        let mut h = holder("b", "2026-12-03T08:06:40Z");
        // A pid that cannot exist.
        h.pid = u32::MAX - 1;
        h.boot = here.clone();
        assert!(gone_from_here(&h, &here));
        // Elsewhere (another machine, another container): not ours to judge.
        h.boot = "another-boot/pid:[1]".into();
        assert!(!gone_from_here(&h, &here));
        h.boot = String::new();
        assert!(!gone_from_here(&h, &here));
        // Alive here.
        h.boot = here.clone();
        h.pid = std::process::id();
        assert!(!gone_from_here(&h, &here));
    }

    #[test]
    fn the_busy_message_names_the_holder_and_when_its_lease_expires() {
        let now: Timestamp = "2026-12-03T08:05:00Z".parse().unwrap();
        let m = holder("b", "2026-12-03T08:06:40Z").describe(now);
        assert!(
            m.starts_with("backup by pid 4121 on db-2 since 2026-12-03T08:00:00Z"),
            "{m}"
        );
        assert!(
            m.contains("expires at 2026-12-03T08:06:40Z (in 1m40s) unless renewed"),
            "{m}"
        );
        let m = holder("b", "2026-12-03T08:04:58Z").describe(now);
        assert!(m.contains("(2s ago)"), "{m}");
    }

    #[test]
    fn drills_have_their_own_lease() {
        assert_eq!(key("orders", "backup"), "orders/lease.json");
        assert_eq!(key("orders", "prune"), "orders/lease.json");
        assert_eq!(key("orders", "drill"), "orders/lease-drill.json");
    }

    #[test]
    fn a_lease_reads_back_as_written() {
        let h = holder("b", "2026-12-03T08:06:40Z");
        let back: Holder = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    /// A store where every conditional write after the first is refused
    /// and the lease then reads as gone: someone deleted it.
    struct Vanishing;

    #[async_trait::async_trait]
    impl Repository for Vanishing {
        fn url(&self) -> &str {
            "s3://test/vanishing"
        }
        async fn put_bytes(&self, _: &str, _: Vec<u8>) -> Result<()> {
            unimplemented!()
        }
        async fn get_bytes(&self, _: &str) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        async fn head(&self, _: &str) -> Result<Option<u64>> {
            Ok(None)
        }
        async fn list(&self, _: &str) -> Result<Vec<super::super::ObjectInfo>> {
            Ok(Vec::new())
        }
        async fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn writer(&self, _: &str) -> Result<Box<dyn super::super::ObjectWriter>> {
            unimplemented!()
        }
        async fn reader(&self, _: &str) -> Result<super::super::ObjectReader> {
            unimplemented!()
        }
        async fn leftovers(&self, _: &str) -> Result<Vec<super::super::Leftover>> {
            Ok(Vec::new())
        }
        async fn remove_leftover(&self, _: &super::super::Leftover) -> Result<()> {
            Ok(())
        }
        fn conditional_writes(&self) -> bool {
            true
        }
        async fn put_if(&self, _: &str, _: Vec<u8>, c: &Precondition) -> Result<Conditional> {
            Ok(match c {
                Precondition::Absent => Conditional::Written("\"e1\"".into()),
                Precondition::Matches(_) => Conditional::Refused,
            })
        }
        async fn get_tagged(&self, _: &str) -> Result<Option<(Vec<u8>, String)>> {
            Ok(None)
        }
        async fn delete_if(&self, _: &str, _: &str) -> Result<bool> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn a_restore_that_loses_its_lease_goes_on() {
        let repo: Arc<dyn Repository> = Arc::new(Vanishing);
        let leases = lease_backups(
            repo,
            "orders",
            &["b1".into()],
            "restore",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        // The first renewal (a third of the lease time) finds it gone.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            leases[0].renewer.as_ref().unwrap().is_finished(),
            "the renewer should have given up"
        );
        assert!(
            !crate::cancel::requested(),
            "a lost reader lease cancelled the restore"
        );
        assert!(leases[0].state.lock().unwrap().lost.is_none());
    }
}
