//! `drctl deploy kubernetes [POLICY...]`: print one CronJob per scheduled
//! policy (and per scheduled drill) for `kubectl apply -f -`.

use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum DeployCmd {
    /// Print Kubernetes CronJobs for the policies' schedules (YAML on stdout)
    Kubernetes(KubeArgs),
}

#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Policies to deploy [default: every policy with a schedule]
    #[arg(value_name = "POLICY")]
    names: Vec<String>,
    /// Container image, pinned (a tag or @sha256 digest; not :latest)
    #[arg(long, default_value = concat!("ghcr.io/drctl/drctl:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Namespace of the CronJobs [default: kubectl's]
    #[arg(long)]
    namespace: Option<String>,
    /// Secret whose keys become the environment: DRCTL_CATALOG, PGPASSWORD, AWS_ACCESS_KEY_ID, …
    #[arg(long, default_value = "drctl-secrets")]
    secret: String,
    /// ConfigMap holding the policy files
    #[arg(long, default_value = "drctl-policies")]
    policies_configmap: String,
    /// Secret holding identity.txt, the age key drills restore with
    #[arg(long, default_value = "drctl-identity")]
    identity_secret: String,
}

pub async fn run(ctx: &Ctx, cmd: DeployCmd) -> Result<ExitCode> {
    let DeployCmd::Kubernetes(a) = cmd;
    if a.image.ends_with(":latest") || !a.image.contains([':', '@']) {
        return Err(crate::error::usage(format!(
            "--image {}: pin the image to a version tag or a digest (…:0.1.0, …@sha256:…); a floating tag makes every run a different program",
            a.image
        )));
    }
    let policies = if a.names.is_empty() {
        ctx.load_all()?
            .into_iter()
            .filter(|p| p.backup.schedule.is_some())
            .collect()
    } else {
        a.names
            .iter()
            .map(|n| ctx.load(n))
            .collect::<Result<Vec<_>>>()?
    };
    let opts = crate::deploy::Options {
        image: a.image,
        namespace: a.namespace,
        secret: a.secret,
        policies: a.policies_configmap,
        identity: a.identity_secret,
    };
    let yaml = crate::deploy::kubernetes(&policies, &opts, jiff::Timestamp::now())
        .map_err(|e| crate::error::usage(format!("{e:#}")))?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}
