//! What keeps a run of a policy single: the host's file lock
//! (`crate::lock`), and on an S3 repository the policy's lease there
//! (`repo::lease`), recorded in the catalog for `status`.

use std::path::Path;

use anyhow::Result;

use crate::lock::PolicyLock;

/// Held for the length of one run (see the module doc).
#[derive(Debug)]
pub struct RunGuard {
    _local: Option<PolicyLock>,
    lease: Option<crate::repo::lease::RunLease>,
}

/// Take the guard of `policy` for a run of kind `what` ("backup", "prune",
/// "copy", "drill"), or fail at once naming the holder. Drills take no file
/// lock (on one host they may overlap a backup, as ever) but hold a lease of
/// their own, so two daemons never drill one policy at once.
pub async fn run_guard(
    catalog: &Path,
    policy: &crate::policy::Policy,
    what: &str,
    record: Option<&crate::catalog::Catalog>,
) -> Result<RunGuard> {
    let local = if what == "drill" {
        None
    } else {
        Some(crate::lock::acquire(catalog, &policy.name, what)?)
    };
    let lease = match &policy.repository {
        Some(cfg) => {
            let repo = crate::repo::open(cfg).await?;
            if repo.conditional_writes() {
                let l =
                    crate::repo::lease::acquire(repo, &policy.name, what, cfg.lease_ttl()).await?;
                if let Some(cat) = record {
                    l.record_in(cat, &policy.name, crate::repo::lease::object(what))
                        .await;
                    if what == "backup" {
                        fail_abandoned(cat, &policy.name).await;
                    }
                }
                Some(l)
            } else {
                None
            }
        }
        None => None,
    };
    Ok(RunGuard {
        _local: local,
        lease,
    })
}

/// A backup holding the run lease knows no other backup of the policy
/// lives: rows still `running` were left by runs that died unheard.
async fn fail_abandoned(cat: &crate::catalog::Catalog, policy: &str) {
    let why = "drctl ended during the backup without a word (killed, or its host lost); a later run found the policy's lease free";
    match cat.fail_abandoned(policy, why).await {
        Ok(ids) => {
            for id in ids {
                tracing::warn!(backup = %id, "backup was left running by a run whose lease is gone; marking it failed");
            }
        }
        Err(e) => tracing::warn!("cannot mark abandoned backups of {policy} failed: {e:#}"),
    }
}

impl RunGuard {
    /// Release the lease (the file lock goes with the value). Returns why
    /// the lease was lost during the run, if it was.
    pub async fn release(self) -> Option<String> {
        match self.lease {
            Some(l) => l.release().await,
            None => None,
        }
    }

    /// Run `work` under this guard and release it whatever the outcome. A
    /// lease lost during a run that then failed is named in its error.
    pub async fn around<T>(self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let out = work.await;
        match (self.release().await, out) {
            (Some(lost), Err(e)) => Err(e.context(lost)),
            (_, out) => out,
        }
    }
}
