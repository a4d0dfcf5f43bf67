//! A policy's backup job, the same whether cron runs `drctl backup` or the
//! daemon does: take the policy lock, back up, prune, notify. A failed
//! prune or an undeliverable notification never turns a durable backup into
//! a failure.

use std::path::Path;

use anyhow::Result;

use crate::catalog::Catalog;
use crate::manifest::Manifest;
use crate::notify::{self, Event};
use crate::policy::{Method, Policy};
use crate::progress::human_bytes;

/// What a job made: a committed manifest, or an RDS snapshot.
pub enum Made {
    Repository(Box<Manifest>),
    Rds(Box<crate::rds::Backup>),
}

impl Made {
    pub fn id(&self) -> &str {
        match self {
            Made::Repository(m) => &m.id,
            Made::Rds(b) => &b.id,
        }
    }
}

pub struct BackupOutcome {
    pub made: Made,
    pub pruned: Option<crate::prune::Report>,
    pub prune_error: Option<String>,
}

pub async fn backup(
    policy: &Policy,
    catalog: &Catalog,
    catalog_path: &Path,
) -> Result<BackupOutcome> {
    let _lock = crate::lock::acquire(catalog_path, &policy.name, "backup")?;
    let rds = policy.backup.method == Method::RdsSnapshot;
    let made = if rds {
        crate::rds::backup(policy, catalog)
            .await
            .map(|b| Made::Rds(Box::new(b)))
    } else {
        crate::backup::run(policy, catalog)
            .await
            .map(|m| Made::Repository(Box::new(m)))
    };
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            notify::send(policy, Event::BackupFailed, &format!("{e:#}")).await;
            return Err(e);
        }
    };
    let summary = match &made {
        Made::Repository(m) => format!(
            "backup {} complete: {} stored, consistent at {}",
            m.id,
            human_bytes(m.stored_bytes()),
            crate::timeparse::rfc3339(m.consistent_at)
        ),
        Made::Rds(b) => format!(
            "snapshot {} complete in {}{}, consistent at {}",
            b.snapshot,
            b.region,
            b.copy_region
                .as_deref()
                .map(|r| format!(" (copied to {r})"))
                .unwrap_or_default(),
            b.consistent_at
        ),
    };
    notify::send(policy, Event::BackupSucceeded, &summary).await;
    let mut out = BackupOutcome {
        made,
        pruned: None,
        prune_error: None,
    };
    if !crate::retention::Rules::from_policy(&policy.retention).is_empty() {
        let r = async {
            if rds {
                return crate::rds::prune(policy, catalog, false).await;
            }
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
