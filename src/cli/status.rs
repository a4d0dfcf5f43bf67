//! `drctl status [POLICY...]`: per policy, last backup, RPO now, window,
//! failures since the last success, next run. Exit 1 when any policy's
//! state could not be determined.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::timeparse::human_duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these policies (default: all)
    policy: Vec<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policies = if a.policy.is_empty() {
        ctx.load_all()?
    } else {
        a.policy
            .iter()
            .map(|p| ctx.load(p))
            .collect::<Result<Vec<_>>>()?
    };
    let catalog = ctx.catalog().await?;
    let all = crate::status::collect(&policies, &catalog, jiff::Timestamp::now()).await?;
    let failed = all.iter().any(|s| s.error.is_some());
    if ctx.json() {
        ctx.print_json(&all)?;
    } else {
        println!(
            "{:<16} {:<9} {:<21} {:>10} {:<44} {:>8}  {:<28} NEXT RUN",
            "POLICY", "METHOD", "LAST BACKUP", "RPO", "WINDOW", "FAILURES", "LAST DRILL"
        );
        for s in &all {
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
            if let Some(c) = &s.last_commit_at {
                println!("{:<16} last commit in the window: {c}", "");
            }
            if let Some(a) = &s.archive {
                println!("{:<16} {}", "", a.describe());
            }
            if let Some(e) = &s.error {
                println!("{:<16} error: {e}", "");
            } else if let (Some(e), true) = (&s.last_error, s.failures_since_success > 0) {
                println!("{:<16} last failure: {e}", "");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
