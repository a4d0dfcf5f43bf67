//! `drctl completions SHELL`: a shell completion script generated from the
//! command definitions, so it can never fall behind the flags.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "drctl", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
