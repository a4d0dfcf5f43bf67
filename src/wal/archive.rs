//! What the WAL archive of a physical policy can recover: the committed
//! sidecars by timeline (`Archive`), how far each base backup's WAL reaches
//! (`Reach`), and the recoverable window (`Window`: ranges and the gaps
//! between them). Read by restores, drills, verify, prune, status and list.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use jiff::Timestamp;

use crate::error::usage;
use crate::policy::Method;
use crate::repo::inventory;
use crate::repo::manifest::Manifest;
use crate::repo::Repository;
use crate::time::parse::rfc3339;
use crate::wal::{self, Sidecar};

/// The archive as the planner sees it: committed sidecars by timeline.
#[derive(Default)]
pub struct Archive {
    /// (timeline, segno) → last write time, for every committed segment.
    pub segments: BTreeMap<(u32, u64), Option<Timestamp>>,
    /// (timeline, segno) → its last commit, where wal-push recorded one.
    pub commits: BTreeMap<(u32, u64), Timestamp>,
    pub histories: BTreeMap<u32, Vec<(u32, String)>>,
    /// Every committed file's object, as its sidecar describes it.
    pub objects: Vec<crate::repo::manifest::ObjectEntry>,
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
            wal::FileKind::Segment => {
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
            wal::FileKind::History => {
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
            last_commit_at: r.last_commit.map(crate::time::parse::rfc3339_exact),
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
                crate::time::parse::rfc3339_exact(self.start),
                crate::time::parse::rfc3339_exact(self.end),
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
                        crate::time::parse::rfc3339_exact(c)
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

pub(crate) fn window_of(physical: &[&Manifest], archive: &Archive) -> Result<Window> {
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
pub(crate) fn check_in_window(t: Timestamp, w: &Window) -> Result<()> {
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
}
