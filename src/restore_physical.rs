//! `drctl restore` for physical backups: point-in-time recovery.
//!
//! Everything that can refuse happens before a byte is written: pick the
//! newest base backup at or before the target, follow the archived WAL from
//! its start through the timelines (from the history sidecars, no key
//! needed) and refuse a target outside the reachable window, check the key,
//! check the target directory is empty. Then extract the base backup
//! (streamed, checksummed), write `recovery.signal` and the recovery
//! settings, and with `--start` run the server until it has promoted and
//! report the point it actually reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use jiff::Timestamp;

use crate::error::usage;
use crate::inventory;
use crate::manifest::{Manifest, Tablespace};
use crate::pipeline::{self, DecodeError};
use crate::plan::{self, Target};
use crate::policy::{Method, Policy};
use crate::repo::Repository;
use crate::restore::{Outcome, Plan, TablespacePlacement};
use crate::timeparse::rfc3339;
use crate::wal::{self, Sidecar};

pub struct Request {
    pub target: Target,
    pub target_dir: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub dry_run: bool,
    /// Lease the backup (beside this catalog) while restoring, so prune
    /// leaves it alone.
    pub lease_catalog: Option<PathBuf>,
    pub start: bool,
    pub port: Option<u16>,
    /// Absolute policies directory, for restore_command.
    pub policies_dir: PathBuf,
    /// `OLD=NEW` relocations: OLD is a tablespace's OID or its directory on
    /// the source.
    pub tablespace_map: Vec<String>,
    /// Leave the source's archiving settings in force (the restored server
    /// replaces the primary). Default: `archive_mode = 'off'`.
    pub keep_archiving: bool,
}

/// Where each tablespace of `ts` is restored: where `maps` says, else where
/// it was on the source (what pgBackRest does too).
pub fn place_tablespaces(
    ts: &[Tablespace],
    maps: &[String],
) -> std::result::Result<Vec<TablespacePlacement>, String> {
    let known = || {
        if ts.is_empty() {
            "it has none".to_string()
        } else {
            let list: Vec<String> = ts
                .iter()
                .map(|t| format!("{} at {}", t.oid, t.location))
                .collect();
            format!("it has {}", list.join(", "))
        }
    };
    let mut to: BTreeMap<u32, String> = BTreeMap::new();
    for m in maps {
        let (old, new) = m
            .split_once('=')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| format!("--tablespace-map {m}: expected OLD=NEW (OLD: the tablespace's OID or its directory on the source)"))?;
        if !Path::new(new).is_absolute() {
            return Err(format!(
                "--tablespace-map {m}: {new} is not an absolute path"
            ));
        }
        let old_dir = old.trim_end_matches('/');
        let t = ts
            .iter()
            .find(|t| t.oid.to_string() == old || t.location.trim_end_matches('/') == old_dir)
            .ok_or_else(|| {
                format!(
                    "--tablespace-map {m}: the backup has no tablespace {old} ({})",
                    known()
                )
            })?;
        if to
            .insert(t.oid, new.trim_end_matches('/').to_string())
            .is_some()
        {
            return Err(format!(
                "--tablespace-map: tablespace {} is mapped twice",
                t.oid
            ));
        }
    }
    let placed: Vec<TablespacePlacement> = ts
        .iter()
        .map(|t| TablespacePlacement {
            oid: t.oid,
            location: t.location.clone(),
            restore_to: to.remove(&t.oid).unwrap_or_else(|| t.location.clone()),
        })
        .collect();
    for (i, a) in placed.iter().enumerate() {
        if placed[..i].iter().any(|b| b.restore_to == a.restore_to) {
            return Err(format!(
                "two tablespaces would be restored into {}; give each its own directory with --tablespace-map",
                a.restore_to
            ));
        }
    }
    Ok(placed)
}

/// The archive as the planner sees it: committed sidecars by timeline.
#[derive(Default)]
pub struct Archive {
    /// (timeline, segno) → last write time, for every committed segment.
    pub segments: BTreeMap<(u32, u64), Option<Timestamp>>,
    /// (timeline, segno) → its last commit, where wal-push recorded one.
    pub commits: BTreeMap<(u32, u64), Timestamp>,
    pub histories: BTreeMap<u32, Vec<(u32, String)>>,
    /// Every committed file's object, as its sidecar describes it.
    pub objects: Vec<crate::manifest::ObjectEntry>,
    /// Sidecars that fail their seal (key: why).
    pub corrupt: Vec<String>,
}

pub async fn read_archive(repo: &dyn Repository, policy: &str, seg_size: u64) -> Result<Archive> {
    let mut a = Archive::default();
    for o in repo.list(&wal::dir_key(policy)).await? {
        let Some(name) = o
            .key
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Ok(w) = wal::parse(name) else { continue };
        let side: Option<Sidecar> = match repo.get_bytes(&o.key).await? {
            // A sidecar that fails its seal commits nothing: its segment
            // is missing as far as recovery is concerned.
            Some(b) => match Sidecar::from_json(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    a.corrupt.push(format!("{}: {e}", o.key));
                    None
                }
            },
            None => None,
        };
        if let Some(sc) = &side {
            a.objects
                .push(sc.object_entry(&wal::object_key(policy, &w)));
        }
        match w.kind {
            wal::Kind::Segment => {
                let (log, seg) = w.log_seg.expect("segments have one");
                let n = wal::segno(log, seg, seg_size);
                if let Some(c) = side
                    .as_ref()
                    .and_then(|s| s.last_commit_at.as_deref())
                    .and_then(|t| t.parse().ok())
                {
                    a.commits.insert((w.timeline, n), c);
                }
                let at = side
                    .and_then(|s| s.last_write_at.or(Some(s.pushed_at)))
                    .and_then(|t| t.parse().ok());
                a.segments.insert((w.timeline, n), at);
            }
            wal::Kind::History => {
                if let Some(s) = side {
                    a.histories.insert(w.timeline, s.history);
                }
            }
            _ => {}
        }
    }
    Ok(a)
}

/// How far the archive reaches from a base backup without a gap.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The run of archived segments from the backup's start:
    /// (timeline, segno, last write).
    pub run: Vec<(u32, u64, Option<Timestamp>)>,
    pub segment_size: u64,
    /// No commit after this is in the archive (the last segment's mtime).
    pub end: Option<Timestamp>,
    /// The last commit in the run, as wal-push read it from the segments.
    pub last_commit: Option<Timestamp>,
    /// The first segment missing after the run, if the archive continues later.
    pub gap_at: Option<String>,
    /// That hole, to its last missing segment.
    pub gap: Option<Gap>,
    /// The run includes the backup's stop segment; without it the backup
    /// cannot reach consistency.
    pub reaches_stop: bool,
}

impl Reach {
    /// The segment names replay needs: the whole run, or with a target time
    /// up to the first segment written at or after it.
    pub fn segments_until(&self, target: Option<Timestamp>) -> Vec<String> {
        let mut out = Vec::new();
        for &(tli, n, at) in &self.run {
            out.push(wal::segment_name(tli, n, self.segment_size));
            if target.is_some_and(|t| at.is_some_and(|at| at >= t)) {
                break;
            }
        }
        out
    }
}

/// The WAL segment size of a policy's physical backups (from their manifests).
pub fn segment_size<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> u64 {
    manifests
        .into_iter()
        .find_map(|m| m.wal.as_ref())
        .map(|w| w.segment_size)
        .unwrap_or(wal::DEFAULT_SEGMENT_SIZE)
}

fn segno_of(name: &str, segment_size: u64) -> Option<u64> {
    wal::parse(name)
        .ok()?
        .log_seg
        .map(|(l, s)| wal::segno(l, s, segment_size))
}

pub fn reach(m: &Manifest, a: &Archive) -> Result<Reach> {
    reach_toward(m, a, None)
}

/// How far the archive reaches from base backup `m`, following timelines
/// toward `target`: recovery stays on a timeline that has WAL written at
/// or after the target (a restored copy that once archived its own
/// timeline branches off, but production went on), and moves to a child
/// timeline only where its parent ended before the target (a failover).
pub fn reach_toward(m: &Manifest, a: &Archive, target: Option<Timestamp>) -> Result<Reach> {
    let mut path = timeline_path_of(m, a)?;
    if let Some(t) = target {
        let holds = |&(tli, from): &(u32, u64)| {
            a.segments
                .range((tli, from)..=(tli, u64::MAX))
                .any(|(_, at)| at.is_some_and(|at| at >= t))
        };
        if let Some(i) = path.iter().position(holds) {
            path.truncate(i + 1);
        }
    }
    reach_along(m, a, &path)
}

/// Reaches along every timeline a restore of `m` could follow: staying on
/// its own timeline, or switching at each archived history in turn. The
/// window is their union, since a target picks the timeline that holds it.
pub fn reaches(m: &Manifest, a: &Archive) -> Result<Vec<Reach>> {
    let path = timeline_path_of(m, a)?;
    (1..=path.len())
        .map(|n| reach_along(m, a, &path[..n]))
        .collect()
}

fn timeline_path_of(m: &Manifest, a: &Archive) -> Result<Vec<(u32, u64)>> {
    let w = m
        .wal
        .as_ref()
        .context("physical manifest without WAL information")?;
    Ok(wal::timeline_path(w.timeline, &a.histories, w.segment_size))
}

fn reach_along(m: &Manifest, a: &Archive, path: &[(u32, u64)]) -> Result<Reach> {
    let w = m
        .wal
        .as_ref()
        .context("physical manifest without WAL information")?;
    let ss = w.segment_size;
    let first = segno_of(&w.start_segment, ss).context("bad start segment in the manifest")?;
    let stop = segno_of(&w.stop_segment, ss).context("bad stop segment in the manifest")?;
    let mut run = Vec::new();
    let mut end = None;
    let mut s = first;
    loop {
        let tli = wal::timeline_for(path, s);
        match a.segments.get(&(tli, s)) {
            Some(at) => {
                run.push((tli, s, *at));
                end = at.or(end);
                s += 1;
            }
            None => break,
        }
    }
    // The archive goes on after a hole: name its first and last segment.
    let next = a
        .segments
        .keys()
        .filter(|&&(tli, n)| n > s && tli == wal::timeline_for(path, n))
        .map(|(_, n)| *n)
        .min();
    let gap = next.map(|n| {
        (
            wal::segment_name(wal::timeline_for(path, s), s, ss),
            wal::segment_name(wal::timeline_for(path, n - 1), n - 1, ss),
        )
    });
    let last_commit = run
        .iter()
        .filter_map(|&(tli, n, _)| a.commits.get(&(tli, n)).copied())
        .max();
    Ok(Reach {
        run,
        segment_size: ss,
        end,
        last_commit,
        gap_at: gap.as_ref().map(|g| g.0.clone()),
        gap: gap.map(|(a, b)| Gap {
            first_missing: a,
            last_missing: b,
        }),
        reaches_stop: s > stop,
    })
}

/// Missing WAL between two archived stretches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first_missing == self.last_missing {
            write!(f, "WAL gap: {} missing", self.first_missing)
        } else {
            write!(
                f,
                "WAL gap: {} .. {} missing",
                self.first_missing, self.last_missing
            )
        }
    }
}

/// One continuous recoverable range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: Timestamp,
    pub end: Timestamp,
    /// The last commit in it, where the archive recorded commits: a target
    /// between this and `end` restores the state of this commit.
    pub last_commit: Option<Timestamp>,
}

/// The JSON form of a range (`windows` in status and restore plans).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RangeJson {
    pub start: String,
    pub end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
}

impl From<&Range> for RangeJson {
    fn from(r: &Range) -> RangeJson {
        let (start, end) = r.printed();
        RangeJson {
            start,
            end,
            last_commit_at: r.last_commit.map(crate::timeparse::rfc3339_exact),
        }
    }
}

impl Range {
    /// Start and end as printed: whole seconds rounded inwards, so a time
    /// copied from the output is inside the range; exact where the range
    /// holds no whole second.
    pub fn printed(&self) -> (String, String) {
        let second = jiff::SignedDuration::from_secs(1);
        let floor = |t: Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(t);
        let up = if floor(self.start) == self.start {
            self.start
        } else {
            floor(self.start) + second
        };
        let down = floor(self.end);
        if up <= down {
            (rfc3339(up), rfc3339(down))
        } else {
            (
                crate::timeparse::rfc3339_exact(self.start),
                crate::timeparse::rfc3339_exact(self.end),
            )
        }
    }
}

/// Merge each base backup's reach (consistent point to the last WAL it
/// rolls forward to without a hole) into continuous ranges, oldest first.
/// A backup whose stop segment is not archived yet reaches nothing; one
/// whose WAL ends before its (upper-bound) consistent point reaches just
/// that point, so a range never ends before it starts.
pub fn ranges(reaches: &[(Timestamp, &Reach)]) -> Vec<Range> {
    let mut rs: Vec<Range> = reaches
        .iter()
        .filter(|(_, r)| r.reaches_stop)
        .map(|&(start, r)| Range {
            start,
            end: r.end.map_or(start, |e| e.max(start)),
            last_commit: r.last_commit,
        })
        .collect();
    rs.sort_by_key(|r| r.start);
    let mut out: Vec<Range> = Vec::new();
    for r in rs {
        match out.last_mut() {
            Some(last) if r.start <= last.end => {
                last.end = last.end.max(r.end);
                last.last_commit = last.last_commit.max(r.last_commit);
            }
            _ => out.push(r),
        }
    }
    out
}

/// A physical policy's recoverable window as the repository holds it.
#[derive(Debug, Default)]
pub struct Window {
    /// Every continuous range, oldest first.
    pub ranges: Vec<Range>,
    /// The holes that split them (and any after the last).
    pub gaps: Vec<Gap>,
    /// How far each base backup rolls forward.
    pub per_backup: Vec<(String, Option<Timestamp>)>,
    /// The newest committed segment in the archive, and its last write.
    pub newest_segment: Option<(String, Option<Timestamp>)>,
}

impl Window {
    /// The newest continuous range: what `window_start`/`window_end` report.
    pub fn newest(&self) -> Option<Range> {
        self.ranges.last().copied()
    }

    /// Every range and gap in words, oldest first.
    pub fn describe(&self) -> String {
        if self.ranges.is_empty() {
            return "none yet (no base backup's WAL is fully archived)".into();
        }
        let mut parts: Vec<String> = self
            .ranges
            .iter()
            .map(|r| {
                let (a, b) = r.printed();
                match r.last_commit {
                    Some(c) => format!(
                        "{a} .. {b} (last commit {})",
                        crate::timeparse::rfc3339_exact(c)
                    ),
                    None => format!("{a} .. {b}"),
                }
            })
            .collect();
        for g in &self.gaps {
            parts.push(format!("({g})"));
        }
        parts.join(", ")
    }
}

fn window_of(physical: &[&Manifest], archive: &Archive) -> Result<Window> {
    let mut w = Window::default();
    let mut out = Vec::new();
    for m in physical {
        let mut until = None;
        for r in reaches(m, archive)? {
            until = until.max(r.end.map(|e| e.max(m.consistent_at)));
            if let Some(g) = &r.gap {
                if !w.gaps.contains(g) {
                    w.gaps.push(g.clone());
                }
            }
            out.push((m.consistent_at, r));
        }
        w.per_backup.push((m.id.clone(), until));
    }
    let refs: Vec<(Timestamp, &Reach)> = out.iter().map(|(t, r)| (*t, r)).collect();
    w.ranges = ranges(&refs);
    let ss = segment_size(physical.iter().copied());
    w.newest_segment = archive
        .segments
        .iter()
        .max_by_key(|((tli, n), _)| (*n, *tli))
        .map(|(&(tli, n), at)| (wal::segment_name(tli, n, ss), *at));
    w.gaps.sort_by(|a, b| a.first_missing.cmp(&b.first_missing));
    Ok(w)
}

/// Refuse a target no range holds, naming where it falls: before the
/// first, inside a gap (with the recoverable points on either side), or
/// after the last.
fn check_in_window(t: Timestamp, w: &Window) -> Result<()> {
    if w.ranges.iter().any(|r| r.start <= t && t <= r.end) {
        return Ok(());
    }
    let before = w.ranges.iter().rev().find(|r| r.end < t);
    let after = w.ranges.iter().find(|r| r.start > t);
    let why = match (before, after) {
        (None, None) => "there is no recoverable window yet".to_string(),
        (None, Some(_)) => "it is before the oldest base backup".to_string(),
        (Some(_), None) => "it is after the newest archived WAL".to_string(),
        (Some(b), Some(a)) => {
            let gap = w
                .gaps
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "it falls in a WAL gap ({gap}); the nearest recoverable points are {} and {}",
                b.printed().1,
                a.printed().0
            )
        }
    };
    Err(usage(format!(
        "cannot restore to {}: {why}; recoverable window: {}",
        rfc3339(t),
        w.describe()
    )))
}

pub async fn window(repo: &dyn Repository, policy: &str) -> Result<Window> {
    let inv = inventory::scan(repo, Some(policy)).await?;
    let physical: Vec<&Manifest> = inv
        .complete
        .iter()
        .filter(|m| m.method == Method::Physical)
        .collect();
    let seg_size = segment_size(physical.iter().copied());
    let archive = read_archive(repo, policy, seg_size).await?;
    window_of(&physical, &archive)
}

pub async fn plan(policy: &Policy, req: &Request) -> Result<(Plan, Manifest, Reach)> {
    let repo = crate::backup::open_repo(policy).await?;
    let inv = inventory::scan(&*repo, Some(&policy.name)).await?;
    let planned = plan_from(policy, req, &*repo, &inv).await;
    inv.note_left_out(&policy.name, planned)
}

async fn plan_from(
    policy: &Policy,
    req: &Request,
    repo: &dyn Repository,
    inv: &inventory::Inventory,
) -> Result<(Plan, Manifest, Reach)> {
    let physical: Vec<&Manifest> = inv
        .complete
        .iter()
        .filter(|m| m.method == Method::Physical)
        .collect();
    let cands: Vec<plan::Candidate> = physical
        .iter()
        .map(|m| plan::Candidate {
            id: m.id.clone(),
            consistent_at: m.consistent_at,
        })
        .collect();
    let seg_size = segment_size(physical.iter().copied());
    let archive = read_archive(repo, &policy.name, seg_size).await?;
    // A sidecar that fails its seal hides its segment: a refusal says so.
    let wal_note = (!archive.corrupt.is_empty()).then(|| {
        format!(
            "WAL left out because it is corrupt, never replayed: {}; run `drctl verify {}`",
            archive.corrupt.join(", "),
            policy.name
        )
    });
    let planned: Result<(Plan, Manifest, Reach)> = async {
        let window = window_of(&physical, &archive)?;
        plan::refuse_future(&req.target, Timestamp::now(), &window.describe()).map_err(usage)?;
        if let Target::Time(t) = req.target {
            check_in_window(t, &window)?;
        }
        let choice = plan::choose(&cands, &req.target).map_err(|e| match req.target {
            Target::Latest => anyhow!(e),
            _ => usage(e),
        })?;
        let m = (*physical
            .iter()
            .find(|m| m.id == choice.id)
            .expect("chosen from the inventory"))
        .clone();
        let target = match req.target {
            Target::Time(t) => Some(t),
            _ => None,
        };
        let r = reach_toward(&m, &archive, target)?;
        if !r.reaches_stop {
            bail!(
                "backup {} cannot be restored: WAL from its start {} to its stop {} is not all in the archive (missing {})",
                m.id,
                m.wal.as_ref().map(|w| w.start_segment.as_str()).unwrap_or("?"),
                m.wal.as_ref().map(|w| w.stop_segment.as_str()).unwrap_or("?"),
                r.gap_at.as_deref().unwrap_or("?")
            );
        }
        let end = r.end.map_or(m.consistent_at, |e| e.max(m.consistent_at));
        let target_time = match req.target {
            Target::Time(t) => {
                if t > end {
                    // The window said yes, this backup's WAL says no: the
                    // archive changed under us, or a timeline ends early.
                    return Err(usage(format!(
                        "{} is past the WAL reachable from backup {} (it ends at {}); recoverable window: {}",
                        rfc3339(t),
                        m.id,
                        rfc3339(end),
                        window.describe()
                    )));
                }
                t
            }
            _ => end,
        };
        let segs = r.segments_until(match req.target {
            Target::Time(_) => Some(target_time),
            _ => None,
        });
        let tablespaces = place_tablespaces(&m.tablespaces, &req.tablespace_map).map_err(usage)?;
        Ok((
            Plan {
                // Replay stops at the target itself: nothing committed before it is lost.
                gap_seconds: matches!(req.target, Target::Time(_)).then_some(0),
                wal_segments: segs,
                target: req.target_dir.as_ref().map(|d| d.display().to_string()),
                window_start: window.newest().map(|w| w.printed().0),
                window_end: window.newest().map(|w| w.printed().1),
                windows: Some(window.ranges.iter().map(RangeJson::from).collect()),
                last_commit_at: window
                    .newest()
                    .and_then(|r| r.last_commit)
                    .map(crate::timeparse::rfc3339_exact),
                tablespaces,
                ..Plan::new(policy, &m, target_time, req.dry_run)
            },
            m,
            r,
        ))
    }
    .await;
    crate::error::noted(planned, wal_note)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL server tool as the cluster owner: `postgres` when we are
/// root (the server refuses root), else ourselves.
fn owner_command(program: &str) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        std::process::Command::new(program)
    }
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn run(policy: &Policy, req: &Request) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let (plan, m, _reach) = plan(policy, req).await?;
    let dir = match (&req.target_dir, req.dry_run) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => None,
        (None, false) => {
            return Err(usage(
                "a physical backup restores into a data directory: pass --target-dir DIR (empty or absent)",
            ))
        }
    };
    if let Some(d) = &dir {
        if !empty_or_absent(d)? {
            return Err(usage(format!(
                "--target-dir {} is not empty; restore into an empty or new directory",
                d.display()
            )));
        }
    }
    for t in &plan.tablespaces {
        if !empty_or_absent(Path::new(&t.restore_to))? {
            let how = if t.restore_to == t.location {
                "its place on the source"
            } else {
                "per --tablespace-map"
            };
            return Err(usage(format!(
                "tablespace {} would be restored into {} ({how}), which is not empty; pass --tablespace-map {}=NEWDIR",
                t.oid, t.restore_to, t.oid
            )));
        }
    }
    let ids = match (&req.identity, req.dry_run) {
        (None, true) => None,
        (p, _) => Some(crate::restore::identities(p.as_ref())?),
    };
    if let (Some(ids), Some(p)) = (&ids, &req.identity) {
        crate::restore::check_identity(policy, &m, ids, p).await?;
    }
    if req.dry_run {
        return Ok(Outcome {
            plan,
            created_database: false,
            duration_seconds: started.elapsed().as_secs_f64(),
            reached_at: None,
        });
    }
    let dir = std::path::absolute(dir.expect("required unless dry-run"))?;
    let ids = ids.expect("loaded unless dry-run");
    // Prune keeps the backup while this restore reads it.
    let _lease = match &req.lease_catalog {
        Some(c) => Some(crate::lock::lease(c, &policy.name, &m.id)?),
        None => None,
    };
    let identity = std::path::absolute(req.identity.clone().expect("checked"))?;
    if is_root() {
        // The server runs restore_command as postgres: it must read these.
        for p in [&identity, &req.policies_dir] {
            let ok = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-r"])
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(usage(format!(
                    "the postgres user cannot read {}, which restore_command needs; make it readable by postgres (the key only by postgres)",
                    p.display()
                )));
            }
        }
    }
    // Every directory written into, and whether drctl created it.
    let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
    for d in std::iter::once(dir.clone()).chain(
        plan.tablespaces
            .iter()
            .map(|t| PathBuf::from(&t.restore_to)),
    ) {
        dirs.push((d.clone(), !d.exists()));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        // PostgreSQL refuses a data directory others can read.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
    }
    let prepared = async {
        let repo = crate::backup::open_repo(policy).await?;
        extract(&*repo, &m, &plan.tablespaces, &ids, &dir).await?;
        verify_restored(&m, &dir).await?;
        write_recovery(policy, req, &plan, &dir, &identity)
    }
    .await;
    if let Err(e) = prepared {
        // A half-extracted or unproven directory must not be mistaken for
        // a restore.
        for (d, created) in &dirs {
            let _ = clear_dir(d, *created);
        }
        return Err(e);
    }
    // A server that was started keeps its directory (and log) for a look.
    let reached_at = if req.start {
        Some(start_and_wait(&dir, req.port, &plan, req.keep_archiving).await?)
    } else {
        None
    };
    Ok(Outcome {
        plan,
        created_database: false,
        duration_seconds: started.elapsed().as_secs_f64(),
        reached_at,
    })
}

/// Prove a freshly extracted directory with PostgreSQL's own tool: every
/// file the server sent, by size and SHA256 from the server's backup
/// manifest, and the WAL from start to stop parsed by pg_waldump. A
/// difference fails naming the file. Backups taken before drctl asked for
/// the server's manifest have none to check against: a note says so.
pub async fn verify_restored(m: &Manifest, dir: &Path) -> Result<()> {
    if m.server_manifest.is_none() {
        tracing::info!(
            backup = %m.id,
            "this backup has no server manifest (taken by an older drctl): pg_verifybackup skipped"
        );
        return Ok(());
    }
    let run = |parse_wal: bool| {
        let mut c = tokio::process::Command::new("pg_verifybackup");
        c.arg("--quiet");
        if !parse_wal {
            c.arg("--no-parse-wal");
        }
        c.arg(dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
    };
    let out = run(true).await.map_err(|e| {
        anyhow!("cannot run pg_verifybackup to check the restored directory (install the PostgreSQL 15 client tools): {e}")
    })?;
    let out =
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pg_waldump") {
            // pg_waldump comes with the server package; without it the files
            // are still checked, the WAL is not.
            tracing::warn!(
                "pg_waldump is not installed: pg_verifybackup checks the files but not the WAL"
            );
            run(false).await?
        } else {
            out
        };
    if !out.status.success() {
        bail!(
            "backup {}: the restored files differ from what the server sent (pg_verifybackup {}): {}",
            m.id,
            dir.display(),
            crate::pg::stderr_summary(&out.stderr)
        );
    }
    Ok(())
}

fn empty_or_absent(d: &Path) -> Result<bool> {
    if !d.exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(d)
        .with_context(|| format!("cannot read {}", d.display()))?
        .next()
        .is_none())
}

fn clear_dir(dir: &Path, remove_self: bool) -> std::io::Result<()> {
    if remove_self {
        return std::fs::remove_dir_all(dir);
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Extract the data directory into `dir` and each tablespace into its
/// placement, pointing `pg_tblspc/<oid>` there.
pub async fn extract(
    repo: &dyn Repository,
    m: &Manifest,
    places: &[TablespacePlacement],
    ids: &[age::x25519::Identity],
    dir: &Path,
) -> Result<()> {
    let links: BTreeMap<String, PathBuf> = places
        .iter()
        .map(|t| (t.oid.to_string(), PathBuf::from(&t.restore_to)))
        .collect();
    let mut jobs = Vec::new();
    let mut server_manifest = None;
    for obj in &m.objects {
        let into = match obj.name.strip_prefix("tablespace-") {
            None if obj.name == "base" => dir.to_path_buf(),
            None if obj.name == crate::manifest::SERVER_MANIFEST_OBJECT => {
                server_manifest = Some(obj.clone());
                continue;
            }
            None => bail!(
                "backup {} has an object {} this drctl does not know",
                m.id,
                obj.name
            ),
            Some(oid) => links.get(oid).cloned().with_context(|| {
                format!("backup {} has no tablespace entry for {}", m.id, obj.name)
            })?,
        };
        jobs.push((obj.clone(), into));
    }
    if !jobs.iter().any(|(o, _)| o.name == "base") {
        bail!("backup {} has no base object", m.id);
    }
    for (obj, into) in jobs {
        let reader = repo.reader(&obj.key).await?;
        let ids = ids.to_vec();
        let id = m.id.clone();
        let links = if obj.name == "base" {
            links.clone()
        } else {
            BTreeMap::new()
        };
        tokio::task::spawn_blocking(move || -> Result<()> {
            let (pr, mut pw) = pipeline::chunk_pipe(8);
            let into2 = into.clone();
            let untar = std::thread::spawn(move || untar(pr, &into2, &links));
            let bar = crate::progress::bytes_bar(&format!("restore {}", obj.name));
            let r = pipeline::decode(reader, &ids, &obj, &mut pw, false, &|n| bar.set_position(n));
            bar.finish_and_clear();
            // Whatever is buffered goes too (decode has checked it all by now).
            let r = r.and_then(|d| {
                std::io::Write::flush(&mut pw)
                    .map(|()| d)
                    .map_err(DecodeError::Sink)
            });
            drop(pw);
            let u = untar
                .join()
                .map_err(|_| anyhow!("tar extraction panicked"))?;
            let key = &obj.key;
            r.map_err(|e| match e {
                DecodeError::WrongKey => usage(format!("the identity does not match backup {id}")),
                DecodeError::Corrupt(why) => anyhow!("backup {id} is corrupt: {key}: {why}"),
                DecodeError::Sink(e) => anyhow!("extracting into {}: {e}", into.display()),
                DecodeError::Io(e) => {
                    anyhow!("reading {key} of backup {id} from the repository: {e}")
                }
            })?;
            u.with_context(|| format!("extracting into {}", into.display()))?;
            Ok(())
        })
        .await
        .context("extraction panicked")??;
    }
    if let Some(obj) = server_manifest {
        // Where pg_basebackup leaves it too; the server ignores it.
        let reader = repo.reader(&obj.key).await?;
        let (ids, id, path) = (ids.to_vec(), m.id.clone(), dir.join("backup_manifest"));
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            pipeline::decode(reader, &ids, &obj, &mut f, false, &|_| {})
                .map_err(|e| anyhow!("backup {id}: its server manifest ({}): {e}", obj.key))?;
            Ok(())
        })
        .await
        .context("extraction panicked")??;
    }
    Ok(())
}

/// Unpack a tar stream; `pg_tblspc/<oid>` links point where `links` says.
fn untar(
    src: pipeline::ChunkReader,
    into: &Path,
    links: &BTreeMap<String, PathBuf>,
) -> std::io::Result<()> {
    let mut a = tar::Archive::new(src);
    a.set_preserve_permissions(true);
    a.set_overwrite(false);
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
        let is_link = e.header().entry_type().is_symlink();
        if let (true, Some(first), Some(oid), None) =
            (is_link, parts.next(), parts.next(), parts.next())
        {
            if first == "pg_tblspc" {
                if let Some(to) = links.get(oid.as_ref()) {
                    std::fs::create_dir_all(into.join("pg_tblspc"))?;
                    std::os::unix::fs::symlink(to, into.join("pg_tblspc").join(oid.as_ref()))?;
                    continue;
                }
            }
        }
        if e.header().entry_type().is_file() {
            let mode = e.header().mode().unwrap_or(0o600);
            write_file(&mut e, mode, into, &path)?;
        } else {
            e.unpack_in(into)?;
        }
    }
    Ok(())
}

/// Write one regular file of the archive, asking the kernel to write it
/// out as it goes. PostgreSQL fsyncs the whole data directory when it
/// starts on a restored backup; data already on disk makes that pass short
/// instead of a long stall after extraction, and the disk works while
/// decompression does (pgBackRest syncs as it restores too).
fn write_file(
    e: &mut dyn std::io::Read,
    mode: u32,
    into: &Path,
    path: &Path,
) -> std::io::Result<()> {
    use crate::repo::fs::start_writeback;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // What tar's unpack_in guards against: nothing may land outside `into`.
    if !path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(std::io::Error::other(format!(
            "archive entry {} points outside the target directory",
            path.display()
        )));
    }
    let dest = into.join(path);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(&dest)?;
    const WRITEBACK_EVERY: u64 = 8 << 20;
    let mut buf = vec![0u8; 1 << 20];
    let (mut written, mut flushed) = (0u64, 0u64);
    loop {
        let n = match e.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        f.write_all(&buf[..n])?;
        written += n as u64;
        if written - flushed >= WRITEBACK_EVERY {
            start_writeback(&f, flushed, written - flushed);
            flushed = written;
        }
    }
    start_writeback(&f, flushed, 0);
    Ok(())
}

fn write_recovery(
    policy: &Policy,
    req: &Request,
    plan: &Plan,
    dir: &Path,
    identity: &Path,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the drctl executable")?;
    let restore_command = format!(
        "{} --policies {} wal-fetch {} %f %p --identity {}",
        shell_word(&exe.display().to_string()),
        shell_word(&req.policies_dir.display().to_string()),
        policy.name,
        shell_word(&identity.display().to_string())
    );
    let mut conf = format!(
        "\n# drctl restore of backup {} ({})\nrestore_command = {}\nrecovery_target_timeline = '{}'\n",
        plan.backup_id,
        rfc3339(Timestamp::now()),
        sql_quote(&restore_command),
        recovery_timeline(plan)
    );
    if let Target::Time(t) = req.target {
        // PostgreSQL rejects some ISO forms; this one it accepts.
        let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
        conf.push_str(&format!(
            "recovery_target_time = '{}+00'\nrecovery_target_action = 'promote'\n",
            utc.strftime("%Y-%m-%d %H:%M:%S%.6f")
        ));
    }
    if !req.keep_archiving {
        // The source's ALTER SYSTEM settings came along in this file; the
        // last line wins, so a restored copy cannot push its own timeline
        // into the production archive, whoever starts it and how.
        conf.push_str(ARCHIVING_OFF);
    }
    // pg_ctl restart reuses the options of the last start, which were the
    // source's; a restored directory starts from its own configuration.
    match std::fs::remove_file(dir.join("postmaster.opts")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("cannot remove the stale postmaster.opts");
        }
        _ => {}
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("postgresql.auto.conf"))?;
    f.write_all(conf.as_bytes())?;
    std::fs::write(dir.join("recovery.signal"), b"")?;
    if is_root() {
        for d in std::iter::once(dir.to_path_buf()).chain(
            plan.tablespaces
                .iter()
                .map(|t| PathBuf::from(&t.restore_to)),
        ) {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&d)
                .status()?;
            if !st.success() {
                bail!("cannot give {} to the postgres user", d.display());
            }
        }
    }
    Ok(())
}

/// Written last into a restored cluster's postgresql.auto.conf unless
/// `--keep-archiving`.
const ARCHIVING_OFF: &str = "# a restored copy never archives into the source's repository;\n# remove this line (or restore with --keep-archiving) only when this server replaces the primary\narchive_mode = 'off'\n";

/// The timeline recovery follows: the one the plan's last segment is on,
/// which holds the target, rather than 'latest' (which would follow any
/// timeline a restored copy once pushed into the archive).
fn recovery_timeline(plan: &Plan) -> String {
    plan.wal_segments
        .last()
        .and_then(|n| wal::parse(n).ok())
        .map(|w| w.timeline.to_string())
        .unwrap_or_else(|| "current".into())
}

fn shell_word(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@".contains(&b))
    {
        s.to_string()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    }
}

/// Start the restored server (archiving off, so it can never write into
/// the production archive), wait for recovery to finish and promote, and
/// return the time it reached.
async fn start_and_wait(
    dir: &Path,
    port: Option<u16>,
    plan: &Plan,
    keep_archiving: bool,
) -> Result<String> {
    let port = port.unwrap_or(5432);
    let log = dir.join("drctl-recovery.log");
    let archiving = if keep_archiving {
        ""
    } else {
        " -c archive_mode=off"
    };
    let opts = format!(
        "-p {port}{archiving} -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c logging_collector=off"
    );
    let start = || {
        owner_command("pg_ctl")
            .arg("-D")
            .arg(dir)
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .args(["-w", "-t", "3600", "start"])
            .output()
            .context("cannot run pg_ctl (is the PostgreSQL server installed?)")
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let url = crate::pg::ConnUrl::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .map_err(|e| anyhow!(e))?;
    let conn = crate::pg::Conn::new(url, None)?;
    let alive = || {
        owner_command("pg_ctl")
            .arg("-D")
            .arg(dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Started and promoted: what it reached. `seen` skips the log of an
    // earlier start.
    let (start, log_text, conn, alive) = (&start, &log_text, &conn, &alive);
    let run = |seen: usize| async move {
        let out = start()?;
        let later = || log_text().get(seen..).unwrap_or_default().to_string();
        if !out.status.success() {
            // Recovery can end before pg_ctl sees the server ready.
            if ended_in_log(&later()) {
                return Err(EndedBeforeTarget(plan.target_time.clone()).into());
            }
            bail!(
                "the restored server did not start: {}",
                last_error(&later())
                    .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
            );
        }
        wait_promoted(conn, later, alive, &plan.target_time).await
    };
    let mut r = run(0).await;
    if r.as_ref().is_err_and(ended_before_target) {
        // The archive holds WAL past the target with no commit after the
        // last one replayed: the end of the archive is the state at the
        // target. Recover to it instead of failing.
        let stopped = crate::poll::until(Duration::from_secs(60), || async { !alive() }).await;
        if stopped.is_ok() {
            recover_to_end(dir)?;
            r = run(log_text().len())
                .await
                .map(|reached| no_commit_after(&plan.target_time, &reached));
        }
    }
    // Segments prefetched past the target are of no further use.
    let _ = std::fs::remove_dir_all(dir.join("drctl-prefetch"));
    r.map_err(|e| anyhow!("{e:#} (server log: {})", log.display()))
}

/// PostgreSQL found no commit after the target in all the WAL the archive
/// gave it. drctl's planner checked that WAL written at or after the
/// target is archived, so nothing committed between the last commit and
/// the target: the end of the archive is the state at the target.
#[derive(Debug, thiserror::Error)]
#[error("recovery found no transaction committed after {0} in the archived WAL")]
pub struct EndedBeforeTarget(String);

/// PostgreSQL's words when recovery ran out of WAL before its target.
pub fn ended_in_log(log: &str) -> bool {
    log.contains("recovery ended before configured recovery target was reached")
}

pub fn ended_before_target(e: &anyhow::Error) -> bool {
    e.downcast_ref::<EndedBeforeTarget>().is_some()
}

/// Let a restored cluster whose recovery stopped short of its target
/// recover to the end of the archive on its next start.
pub fn recover_to_end(dir: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("postgresql.auto.conf"))
        .context("cannot update postgresql.auto.conf")?;
    f.write_all(
        b"# drctl: no commit after the target in the archive; its end is the same state\nrecovery_target_time = ''\n",
    )?;
    // drctl's archive_mode line, if any, stays the last one: still in force.
    Ok(())
}

/// What a restore reached when it recovered to the end of the archive
/// because no commit followed the target.
pub fn no_commit_after(target: &str, reached: &str) -> String {
    format!(
        "no transaction committed between the last commit and the target {target}: recovered to the end of the archived WAL, the same state ({reached})"
    )
}

/// Wait until a server recovering a restored backup has promoted; the point
/// it reached, from its log. Recovery that ends before the target, or a
/// server that stops, is an error.
pub async fn wait_promoted(
    conn: &crate::pg::Conn,
    log_text: impl Fn() -> String,
    mut alive: impl FnMut() -> bool,
    target_time: &str,
) -> Result<String> {
    loop {
        let text = log_text();
        if ended_in_log(&text) {
            return Err(EndedBeforeTarget(target_time.to_string()).into());
        }
        match conn.query_one("select pg_is_in_recovery()", &[]).await {
            Ok(v) if v == "f" => break,
            Ok(_) => {}
            Err(e) => {
                if !alive() {
                    // It may have stopped for running out of WAL: the log
                    // says so after the first look above.
                    let text = log_text();
                    if ended_in_log(&text) {
                        return Err(EndedBeforeTarget(target_time.to_string()).into());
                    }
                    bail!(
                        "the restored server stopped during recovery: {}",
                        last_error(&text).unwrap_or_else(|| format!("{e:#}"))
                    );
                }
            }
        }
        if crate::cancel::requested() {
            bail!("cancelled");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(reached(&log_text()).unwrap_or_else(|| "end of the archive".into()))
}

fn last_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| l.contains("FATAL") || l.contains("PANIC"))
        .map(|l| l.trim().to_string())
}

/// The point recovery reached, from the server's own log.
pub fn reached(log: &str) -> Option<String> {
    for l in log.lines().rev() {
        if let Some(i) = l.find("recovery stopping before commit of transaction") {
            if let Some(t) = l[i..].split(", time ").nth(1) {
                return Some(format!("before a commit at {}", t.trim()));
            }
        }
        if let Some(t) = l
            .split("last completed transaction was at log time ")
            .nth(1)
        {
            return Some(format!("last transaction committed at {}", t.trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        format!("2026-11-22T{s}Z").parse().unwrap()
    }

    fn physical(start: &str, stop: &str, tli: u32, at: &str) -> Manifest {
        let json = format!(
            r#"{{"format":1,"id":"b","policy":"p","method":"physical","started_at":"{a}","finished_at":"{a}","consistent_at":"{a}",
            "source":{{"database":"d","host":"h","server_version":"15","server_version_num":150000}},
            "wal":{{"timeline":{tli},"start_lsn":"0/0","stop_lsn":"0/0","start_segment":"{start}","stop_segment":"{stop}","segment_size":16777216}},
            "objects":[],"compression":{{"algorithm":"zstd","level":3}},"encryption":{{"algorithm":"age","recipients":[]}},
            "row_counts":"off","tables":[],"drctl_version":"0"}}"#,
            a = ts(at)
        );
        Manifest::from_json(json.as_bytes()).unwrap()
    }

    fn reach_ending(end: &str, stop: bool, commit: Option<&str>) -> Reach {
        Reach {
            run: Vec::new(),
            segment_size: wal::DEFAULT_SEGMENT_SIZE,
            end: Some(ts(end)),
            last_commit: commit.map(ts),
            gap_at: None,
            gap: None,
            reaches_stop: stop,
        }
    }

    fn range(start: &str, end: &str, commit: Option<&str>) -> Range {
        Range {
            start: ts(start),
            end: ts(end),
            last_commit: commit.map(ts),
        }
    }

    #[test]
    fn ranges_merge_overlaps_split_at_gaps_and_never_end_before_they_start() {
        let r = [
            reach_ending("11:00:00", true, Some("10:59:00")),
            reach_ending("12:00:00", true, Some("11:58:00")),
            reach_ending("14:00:00", true, None),
            // Its WAL is not all archived yet: it reaches nothing.
            reach_ending("16:00:00", false, Some("15:59:00")),
            // Its last segment was written before its consistent point
            // (an upper bound): just that point.
            reach_ending("17:00:04", true, None),
        ];
        let starts = ["10:00:00", "10:30:00", "13:00:00", "15:00:00", "17:00:05"];
        let input: Vec<(Timestamp, &Reach)> = starts.iter().map(|s| ts(s)).zip(r.iter()).collect();
        let got = ranges(&input);
        assert_eq!(
            got,
            vec![
                range("10:00:00", "12:00:00", Some("11:58:00")),
                range("13:00:00", "14:00:00", None),
                range("17:00:05", "17:00:05", None),
            ]
        );
        assert!(got.iter().all(|r| r.start <= r.end));
        assert!(ranges(&[]).is_empty());
        let json = RangeJson::from(&got[0]);
        assert_eq!(json.last_commit_at.as_deref(), Some("2026-11-22T11:58:00Z"));
    }

    #[test]
    fn printed_bounds_are_inside_the_range() {
        let r = Range {
            start: "2026-11-22T10:00:00.5Z".parse().unwrap(),
            end: "2026-11-22T10:00:03.5Z".parse().unwrap(),
            last_commit: None,
        };
        assert_eq!(
            r.printed(),
            ("2026-11-22T10:00:01Z".into(), "2026-11-22T10:00:03Z".into())
        );
        // No whole second inside: exact.
        let r = Range {
            start: "2026-11-22T10:00:00.5Z".parse().unwrap(),
            end: "2026-11-22T10:00:00.7Z".parse().unwrap(),
            last_commit: None,
        };
        assert_eq!(
            r.printed(),
            (
                "2026-11-22T10:00:00.5Z".into(),
                "2026-11-22T10:00:00.7Z".into()
            )
        );
    }

    #[test]
    fn targets_in_gaps_are_refused_naming_the_gap_and_both_sides() {
        let w = Window {
            ranges: vec![
                range("10:00:00", "11:00:00", None),
                range("12:00:00", "13:00:00", None),
            ],
            gaps: vec![Gap {
                first_missing: "000000010000000000000005".into(),
                last_missing: "000000010000000000000006".into(),
            }],
            per_backup: Vec::new(),
            newest_segment: None,
        };
        assert!(check_in_window(ts("10:30:00"), &w).is_ok());
        assert!(check_in_window(ts("13:00:00"), &w).is_ok());
        let e = format!("{:#}", check_in_window(ts("11:30:00"), &w).unwrap_err());
        assert!(
            e.contains("000000010000000000000005 .. 000000010000000000000006"),
            "{e}"
        );
        assert!(
            e.contains("2026-11-22T11:00:00Z and 2026-11-22T12:00:00Z"),
            "{e}"
        );
        let e = format!("{:#}", check_in_window(ts("09:00:00"), &w).unwrap_err());
        assert!(e.contains("before the oldest base backup"), "{e}");
        let e = format!("{:#}", check_in_window(ts("14:00:00"), &w).unwrap_err());
        assert!(e.contains("after the newest archived WAL"), "{e}");
        let e = format!(
            "{:#}",
            check_in_window(ts("14:00:00"), &Window::default()).unwrap_err()
        );
        assert!(e.contains("no recoverable window yet"), "{e}");
    }

    #[test]
    fn recovery_follows_the_timeline_that_holds_the_target() {
        // Timeline 1 has segments 1..=6; a restored copy branched at
        // segment 3 into timeline 2 and archived 3..=4 there.
        let mut a = Archive::default();
        for n in 1..=6 {
            a.segments.insert((1, n), Some(ts(&format!("10:0{n}:00"))));
        }
        for n in 3..=4 {
            a.segments.insert((2, n), Some(ts(&format!("11:0{n}:00"))));
        }
        a.histories.insert(2, vec![(1, "0/3000100".into())]);
        let m = physical(
            "000000010000000000000001",
            "000000010000000000000001",
            1,
            "10:00:30",
        );
        let name = |r: &Reach| r.segments_until(None).last().cloned().unwrap();
        // Production went on on timeline 1 past the target: stay there.
        let r = reach_toward(&m, &a, Some(ts("10:05:30"))).unwrap();
        assert_eq!(name(&r), "000000010000000000000006");
        assert!(r.run.iter().all(|(tli, _, _)| *tli == 1));
        // Past the end of timeline 1 only timeline 2 holds the target.
        let r = reach_toward(&m, &a, Some(ts("11:03:30"))).unwrap();
        assert_eq!(name(&r), "000000020000000000000004");
        // Without a target: the newest timeline, as before.
        let r = reach(&m, &a).unwrap();
        assert_eq!(r.run.last().unwrap().0, 2);
    }

    #[test]
    fn tablespaces_go_where_mapped_else_home() {
        let ts = vec![
            Tablespace {
                oid: 16390,
                location: "/srv/ts1".into(),
            },
            Tablespace {
                oid: 16391,
                location: "/srv/ts2/".into(),
            },
        ];
        let p = place_tablespaces(&ts, &["/srv/ts2=/restore/ts2".into()]).unwrap();
        assert_eq!(p[0].restore_to, "/srv/ts1");
        assert_eq!(p[1].restore_to, "/restore/ts2");
        let p = place_tablespaces(&ts, &["16390=/r/a/".into(), "16391=/r/b".into()]).unwrap();
        assert_eq!(
            (p[0].restore_to.as_str(), p[1].restore_to.as_str()),
            ("/r/a", "/r/b")
        );
        let e = place_tablespaces(&ts, &["16399=/r/a".into()]).unwrap_err();
        assert!(
            e.contains("no tablespace 16399") && e.contains("16390 at /srv/ts1"),
            "{e}"
        );
        assert!(place_tablespaces(&ts, &["16390=relative".into()])
            .unwrap_err()
            .contains("absolute"));
        assert!(place_tablespaces(&ts, &["16390".into()])
            .unwrap_err()
            .contains("OLD=NEW"));
        assert!(
            place_tablespaces(&ts, &["16390=/r/a".into(), "/srv/ts1=/r/b".into()])
                .unwrap_err()
                .contains("mapped twice")
        );
        assert!(
            place_tablespaces(&ts, &["16390=/srv/ts2".into(), "16391=/srv/ts2".into()])
                .unwrap_err()
                .contains("two tablespaces")
        );
        assert!(place_tablespaces(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn restored_files_land_inside_the_target_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
        write_file(&mut &data[..], 0o600, dir.path(), Path::new("base/1/1234")).unwrap();
        let p = dir.path().join("base/1/1234");
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for bad in ["../escape", "/etc/escape", "base/../../escape"] {
            let e = write_file(&mut &b"x"[..], 0o600, dir.path(), Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("outside the target"), "{bad}: {e}");
        }
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn reached_point_from_the_log() {
        let log = "LOG:  starting point-in-time recovery to 2026-11-22 10:00:00+00\n\
                   LOG:  recovery stopping before commit of transaction 745, time 2026-11-22 10:00:01.5+00\n\
                   LOG:  redo done at 0/5000100\n\
                   LOG:  last completed transaction was at log time 2026-11-22 09:59:59.1+00\n";
        assert_eq!(
            reached(log).unwrap(),
            "last transaction committed at 2026-11-22 09:59:59.1+00"
        );
        assert!(reached("nothing").is_none());
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/bin/drctl"), "/usr/bin/drctl");
        assert_eq!(shell_word("/a b/$x"), "\"/a b/\\$x\"");
    }
}
