//! `drctl check POLICY`: prove the backup chain end to end; exit 1 naming
//! the first failure and what to do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy name
    policy: String,
    /// age identity file: also decrypt the archived test segment
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let policy = ctx.load(&a.policy)?;
    let opts = crate::check::Options {
        policies_dir: &ctx.policies_dir,
        identity: a.identity.as_deref(),
    };
    let report = crate::check::run(&policy, &opts).await?;
    if ctx.json() {
        ctx.print_json(&report)?;
    } else {
        for s in &report.checks {
            let mark = if s.passed { "ok  " } else { "FAIL" };
            println!("{mark} {}: {}", s.name, s.detail);
        }
        if report.passed {
            println!("check of {} passed", report.policy);
        }
    }
    if report.passed {
        Ok(ExitCode::SUCCESS)
    } else {
        if let Some(s) = report.checks.iter().find(|s| !s.passed) {
            eprintln!(
                "drctl: error: check of {}: {}: {}",
                report.policy, s.name, s.detail
            );
        }
        Ok(ExitCode::from(1))
    }
}
