//! `drctl status [POLICY...]`: per policy, last backup, RPO now, window,
//! failures since the last success, next run. Exit 1 when any policy's
//! state could not be determined.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::time::parse::human_duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these policies (default: all)
    policy: Vec<String>,
}

/// A policy file that does not load: its own row, so it hides no other.
pub(super) use crate::report::Unreadable as Broken;

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Row {
    Ok(Box<crate::status::PolicyStatus>),
    Broken(Broken),
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let (policies, broken) = select(ctx, &a.policy)?;
    let catalog = ctx.catalog_for_reading().await?;
    let all = crate::status::collect(&policies, &catalog, jiff::Timestamp::now()).await?;
    let failed = all.iter().any(|s| s.error.is_some()) || !broken.is_empty();
    if ctx.json() {
        let mut rows: Vec<(String, Row)> = all
            .into_iter()
            .map(|s| (s.policy.clone(), Row::Ok(Box::new(s))))
            .chain(
                broken
                    .into_iter()
                    .map(|b| (b.policy.clone(), Row::Broken(b))),
            )
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        ctx.print_json(&rows.into_iter().map(|r| r.1).collect::<Vec<_>>())?;
    } else {
        println!(
            "{:<16} {:<9} {:<21} {:>10} {:<44} {:>8}  {:<28} NEXT RUN",
            "POLICY", "METHOD", "LAST BACKUP", "RPO", "WINDOW", "FAILURES", "LAST DRILL"
        );
        for s in &all {
            print_row(s);
        }
        for b in &broken {
            println!("{:<16} error: {}", b.policy, b.error);
        }
        if !all.is_empty() && all.iter().all(|s| s.last_backup_at.is_none()) {
            println!(
                "(catalog {} has no backups of these policies; `drctl catalog rebuild` fills it from the repositories)",
                crate::catalog::shown(&ctx.catalog_path)
            );
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The policies asked for (or every one in the directory), and those that
/// do not load, each as its own row.
pub(super) fn select(
    ctx: &Ctx,
    names: &[String],
) -> Result<(Vec<crate::policy::Policy>, Vec<Broken>)> {
    Ok(if names.is_empty() {
        let (policies, problems) = ctx.read_dir()?;
        let broken = Broken::from_problems(problems);
        (policies, broken)
    } else {
        let mut policies = Vec::new();
        let mut broken = Vec::new();
        for name in names {
            match ctx.load(name) {
                Ok(p) => policies.push(p),
                Err(e) => broken.push(Broken {
                    policy: name.clone(),
                    error: format!("{e:#}"),
                }),
            }
        }
        (policies, broken)
    })
}

/// One policy's lines of the text table.
fn print_row(s: &crate::status::PolicyStatus) {
    let window = match (&s.window_start, &s.window_end) {
        (Some(a), Some(b)) => format!("{a} .. {b}"),
        _ => "-".into(),
    };
    println!(
        "{:<16} {:<9} {:<21} {:>10} {:<44} {:>8}  {:<28} {}",
        s.policy,
        s.method.to_string(),
        s.last_backup_at.as_deref().unwrap_or("never"),
        s.rpo_seconds
            .map(|r| human_duration(jiff::SignedDuration::from_secs(r)))
            .unwrap_or_else(|| "-".into()),
        window,
        s.failures_since_success,
        match (&s.last_drill_at, s.last_drill_passed) {
            (Some(at), Some(true)) => format!("passed {at}"),
            (Some(at), _) => format!("FAILED {at}"),
            _ => "never".into(),
        },
        s.next_backup_at.as_deref().unwrap_or("-"),
    );
    // Earlier ranges and the holes between them: the WINDOW column
    // is only the newest range.
    if let Some(ws) = s.windows.as_ref().filter(|w| w.len() > 1) {
        let all: Vec<String> = ws
            .iter()
            .map(|w| format!("{} .. {}", w.start, w.end))
            .collect();
        println!("{:<16} windows: {}", "", all.join(", "));
    }
    for g in s.wal_gaps.iter().flatten() {
        println!("{:<16} {g}", "");
    }
    // A fleet's worker: who ran the last backup, when it was not this host.
    if let Some(h) = s
        .last_backup_host
        .as_deref()
        .filter(|h| *h != crate::lock::hostname())
    {
        println!("{:<16} last backup ran on {h}", "");
    }
    if let Some(c) = &s.last_commit_at {
        println!("{:<16} last commit in the window: {c}", "");
    }
    if let Some(a) = &s.archive {
        println!("{:<16} {}", "", a.describe());
    }
    for c in &s.copies {
        let wal = match c.wal_backlog {
            Some(n) if n > 0 => format!(", owed {n} WAL files"),
            _ => String::new(),
        };
        let standing = match (c.missing_backups, c.lag_seconds) {
            (0, _) if wal.is_empty() => "level with the primary".to_string(),
            (0, _) => "all backups".to_string(),
            (n, Some(l)) => format!(
                "BEHIND: {} missing, newest {l}s older than the primary's",
                super::count(n as usize, "backup", "backups")
            ),
            (1, None) => "BEHIND: does not hold the primary's one backup".to_string(),
            (n, None) => format!("BEHIND: holds none of the primary's {n} backups"),
        };
        println!("{:<16} copy {}: {standing}{wal}", "", c.name);
    }
    let now = jiff::Timestamp::now();
    for l in &s.leases {
        let state = if l.expires > now {
            "held"
        } else {
            "EXPIRED (its holder stopped renewing)"
        };
        println!(
            "{:<16} lease {state}: {} by pid {} on {} since {}, until {}",
            "",
            l.what,
            l.pid,
            l.host,
            crate::time::parse::rfc3339(l.started),
            crate::time::parse::rfc3339(l.expires)
        );
    }
    if let Some(e) = &s.error {
        println!("{:<16} error: {e}", "");
    } else if let (Some(e), true) = (&s.last_error, s.failures_since_success > 0) {
        println!("{:<16} last failure: {e}", "");
    }
}
