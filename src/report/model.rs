//! What the status page and `drctl report` show, decided from what
//! `status` and the catalog know: each policy's health (healthy, warning,
//! failing, with the reasons), its history, its drills and what the next
//! prune keeps. Pure: no I/O, so every rule is unit-tested.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::BackupRow;
use crate::prune::retention::{self, Decision};
use crate::status::PolicyStatus;
use crate::time::parse::{human_duration, rfc3339};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Healthy,
    Warning,
    Failing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Warning => "warning",
            State::Failing => "failing",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    pub state: State,
    /// Worst first; a healthy policy's one reason says why it is.
    pub reasons: Vec<String>,
}

/// A policy's own numbers the state is judged against.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Budgets {
    /// `[notify] max_rpo`.
    pub max_rpo_seconds: Option<i64>,
    /// `[drill] max_rto`.
    pub max_rto_seconds: Option<f64>,
    /// `[drill] max_rpo`, else `[notify] max_rpo`: what a drill's RPO is
    /// held to.
    pub drill_max_rpo_seconds: Option<f64>,
    /// Each `[[copy]]`'s `max_lag`, by name.
    pub copy_max_lag_seconds: Vec<(String, i64)>,
}

impl Budgets {
    pub fn of(p: &crate::policy::Policy) -> Budgets {
        let secs = |d: Option<&str>| {
            d.and_then(|d| crate::time::parse::parse_duration(d).ok())
                .map(|d| d.as_secs())
        };
        let max_rpo = secs(p.notify.max_rpo.as_deref());
        let drill = p.drill.as_ref();
        Budgets {
            max_rpo_seconds: max_rpo,
            max_rto_seconds: secs(drill.and_then(|d| d.max_rto.as_deref())).map(|s| s as f64),
            drill_max_rpo_seconds: secs(drill.and_then(|d| d.max_rpo.as_deref()))
                .or(max_rpo)
                .map(|s| s as f64),
            copy_max_lag_seconds: p
                .copies
                .iter()
                .map(|c| (c.name.clone(), c.max_lag().as_secs() as i64))
                .collect(),
        }
    }
}

pub fn human(secs: i64) -> String {
    human_duration(SignedDuration::from_secs(secs))
}

/// The verdict on one policy. Failing: nothing recoverable, RPO past its
/// budget, archiving failing or stalled, the last drill failed, or a state
/// that could not be determined. Warning: data already lost to a WAL gap,
/// failed runs since the last success, a copy past its `max_lag`, the last
/// drill over `max_rto`.
pub fn health(s: &PolicyStatus, b: &Budgets) -> Health {
    let mut failing = Vec::new();
    let mut warning = Vec::new();
    if let Some(e) = &s.error {
        failing.push(format!("state unknown: {}", redact(e)));
    }
    match (s.rpo_seconds, b.max_rpo_seconds) {
        (Some(r), Some(max)) if r > max => {
            failing.push(format!("RPO {} is past max_rpo {}", human(r), human(max)))
        }
        (None, _) if s.error.is_none() => failing.push("nothing recoverable yet".into()),
        _ => {}
    }
    if let Some(a) = &s.archive {
        if a.failing == Some(true) || a.stalled == Some(true) {
            failing.push(redact(&a.describe()));
        }
    }
    if s.last_drill_passed == Some(false) {
        failing.push(format!(
            "last drill failed ({})",
            s.last_drill_at.as_deref().unwrap_or("-")
        ));
    }
    for g in s.wal_gaps.iter().flatten() {
        warning.push(format!("{g}: points in it cannot be restored"));
    }
    if s.failures_since_success > 0 {
        let n = s.failures_since_success;
        warning.push(format!(
            "{n} failed {} since the last success{}",
            if n == 1 { "backup" } else { "backups" },
            s.last_error
                .as_deref()
                .map(|e| format!(": {}", redact(e)))
                .unwrap_or_default()
        ));
    }
    for c in &s.copies {
        let max = b
            .copy_max_lag_seconds
            .iter()
            .find(|(n, _)| *n == c.name)
            .map(|(_, m)| *m);
        match (c.lag_seconds, max) {
            (None, _) if c.missing_backups > 0 => warning.push(format!(
                "copy {} holds none of the primary's backups",
                c.name
            )),
            (Some(l), Some(m)) if l > m => warning.push(format!(
                "copy {} lags {}, past max_lag {}",
                c.name,
                human(l),
                human(m)
            )),
            _ => {}
        }
    }
    if let (Some(rto), Some(max)) = (s.last_drill_rto_seconds, b.max_rto_seconds) {
        if rto > max {
            warning.push(format!(
                "last drill's RTO {} is past max_rto {}",
                human(rto.round() as i64),
                human(max as i64)
            ));
        }
    }
    let (state, mut reasons) = if !failing.is_empty() {
        (State::Failing, failing)
    } else if !warning.is_empty() {
        (State::Warning, Vec::new())
    } else {
        let mut why = match (s.rpo_seconds, b.max_rpo_seconds) {
            (Some(r), Some(m)) => format!("RPO {} within max_rpo {}", human(r), human(m)),
            (Some(r), None) => format!("RPO {}", human(r)),
            _ => "backed up".into(),
        };
        if s.last_drill_passed == Some(true) {
            why.push_str("; last drill passed");
        }
        (State::Healthy, vec![why])
    };
    reasons.extend(warning);
    Health { state, reasons }
}

/// Credentials out of anything shown: a URL's password
/// (`scheme://user:secret@host`) and a conninfo's `password=…`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // key=value conninfo: password=secret or password='se cret'.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        result.push_str(head);
        result.push_str("***");
        let end = if let Some(q) = tail.strip_prefix('\'') {
            q.find('\'').map_or(tail.len(), |j| j + 2)
        } else {
            tail.find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(tail.len())
        };
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

/// One backup in a policy's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryItem {
    pub id: String,
    /// "full", "incremental" (physical) or the method's own kind.
    pub kind: String,
    pub status: String,
    pub started_at: Option<String>,
    pub consistent_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub stored_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HistoryItem {
    pub fn of(r: &BackupRow) -> HistoryItem {
        HistoryItem {
            id: r.id.clone(),
            kind: r.kind.clone(),
            status: r.status.clone(),
            started_at: r.started_at.map(rfc3339),
            consistent_at: r.consistent_at.map(rfc3339),
            duration_seconds: r
                .started_at
                .zip(r.finished_at)
                .map(|(s, f)| f.duration_since(s).as_secs_f64()),
            stored_bytes: r.stored_bytes,
            parent: r.parent.clone(),
            error: r
                .error
                .as_deref()
                .map(|e| redact(e.lines().next().unwrap_or(""))),
        }
    }
}

/// What the next prune keeps and why, from the catalog's complete backups
/// (pins as the catalog last heard of them): retention's own decision,
/// with every ancestor of a kept incremental kept as prune keeps it.
pub fn retention_plan(
    p: &crate::policy::Policy,
    rows: &[BackupRow],
    tz: &jiff::tz::TimeZone,
) -> Vec<Decision> {
    let complete: Vec<&BackupRow> = rows
        .iter()
        .filter(|r| r.status == "complete" && r.consistent_at.is_some())
        .collect();
    let items: Vec<retention::Item> = complete
        .iter()
        .map(|r| retention::Item {
            id: r.id.clone(),
            at: r.consistent_at.unwrap_or_default(),
            pinned: r.pinned,
        })
        .collect();
    let rules = retention::Rules::from_policy(&p.retention);
    let mut plan = retention::decide_or_keep(&items, &rules, tz);
    let parents = complete
        .iter()
        .filter_map(|r| Some((r.id.clone(), r.parent.clone()?)))
        .collect();
    retention::keep_ancestors(&mut plan, &parents);
    plan
}

/// The horizontal extent of a recoverable window, as fractions of the
/// span shown (`from` .. `to`): for the window bar.
pub fn span_fraction(t: Timestamp, from: Timestamp, to: Timestamp) -> f64 {
    let all = to.duration_since(from).as_secs_f64();
    if all <= 0.0 {
        return 1.0;
    }
    (t.duration_since(from).as_secs_f64() / all).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ArchiveHealth, CopyStatus};

    fn status() -> PolicyStatus {
        PolicyStatus {
            policy: "orders".into(),
            method: crate::policy::Method::Physical,
            last_backup_at: Some("2026-12-04T10:00:00Z".into()),
            last_backup_id: Some("b1".into()),
            last_backup_host: None,
            rpo_seconds: Some(60),
            window_start: None,
            window_end: None,
            windows: None,
            last_commit_at: None,
            wal_gaps: None,
            failures_since_success: 0,
            last_error: None,
            last_drill_at: None,
            last_drill_passed: None,
            last_drill_rto_seconds: None,
            last_drill_rpo_seconds: None,
            drill_trend: None,
            next_backup_at: None,
            archive: None,
            copies: Vec::new(),
            error: None,
            leases: Vec::new(),
        }
    }

    fn budgets() -> Budgets {
        Budgets {
            max_rpo_seconds: Some(3600),
            max_rto_seconds: Some(600.0),
            drill_max_rpo_seconds: None,
            copy_max_lag_seconds: vec![("offsite".into(), 900)],
        }
    }

    #[test]
    fn healthy_says_why_and_each_fault_names_itself() {
        let h = health(&status(), &budgets());
        assert_eq!(h.state, State::Healthy);
        assert_eq!(h.reasons, ["RPO 1m within max_rpo 1h"]);

        let mut s = status();
        s.rpo_seconds = Some(7200);
        let h = health(&s, &budgets());
        assert_eq!(
            (h.state, h.reasons[0].as_str()),
            (State::Failing, "RPO 2h is past max_rpo 1h")
        );

        let mut s = status();
        s.archive = Some(ArchiveHealth {
            failing: Some(true),
            failed_count: Some(3),
            last_failed_wal: Some("000000010000000000000003".into()),
            from: "server",
            ..ArchiveHealth::default()
        });
        let h = health(&s, &budgets());
        assert_eq!(h.state, State::Failing);
        assert!(
            h.reasons[0].starts_with("archive_command FAILING: 3 failures"),
            "{h:?}"
        );

        let mut s = status();
        s.wal_gaps = Some(vec![crate::wal::archive::Gap {
            first_missing: "000000010000000000000005".into(),
            last_missing: "000000010000000000000005".into(),
        }]);
        let h = health(&s, &budgets());
        assert_eq!(h.state, State::Warning);
        assert_eq!(
            h.reasons,
            ["WAL gap: 000000010000000000000005 missing: points in it cannot be restored"]
        );

        let mut s = status();
        s.copies.push(CopyStatus {
            name: "offsite".into(),
            last_backup_id: None,
            last_backup_at: None,
            missing_backups: 1,
            lag_seconds: Some(1800),
            wal_backlog: None,
        });
        s.last_drill_passed = Some(true);
        s.last_drill_rto_seconds = Some(900.4);
        let h = health(&s, &budgets());
        assert_eq!(h.state, State::Warning);
        assert_eq!(
            h.reasons,
            [
                "copy offsite lags 30m, past max_lag 15m",
                "last drill's RTO 15m is past max_rto 10m"
            ]
        );
    }

    #[test]
    fn failing_comes_before_warnings_and_nothing_recoverable_fails() {
        let mut s = status();
        s.rpo_seconds = None;
        s.failures_since_success = 2;
        s.last_error = Some("pg_dump: connection to postgres://u:hunter2@db/x failed".into());
        s.last_drill_passed = Some(false);
        s.last_drill_at = Some("2026-12-04T09:00:00Z".into());
        let h = health(&s, &Budgets::default());
        assert_eq!(h.state, State::Failing);
        assert_eq!(
            h.reasons,
            [
                "nothing recoverable yet",
                "last drill failed (2026-12-04T09:00:00Z)",
                "2 failed backups since the last success: pg_dump: connection to postgres://u:***@db/x failed"
            ]
        );
        // An unknown state is a failure, and not also "nothing recoverable".
        let mut s = status();
        s.rpo_seconds = None;
        s.error = Some("cannot read the WAL archive: timed out".into());
        let h = health(&s, &Budgets::default());
        assert_eq!(
            (h.state, h.reasons.as_slice()),
            (
                State::Failing,
                &["state unknown: cannot read the WAL archive: timed out".to_string()][..]
            )
        );
    }

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(
            redact("s3://AKIA:secret/key@bucket/x and postgres://me:pw@h:5432/db"),
            "s3://AKIA:secret/key@bucket/x and postgres://me:***@h:5432/db"
        );
        assert_eq!(
            redact("host=db password='a b' user=x PASSWORD=plain&x=1"),
            "host=db password=*** user=x PASSWORD=***&x=1"
        );
        assert_eq!(redact("https://h/path?q"), "https://h/path?q");
        assert_eq!(redact("postgres://only@h"), "postgres://only@h");
    }

    proptest::proptest! {
        #[test]
        fn a_url_password_never_shows(user in "[a-z]{1,8}", pw in "[A-Za-z0-9!#$%]{1,16}", host in "[a-z]{1,8}") {
            let text = format!("failed: postgres://{user}:{pw}@{host}/db (retry)");
            let r = redact(&text);
            proptest::prop_assert!(!r.contains(&format!(":{pw}@")), "{r}");
            proptest::prop_assert!(r.contains(&format!("{user}:***@{host}/db")), "{r}");
        }
    }

    #[test]
    fn the_plan_keeps_what_retention_keeps_and_every_parent() {
        let row = |id: &str, at: &str, parent: Option<&str>| BackupRow {
            id: id.into(),
            policy: "orders".into(),
            method: "physical".into(),
            status: "complete".into(),
            started_at: Some(at.parse().unwrap()),
            finished_at: None,
            consistent_at: Some(at.parse().unwrap()),
            stored_bytes: None,
            source_bytes: None,
            repository: None,
            error: None,
            pinned: false,
            kind: if parent.is_some() {
                "incremental"
            } else {
                "full"
            }
            .into(),
            parent: parent.map(Into::into),
            host: None,
        };
        let rows = vec![
            row("i1", "2026-12-03T00:00:00Z", Some("f1")),
            row("f1", "2026-12-02T00:00:00Z", None),
            row("f0", "2026-12-01T00:00:00Z", None),
        ];
        let p = crate::policy::parse(
            std::path::Path::new("orders.toml"),
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"physical\"\n[retention]\nkeep_last = 1\n[repository]\nurl = \"file:///tmp/r\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n",
        )
        .unwrap();
        let plan = retention_plan(&p, &rows, &jiff::tz::TimeZone::UTC);
        let kept: Vec<(&str, bool, &str)> = plan
            .iter()
            .map(|d| {
                (
                    d.id.as_str(),
                    d.keep,
                    d.reasons.first().map_or("", |s| s.as_str()),
                )
            })
            .collect();
        assert_eq!(kept[0].0, "i1");
        assert!(kept[0].1);
        assert_eq!(kept[1], ("f1", true, "parent of i1"));
        assert_eq!((kept[2].0, kept[2].1), ("f0", false));
    }
}
