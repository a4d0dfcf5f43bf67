//! Reads that survive the loss of a repository: the primary first, then
//! each `[[copy]]` in the policy's order.
//!
//! The listing (what backups and WAL exist) comes from the authority: the
//! first repository that answers and holds a repository marker. A primary
//! that was deleted, or does not answer, hands over to the copy whole. An
//! object one repository lacks, or cannot give, is fetched from the next.
//!
//! "Absent" is said only when it is known. Copies are never ahead of the
//! primary (every write lands there first), so once the authority and
//! every repository before it answered "not here", a copy after it that
//! does not answer changes nothing. A repository before the authority that
//! does not answer might hold it: that is unknown, an error, never a quiet
//! "not there" (wal-fetch would end recovery early on it). `--repo NAME`
//! reads one repository and takes its word.

use anyhow::{bail, Result};
use async_trait::async_trait;

use super::mirror::Named;
use super::{Leftover, ObjectInfo, ObjectReader, ObjectWriter, Repository, REPO_MARKER};

pub struct Failover {
    repos: Vec<Named>,
    authority: tokio::sync::OnceCell<usize>,
}

impl Failover {
    pub fn new(repos: Vec<Named>) -> Failover {
        Failover {
            repos,
            authority: tokio::sync::OnceCell::new(),
        }
    }

    async fn authority(&self) -> Result<usize> {
        Ok(*self
            .authority
            .get_or_try_init(|| self.find_authority())
            .await?)
    }

    /// A repository that did not answer about `key`: past the authority it
    /// cannot hold what the authority lacks (None, with a warning); up to
    /// it, the answer is unknown.
    fn unknown(
        &self,
        i: usize,
        authority: usize,
        key: &str,
        e: anyhow::Error,
    ) -> Option<anyhow::Error> {
        let r = &self.repos[i];
        if i > authority {
            tracing::warn!(copy = %r.name, "copy does not answer about {key}: {e:#}");
            return None;
        }
        Some(e.context(format!(
            "repository {} ({}) does not answer, so whether it holds {key} is unknown (to read one copy alone and take its word, pass --repo NAME)",
            r.name,
            r.repo.url()
        )))
    }

    /// Ask each repository in turn; the first that has it answers. None
    /// only when that is known (see `unknown`).
    async fn first_found<'a, T, F, Fut>(&'a self, key: &str, ask: F) -> Result<Option<T>>
    where
        F: Fn(&'a Named) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let authority = self.authority().await?;
        let mut unknown = None;
        for (i, r) in self.repos.iter().enumerate() {
            match ask(r).await {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => {}
                Err(e) => unknown = self.unknown(i, authority, key, e).or(unknown),
            }
        }
        match unknown {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    async fn lister(&self) -> Result<&Named> {
        Ok(&self.repos[self.authority().await?])
    }

    /// The index of the first repository that holds its marker.
    async fn find_authority(&self) -> Result<usize> {
        let mut problems = Vec::new();
        for (i, r) in self.repos.iter().enumerate() {
            match r.repo.head(REPO_MARKER).await {
                Ok(Some(_)) => {
                    if !problems.is_empty() {
                        tracing::warn!(
                            "reading from {} ({}): {}",
                            r.name,
                            r.repo.url(),
                            problems.join("; ")
                        );
                    }
                    return Ok(i);
                }
                Ok(None) => problems.push(format!("{} holds no drctl repository", r.name)),
                Err(e) => problems.push(format!("{} does not answer: {e:#}", r.name)),
            }
        }
        bail!(
            "no repository of the policy can be read: {}",
            problems.join("; ")
        )
    }
}

#[async_trait]
impl Repository for Failover {
    fn url(&self) -> &str {
        self.repos[0].repo.url()
    }

    async fn put_bytes(&self, _key: &str, _data: Vec<u8>) -> Result<()> {
        bail!("reading with failover: writes go through the primary")
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.first_found(key, |r| r.repo.get_bytes(key)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.first_found(key, |r| r.repo.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.lister().await?.repo.list(prefix).await
    }

    async fn delete(&self, _key: &str) -> Result<()> {
        bail!("reading with failover: deletes go through the primary")
    }

    async fn writer(&self, _key: &str) -> Result<Box<dyn ObjectWriter>> {
        bail!("reading with failover: writes go through the primary")
    }

    async fn reader(&self, key: &str) -> Result<ObjectReader> {
        let authority = self.authority().await?;
        let mut unknown = None;
        for (i, r) in self.repos.iter().enumerate() {
            // Ask before opening: a missing object is the next one's turn.
            let opened = match r.repo.head(key).await {
                Ok(Some(_)) => r.repo.reader(key).await,
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match opened {
                Ok(rd) => return Ok(rd),
                Err(e) => unknown = self.unknown(i, authority, key, e).or(unknown),
            }
        }
        match unknown {
            Some(e) => Err(e),
            None => bail!("{key} is in none of the policy's repositories"),
        }
    }

    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>> {
        self.lister().await?.repo.leftovers(prefix).await
    }

    async fn remove_leftover(&self, _l: &Leftover) -> Result<()> {
        bail!("reading with failover: cleanup goes through the primary")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::fs::FsRepo;

    /// A file repository at `root` (a directory, or a plain file: a store
    /// that errors on every read).
    fn named(name: &str, root: &std::path::Path) -> Named {
        Named {
            name: name.into(),
            repo: Arc::new(FsRepo::new(
                format!("file://{}", root.display()),
                root.to_path_buf(),
            )),
        }
    }

    fn broken(dir: &std::path::Path) -> std::path::PathBuf {
        let f = dir.join("not-a-directory");
        std::fs::write(&f, b"x").unwrap();
        f
    }

    #[tokio::test]
    async fn absent_is_said_only_when_known() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let ra = named("primary", &a);
        let rb = named("offsite", &b);
        crate::repo::ensure_initialized(&*rb.repo).await.unwrap();
        rb.repo.put_bytes("p/k", b"copy".to_vec()).await.unwrap();

        // The primary is gone (no marker): the copy is the authority.
        let f = Failover::new(vec![ra.clone(), rb.clone()]);
        assert_eq!(f.get_bytes("p/k").await.unwrap().unwrap(), b"copy");
        assert_eq!(f.list("p/").await.unwrap().len(), 1);
        assert_eq!(f.get_bytes("p/none").await.unwrap(), None);

        // The primary answers for itself; a copy that errors after it
        // cannot hold what the primary lacks.
        crate::repo::ensure_initialized(&*ra.repo).await.unwrap();
        let f = Failover::new(vec![ra.clone(), named("down", &broken(t.path()))]);
        assert_eq!(f.get_bytes("p/none").await.unwrap(), None);
        assert_eq!(f.head("p/none").await.unwrap(), None);

        // A primary that errors might hold it: unknown, an error.
        let f = Failover::new(vec![named("down", &broken(t.path())), rb.clone()]);
        assert!(f.get_bytes("p/none").await.is_err());
        assert!(f.head("p/none").await.is_err());
        assert_eq!(f.get_bytes("p/k").await.unwrap().unwrap(), b"copy");
    }
}
