//! `drctl init`: an example policy and an age key pair.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use age::secrecy::ExposeSecret;
use anyhow::{Context, Result};

use super::Ctx;
use crate::error::usage;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repository URL [default: file://$PWD/repo]
    #[arg(long)]
    repo: Option<String>,
    /// Database to protect
    #[arg(long, default_value = "postgres://postgres@localhost:5432/postgres")]
    source: String,
    /// Policy name (the policy file is POLICIES/NAME.toml)
    #[arg(long, default_value = "example")]
    name: String,
    /// Where to write the private key (reused if it exists)
    #[arg(long, default_value = "drctl-identity.txt")]
    identity_file: PathBuf,
    /// Give the policies, the catalog (and its locks) and a file
    /// repository to this OS user: the one archive_command runs as
    /// (postgres), who then runs every drctl command. The identity stays
    /// with whoever ran init.
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    if !crate::policy::valid_name(&a.name) {
        return Err(usage(format!(
            "--name '{}' must be 1-64 of [A-Za-z0-9_-]",
            a.name
        )));
    }
    crate::pg::ConnUrl::parse(&a.source).map_err(|e| usage(format!("--source: {e}")))?;
    let repo_url = match a.repo {
        Some(r) => r,
        None => format!("file://{}/repo", std::env::current_dir()?.display()),
    };
    crate::repo::RepoUrl::parse(&repo_url).map_err(|e| usage(format!("--repo: {e}")))?;
    let policy_path = ctx.policies_dir.join(format!("{}.toml", a.name));
    if policy_path.exists() {
        return Err(usage(format!(
            "{} already exists; pick another --name",
            policy_path.display()
        )));
    }

    let public = if a.identity_file.exists() {
        let ids = crate::pipeline::load_identities(&a.identity_file)?;
        ids[0].to_public().to_string()
    } else {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&a.identity_file)
            .with_context(|| format!("cannot create {}", a.identity_file.display()))?;
        writeln!(
            f,
            "# created: {}\n# public key: {public}\n{}",
            jiff::Timestamp::now(),
            id.to_string().expose_secret()
        )?;
        f.sync_all()?;
        public
    };

    std::fs::create_dir_all(&ctx.policies_dir)
        .with_context(|| format!("cannot create {}", ctx.policies_dir.display()))?;
    let text = include_str!("../../policies/example.toml")
        .replace("(\"example\")", &format!("(\"{}\")", a.name))
        .replace("postgres://backup@db1:5432/orders", &a.source)
        .replace("file:///var/lib/drctl/repo", &repo_url)
        .replace(
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
            &public,
        );
    // The template must stay a valid policy after substitution.
    crate::policy::parse(&policy_path, &text)
        .map_err(|p| anyhow::anyhow!("generated policy is invalid: {}", p[0]))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&policy_path)
        .with_context(|| format!("cannot create {}", policy_path.display()))?;
    f.write_all(text.as_bytes())?;

    if let Ok(policy) = crate::policy::parse(&policy_path, &text) {
        let repo = crate::repo::open_for(&policy).await?;
        crate::repo::ensure_initialized(&*repo).await?;
    }
    // The catalog and its locks exist from the start, so they are made by
    // (or given to) the right user rather than by whoever runs first.
    ctx.catalog().await?.close().await;
    let mut owned = vec![
        ctx.policies_dir.clone(),
        crate::lock::locks_dir(&ctx.catalog_path),
    ];
    if !crate::catalog::is_url(&ctx.catalog_path) {
        owned.extend(crate::catalog::files(&ctx.catalog_path));
    }
    if let Some(path) = repo_url.strip_prefix("file://") {
        owned.push(PathBuf::from(path));
    }
    match &a.owner {
        Some(user) => {
            give_to(user, &owned)?;
            let dir = crate::lock::catalog_dir(&ctx.catalog_path);
            let writable = crate::catalog::is_url(&ctx.catalog_path)
                || std::process::Command::new(crate::pg::tools::runuser())
                    .args(["-u", user, "--", "test", "-w"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
            if !writable {
                eprintln!(
                    "note: {user} cannot write {}, where SQLite keeps the catalog's -wal and -shm files: keep the catalog in a folder {user} owns (install -d -o {user} /var/lib/drctl; --catalog /var/lib/drctl/drctl.db or DRCTL_CATALOG)",
                    dir.display()
                );
            }
        }
        None if crate::pg::tools::is_root() && repo_url.starts_with("file://") => {
            eprintln!(
                "note: made as root; archive_command runs as the server's OS user, which must own the repository and should run drctl from then on: `drctl init --owner postgres`, or chown -R postgres {}",
                owned
                    .iter()
                    .filter(|p| p.exists())
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        None => {}
    }
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "policy": policy_path, "identity": a.identity_file, "recipient": public, "repository": repo_url,
        }))?;
    } else {
        println!("policy:     {}", policy_path.display());
        println!("repository: {repo_url}");
        println!(
            "identity:   {} (private key, mode 0600: keep a copy OFF this host; restores need it)",
            a.identity_file.display()
        );
        println!("recipient:  {public}");
        println!(
            "next:       edit the policy, then `drctl policy check` and `drctl backup {}`",
            a.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// chown -R `user` each path that exists.
fn give_to(user: &str, paths: &[PathBuf]) -> Result<()> {
    let there: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    let mut failed = false;
    for p in &there {
        let st = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(p)
            .status()
            .context("cannot run chown")?;
        // A file SQLite removed meanwhile (-wal, -shm) needs no owner.
        failed |= !st.success() && p.exists();
    }
    if failed {
        anyhow::bail!(
            "cannot give {} to {user} (run drctl init as root, and check the user exists)",
            there
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
