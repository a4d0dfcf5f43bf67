//! Pure RDS decisions: snapshot names, the restorable window, and whether a
//! time falls inside it. drctl checks the window itself instead of relying
//! on the API to refuse: mock servers (and a racing LatestRestorableTime)
//! do not.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::time::parse::rfc3339;

/// Letters, digits and single hyphens, lowercase: what RDS identifiers allow.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.to_ascii_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The snapshot identifier drctl gives a backup: RDS wants letters, digits
/// and single hyphens, starting with a letter, at most 255 characters.
pub fn snapshot_identifier(policy: &str, backup_id: &str) -> String {
    let mut out = sanitize(&format!("drctl-{policy}-{backup_id}"))
        .trim_end_matches('-')
        .to_string();
    out.truncate(255);
    out.trim_end_matches('-').to_string()
}

/// A drill's scratch instance: instance identifiers are at most 63
/// characters, so the policy part is cut to leave room for the suffix that
/// makes it unique.
pub fn scratch_identifier(policy: &str, suffix: &str) -> String {
    let suffix = sanitize(suffix);
    let suffix = suffix.trim_matches('-');
    let mut base = sanitize(&format!("drctl-drill-{policy}"));
    base.truncate(63usize.saturating_sub(suffix.len() + 1).max(12));
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

/// Whether a scratch instance tagged as started at `started` is a leftover
/// of a drill that could not clean up (killed, or its host lost): older
/// than `max_age`. An unreadable tag is never swept: drctl deletes only
/// what it can prove is its own and stale.
pub fn scratch_is_stale(started: &str, now: Timestamp, max_age: SignedDuration) -> bool {
    match started.parse::<Timestamp>() {
        Ok(t) => now.duration_since(t) > max_age,
        Err(_) => false,
    }
}

/// The times an instance can be restored to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PitrWindow {
    pub earliest: Timestamp,
    pub latest: Timestamp,
}

impl std::fmt::Display for PitrWindow {
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
pub fn window(f: &WindowFacts, now: Timestamp) -> Result<PitrWindow, String> {
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
    Ok(PitrWindow { earliest, latest })
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
pub fn check(w: &PitrWindow, t: Timestamp) -> Result<(), String> {
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
    fn scratch_names_are_valid_instance_identifiers() {
        let long = "x".repeat(80);
        for (policy, want) in [
            ("billing", Some("drctl-drill-billing-0a1b2c3d")),
            (
                "Billing_EU.prod",
                Some("drctl-drill-billing-eu-prod-0a1b2c3d"),
            ),
            (long.as_str(), None),
        ] {
            let id = scratch_identifier(policy, "0a1b2c3d");
            assert!(id.len() <= 63, "{id}");
            assert!(id.ends_with("-0a1b2c3d"), "{id}");
            assert!(!id.contains("--"), "{id}");
            if let Some(w) = want {
                assert_eq!(id, w);
            }
        }
    }

    #[test]
    fn only_stale_scratch_instances_with_a_readable_tag_are_swept() {
        let now = at("2026-11-23T12:00:00Z");
        let day = SignedDuration::from_hours(24);
        assert!(scratch_is_stale("2026-11-21T12:00:00Z", now, day));
        assert!(!scratch_is_stale("2026-11-23T11:00:00Z", now, day));
        assert!(!scratch_is_stale("yesterday", now, day));
        assert!(!scratch_is_stale("", now, day));
    }

    proptest::proptest! {
        #[test]
        fn any_policy_name_gives_a_valid_identifier(policy in "\\PC{0,100}", suffix in "[0-9a-f]{8}") {
            for id in [scratch_identifier(&policy, &suffix), snapshot_identifier(&policy, &suffix)] {
                proptest::prop_assert!(id.len() <= 255);
                proptest::prop_assert!(id.starts_with("drctl-"));
                proptest::prop_assert!(!id.contains("--"), "{}", id);
                proptest::prop_assert!(!id.ends_with('-'));
                proptest::prop_assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            }
            proptest::prop_assert!(scratch_identifier(&policy, &suffix).len() <= 63);
        }
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
        let w = PitrWindow {
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
