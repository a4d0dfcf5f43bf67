//! The report as HTML: server-rendered askama templates (templates/) with
//! the inline SVG of `svg`, no script, so it works with scripts off, in a
//! mail client and on a phone. Text is escaped by the templates; only the
//! SVG built here is inserted as markup.

use askama::Template;
use jiff::Timestamp;

use super::model::human;
use super::{Detail, PolicyReport, Report};
use crate::policy::Method;

/// Where the page is read: the daemon links each policy to its own page
/// and refreshes itself; a report file holds every policy's detail below
/// the table and links to it by anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Daemon { refresh_seconds: u32 },
    File,
}

struct RowView {
    name: String,
    href: String,
    state: &'static str,
    reasons: Vec<String>,
    method: String,
    last_backup: String,
    age: String,
    rpo: String,
    window_svg: String,
    window_text: String,
    archive: String,
    copies: Vec<String>,
    rto_svg: String,
    rpo_svg: String,
    drilled: bool,
    trend_text: String,
    next_backup: String,
}

struct BackupView {
    id: String,
    kind: String,
    status: String,
    started: String,
    consistent: String,
    duration: String,
    size: String,
    parent: String,
    error: String,
}

struct DrillView {
    at: String,
    passed: bool,
    rto: String,
    rpo: String,
    backup_id: String,
    checks: Vec<super::CheckItem>,
    error: String,
}

struct PlanView {
    id: String,
    keep: bool,
    reasons: String,
}

struct DetailView {
    name: String,
    anchor: String,
    row: RowView,
    timeline_svg: String,
    windows: Vec<String>,
    backups: Vec<BackupView>,
    drills: Vec<DrillView>,
    plan: Vec<PlanView>,
    leases: Vec<String>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    title: String,
    refresh: Option<u32>,
    generated_at: String,
    version: &'static str,
    counts: (usize, usize, usize),
    rows: Vec<RowView>,
    unreadable: Vec<super::Unreadable>,
    details: Vec<DetailView>,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    title: String,
    refresh: Option<u32>,
    generated_at: String,
    version: &'static str,
    d: DetailView,
}

fn opt_secs(v: Option<f64>) -> String {
    v.map(|s| {
        if s < 60.0 {
            format!("{s:.1}s")
        } else {
            human(s.round() as i64)
        }
    })
    .unwrap_or_else(|| "-".into())
}

fn parse(t: &str) -> Option<Timestamp> {
    t.parse().ok()
}

fn anchor(name: &str) -> String {
    format!("policy-{name}")
}

fn row(p: &PolicyReport, now: Timestamp, mode: Mode) -> RowView {
    let s = &p.status;
    let b = &p.budgets;
    let ranges: Vec<(Timestamp, Timestamp)> = match &s.windows {
        Some(ws) => ws
            .iter()
            .filter_map(|w| Some((parse(&w.start)?, parse(&w.end)?)))
            .collect(),
        None => s
            .window_start
            .as_deref()
            .and_then(parse)
            .zip(s.window_end.as_deref().and_then(parse))
            .into_iter()
            .collect(),
    };
    let trend = s.drill_trend.as_ref();
    let points = trend.map(|t| t.drills.as_slice()).unwrap_or(&[]);
    RowView {
        name: p.policy.clone(),
        href: match mode {
            Mode::Daemon { .. } => format!("/policy/{}", urlencode(&p.policy)),
            Mode::File => format!("#{}", anchor(&p.policy)),
        },
        state: p.health.state.as_str(),
        reasons: p.health.reasons.clone(),
        method: s.method.to_string(),
        last_backup: s.last_backup_at.clone().unwrap_or_else(|| "never".into()),
        age: s
            .last_backup_at
            .as_deref()
            .and_then(parse)
            .map(|t| format!("{} ago", human(now.duration_since(t).as_secs().max(0))))
            .unwrap_or_default(),
        rpo: match (s.rpo_seconds, b.max_rpo_seconds) {
            (Some(r), Some(m)) => format!("RPO {} of max {}", human(r), human(m)),
            (Some(r), None) => format!("RPO {}", human(r)),
            (None, _) => "RPO -".into(),
        },
        window_svg: super::svg::window_bar(&ranges, now, s.method == Method::Physical),
        window_text: match (&s.window_start, &s.window_end) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "nothing recoverable".into(),
        },
        archive: match &s.archive {
            Some(a) => a.describe(),
            None if s.method == Method::Physical => "-".into(),
            None => "n/a (dumps)".into(),
        },
        copies: s
            .copies
            .iter()
            .map(|c| {
                let max = b
                    .copy_max_lag_seconds
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map(|(_, m)| format!(" (max {})", human(*m)))
                    .unwrap_or_default();
                match (c.missing_backups, c.lag_seconds) {
                    (0, _) => format!("{}: level", c.name),
                    (n, Some(l)) => format!("{}: {n} missing, lags {}{max}", c.name, human(l)),
                    (n, None) => format!("{}: holds none of {n}", c.name),
                }
            })
            .collect(),
        rto_svg: super::svg::trend(
            points,
            |d| d.rto_seconds,
            b.max_rto_seconds,
            "drill RTO, oldest to newest",
        ),
        rpo_svg: super::svg::trend(
            points,
            |d| d.rpo_seconds,
            b.drill_max_rpo_seconds,
            "drill RPO, oldest to newest",
        ),
        drilled: trend.is_some(),
        trend_text: match trend {
            Some(t) => format!(
                "{} drills; RTO p50 {} max {}{}; RPO p50 {} max {}",
                t.drills.len(),
                opt_secs(t.rto_p50_seconds),
                opt_secs(t.rto_max_seconds),
                b.max_rto_seconds
                    .map(|m| format!(" (budget {})", opt_secs(Some(m))))
                    .unwrap_or_default(),
                opt_secs(t.rpo_p50_seconds),
                opt_secs(t.rpo_max_seconds)
            ),
            None => "never drilled".into(),
        },
        next_backup: s.next_backup_at.clone().unwrap_or_else(|| "-".into()),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn detail(p: &PolicyReport, d: &Detail, now: Timestamp, mode: Mode) -> DetailView {
    let s = &p.status;
    DetailView {
        name: p.policy.clone(),
        anchor: anchor(&p.policy),
        row: row(p, now, mode),
        timeline_svg: super::svg::timeline(&d.backups, now),
        windows: s
            .windows
            .iter()
            .flatten()
            .map(|w| format!("{} .. {}", w.start, w.end))
            .chain(s.wal_gaps.iter().flatten().map(|g| g.to_string()))
            .collect(),
        backups: d
            .backups
            .iter()
            .map(|h| BackupView {
                id: h.id.clone(),
                kind: h.kind.clone(),
                status: h.status.clone(),
                started: h.started_at.clone().unwrap_or_default(),
                consistent: h.consistent_at.clone().unwrap_or_default(),
                duration: opt_secs(h.duration_seconds),
                size: h
                    .stored_bytes
                    .map(|b| crate::progress::human_bytes(b.max(0) as u64))
                    .unwrap_or_default(),
                parent: h.parent.clone().unwrap_or_default(),
                error: h.error.clone().unwrap_or_default(),
            })
            .collect(),
        drills: d
            .drills
            .iter()
            .map(|x| DrillView {
                at: x.finished_at.clone(),
                passed: x.passed,
                rto: opt_secs(x.rto_seconds),
                rpo: opt_secs(x.rpo_seconds),
                backup_id: x.backup_id.clone().unwrap_or_default(),
                checks: x.checks.clone(),
                error: x.error.clone().unwrap_or_default(),
            })
            .collect(),
        plan: d
            .retention
            .iter()
            .map(|x| PlanView {
                id: x.id.clone(),
                keep: x.keep,
                reasons: if x.reasons.is_empty() {
                    "no rule keeps it".into()
                } else {
                    x.reasons.join(", ")
                },
            })
            .collect(),
        leases: s
            .leases
            .iter()
            .map(|l| {
                format!(
                    "{} by pid {} on {} until {}",
                    l.what,
                    l.pid,
                    l.host,
                    crate::time::parse::rfc3339(l.expires)
                )
            })
            .collect(),
    }
}

fn title(r: &Report) -> String {
    let worst = if r.failing > 0 {
        format!("{} failing", r.failing)
    } else if r.warning > 0 {
        format!("{} warning", r.warning)
    } else {
        "all healthy".into()
    };
    format!("drctl: {worst}")
}

/// The overview: one row per policy; a report file adds every policy's
/// detail (those with one).
pub fn index(r: &Report, mode: Mode) -> String {
    let now = parse(&r.generated_at).unwrap_or_else(Timestamp::now);
    let page = IndexPage {
        title: title(r),
        refresh: match mode {
            Mode::Daemon { refresh_seconds } => Some(refresh_seconds),
            Mode::File => None,
        },
        generated_at: r.generated_at.clone(),
        version: r.version,
        counts: (r.healthy, r.warning, r.failing),
        rows: r.policies.iter().map(|p| row(p, now, mode)).collect(),
        unreadable: r
            .unreadable
            .iter()
            .map(|u| super::Unreadable {
                policy: u.policy.clone(),
                error: super::model::redact(&u.error),
            })
            .collect(),
        details: match mode {
            Mode::File => r
                .policies
                .iter()
                .filter_map(|p| Some(detail(p, p.detail.as_ref()?, now, mode)))
                .collect(),
            Mode::Daemon { .. } => Vec::new(),
        },
    };
    page.render()
        .unwrap_or_else(|e| format!("rendering failed: {e}"))
}

/// One policy's page (the daemon's `/policy/NAME`).
pub fn policy(r: &Report, p: &PolicyReport, d: &Detail, refresh_seconds: u32) -> String {
    let now = parse(&r.generated_at).unwrap_or_else(Timestamp::now);
    let mode = Mode::Daemon { refresh_seconds };
    let page = PolicyPage {
        title: format!("drctl: {} {}", p.policy, p.health.state.as_str()),
        refresh: Some(refresh_seconds),
        generated_at: r.generated_at.clone(),
        version: r.version,
        d: detail(p, d, now, mode),
    };
    page.render()
        .unwrap_or_else(|e| format!("rendering failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let p = crate::policy::parse(
            std::path::Path::new("orders.toml"),
            "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\n[repository]\nurl = \"file:///tmp/r\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n",
        )
        .unwrap();
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let mut s = crate::status::summarize(&p, &[], None, now);
        s.failures_since_success = 1;
        s.last_error = Some("<script>alert(1)</script> postgres://u:hunter2@h/db refused".into());
        super::super::build(&[p], vec![s], Vec::new(), now)
    }

    #[test]
    fn text_is_escaped_and_passwords_never_reach_the_page() {
        let r = report();
        for page in [
            index(&r, Mode::File),
            index(
                &r,
                Mode::Daemon {
                    refresh_seconds: 30,
                },
            ),
        ] {
            assert!(!page.contains("<script>"), "{page}");
            assert!(
                page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"),
                "{page}"
            );
            assert!(!page.contains("hunter2"), "{page}");
            assert!(page.contains("postgres://u:***@h/db"), "{page}");
            assert!(page.contains(r#"data-state="failing""#), "{page}");
        }
        let daemon = index(
            &r,
            Mode::Daemon {
                refresh_seconds: 30,
            },
        );
        assert!(daemon.contains(r#"<meta http-equiv="refresh" content="30">"#));
        assert!(daemon.contains("href=\"/policy/orders\""), "{daemon}");
        assert!(index(&r, Mode::File).contains("href=\"#policy-orders\""));
        assert!(!index(&r, Mode::File).contains("http-equiv"));
    }
}
