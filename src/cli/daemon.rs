//! `drctl daemon [--listen ADDR]`: run every policy's schedule.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve /metrics and /healthz here (e.g. 127.0.0.1:9187)
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Jobs running at once, across policies
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_concurrent: usize,
    /// Do not run, at start-up, a backup missed while the daemon was down
    #[arg(long)]
    no_catch_up: bool,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish before
    /// they are cancelled (e.g. 60s, 10m)
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    grace: String,
    /// Log every run when it is due, run nothing (for measuring the scheduler)
    #[arg(long)]
    dry_run: bool,
    /// age identity for scheduled drills ([drill] schedule)
    #[arg(long, env = "DRCTL_IDENTITY", value_name = "FILE")]
    identity: Option<std::path::PathBuf>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let grace = crate::time::parse::parse_duration(&a.grace)
        .map_err(|e| crate::error::usage(format!("--grace: {e}")))?;
    if !ctx.policies_dir.is_dir() {
        return Err(crate::error::usage(format!(
            "policies directory {} does not exist; run `drctl init` or pass --policies DIR",
            ctx.policies_dir.display()
        )));
    }
    crate::daemon::run(crate::daemon::Options {
        policies_dir: ctx.policies_dir.clone(),
        catalog_path: ctx.catalog_path.clone(),
        listen: a.listen,
        max_concurrent: a.max_concurrent,
        catch_up: !a.no_catch_up,
        grace: grace.unsigned_abs(),
        dry_run: a.dry_run,
        identity: a.identity.map(|p| std::path::absolute(&p).unwrap_or(p)),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
