//! Repositories: where artifacts live. One trait, two drivers (`fs`, `s3`).
//!
//! Metadata calls are async. Streaming writers and readers are blocking
//! `Write`/`Read` objects because zstd and age stream synchronously; they
//! must be used (and dropped) on blocking threads (`spawn_blocking`).

pub mod failover;
pub mod fs;
pub mod inventory;
pub mod lease;
pub mod manifest;
pub mod mirror;
pub mod s3;
pub mod seal;
pub mod silence;
pub mod throttle;
pub mod url;

pub use url::RepoUrl;

use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::policy;

pub const REPO_MARKER: &str = "drctl-repo.json";
pub const REPO_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// What an interrupted write leaves behind: a hidden temp file (file
/// repositories) or an unfinished multipart upload (S3). Never an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Where it is, relative to the repository root (the temp file's path,
    /// or the key the upload was for).
    pub key: String,
    /// Bytes it holds, where the store says (0 when it does not).
    pub size: u64,
    /// How long ago it was last written or started.
    pub age: std::time::Duration,
    /// S3: the upload to abort.
    pub upload_id: Option<String>,
}

/// A blocking, streaming object upload. Nothing is visible under the key
/// until `finish` returns Ok; dropping an unfinished writer aborts it.
pub trait ObjectWriter: Write + Send {
    /// Make the object durable and visible; returns its size.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// The condition of a conditional write (leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-None-Match: *`: only when no object is there.
    Absent,
    /// `If-Match: ETAG`: only when the object there is this version.
    Matches(String),
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// Written; the new version's ETag.
    Written(String),
    /// The condition did not hold (412, or 409 for a concurrent write).
    Refused,
}

/// A blocking, streaming object download.
pub type ObjectReader = Box<dyn Read + Send>;

#[async_trait]
pub trait Repository: Send + Sync {
    /// The URL it was opened from (no secrets: repository URLs carry none).
    fn url(&self) -> &str;
    /// Write a small object atomically and durably.
    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()>;
    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Size of an object, None if absent.
    async fn head(&self, key: &str) -> Result<Option<u64>>;
    /// Every object under a prefix, recursively, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Delete; an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    async fn reader(&self, key: &str) -> Result<ObjectReader>;
    /// Interrupted writes under a prefix (see `Leftover`).
    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>>;
    /// Interrupted writes of one key. Cheap enough for every wal-push: S3
    /// lists the uploads of that key only (drivers with temp files beside
    /// the object override this).
    async fn leftovers_of(&self, key: &str) -> Result<Vec<Leftover>> {
        let mut found = self.leftovers(key).await?;
        found.retain(|l| l.key == key);
        Ok(found)
    }
    /// Remove one: delete the temp file, abort the upload.
    async fn remove_leftover(&self, l: &Leftover) -> Result<()>;
    /// When an object's S3 Object Lock ends: its retain-until date
    /// (`Timestamp::MAX` under a legal hold). None when it is not locked, is
    /// absent, or the store has no locks. Prune deletes nothing before it.
    async fn locked_until(&self, _key: &str) -> Result<Option<jiff::Timestamp>> {
        Ok(None)
    }
    /// Whether this store arbitrates conditional writes (S3's If-None-Match
    /// and If-Match); only then are `put_if`, `get_tagged` and `delete_if`
    /// worth calling. File repositories rely on the host's file lock.
    fn conditional_writes(&self) -> bool {
        false
    }
    /// Write `data` under `key` only if `cond` holds.
    async fn put_if(&self, key: &str, _data: Vec<u8>, _cond: &Precondition) -> Result<Conditional> {
        bail!(
            "{}: conditional writes of {key} are not supported here",
            self.url()
        )
    }
    /// An object and its ETag; None when absent.
    async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        bail!(
            "{}: tagged reads of {key} are not supported here",
            self.url()
        )
    }
    /// Delete `key` only if it is still version `etag`; false when it is not.
    async fn delete_if(&self, key: &str, _etag: &str) -> Result<bool> {
        bail!(
            "{}: conditional deletes of {key} are not supported here",
            self.url()
        )
    }
    /// Whether any object here can be locked (an S3 bucket with Object Lock
    /// enabled): only then is `locked_until` worth asking.
    async fn lockable(&self) -> Result<bool> {
        Ok(false)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RepoMarker {
    pub format: u32,
    pub created_at: jiff::Timestamp,
    pub created_by: String,
}

/// Keys are built by drctl, but check anyway: a key escaping the root is a bug.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|c| c == ".." || c == ".")
        || key.contains('\0')
    {
        bail!("invalid repository key '{key}'");
    }
    Ok(())
}

/// Open the repository of a policy.
/// The repository a policy writes to (`[repository]`, required).
pub async fn open_for(policy: &policy::Policy) -> Result<Arc<dyn Repository>> {
    let cfg = policy.repository.as_ref().ok_or_else(|| {
        crate::error::usage(format!(
            "{}: [repository] is required",
            policy.path.display()
        ))
    })?;
    open(cfg).await
}

/// Every repository of a policy, named, primary first, then its copies in
/// order.
pub async fn open_all(policy: &policy::Policy) -> Result<Vec<mirror::Named>> {
    let mut out = vec![mirror::Named {
        name: policy::PRIMARY.to_string(),
        repo: open_for(policy).await?,
    }];
    for c in &policy.copies {
        out.push(mirror::Named {
            name: c.name.clone(),
            repo: open(&c.repository).await?,
        });
    }
    Ok(out)
}

/// What restores, wal-fetch and drills read: the primary, failing over to
/// the copies (see `failover`). Just the primary when there are none.
pub async fn open_for_reading(policy: &policy::Policy) -> Result<Arc<dyn Repository>> {
    if policy.copies.is_empty() {
        return open_for(policy).await;
    }
    Ok(Arc::new(failover::Failover::new(open_all(policy).await?)))
}

/// What a backup or wal-push writes through: the primary, and every copy
/// by way of a `mirror::Mirror`. A copy that cannot be opened or
/// initialized is a failure from the start; the primary's is an error.
pub async fn open_for_writing(
    policy: &policy::Policy,
) -> Result<(Arc<dyn Repository>, mirror::Failures)> {
    let primary = open_for(policy).await?;
    let failures = mirror::Failures::default();
    if policy.copies.is_empty() {
        return Ok((primary, failures));
    }
    let mut copies = Vec::new();
    for c in &policy.copies {
        let opened = async {
            let r = open(&c.repository).await?;
            ensure_initialized(&*r).await?;
            anyhow::Ok(r)
        }
        .await;
        match opened {
            Ok(repo) => copies.push(mirror::Named {
                name: c.name.clone(),
                repo,
            }),
            Err(e) => failures.record(&c.name, &e),
        }
    }
    let mirror = mirror::Mirror::new(primary, copies, failures.clone());
    Ok((Arc::new(mirror), failures))
}

pub async fn open(cfg: &policy::Repository) -> Result<Arc<dyn Repository>> {
    let url = RepoUrl::parse(&cfg.url).map_err(crate::error::usage)?;
    let repo: Arc<dyn Repository> = match url {
        RepoUrl::File(root) => Arc::new(fs::FsRepo::new(cfg.url.clone(), root)),
        RepoUrl::S3 { bucket, prefix } => Arc::new(s3::S3Repo::connect(cfg, bucket, prefix).await?),
    };
    Ok(match cfg.max_rate_bytes() {
        Some(rate) => Arc::new(throttle::Throttled::new(repo, rate)),
        None => repo,
    })
}

/// Whether `repo` provably is a drctl repository: its marker reads. An
/// absent marker means a folder gone, a wrong URL or bucket: an empty
/// listing there proves nothing.
pub async fn has_marker(repo: &dyn Repository) -> Result<bool> {
    Ok(marker(repo).await?.is_some())
}

async fn marker(repo: &dyn Repository) -> Result<Option<Vec<u8>>> {
    repo.get_bytes(REPO_MARKER)
        .await
        .with_context(|| format!("cannot read repository {}", repo.url()))
}

/// Create the repository marker when absent; check its format when present.
pub async fn ensure_initialized(repo: &dyn Repository) -> Result<()> {
    match marker(repo).await? {
        Some(bytes) => {
            let m: RepoMarker = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{}/{REPO_MARKER} is not a drctl repository marker",
                    repo.url()
                )
            })?;
            if m.format > REPO_FORMAT {
                bail!(
                    "repository {} has format {} but this drctl understands {REPO_FORMAT}; upgrade drctl",
                    repo.url(),
                    m.format
                );
            }
        }
        None => {
            let marker = RepoMarker {
                format: REPO_FORMAT,
                created_at: jiff::Timestamp::now(),
                created_by: format!("drctl {}", env!("CARGO_PKG_VERSION")),
            };
            repo.put_bytes(REPO_MARKER, serde_json::to_vec_pretty(&marker)?)
                .await
                .with_context(|| format!("cannot initialize repository {}", repo.url()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("orders/backups/x/manifest.json").is_ok());
        assert!(check_key("../x").is_err());
        assert!(check_key("/x").is_err());
        assert!(check_key("a/./b").is_err());
    }
}
