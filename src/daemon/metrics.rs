//! Prometheus text exposition of what `status` knows plus the catalog's
//! history, one series per policy. Rendering is pure; `collect` gathers.

use std::fmt::Write;

use anyhow::Result;
use jiff::Timestamp;

use crate::catalog::{BackupRow, Catalog};
use crate::policy::Policy;
use crate::status::PolicyStatus;

/// Per policy: the status plus figures from the run history.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyMetrics {
    pub status: PolicyStatus,
    pub last_success_finished: Option<Timestamp>,
    pub last_success_duration: Option<f64>,
    pub stored_bytes: u64,
    pub failures_total: u64,
    pub last_segment_at: Option<Timestamp>,
    /// Finish time of the newest drill that passed.
    pub last_drill_success: Option<Timestamp>,
    /// The policy's budgets, so alert rules compare against the policy's
    /// own numbers: `[notify] max_rpo`, `[drill] max_rto`, and each
    /// `[[copy]]`'s `max_lag` by name (seconds).
    pub rpo_budget: Option<f64>,
    pub rto_budget: Option<f64>,
    pub copy_max_lag: Vec<(String, f64)>,
    /// How old the newest passing drill may be: two intervals of the
    /// policy's `[drill] schedule` (one missed drill is news, not yet an
    /// alert); None without a schedule.
    pub drill_max_age: Option<f64>,
}

/// `rows` as `Catalog::status_rows` gives them (the newest complete backup
/// among them); `totals` = (stored bytes of complete backups, failures).
pub fn from_rows(
    status: PolicyStatus,
    rows: &[BackupRow],
    totals: (u64, u64),
    last_segment_at: Option<Timestamp>,
) -> PolicyMetrics {
    let last = rows
        .iter()
        .filter(|r| r.status == "complete" && r.finished_at.is_some())
        .max_by_key(|r| r.finished_at);
    PolicyMetrics {
        status,
        last_success_finished: last.and_then(|r| r.finished_at),
        last_success_duration: last
            .and_then(|r| Some(r.finished_at?.duration_since(r.started_at?).as_secs_f64())),
        stored_bytes: totals.0,
        failures_total: totals.1,
        last_segment_at,
        last_drill_success: None,
        rpo_budget: None,
        rto_budget: None,
        copy_max_lag: Vec::new(),
        drill_max_age: None,
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus spells infinities +Inf/-Inf; Rust's Display says inf.
fn value(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v if v.is_nan() => "NaN".into(),
        v => v.to_string(),
    }
}

fn secs(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The exposition text: HELP and TYPE once per family, one sample per
/// policy that has a value.
type Get = fn(&PolicyMetrics) -> Option<f64>;

/// Every metric family: name, type, help, and how a policy's sample is
/// read (None: no sample). Long because it is the table itself.
fn families() -> [(&'static str, &'static str, &'static str, Get); 21] {
    [
        (
            "drctl_backup_last_success_timestamp_seconds",
            "gauge",
            "When the last successful backup finished (Unix time).",
            |m| m.last_success_finished.map(secs),
        ),
        (
            "drctl_backup_duration_seconds",
            "gauge",
            "How long the last successful backup took.",
            |m| m.last_success_duration,
        ),
        (
            "drctl_backup_stored_bytes",
            "gauge",
            "Bytes stored in the repository by the policy's complete backups.",
            |m| Some(m.stored_bytes as f64),
        ),
        (
            "drctl_backup_failures_total",
            "counter",
            "Backups that failed, since the catalog began.",
            |m| Some(m.failures_total as f64),
        ),
        (
            "drctl_backup_failures_since_success",
            "gauge",
            "Failed backups since the last successful one.",
            |m| Some(m.status.failures_since_success as f64),
        ),
        (
            "drctl_rpo_seconds",
            "gauge",
            "Seconds of data a disaster now would lose: now minus the newest recoverable point (+Inf: none).",
            // No recoverable point is an infinite RPO, so `> budget` alerts
            // fire; an unknown state (status error) has no sample.
            |m| match (m.status.rpo_seconds, &m.status.error) {
                (Some(r), _) => Some(r as f64),
                (None, None) => Some(f64::INFINITY),
                (None, Some(_)) => None,
            },
        ),
        (
            "drctl_wal_archive_last_segment_timestamp_seconds",
            "gauge",
            "Last write time of the newest archived WAL segment reachable without a gap (physical policies).",
            |m| m.last_segment_at.map(secs),
        ),
        (
            "drctl_wal_archive_last_success_timestamp_seconds",
            "gauge",
            "When the source last archived a WAL file (pg_stat_archiver), or the newest archived segment's last write when the source does not answer (Unix time).",
            |m| {
                m.status
                    .archive
                    .as_ref()
                    .and_then(|a| a.last_archived_at.as_deref())
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map(secs)
            },
        ),
        (
            "drctl_wal_archive_failing",
            "gauge",
            "1 when the source's most recent archive_command attempt failed (no sample when the source does not answer).",
            |m| {
                m.status
                    .archive
                    .as_ref()
                    .and_then(|a| a.failing)
                    .map(|f| if f { 1.0 } else { 0.0 })
            },
        ),
        (
            "drctl_drill_last_success_timestamp_seconds",
            "gauge",
            "When the newest passing restore drill finished (Unix time).",
            |m| m.last_drill_success.map(secs),
        ),
        (
            "drctl_drill_max_age_seconds",
            "gauge",
            "How old the newest passing drill may be before it is overdue: two intervals of the policy's [drill] schedule.",
            |m| m.drill_max_age,
        ),
        (
            "drctl_drill_rto_seconds",
            "gauge",
            "Recovery time measured by the newest drill: start until the restored database answered.",
            |m| m.status.last_drill_rto_seconds,
        ),
        (
            "drctl_drill_rpo_seconds",
            "gauge",
            "Recovery point measured by the newest drill: target time minus the newest data present.",
            |m| m.status.last_drill_rpo_seconds,
        ),
        (
            "drctl_drill_rto_p50_seconds",
            "gauge",
            "Median RTO of the last drills (up to 10): the trend a single drill hides.",
            |m| m.status.drill_trend.as_ref().and_then(|t| t.rto_p50_seconds),
        ),
        (
            "drctl_drill_rto_max_seconds",
            "gauge",
            "Longest RTO of the last drills (up to 10).",
            |m| m.status.drill_trend.as_ref().and_then(|t| t.rto_max_seconds),
        ),
        (
            "drctl_drill_rpo_p50_seconds",
            "gauge",
            "Median RPO of the last drills (up to 10).",
            |m| m.status.drill_trend.as_ref().and_then(|t| t.rpo_p50_seconds),
        ),
        (
            "drctl_drill_rpo_max_seconds",
            "gauge",
            "Largest RPO of the last drills (up to 10).",
            |m| m.status.drill_trend.as_ref().and_then(|t| t.rpo_max_seconds),
        ),
        (
            "drctl_drill_last_passed",
            "gauge",
            "1 when the newest restore drill passed, 0 when it failed (no sample before the first drill).",
            |m| m.status.last_drill_passed.map(|p| if p { 1.0 } else { 0.0 }),
        ),
        (
            "drctl_rpo_budget_seconds",
            "gauge",
            "The policy's RPO budget ([notify] max_rpo): drctl_rpo_seconds above it is a breach.",
            |m| m.rpo_budget,
        ),
        (
            "drctl_drill_rto_budget_seconds",
            "gauge",
            "The policy's RTO budget ([drill] max_rto): a drill's measured RTO above it fails the drill.",
            |m| m.rto_budget,
        ),
        (
            "drctl_backup_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled backup is due (Unix time).",
            |m| {
                m.status
                    .next_backup_at
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map(secs)
            },
        ),
    ]
}

pub fn render(all: &[PolicyMetrics]) -> String {
    let mut out = String::new();
    for (name, kind, help, get) in families() {
        let samples: Vec<(String, f64)> = all
            .iter()
            .filter_map(|m| get(m).map(|v| (m.status.policy.clone(), v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (policy, v) in samples {
            let _ = writeln!(out, "{name}{{policy=\"{}\"}} {}", label(&policy), value(v));
        }
    }
    render_copies(all, &mut out);
    let budgets: Vec<(&str, &str, f64)> = all
        .iter()
        .flat_map(|m| {
            m.copy_max_lag
                .iter()
                .map(move |(c, v)| (m.status.policy.as_str(), c.as_str(), *v))
        })
        .collect();
    if !budgets.is_empty() {
        out.push_str("# HELP drctl_copy_max_lag_seconds The copy's lag budget ([[copy]] max_lag): drctl_copy_lag_seconds above it is behind.\n# TYPE drctl_copy_max_lag_seconds gauge\n");
        for (policy, copy, v) in budgets {
            let _ = writeln!(
                out,
                "drctl_copy_max_lag_seconds{{policy=\"{}\",copy=\"{}\"}} {}",
                label(policy),
                label(copy),
                value(v)
            );
        }
    }
    out
}

/// One series per policy and `[[copy]]`: how far each copy is behind.
fn render_copies(all: &[PolicyMetrics], out: &mut String) {
    type CopyGet = fn(&crate::status::CopyStatus) -> Option<f64>;
    let families: [(&str, &str, CopyGet); 3] = [
        (
            "drctl_copy_missing_backups",
            "Complete backups of the primary repository the copy does not hold.",
            |c| Some(c.missing_backups as f64),
        ),
        (
            "drctl_copy_lag_seconds",
            "How far the copy's newest backup is behind the primary's.",
            |c| c.lag_seconds.map(|l| l as f64),
        ),
        (
            "drctl_copy_wal_backlog",
            "WAL files archived in the primary that the copy is owed.",
            |c| c.wal_backlog.map(|n| n as f64),
        ),
    ];
    for (name, help, get) in families {
        let samples: Vec<(&str, &str, f64)> = all
            .iter()
            .flat_map(|m| {
                m.status.copies.iter().filter_map(move |c| {
                    get(c).map(|v| (m.status.policy.as_str(), c.name.as_str(), v))
                })
            })
            .collect();
        if samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (policy, copy, v) in samples {
            let _ = writeln!(
                out,
                "{name}{{policy=\"{}\",copy=\"{}\"}} {}",
                label(policy),
                label(copy),
                value(v)
            );
        }
    }
}

pub async fn collect(policies: &[Policy], catalog: &Catalog) -> Result<Vec<PolicyMetrics>> {
    let now = Timestamp::now();
    let mut all = catalog.status_rows().await?;
    let drills = catalog.last_drills().await?;
    let statuses =
        crate::status::collect_with(policies, catalog, now, all.clone(), &drills).await?;
    let mut out = Vec::new();
    let totals = catalog.totals().await?;
    for (p, s) in policies.iter().zip(statuses) {
        let rows = all.remove(&p.name).unwrap_or_default();
        let totals = totals.get(&p.name).copied().unwrap_or_default();
        let last_segment_at = if p.backup.method == crate::policy::Method::Physical {
            s.window_end.as_deref().and_then(|t| t.parse().ok())
        } else {
            None
        };
        let mut pm = from_rows(s, &rows, totals, last_segment_at);
        pm.last_drill_success = drills
            .get(&p.name)
            .and_then(|(_, ok)| ok.as_ref())
            .map(|d| d.finished_at);
        let secs_of = |d: Option<&str>| {
            d.and_then(|d| crate::time::parse::parse_duration(d).ok())
                .map(|d| d.as_secs_f64())
        };
        pm.rpo_budget = secs_of(p.notify.max_rpo.as_deref());
        pm.rto_budget = secs_of(p.drill.as_ref().and_then(|d| d.max_rto.as_deref()));
        pm.drill_max_age = p
            .drill
            .as_ref()
            .and_then(|d| d.schedule.as_deref())
            .and_then(|s| drill_interval(s, &p.timezone(), now))
            .map(|i| 2.0 * i);
        pm.copy_max_lag = p
            .copies
            .iter()
            .map(|c| (c.name.clone(), c.max_lag().as_secs_f64()))
            .collect();
        out.push(pm);
    }
    Ok(out)
}

/// Seconds between the two due times of `schedule` that follow `now`.
fn drill_interval(schedule: &str, tz: &jiff::tz::TimeZone, now: Timestamp) -> Option<f64> {
    let s = crate::time::schedule::Schedule::parse(schedule).ok()?;
    let a = s.next_after(now, tz)?;
    let b = s.next_after(a, tz)?;
    Some(b.duration_since(a).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_once_samples_per_policy_labels_escaped() {
        let st = |name: &str, rpo: Option<i64>| PolicyStatus {
            policy: name.into(),
            method: crate::policy::Method::Dump,
            last_backup_at: None,
            last_backup_id: None,
            last_backup_host: None,
            rpo_seconds: rpo,
            window_start: None,
            window_end: None,
            windows: None,
            last_commit_at: None,
            wal_gaps: None,
            archive: None,
            copies: Vec::new(),
            failures_since_success: 1,
            last_error: None,
            last_drill_at: None,
            last_drill_passed: None,
            last_drill_rto_seconds: None,
            last_drill_rpo_seconds: None,
            drill_trend: None,
            next_backup_at: Some("2026-11-23T02:00:00Z".into()),
            error: None,
            leases: Vec::new(),
        };
        let m = |s| PolicyMetrics {
            status: s,
            last_success_finished: Some("2026-11-22T02:00:10Z".parse().unwrap()),
            last_success_duration: Some(9.5),
            stored_bytes: 1024,
            failures_total: 3,
            last_segment_at: None,
            last_drill_success: None,
            rpo_budget: Some(3600.0),
            rto_budget: None,
            copy_max_lag: vec![("offsite".into(), 900.0)],
            drill_max_age: Some(14.0 * 86400.0),
        };
        let mut unknown = st("unknown", None);
        unknown.error = Some("repository unreachable".into());
        let mut copied = st("orders", Some(60));
        copied.copies = vec![crate::status::CopyStatus {
            name: "offsite".into(),
            last_backup_id: None,
            last_backup_at: None,
            missing_backups: 2,
            lag_seconds: None,
            wal_backlog: Some(7),
        }];
        let text = render(&[m(copied), m(st("we\"ird", None)), m(unknown)]);
        assert!(!text.contains("drctl_rpo_seconds{policy=\"unknown\"}"));
        assert_eq!(text.matches("# TYPE drctl_rpo_seconds gauge").count(), 1);
        assert!(text.contains("drctl_rpo_seconds{policy=\"orders\"} 60\n"));
        assert!(text.contains("drctl_rpo_seconds{policy=\"we\\\"ird\"} +Inf\n"));
        assert!(text.contains("drctl_backup_failures_total{policy=\"we\\\"ird\"} 3\n"));
        assert!(text.contains(
            "drctl_backup_last_success_timestamp_seconds{policy=\"orders\"} 1795312810\n"
        ));
        assert!(text.contains("# TYPE drctl_backup_failures_total counter"));
        assert!(!text.contains("drctl_wal_archive_last_segment_timestamp_seconds"));
        assert!(text.contains("drctl_copy_missing_backups{policy=\"orders\",copy=\"offsite\"} 2\n"));
        assert!(text.contains("drctl_copy_wal_backlog{policy=\"orders\",copy=\"offsite\"} 7\n"));
        assert!(text.contains("drctl_drill_max_age_seconds{policy=\"orders\"} 1209600\n"));
        // No lag known: no sample, and no family without samples.
        assert!(
            !text.contains("# TYPE drctl_copy_lag_seconds")
                && !text.contains("drctl_copy_lag_seconds{")
        );
        // The budgets the alert rules compare against.
        assert!(text.contains("drctl_rpo_budget_seconds{policy=\"orders\"} 3600\n"));
        assert!(
            text.contains("drctl_copy_max_lag_seconds{policy=\"orders\",copy=\"offsite\"} 900\n")
        );
        assert!(!text.contains("drctl_drill_rto_budget_seconds"));
    }

    /// Every series deploy/prometheus/drctl-rules.yml and the Grafana
    /// dashboard query is one drctl exports: a family here, or one the
    /// daemon adds itself (daemon/mod.rs).
    #[test]
    fn the_shipped_rules_and_dashboard_name_only_exported_series() {
        let mut exported: Vec<&str> = families().iter().map(|f| f.0).collect();
        exported.extend([
            "drctl_copy_missing_backups",
            "drctl_copy_lag_seconds",
            "drctl_copy_wal_backlog",
            "drctl_copy_max_lag_seconds",
        ]);
        let daemon = include_str!("mod.rs");
        for (file, text) in [
            (
                "drctl-rules.yml",
                include_str!("../../deploy/prometheus/drctl-rules.yml"),
            ),
            (
                "drctl.json",
                include_str!("../../deploy/grafana/drctl.json"),
            ),
        ] {
            let mut seen = 0;
            for (i, _) in text.match_indices("drctl_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                seen += 1;
                assert!(
                    exported.contains(&name.as_str())
                        || daemon.contains(&format!("# TYPE {name} ")),
                    "{file} names {name}, which drctl does not export"
                );
            }
            assert!(seen > 5, "{file} names almost no series");
        }
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/drctl.json")).unwrap();
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels
            .iter()
            .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())));
    }

    #[test]
    fn a_drill_schedule_allows_two_of_its_intervals() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        assert_eq!(drill_interval("0 5 * * *", &tz, now), Some(86400.0));
        assert_eq!(drill_interval("0 5 * * 0", &tz, now), Some(7.0 * 86400.0));
        assert_eq!(drill_interval("not a schedule", &tz, now), None);
    }
}
