//! Local filesystem repository (`file:///path`), the embedded default.
//!
//! Objects are written to a hidden temp file in the target directory,
//! fsynced, renamed into place, and the directory fsynced: a crash leaves
//! either the whole object or no object, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::{check_key, Leftover, ObjectInfo, ObjectReader, ObjectWriter, Repository};

pub struct FsRepo {
    url: String,
    root: PathBuf,
}

impl FsRepo {
    pub fn new(url: String, root: PathBuf) -> FsRepo {
        FsRepo { url, root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Ask the kernel to start writing `len` bytes from `from` out now (0: to
/// the end), without waiting: a later fsync then has little left to do.
pub fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is an open file for as long as `file` is borrowed;
    // sync_file_range only starts asynchronous writeback of the range.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Start writeback every this many bytes, so the final fsync has little
/// left to do (what PostgreSQL's *_flush_after settings do).
const WRITEBACK_EVERY: u64 = 1 << 20;

pub struct FsWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    written: u64,
    writeback_from: u64,
    /// Directories this writer created: their parents are fsynced too, or a
    /// crash could lose the new directory entry with the object in it.
    created_dirs: Vec<PathBuf>,
}

impl FsWriter {
    fn create(dest: PathBuf) -> Result<FsWriter> {
        let dir = dest.parent().context("object key has no parent")?;
        let mut created_dirs = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.exists()) {
            created_dirs.push(p.to_path_buf());
            d = p.parent();
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp-{:08x}", rand::random::<u32>()));
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(FsWriter {
            file: Some(file),
            tmp,
            dest,
            written: 0,
            writeback_from: 0,
            created_dirs,
        })
    }
}

impl Write for FsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .file
            .as_mut()
            .expect("writer used after finish")
            .write(buf)?;
        self.written += n as u64;
        if self.written - self.writeback_from >= WRITEBACK_EVERY {
            // Durability still comes from the fsync in finish().
            start_writeback(
                self.file.as_ref().expect("open"),
                self.writeback_from,
                self.written - self.writeback_from,
            );
            self.writeback_from = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("writer used after finish")
            .flush()
    }
}

impl ObjectWriter for FsWriter {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        let file = self.file.take().expect("finish called once");
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", self.tmp.display()))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot rename into {}", self.dest.display()))?;
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir).with_context(|| format!("cannot fsync {}", dir.display()))?;
        }
        for d in &self.created_dirs {
            if let Some(parent) = d.parent() {
                sync_dir(parent).with_context(|| format!("cannot fsync {}", parent.display()))?;
            }
        }
        Ok(self.written)
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Every regular file below `dir` with its key (its path below `root`)
/// and file name; a missing `dir` has none.
fn files(
    dir: &Path,
    root: &Path,
    f: &mut dyn FnMut(String, &str, &fs::Metadata),
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            files(&path, root, f)?;
        } else if meta.is_file() {
            let key = path
                .strip_prefix(root)
                .expect("walked below root")
                .to_string_lossy()
                .into_owned();
            f(key, &entry.file_name().to_string_lossy(), &meta);
        }
    }
    Ok(())
}

/// The objects below `dir`: in-flight temp files (hidden) are not objects.
fn walk(dir: &Path, root: &Path, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    files(dir, root, &mut |key, name, meta| {
        if !name.starts_with('.') {
            out.push(ObjectInfo {
                key,
                size: meta.len(),
            });
        }
    })
}

/// FsWriter's temp files (`.<name>.tmp-<hex>`) below `dir`.
fn walk_temps(dir: &Path, root: &Path, out: &mut Vec<Leftover>) -> io::Result<()> {
    files(dir, root, &mut |key, name, meta| {
        if name.starts_with('.') && name.contains(".tmp-") {
            out.push(temp_file(key, meta));
        }
    })
}

/// A temp file as a leftover: its size, and its age from its last write.
fn temp_file(key: String, meta: &fs::Metadata) -> Leftover {
    Leftover {
        key,
        size: meta.len(),
        age: meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default(),
        upload_id: None,
    }
}

#[async_trait]
impl Repository for FsRepo {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let dest = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            let mut w = Box::new(FsWriter::create(dest)?);
            w.write_all(&data)?;
            w.finish().map(|_| ())
        })
        .await?
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            // Walk the deepest directory the prefix names, then filter.
            let dir_part = prefix.rsplit_once('/').map(|x| x.0).unwrap_or("");
            let start = if dir_part.is_empty() {
                root.clone()
            } else {
                root.join(dir_part)
            };
            let mut out = Vec::new();
            walk(&start, &root, &mut out)
                .with_context(|| format!("cannot list {}", start.display()))?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot delete {}", path.display())),
        }
        // Tidy now-empty directories up to the root.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key)?;
        let w = tokio::task::spawn_blocking(move || FsWriter::create(dest)).await??;
        Ok(Box::new(w))
    }

    async fn reader(&self, key: &str) -> Result<ObjectReader> {
        let path = self.path(key)?;
        let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Box::new(f))
    }

    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>> {
        let root = self.root.clone();
        let start = root.join(prefix.trim_end_matches('/'));
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_temps(&start, &root, &mut out)
                .with_context(|| format!("cannot list {}", start.display()))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    async fn leftovers_of(&self, key: &str) -> Result<Vec<Leftover>> {
        // One directory read, and a stat only of this key's temp files:
        // a WAL directory can hold many thousand segments.
        let dest = self.path(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
                return Ok(Vec::new());
            };
            let temp = format!(".{}.tmp-", name.to_string_lossy());
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry?;
                if !entry.file_name().to_string_lossy().starts_with(&temp) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let path = entry.path();
                let rel = path.strip_prefix(&root).expect("below root");
                out.push(temp_file(rel.to_string_lossy().into_owned(), &meta));
            }
            Ok(out)
        })
        .await?
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        // The key of a temp file starts with a dot in its last part, which
        // object keys never do: check the rest of it like any key.
        self.delete(&l.key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn leftovers_of_a_key_are_its_own_temp_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepo::new("file://t".into(), dir.path().to_path_buf());
        let wal = dir.path().join("p/wal/00000001");
        std::fs::create_dir_all(&wal).unwrap();
        for f in [
            ".000000010000000000000003.zst.age.tmp-0a1b2c3d",
            ".000000010000000000000003.json.tmp-0a1b2c3d",
            ".000000010000000000000004.zst.age.tmp-0a1b2c3d",
            "000000010000000000000003.zst.age",
        ] {
            std::fs::write(wal.join(f), b"x").unwrap();
        }
        let key = "p/wal/00000001/000000010000000000000003.zst.age";
        let found: Vec<String> = repo
            .leftovers_of(key)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(
            found,
            ["p/wal/00000001/.000000010000000000000003.zst.age.tmp-0a1b2c3d"]
        );
        assert!(repo
            .leftovers_of("p/wal/00000002/x")
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn write_is_invisible_until_finish_and_drop_aborts() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepo::new("file://x".into(), dir.path().to_path_buf());
        let mut w = repo.writer("p/backups/a/data").await.unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(repo.head("p/backups/a/data").await.unwrap(), None);
        assert!(
            repo.list("p/").await.unwrap().is_empty(),
            "temp file listed"
        );
        tokio::task::spawn_blocking(move || w.finish().unwrap())
            .await
            .unwrap();
        assert_eq!(repo.head("p/backups/a/data").await.unwrap(), Some(5));
        let mut s = String::new();
        repo.reader("p/backups/a/data")
            .await
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");

        let mut w = repo.writer("p/backups/b/data").await.unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        let keys: Vec<_> = repo
            .list("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["p/backups/a/data".to_string()]);
        assert_eq!(
            fs::read_dir(dir.path().join("p/backups/b"))
                .unwrap()
                .count(),
            0
        );

        repo.delete("p/backups/a/data").await.unwrap();
        repo.delete("p/backups/a/data").await.unwrap();
        assert!(
            !dir.path().join("p/backups/a").exists(),
            "empty dir left behind"
        );
        assert!(
            dir.path().join("p/backups/b").exists(),
            "non-empty parents must stay"
        );
    }
}
