//! `max_rate`: a repository whose object streams (uploads and downloads of
//! backups, WAL and copies) move at most so many bytes per second. Small
//! objects (manifests, markers, leases) are not held back: they are what
//! keeps a run alive and honest.
//!
//! Pacing keeps a virtual clock: each chunk is given its share of time
//! after the previous one's, and the writer or reader sleeps until its turn.
//! Every stream of one opened repository shares the clock, so parallel
//! streams share the rate.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;

use super::{
    Conditional, Leftover, ObjectInfo, ObjectReader, ObjectWriter, Precondition, Repository,
};

pub struct Pace {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            bytes_per_sec: bytes_per_sec as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Account for `n` bytes; sleep until they may go.
    fn take(&self, n: usize) {
        let share = Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if *next < now {
                *next = now;
            }
            let start = *next;
            *next += share;
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

pub struct Throttled {
    inner: Arc<dyn Repository>,
    pace: Arc<Pace>,
}

impl Throttled {
    pub fn new(inner: Arc<dyn Repository>, bytes_per_sec: u64) -> Throttled {
        Throttled {
            inner,
            pace: Arc::new(Pace::new(bytes_per_sec)),
        }
    }
}

/// At most this much goes between two waits: a stop (SIGTERM) is seen
/// within a chunk's time.
const CHUNK: usize = 256 * 1024;

struct PacedWriter {
    inner: Box<dyn ObjectWriter>,
    pace: Arc<Pace>,
}

impl Write for PacedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let buf = &buf[..buf.len().min(CHUNK)];
        self.pace.take(buf.len());
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for PacedWriter {
    fn finish(self: Box<Self>) -> Result<u64> {
        self.inner.finish()
    }
}

struct PacedReader {
    inner: ObjectReader,
    pace: Arc<Pace>,
}

impl Read for PacedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf.len().min(CHUNK);
        let n = self.inner.read(&mut buf[..len])?;
        self.pace.take(n);
        Ok(n)
    }
}

#[async_trait]
impl Repository for Throttled {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.inner.put_bytes(key, data).await
    }
    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_bytes(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(PacedWriter {
            inner: self.inner.writer(key).await?,
            pace: self.pace.clone(),
        }))
    }
    async fn reader(&self, key: &str) -> Result<ObjectReader> {
        Ok(Box::new(PacedReader {
            inner: self.inner.reader(key).await?,
            pace: self.pace.clone(),
        }))
    }
    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>> {
        self.inner.leftovers(prefix).await
    }
    async fn leftovers_of(&self, key: &str) -> Result<Vec<Leftover>> {
        self.inner.leftovers_of(key).await
    }
    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        self.inner.remove_leftover(l).await
    }
    async fn locked_until(&self, key: &str) -> Result<Option<jiff::Timestamp>> {
        self.inner.locked_until(key).await
    }
    fn conditional_writes(&self) -> bool {
        self.inner.conditional_writes()
    }
    async fn put_if(&self, key: &str, data: Vec<u8>, cond: &Precondition) -> Result<Conditional> {
        self.inner.put_if(key, data, cond).await
    }
    async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.inner.get_tagged(key).await
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool> {
        self.inner.delete_if(key, etag).await
    }
    async fn lockable(&self) -> Result<bool> {
        self.inner.lockable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_holds_the_rate_over_many_chunks() {
        let pace = Pace::new(4 << 20);
        let t = Instant::now();
        // 2 MiB at 4 MiB/s: the first chunk goes at once, the rest wait.
        for _ in 0..32 {
            pace.take(64 * 1024);
        }
        let took = t.elapsed().as_secs_f64();
        let want = (2.0 - 1.0 / 16.0) / 4.0;
        assert!(
            (took - want).abs() < want * 0.15 + 0.01,
            "took {took:.3}s, want {want:.3}s"
        );
    }
}
