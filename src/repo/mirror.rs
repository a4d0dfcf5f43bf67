//! One write, every repository: the primary and the policy's `[[copy]]`s.
//!
//! A `Mirror` is the repository a backup or wal-push writes through. Each
//! byte is read once (one pg_dump, one BASE_BACKUP) and handed to the
//! primary's writer and then to each copy's, in the same thread: the
//! slowest store sets the pace and nothing is buffered beyond what each
//! driver already bounds. The primary decides success: its failure fails
//! the write. A copy's failure is recorded, that copy gets nothing more of
//! this operation (so it never commits a manifest for objects it lacks),
//! and the caller reports it after the primary has committed.
//!
//! Reads go to the primary only: a mirror writes; `failover` reads.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use async_trait::async_trait;

use super::{Leftover, ObjectInfo, ObjectReader, ObjectWriter, Repository};

/// Copies that failed during one operation: name → what happened.
#[derive(Clone, Default)]
pub struct Failures(Arc<Mutex<BTreeMap<String, String>>>);

impl Failures {
    pub fn record(&self, name: &str, what: &anyhow::Error) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string())
            .or_insert_with(|| format!("{what:#}"));
        tracing::warn!(copy = name, "copy failed: {what:#}");
    }

    pub fn has(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// Every failure so far, by copy name.
    pub fn all(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A named repository.
#[derive(Clone)]
pub struct Named {
    pub name: String,
    pub repo: Arc<dyn Repository>,
}

pub struct Mirror {
    primary: Arc<dyn Repository>,
    copies: Vec<Named>,
    failures: Failures,
}

impl Mirror {
    pub fn new(primary: Arc<dyn Repository>, copies: Vec<Named>, failures: Failures) -> Mirror {
        Mirror {
            primary,
            copies,
            failures,
        }
    }

    /// The copies still taking this operation's writes.
    fn live(&self) -> impl Iterator<Item = &Named> {
        self.copies.iter().filter(|c| !self.failures.has(&c.name))
    }
}

#[async_trait]
impl Repository for Mirror {
    fn url(&self) -> &str {
        self.primary.url()
    }

    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.primary.put_bytes(key, data.clone()).await?;
        for c in self.live() {
            if let Err(e) = c.repo.put_bytes(key, data.clone()).await {
                self.failures.record(&c.name, &e);
            }
        }
        Ok(())
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.primary.get_bytes(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.primary.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.primary.list(prefix).await
    }

    /// Everywhere: a failed operation's objects go from every store (a copy
    /// that does not answer keeps them for its own sweep).
    async fn delete(&self, key: &str) -> Result<()> {
        self.primary.delete(key).await?;
        for c in &self.copies {
            if let Err(e) = c.repo.delete(key).await {
                tracing::warn!(copy = %c.name, "cannot delete {key}: {e:#}");
            }
        }
        Ok(())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let primary = self.primary.writer(key).await?;
        let mut copies = Vec::new();
        for c in self.live() {
            match c.repo.writer(key).await {
                Ok(w) => copies.push((c.name.clone(), w)),
                Err(e) => self.failures.record(&c.name, &e),
            }
        }
        Ok(Box::new(TeeWriter {
            primary,
            copies,
            failures: self.failures.clone(),
        }))
    }

    async fn reader(&self, key: &str) -> Result<ObjectReader> {
        self.primary.reader(key).await
    }

    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>> {
        self.primary.leftovers(prefix).await
    }

    async fn leftovers_of(&self, key: &str) -> Result<Vec<Leftover>> {
        self.primary.leftovers_of(key).await
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        self.primary.remove_leftover(l).await
    }

    async fn locked_until(&self, key: &str) -> Result<Option<jiff::Timestamp>> {
        self.primary.locked_until(key).await
    }

    async fn lockable(&self) -> Result<bool> {
        self.primary.lockable().await
    }
}

/// The primary's writer and each live copy's, fed the same bytes.
struct TeeWriter {
    primary: Box<dyn ObjectWriter>,
    copies: Vec<(String, Box<dyn ObjectWriter>)>,
    failures: Failures,
}

impl TeeWriter {
    /// Run `f` on each copy's writer; a copy that fails is dropped (its
    /// upload aborted) and recorded.
    fn each_copy(&mut self, mut f: impl FnMut(&mut dyn ObjectWriter) -> io::Result<()>) {
        let failures = &self.failures;
        self.copies.retain_mut(|(name, w)| match f(w.as_mut()) {
            Ok(()) => true,
            Err(e) => {
                failures.record(name, &anyhow::Error::from(e));
                false
            }
        });
    }
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.primary.write_all(buf)?;
        self.each_copy(|w| w.write_all(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.primary.flush()?;
        self.each_copy(|w| w.flush());
        Ok(())
    }
}

impl ObjectWriter for TeeWriter {
    fn finish(self: Box<Self>) -> Result<u64> {
        let TeeWriter {
            primary,
            copies,
            failures,
        } = *self;
        // Every store makes its object durable at once (an fsync or a
        // multipart completion each): in turn, their waits would add up.
        // The primary's result decides; a copy that commits an object the
        // primary then fails to holds an incomplete backup, which its own
        // sweep removes (manifests still go primary first, in put_bytes).
        std::thread::scope(|s| {
            let copies: Vec<_> = copies
                .into_iter()
                .map(|(name, w)| (name, s.spawn(move || w.finish())))
                .collect();
            let size = primary.finish();
            for (name, h) in copies {
                match h.join() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failures.record(&name, &e),
                    Err(_) => failures.record(&name, &anyhow::anyhow!("copy writer panicked")),
                }
            }
            size
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::repo::fs::FsRepo;

    fn fs(root: &std::path::Path) -> Arc<dyn Repository> {
        Arc::new(FsRepo::new(
            format!("file://{}", root.display()),
            root.to_path_buf(),
        ))
    }

    #[tokio::test]
    async fn every_copy_gets_the_bytes_and_a_failing_one_is_recorded_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let primary = fs(&t.path().join("p"));
        let good = fs(&t.path().join("good"));
        let down = t.path().join("file");
        std::fs::write(&down, b"x").unwrap();
        let failures = Failures::default();
        let m = Mirror::new(
            primary.clone(),
            vec![
                Named {
                    name: "good".into(),
                    repo: good.clone(),
                },
                Named {
                    name: "down".into(),
                    repo: fs(&down),
                },
            ],
            failures.clone(),
        );
        let mut w = m.writer("a/obj").await.unwrap();
        let data = vec![7u8; 3 << 20];
        let written = tokio::task::spawn_blocking(move || {
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(written, 3 << 20);
        m.put_bytes("a/manifest.json", b"{}".to_vec())
            .await
            .unwrap();
        for r in [&primary, &good] {
            assert_eq!(r.head("a/obj").await.unwrap(), Some(3 << 20));
            assert_eq!(
                r.get_bytes("a/manifest.json").await.unwrap().unwrap(),
                b"{}"
            );
        }
        assert_eq!(failures.all().keys().collect::<Vec<_>>(), ["down"]);
        assert!(!failures.has("good"));
    }
}
