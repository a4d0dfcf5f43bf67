//! `drctl policy check`.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate policies; every problem names file, key and reason (exit 2)
    Check {
        /// Policy names [default: all in the policies directory]
        names: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, cmd: PolicyCmd) -> Result<ExitCode> {
    let PolicyCmd::Check { names } = cmd;
    let (mut policies, mut problems) = ctx.read_dir()?;
    if !names.is_empty() {
        for n in &names {
            if !policies.iter().any(|p| &p.name == n)
                && !problems
                    .iter()
                    .any(|p| p.file.file_stem().is_some_and(|s| s == n.as_str()))
            {
                problems.push(crate::policy::Problem {
                    file: ctx.policies_dir.join(format!("{n}.toml")),
                    key: String::new(),
                    reason: "no such policy file".into(),
                });
            }
        }
        policies.retain(|p| names.contains(&p.name));
        problems.retain(|p| {
            names
                .iter()
                .any(|n| p.file.file_stem().is_some_and(|s| s == n.as_str()))
        });
    }
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "ok": problems.is_empty(),
            "policies": policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            "problems": problems.iter().map(|p| serde_json::json!({"file": p.file, "key": p.key, "reason": p.reason})).collect::<Vec<_>>(),
        }))?;
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        if problems.is_empty() {
            if policies.is_empty() {
                eprintln!(
                    "no policies in {}; run `drctl init`",
                    ctx.policies_dir.display()
                );
                return Ok(ExitCode::from(2));
            }
            let names: Vec<_> = policies.iter().map(|p| p.name.as_str()).collect();
            println!("ok: {} ({})", names.len(), names.join(", "));
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
