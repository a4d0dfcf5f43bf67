//! `drctl report [POLICY...] [--html FILE]`: the status page as one
//! self-contained file (for CI artifacts and cron mail), or with
//! `--output json` its model. Exit 1 when any policy's state could not be
//! determined, as `status`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Ctx;
use crate::report::{self, html};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these policies (default: all)
    policy: Vec<String>,
    /// Write the report as one HTML file (no script, no network needed to
    /// open it); `-` writes it to standard output
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    if ctx.json() && a.html.as_deref() == Some(std::path::Path::new("-")) {
        return Err(crate::error::usage(
            "--html - and --output json both write to standard output: give --html a file name",
        ));
    }
    let (policies, unreadable) = super::status::select(ctx, &a.policy)?;
    let catalog = ctx.catalog_for_reading().await?;
    let r = report::collect(&policies, unreadable, &catalog, jiff::Timestamp::now()).await?;
    let unknown = r.policies.iter().any(|p| p.status.error.is_some()) || !r.unreadable.is_empty();
    if let Some(path) = &a.html {
        let page = html::index(&r, html::Mode::File);
        if path.as_os_str() == "-" {
            std::io::stdout().write_all(page.as_bytes())?;
        } else {
            // Beside the destination, then renamed: a reader (a CI
            // artifact upload, a web server) never sees half a page.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write the report in {}", dir.display()))?;
            tmp.write_all(page.as_bytes())?;
            // A temp file is 0600; a report holds no secret and is made to
            // be read (CI artifact, web server, mail).
            std::fs::set_permissions(
                tmp.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )?;
            tmp.persist(path)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            if !ctx.json() {
                eprintln!(
                    "wrote {} ({}: {} healthy, {} warning, {} failing)",
                    path.display(),
                    super::count(r.policies.len() + r.unreadable.len(), "policy", "policies"),
                    r.healthy,
                    r.warning,
                    r.failing
                );
            }
        }
    }
    if ctx.json() {
        ctx.print_json(&r)?;
    } else if a.html.is_none() {
        for p in &r.policies {
            println!(
                "{:<16} {:<8} {}",
                p.policy,
                p.health.state.as_str(),
                p.health.reasons.join("; ")
            );
        }
        for u in &r.unreadable {
            println!("{:<16} {:<8} policy file: {}", u.policy, "failing", u.error);
        }
    }
    Ok(if unknown {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
