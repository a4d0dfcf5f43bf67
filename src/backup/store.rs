//! What every repository backup shares: a child's stdout streamed through
//! the pipeline into one object, and the manifest committed last.
//!
//! Commit protocol: an object is finished only after its producer exited
//! cleanly, the manifest is written only after every object is durable, and
//! the catalog says `complete` only after the manifest is. Any failure
//! before that leaves no manifest, so nothing can mistake it for a backup.

use std::io::Read;
use std::process::ExitStatus;

use anyhow::{bail, Context, Result};

use crate::pipeline::{self, EncodeOptions};
use crate::policy::Policy;
use crate::repo::manifest::{self, CompressionInfo, EncryptionInfo, Manifest};
use crate::repo::Repository;

/// A child process whose stdout is being encoded into the repository.
pub type Encoding = tokio::task::JoinHandle<(Result<pipeline::Digests>, Vec<u8>)>;

/// Stream `child`'s stdout through the pipeline into `key`. The object is
/// committed only if the child exits 0; the result carries its stderr.
pub async fn encode_child(
    policy: &Policy,
    repo: &dyn Repository,
    key: &str,
    recipients: &[age::x25519::Recipient],
    mut child: std::process::Child,
    what: &'static str,
    total: Option<u64>,
) -> Result<Encoding> {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let writer = match repo.writer(key).await {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let level = policy.compression_level();
    let threads = policy.compression_threads();
    let recips = recipients.to_vec();
    Ok(tokio::task::spawn_blocking(move || {
        let bar = crate::progress::Bar::new(what, total);
        let opts = EncodeOptions {
            level,
            threads,
            recipients: &recips,
        };
        let mut status: Option<ExitStatus> = None;
        let result = pipeline::encode(
            &mut stdout,
            writer,
            &opts,
            &|n| {
                bar.set(n);
                !crate::cancel::requested()
            },
            &mut || {
                // The child must have exited cleanly before the object is committed.
                let s = child
                    .wait()
                    .with_context(|| format!("waiting for {what}"))?;
                status = Some(s);
                if !s.success() {
                    bail!("{what} exited with {s}");
                }
                Ok(())
            },
        );
        bar.finish();
        if result.is_err() && status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (result, stderr_thread.join().unwrap_or_default())
    }))
}

pub fn compression_info(policy: &Policy) -> CompressionInfo {
    CompressionInfo {
        algorithm: "zstd".into(),
        level: policy.compression_level(),
    }
}

pub fn encryption_info(recipients: &[age::x25519::Recipient]) -> EncryptionInfo {
    EncryptionInfo {
        algorithm: "age-x25519".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
    }
}

/// Commit a backup: write its manifest, or delete its objects if that fails.
pub async fn commit(repo: &dyn Repository, m: &Manifest) -> Result<()> {
    if let Err(e) = repo
        .put_bytes(
            &manifest::manifest_key(&m.policy, &m.id),
            m.to_json().into_bytes(),
        )
        .await
    {
        for o in &m.objects {
            let _ = repo.delete(&o.key).await;
        }
        return Err(e.context("writing the manifest (the backup is not committed)"));
    }
    Ok(())
}
