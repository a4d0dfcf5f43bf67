//! What a repository holds: committed backups (those with a manifest) and
//! incomplete ones (objects without a manifest). The repository is the
//! source of truth; the catalog only caches this.

use anyhow::{Context, Result};

use crate::repo::manifest::{Manifest, MANIFEST_NAME};
use crate::repo::Repository;
use crate::restore::plan::Candidate;

#[derive(Debug, Default)]
pub struct Inventory {
    pub complete: Vec<Manifest>,
    /// (policy, backup id) with objects but no manifest.
    pub incomplete: Vec<(String, String)>,
    /// (policy, backup id, why): a manifest that does not read or fails its
    /// seal. Never a backup: nothing restores from it; verify names it.
    pub corrupt: Vec<(String, String, String)>,
    /// Backup ids whose manifests predate seals (format 1).
    pub unsealed: Vec<String>,
}

impl Inventory {
    /// Backups of `policy` left out because their manifest is corrupt, as
    /// a planner says it; None when there are none.
    pub fn left_out(&self, policy: &str) -> Option<String> {
        let c: Vec<String> = self
            .corrupt
            .iter()
            .filter(|(p, _, _)| p == policy)
            .map(|(_, id, why)| format!("{id} ({why})"))
            .collect();
        (!c.is_empty()).then(|| {
            format!(
                "left out because its manifest is corrupt, never restored from: backup {}; run `drctl verify {policy}`",
                c.join(", ")
            )
        })
    }

    pub fn candidates(&self) -> Vec<Candidate> {
        self.complete
            .iter()
            .map(|m| Candidate {
                id: m.id.clone(),
                consistent_at: m.consistent_at,
            })
            .collect()
    }

    pub fn find(&self, id: &str) -> Option<&Manifest> {
        self.complete.iter().find(|m| m.id == id)
    }
}

/// Scan one policy's backups, or (None) every policy in the repository.
pub async fn scan(repo: &dyn Repository, policy: Option<&str>) -> Result<Inventory> {
    let prefix = policy.map(|p| format!("{p}/backups/")).unwrap_or_default();
    let objects = repo
        .list(&prefix)
        .await
        .with_context(|| format!("cannot list repository {}", repo.url()))?;
    let mut inv = Inventory::default();
    let mut seen = std::collections::BTreeMap::<(String, String), bool>::new();
    for o in &objects {
        let parts: Vec<&str> = o.key.split('/').collect();
        if let [pol, "backups", id, name] = parts.as_slice() {
            let has = seen
                .entry((pol.to_string(), id.to_string()))
                .or_insert(false);
            if *name == MANIFEST_NAME {
                *has = true;
            }
        }
    }
    for ((pol, id), has_manifest) in seen {
        if !has_manifest {
            inv.incomplete.push((pol, id));
            continue;
        }
        let key = crate::repo::manifest::manifest_key(&pol, &id);
        let bytes = repo
            .get_bytes(&key)
            .await?
            .with_context(|| format!("{key} vanished while scanning"))?;
        match Manifest::from_json_sealed(&bytes) {
            Ok((m, seal)) => {
                if seal == crate::repo::seal::Seal::Unsealed {
                    inv.unsealed.push(m.id.clone());
                }
                inv.complete.push(m);
            }
            Err(e) => inv.corrupt.push((pol, id, format!("{key}: {e}"))),
        }
    }
    inv.complete
        .sort_by(|a, b| (a.consistent_at, &a.id).cmp(&(b.consistent_at, &b.id)));
    Ok(inv)
}
