//! `drctl man [--dir DIR]`: man pages generated from the command
//! definitions (drctl.1 and one per subcommand).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write drctl.1 and one page per subcommand (drctl-backup.1, …) into
    /// DIR; without it, drctl.1 goes to stdout
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cmd = super::Cli::command();
    let Some(dir) = a.dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    for (name, page) in pages(cmd) {
        let path = dir.join(format!("{name}.1"));
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        page.render(&mut f)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
    }
    eprintln!("wrote {written} man pages into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// drctl.1, then one page per visible subcommand (nested ones too:
/// drctl-catalog-rebuild.1), each named as `man` looks them up.
fn pages(mut cmd: clap::Command) -> Vec<(String, clap_mangen::Man)> {
    // Built, the subcommands carry the global flags (--policies, …) too.
    cmd.build();
    let mut out = Vec::new();
    let mut todo = vec![("drctl".to_string(), cmd)];
    while let Some((name, cmd)) = todo.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let full = format!("{name}-{}", sub.get_name());
            // The page's title and synopsis name the whole command line.
            let sub = sub
                .clone()
                .name(full.clone())
                .bin_name(full.replace('-', " "))
                .version(env!("CARGO_PKG_VERSION"));
            todo.push((full, sub));
        }
        out.push((name.clone(), clap_mangen::Man::new(cmd)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_visible_command_and_none_for_hidden_ones() {
        let names: Vec<String> = pages(super::super::Cli::command())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for want in [
            "drctl",
            "drctl-backup",
            "drctl-restore",
            "drctl-catalog-rebuild",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("wal-prefetch")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.ends_with("-help")), "{names:?}");
    }
}
