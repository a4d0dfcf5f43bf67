//! The status page (`drctl daemon --listen`: `/` and `/policy/NAME`) and
//! `drctl report`: per policy its health with the reasons, its window,
//! archive, copies and drill trend; per policy in detail, its backup
//! history, drill history with their checks, and what the next prune
//! keeps. One model (`Report`), rendered as JSON or as HTML (`html`).

pub mod html;
pub mod model;
pub mod svg;

use anyhow::Result;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::prune::retention::Decision;
use crate::status::PolicyStatus;
use model::{Budgets, Health, HistoryItem, State};

/// How many backups and drills a policy's detail goes back over.
pub const HISTORY_BACKUPS: usize = 200;
pub const HISTORY_DRILLS: i64 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub version: &'static str,
    pub healthy: usize,
    pub warning: usize,
    pub failing: usize,
    pub policies: Vec<PolicyReport>,
    /// Policy files that do not load: failing, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub policy: String,
    pub error: String,
}

impl Unreadable {
    /// One entry per policy file that did not load (`policy::load_dir`'s
    /// problems), its problems joined: each its own row, hiding no other.
    pub fn from_problems(problems: Vec<crate::policy::Problem>) -> Vec<Unreadable> {
        let mut out: Vec<Unreadable> = Vec::new();
        for p in problems {
            let name = p
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match out.iter_mut().find(|u| u.policy == name) {
                Some(u) => u.error = format!("{}; {p}", u.error),
                None => out.push(Unreadable {
                    policy: name,
                    error: p.to_string(),
                }),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    pub health: Health,
    pub budgets: Budgets,
    pub status: PolicyStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// Newest first, up to `HISTORY_BACKUPS`.
    pub backups: Vec<HistoryItem>,
    /// Newest first, up to `HISTORY_DRILLS`.
    pub drills: Vec<DrillItem>,
    /// What the next prune keeps and deletes, newest first, with why.
    pub retention: Vec<Decision>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillItem {
    pub id: String,
    pub backup_id: Option<String>,
    pub finished_at: String,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub checks: Vec<CheckItem>,
    pub error: Option<String>,
}

/// A drill check as its stored report gives it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CheckItem {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub errored: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StoredReport {
    checks: Vec<CheckItem>,
    error: Option<String>,
}

impl DrillItem {
    pub fn of(d: &crate::catalog::DrillRow, report: &str) -> DrillItem {
        let r: StoredReport = serde_json::from_str(report).unwrap_or_default();
        DrillItem {
            id: d.id.clone(),
            backup_id: d.backup_id.clone(),
            finished_at: crate::time::parse::rfc3339(d.finished_at),
            passed: d.passed,
            rto_seconds: d.rto_seconds,
            rpo_seconds: d.rpo_seconds,
            checks: r
                .checks
                .into_iter()
                .map(|c| CheckItem {
                    detail: model::redact(&c.detail),
                    ..c
                })
                .collect(),
            error: r.error.as_deref().map(model::redact),
        }
    }
}

/// The report from each policy's status (in `policies`' order): pure.
pub fn build(
    policies: &[Policy],
    statuses: Vec<PolicyStatus>,
    unreadable: Vec<Unreadable>,
    now: Timestamp,
) -> Report {
    let mut out: Vec<PolicyReport> = policies
        .iter()
        .zip(statuses)
        .map(|(p, mut s)| {
            // Errors quote what the tools said; a URL in them keeps its
            // user, never its password.
            s.error = s.error.as_deref().map(model::redact);
            s.last_error = s.last_error.as_deref().map(model::redact);
            let budgets = Budgets::of(p);
            PolicyReport {
                policy: p.name.clone(),
                health: model::health(&s, &budgets),
                budgets,
                status: s,
                detail: None,
            }
        })
        .collect();
    out.sort_by(|a, b| a.policy.cmp(&b.policy));
    let count = |st: State| out.iter().filter(|p| p.health.state == st).count();
    Report {
        generated_at: crate::time::parse::rfc3339(now),
        version: env!("CARGO_PKG_VERSION"),
        healthy: count(State::Healthy),
        warning: count(State::Warning),
        failing: count(State::Failing) + unreadable.len(),
        policies: out,
        unreadable,
    }
}

/// A policy's history, drills and retention plan, from the catalog.
pub async fn detail(p: &Policy, catalog: &Catalog) -> Result<Detail> {
    let rows = catalog.list(Some(&p.name)).await?;
    let drills = catalog.drill_history(&p.name, HISTORY_DRILLS).await?;
    Ok(Detail {
        backups: rows
            .iter()
            .take(HISTORY_BACKUPS)
            .map(HistoryItem::of)
            .collect(),
        drills: drills.iter().map(|(d, r)| DrillItem::of(d, r)).collect(),
        retention: model::retention_plan(p, &rows, &p.timezone()),
    })
}

/// Everything `drctl report` shows: status and, per policy, the detail.
pub async fn collect(
    policies: &[Policy],
    unreadable: Vec<Unreadable>,
    catalog: &Catalog,
    now: Timestamp,
) -> Result<Report> {
    let statuses = crate::status::collect(policies, catalog, now).await?;
    let mut report = build(policies, statuses, unreadable, now);
    for pr in &mut report.policies {
        if let Some(p) = policies.iter().find(|p| p.name == pr.policy) {
            pr.detail = Some(detail(p, catalog).await?);
        }
    }
    Ok(report)
}
