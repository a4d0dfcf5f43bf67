//! `status`: per policy, what an on-call engineer (or a scraper) needs to
//! know before a restore is needed: the last good backup, the data that
//! would be lost right now (RPO), the recoverable window, failures since the
//! last success, and the next scheduled run.
//!
//! The catalog supplies history (it is the only place failures live); for
//! physical policies the repository supplies the window, since the WAL
//! archive moves on without drctl's catalog hearing of it.

use anyhow::Result;
use jiff::Timestamp;
use serde::Serialize;

use crate::catalog::{BackupRow, Catalog};
use crate::policy::{Method, Policy};
use crate::time::parse::rfc3339;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyStatus {
    pub policy: String,
    pub method: Method,
    /// Consistent point of the newest complete backup.
    pub last_backup_at: Option<String>,
    pub last_backup_id: Option<String>,
    /// The host that ran it (`hostname`; a fleet's worker).
    pub last_backup_host: Option<String>,
    /// Now minus the newest recoverable point: what a disaster now would lose.
    pub rpo_seconds: Option<i64>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// Physical: every continuous recoverable range, oldest first; WAL gaps
    /// split it, and window_start/window_end are the newest range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<crate::wal::archive::RangeJson>>,
    /// Physical: the last commit in the newest range (when the archive
    /// recorded commits): between it and window_end nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
    /// Physical: the holes in the WAL archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_gaps: Option<Vec<crate::wal::archive::Gap>>,
    pub failures_since_success: u32,
    pub last_error: Option<String>,
    pub last_drill_at: Option<String>,
    pub last_drill_passed: Option<bool>,
    /// RTO and RPO measured by the newest drill.
    pub last_drill_rto_seconds: Option<f64>,
    pub last_drill_rpo_seconds: Option<f64>,
    /// The last drills' RTO and RPO (up to `TREND_DRILLS`), oldest first,
    /// with their median and maximum: whether restores are getting slower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill_trend: Option<DrillTrend>,
    pub next_backup_at: Option<String>,
    /// Physical: WAL archiving health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveHealth>,
    /// Each `[[copy]]` against the primary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyStatus>,
    /// Why part of this could not be determined (the repository was not
    /// readable, say): an unknown state is a failure, not a success.
    pub error: Option<String>,
    /// Leases held on this policy's runs as the catalog last heard of
    /// them (S3 repositories; a fleet's workers): who runs it now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::catalog::LeaseRow>,
}

pub use crate::pg::archiver::ArchiveHealth;

/// How many drills the trend looks back over.
pub const TREND_DRILLS: i64 = 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillPoint {
    pub at: String,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillTrend {
    pub drills: Vec<DrillPoint>,
    pub rto_p50_seconds: Option<f64>,
    pub rto_max_seconds: Option<f64>,
    pub rpo_p50_seconds: Option<f64>,
    pub rpo_max_seconds: Option<f64>,
}

/// The median (mean of the two middle values when even) and maximum of
/// the values present.
pub fn p50_max(values: impl Iterator<Item = Option<f64>>) -> (Option<f64>, Option<f64>) {
    let mut v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (None, None);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let p50 = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (Some(p50), v.last().copied())
}

/// The trend of `drills` (oldest first, as `Catalog::recent_drills`
/// gives them).
pub fn trend(drills: &[crate::catalog::DrillRow]) -> Option<DrillTrend> {
    if drills.is_empty() {
        return None;
    }
    let (rto_p50_seconds, rto_max_seconds) = p50_max(drills.iter().map(|d| d.rto_seconds));
    let (rpo_p50_seconds, rpo_max_seconds) = p50_max(drills.iter().map(|d| d.rpo_seconds));
    Some(DrillTrend {
        drills: drills
            .iter()
            .map(|d| DrillPoint {
                at: rfc3339(d.finished_at),
                passed: d.passed,
                rto_seconds: d.rto_seconds,
                rpo_seconds: d.rpo_seconds,
            })
            .collect(),
        rto_p50_seconds,
        rto_max_seconds,
        rpo_p50_seconds,
        rpo_max_seconds,
    })
}

/// Where one `[[copy]]` stands against the primary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CopyStatus {
    pub name: String,
    /// The newest backup the copy holds.
    pub last_backup_id: Option<String>,
    pub last_backup_at: Option<String>,
    /// Complete backups of the primary the copy does not hold.
    pub missing_backups: u32,
    /// How far the copy's newest backup is behind the primary's (0: level;
    /// None: it holds none).
    pub lag_seconds: Option<i64>,
    /// WAL files the copy is owed (physical policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_backlog: Option<u64>,
}

/// A copy's standing from the policy's catalog rows and, per backup id,
/// the copies that hold it.
pub fn copy_status(
    name: &str,
    rows: &[BackupRow],
    holds: &std::collections::HashMap<String, Vec<String>>,
) -> CopyStatus {
    let complete: Vec<&BackupRow> = rows.iter().filter(|r| r.status == "complete").collect();
    let has = |r: &&&BackupRow| {
        holds
            .get(&r.id)
            .is_some_and(|c| c.iter().any(|c| c == name))
    };
    let newest_primary = complete.iter().filter_map(|r| r.consistent_at).max();
    let newest_copy = complete.iter().filter(has).max_by_key(|r| r.consistent_at);
    CopyStatus {
        name: name.to_string(),
        last_backup_id: newest_copy.map(|r| r.id.clone()),
        last_backup_at: newest_copy.and_then(|r| r.consistent_at).map(rfc3339),
        missing_backups: complete.iter().filter(|r| !has(r)).count() as u32,
        lag_seconds: newest_copy.and_then(|r| r.consistent_at).map(|c| {
            newest_primary
                .map_or(0, |p| p.duration_since(c).as_secs())
                .max(0)
        }),
        wal_backlog: None,
    }
}

/// What a policy's source says about its archiver, bounded in time: None
/// when it does not answer.
pub async fn server_archive_health(p: &Policy) -> Option<ArchiveHealth> {
    let conn = p.source_conn().ok()?;
    crate::pg::archiver::health(&conn).await
}

/// Status from the catalog rows of one policy (newest first, as
/// `Catalog::list` returns them) and, for physical policies, the archive's
/// window.
pub fn summarize(
    policy: &Policy,
    rows: &[BackupRow],
    physical_window: Option<(Option<Timestamp>, Option<Timestamp>)>,
    now: Timestamp,
) -> PolicyStatus {
    let complete: Vec<&BackupRow> = rows.iter().filter(|r| r.status == "complete").collect();
    let newest = complete.iter().filter_map(|r| r.consistent_at).max();
    let oldest = complete.iter().filter_map(|r| r.consistent_at).min();
    let last = complete.iter().max_by_key(|r| r.consistent_at);
    let last_success_started = last.and_then(|r| r.started_at);
    let failures: Vec<&BackupRow> = rows
        .iter()
        .filter(|r| r.status == "failed")
        .filter(|r| match (r.started_at, last_success_started) {
            (Some(f), Some(s)) => f > s,
            _ => true,
        })
        .collect();
    let (start, end) = match physical_window {
        Some(w) => w,
        None => (oldest, newest),
    };
    let next = policy.backup.schedule.as_deref().and_then(|s| {
        crate::time::schedule::Schedule::parse(s)
            .ok()?
            .next_after(now, &policy.timezone())
    });
    PolicyStatus {
        policy: policy.name.clone(),
        method: policy.backup.method,
        last_backup_at: newest.map(rfc3339),
        last_backup_id: last.map(|r| r.id.clone()),
        last_backup_host: last.and_then(|r| r.host.clone()),
        rpo_seconds: end.map(|e| now.duration_since(e).as_secs().max(0)),
        // Dumps: rounded up, inside the window (physical ranges are
        // printed inwards by the archive's own rule below).
        window_start: start.map(crate::time::parse::rfc3339_ceil),
        window_end: end.map(crate::time::parse::rfc3339_ceil),
        windows: None,
        last_commit_at: None,
        wal_gaps: None,
        failures_since_success: failures.len() as u32,
        last_error: failures
            .iter()
            .max_by_key(|r| r.started_at)
            .and_then(|r| r.error.clone())
            .map(|e| e.lines().next().unwrap_or("").to_string()),
        last_drill_at: None,
        last_drill_passed: None,
        last_drill_rto_seconds: None,
        last_drill_rpo_seconds: None,
        drill_trend: None,
        next_backup_at: next.map(rfc3339),
        archive: None,
        copies: Vec::new(),
        error: None,
        leases: Vec::new(),
    }
}

pub async fn collect(
    policies: &[Policy],
    catalog: &Catalog,
    now: Timestamp,
) -> Result<Vec<PolicyStatus>> {
    let rows = catalog.status_rows().await?;
    let drills = catalog.last_drills().await?;
    collect_with(policies, catalog, now, rows, &drills).await
}

/// Newest and last passed drill per policy (`Catalog::last_drills`).
pub type LastDrills =
    std::collections::HashMap<String, (crate::catalog::DrillRow, Option<crate::catalog::DrillRow>)>;

/// `collect` over rows a caller already read (`Catalog::status_rows`,
/// `Catalog::last_drills`): /metrics needs them too, and each is a scan
/// of the whole history.
pub async fn collect_with(
    policies: &[Policy],
    catalog: &Catalog,
    now: Timestamp,
    mut all: std::collections::HashMap<String, Vec<BackupRow>>,
    drills: &LastDrills,
) -> Result<Vec<PolicyStatus>> {
    let recent = catalog.recent_drills(TREND_DRILLS).await?;
    let holds = catalog.copies(None).await?;
    let mut leases = catalog.leases().await?;
    let shared = Shared {
        now,
        drills,
        recent: &recent,
        holds: &holds,
    };
    let mut out = Vec::with_capacity(policies.len());
    // Physical policies read their repository and ask their source, each
    // bounded in time: a few at once, so one slow source does not hold
    // up every other policy's row.
    for chunk in policies.chunks(STATUS_CONCURRENCY) {
        let each = chunk.iter().map(|p| {
            let rows = all.remove(&p.name).unwrap_or_default();
            let leases = leases.remove(&p.name).unwrap_or_default();
            one(p, rows, leases, &shared)
        });
        out.extend(futures_util::future::join_all(each.collect::<Vec<_>>()).await);
    }
    Ok(out)
}

/// How many policies' repositories and sources are asked at once.
const STATUS_CONCURRENCY: usize = 16;

/// What every policy's status reads from the catalog, read once.
struct Shared<'a> {
    now: Timestamp,
    drills: &'a LastDrills,
    recent: &'a std::collections::HashMap<String, Vec<crate::catalog::DrillRow>>,
    holds: &'a std::collections::HashMap<String, Vec<String>>,
}

/// One policy's status: its catalog rows, and for physical policies its
/// WAL archive and its source's archiver.
async fn one(
    p: &Policy,
    rows: Vec<BackupRow>,
    leases: Vec<crate::catalog::LeaseRow>,
    c: &Shared<'_>,
) -> PolicyStatus {
    let (now, drills, recent, holds) = (c.now, c.drills, c.recent, c.holds);
    let mut window = None;
    let mut error = None;
    if p.backup.method == Method::Physical {
        let w = async {
            let repo = crate::repo::open_for(p).await?;
            crate::wal::archive::window(&*repo, &p.name).await
        }
        .await;
        match w {
            Ok(w) => window = Some(w),
            Err(e) => error = Some(format!("cannot read the WAL archive: {e:#}")),
        }
    }
    let newest = window.as_ref().map(|w| {
        // No range yet (the first base backup's WAL is not archived):
        // no window, rather than the catalog's guess.
        let r = w.newest();
        (r.map(|r| r.start), r.map(|r| r.end))
    });
    let mut s = summarize(p, &rows, newest, now);
    s.leases = leases;
    if let Some(w) = &window {
        if let Some(r) = w.newest() {
            (s.window_start, s.window_end) = {
                let (a, b) = r.printed();
                (Some(a), Some(b))
            };
            s.last_commit_at = r.last_commit.map(crate::time::parse::rfc3339_exact);
        }
        s.windows = Some(w.ranges.iter().map(Into::into).collect());
        s.wal_gaps = Some(w.gaps.clone());
        s.archive = Some(match server_archive_health(p).await {
            Some(h) => h,
            None => ArchiveHealth {
                last_archived_wal: w.newest_segment.as_ref().map(|n| n.0.clone()),
                last_archived_at: w.newest_segment.as_ref().and_then(|n| n.1).map(rfc3339),
                from: "repository",
                ..ArchiveHealth::default()
            },
        });
    }
    // The primary holds each copy's WAL backlog: opened once for all.
    let primary = match p.backup.method {
        Method::Physical if !p.copies.is_empty() => crate::repo::open_for(p).await.ok(),
        _ => None,
    };
    for c in &p.copies {
        let mut cs = copy_status(&c.name, &rows, holds);
        if let Some(repo) = &primary {
            let prefix = crate::copy::backlog_prefix(&p.name, &c.name);
            cs.wal_backlog = repo.list(&prefix).await.ok().map(|l| l.len() as u64);
        }
        s.copies.push(cs);
    }
    if let Some((last, _)) = drills.get(&p.name) {
        s.last_drill_at = Some(rfc3339(last.finished_at));
        s.last_drill_passed = Some(last.passed);
        s.last_drill_rto_seconds = last.rto_seconds;
        s.last_drill_rpo_seconds = last.rpo_seconds;
    }
    s.drill_trend = recent.get(&p.name).and_then(|d| trend(d));
    if error.is_some() {
        s.rpo_seconds = None;
        s.error = error;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_maximum_of_the_drills_that_measured() {
        let v = |xs: &[Option<f64>]| p50_max(xs.iter().copied());
        assert_eq!(v(&[]), (None, None));
        assert_eq!(v(&[None, None]), (None, None));
        assert_eq!(
            v(&[Some(3.0), None, Some(1.0), Some(2.0)]),
            (Some(2.0), Some(3.0))
        );
        assert_eq!(v(&[Some(4.0), Some(1.0)]), (Some(2.5), Some(4.0)));
    }

    proptest::proptest! {
        #[test]
        fn the_median_lies_between_the_least_and_the_most(xs in proptest::collection::vec(0.0f64..1e6, 1..30)) {
            let (p50, max) = p50_max(xs.iter().map(|x| Some(*x)));
            let (p50, max) = (p50.unwrap(), max.unwrap());
            let least = xs.iter().copied().fold(f64::INFINITY, f64::min);
            proptest::prop_assert!(xs.iter().all(|x| *x <= max));
            proptest::prop_assert!(least <= p50 && p50 <= max);
        }
    }

    fn row(id: &str, status: &str, started: &str, consistent: Option<&str>) -> BackupRow {
        BackupRow {
            id: id.into(),
            policy: "orders".into(),
            method: "dump".into(),
            status: status.into(),
            started_at: Some(started.parse().unwrap()),
            finished_at: None,
            consistent_at: consistent.map(|c| c.parse().unwrap()),
            stored_bytes: None,
            source_bytes: None,
            repository: None,
            error: (status == "failed").then(|| format!("{id} broke\ndetail")),
            pinned: false,
            kind: "full".into(),
            parent: None,
            host: None,
        }
    }

    fn policy() -> Policy {
        crate::policy::parse(
            std::path::Path::new("orders.toml"),
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\nschedule = \"0 2 * * *\"\n[repository]\nurl = \"file:///tmp/r\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn a_copy_is_level_or_behind_by_what_it_lacks() {
        let rows = vec![
            row(
                "b3",
                "complete",
                "2026-11-22T03:00:00Z",
                Some("2026-11-22T03:00:05Z"),
            ),
            row("b2", "failed", "2026-11-22T02:00:00Z", None),
            row(
                "b1",
                "complete",
                "2026-11-22T01:00:00Z",
                Some("2026-11-22T01:00:05Z"),
            ),
        ];
        let mut holds = std::collections::HashMap::new();
        holds.insert("b1".to_string(), vec!["offsite".to_string()]);
        let c = copy_status("offsite", &rows, &holds);
        assert_eq!(c.last_backup_id.as_deref(), Some("b1"));
        assert_eq!(c.missing_backups, 1);
        assert_eq!(c.lag_seconds, Some(7200));
        let none = copy_status("other", &rows, &holds);
        assert_eq!((none.missing_backups, none.lag_seconds), (2, None));
        holds.insert("b3".to_string(), vec!["offsite".to_string()]);
        let level = copy_status("offsite", &rows, &holds);
        assert_eq!((level.missing_backups, level.lag_seconds), (0, Some(0)));
    }

    #[test]
    fn rpo_window_and_failures_since_the_last_success() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let rows = vec![
            row("f2", "failed", "2026-11-22T11:00:00Z", None),
            row("f1", "failed", "2026-11-22T10:00:00Z", None),
            row(
                "b2",
                "complete",
                "2026-11-22T02:00:00Z",
                Some("2026-11-22T02:00:05Z"),
            ),
            row("f0", "failed", "2026-11-21T10:00:00Z", None),
            row(
                "b1",
                "complete",
                "2026-11-21T02:00:00Z",
                Some("2026-11-21T02:00:05Z"),
            ),
        ];
        let s = summarize(&policy(), &rows, None, now);
        assert_eq!(s.last_backup_id.as_deref(), Some("b2"));
        assert_eq!(s.rpo_seconds, Some(10 * 3600 - 5));
        assert_eq!(s.window_start.as_deref(), Some("2026-11-21T02:00:05Z"));
        assert_eq!(s.failures_since_success, 2);
        assert_eq!(s.last_error.as_deref(), Some("f2 broke"));
        assert_eq!(s.next_backup_at.as_deref(), Some("2026-11-23T02:00:00Z"));

        // Physical: the archive's end, not the last base backup, bounds RPO.
        let end: Timestamp = "2026-11-22T11:59:00Z".parse().unwrap();
        let s = summarize(&policy(), &rows, Some((None, Some(end))), now);
        assert_eq!(s.rpo_seconds, Some(60));

        // Never a success: every failure counts and there is no RPO.
        let s = summarize(&policy(), &rows[..2], None, now);
        assert_eq!((s.failures_since_success, s.rpo_seconds), (2, None));
    }
}
