//! A policy's backup job, the same whether cron runs `drctl backup` or the
//! daemon does: take the policy lock, back up, prune, notify. A failed
//! prune or an undeliverable notification never turns a durable backup into
//! a failure.

use std::path::Path;

use anyhow::Result;

use crate::catalog::Catalog;
use crate::manifest::Manifest;
use crate::notify::{self, Event};
use crate::policy::Policy;
use crate::progress::human_bytes;

pub struct BackupOutcome {
    pub manifest: Manifest,
    pub pruned: Option<crate::prune::Report>,
    pub prune_error: Option<String>,
}

pub async fn backup(
    policy: &Policy,
    catalog: &Catalog,
    catalog_path: &Path,
) -> Result<BackupOutcome> {
    let _lock = crate::lock::acquire(catalog_path, &policy.name, "backup")?;
    let m = match crate::backup::run(policy, catalog).await {
        Ok(m) => m,
        Err(e) => {
            notify::send(policy, Event::BackupFailed, &format!("{e:#}")).await;
            return Err(e);
        }
    };
    notify::send(
        policy,
        Event::BackupSucceeded,
        &format!(
            "backup {} complete: {} stored, consistent at {}",
            m.id,
            human_bytes(m.stored_bytes()),
            crate::timeparse::rfc3339(m.consistent_at)
        ),
    )
    .await;
    let mut out = BackupOutcome {
        manifest: m,
        pruned: None,
        prune_error: None,
    };
    if !crate::retention::Rules::from_policy(&policy.retention).is_empty() {
        let r = async {
            let repo = crate::backup::open_repo(policy).await?;
            crate::prune::run(policy, &*repo, catalog, false).await
        }
        .await;
        match r {
            Ok(r) => out.pruned = Some(r),
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(policy = %policy.name, "prune after backup failed: {msg}");
                notify::send(policy, Event::PruneFailed, &msg).await;
                out.prune_error = Some(msg);
            }
        }
    }
    Ok(out)
}
