//! `drctl drill (POLICY | --all)`: restore into a scratch server, check,
//! measure RTO/RPO, report (text, JSON, JUnit). Exit 0 only if every drill
//! passed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ArgGroup;

use super::Ctx;
use crate::drill::{self, Point};
use crate::error::usage;

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["policy", "all"])))]
#[command(group(ArgGroup::new("point").args(["to", "random_point"])))]
pub struct Args {
    /// Policy to drill
    policy: Option<String>,
    /// Every policy with a [drill] section
    #[arg(long)]
    all: bool,
    /// Drill the state as of TIME (same forms as restore --to)
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Drill a randomly chosen backup
    #[arg(long)]
    random_point: bool,
    /// Write a JUnit XML report here
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Restore into a new database on this server instead of a scratch
    /// server drctl starts (dropped afterwards)
    #[arg(long, value_name = "URL")]
    scratch: Option<String>,
    /// Leave the restored server running and print how to connect
    #[arg(long)]
    keep: bool,
    /// age identity file (private key)
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Read this repository only ("primary" or a [[copy]] name); default:
    /// the primary, failing over to the copies in order
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    if a.repo.is_some() && a.policy.is_none() {
        return Err(usage(
            "--repo names one policy's repository: name the policy too",
        ));
    }
    let policies = match &a.policy {
        Some(p) => vec![super::pin(ctx.load(p)?, a.repo.as_deref())?],
        None => {
            let all: Vec<_> = ctx
                .load_all()?
                .into_iter()
                .filter(|p| p.drill.is_some())
                .collect();
            if all.is_empty() {
                return Err(usage(
                    "no policy has a [drill] section; add one or name a policy",
                ));
            }
            all
        }
    };
    let point = match (&a.to, a.random_point) {
        (Some(t), _) => {
            let now = jiff::Timestamp::now();
            Point::Time(
                crate::time::parse::parse_time(t, now, &jiff::tz::TimeZone::system())
                    .map_err(|e| usage(format!("--to: {e}")))?,
            )
        }
        (None, true) => Point::Random,
        (None, false) => Point::Latest,
    };
    let decrypts = policies
        .iter()
        .any(|p| p.backup.method != crate::policy::Method::RdsSnapshot);
    if decrypts && a.identity.is_none() {
        return Err(usage(
            "a drill decrypts the backup: pass --identity FILE (or set DRCTL_IDENTITY)",
        ));
    }
    let catalog = ctx.catalog().await?;
    let opts = drill::Options {
        point,
        scratch_url: a.scratch.clone(),
        keep: a.keep,
        identity: a.identity.clone(),
        catalog_path: ctx.catalog_path.clone(),
        policies_dir: std::path::absolute(&ctx.policies_dir)?,
    };
    let mut reports = Vec::new();
    for p in &policies {
        let r = drill::run(p, &opts, &catalog).await?;
        if !ctx.json() {
            print_text(&r);
        }
        reports.push(r);
    }
    if let Some(path) = &a.junit {
        std::fs::write(path, drill::junit::render(&reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if ctx.json() {
        if a.policy.is_some() {
            ctx.print_json(&reports[0])?;
        } else {
            ctx.print_json(&reports)?;
        }
    }
    Ok(if reports.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(r: &drill::Report) {
    println!(
        "drill {}: {}  backup {}  target {}  from {}",
        r.policy,
        if r.passed { "PASSED" } else { "FAILED" },
        r.backup_id.as_deref().unwrap_or("-"),
        r.target_time.as_deref().unwrap_or("-"),
        r.repository,
    );
    for c in &r.checks {
        println!(
            "  {} {:<32} {}",
            match (c.passed, c.errored) {
                (true, _) => "ok   ",
                (false, false) => "FAIL ",
                (false, true) => "ERROR",
            },
            c.name,
            c.detail
        );
    }
    let secs = |v: Option<f64>| v.map(|v| format!("{v:.1}s")).unwrap_or_else(|| "-".into());
    println!(
        "  RTO {}  RPO {}  ({:.1}s in all)",
        secs(r.rto_seconds),
        secs(r.rpo_seconds),
        r.duration_seconds
    );
    if let Some(s) = &r.scratch {
        println!("  kept: {s}");
    }
}
