//! Restore planning: which backup serves a request. Pure and unit-tested.

use jiff::{SignedDuration, Timestamp};

use crate::time::parse::{human_duration, rfc3339};

/// What the user asked to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Latest,
    Backup(String),
    Time(Timestamp),
}

/// Where a physical restore's replay stops, other than a time: PostgreSQL's
/// recovery_target_lsn, _xid and _name (pgBackRest's --type=lsn|xid|name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Lsn(u64),
    Xid(u64),
    Name(String),
}

impl Stop {
    /// `16/B374D848`.
    pub fn parse_lsn(s: &str) -> Result<Stop, String> {
        let bad =
            || format!("'{s}' is not an LSN: use the form 16/B374D848 (pg_current_wal_lsn())");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Stop::Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    pub fn parse_xid(s: &str) -> Result<Stop, String> {
        match s.trim().parse::<u64>() {
            Ok(x) if x >= 3 => Ok(Stop::Xid(x)),
            _ => Err(format!(
                "'{s}' is not a transaction id: use the number txid_current() returned (3 or more)"
            )),
        }
    }

    pub fn parse_name(s: &str) -> Result<Stop, String> {
        // PostgreSQL's restore point names are at most 63 bytes (MAXFNAMELEN).
        if s.is_empty() || s.len() > 63 {
            return Err(format!(
                "restore point name '{s}' must be 1 to 63 bytes, as pg_create_restore_point takes it"
            ));
        }
        Ok(Stop::Name(s.to_string()))
    }

    /// The postgresql.conf setting, its value unquoted.
    pub fn setting(&self) -> (&'static str, String) {
        match self {
            Stop::Lsn(v) => ("recovery_target_lsn", lsn_text(*v)),
            Stop::Xid(x) => ("recovery_target_xid", x.to_string()),
            Stop::Name(n) => ("recovery_target_name", n.clone()),
        }
    }

    /// For the plan: "lsn 0/3000060", "xid 745", "name before-migration".
    pub fn describe(&self) -> String {
        let (k, v) = self.setting();
        format!("{} {v}", k.trim_start_matches("recovery_target_"))
    }
}

pub fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// What the restored server does once it reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// End recovery and accept writes (the default)
    Promote,
    /// Stay in recovery, read-only, to inspect before promoting
    /// (SELECT pg_wal_replay_resume() promotes)
    Pause,
    /// Stop the server; starting it again promotes
    Shutdown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// A committed backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub consistent_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub id: String,
    pub consistent_at: Timestamp,
    /// For a time target: how much later than the backup the target is,
    /// i.e. the data-loss gap a dump restore implies.
    pub gap: Option<SignedDuration>,
}

/// The recoverable points of a dump policy, oldest to newest.
pub fn window(c: &[Candidate]) -> Option<(Timestamp, Timestamp)> {
    let min = c.iter().map(|c| c.consistent_at).min()?;
    let max = c.iter().map(|c| c.consistent_at).max()?;
    Some((min, max))
}

pub fn describe_window(c: &[Candidate]) -> String {
    match window(c) {
        None => "no complete backups".into(),
        // Rounded up: a time copied from here is at or after a backup's
        // consistent point, so it is accepted (and after the newest one,
        // restores the newest).
        Some((a, b)) => format!(
            "{} from {} to {}",
            if c.len() == 1 {
                "1 backup".to_string()
            } else {
                format!("{} backups", c.len())
            },
            crate::time::parse::rfc3339_ceil(a),
            crate::time::parse::rfc3339_ceil(b)
        ),
    }
}

/// A target after now is a typo or a clock problem, never a request for
/// "the latest": refuse it, naming now and what can be restored.
pub fn refuse_future(target: &Target, now: Timestamp, window: &str) -> Result<(), String> {
    match target {
        Target::Time(t) if *t > now => Err(format!(
            "{} is in the future (now is {}); recoverable window: {window}",
            rfc3339(*t),
            rfc3339(now)
        )),
        _ => Ok(()),
    }
}

/// Pick the backup: the newest, a named one, or the newest whose consistent
/// point is at or before the target time.
pub fn choose(cands: &[Candidate], target: &Target) -> Result<Choice, String> {
    if cands.is_empty() {
        return Err("no complete backup to restore from; run `drctl backup POLICY` first (or `drctl catalog rebuild` if the repository has backups)".into());
    }
    match target {
        Target::Latest => {
            let c = cands
                .iter()
                .max_by_key(|c| (c.consistent_at, c.id.clone()))
                .expect("non-empty");
            Ok(Choice {
                id: c.id.clone(),
                consistent_at: c.consistent_at,
                gap: None,
            })
        }
        Target::Backup(id) => cands
            .iter()
            .find(|c| &c.id == id)
            .map(|c| Choice {
                id: c.id.clone(),
                consistent_at: c.consistent_at,
                gap: None,
            })
            .ok_or_else(|| {
                format!("backup {id} is not a complete backup of this policy; see `drctl list`")
            }),
        Target::Time(t) => {
            let best = cands
                .iter()
                .filter(|c| c.consistent_at <= *t)
                .max_by_key(|c| (c.consistent_at, c.id.clone()));
            match best {
                Some(c) => Ok(Choice {
                    id: c.id.clone(),
                    consistent_at: c.consistent_at,
                    gap: Some(t.duration_since(c.consistent_at)),
                }),
                None => Err(format!(
                    "{} is before the oldest backup; recoverable window: {}",
                    rfc3339(*t),
                    describe_window(cands)
                )),
            }
        }
    }
}

/// "data committed in the 1h 2m before the target is not in this
/// backup", or "none".
pub fn describe_gap(gap: SignedDuration) -> String {
    if gap.is_zero() {
        "none".into()
    } else {
        format!(
            "data committed in the {} before the target is not in this backup",
            human_duration(gap)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_xid_and_name_targets_parse_or_say_what_is_expected() {
        assert_eq!(
            Stop::parse_lsn("16/B374D848").unwrap(),
            Stop::Lsn(0x16_B374_D848)
        );
        assert_eq!(
            Stop::parse_lsn("0/3000060").unwrap().setting().1,
            "0/3000060"
        );
        assert!(Stop::parse_lsn("16B374D848")
            .unwrap_err()
            .contains("16/B374D848"));
        assert!(Stop::parse_lsn("x/1").is_err());
        assert_eq!(Stop::parse_xid("745").unwrap().describe(), "xid 745");
        assert!(Stop::parse_xid("-1").is_err());
        assert!(Stop::parse_xid("2").is_err());
        assert_eq!(
            Stop::parse_name("before-migration").unwrap().setting(),
            ("recovery_target_name", "before-migration".to_string())
        );
        assert!(Stop::parse_name(&"x".repeat(64)).is_err());
        assert!(Stop::parse_name("").is_err());
    }

    #[test]
    fn a_printed_window_start_is_accepted() {
        let cands = vec![c("a", "2026-12-02T16:14:22.383Z")];
        let w = describe_window(&cands);
        assert_eq!(
            w,
            "1 backup from 2026-12-02T16:14:23Z to 2026-12-02T16:14:23Z"
        );
        let start: Timestamp = "2026-12-02T16:14:23Z".parse().unwrap();
        assert!(choose(&cands, &Target::Time(start)).is_ok());
    }

    #[test]
    fn future_targets_are_refused_naming_now() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let later = Target::Time("2999-01-01T00:00:00Z".parse().unwrap());
        let e = refuse_future(&later, now, "W").unwrap_err();
        assert!(
            e.contains("in the future (now is 2026-11-22T12:00:00Z)") && e.ends_with("W"),
            "{e}"
        );
        let past = Target::Time("2026-11-22T11:00:00Z".parse().unwrap());
        assert!(refuse_future(&past, now, "W").is_ok());
        assert!(refuse_future(&Target::Latest, now, "W").is_ok());
    }
    use proptest::prelude::*;

    fn c(id: &str, at: &str) -> Candidate {
        Candidate {
            id: id.into(),
            consistent_at: at.parse().unwrap(),
        }
    }

    fn cands() -> Vec<Candidate> {
        vec![
            c("a", "2026-11-20T02:00:00Z"),
            c("b", "2026-11-21T02:00:00Z"),
            c("c", "2026-11-22T02:00:00Z"),
        ]
    }

    #[test]
    fn latest_and_by_id() {
        assert_eq!(choose(&cands(), &Target::Latest).unwrap().id, "c");
        assert_eq!(
            choose(&cands(), &Target::Backup("b".into())).unwrap().id,
            "b"
        );
        assert!(choose(&cands(), &Target::Backup("zz".into())).is_err());
        assert!(choose(&[], &Target::Latest)
            .unwrap_err()
            .contains("drctl backup"));
    }

    #[test]
    fn time_picks_newest_at_or_before() {
        let t = |s: &str| Target::Time(s.parse().unwrap());
        let ch = choose(&cands(), &t("2026-11-21T05:00:00Z")).unwrap();
        assert_eq!(ch.id, "b");
        assert_eq!(ch.gap, Some(SignedDuration::from_hours(3)));
        assert_eq!(
            choose(&cands(), &t("2026-11-21T02:00:00Z")).unwrap().id,
            "b"
        );
        let e = choose(&cands(), &t("2026-11-19T00:00:00Z")).unwrap_err();
        assert!(e.contains("before the oldest backup"), "{e}");
        assert!(
            e.contains("2026-11-20T02:00:00Z") && e.contains("2026-11-22T02:00:00Z"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn chosen_backup_is_never_after_target(times in proptest::collection::vec(0i64..1_000_000, 1..20), target in 0i64..1_100_000) {
            let cs: Vec<_> = times.iter().enumerate().map(|(i, s)| Candidate { id: format!("{i:03}"), consistent_at: Timestamp::from_second(1_700_000_000 + s).unwrap() }).collect();
            let t = Timestamp::from_second(1_700_000_000 + target).unwrap();
            match choose(&cs, &Target::Time(t)) {
                Ok(ch) => {
                    prop_assert!(ch.consistent_at <= t);
                    // nothing newer that still qualifies
                    prop_assert!(!cs.iter().any(|c| c.consistent_at <= t && c.consistent_at > ch.consistent_at));
                }
                Err(_) => prop_assert!(cs.iter().all(|c| c.consistent_at > t)),
            }
        }
    }
}
