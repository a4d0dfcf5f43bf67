//! Pure RDS decisions: snapshot names, the restorable window, and whether a
//! time falls inside it. drctl checks the window itself instead of relying
//! on the API to refuse: mock servers (and a racing LatestRestorableTime)
//! do not.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::timeparse::rfc3339;

/// The snapshot identifier drctl gives a backup: RDS wants letters, digits
/// and single hyphens, starting with a letter, at most 255 characters.
pub fn snapshot_identifier(policy: &str, backup_id: &str) -> String {
    let raw = format!("drctl-{policy}-{backup_id}").to_ascii_lowercase();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let mut out = out.trim_end_matches('-').to_string();
    out.truncate(255);
    out
}

/// The times an instance can be restored to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub earliest: Timestamp,
    pub latest: Timestamp,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} .. {}", rfc3339(self.earliest), rfc3339(self.latest))
    }
}

/// What DescribeDBInstances and DescribeDBInstanceAutomatedBackups say.
#[derive(Debug, Clone, Default)]
pub struct WindowFacts {
    pub latest_restorable: Option<Timestamp>,
    pub retention_days: i32,
    pub created: Option<Timestamp>,
    /// The automated backups' RestoreWindow, when the API gives one.
    pub restore_window: Option<(Option<Timestamp>, Option<Timestamp>)>,
}

/// The restorable window, or why there is none.
pub fn window(f: &WindowFacts, now: Timestamp) -> Result<Window, String> {
    if f.retention_days <= 0 {
        return Err(
            "automated backups are off (BackupRetentionPeriod = 0): the instance has no point-in-time window; restore a snapshot with --backup ID".into(),
        );
    }
    let (rw_earliest, rw_latest) = f.restore_window.unwrap_or((None, None));
    let latest = rw_latest
        .or(f.latest_restorable)
        .ok_or("the instance reports no LatestRestorableTime yet (no backup has completed)")?;
    let by_retention = now - SignedDuration::from_hours(24 * f.retention_days as i64);
    let earliest = rw_earliest.unwrap_or_else(|| match f.created {
        Some(c) if c > by_retention => c,
        _ => by_retention,
    });
    // Whole seconds, rounded inwards: any time printed from the window is
    // really inside it.
    let earliest = ceil_second(earliest);
    let latest = floor_second(latest);
    if earliest > latest {
        return Err(format!(
            "the instance's window is empty (earliest {} is after latest {})",
            rfc3339(earliest),
            rfc3339(latest)
        ));
    }
    Ok(Window { earliest, latest })
}

fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second() - i64::from(t.subsec_nanosecond() < 0)).unwrap_or(t)
}

fn ceil_second(t: Timestamp) -> Timestamp {
    let f = floor_second(t);
    if f == t {
        t
    } else {
        f + SignedDuration::from_secs(1)
    }
}

/// Refuse a target outside the window, naming it.
pub fn check(w: &Window, t: Timestamp) -> Result<(), String> {
    if t < w.earliest || t > w.latest {
        return Err(format!(
            "{} is outside the restorable window {w}; pick a time inside it",
            rfc3339(t)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn snapshot_names_are_valid_rds_identifiers() {
        assert_eq!(
            snapshot_identifier("billing", "20261122T101500Z-3f9a"),
            "drctl-billing-20261122t101500z-3f9a"
        );
        assert_eq!(
            snapshot_identifier("Big__Co_db-", "20261122T101500Z-3f9a"),
            "drctl-big-co-db-20261122t101500z-3f9a"
        );
        let long = snapshot_identifier(&"a".repeat(300), "x");
        assert!(long.len() <= 255 && !long.ends_with('-'));
    }

    #[test]
    fn window_from_retention_creation_and_restore_window() {
        let now = at("2026-11-22T12:00:00Z");
        let f = WindowFacts {
            latest_restorable: Some(at("2026-11-22T11:55:00Z")),
            retention_days: 7,
            created: Some(at("2026-01-01T00:00:00Z")),
            restore_window: None,
        };
        let w = window(&f, now).unwrap();
        assert_eq!(w.earliest, at("2026-11-15T12:00:00Z"));
        // Sub-second ends are rounded inwards.
        let frac = WindowFacts {
            latest_restorable: Some(at("2026-11-22T11:55:00.7Z")),
            created: Some(at("2026-11-20T08:00:00.2Z")),
            ..f.clone()
        };
        let wf = window(&frac, now).unwrap();
        assert_eq!(
            (wf.earliest, wf.latest),
            (at("2026-11-20T08:00:01Z"), at("2026-11-22T11:55:00Z"))
        );
        assert_eq!(w.latest, at("2026-11-22T11:55:00Z"));
        // A young instance: its creation bounds the window.
        let young = WindowFacts {
            created: Some(at("2026-11-20T08:00:00Z")),
            ..f.clone()
        };
        assert_eq!(
            window(&young, now).unwrap().earliest,
            at("2026-11-20T08:00:00Z")
        );
        // The API's own RestoreWindow wins when present.
        let rw = WindowFacts {
            restore_window: Some((
                Some(at("2026-11-18T00:00:00Z")),
                Some(at("2026-11-22T11:50:00Z")),
            )),
            ..f.clone()
        };
        let w = window(&rw, now).unwrap();
        assert_eq!(
            (w.earliest, w.latest),
            (at("2026-11-18T00:00:00Z"), at("2026-11-22T11:50:00Z"))
        );
        let off = WindowFacts {
            retention_days: 0,
            ..f
        };
        assert!(window(&off, now)
            .unwrap_err()
            .contains("BackupRetentionPeriod = 0"));
    }

    #[test]
    fn targets_outside_the_window_are_refused_with_it() {
        let w = Window {
            earliest: at("2026-11-15T12:00:00Z"),
            latest: at("2026-11-22T11:55:00Z"),
        };
        assert!(check(&w, at("2026-11-20T00:00:00Z")).is_ok());
        assert!(check(&w, w.earliest).is_ok() && check(&w, w.latest).is_ok());
        let e = check(&w, at("2026-11-22T11:59:00Z")).unwrap_err();
        assert_eq!(
            e,
            "2026-11-22T11:59:00Z is outside the restorable window 2026-11-15T12:00:00Z .. 2026-11-22T11:55:00Z; pick a time inside it"
        );
        assert!(check(&w, at("2026-11-01T00:00:00Z")).is_err());
    }
}
